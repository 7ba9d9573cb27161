"""What the graded tests share: which code they grade, seeded inputs, one launch harness, readable checks.

`pytest tests/exercises` grades exercises/; `--solutions` grades solutions/; `--exercises-dir DIR` grades the
lessonNN.py files in DIR (a learner's submission). The choice travels in COURSE_TARGET, set by the root
conftest.py. tests/exercises/conftest.py runs each lesson in its own process and calls ``instrument()`` there.

What a graded test can lean on:

* ``load("lesson01")``: the module under test, imported on first use (collecting the tests runs no learner code);
* ``rng``: the test's random generator, reseeded before every test from the run's seed and the test's name;
* ``launch(kernel, grid, block, *args)``: runs a kernel on poisoned outputs; in the simulator every array is a
  course.traffic array, so ``.budget(reads=..., writes=...)`` can hold each thread to its share of the work;
* ``launches()``: records which kernels a host function launched, with which grid (``.expect(...)``);
* ``assert_close``: says whether an element was never written, came out NaN or Inf, or is plain wrong.

``instrument()`` makes the simulator stricter where a GPU would silently misbehave: a block whose threads reach
``cuda.syncthreads()`` different numbers of times fails, shared memory starts as NaN (so reading it before
it was written shows), and a crash inside a kernel names the thread, the block and the line.
"""

import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import linecache
import os
import re
import sys
import threading
import zlib
from pathlib import Path

import numpy as np

import minisd.mode as mode

TARGETS = ("exercises", "solutions")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# Which code is graded
# ---------------------------------------------------------------------------------------------------------
def target():
    """``"exercises"``, ``"solutions"`` or the path of a folder of lessonNN.py files."""
    name = os.environ.get("COURSE_TARGET", "exercises")
    if name in TARGETS or Path(name).is_dir():
        return name
    raise ValueError(f"COURSE_TARGET={name!r}: choose one of {TARGETS} or a folder of lessonNN.py files")


def target_dir():
    name = target()
    return ROOT / name if name in TARGETS else Path(name).resolve()


def target_label():
    """How the score card names what it graded: ``exercises/``, ``solutions/`` or the folder."""
    name = target()
    return f"{name}/" if name in TARGETS else f"{Path(name).resolve()}{os.sep}"


def _import(lesson):
    name = target()
    if name in TARGETS:
        return importlib.import_module(f"{name}.{lesson}")
    # A folder of lessonNN.py files becomes the package "submission", so `from . import lesson04` still works.
    if "submission" not in sys.modules:
        package = importlib.util.module_from_spec(
            importlib.machinery.ModuleSpec("submission", None, is_package=True)
        )
        package.__path__ = [str(target_dir())]
        sys.modules["submission"] = package
    return importlib.import_module(f"submission.{lesson}")


class Lesson:
    """The graded module of one lesson, imported on first attribute access."""

    def __init__(self, lesson):
        self.lesson = lesson
        self._module = None

    def module(self):
        if self._module is None:
            self._module = _import(self.lesson)
        return self._module

    def __getattr__(self, name):
        if name.startswith("_"):  # pytest probes private names while collecting: that must import nothing
            raise AttributeError(name)
        return getattr(self.module(), name)

    def __repr__(self):
        return f"Lesson({self.lesson!r} of {target_label()})"


def load(lesson):
    """The module under test: ``load("lesson01")`` is exercises.lesson01 (or solutions.lesson01), imported lazily."""
    return Lesson(lesson)


# ---------------------------------------------------------------------------------------------------------
# Seeded inputs
# ---------------------------------------------------------------------------------------------------------
class SeededRNG:
    """A numpy Generator reseeded before each test from (run seed, test name): rerunning one test with the
    run's ``--seed`` reproduces exactly its inputs, whatever else runs."""

    def __init__(self):
        self.seed = None
        self._gen = np.random.default_rng()

    def reseed(self, run_seed, test_name):
        self.seed = int(run_seed)
        self._gen = np.random.default_rng([self.seed, zlib.crc32(test_name.encode())])

    def __getattr__(self, name):
        return getattr(self._gen, name)


rng = SeededRNG()


# ---------------------------------------------------------------------------------------------------------
# Poisoned outputs and readable comparisons
# ---------------------------------------------------------------------------------------------------------
# Quiet NaNs with a payload arithmetic never produces: "never written" and "computed NaN" are told apart.
_POISON_BITS = {2: np.uint16(0x7E5A), 4: np.uint32(0x7FC05EED), 8: np.uint64(0x7FF8_0000_0000_5EED)}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def poison(shape, dtype=np.float32):
    """An output buffer full of a marked NaN (-1, or the largest value, for integers): any element the kernel
    forgets shows up."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return np.full(shape, np.iinfo(dtype).max if dtype.kind == "u" else -1, dtype=dtype)
    return np.full(shape, _POISON_BITS[dtype.itemsize], dtype=_UINT[dtype.itemsize]).view(dtype)


def is_poison(a):
    """Which elements of ``a`` still hold ``poison``'s marked NaN (ignoring the sign bit)."""
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.dtype.itemsize not in _POISON_BITS:
        return np.zeros(a.shape, bool)
    bits = np.ascontiguousarray(a).view(_UINT[a.dtype.itemsize])
    sign = _UINT[a.dtype.itemsize](1 << (8 * a.dtype.itemsize - 1))
    return (bits & ~sign) == _POISON_BITS[a.dtype.itemsize]


def _first(mask):
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _fmt(v):
    """A number as a learner reads it: 6.504043, not np.float64(6.504042595624924)."""
    v = np.asarray(v).item()
    return f"{v:.7g}" if isinstance(v, float) else repr(v)


def _times(n):
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def assert_close(out, ref, rtol=1e-5, atol=1e-6, what="output"):
    """Like np.testing.assert_allclose, but the message tells a learner what went wrong and where."""
    out = np.asarray(out)
    ref = np.asarray(ref)
    if out.shape != ref.shape:
        raise AssertionError(f"{what} has shape {out.shape}, expected {ref.shape}")
    if out.dtype.kind == "f":
        expected = ~np.isnan(ref)
        never = is_poison(out) & expected
        if never.all():
            raise AssertionError(
                f"{what}: none of its {out.size} elements was written (all still the NaN the grader filled the "
                "output with): the kernel wrote nothing."
            )
        if never.any():
            raise AssertionError(
                f"{what}: {int(never.sum())} of {out.size} elements were never written (still the NaN the grader "
                f"filled the output with), first at index {_first(never)}. Does every element get a thread? "
                "Is the guard right?"
            )
        nan = np.isnan(out) & expected
        if nan.any():
            raise AssertionError(
                f"{what}: {int(nan.sum())} of {out.size} elements are NaN where the answer is a number, first at "
                f"index {_first(nan)} (expected {_fmt(ref[_first(nan)])}). NaN comes from 0/0, inf - inf, the square "
                "root or log of a negative number, or from reading shared memory before any thread wrote it "
                "(the grader fills fresh shared memory with NaN): is a cuda.syncthreads() missing?"
            )
        inf = np.isinf(out) & np.isfinite(ref)
        if inf.any():
            idx = _first(inf)
            raise AssertionError(
                f"{what}: {int(inf.sum())} of {out.size} elements are infinite where the answer is finite, first "
                f"at index {idx} (got {_fmt(out[idx])}, expected {_fmt(ref[idx])}): an overflow? float32 overflows past "
                "3.4e38, so exp(x) does for x > 88: subtract the largest value first."
            )
    bad = ~np.isclose(out, ref, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        idx = _first(bad)
        message = (
            f"{what}: {int(bad.sum())} of {out.size} elements differ, first at index {idx}: "
            f"got {_fmt(out[idx])}, expected {_fmt(ref[idx])} (rtol={rtol}, atol={atol})"
        )
        scale = float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0))
        if out.dtype.kind == "f" and abs(float(out[idx])) > 1e6 * (scale + 1):
            message += (
                ". A value that size is garbage: memory read before anything was written to it, usually a "
                "missing cuda.syncthreads() between the threads' shared-memory writes and the reads."
            )
        raise AssertionError(message)


# ---------------------------------------------------------------------------------------------------------
# One launch harness for the kernel exercises
# ---------------------------------------------------------------------------------------------------------
class Out:
    """An output argument of ``launch``: a fresh array of ``shape``, poisoned (or filled with ``fill``)."""

    def __init__(self, shape, dtype=np.float32, fill=None):
        self.shape = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
        self.dtype = np.dtype(dtype)
        self.fill = fill

    def array(self):
        if self.fill is None:
            return poison(self.shape, self.dtype)
        return np.full(self.shape, self.fill, self.dtype)


def _name(kernel):
    fn = getattr(kernel, "py_func", kernel)
    return getattr(fn, "__name__", str(kernel))


def _params(kernel):
    return list(inspect.signature(getattr(kernel, "py_func", kernel)).parameters)


def dims(value):
    """A grid or block as a 3-tuple: 5 -> (5, 1, 1), (2, 3) -> (2, 3, 1)."""
    d = (int(value),) if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    return d + (1,) * (3 - len(d))


def _show(d):
    d = tuple(d)
    while len(d) > 1 and d[-1] == 1:
        d = d[:-1]
    return str(d[0]) if len(d) == 1 else str(d)


class Launch:
    """One kernel launch made by ``launch``: every array argument's final value and, in the simulator, its traffic."""

    def __init__(self, name, grid, block, values, outputs, arrays):
        self.name, self.grid, self.block = name, dims(grid), dims(block)
        self.values = values  # parameter name -> the host array after the kernel ran
        self.outputs = outputs  # names of the Out(...) arguments, in order
        self.arrays = arrays  # parameter name -> its course.traffic array (simulator only)

    @property
    def out(self):
        """The (last) output's host array."""
        return self.values[self.outputs[-1]]

    def budget(self, reads=None, writes=None, block_reads=None, block_writes=None, element_reads=None):
        """Fail unless every thread read / wrote at most this many elements of each named array; ``block_*``
        bound a whole block, ``element_reads`` how often any one element was read (simulator only)."""
        from course import traffic

        if not mode.SIMULATOR:
            return self
        checks = [
            (reads, traffic.assert_reads_per_thread),
            (writes, traffic.assert_writes_per_thread),
            (block_reads, traffic.assert_reads_per_block),
            (block_writes, traffic.assert_writes_per_block),
            (element_reads, traffic.assert_each_element_read),
        ]
        for limits, check in checks:
            for name, at_most in (limits or {}).items():
                check(self.arrays[name], at_most)
        return self

    def written_once(self, name):
        """Fail unless each element of the named output was written by exactly one thread, once (simulator)."""
        from course import traffic

        if mode.SIMULATOR:
            traffic.assert_each_element_written_once(self.arrays[name])
        return self

    def coalesced(self, reads=(), writes=()):
        """Fail unless each warp's reads (writes) of the named arrays touch neighbouring addresses (simulator)."""
        from course import traffic

        if mode.SIMULATOR:
            for name in reads:
                traffic.assert_coalesced(self.arrays[name])
            for name in writes:
                traffic.assert_coalesced(self.arrays[name], kind=traffic.WRITE)
        return self


def _gpu_padded(host, pad):
    """A device view of ``host`` inside a poisoned buffer: longer by ``pad`` on every axis while that stays
    small, else by ``pad`` elements after its end. Returns (buffer, view, where the view sits in the buffer)."""
    from minisd.kernel_backend import cuda

    if np.prod([s + pad for s in host.shape]) <= 1 << 22:
        inside = tuple(slice(0, s) for s in host.shape)
        padded = poison(tuple(s + pad for s in host.shape), host.dtype)
        padded[inside] = host
        buf = cuda.to_device(padded)
        return buf, buf[inside], inside
    flat = poison(host.size + pad, host.dtype)
    flat[: host.size] = host.ravel()
    buf = cuda.to_device(flat)
    return buf, buf[: host.size].reshape(host.shape), (slice(0, host.size),)


def launch(kernel, grid, block, *args):
    """Run ``kernel[grid, block](*args)`` the way the grader does and return a ``Launch``.

    ``args`` are numpy arrays (inputs, copied), ``Out(shape, dtype)`` placeholders (outputs, poisoned) and
    scalars. In the simulator every array is a course.traffic array named after the kernel's parameter: an
    out-of-bounds access fails at once and ``Launch.budget`` checks each thread's share of the traffic. On a
    GPU each array sits in a padded buffer and a write into the padding fails the test.
    """
    from course import traffic
    from minisd.kernel_backend import cuda

    names = _params(kernel)
    if len(names) != len(args):
        raise AssertionError(
            f"{_name(kernel)} takes {len(names)} parameters {tuple(names)}, the grader passes {len(args)}: keep "
            "the exercise's signature."
        )
    values, outputs, arrays, device_args, padded = {}, [], {}, [], []
    pad = 8 + max(g * b for g, b in zip(dims(grid), dims(block), strict=True))
    for name, arg in zip(names, args, strict=True):
        if not isinstance(arg, Out | np.ndarray):
            device_args.append(arg)
            continue
        values[name] = arg.array() if isinstance(arg, Out) else np.array(arg)
        if isinstance(arg, Out):
            outputs.append(name)
        if mode.SIMULATOR:
            arrays[name] = traffic.track(
                values[name], name
            )  # wraps the host array: the kernel writes into it
            device_args.append(arrays[name])
        else:
            buf, view, inside = _gpu_padded(values[name], pad)
            device_args.append(view)
            padded.append((name, buf, inside))
    kernel[grid, block](*device_args)
    cuda.synchronize()
    for name, buf, inside in padded:  # GPU: a stray write lands in the padding around the array
        whole = buf.copy_to_host()
        outside = np.ones(whole.shape, bool)
        outside[inside] = False
        if not (is_poison(whole[outside]) | (whole[outside] == poison(1, whole.dtype)[0])).all():
            raise AssertionError(
                f"{_name(kernel)}[{_show(dims(grid))}, {_show(dims(block))}]: a thread wrote outside {name} "
                "(into the padding around it). Threads whose index falls outside the data must not touch it: "
                "guard every access."
            )
        values[name] = whole[inside].reshape(values[name].shape)
    return Launch(_name(kernel), grid, block, values, outputs, arrays)


def cpp_budget(kernel, reads=None, writes=None):
    """``Launch.budget`` for a course.cuda_cpu kernel built with ``strict=True``, after its launch: fail unless
    every thread read / wrote at most this many elements of each named pointer parameter. Nothing to check on
    a GPU (CuPy counts nothing) or when the kernel's pointers could not be counted."""
    counts = getattr(kernel, "counts", None)
    if not counts:
        return
    grid, block = kernel.last_launch
    per_block = int(np.prod(block))
    for kind, verb, limits in ((0, "read", reads), (1, "wrote", writes)):
        for name, at_most in (limits or {}).items():
            done = counts[name][:, kind]
            worst = int(done.argmax())
            if done[worst] <= at_most:
                continue
            b, t = divmod(worst, per_block)
            block_xyz = (b % grid[0], b // grid[0] % grid[1], b // (grid[0] * grid[1]))
            thread_xyz = (t % block[0], t // block[0] % block[1], t // (block[0] * block[1]))
            raise AssertionError(
                f"{name}: thread {thread_xyz} of block {block_xyz} {verb} {int(done[worst])} elements of global "
                f"memory; at most {at_most} per thread allowed. Each thread does its own share of the work (one "
                "thread doing everything in a loop is a CPU program) and touches each element once."
            )


# ---------------------------------------------------------------------------------------------------------
# Which kernels a host function launched
# ---------------------------------------------------------------------------------------------------------
class Launched:
    """A kernel launch seen by ``launches()``: name, grid and block (3-tuples)."""

    def __init__(self, name, grid, block):
        self.name, self.grid, self.block = name, dims(grid), dims(block)

    @property
    def threads(self):
        return int(np.prod(self.grid) * np.prod(self.block))

    def __repr__(self):
        return f"{self.name}[{_show(self.grid)}, {_show(self.block)}]"


class Launches(list):
    """The kernel launches made inside ``with launches() as seen:``, in order."""

    def of(self, kernel):
        name = kernel if isinstance(kernel, str) else _name(kernel)
        return [k for k in self if k.name == name]

    def expect(self, kernel, what, grid=None, block=None, threads_at_least=None, times=1):
        """Fail unless ``kernel`` was launched (at least ``times`` times; with this grid and block, or at least
        this many threads)."""
        name = kernel if isinstance(kernel, str) else _name(kernel)
        if not _RECORDING:
            return self  # no launch hook on this platform: nothing to check against
        found = self.of(name)
        seen = ", ".join(map(repr, self)) or "no kernel at all"
        if not found:
            raise AssertionError(
                f"{what} must do its work on the GPU by launching {name}, but it launched {seen}. An answer "
                "computed on the host (numpy, torch, a Python loop) does not count."
            )
        if len(found) < times:
            raise AssertionError(
                f"{what} launched {name} {_times(len(found))}, expected at least {_times(times)} (it launched "
                f"{seen}): is a step done on the host, or skipped?"
            )
        if grid is not None or block is not None:
            want = (dims(grid) if grid is not None else None, dims(block) if block is not None else None)
            if not any((want[0] in (None, k.grid)) and (want[1] in (None, k.block)) for k in found):
                asked = f"[{_show(want[0]) if want[0] else '...'}, {_show(want[1]) if want[1] else '...'}]"
                raise AssertionError(f"{what} launched {seen}; the exercise asks for {name}{asked}.")
        if threads_at_least is not None and max(k.threads for k in found) < threads_at_least:
            raise AssertionError(
                f"{what} launched {seen}: too few threads for {threads_at_least} pieces of work. Give each "
                "element (or row) its own thread."
            )
        return self


_recorders = []
_RECORDING = False  # set by instrument() once a launch hook is in place


@contextlib.contextmanager
def launches():
    """Record the kernel launches made inside the ``with`` block (after ``instrument()``)."""
    seen = Launches()
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def _record(name, grid, block):
    for seen in _recorders:
        seen.append(Launched(name, grid, block))


# ---------------------------------------------------------------------------------------------------------
# A stricter simulator for grading
# ---------------------------------------------------------------------------------------------------------
class KernelError(AssertionError):
    """A kernel did something a GPU would punish: the message names the thread, the block and the line."""


_TID = re.compile(r"^tid=\[([^\]]*)\] ctaid=\[([^\]]*)\](?:: )?(.*)$", re.S)
_SKIP_FRAMES = ("numba", "numpy", os.sep + "course" + os.sep, "threading.py")


def _learner_frame(tb):
    """(file, line, code) of the innermost frame in the graded code, else the innermost outside libraries."""
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    graded = str(target_dir())
    mine = [f for f in frames if f[0].startswith(graded)] or [
        f for f in frames if not any(s in f[0] for s in _SKIP_FRAMES)
    ]
    if not mine:
        return None
    path, line = mine[-1]
    shown = os.path.relpath(path, ROOT) if path.startswith(str(ROOT) + os.sep) else path
    return shown, line, linecache.getline(path, line).strip()


def _explain(kernel, exc):
    """A KernelError for an exception raised inside a simulated kernel thread, or None if it is not one."""
    found = _TID.match(str(exc))
    if found is None:
        return None
    tid, ctaid, message = (s.strip() for s in found.groups())
    where = _learner_frame(exc.__traceback__)
    at = f", at {where[0]}:{where[1]} `{where[2]}`" if where else ""
    what = message if isinstance(exc, IndexError) else f"{type(exc).__name__}: {message}"
    text = f"{kernel}: thread ({tid}) of block ({ctaid}): {what}{at}."
    if isinstance(exc, IndexError):
        text += (
            " Threads whose index falls outside the data must not touch it: guard every access (`if i < n:`), "
            "and check that x is the column, y the row."
        )
    return KernelError(
        f"{text} (The simulator says tid=[{tid}] ctaid=[{ctaid}]: tid is threadIdx, ctaid is blockIdx.)"
    )


def _divergent_barrier(manager, grid_point):
    counts = manager.__dict__.get("_course_barriers")
    if not counts:
        return None
    block = manager._block_dim
    every = [counts.get(t, 0) for t in range(int(np.prod(block)))]
    most, fewest = int(np.argmax(every)), int(np.argmin(every))
    if every[most] == every[fewest]:
        return None

    def thread(t):
        return (t % block[0], t // block[0] % block[1], t // (block[0] * block[1]))

    return KernelError(
        f"{manager._f.__name__ if hasattr(manager._f, '__name__') else 'kernel'}: in block {tuple(grid_point)}, "
        f"thread {thread(most)} reached cuda.syncthreads() {_times(every[most])} but thread {thread(fewest)} "
        f"{_times(every[fewest]) if every[fewest] else 'never'}. Every thread of the block must reach every cuda.syncthreads(): a barrier "
        "inside `if t < stride:` or `if i < n:` hangs a real GPU, or silently misbehaves. Do the guarded work "
        "around the barrier: `if t < stride: buf[t] += buf[t + stride]`, then `cuda.syncthreads()` for all."
    )


_shared_lock = threading.Lock()


def _fill_shared(a):
    """Fresh shared memory for a block: NaN for floats, 0xDEADBEEF for ints (what was never written shows)."""
    if a.dtype.kind == "f":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(np.array(0xDEADBEEF, np.uint64).astype(a.dtype))
    elif a.dtype.kind == "V" or a.dtype == np.byte:
        a.view(np.uint8).fill(0xFF)


def _install_simulator_hooks():
    # numba-cuda's simulator internals, not minisd.kernel_backend: only numba-cuda has a simulator.
    from numba.core import types
    from numba.cuda.simulator import kernel, kernelapi
    from numba.np import numpy_support

    launch_kernel = kernel.FakeCUDAKernel.__call__

    def checked_launch(self, *args):
        if self._device or kernel._get_kernel_context() is not None:
            return launch_kernel(self, *args)
        _record(self.__name__, self.grid_dim, self.block_dim)
        try:
            return launch_kernel(self, *args)
        except KernelError:
            raise
        except Exception as exc:
            explained = _explain(self.__name__, exc) if _strict else None
            if explained is None:
                raise
            raise explained from None

    def counted_syncthreads(self):
        counts = self._manager.__dict__.setdefault("_course_barriers", {})
        counts[self.thread_id] = counts.get(self.thread_id, 0) + 1  # only this thread writes its own entry
        return syncthreads(self)

    def checked_block(self, grid_point, *args):
        if not _strict:
            return run_block(self, grid_point, *args)
        context = kernel._get_kernel_context()
        if context is not None:  # blocks run one after another: each starts with fresh (NaN) shared memory
            for a in context._shared._allocations.values():
                _fill_shared(a)
            _fill_shared(context._shared._dynshared)
        run_block(self, grid_point, *args)
        divergent = _divergent_barrier(self, grid_point)
        if divergent is not None:
            raise divergent

    def shared_array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory, or the simulator's own refusal
            return original_shared(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)  # the simulator's rule: one shared array per line
        with _shared_lock:  # created and poisoned before any other thread can see it
            found = self._allocations.get(key)
            if found is None:
                found = self._allocations[key] = np.empty(shape, dtype)
                if _strict:
                    _fill_shared(found)
        return found

    syncthreads = kernel.BlockThread.syncthreads
    run_block = kernel.BlockManager.run
    original_shared = kernelapi.FakeCUDAShared.array
    kernel.FakeCUDAKernel.__call__ = checked_launch
    kernel.BlockThread.syncthreads = counted_syncthreads
    kernel.BlockManager.run = checked_block
    kernelapi.FakeCUDAShared.array = shared_array


def _install_gpu_hooks():
    if mode.NUMBA_CUDA == "mlir":
        return _install_mlir_gpu_hooks()
    from numba.cuda import dispatcher  # numba-cuda's own launch object: what its kernel[grid, block] returns

    configured = getattr(dispatcher, "_LaunchConfiguration", None)
    if configured is None:
        return False
    launch_configured = configured.__call__

    def recorded(self, *args):
        _record(self.dispatcher.py_func.__name__, self.griddim, self.blockdim)
        return launch_configured(self, *args)

    configured.__call__ = recorded
    return True


def _install_mlir_gpu_hooks():
    """numba-cuda-mlir's kernel[grid, block] returns a launcher built in C: wrap the method that makes it."""
    from numba_cuda_mlir.descriptor import MLIRDispatcher

    configure = MLIRDispatcher.configure

    def recorded(self, griddim, blockdim, *args, **kwargs):
        launcher = configure(self, griddim, blockdim, *args, **kwargs)

        def launch(*kernel_args):
            _record(self.py_func.__name__, griddim, blockdim)
            return launcher(*kernel_args)

        return launch

    MLIRDispatcher.configure = recorded
    return True


_installed = False
_strict = (
    False  # the simulator checks are on (only while graded tests run: other tests keep the plain simulator)
)


def strict(on):
    """Turn the simulator's grading checks on or off (between launches)."""
    global _strict
    _strict = bool(on)


def instrument(checks=True):
    """Record launches everywhere; in the simulator also count barriers, poison shared memory and explain
    crashes, from now on if ``checks`` (else from ``strict(True)``)."""
    global _installed, _RECORDING
    strict(checks)
    if _installed:
        return
    import course  # noqa: F401  (decides the mode, makes the simulator refuse what a GPU refuses)
    import course.warp  # noqa: F401  (its simulator hooks go first: warp shuffles, threads that report ending)

    if mode.SIMULATOR:
        _install_simulator_hooks()
        _RECORDING = True
    else:
        _RECORDING = _install_gpu_hooks()
    _installed = True


def where_kernels_ran():
    """One line for the score card: where this process ran the kernels."""
    if mode.ON_GPU:
        return f"on the GPU ({mode.gpu_name()})"
    return (
        "in Numba's CUDA simulator, because no GPU was found: every CUDA thread runs as a Python thread, so "
        "answers are right and speed means nothing"
    )
