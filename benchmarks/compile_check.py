"""Compile every Numba kernel the tests launch for a real GPU (sm_90 PTX, then ptxas), on a machine with no GPU.

The simulator runs kernels as Python, so it never sees what only the CUDA compiler refuses (an argument type
it cannot lower, a Python object inside a kernel) nor what makes a kernel slow (float64 arithmetic, spills).
This closes part of that gap without a GPU, in two passes:

1. ``record``: run tests in the simulator and note each kernel launched, by module, name and argument types;
2. ``compile``: in a fresh process with the real numba.cuda, compile each recorded kernel for ``--cc`` with
   NVVM, assemble it with ptxas, and report registers, spills and float64 instructions.

    python benchmarks/compile_check.py tests/exercises --solutions tests/test_ops.py notebooks/*.ipynb

Needs the CUDA toolkit's NVVM and ptxas (CUDA_HOME) and libnvrtc (e.g. the nvidia-cuda-nvrtc wheel on
LD_LIBRARY_PATH), no driver. A notebook's kernels are found again by running its imports, definitions and
assignments (not its launches) under the real numba.cuda. Kernels defined inside functions cannot be found by
name: they are listed as skipped. A kernel that compiles may still be wrong: this is not a run on a GPU.
"""

import argparse
import ast
import collections
import contextlib
import importlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record(args, path):
    """Run pytest and notebooks in this process in the simulator; pickle {(module, qualname): {argument types}}.

    A notebook's kernels are recorded under the module name ``notebook:<path>``."""
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import numba
    import pytest
    from numba.cuda.simulator import kernel as simulator

    from course.traffic import TrackedArray

    def numba_type(arg):
        if isinstance(arg, TrackedArray):
            arg = arg.data
        return getattr(arg, "_numba_type_", None) or numba.typeof(arg)

    launches, refused = collections.defaultdict(set), set()
    launch = simulator.FakeCUDAKernel.__call__

    def recording_call(self, *args):
        if self._device or simulator._kernel_context:
            return launch(self, *args)
        key = self.fn.__module__, self.fn.__qualname__
        try:
            launches[key].add(tuple(map(numba_type, args)))
        except ValueError:  # an argument numba cannot type: the compile pass would fail on it anyway
            launches[key].add(None)
        try:
            return launch(self, *args)
        except Exception:
            refused.add(key)  # a test's deliberate mistake: the compiler may refuse it as well
            raise

    simulator.FakeCUDAKernel.__call__ = recording_call
    notebooks = [a for a in args if a.endswith(".ipynb")]
    pytest_args = [a for a in args if a not in notebooks]
    code = int(pytest.main(["-q", "-p", "no:cacheprovider", "-x", *pytest_args])) if pytest_args else 0
    for notebook in notebooks:
        code = code or _run_notebook(notebook)
    Path(path).write_bytes(pickle.dumps({"launches": dict(launches), "refused": refused}))
    return code


def _notebook_cells(notebook):
    return [
        "".join(c["source"])
        for c in json.loads(Path(notebook).read_text())["cells"]
        if c["cell_type"] == "code"
    ]


def _run_notebook(notebook):
    """Run a notebook's cells in one namespace, from its own folder; 1 if a cell raised."""
    from run_notebook import run_cell

    namespace, here = {"__name__": f"notebook:{notebook}"}, os.getcwd()
    os.chdir(Path(notebook).parent)
    try:
        for source in _notebook_cells(Path(here) / notebook):
            outputs, failed = run_cell(source, namespace)
            if failed:
                print(f"{notebook} raised:\n{outputs[0].get('text', '')[-2000:]}", file=sys.stderr)
                return 1
    finally:
        os.chdir(here)
    return 0


def _notebook_definitions(notebook):
    """A notebook's namespace from its imports, definitions and the assignments that run without a GPU."""
    namespace, here = {"__name__": f"notebook:{notebook}"}, os.getcwd()
    os.chdir(Path(notebook).parent)
    try:
        for source in _notebook_cells(Path(here) / notebook):
            for node in ast.parse(source).body:
                if isinstance(node, (ast.Expr, ast.For, ast.While, ast.With, ast.If, ast.Try)):
                    continue  # launches, prints and timings: they need the GPU
                with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(ast.Module([node], []), notebook, "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace


def _as_gpu_process():
    """Let minisd.mode believe in a GPU, so modules import their GPU code paths under the real numba.cuda."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("minisd.mode", ROOT / "minisd" / "mode.py")
    source = Path(spec.origin).read_text().replace("if _cuda_device_count() > 0:", "if True:", 1)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, spec.origin, "exec"), module.__dict__)
    module.pick = lambda gpu, simulator: simulator  # sizes change no types: keep the host's data small
    sys.modules["minisd.mode"] = module


def _ptxas(ptx, cc):
    """(registers, local-memory bytes, spill bytes) for one kernel's PTX, or raise with ptxas's message."""
    ptxas = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [str(ptxas), f"-arch=sm_{cc[0]}{cc[1]}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
        )
        if "Unresolved extern function" in proc.stderr:  # fp16 and friends are linked in at load time
            proc = subprocess.run([*proc.args[:1], "-c", *proc.args[1:]], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip())
    # one "Used N registers" line per function (the kernel and any device function kept apart): the most
    registers = max(map(int, re.findall(r"Used (\d+) registers", proc.stderr)), default=0)
    local = max(map(int, re.findall(r"(\d+) bytes stack frame", proc.stderr)), default=0)
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", proc.stderr))
    return registers, local, spills


def _find(module_name, qualname):
    """The dispatcher named ``qualname`` in ``module_name`` (test modules too), or None."""
    for folder in (ROOT / "tests", ROOT / "tests" / "exercises"):  # pytest imports test files by basename
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    try:
        found = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # e.g. a test module that needs a GPU at import
        return None
    return found


def compile_all(path, cc):
    """Compile each recorded kernel with each recorded signature; print a table; return the failures."""
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    _as_gpu_process()
    from types import SimpleNamespace

    import numba.cuda.dispatcher
    from numba import cuda

    # A kernel's device functions are compiled for "the current device": let that be the target, not a driver.
    numba.cuda.dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)

    recorded = pickle.loads(Path(path).read_bytes())
    launches = recorded["launches"]
    failures, skipped, notebooks, agree = [], [], {}, []
    # local B: per-thread local memory (arrays the compiler could not keep in registers); f64 ops: float64
    # arithmetic instructions, often a float literal that turned a float32 kernel's maths into float64
    print(f"{'kernel':<64}{'sigs':>5}{'regs':>6}{'local B':>9}{'spill B':>9}{'f64 ops':>9}")
    for (module_name, qualname), signatures in sorted(launches.items()):
        name = f"{module_name}.{qualname}"
        if module_name.startswith("notebook:"):
            notebook = module_name.removeprefix("notebook:")
            if notebook not in notebooks:
                notebooks[notebook] = _notebook_definitions(notebook)
            dispatcher = notebooks[notebook].get(qualname)
        elif "<locals>" not in qualname:
            dispatcher = _find(module_name, qualname)
        if "<locals>" in qualname or not hasattr(dispatcher, "py_func"):
            skipped.append(name)
            continue
        registers = local = spills = f64 = 0
        if (module_name, qualname) in recorded["refused"]:  # raised in the simulator: a deliberate mistake
            try:
                for signature in signatures:
                    cuda.compile_ptx(dispatcher.py_func, signature, cc=cc)
                agree.append(f"{name} (compiles: the simulator's refusal is about running it)")
            except Exception:
                agree.append(f"{name} (the compiler refuses it too)")
            continue
        for signature in signatures:
            try:
                if signature is None:
                    raise TypeError("an argument has no Numba type")
                ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=cc)
                regs, frame, spill = _ptxas(ptx, cc)
            except Exception as err:  # report every kernel, not just the first failure
                failures.append(f"{name}{signature}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                continue
            registers, local, spills = max(registers, regs), max(local, frame), max(spills, spill)
            f64 = max(
                f64, len(re.findall(r"^\s*(?:add|sub|mul|fma|div|sqrt|rcp|max|min)\S*\.f64", ptx, re.M))
            )
        print(f"{name:<64}{len(signatures):>5}{registers:>6}{local:>9}{spills:>9}{f64:>9}")
    compiled = len(launches) - len(skipped) - len(agree)
    print(f"\n{compiled} kernels compiled for sm_{cc[0]}{cc[1]}, {len(failures)} failures")
    if agree:
        print(f"raised in the simulator on purpose (tests of mistakes): {', '.join(agree)}")
    if skipped:
        print(
            f"skipped (defined inside a function or a notebook's loop, not found by name): {', '.join(skipped)}"
        )
    for failure in failures:
        print(f"FAILED {failure}")
    return failures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pytest_args", nargs="*", default=["tests/exercises", "--solutions", "tests/test_ops.py"])
    p.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0: H100/H200)")
    p.add_argument("--record-only", metavar="PICKLE", help=argparse.SUPPRESS)
    p.add_argument("--compile-only", metavar="PICKLE", help=argparse.SUPPRESS)
    args, pytest_options = p.parse_known_args(argv)  # e.g. --solutions goes on to pytest
    args.pytest_args += pytest_options
    cc = tuple(int(n) for n in args.cc.split("."))
    if args.record_only:
        return record(args.pytest_args, args.record_only)
    if args.compile_only:
        return 1 if compile_all(args.compile_only, cc) else 0
    if shutil.which("ptxas", path=str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin")) is None:
        sys.exit("error: no ptxas under $CUDA_HOME/bin: point CUDA_HOME at a CUDA toolkit")
    with tempfile.TemporaryDirectory() as tmp:
        launches = str(Path(tmp) / "launches.pickle")
        me = [sys.executable, __file__]
        recorded = subprocess.run([*me, "--record-only", launches, *args.pytest_args], cwd=ROOT)
        if recorded.returncode:
            sys.exit(f"error: the tests failed in the simulator (exit {recorded.returncode}): fix them first")
        return subprocess.run([*me, "--compile-only", launches, "--cc", args.cc], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
