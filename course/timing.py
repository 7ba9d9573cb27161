"""The course's timing harness is minisd's kernel harness (minisd/ops/harness.py), so a lesson times its
kernel versions exactly as minisd's dev tools time minisd's: ``time_gpu`` (CUDA events after a warm-up,
the median of many runs; wall clock, labelled, in the simulator), ``time_cpu``, ``report``."""

from minisd.ops.harness import report, time_cpu, time_gpu

__all__ = ["report", "time_cpu", "time_gpu"]
