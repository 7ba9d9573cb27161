"""``python -m minisd {sample,info,train,eval,bench}`` (also installed as the ``minisd`` command).

python -m minisd sample --prompt "a red circle on a blue background" --num-images 4 --out grid.png
python -m minisd info
"""

import argparse
import sys
import time
import warnings

EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_FAILURE = 1


class CliError(Exception):
    """A problem to report in one line, without a traceback."""

    def __init__(self, message, code=EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def sample_parser(sub):
    from minisd.lesson_kernels import KERNEL_SOURCES
    from minisd.mode import BACKENDS
    from minisd.pipeline import DEFAULT_GUIDANCE, DEFAULT_PROMPT, DEFAULT_STEPS

    p = sub.add_parser("sample", help="generate images from prompts and save them as a PNG grid")
    p.add_argument("--prompt", action="append", help=f"repeat for several rows (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, help="default: the fastest this machine has")
    p.add_argument(
        "--kernels",
        choices=KERNEL_SOURCES,
        default="minisd",
        help="whose kernels run the ops: minisd's, or lesson 11's (solutions/ or exercises/lesson11.py, "
        "each op probed first; numpy arrays in and out)",
    )
    p.add_argument("--size", type=int, help="image side in pixels, a multiple of 4 (default: the model's 32)")
    p.add_argument(
        "--weights", help="a minisd .safetensors file (default: the trained one in minisd/weights)"
    )
    p.add_argument("--out", default="minisd_samples.png", help="PNG to write (default minisd_samples.png)")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling of the grid (default 4)")
    return p


def check_out_path(out, suffix):
    """A file we can create: its folder must exist (a typo should not silently make new folders)."""
    from pathlib import Path

    out = Path(out)
    if out.suffix.lower() != suffix:
        raise CliError(f"--out must name a {suffix} file, got {str(out)!r}", EXIT_USAGE)
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; name a {suffix} file in it", EXIT_USAGE)
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: the folder {out.parent} does not exist", EXIT_USAGE)


def check_sample_args(args):
    """Everything that can be checked before the (slow) weights load and sampling."""
    import minisd.mode as mode
    from minisd.pipeline import DEFAULT_PROMPT, check_guidance
    from minisd.text import tokenize

    args.prompt = args.prompt or [DEFAULT_PROMPT]
    for name in ("num_images", "steps", "scale", "size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1", EXIT_USAGE)
    if args.kernels != "minisd" and not mode.ON_GPU and args.size is None:
        # say so before any work: the simulator runs every CUDA thread as a Python thread
        raise CliError(
            f"--kernels {args.kernels} runs {args.kernels}/lesson11.py's Numba kernels, and without a GPU they "
            "run in the CUDA simulator (one Python thread per CUDA thread): a full 32x32 sample takes hours "
            "and needs a GPU. On this CPU, run them end to end at a small size instead (about a minute of "
            f"CPU time, with a progress bar): python -m minisd sample --kernels {args.kernels} --size 4 "
            "--steps 1 --guidance 1 --num-images 1 (--size 8: about two minutes; --size 32 runs the full "
            "size anyway)",
            EXIT_USAGE,
        )
    check_out_path(args.out, ".png")
    try:
        check_guidance(args.guidance)
    except ValueError:
        raise CliError(f"--guidance must be a finite number >= 0, got {args.guidance}", EXIT_USAGE) from None
    try:
        tokenize(args.prompt)
        mode.check_backend(args.backend or mode.default_backend())
    except (ValueError, RuntimeError) as err:
        raise CliError(str(err), EXIT_USAGE) from None


def run_sample(args):
    from tqdm import tqdm

    import minisd
    import minisd.mode as mode
    from minisd.grid import save_grid
    from minisd.lesson_kernels import LessonKernelsError
    from minisd.weights import WeightsError

    check_sample_args(args)
    backend = args.backend or mode.default_backend()
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    where = f"backend {backend}" if args.kernels == "minisd" else f"{args.kernels}/lesson11.py's kernels"
    print(f"{mode.describe()}\nsampling {len(prompts)} images, {args.steps} steps, {where}")
    start = time.perf_counter()
    try:
        pipe = minisd.MiniSDPipeline.from_pretrained(args.weights, backend=backend, kernels=args.kernels)
    except (WeightsError, LessonKernelsError) as err:
        raise CliError(str(err)) from None
    loaded = time.perf_counter()
    most = pipe.scheduler.config.num_train_timesteps
    if args.steps > most:
        raise CliError(f"--steps must be at most {most}, the timesteps this model was trained on", EXIT_USAGE)
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{sample,info,train,eval,bench}")
    sample_parser(sub)
    sub.add_parser("info", help="what this machine runs minisd on")
    # train, eval and bench parse their own options
    for name, help_text in [
        ("train", "train minisd in PyTorch"),
        ("eval", "score how well minisd follows its prompts"),
        ("bench", "time sampling on every backend"),
    ]:
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in ("train", "eval", "bench"):
        return run_delegated(argv[0], argv[1:])
    args = parser.parse_args(argv)
    try:
        {"sample": run_sample, "info": run_info}[args.command](args)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.code)
    return 0


def run_delegated(command, argv):
    if command == "train":
        from minisd.train import main as command_main
    elif command == "eval":
        from minisd.evaluate import main as command_main
    else:
        from minisd.bench import main as command_main
    return command_main(argv)


if __name__ == "__main__":
    main()
