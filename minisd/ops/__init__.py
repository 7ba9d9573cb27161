"""minisd's ops: torch.nn.functional-like, NCHW float32, on the backend of your choice.

    ops = Ops("numpy")                           # or "numba", "cupy"; Ops() picks the fastest one here
    y = ops.conv2d(x, weight, bias, padding=1)

``Ops`` is the one way in. Each method checks its arrays once (dtype, layout, shapes: a clear TypeError or
ValueError naming the argument otherwise), allocates the output, and calls the backend's function of the
same name in ``ops.kernels``: minisd/ops/numpy_ops.py, minisd/ops/numba/__init__.py or minisd/ops/cupy_ops.py.
Every backend function has one calling convention: the arrays and parameters in the method's order, then
``out=`` (allocated here, C-contiguous float32, the right shape), which it fills and returns. So a backend
only computes; it checks nothing.

Where results live: the result has the kind of the method's first array argument.

* numpy in -> numpy out, on every backend (a device backend copies in, computes, copies back).
* Device arrays stay on the device: Numba device array -> Numba device array, CuPy -> CuPy, torch CUDA
  tensor -> torch CUDA tensor. Other array arguments of another kind are moved to the device first (so
  upload weights once with ``to_device``; a numpy weight is copied on every call).
* The numpy backend takes numpy arrays only: call ``to_numpy`` first.

Rules checked before any work:

* Arrays must be float32. float64 (and every other dtype) is REJECTED, not converted: a silent
  conversion would hide a doubled memory footprint or a precision expectation the op does not meet.
  Convert explicitly with ``x.astype(np.float32)``. (timestep_embedding's timesteps may be any number type.)
* numpy inputs may be strided (they are made contiguous); device inputs must be C-contiguous.
* Shapes must agree as each method documents (channels, groups dividing channels, head dims, ...).

Numba specifics: ``set_stream(s)`` makes later Numba launches use ``s`` (a CuPy or torch stream, a Numba
stream or a raw cudaStream_t), e.g. to capture them in a CUDA graph; ``set_allocator(f)`` makes the ops take
their outputs and scratch arrays from ``f(shape)`` (e.g. a graph's memory pool, see minisd/cuda_graphs.py).
Numba does not synchronize with the stream a CuPy/torch array was produced on: launch on that stream. The CuPy backend uses CuPy's current
stream (``with stream:``) and, inside ``cupy.cuda.using_allocator``, allocates from that pool.
"""

import math
import numbers

import numpy as np

import minisd.mode as mode
from minisd import schedulers
from minisd.ops import numpy_ops, rng

__all__ = ["Ops", "get_stream", "set_allocator", "set_stream", "to_device", "to_numpy"]


# ---------------------------------------------------------------------------------------------------
# array kinds and moving data


def _kind(x, name="x"):
    """'numpy' | 'numba' | 'cupy' | 'torch' (CUDA tensors only); TypeError for anything else."""
    if isinstance(x, np.ndarray):
        return "numpy"
    root = type(x).__module__.split(".")[0]
    if root == "cupy":
        return "cupy"
    if root == "torch":
        if getattr(x, "is_cuda", False):
            return "torch"
        raise TypeError(f"{name} is a CPU torch tensor: pass a numpy array ({name}.numpy()) or a CUDA tensor")
    if root == "numba" or hasattr(x, "__cuda_array_interface__"):
        return "numba"
    raise TypeError(f"{name} must be a numpy array or a CUDA device array, got {type(x).__name__}")


def _numba():
    from minisd.ops import numba  # imported lazily: numba.cuda is slow to import and not always needed

    return numba


def _cupy():
    import cupy

    return cupy


def _host_contiguous(x):
    return np.ascontiguousarray(x).reshape(x.shape)  # reshape: ascontiguousarray makes a 0-d array (1,)


def _as_numba(x):
    """A Numba view of a device array (zero copy), or a copy of a numpy array on the device."""
    from minisd.kernel_backend import cuda

    kind = _kind(x)
    if kind == "numpy":
        return cuda.to_device(_host_contiguous(x), stream=get_stream())
    if kind == "numba" and hasattr(x, "copy_to_host"):  # already a Numba device array
        return x
    return cuda.as_cuda_array(x, sync=False)  # no host sync: the caller orders streams (see set_stream)


def to_device(x, backend=None):
    """``x`` on ``backend``'s device: a Numba device array ("numba"), a CuPy array ("cupy"); numpy stays."""
    backend = mode.default_backend() if backend is None else backend
    mode.check_backend(backend)
    return _to_device(x, backend)


def _to_device(x, backend):
    if backend == "numpy":
        return to_numpy(x)
    if backend == "cupy":
        return _cupy().asarray(x)
    return _as_numba(x)


def to_numpy(x):
    """Any array minisd's ops accept as a numpy array (copied to the host; numpy arrays come back as they are)."""
    kind = _kind(x)
    if kind == "numpy":
        return x
    if kind == "cupy":
        return x.get()
    if kind == "torch":
        return x.detach().cpu().numpy()
    return x.copy_to_host()


def set_stream(stream):
    """Launch later Numba kernels on ``stream`` (None = default); returns the previous one."""
    return _numba().set_stream(stream)


def get_stream():
    return _numba().get_stream()


def set_allocator(allocate):
    """Numba backend: allocate later outputs with ``allocate(shape)`` (None = Numba's own); returns the previous."""
    return _numba().set_allocator(allocate)


def _dtype_name(x):
    return str(x.dtype).removeprefix("torch.")


def _contiguous(x, kind):
    if kind in ("numpy", "cupy"):
        return x.flags.c_contiguous
    if kind == "torch":
        return x.is_contiguous()
    return getattr(x, "is_c_contiguous", lambda: True)()  # another library's CUDA array: Numba checks it


class _Call:
    """One op call: checks and converts its arrays, allocates its output, converts the result back."""

    def __init__(self, ops, first, name, kind=None):
        self.backend = ops.backend
        self.first = first
        self.kind = kind or _kind(first, name)  # the result will be of this kind
        if self.backend == "numpy" and self.kind != "numpy":
            raise TypeError(
                f"backend 'numpy' takes numpy arrays, but {name} is a {self.kind} device array: "
                "use ops.to_numpy() first, or a GPU backend"
            )

    def arr(self, name, x, ndim=None, any_number=False):
        """Validate one array argument and convert it for the backend (None passes through)."""
        if x is None:
            return None
        kind = _kind(x, name)
        if self.backend == "numpy" and kind != "numpy":
            raise TypeError(f"backend 'numpy' takes numpy arrays, but {name} is a {kind} device array")
        if any_number:
            if not any(t in _dtype_name(x) for t in ("int", "float")):
                raise TypeError(f"{name} must hold numbers, got dtype {_dtype_name(x)}")
        elif _dtype_name(x) != "float32":
            raise TypeError(
                f"{name} must be float32, got {_dtype_name(x)} (minisd's ops compute in float32; "
                f"convert explicitly, e.g. {name}.astype(np.float32))"
            )
        if ndim is not None and len(x.shape) not in np.atleast_1d(ndim):
            want = " or ".join(f"{d}-D" for d in np.atleast_1d(ndim))
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
        if self.backend == "cupy" and math.prod(x.shape) >= 2**31:
            raise ValueError(
                f"{name} has {math.prod(x.shape)} elements; CuPy's kernels index with 32-bit ints"
            )
        if kind == "numpy":
            x = _host_contiguous(x)
        elif not _contiguous(x, kind):
            raise ValueError(
                f"{name} must be C-contiguous on the device (e.g. .contiguous() / ascontiguousarray)"
            )
        if self.backend == "numba":
            return _as_numba(x)
        if self.backend == "cupy":
            return _cupy().asarray(x)
        return x

    def run(self, kernel, shape, *args, **kwargs):
        """``kernel(*args, **kwargs, out=out)`` into a fresh ``out`` of ``shape``; the result of our kind."""
        shape = tuple(int(s) for s in shape)
        if self.backend == "numpy":
            out = np.empty(shape, np.float32)
            return kernel(*args, **kwargs, out=out) if out.size else out
        if self.backend == "cupy":
            out = _cupy().empty(shape, np.float32)
            if out.size:
                kernel(*args, **kwargs, out=out)
            return self._from_cupy(out)
        out, result = self._alloc(shape)
        if math.prod(shape) > 0:
            kernel(*args, **kwargs, out=out)
        if self.kind == "numpy":
            host = out.copy_to_host(stream=get_stream())
            if get_stream():
                get_stream().synchronize()
            return host
        return result

    def _alloc(self, shape):
        """Output for the numba backend, allocated by the caller's library: (numba view, what to return)."""
        from minisd.kernel_backend import cuda
        from minisd.ops.numba.common import empty

        if self.kind == "cupy":
            o = _cupy().empty(shape, np.float32)
            return cuda.as_cuda_array(o, sync=False), o
        if self.kind == "torch":
            import torch

            o = torch.empty(shape, dtype=torch.float32, device=self.first.device)
            return cuda.as_cuda_array(o, sync=False), o
        o = empty(shape)
        return o, o

    def _from_cupy(self, out):
        if self.kind == "cupy":
            return out
        if self.kind == "numpy":
            return _cupy().asnumpy(out)
        if self.kind == "torch":
            import torch

            return torch.as_tensor(out, device=self.first.device)
        from minisd.kernel_backend import cuda

        return cuda.as_cuda_array(out, sync=False)


def _int(name, v, lo):
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _same_shape(names, *arrays):
    shapes = [tuple(a.shape) for a in arrays]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(
            f"{' and '.join(names)} must have the same shape, got {' and '.join(map(str, shapes))}"
        )


def _vector(name, v, n, what):
    if v is not None and tuple(v.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) ({what}), got {tuple(v.shape)}")


def _residual(residual, shape):
    if residual is not None and tuple(residual.shape) != tuple(shape):
        raise ValueError(f"residual must have the output's shape {tuple(shape)}, got {tuple(residual.shape)}")


def kernels_of(backend):
    """The module holding ``backend``'s kernels (imported on first use)."""
    if backend == "numpy":
        return numpy_ops
    if backend == "numba":
        return _numba()
    from minisd.ops import cupy_ops

    return cupy_ops


# ---------------------------------------------------------------------------------------------------
# the ops


class Ops:
    """minisd's ops on one backend ("numpy" | "numba" | "cupy"; None: ``minisd.mode.default_backend()``).

    ``kernels`` replaces the backend's kernel module (see minisd/lesson_kernels.py, which runs a lesson's
    functions this way); it must follow the backend convention above.
    """

    def __init__(self, backend=None, kernels=None):
        self.backend = mode.default_backend() if backend is None else backend
        mode.check_backend(self.backend)  # once: every call below trusts it
        self.kernels = kernels if kernels is not None else kernels_of(self.backend)

    def __repr__(self):
        return f"Ops({self.backend!r})"

    def _call(self, first, name, kind=None):
        return _Call(self, first, name, kind)

    def to_device(self, x):
        """A host (numpy) array where this backend wants its arrays."""
        return _to_device(x, self.backend)

    @staticmethod
    def to_numpy(x):
        return to_numpy(x)

    # -------------------------------------------------------------------------------- matrix products

    def conv2d(
        self, x, weight, bias=None, stride=1, padding=0, residual=None, channel_add=None, upsample=False
    ):
        """2-D convolution (cross-correlation, like torch): x (N,C,H,W), weight (O,C,kh,kw), bias (O,);
        ``residual`` (the output's shape) is added to the result (fused into the CuPy kernel's epilogue).
        ``channel_add`` (N, O) is added to every pixel of its image and channel (a ResNet's time embedding)
        and ``upsample=True`` convolves the nearest-2x upsampled x: the half-precision kernels fuse both
        (minisd/ops/half_ops.py); here they are the ops they stand for, before and after."""
        if channel_add is not None:  # checked first, by its own name
            channel_add = self._call(x, "x").arr("channel_add", channel_add, 2)
            want = (tuple(x.shape)[0], tuple(weight.shape)[0])
            if tuple(channel_add.shape) != want:
                raise ValueError(f"channel_add must be (N, O) = {want}, got {tuple(channel_add.shape)}")
        if upsample:
            x = self.upsample_nearest2x(x)
        out = self._conv2d(x, weight, bias, stride, padding, residual)
        return out if channel_add is None else self.add(out, channel_add)

    def _conv2d(self, x, weight, bias, stride, padding, residual):
        call = self._call(x, "x")
        x, weight = call.arr("x", x, 4), call.arr("weight", weight, 4)
        bias, residual = call.arr("bias", bias, 1), call.arr("residual", residual, 4)
        stride, padding = _int("stride", stride, 1), _int("padding", padding, 0)
        n, c, h, w = x.shape
        o, wc, kh, kw = weight.shape
        if 0 in weight.shape:
            raise ValueError(
                f"weight must have no empty axis (a kernel of at least 1x1), got {tuple(weight.shape)}"
            )
        if wc != c:
            raise ValueError(
                f"weight expects {wc} input channels (shape {tuple(weight.shape)}), but x has {c}"
            )
        _vector("bias", bias, o, "one per output channel")
        ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(
                f"kernel {kh}x{kw} is larger than the padded input {h + 2 * padding}x{w + 2 * padding}"
            )
        _residual(residual, (n, o, ho, wo))
        return call.run(self.kernels.conv2d, (n, o, ho, wo), x, weight, bias, stride, padding, residual)

    def linear(self, x, weight, bias=None, residual=None):
        """x (..., in) @ weight (out, in)^T + bias (out,), + ``residual`` (the output's shape)."""
        call = self._call(x, "x")
        x, weight = call.arr("x", x), call.arr("weight", weight, 2)
        bias, residual = call.arr("bias", bias, 1), call.arr("residual", residual)
        if len(x.shape) < 1 or tuple(x.shape)[-1] != weight.shape[1]:
            raise ValueError(
                f"x's last axis must match weight's in_features: x {tuple(x.shape)}, weight {tuple(weight.shape)}"
            )
        _vector("bias", bias, weight.shape[0], "out_features")
        shape = (*tuple(x.shape)[:-1], weight.shape[0])
        _residual(residual, shape)
        return call.run(self.kernels.linear, shape, x, weight, bias, residual)

    def linear_geglu(self, x, weight, bias=None):
        """geglu(linear(x, weight, bias)): the feed-forward's first half (one kernel on the half path)."""
        return self.geglu(self.linear(x, weight, bias))

    def attention(self, q, k, v, heads=None, scale=None):
        """softmax(q k^T * scale) v. q (B,H,Lq,D), k/v (B,H,Lk,D); or (B,L,H*D) with ``heads=H``.

        Lk may differ from Lq (cross-attention); Lk = 0 gives zeros, as in torch. scale defaults to 1/sqrt(D).
        """
        call = self._call(q, "q")
        q, k, v = call.arr("q", q, (3, 4)), call.arr("k", k, (3, 4)), call.arr("v", v, (3, 4))
        if not (len(q.shape) == len(k.shape) == len(v.shape)):
            raise ValueError(
                f"q, k, v must have the same ndim, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        if tuple(k.shape) != tuple(v.shape):
            raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        if len(q.shape) == 4:
            if heads is not None and heads != q.shape[1]:
                raise ValueError(f"heads={heads} but q has {q.shape[1]} heads (shape {tuple(q.shape)})")
            if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1]:
                raise ValueError(
                    f"q and k must agree on (batch, heads): {tuple(q.shape)} vs {tuple(k.shape)}"
                )
            if q.shape[3] != k.shape[3]:
                raise ValueError(f"q and k must have the same head dim: q {q.shape[3]}, k {k.shape[3]}")
            d, heads = q.shape[3], None
        else:
            if heads is None:
                raise ValueError("3-D (B, L, H*D) inputs need heads=H")
            heads = _int("heads", heads, 1)
            if q.shape[0] != k.shape[0]:
                raise ValueError(f"q and k must have the same batch size: {q.shape[0]} vs {k.shape[0]}")
            if q.shape[2] != k.shape[2]:
                raise ValueError(
                    f"q and k must have the same H*D (head dim mismatch): q {q.shape[2]}, k {k.shape[2]}"
                )
            if q.shape[2] % heads:
                raise ValueError(f"heads={heads} must divide q's last axis {q.shape[2]}")
            d = q.shape[2] // heads
        scale = np.float32(1.0 / math.sqrt(d) if scale is None else scale)
        return call.run(self.kernels.attention, q.shape, q, k, v, heads, scale)

    # ------------------------------------------------------------------------ normalisations, softmax

    def group_norm(self, x, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
        """GroupNorm over (N, C, *) with per-channel affine; ``silu=True`` fuses the SiLU after it."""
        call = self._call(x, "x")
        x = call.arr("x", x, (2, 3, 4))
        weight, bias = call.arr("weight", weight, 1), call.arr("bias", bias, 1)
        num_groups = _int("num_groups", num_groups, 1)
        c = x.shape[1]
        if c % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide the number of channels C={c}")
        _vector("weight", weight, c, "one per channel")
        _vector("bias", bias, c, "one per channel")
        args = (x, num_groups, weight, bias, np.float32(eps), bool(silu))
        return call.run(self.kernels.group_norm, x.shape, *args)

    def layer_norm(self, x, weight=None, bias=None, eps=1e-5):
        """LayerNorm over the last axis."""
        call = self._call(x, "x")
        x = call.arr("x", x)
        weight, bias = call.arr("weight", weight, 1), call.arr("bias", bias, 1)
        if len(x.shape) < 1:
            raise ValueError("layer_norm is over the last axis: x must have one, got a 0-d array")
        _vector("weight", weight, tuple(x.shape)[-1], "the size of x's last axis")
        _vector("bias", bias, tuple(x.shape)[-1], "the size of x's last axis")
        return call.run(self.kernels.layer_norm, x.shape, x, weight, bias, np.float32(eps))

    def softmax(self, x):
        """Softmax over the last axis, numerically stable."""
        call = self._call(x, "x")
        x = call.arr("x", x)
        if len(x.shape) < 1:
            raise ValueError("softmax is over the last axis: x must have one, got a 0-d array")
        return call.run(self.kernels.softmax, x.shape, x)

    # ------------------------------------------------------------------------------------- pointwise

    def silu(self, x):
        call = self._call(x, "x")
        x = call.arr("x", x)
        return call.run(self.kernels.silu, x.shape, x)

    def gelu(self, x):
        """Exact (erf) GELU."""
        call = self._call(x, "x")
        x = call.arr("x", x)
        return call.run(self.kernels.gelu, x.shape, x)

    def geglu(self, x):
        """a * gelu(b) where a, b = the two halves of the last axis (diffusers' GEGLU after its projection)."""
        call = self._call(x, "x")
        x = call.arr("x", x)
        if len(x.shape) < 1 or tuple(x.shape)[-1] % 2:
            raise ValueError(
                f"geglu splits the last axis in two halves: it must be even, got shape {tuple(x.shape)}"
            )
        return call.run(self.kernels.geglu, (*tuple(x.shape)[:-1], tuple(x.shape)[-1] // 2), x)

    def add(self, a, b):
        """a + b, with b the same shape as a or (B, C) broadcast onto a (B, C, H, W)."""
        call = self._call(a, "a")
        a, b = call.arr("a", a), call.arr("b", b)
        sa, sb = tuple(a.shape), tuple(b.shape)
        if sb != sa and not (len(sa) == 4 and sb == sa[:2]):
            raise ValueError(f"b must have a's shape {sa} or (B, C) = {sa[:2]} to broadcast, got {sb}")
        return call.run(self.kernels.add, sa, a, b)

    def scale_add(self, a, b, alpha=1.0, beta=1.0):
        """alpha * a + beta * b (same shapes)."""
        call = self._call(a, "a")
        a, b = call.arr("a", a), call.arr("b", b)
        _same_shape(("a", "b"), a, b)
        return call.run(self.kernels.scale_add, a.shape, a, b, np.float32(alpha), np.float32(beta))

    def cfg_combine(self, eps_uncond, eps_cond, guidance_scale):
        """Classifier-free guidance: eps_uncond + g * (eps_cond - eps_uncond)."""
        call = self._call(eps_uncond, "eps_uncond")
        u, c = call.arr("eps_uncond", eps_uncond), call.arr("eps_cond", eps_cond)
        _same_shape(("eps_uncond", "eps_cond"), u, c)
        return call.run(self.kernels.cfg_combine, u.shape, u, c, np.float32(guidance_scale))

    def timestep_embedding(self, timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0):
        """Sinusoidal embedding (B,) -> (B, dim), as diffusers' get_timestep_embedding (odd dim: last column 0).

        timesteps may be ints or floats (any dtype); a list or a scalar is taken as a numpy array.
        """
        if not hasattr(timesteps, "shape") or isinstance(timesteps, np.ndarray | np.generic):
            timesteps = np.atleast_1d(timesteps)  # a scalar (also 0-d numpy) is one timestep
        call = self._call(timesteps, "timesteps")
        t = call.arr("timesteps", timesteps, 1, any_number=True)
        dim = _int("dim", dim, 1)
        if dim // 2 - downscale_freq_shift == 0:
            raise ValueError(f"dim={dim} with downscale_freq_shift={downscale_freq_shift} divides by zero")
        args = (t, dim, bool(flip_sin_to_cos), downscale_freq_shift)
        return call.run(self.kernels.timestep_embedding, (t.shape[0], dim), *args)

    # ------------------------------------------------------------------------------------ data layout

    def upsample_nearest2x(self, x):
        """Nearest-neighbour x2 upsampling of (N,C,H,W)."""
        call = self._call(x, "x")
        x = call.arr("x", x, 4)
        n, c, h, w = x.shape
        return call.run(self.kernels.upsample_nearest2x, (n, c, 2 * h, 2 * w), x)

    def concat_channels(self, a, b):
        """torch.cat([a, b], dim=1) for (N,C,H,W) arrays."""
        call = self._call(a, "a")
        a, b = call.arr("a", a, 4), call.arr("b", b, 4)
        if tuple(a.shape[:1] + a.shape[2:]) != tuple(b.shape[:1] + b.shape[2:]):
            raise ValueError(
                f"a and b must agree on N, H, W to concatenate channels: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        n, ca, h, w = a.shape
        return call.run(self.kernels.concat_channels, (n, ca + b.shape[1], h, w), a, b)

    def concat_batch(self, a, b):
        """torch.cat([a, b]) for two (N, C, H, W) arrays of one shape: one channel concat of (1, N*C, H, W)
        views, so no op of its own."""
        _same_shape(("a", "b"), a, b)
        n, c, h, w = a.shape
        both = self.concat_channels(a.reshape(1, n * c, h, w), b.reshape(1, n * c, h, w))
        return both.reshape(2 * n, c, h, w)

    @staticmethod
    def image_size(x):
        """(H, W) of an (N, C, H, W) image."""
        return tuple(x.shape[2:])

    def to_tokens(self, x):
        """(B, C, H, W) -> (B, H*W, C)."""
        call = self._call(x, "x")
        x = call.arr("x", x, 4)
        b, c, h, w = x.shape
        return call.run(self.kernels.to_tokens, (b, h * w, c), x)

    def from_tokens(self, x, h, w):
        """(B, H*W, C) -> (B, C, H, W)."""
        call = self._call(x, "x")
        x = call.arr("x", x, 3)
        h, w = _int("h", h, 1), _int("w", w, 1)
        if x.shape[1] != h * w:
            raise ValueError(f"x has {x.shape[1]} tokens, but h*w = {h}*{w} = {h * w}")
        return call.run(self.kernels.from_tokens, (x.shape[0], x.shape[2], h, w), x, h, w)

    # -------------------------------------------------------------------------------------- sampling

    def scheduler_step(self, sample, eps, noise, coef, clip=None):
        """One scheduler step in one pass: ``coef`` (minisd.schedulers.StepCoefficients) applied to
        ``sample`` and the predicted ``eps`` (and ``noise``, if any), with x0 clipped to [-clip, clip]."""
        call = self._call(sample, "sample")
        s, e, z = call.arr("sample", sample), call.arr("eps", eps), call.arr("noise", noise)
        _same_shape(("sample", "eps"), s, e)
        if z is not None:
            _same_shape(("sample", "noise"), s, z)
        if not isinstance(coef, schedulers.StepCoefficients):
            raise TypeError(f"coef must be a minisd.schedulers.StepCoefficients, got {type(coef).__name__}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip_range must be > 0, got {clip}")
        clip = None if clip is None else float(clip)
        return call.run(self.kernels.scheduler_step, s.shape, s, e, z, coef, clip)

    def ddim_step(
        self,
        sample,
        eps,
        alpha_prod_t,
        alpha_prod_t_prev,
        eta=0.0,
        noise=None,
        clip_sample=True,
        clip_range=1.0,
    ):
        """One DDIM step (diffusers' DDIMScheduler.step, epsilon prediction) -> prev_sample.

        eta > 0 adds ``eta * sigma_t * noise`` and needs ``noise`` (e.g. from randn).
        """
        if eta > 0 and noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise (e.g. ops.randn(sample.shape, seed))")
        coef = schedulers.ddim_coefficients(alpha_prod_t, alpha_prod_t_prev, eta)
        return self.scheduler_step(
            sample, eps, noise if eta > 0 else None, coef, clip_range if clip_sample else None
        )

    def ddpm_step(
        self, sample, eps, alpha_prod_t, alpha_prod_t_prev, noise=None, clip_sample=True, clip_range=1.0
    ):
        """One DDPM step (diffusers' DDPMScheduler.step, epsilon, "fixed_small" variance) -> prev_sample.

        Pass ``noise`` for every step but the last (t = 0), where diffusers adds none; alpha_prod_t_prev = 1
        at t = 0.
        """
        coef = schedulers.ddpm_coefficients(alpha_prod_t, alpha_prod_t_prev)
        return self.scheduler_step(sample, eps, noise, coef, clip_range if clip_sample else None)

    def randn(self, shape, seed, like=None):
        """Standard normal float32 numbers from minisd's counter-based generator (see minisd.ops.rng).

        The same (shape, seed) gives the same numbers on every backend. The result is numpy on the numpy
        backend, a device array of the backend otherwise, or of ``like``'s kind when given (e.g. a torch tensor).
        """
        shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
        for s in shape:
            _int("every entry of shape", s, 0)
        rng.key_of(seed)  # validates the seed
        kind = None if like is not None else "numpy" if self.backend == "numpy" else self.backend
        return self._call(like, "like", kind).run(self.kernels.randn, shape, shape, seed)
