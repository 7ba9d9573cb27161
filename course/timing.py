"""One timing harness for every lesson (llm.c dev/cuda style): time versions of a kernel the same way.

On a GPU it times with CUDA events after a warm-up and reports the median of many runs. In the simulator
times are meaningless (each thread is a Python thread), so it still runs the function but says so, and
``report`` shows what a real GPU recorded for the same rows beside them (course.recorded).
"""

import statistics
import time

import minisd.mode as mode


def time_gpu(fn, *, warmup=3, repeat=20):
    """Median milliseconds of ``fn()``: CUDA events on a GPU, wall clock (labelled) in the simulator."""
    for _ in range(warmup):
        fn()
    if not mode.ON_GPU:
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) * 1e3 / repeat
    from numba import cuda

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


def report(rows, *, bytes_moved=None, flops=None, recorded=None):
    """Print a table of ``{name: milliseconds}`` with bandwidth / throughput when the work is given.

    In the simulator the times are Python threads on a tiny problem and say nothing about a GPU (they can even
    rank the versions backwards), so the table puts beside them what a GPU printed for the same rows:
    ``recorded`` is ``course.recorded.newest(<this notebook>)``, None when no GPU recorded it.
    """
    if mode.ON_GPU:
        for name, ms in rows.items():  # course.recorded reads these lines back: keep "name  ms ms ..."
            line = f"{name:<28}{ms:10.4f} ms"
            if bytes_moved:
                line += f"{bytes_moved / ms / 1e6:10.1f} GB/s"
            if flops:
                line += f"{flops / ms / 1e9:10.1f} TFLOP/s"
            print(line)
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
