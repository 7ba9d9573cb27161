"""``python -m minisd bench``: how fast minisd samples on each backend, against what a user could pick instead.

Every contender runs the same job, minisd's one sampling loop (minisd.pipeline): encode the prompts (plus the
empty prompt for guidance), then 25 DDIM steps of the UNet on the batch of unconditional and conditional rows,
from the same weights, the same noise and the timesteps of their stored scheduler config:

* minisd on CuPy and on Numba, each replayed from CUDA graphs and eager (to show what the graphs buy);
* the same model in PyTorch (minisd.model, sampled by minisd/torch_sampler.py), eager and
  ``torch.compile(mode="reduce-overhead")`` (Inductor's fused kernels replayed from CUDA graphs: the fair
  match for minisd's graphs), each in float32 (TF32 off), TF32 (PyTorch's default for cuDNN convolutions),
  and bf16 / fp16 autocast: what a user who wants speed runs;
* minisd on numpy (CPU): a few steps timed and extrapolated to the full run (the table says so).

Each row states its precision. minisd's matrix products run in "3xtf32" (float32 accuracy on tensor cores).
Each time is the median of a few runs after warm-up (compilation, graph capture), with the device
synchronised. Writes benchmarks/<gpu>.json (naming the GPU) and prints a Markdown table.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import minisd.mode as mode
from minisd import files
from minisd.pipeline import DEFAULT_GUIDANCE, DEFAULT_PRECISION, MiniSDPipeline, check_guidance

PROMPTS = [
    "a small red star left of a big blue circle on a white background",
    "a big yellow heart at the top on a black background",
]
OURS = f"minisd-cupy-graphs-{DEFAULT_PRECISION}"  # what `minisd sample` runs on a GPU
BEST_TORCH = "torch-compile-bf16"  # the fastest thing a user could pick instead (measured on an H200)
NUMBA = "minisd-numba-graphs"
CUPY_FP32 = "minisd-cupy-graphs-fp32"
TARGETS = {  # (ratio, at most or at least) for minisd on CuPy graphs (and the last, on Numba graphs)
    "batch1_vs_eager": (0.8, "at most"),  # time at batch 1 against PyTorch eager fp32
    "batch64_throughput_vs_eager": (0.7, "at least"),  # images/s at batch 64 against PyTorch eager fp32
    "batch1_vs_compile_bf16": (0.7, "at most"),  # time at batch 1 against torch.compile bf16
    "batch64_throughput_vs_compile_bf16": (1.2, "at least"),  # images/s at batch 64 against it
    "speedup_vs_numpy": (100.0, "at least"),  # against numpy on the host CPU, both batches
    # the course's Numba kernels, replayed the same way: Python's launch cost gone, the kernels' own time left
    "numba_graphs_batch1_vs_cupy_graphs": (2.0, "at most"),  # batch 1 time against CuPy graphs, both fp32
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m minisd bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="images per run (default 1 64)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    p.add_argument("--numpy-steps", type=int, default=3, help="steps timed on numpy, then extrapolated")
    p.add_argument(
        "--only",
        nargs="+",
        choices=CONTENDERS,
        metavar="NAME",
        help=f"contenders to run (default: all this machine can): {', '.join(CONTENDERS)}",
    )
    p.add_argument("--weights", help="weights file (default: the trained one; random weights if missing)")
    p.add_argument("--out", help="JSON path (default benchmarks/<gpu-name>.json)")
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.steps < 1 or args.repeats < 1:
        p.error("--batches, --steps and --repeats must be at least 1")
    if not 1 <= args.numpy_steps <= args.steps:
        p.error(f"--numpy-steps must be between 1 and --steps ({args.steps})")
    try:
        check_guidance(args.guidance)
    except ValueError:
        p.error(f"--guidance must be a finite number >= 0, got {args.guidance}")
    return args


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def load_weights(path):
    """The given file (any problem is an error), else the trained one, else random weights of the same shapes."""
    from minisd import weights

    try:
        state, config = weights.load(path)
        return state, config, "trained"
    except weights.WeightsError:
        if path is not None:
            raise
        import torch

        from minisd.model import MiniSD

        torch.manual_seed(0)
        model = MiniSD()  # timing does not depend on the values
        return (
            {k: v.numpy() for k, v in model.state_dict().items()},
            model.config,
            "random (trained file missing)",
        )


def prompts_for(batch):
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


def median_time(run, repeats, sync=lambda: None):
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ contenders


def minisd_case(state, config, backend, graphs=True, precision=None):
    """A run(batch, steps) for minisd on ``backend``; the first call per batch warms up (and captures)."""
    pipe = MiniSDPipeline(
        state, config, backend=backend, log=lambda *a: None, graphs=graphs, precision=precision
    )

    def run(batch, steps, guidance, progress=None):
        return lambda: pipe(prompts_for(batch), steps, guidance, seed=0, progress=progress)

    warmups = 2 if pipe.graphs is not None else 1  # eager run, then capture
    return run, warmups


def torch_case(state, config, compile_mode=None, precision="fp32"):
    """minisd.model in PyTorch, sampled by the same loop (minisd/torch_sampler.py), at ``precision``."""
    import torch

    from minisd.model import MiniSD
    from minisd.torch_sampler import TorchSampler

    if compile_mode:
        torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per batch size, as minisd
        torch._dynamo.config.cache_size_limit = 64
    model = MiniSD(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model = model.to("cuda").eval()
    unet = torch.compile(model.unet, mode=compile_mode) if compile_mode else None
    sampler = TorchSampler(model, unet, compiled=compile_mode is not None)
    tf32 = precision != "fp32"  # TF32 is PyTorch's default for cuDNN; autocast leaves some fp32 ops
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def run(batch, steps, guidance, progress=None):
        def sample():
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.autocast("cuda", dtype=half) if half else contextlib.nullcontext():
                return sampler(prompts_for(batch), steps, guidance)

        return sample

    return run, 3 if compile_mode else 1  # compile, record, then replay


# name -> (description with precision, what it needs, maker of (run, warmups)), most important first
CONTENDERS = {
    **{
        f"minisd-cupy-graphs-{precision}": (
            f"minisd, CuPy kernels, CUDA graphs ({text})",
            "cupy",
            lambda s, c, p=precision: minisd_case(s, c, "cupy", precision=p),
        )
        for precision, text in (
            ("bf16", "bf16 tensor cores, fp32 accumulation"),
            ("fp16", "fp16 tensor cores, fp32 accumulation"),
            ("fp32", "fp32 via 3xTF32"),
        )
    },
    **{
        f"torch-{kind}-{precision}": (
            f"PyTorch {label} ({text})",
            "gpu",
            lambda s, c, m=compile_mode, p=precision: torch_case(s, c, m, p),
        )
        for kind, label, compile_mode in (
            ("compile", 'torch.compile(mode="reduce-overhead")', "reduce-overhead"),
            ("eager", "eager", None),
        )
        for precision, text in (
            ("bf16", "bf16 autocast"),
            ("fp16", "fp16 autocast"),
            ("tf32", "TF32"),
            ("fp32", "fp32, TF32 off"),
        )
    },
    "minisd-numpy": ("minisd, numpy on the CPU (fp32)", "cpu", lambda s, c: minisd_case(s, c, "numpy")),
    NUMBA: (
        "minisd, Numba kernels, CUDA graphs (fp32)",
        "cupy",  # CuPy's stream capture records the Numba launches
        lambda s, c: minisd_case(s, c, "numba"),
    ),
    "minisd-numba": (
        "minisd, Numba kernels, eager (fp32)",
        "gpu",
        lambda s, c: minisd_case(s, c, "numba", False),
    ),
    "minisd-cupy-eager": (
        "minisd, CuPy kernels, eager (fp32 via 3xTF32)",
        "cupy",
        lambda s, c: minisd_case(s, c, "cupy", False, precision="fp32"),
    ),
}


def contenders():
    """name -> (description, maker of (run, warmups)): the CONTENDERS this machine can run, in order."""
    have = {"cpu": True, "gpu": mode.ON_GPU, "cupy": mode.has_cupy()}
    return {name: (text, make) for name, (text, needs, make) in CONTENDERS.items() if have[needs]}


# -------------------------------------------------------------------------------------------------- run


def measure(name, make, state, config, args, log):
    run_for, warmups = make(state, config)
    results = {}
    for batch in args.batches:
        partial = name == "minisd-numpy"  # the CPU times a few steps only
        steps = args.numpy_steps if partial else args.steps
        step_ends = []
        run = run_for(
            batch, steps, args.guidance, lambda i, n, ends=step_ends: ends.append(time.perf_counter())
        )
        start = time.perf_counter()
        for _ in range(warmups):
            run()
        warm = time.perf_counter() - start
        step_ends.clear()
        seconds = median_time(run, 1 if partial else args.repeats, sync=device_sync)
        if partial:  # the run timed (prologue + steps), plus the missing steps at the mean step time
            per_step = (step_ends[-1] - step_ends[0]) / (steps - 1) if steps > 1 else seconds
            seconds += (args.steps - steps) * per_step
        results[str(batch)] = {
            "seconds": seconds,
            "images_per_s": batch / seconds,
            "ms_per_step": 1e3 * seconds / args.steps,
            "warmup_s": warm,
            "timed_steps": steps,
        }
        log(f"  {name:<20} batch {batch:>3}: {seconds * 1e3:9.1f} ms ({batch / seconds:8.1f} images/s)")
    return results


def device_sync():
    if mode.ON_GPU:
        from minisd.kernel_backend import cuda

        cuda.synchronize()


def ratios(results):
    """How minisd (CuPy graphs) compares: time ratios at batch 1, throughput ratios at batch 64; and the
    time of minisd on Numba graphs at batch 1 against CuPy graphs."""

    def seconds(name, batch):
        return results.get(name, {}).get(str(batch), {}).get("seconds")

    out = {}
    for other, key in (("torch-eager-fp32", "eager"), (BEST_TORCH, "compile_bf16")):
        ours, theirs = seconds(OURS, 1), seconds(other, 1)
        if ours and theirs:
            out[f"batch1_vs_{key}"] = ours / theirs
        ours, theirs = seconds(OURS, 64), seconds(other, 64)
        if ours and theirs:
            out[f"batch64_throughput_vs_{key}"] = theirs / ours  # throughput ratio = inverse time ratio
    for batch in (1, 64):
        ours, cpu = seconds(OURS, batch), seconds("minisd-numpy", batch)
        if ours and cpu:
            out[f"speedup_vs_numpy_batch{batch}"] = cpu / ours
    ours, numba = seconds(CUPY_FP32, 1), seconds(NUMBA, 1)  # the same float32 arithmetic
    if ours and numba:
        out["numba_graphs_batch1_vs_cupy_graphs"] = numba / ours
    return out


def target_of(key):
    return TARGETS.get(key.split("_batch")[0] if key.startswith("speedup") else key)


def check_targets(r):
    met = {}
    for key, value in r.items():
        bound, sense = target_of(key)
        met[key] = value <= bound if sense == "at most" else value >= bound
    return met


def markdown(report):
    batches = report["settings"]["batches"]
    head = "| contender | " + " | ".join(f"batch {b}: s (images/s)" for b in batches) + " |"
    lines = [head, "|" + "---|" * (len(batches) + 1)]
    for name, row in report["results"].items():
        cells = []
        for b in batches:
            r = row.get(str(b))
            if r is None:
                cells.append(row.get("error", "n/a")[:60])
                continue
            note = "*" if r["timed_steps"] != report["settings"]["steps"] else ""
            cells.append(f"{r['seconds']:.3f}{note} ({r['images_per_s']:.1f})")
        lines.append(f"| {report['descriptions'][name]} | " + " | ".join(cells) + " |")
    if any(
        r.get(str(b), {}).get("timed_steps") != report["settings"]["steps"]
        for r in report["results"].values()
        for b in batches
        if str(b) in r
    ):
        lines.append("")
        lines.append(
            f"\\* {report['settings']['numpy_steps']} steps timed, extrapolated to {report['settings']['steps']} "
            "at the mean time of the steps after the first."
        )
    if report["ratios"]:
        lines.append("")
        for key, value in report["ratios"].items():
            bound, sense = target_of(key)
            verdict = "met" if report["targets_met"][key] else "MISSED"
            lines.append(f"- {key}: {value:.2f} (target: {sense} {bound}, {verdict})")
    return "\n".join(lines)


def main(argv=None):
    from minisd.weights import WeightsError

    args = parse_args(argv)
    available = contenders()
    chosen = args.only or list(available)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        why = "" if mode.has_cupy() else " (no GPU found)" if not mode.ON_GPU else " (CuPy is not installed)"
        raise SystemExit(
            f"error: cannot run {', '.join(unknown)} here{why}; available: {', '.join(available)}"
        )
    try:
        state, config, weights_kind = load_weights(args.weights)
    except WeightsError as err:
        raise SystemExit(f"error: {err}") from None
    gpu = mode.gpu_name() or "cpu"
    print(f"minisd bench on {gpu}: {args.steps} DDIM steps, guidance {args.guidance}, weights {weights_kind}")
    out = Path(args.out or Path("benchmarks") / f"{slug(gpu)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in chosen:
        try:
            results[name] = measure(name, available[name][1], state, config, args, print)
        except Exception as err:  # one contender failing (e.g. torch.compile) must not lose the others
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"  {name}: FAILED {results[name]['error']}")
        report = make_report(gpu, args, weights_kind, {n: available[n][0] for n in results}, results)
        files.write_text(
            out, json.dumps(report, indent=2) + "\n"
        )  # after each contender: a timeout keeps the rest
    print()
    print(markdown(report))
    print(f"\nwrote {out}")
    return report


def make_report(gpu, args, weights_kind, descriptions, results):
    r = ratios(results)
    return {
        "gpu": gpu,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "settings": {
            "batches": args.batches,
            "steps": args.steps,
            "numpy_steps": args.numpy_steps,
            "guidance": args.guidance,
            "repeats": args.repeats,
            "weights": weights_kind,
        },
        "descriptions": descriptions,
        "results": results,
        "ratios": r,
        "targets": TARGETS,
        "targets_met": check_targets(r),
    }


if __name__ == "__main__":
    main()
