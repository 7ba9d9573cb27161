"""One kernel harness (llm.c dev/cuda style): check a kernel against an oracle, time it, report it.

minisd's dev tools (python -m minisd.ops.dev, python -m minisd.ops.cupy_dev), the tests and the notebooks
(through course.timing) all use it, so every kernel is judged by one error metric and timed one way:

    err = rel_error(out, ref)            # max |out - ref| / max |ref|, in float64; inf if out has NaN
    assert_close(out, ref, tol, "what")  # the check: shape, every element written, rel_error <= tol
    ms = time_gpu(fn)                    # median ms: CUDA events on a GPU, wall clock (labelled) otherwise
    report({"v1": ms1, "v2": ms2}, flops=2 * m * n * k)
    show_source(softmax._softmax_v1)     # a notebook shows the kernel it runs instead of a copy of it

The oracle is torch in float64 (or, for randn, the numpy generator bit for bit); outputs are poisoned with
NaN before a kernel runs, so an element it never writes shows up as NaN, and rel_error makes that inf.
The metric is relative to the largest reference value (a normwise bound): float32 rounding of a sum of K
terms grows like K * 2^-24 of the largest term, whatever the sign of each output element.
"""

import inspect
import math
import statistics
import time

import numpy as np

import minisd.mode as mode


def _float64(x):
    """Any array (numpy, torch on any device, CuPy, Numba) as a float64 numpy array."""
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().double().numpy()
    if hasattr(x, "get") and not isinstance(x, np.ndarray):  # CuPy
        x = x.get()
    elif hasattr(x, "copy_to_host"):  # Numba
        x = x.copy_to_host()
    return np.asarray(x, np.float64)


def rel_error(out, ref):
    """max |out - ref| / max |ref| (0 for empty arrays, inf when out holds NaN or inf)."""
    out, ref = _float64(out), _float64(ref)
    if out.shape != ref.shape:
        raise ValueError(f"shapes differ: output {out.shape}, reference {ref.shape}")
    if not out.size:
        return 0.0
    if not np.isfinite(out).all():
        return math.inf
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def assert_close(out, ref, tol, what="output"):
    """Fail with a message naming ``what`` unless ``out`` has ``ref``'s shape, no NaN, and
    rel_error(out, ref) <= tol."""
    got, want = _float64(out), _float64(ref)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    unwritten = np.isnan(got) & ~np.isnan(want)
    assert not unwritten.any(), (
        f"{what}: {int(unwritten.sum())} of {got.size} elements never written (NaN poison), "
        f"first at {tuple(int(i) for i in np.argwhere(unwritten)[0])}"
    )
    err = rel_error(got, want)
    assert err <= tol, f"{what}: max error {err:.2e} of max|ref| > tolerance {tol:.0e}"


def show_source(*functions):
    """Print the source of each function or Numba kernel: how a notebook shows minisd's kernel versions."""
    for fn in functions:
        print(inspect.getsource(getattr(fn, "py_func", None) or getattr(fn, "fn", None) or fn))


# ------------------------------------------------------------------------------------------------ timing


def time_gpu(fn, *, warmup=3, repeat=20):
    """Median milliseconds of ``fn()``: CUDA events on a GPU, wall clock (labelled) in the simulator.

    The events wait for the work ``fn`` queued on the default stream (Numba's, CuPy's and torch's
    default streams are the same legacy stream), so the time is the GPU's, launches included."""
    for _ in range(warmup):
        fn()
    if not mode.ON_GPU:
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) * 1e3 / repeat
    from minisd.kernel_backend import cuda

    times = []
    for _ in range(repeat):
        begin, end = cuda.event(), cuda.event()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cuda.event_elapsed_time(begin, end))
    return statistics.median(times)


def time_cpu(fn, *, warmup=1, repeat=5):
    """Median milliseconds of a host function (numpy, torch on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_wall(fn, sync, *, calls=20, rounds=3):
    """Best wall-clock milliseconds per call of ``calls`` back-to-back ``fn()``, then ``sync()``: what a
    plain Python loop sees, launch overhead included."""
    fn()
    sync()
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) * 1e3 / calls)
    return best


def time_cupy_graph(fn, stream, *, reps=20, rounds=15):
    """Median GPU milliseconds of one ``fn()`` (CuPy work), from replays of a CUDA graph of ``reps`` calls
    captured on ``stream``: Python's launch overhead (more than most kernels take) stays out."""
    import cupy as cp

    with stream:
        fn()
        fn()  # compile, load, and fill the memory pool outside the capture
        stream.synchronize()
        stream.begin_capture()
        for _ in range(reps):
            fn()
        graph = stream.end_capture()
        graph.launch(stream)
        times = []
        for _ in range(rounds):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            graph.launch(stream)
            stop.record(stream)
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / reps)
    return statistics.median(times)


def time_torch_graph(fn, *, reps=20, rounds=15):
    """``time_cupy_graph`` for torch work: median GPU milliseconds of one ``fn()`` replayed from a graph."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    times = []
    for _ in range(rounds):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / reps)
    return statistics.median(times)


def throughput(ms, *, bytes_moved=None, flops=None):
    """ "  123.4 GB/s" and/or "   12.3 TFLOP/s" for work done in ``ms`` milliseconds ("" without either)."""
    text = f"{bytes_moved / ms / 1e6:10.1f} GB/s" if bytes_moved else ""
    return text + (f"{flops / ms / 1e9:10.1f} TFLOP/s" if flops else "")


def report(rows, *, bytes_moved=None, flops=None, recorded=None):
    """Print a table of ``{name: milliseconds}`` with bandwidth / throughput when the work is given.

    In the simulator the times are Python threads on a tiny problem and say nothing about a GPU (they can even
    rank the versions backwards), so the table puts beside them what a GPU printed for the same rows:
    ``recorded`` is ``course.recorded.newest(<this notebook>)``, None when no GPU recorded it.
    """
    if mode.ON_GPU:
        for name, ms in rows.items():  # course.recorded reads these lines back: keep "name  ms ms ..."
            print(f"{name:<28}{ms:10.4f} ms{throughput(ms, bytes_moved=bytes_moved, flops=flops)}")
        return
    if recorded is None:
        print("(simulator: Python-thread times, meaningless as GPU time; compare versions on a real GPU)")
        for name, ms in rows.items():
            print(f"{name:<28}{ms:10.4g} ms")
        return
    gpu = recorded.timings()
    print(f"{'':<28}{'simulator':>13}    GPU: {recorded}, full size")
    for name, ms in rows.items():
        print(f"{name:<28}{ms:10.4g} ms    {gpu.get(name, 'not in the recording')}")
    print(
        "(simulator column: this machine standing in for a GPU on a tiny problem, meaningless as GPU time; compare"
        " versions in the GPU column)"
    )
