"""The ops a forward pass calls: minisd.ops with the backend bound, or a lesson's kernels in their place.

``OpSet("cupy")`` calls the CuPy kernels directly (no dispatcher checks per call, and their fused
``residual=`` epilogues); ``OpSet("numba")`` / ``OpSet("numpy")`` go through ``minisd.ops``.
``OpSet(backend, kernels="solutions")`` takes every function that ``solutions/lesson11.py`` defines in place
of minisd's own (numpy in, numpy out, so the arrays stay on the host), and falls back to minisd's op, with
a printed note, where the lesson's function is missing or still raises NotImplementedError.
"""

import importlib

import numpy as np

import minisd.ops as ops

KERNEL_SOURCES = ("minisd", "solutions", "exercises")
_HOST_LIKE = np.empty(0, np.float32)

# Every op the pipeline calls (with conv2d, linear and the DDIM step, where most time goes).
OP_NAMES = (
    "add",
    "attention",
    "cfg_combine",
    "concat_channels",
    "conv2d",
    "ddim_step",
    "from_tokens",
    "geglu",
    "gelu",
    "group_norm",
    "layer_norm",
    "linear",
    "randn",
    "silu",
    "timestep_embedding",
    "to_tokens",
    "upsample_nearest2x",
)
# Whole UNet blocks a lesson may compose from its ops (lesson 11's exercises 11.3 and 11.4).
BLOCK_NAMES = ("resnet_block", "transformer_block")


def _bind(fn, backend):
    def bound(*args, **kwargs):
        return fn(*args, backend=backend, **kwargs)

    bound.__name__ = fn.__name__
    return bound


class OpSet:
    """``opset.conv2d(...)`` etc.: one attribute per op in OP_NAMES, plus ``to_device`` / ``to_numpy``.

    ``conv2d`` and ``linear`` also take ``residual=`` (added to the result): fused into the matrix product's
    epilogue on CuPy, a separate ``add`` elsewhere.
    """

    def __init__(self, backend, kernels=None, log=print):
        kernels = kernels or "minisd"
        if kernels not in KERNEL_SOURCES:
            raise ValueError(f"kernels must be one of {', '.join(KERNEL_SOURCES)}, got {kernels!r}")
        self.backend, self.kernels, self.log = backend, kernels, log
        self.blocks = {}  # name -> a lesson's block, returning None once it fell back (see minisd.forward)
        self.lesson_ran = set()  # names of the lesson's ops and blocks that returned a result
        # Arrays live on the backend's device, except with a lesson's kernels (numpy in, numpy out).
        self.on_host = backend == "numpy" or kernels != "minisd"
        self.fused_epilogues = backend == "cupy" and kernels == "minisd"
        if self.fused_epilogues:
            from minisd.ops import cupy_ops

            table = {name: getattr(cupy_ops, name) for name in OP_NAMES}
        else:
            table = {name: _bind(getattr(ops, name), backend) for name in OP_NAMES}
            if self.on_host and backend != "numpy":  # randn would return a device array
                table["randn"] = lambda shape, seed: ops.randn(shape, seed, backend, like=_HOST_LIKE)
        if kernels != "minisd":
            table.update(self._lesson_overrides(kernels, table))
        self._table = table
        for name, fn in table.items():
            if name not in ("conv2d", "linear"):
                setattr(self, name, fn)

    def _lesson_overrides(self, kernels, table):
        module_name = f"{kernels}.lesson11"
        try:
            lesson = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name not in (kernels, module_name):
                raise
            self.log(f"note: {module_name} does not exist yet: every op uses minisd's {self.backend} kernels")
            return {}
        overrides, missing = {}, []
        for name in OP_NAMES:
            theirs = getattr(lesson, name, None)
            if theirs is None:
                missing.append(name)
            else:
                overrides[name] = self._with_fallback(module_name, name, theirs, table[name])
        for name in BLOCK_NAMES:
            if hasattr(lesson, name):
                self.blocks[name] = self._block_with_fallback(module_name, name, getattr(lesson, name))
        self.log(f"using {module_name} for {', '.join([*overrides, *self.blocks]) or 'no op'}")
        if missing:
            self.log(
                f"note: {module_name} has no {', '.join(missing)}: minisd's {self.backend} kernels run those"
            )
        return overrides

    def _with_fallback(self, module_name, name, theirs, ours):
        """``theirs`` until it raises NotImplementedError once; ``ours`` from then on."""
        state = {"fn": theirs}

        def call(*args, **kwargs):
            try:
                out = state["fn"](*args, **kwargs)
            except NotImplementedError as err:
                if state["fn"] is ours:
                    raise
                self.log(f"note: {module_name}.{name}() is not implemented yet ({err}): using minisd's")
                state["fn"] = ours
                return ours(*args, **kwargs)
            if state["fn"] is theirs:
                self.lesson_ran.add(name)
            return out

        return call

    def _block_with_fallback(self, module_name, name, theirs):
        """The lesson's block until it raises NotImplementedError; then None, and minisd composes the block."""
        state = {"on": True}

        def call(*args):
            if state["on"]:
                try:
                    out = theirs(*args)
                    self.lesson_ran.add(name)
                    return out
                except NotImplementedError as err:
                    self.log(f"note: {module_name}.{name}() is not implemented yet ({err}): using minisd's")
                    state["on"] = False
            return None

        return call

    def conv2d(self, x, weight, bias=None, stride=1, padding=0, residual=None):
        if self.fused_epilogues:
            return self._table["conv2d"](x, weight, bias, stride, padding, residual=residual)
        out = self._table["conv2d"](x, weight, bias, stride, padding)
        return out if residual is None else self.add(out, residual)

    def linear(self, x, weight, bias=None, residual=None):
        if self.fused_epilogues:
            return self._table["linear"](x, weight, bias, residual=residual)
        out = self._table["linear"](x, weight, bias)
        return out if residual is None else self.add(out, residual)

    def to_device(self, x):
        """A host (numpy) array where this op set wants its arrays."""
        return x if self.on_host else ops.to_device(x, self.backend)

    @staticmethod
    def to_numpy(x):
        return ops.to_numpy(x)
