"""Does minisd follow its prompts? ``python -m minisd eval --num-images 200``.

Generates images for random prompts with minisd.generate (the sampling loop that ships), reads each back
with minisd.checker (which knows nothing of how the model or the dataset draw) and prints the accuracy per
attribute. Exits non-zero when any attribute is below 90 %, so CI and the lead can use it as a gate.

``--guidance 1 1.5 2 3`` scores several guidance scales in one run, on the same prompts and seeds (how the
default guidance is chosen); it then exits non-zero only when no scale passes.
"""

import argparse
import sys
import time

import numpy as np

from minisd import checker, checks, scenes

ATTRIBUTES = ("shape", "color", "size", "place", "background")  # what minisd.checker.score judges
PASS_MARK = 0.9
GPU_IMAGES, CPU_IMAGES = 1000, 16  # defaults: on the CPU 16 images take about 30 s (2 cores, numpy)
MAX_IMAGES = 10_000
MAX_BATCH = 1024  # images per call: the whole batch is sampled at once


def random_prompts(n, rng):
    """n prompts drawn as training draws them (minisd.scenes.random_scene): one or two objects, every
    size, colour, shape, place and relation."""
    return [scenes.random_scene(rng).prompt for _ in range(n)]


def score(images, prompts):
    """Fraction of images right on each attribute (minisd.checker.score: with two objects, right for both)."""
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for image, prompt in zip(images, prompts, strict=True):
        for key, right in checker.score(image, prompt).items():
            hits[key] += right
    return {key: count / len(prompts) for key, count in hits.items()}


def parse_args(argv):
    from minisd.mode import BACKENDS
    from minisd.pipeline import DEFAULT_GUIDANCE, PRECISIONS

    p = argparse.ArgumentParser(
        prog="python -m minisd eval",
        description="Does minisd follow its prompts? Samples random prompts and reads each image back with "
        "minisd.checker; exits 1 when an attribute scores below 90 % (with several guidance scales: when "
        "none passes).",
    )
    p.add_argument(
        "--num-images",
        type=int,
        help=f"images to score, at most {MAX_IMAGES} (default {GPU_IMAGES} on a GPU, {CPU_IMAGES} with numpy: "
        "about 30 s on 2 CPU cores)",
    )
    p.add_argument("--steps", type=int, default=25, help="DDIM steps per image (default 25)")
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[DEFAULT_GUIDANCE],
        help=f"guidance scale, or several to compare on the same prompts and seeds (default {DEFAULT_GUIDANCE})",
    )
    p.add_argument("--backend", choices=BACKENDS, help="default: the fastest this machine has")
    p.add_argument(
        "--precision", choices=PRECISIONS, help="the UNet's arithmetic on CuPy (default: as for sample)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="images generated per call (default 64)")
    p.add_argument("--weights", help="a minisd .safetensors file (default: the trained one)")
    return p.parse_args(argv)


def check_args(args):
    """Every option, before the model loads; fills in the backend and the backend's default image count."""
    from minisd.pipeline import check_precision

    args.backend = checks.backend(args.backend)
    try:
        args.precision = check_precision(args.precision, args.backend)
    except ValueError as err:
        raise checks.CliError(f"--precision: {err}", checks.EXIT_USAGE) from None
    if args.num_images is None:
        args.num_images = CPU_IMAGES if args.backend == "numpy" else GPU_IMAGES
    checks.int_range("num_images", args.num_images, high=MAX_IMAGES, why=" (enough to tell 90 % within 1 %)")
    checks.int_range("batch_size", args.batch_size, high=MAX_BATCH)
    checks.int_range("seed", args.seed, low=0)
    for guidance in args.guidance:
        checks.guidance(guidance)
    checks.int_range("steps", args.steps)
    checks.steps(args.steps, checks.weights_config(args.weights))


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        passed = []
        for guidance in args.guidance:
            accuracy = run(args, guidance)
            for key, value in accuracy.items():
                verdict = "ok" if value >= PASS_MARK else "BELOW " + format(PASS_MARK, ".0%")
                print(f"  {key:<11}{value:6.1%}  {verdict}")
            if min(accuracy.values()) >= PASS_MARK:
                passed.append(guidance)
    except checks.CliError as err:
        err.exit()
    if len(args.guidance) > 1:
        print(f"guidance scales that pass on every attribute: {', '.join(map(str, passed)) or 'none'}")
    if not passed:
        sys.exit(1)  # raise here, not return: the CLI may ignore main's return value
    return 0


def batch_progress(bar, first, size):
    """generate's ``progress(i, n)``, step i of n of a batch of ``size`` images from image ``first`` -> the
    bar, counted in images (fractions while a batch is under way)."""

    def progress(i, n):
        bar.n = round(first + size * (i + 1) / n, 1)
        bar.refresh()

    return progress


def run(args, guidance):
    from tqdm import tqdm

    import minisd
    import minisd.mode as mode
    from minisd.weights import WeightsError

    prompts = random_prompts(args.num_images, np.random.default_rng(args.seed))
    print(
        f"scoring {checks.plural(len(prompts), 'image')}, {checks.plural(args.steps, 'step')}, guidance "
        f"{guidance:g}, {mode.describe_backend(args.backend)}, {args.precision}"
    )
    options = {"num_inference_steps": args.steps, "guidance_scale": guidance}
    options |= {"backend": args.backend, "weights_path": args.weights, "precision": args.precision}
    start, images = time.time(), []
    with tqdm(total=len(prompts), unit="image", desc="sampling") as bar:
        for first in range(0, len(prompts), args.batch_size):
            batch = prompts[first : first + args.batch_size]
            progress = batch_progress(bar, first, len(batch))
            try:
                images.append(minisd.generate(batch, seed=args.seed + first, progress=progress, **options))
            except (
                WeightsError,
                ValueError,
            ) as err:  # the prompts are valid: the options or the file are not
                raise checks.CliError(str(err)) from None
    print(f"{checks.plural(len(prompts), 'image')} in {time.time() - start:.1f} s")
    return score(np.concatenate(images), prompts)


if __name__ == "__main__":
    main()
