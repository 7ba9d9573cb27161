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

from minisd import checker

COLORS = list(checker.PALETTE)
SHAPES = ["circle", "square", "triangle", "star", "heart"]
PASS_MARK = 0.9


def random_prompts(n, rng):
    """n prompts "a {color} {shape} on a {background} background", shape colour != background colour."""
    prompts = []
    for _ in range(n):
        color, background = rng.choice(COLORS, size=2, replace=False)
        prompts.append(f"a {color} {rng.choice(SHAPES)} on a {background} background")
    return prompts


def asked_for(prompt):
    """What a prompt asks for, in the checker's terms."""
    words = prompt.split()
    return {"color": words[1], "shape": words[2], "background": words[5]}


def score(images, prompts):
    """Fraction of images whose shape colour, background and shape match their prompt."""
    hits = {"color": 0, "background": 0, "shape": 0}
    for image, prompt in zip(images, prompts, strict=True):
        seen, wanted = checker.check(image), asked_for(prompt)
        for key in hits:
            hits[key] += seen[key] == wanted[key]
    return {key: count / len(prompts) for key, count in hits.items()}


def parse_args(argv):
    from minisd.mode import BACKENDS

    p = argparse.ArgumentParser(prog="python -m minisd eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps per image")
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=None,
        help="classifier-free guidance scale, or several to compare (default: minisd's)",
    )
    p.add_argument("--backend", choices=BACKENDS, help="default: the fastest this machine has")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="images generated per call")
    p.add_argument("--weights", help="a minisd .safetensors file (default: the trained one)")
    args = p.parse_args(argv)
    for name in ("num_images", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    import minisd
    import minisd.mode as mode
    from minisd.pipeline import DEFAULT_GUIDANCE, check_guidance
    from minisd.weights import WeightsError

    guidances = args.guidance or [DEFAULT_GUIDANCE]
    try:  # before the (slow) sampling: a bad option is one line, not a traceback
        mode.check_backend(args.backend or mode.default_backend())
        for guidance in guidances:
            check_guidance(guidance)
    except (ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    prompts = random_prompts(args.num_images, np.random.default_rng(args.seed))
    options = {"num_inference_steps": args.steps, "backend": args.backend, "weights_path": args.weights}
    passed = []
    for guidance in guidances:
        start, images = time.time(), []
        for i in range(0, len(prompts), args.batch_size):
            batch = prompts[i : i + args.batch_size]
            try:
                images.append(minisd.generate(batch, guidance_scale=guidance, seed=args.seed + i, **options))
            except (
                WeightsError,
                ValueError,
            ) as err:  # the prompts are valid: the options or the file are not
                sys.exit(f"error: {err}")
        seconds = time.time() - start
        accuracy = score(np.concatenate(images), prompts)
        print(
            f"{len(prompts)} images, {args.steps} steps, guidance {guidance}, backend "
            f"{args.backend or 'default'}: {seconds:.1f} s"
        )
        for key, value in accuracy.items():
            verdict = "ok" if value >= PASS_MARK else "BELOW " + format(PASS_MARK, ".0%")
            print(f"  {key:<11}{value:6.1%}  {verdict}")
        if min(accuracy.values()) >= PASS_MARK:
            passed.append(guidance)
    if len(guidances) > 1:
        print(f"guidance scales that pass on every attribute: {', '.join(map(str, passed)) or 'none'}")
    if not passed:
        sys.exit(1)  # raise here, not return: the CLI may ignore main's return value
    return 0


if __name__ == "__main__":
    main()
