"""``python -m minisd {sample,info,profile,train,train-vae,eval,bench,export}`` (also installed as the ``minisd`` command).

python -m minisd sample --prompt "a small red star left of a big blue circle on a white background" --out grid.png
python -m minisd info
python -m minisd profile --batch 64 --json profile.json   # one step's time by op, and a roofline PNG
"""

import argparse
import sys
import time
import warnings

from minisd.checks import EXIT_USAGE, CliError

MAX_IMAGES = 1024  # a run samples all its images as one batch: split a bigger job into runs with other seeds
MAX_SCALE = 16  # a 64x64 image becomes 1024x1024 pixels
MAX_REPEATS = 100  # profile's timed steps


def sample_parser(sub):
    from minisd.data import COLORS, SHAPES
    from minisd.lesson_kernels import KERNEL_SOURCES
    from minisd.mode import BACKENDS
    from minisd.pipeline import DEFAULT_GUIDANCE, DEFAULT_PRECISION, DEFAULT_PROMPT, DEFAULT_STEPS, PRECISIONS
    from minisd.text import GRAMMAR

    p = sub.add_parser(
        "sample",
        help="generate images from prompts and save them as a PNG grid",
        description=f"Prompts follow one grammar: {GRAMMAR}. SIZE is small or big; COLOR is "
        f"{', '.join(COLORS)}, never the background's colour; SHAPE is {', '.join(SHAPES)}; PLACE is on the "
        "left, on the right, at the top, at the bottom or in the centre; RELATION is left of, right of, above "
        "or below. Case, spacing, 'an' and a trailing full stop do not matter.",
    )
    p.add_argument("--prompt", action="append", help=f"repeat for several rows (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, help="default: the fastest this machine has")
    p.add_argument(
        "--kernels",
        choices=KERNEL_SOURCES,
        default="minisd",
        help="whose kernels run the ops: minisd's, or the lessons' (solutions/ or exercises/: lesson11.py's "
        "ops and blocks, lesson13.py's fused upsample + conv; each op probed first; numpy arrays in and out)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=f"the UNet's arithmetic on CuPy: fp32, or fp16/bf16 tensor cores (default {DEFAULT_PRECISION} on "
        "CuPy, fp32 elsewhere)",
    )
    p.add_argument(
        "--size", type=int, help="image side in pixels, a multiple of 16 (default: the model's 64)"
    )
    p.add_argument(
        "--weights", help="a minisd .safetensors file (default: the trained one in minisd/weights)"
    )
    p.add_argument("--out", default="minisd_samples.png", help="PNG to write (default minisd_samples.png)")
    p.add_argument(
        "--scale", type=int, default=2, help=f"pixel upscaling of the grid, 1 to {MAX_SCALE} (default 2)"
    )
    return p


def check_sample_args(args):
    """Everything that can be checked before the (slow) weights load and sampling, cheapest first."""
    import minisd.mode as mode
    from minisd import checks
    from minisd.grid import MAX_PIXELS, grid_size
    from minisd.pipeline import DEFAULT_PROMPT, check_precision
    from minisd.text import check_prompt

    try:
        args.prompt = [check_prompt(p) for p in args.prompt or [DEFAULT_PROMPT]]
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from None
    checks.int_range(
        "num_images",
        args.num_images,
        high=MAX_IMAGES // len(args.prompt),
        why=(
            f" with {checks.plural(len(args.prompt), 'prompt')} ({MAX_IMAGES} images a run: for more, run again "
            "with another --seed)"
        ),
    )
    checks.int_range("scale", args.scale, high=MAX_SCALE)
    width, height = grid_size(args.prompt, args.num_images, args.scale, args.size or 64)
    if width * height > MAX_PIXELS:
        raise CliError(
            f"the grid would be {width} x {height} pixels, more than the {MAX_PIXELS / 1e6:.0f} million PIL "
            "opens; lower --scale or --num-images",
            EXIT_USAGE,
        )
    checks.guidance(args.guidance)
    checks.int_range("steps", args.steps)
    if args.size is not None:
        checks.int_range("size", args.size)
    if args.kernels != "minisd" and not mode.ON_GPU and args.size is None:
        # say so before any work: the simulator runs every CUDA thread as a Python thread
        raise CliError(
            f"--kernels {args.kernels} runs {args.kernels}/lesson11.py's Numba kernels, and without a GPU they "
            "run in the CUDA simulator (one Python thread per CUDA thread): a full 64x64 sample takes hours "
            "and needs a GPU. On this CPU, run them end to end at the smallest size instead (a few minutes of "
            f"CPU time, with a progress bar): python -m minisd sample --kernels {args.kernels} --size 16 "
            "--steps 1 --guidance 1 --num-images 1 (--size 64 runs the full size anyway)",
            EXIT_USAGE,
        )
    args.backend = checks.backend(args.backend)
    try:
        args.precision = check_precision(args.precision, args.backend, args.kernels)
    except ValueError as err:
        raise CliError(f"--precision: {err}", EXIT_USAGE) from None
    checks.out_file(args.out, ".png")
    checks.steps(args.steps, checks.weights_config(args.weights))


def run_sample(args):
    from tqdm import tqdm

    import minisd
    import minisd.mode as mode
    from minisd.checks import plural
    from minisd.grid import save_grid
    from minisd.lesson_kernels import LessonKernelsError
    from minisd.weights import WeightsError

    check_sample_args(args)
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    where = (
        mode.describe_backend(args.backend)
        if args.kernels == "minisd"
        else f"{args.kernels}/lesson11.py's kernels"
    )
    print(f"sampling {plural(len(prompts), 'image')}, {plural(args.steps, 'step')}, {where}")
    start = time.perf_counter()
    try:
        pipe = minisd.MiniSDPipeline.from_pretrained(
            args.weights, backend=args.backend, kernels=args.kernels, precision=args.precision
        )
    except (WeightsError, LessonKernelsError) as err:
        raise CliError(str(err)) from None
    loaded = time.perf_counter()
    try:
        pipe.plan(len(prompts), args.steps, args.guidance, args.size, args.size)
    except ValueError as err:
        raise CliError(f"--size: {err}", EXIT_USAGE) from None
    with tqdm(total=args.steps, unit="step", desc="denoising") as bar:

        def progress(i, n):  # n = steps, or steps x chunks when the CPU samples a big batch in chunks
            bar.total, bar.n = n, i + 1
            bar.refresh()

        try:
            images = pipe(prompts, args.steps, args.guidance, args.seed, progress, args.size, args.size)
        except LessonKernelsError as err:  # a lesson op that passed its probe went wrong on real inputs
            raise CliError(str(err)) from None
    if args.kernels != "minisd":  # the same picture from minisd's own kernels: how close did theirs come?
        ours = minisd.MiniSDPipeline.from_pretrained(args.weights, backend="numpy", log=lambda *a: None)
        reference = ours(prompts, args.steps, args.guidance, args.seed, None, args.size, args.size)
        diff = int(abs(images.astype(int) - reference.astype(int)).max())
        print(f"largest pixel difference from minisd's own kernels: {diff} of 255 (float32 rounding: a few)")
    done = time.perf_counter()
    try:
        path = save_grid(images, args.prompt, args.num_images, args.out, args.scale)
    except OSError as err:
        raise CliError(f"cannot write {args.out}: {err.strerror or err}") from None
    per_step = (done - loaded) / args.steps
    print(f"load {loaded - start:.2f} s, sampling {done - loaded:.2f} s ({per_step * 1e3:.1f} ms/step)")
    print(f"wrote {path}")


def profile_parser(sub):
    from minisd.mode import BACKENDS
    from minisd.pipeline import DEFAULT_GUIDANCE, PRECISIONS

    p = sub.add_parser(
        "profile",
        help="time one sampling step op by op against this machine's memory and matmul roofs",
        description="Times every op of one sampling step (after warm-up; CUDA events on a GPU) and prints "
        "the time by op: share of the step, GB/s and TFLOP/s achieved, and the percentage of the roof that "
        "bounds it (a copy's bandwidth or a large matmul's FLOP/s, measured now); then the slowest calls. "
        "Writes a roofline PNG.",
    )
    p.add_argument("--backend", choices=BACKENDS, help="default: the fastest this machine has")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="images (default 1); with guidance the UNet runs twice as many rows",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE}; 1: no unconditional rows)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed steps; each call's median is reported (default 3)"
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, help="the UNet's arithmetic on CuPy (default: as for sample)"
    )
    p.add_argument("--weights", help="a minisd .safetensors file (default: the trained one)")
    p.add_argument(
        "--ceilings",
        help="a JSON file with the roofs (one --json wrote on this machine) instead of measuring them",
    )
    p.add_argument(
        "--png", default="minisd-profile.png", help="roofline to write (default minisd-profile.png)"
    )
    p.add_argument("--json", help="also write everything measured to this .json file")
    return p


def check_profile_args(args):
    from minisd import checks
    from minisd.ceilings import load

    checks.int_range("batch", args.batch, high=MAX_IMAGES)
    checks.guidance(args.guidance)
    checks.int_range("repeats", args.repeats, high=MAX_REPEATS)
    args.backend = checks.backend(args.backend)
    checks.out_file(args.png, ".png", "png")
    if args.json is not None:
        checks.out_file(args.json, ".json", "json")
    checks.weights_config(args.weights)
    if args.ceilings == "":
        raise CliError(
            "--ceilings is empty: give a JSON file (a profile's --json), or leave it out", EXIT_USAGE
        )
    if args.ceilings is not None:
        try:
            args.ceilings = load(args.ceilings)
        except ValueError as err:
            raise CliError(f"--ceilings: {err}") from None


def run_profile(args):
    import json

    import minisd.mode as mode
    from minisd import files, profile
    from minisd.ceilings import CannotMeasure
    from minisd.pipeline import MiniSDPipeline
    from minisd.weights import WeightsError

    check_profile_args(args)
    print(f"profiling one sampling step at batch {args.batch}, {mode.describe_backend(args.backend)}")
    try:
        pipe = MiniSDPipeline.from_pretrained(
            args.weights, backend=args.backend, log=lambda *a: None, precision=args.precision
        )
    except WeightsError as err:
        raise CliError(str(err)) from None
    try:
        report = profile.profile(pipe, args.batch, args.guidance, args.repeats, args.ceilings)
    except CannotMeasure as err:
        raise CliError(str(err)) from None
    print(profile.table(report))
    try:
        print(f"\nwrote {profile.roofline_png(report, args.png)}")
    except profile.NeedsMatplotlib as err:
        print(f"\nno {args.png}: {err}")
    if args.json is not None:
        files.write_text(args.json, json.dumps(profile.to_json(report), indent=2) + "\n")
        print(f"wrote {args.json}")


def run_info(_args):
    import minisd.mode as mode

    print(mode.info())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Numba warns of every small grid; minisd's late UNet levels are small on purpose.
    warnings.filterwarnings("ignore", message=".*Grid size .* will likely result in GPU under-utilization")
    parser = argparse.ArgumentParser(
        prog="python -m minisd", description="minisd: tiny text-to-image diffusion"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{sample,info,profile,train,train-vae,eval,bench,export}"
    )
    sample_parser(sub)
    sub.add_parser("info", help="what this machine runs minisd on")
    profile_parser(sub)
    # train, train-vae, eval, bench and export parse their own options
    for name, help_text in [
        ("train", "train minisd in PyTorch"),
        ("train-vae", "train the autoencoder of a latent minisd in PyTorch"),
        ("eval", "score how well minisd follows its prompts"),
        ("bench", "time sampling on every backend"),
        ("export", "write minisd as ONNX or in diffusers' layout"),
    ]:
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in ("train", "train-vae", "eval", "bench", "export"):
        return run_delegated(argv[0], argv[1:])
    args = parser.parse_args(argv)
    try:
        {"sample": run_sample, "info": run_info, "profile": run_profile}[args.command](args)
    except CliError as err:
        err.exit()
    return 0


def run_delegated(command, argv):
    if command == "train":
        from minisd.train import main as command_main
    elif command == "train-vae":
        from minisd.train_vae import main as command_main
    elif command == "eval":
        from minisd.evaluate import main as command_main
    elif command == "export":
        from minisd.export import main as command_main
    else:
        from minisd.bench import main as command_main
    return command_main(argv)


if __name__ == "__main__":
    main()
