"""Property-based tests (Hypothesis): every public op of minisd.ops.Ops, on every backend, against torch;
and the checks of every ``python -m minisd`` command with random arguments.

An op example draws a small ragged shape (size 1 and, where the op allows it, empty axes), a layout for
each numpy input (contiguous, strided or Fortran order: Ops makes them contiguous) and, half the time,
special values (NaN, +-inf, -0.0, tiny, huge) in one input. The result must be torch's in float64: NaN
exactly where torch has NaN, the same infinities, the rest close. Other dtypes are refused with the
TypeError naming the argument.

Profiles: "ci" when CI=true (derandomized: a CI failure reproduces), "dev" otherwise (more examples);
HYPOTHESIS_PROFILE=name overrides. No deadline in either: machines vary many-fold. Numba runs in the CUDA
simulator here (about 0.1 ms per thread), so its shapes are tinier; cupy joins on a GPU.
"""

import importlib
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import minisd.mode as mode
from minisd import ops, weights
from minisd.model import VAEOnly
from minisd.ops import Ops

settings.register_profile("ci", max_examples=20, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))

BACKENDS = ["numpy", "numba"] + (["cupy"] if mode.has_cupy() else [])
SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 1e-40, -1e-30, 3e15, -3e15]  # huge: its square still fits
NOT_FLOAT32 = [np.float64, np.float16, np.int32, np.int64, np.bool_]
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # NaN and inf arithmetic is the point
    pytest.mark.usefixtures("numba_ops_poisoned"),
]


# --- drawing inputs ----------------------------------------------------------------------------------


class Draw:
    """What one example draws: sizes bounded for the backend, values, layouts."""

    def __init__(self, draw, backend):
        self.draw = draw
        self.top = 3 if backend == "numba" else 6  # the largest axis: the simulator runs each thread

    def dim(self, low=1, top=None):
        return self.draw(st.integers(low, self.top if top is None else top))

    def pick(self, *options):
        return self.draw(st.sampled_from(options))

    def array(self, *shape):
        """Standard normal float32 values in a numpy layout drawn here: Ops must not care."""
        gen = np.random.default_rng(self.draw(st.integers(0, 2**32 - 1)))
        a = gen.standard_normal(shape).astype(np.float32)
        layout = self.pick("C", "strided", "F")
        if layout == "strided" and a.ndim:
            wide = np.full((*shape[:-1], 2 * shape[-1]), np.nan, np.float32)  # NaN between the elements
            wide[..., ::2] = a
            return wide[..., ::2]
        return np.asfortranarray(a) if layout == "F" and a.ndim > 1 else a  # asfortranarray makes 0-d (1,)

    def maybe(self, make):
        return make() if self.draw(st.booleans()) else None


CASES = {}  # op name -> case(d: Draw) -> (kwargs of the Ops call, torch reference of the same kwargs)


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _plus(y, residual):
    return y if residual is None else y + residual


@case
def conv2d(d):
    n, c, o, kh, kw = d.dim(0, 2), d.dim(top=3), d.dim(top=3), d.dim(top=3), d.dim(top=3)
    stride, padding, up = d.pick(1, 2), d.pick(0, 1), d.pick(1, 2)  # up: nearest upsampling first
    h, w = d.dim(max(1, kh - 2 * padding), kh + 2), d.dim(max(1, kw - 2 * padding), kw + 2)
    ho, wo = (up * h + 2 * padding - kh) // stride + 1, (up * w + 2 * padding - kw) // stride + 1
    kwargs = dict(x=d.array(n, c, h, w), weight=d.array(o, c, kh, kw), bias=d.maybe(lambda: d.array(o)))
    kwargs.update(stride=stride, padding=padding, residual=d.maybe(lambda: d.array(n, o, ho, wo)))
    kwargs.update(channel_add=d.maybe(lambda: d.array(n, o)), upsample=up == 2)

    def ref(x, weight, bias, stride, padding, residual, channel_add, upsample):
        if upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        y = _plus(F.conv2d(x, weight, bias, stride=stride, padding=padding), residual)
        return y if channel_add is None else y + channel_add[:, :, None, None]

    return kwargs, ref


@case
def linear(d):
    lead = (d.dim(0, 2),) * d.pick(1, 2)
    k, n = d.dim(0), d.dim()
    kwargs = dict(x=d.array(*lead, k), weight=d.array(n, k), bias=d.maybe(lambda: d.array(n)))
    kwargs["residual"] = d.maybe(lambda: d.array(*lead, n))
    return kwargs, lambda x, weight, bias, residual: _plus(F.linear(x, weight, bias), residual)


@case
def linear_geglu(d):
    lead = (d.dim(0, 2),) * d.pick(1, 2)
    k, f = d.dim(0), d.dim()
    kwargs = dict(x=d.array(*lead, k), weight=d.array(2 * f, k), bias=d.maybe(lambda: d.array(2 * f)))

    def ref(x, weight, bias, product=lambda h: h):
        a, g = product(F.linear(x, weight, bias)).chunk(2, -1)
        return a * F.gelu(g)

    return kwargs, ref


@case
def attention(d):
    b, h, lq, lk, dh = d.dim(top=2), d.dim(top=2), d.dim(0), d.dim(0), d.dim()
    scale = d.pick(None, 0.5, -1.0)
    if d.draw(st.booleans()):  # (B, H, L, D)
        kwargs = dict(q=d.array(b, h, lq, dh), k=d.array(b, h, lk, dh), v=d.array(b, h, lk, dh), scale=scale)

        def split(t):
            return t

        def merge(t):
            return t
    else:  # (B, L, H*D) with heads=H
        kwargs = dict(q=d.array(b, lq, h * dh), k=d.array(b, lk, h * dh), v=d.array(b, lk, h * dh))
        kwargs.update(heads=h, scale=scale)

        def split(t):
            return t.reshape(b, t.shape[1], h, dh).transpose(1, 2)

        def merge(t):
            return t.transpose(1, 2).reshape(b, t.shape[2], h * dh)

    def ref(q, k, v, scale, heads=None):
        q, k, v = split(q), split(k), split(v)
        s = 1 / math.sqrt(dh) if scale is None else scale
        return merge(torch.softmax(q @ k.transpose(-1, -2) * s, -1) @ v)  # softmax over no keys: zeros

    return kwargs, ref


@case
def group_norm(d):
    groups = d.dim(top=2)
    n, c, rest = d.dim(0, 2), groups * d.dim(top=2), (d.dim(0),) * d.pick(0, 1, 2)
    eps, silu = d.pick(1e-5, 1e-2), d.draw(st.booleans())
    kwargs = dict(x=d.array(n, c, *rest), num_groups=groups, weight=d.maybe(lambda: d.array(c)))
    kwargs.update(bias=d.maybe(lambda: d.array(c)), eps=eps, silu=silu)

    def ref(x, num_groups, weight, bias, eps, silu):  # the formula: F.group_norm refuses one-value groups
        if not x.numel():
            return x  # (torch warns of the variance of an empty group)
        g = x.reshape(n, num_groups, c // num_groups * math.prod(rest))
        mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
        y = ((g - mean) / (var + eps).sqrt()).reshape(x.shape)
        per_channel = (1, c) + (1,) * len(rest)
        y = y if weight is None else y * weight.reshape(per_channel)
        y = y if bias is None else y + bias.reshape(per_channel)
        return F.silu(y) if silu else y

    return kwargs, ref


@case
def layer_norm(d):
    shape = (*(d.dim(0, 3) for _ in range(d.pick(0, 1, 2))), d.dim(0))
    f = shape[-1]
    kwargs = dict(x=d.array(*shape), weight=d.maybe(lambda: d.array(f)), bias=d.maybe(lambda: d.array(f)))
    kwargs["eps"] = d.pick(1e-5, 1e-2)
    return kwargs, lambda x, weight, bias, eps: F.layer_norm(x, (f,), weight, bias, eps)


def _shape(d, low=0, ndim=(0, 1, 2, 3)):
    return tuple(d.dim(low) for _ in range(d.pick(*ndim)))


@case
def softmax(d):
    return dict(x=d.array(*_shape(d, ndim=(1, 2, 3)))), lambda x: torch.softmax(x, -1)


@case
def silu(d):
    return dict(x=d.array(*_shape(d))), lambda x: F.silu(x)


@case
def gelu(d):
    return dict(x=d.array(*_shape(d))), lambda x: F.gelu(x)


@case
def geglu(d):
    shape = (*_shape(d, ndim=(0, 1, 2)), 2 * d.dim(0))

    def ref(x):
        a, g = x.chunk(2, -1) if x.shape[-1] else (x, x)
        return a * F.gelu(g)

    return dict(x=d.array(*shape)), ref


@case
def add(d):
    shape = _shape(d, ndim=(0, 1, 4)) if d.draw(st.booleans()) else (d.dim(0), d.dim(0), d.dim(), d.dim())
    b_shape = shape[:2] if len(shape) == 4 and d.draw(st.booleans()) else shape
    kwargs = dict(a=d.array(*shape), b=d.array(*b_shape))
    return kwargs, lambda a, b: a + (b[:, :, None, None] if b.shape != a.shape else b)


@case
def scale_add(d):
    shape = _shape(d)
    kwargs = dict(a=d.array(*shape), b=d.array(*shape), alpha=d.pick(1.0, 0.0, -2.5), beta=d.pick(1.0, 0.5))
    return kwargs, lambda a, b, alpha, beta: alpha * a + beta * b


@case
def cfg_combine(d):
    shape = _shape(d)
    kwargs = dict(eps_uncond=d.array(*shape), eps_cond=d.array(*shape), guidance_scale=d.pick(1.0, 7.5, 0.0))
    return (
        kwargs,
        lambda eps_uncond, eps_cond, guidance_scale: eps_uncond + guidance_scale * (eps_cond - eps_uncond),
    )


@case
def timestep_embedding(d):
    dim, flip, shift = d.dim(), d.draw(st.booleans()), d.pick(0, 1)
    if dim // 2 - shift == 0:
        dim = 2 * (shift + 1)
    b = d.dim(0)
    t = d.pick(np.arange(b) * 137 % 1000, np.linspace(0.5, 999.5, b).astype(np.float32))

    def ref(timesteps, dim, flip_sin_to_cos, downscale_freq_shift):  # diffusers' get_timestep_embedding
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - shift))
        arg = timesteps.double()[:, None] * freqs[None]
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], -1)
        if flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], -1)
        return F.pad(emb, (0, dim % 2))

    return dict(timesteps=t, dim=dim, flip_sin_to_cos=flip, downscale_freq_shift=shift), ref


def _nchw(d, n_low=0):
    return d.dim(n_low, 2), d.dim(0), d.dim(), d.dim()


@case
def upsample_nearest2x(d):
    return dict(x=d.array(*_nchw(d))), lambda x: x.repeat_interleave(2, 2).repeat_interleave(2, 3)


@case
def concat_channels(d):
    n, c, h, w = _nchw(d)
    kwargs = dict(a=d.array(n, c, h, w), b=d.array(n, d.dim(0), h, w))
    return kwargs, lambda a, b: torch.cat([a, b], 1)


@case
def concat_batch(d):
    shape = _nchw(d)
    return dict(a=d.array(*shape), b=d.array(*shape)), lambda a, b: torch.cat([a, b])


@case
def to_tokens(d):
    return dict(x=d.array(*_nchw(d))), lambda x: x.flatten(2).transpose(1, 2)


@case
def from_tokens(d):
    b, c, h, w = _nchw(d)
    kwargs = dict(x=d.array(b, h * w, c), h=h, w=w)
    return kwargs, lambda x, h, w: x.transpose(1, 2).reshape(b, c, h, w)


def _alphas(d):
    a_prev = d.pick(0.9, 0.5, 1.0)
    return a_prev * d.pick(0.8, 0.3, 1e-3), a_prev


def _x0(sample, eps, a_t, clip):
    x0 = (sample - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return x0 if clip is None else x0.clamp(-clip, clip)


@case
def ddim_step(d):  # diffusers' DDIMScheduler.step, epsilon prediction
    shape = _shape(d)
    (a_t, a_prev), eta, clip = _alphas(d), d.pick(0.0, 0.5, 1.0), d.pick(None, 1.0, 2.5)
    kwargs = dict(sample=d.array(*shape), eps=d.array(*shape), alpha_prod_t=a_t, alpha_prod_t_prev=a_prev)
    kwargs.update(eta=eta, noise=d.array(*shape) if eta else None, clip_sample=clip is not None)
    kwargs["clip_range"] = clip or 1.0

    def ref(sample, eps, alpha_prod_t, alpha_prod_t_prev, eta, noise, clip_sample, clip_range):
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        prev = a_prev**0.5 * _x0(sample, eps, a_t, clip) + max(1 - a_prev - std**2, 0) ** 0.5 * eps
        return prev if noise is None else prev + std * noise

    return kwargs, ref


@case
def ddpm_step(d):  # diffusers' DDPMScheduler.step, epsilon prediction, "fixed_small" variance
    shape = _shape(d)
    (a_t, a_prev), clip = _alphas(d), d.pick(None, 1.0)
    kwargs = dict(sample=d.array(*shape), eps=d.array(*shape), alpha_prod_t=a_t, alpha_prod_t_prev=a_prev)
    kwargs.update(
        noise=d.maybe(lambda: d.array(*shape)), clip_sample=clip is not None, clip_range=clip or 1.0
    )

    def ref(sample, eps, alpha_prod_t, alpha_prod_t_prev, noise, clip_sample, clip_range):
        alpha = a_t / a_prev
        x0 = _x0(sample, eps, a_t, clip)
        prev = (a_prev**0.5 * (1 - alpha) / (1 - a_t)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a_t)) * sample
        std = max((1 - a_prev) / (1 - a_t) * (1 - alpha), 1e-20) ** 0.5
        return prev if noise is None else prev + std * noise

    return kwargs, ref


EXACT = {"upsample_nearest2x", "concat_channels", "concat_batch", "to_tokens", "from_tokens"}  # copies
NO_SPECIALS = {"timestep_embedding"}  # its timesteps are step numbers
MATMULS = {"conv2d", "linear"}
PRODUCT_OPERANDS = {"x", "weight"}  # of conv2d, linear and linear_geglu


# --- the ops against torch ---------------------------------------------------------------------------


def _arrays(kwargs):
    return [k for k, v in kwargs.items() if isinstance(v, np.ndarray) and v.dtype == np.float32]


def _inject(d, kwargs):
    """Special values at 1 to 3 places of one float32 input (in its own layout); returns its name."""
    names = [k for k in _arrays(kwargs) if kwargs[k].size]
    if not names:
        return None
    name = d.pick(*names)
    a = kwargs[name]
    for _ in range(d.draw(st.integers(1, 3))):
        index = tuple(d.draw(st.integers(0, s - 1)) for s in a.shape)
        a[index] = d.draw(st.one_of(st.just(np.nan), st.sampled_from(SPECIALS)))  # NaN half the time
    return name


def _torch(v):
    return torch.from_numpy(v.copy()).double() if isinstance(v, np.ndarray) else v  # copy: C order, 0-d kept


def assert_like_torch(out, ref, tol, exact, what, inputs=1.0):
    """NaN exactly where torch has NaN, the same infinities, finite values within tol * the largest finite
    magnitude of the result or the ``inputs`` (float32 loses what is small next to a huge input: 3e15 - 3e15
    + 0.5 is 0, as it should be in float32)."""
    out = ops.to_numpy(out)
    ref = ref.numpy()
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, f"{what}: {type(out)} {out.dtype}"
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, torch {ref.shape}"
    if exact:  # a copy: every bit, the sign of -0.0 and NaN included
        ref32 = ref.astype(np.float32)
        assert np.array_equal(out, ref32, equal_nan=True) and (np.signbit(out) == np.signbit(ref32)).all(), (
            what
        )
        return
    nan = np.isnan(ref)
    assert (np.isnan(out) == nan).all(), f"{what}: NaN at {np.argwhere(np.isnan(out) != nan)[:5].tolist()}"
    inf = np.isinf(ref)
    assert (out[inf] == ref[inf]).all(), f"{what}: torch's inf at {np.argwhere(inf)[:5].tolist()}: {out[inf]}"
    finite = ~(nan | inf)
    scale = max(1.0, inputs, float(np.abs(ref[finite]).max(initial=0.0)))
    err = np.abs(out[finite].astype(np.float64) - ref[finite])
    assert (err <= tol * scale).all(), f"{what}: max error {err.max():.3g} > {tol:.0e} * {scale:.3g}"


def _tol(backend, name):
    return 1e-4 if backend == "cupy" else 2e-5  # cupy: 3xTF32 products, exp2f, float32 angles


def _check_op(backend, name, data):
    d = Draw(data.draw, backend)
    kwargs, ref = CASES[name](d)
    specials = name not in NO_SPECIALS and data.draw(st.booleans(), label="specials")
    special_input = _inject(d, kwargs) if specials else None
    # a documented limitation (minisd/ops/cupy_ops.py): 3xTF32 splits x into big + (x - big), and for
    # x = +-inf that is inf + NaN, so an infinite operand of a matrix product gives NaN, not inf (an
    # infinite bias or residual is added after the product: it stays inf)
    nan_for_inf = special_input in PRODUCT_OPERANDS and backend == "cupy"
    torch_kwargs = {k: _torch(v) for k, v in kwargs.items()}
    if nan_for_inf and name == "linear_geglu":  # the product's NaN then goes through the GEGLU
        torch_kwargs["product"] = lambda h: torch.where(h.isinf(), torch.nan, h)
    want = ref(**torch_kwargs)
    out = getattr(Ops(backend), name)(**kwargs)
    if nan_for_inf and name in MATMULS:
        want = torch.where(want.isinf(), torch.nan, want)
    inputs = max(
        (float(np.abs(kwargs[k][np.isfinite(kwargs[k])]).max(initial=0)) for k in _arrays(kwargs)), default=0
    )
    assert_like_torch(out, want, _tol(backend, name), name in EXACT, f"{name} on {backend}", inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_op_matches_torch(backend, name, data):
    _check_op(backend, name, data)


def test_every_public_op_has_a_case():
    public = {m for m in dir(Ops) if not m.startswith("_") and callable(getattr(Ops, m))}
    covered = set(CASES) | {"scheduler_step", "randn", "to_device", "to_numpy"}  # the last: tested below
    covered |= {"image_size"}  # a shape, not arithmetic
    assert public == covered, f"ops without a property test: {public - covered}; unknown: {covered - public}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_other_dtypes_are_refused(backend, name, data):
    d = Draw(data.draw, backend)
    kwargs, _ = CASES[name](d)
    arg = d.pick(*[k for k in _arrays(kwargs) if k != "timesteps"] or [None])
    if arg is None:
        return
    dtype = np.dtype(d.pick(*NOT_FLOAT32))
    kwargs[arg] = kwargs[arg].astype(dtype)
    with pytest.raises(TypeError, match=f"{arg} must be float32, got {dtype.name}"):
        getattr(Ops(backend), name)(**kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=st.lists(st.integers(0, 5), max_size=3), seed=st.integers(0, 2**63 - 1))
def test_randn_is_the_same_on_every_backend(backend, shape, seed):
    ref = Ops("numpy").randn(shape, seed)
    out = ops.to_numpy(Ops(backend).randn(shape, seed))
    assert out.shape == tuple(shape) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_to_device_and_back_is_exact(backend, data):
    d = Draw(data.draw, backend)
    a = d.array(*_shape(d))
    _inject(d, {"a": a})
    back = ops.to_numpy(ops.to_device(a, backend))
    assert back.shape == a.shape and np.array_equal(back, a, equal_nan=True)


# --- python -m minisd COMMAND: random arguments ------------------------------------------------------

P = "a red star on a green background"
WORDS = ["a", "red", "star", "on", "green", "background", "blue", "circle", "purple", "", "An", "."]
INTS = st.one_of(st.integers(-3, 40), st.sampled_from([1024, 1025, 10**12, -(10**12)]))
NUMBERS = st.one_of(INTS, st.floats(), st.sampled_from(["x", "", "1e39", "nan", "-inf", "0.5"]))  # as typed
WEIGHTS = st.sampled_from(["", "TMP/none.safetensors", "TMP/notes.txt", "TMP"])
FOLDERS = st.sampled_from(["TMP/new", "TMP/missing/deeper", "TMP/notes.txt", "TMP", ""])
# Per command: its options, with valid values, edge values and garbage as a user might type them (TMP: a
# folder of the test holding notes.txt), and where its work starts: that function is replaced by one that
# raises ReachedWork, so reaching it means every check before the work passed.
COMMANDS = {
    "sample": (
        {
            "--prompt": st.one_of(
                st.just(P), st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join), st.text(max_size=12)
            ),
            "--num-images": INTS,
            "--steps": INTS,
            "--guidance": NUMBERS,
            "--seed": INTS,
            "--backend": st.sampled_from(["numpy", "numba", "cupy", "torch", ""]),
            "--kernels": st.sampled_from(["minisd", "solutions", "nope"]),
            "--size": INTS,
            "--scale": INTS,
            "--out": st.sampled_from(["TMP/grid.png", "TMP/missing/grid.png", "TMP/grid.jpg", "TMP"]),
            "--weights": WEIGHTS,
        },
        ("minisd.pipeline", "MiniSDPipeline.from_pretrained"),
    ),
    "eval": (
        {
            "--num-images": INTS,
            "--steps": INTS,
            "--guidance": NUMBERS,
            "--backend": st.sampled_from(["numpy", "numba", "cupy", "torch", ""]),
            "--seed": INTS,
            "--batch-size": INTS,
            "--weights": WEIGHTS,
        },
        ("minisd.evaluate", "run"),
    ),
    "train": (
        {
            "--out": FOLDERS,
            "--resume": st.sampled_from(["TMP/notes.txt", "TMP/none.pt", "TMP"]),
            "--overwrite": st.none(),
            "--steps": INTS,
            "--minutes": NUMBERS,
            "--batch-size": INTS,
            "--lr": NUMBERS,
            "--warmup": INTS,
            "--ema-decay": NUMBERS,
            "--workers": INTS,
            "--seed": INTS,
            "--log-every": INTS,
            "--val-images": INTS,
            "--val-guidance": NUMBERS,
            "--save-every": NUMBERS,
            "--device": st.sampled_from(["cpu", "cuda", "tpu", ""]),
        },
        ("minisd.train", "MiniSD"),
    ),
    "bench": (
        {
            "--batches": INTS,
            "--steps": INTS,
            "--guidance": NUMBERS,
            "--repeats": INTS,
            "--numpy-steps": INTS,
            "--only": st.sampled_from(
                ["minisd-numpy", "minisd-cupy-graphs-bf16", "torch-eager-fp32", "nope"]
            ),
            "--weights": WEIGHTS,
            "--out": st.sampled_from(["TMP/bench.json", "TMP/missing/bench.json"]),
        },
        ("minisd.bench", "load_weights"),
    ),
    "export": (
        {"--onnx": FOLDERS, "--diffusers": FOLDERS, "--weights": WEIGHTS},
        ("minisd.export", "load_model"),
    ),
    "profile": (
        {
            "--backend": st.sampled_from(["numpy", "numba", "cupy", "torch", ""]),
            "--batch": INTS,
            "--guidance": NUMBERS,
            "--repeats": INTS,
            "--weights": WEIGHTS,
            "--ceilings": st.sampled_from(["TMP/notes.txt", "TMP/none.json", "TMP", ""]),
            "--png": st.sampled_from(
                ["TMP/roofline.png", "TMP/missing/roofline.png", "TMP/roofline.jpg", "TMP"]
            ),
            "--json": st.sampled_from(["TMP/profile.json", "TMP/missing/profile.json", "TMP/profile.txt"]),
        },
        ("minisd.pipeline", "MiniSDPipeline.from_pretrained"),
    ),
}


def _argv(options):
    """Random options of one command: each a flag and its value (or a bare flag where the value is None)."""
    pair = st.sampled_from(sorted(options)).flatmap(
        lambda o: options[o].map(lambda v, o=o: [o] if v is None else [o, str(v)])
    )
    return st.lists(pair, max_size=6).map(lambda pairs: [x for p in pairs for x in p])


class ReachedWork(Exception):
    """Raised where a command's work would start: every check before the work has passed."""


def _reached_work(*args, **kwargs):
    raise ReachedWork


@pytest.fixture(scope="module")
def cli_tmp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "notes.txt").write_text("not a weights file, a checkpoint or a folder\n")
    vae = VAEOnly()  # untrained: what train --vae reads, with the scaling_factor of any trained one
    weights.save(vae.state_dict(), vae.config, folder / "vae.safetensors")
    return str(folder)


def _refused_in_one_line(argv, exit_, err):
    """A refusal: a nonzero exit with one line from minisd's checks, or argparse's usage then its error line;
    never a traceback. (``sys.exit("error: ...")`` carries its line in the exit itself.)"""
    if isinstance(exit_.code, str):
        code, err = 1, exit_.code + "\n" + err
    else:
        code = exit_.code
    lines = err.strip().splitlines()
    assert code not in (0, None) and lines and "Traceback" not in err, f"{argv}: exit {code}, {err}"
    if lines[0].startswith("usage: "):
        assert ": error: " in lines[-1], f"{argv}: {err}"
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: {err}"


def _cli_case(command, cli_tmp, argv, capsys):
    from minisd.__main__ import main

    options, (module, work) = COMMANDS[command]
    owner = importlib.import_module(module)
    *path, name = work.split(".")
    for part in path:
        owner = getattr(owner, part)
    argv = [a.replace("TMP", cli_tmp) for a in argv]
    if command == "sample":
        argv = ["--backend", "numpy", *argv]  # sample's default backend needs no GPU either way
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(owner, name, _reached_work)
        mp.delenv("MINISD_BACKEND", raising=False)
        try:
            main([command, *argv])
        except ReachedWork:
            return "every check passed"
        except SystemExit as exit_:
            _refused_in_one_line(argv, exit_, capsys.readouterr().err)
            return "refused"
    pytest.fail(f"{command} {argv}: main returned without refusing or reaching the work")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # capsys: read on every example
@given(data=st.data())
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_refuses_in_one_line_or_reaches_the_work(command, cli_tmp, data, capsys):
    """Every subcommand with random options, in this process: either a clear refusal or every check
    passes and the work would start."""
    outcome = _cli_case(command, cli_tmp, data.draw(_argv(COMMANDS[command][0]), label="argv"), capsys)
    event(f"{command}: {outcome}")  # --hypothesis-show-statistics: both outcomes occur


@pytest.mark.parametrize(
    "argv, outcome",
    [
        (["sample"], "every check passed"),  # the defaults
        (["sample", "--guidance", "nan", "--steps", "0"], "refused"),
        (["eval", "--batch-size", "0"], "refused"),
        (["eval", "--num-images", "8"], "every check passed"),
        (["train", "--steps", "0"], "refused"),
        (["train", "--minutes", "5", "--resume", "TMP/notes.txt"], "refused"),
        (
            ["train", "--steps", "3", "--out", "TMP/new", "--vae", "TMP/vae.safetensors", "--device", "cpu"],
            "every check passed",
        ),
        (["bench", "--numpy-steps", "40"], "refused"),
        (["bench", "--only", "minisd-numpy", "--out", "TMP/bench.json"], "every check passed"),
        (["export"], "refused"),
        (["export", "--onnx", "TMP/notes.txt"], "refused"),
        (["export", "--diffusers", "TMP/new"], "every check passed"),
        (["profile"], "every check passed"),
        (["profile", "--batch", "0"], "refused"),
        (["profile", "--ceilings", "TMP/notes.txt"], "refused"),
    ],
)
def test_cli_examples(argv, outcome, cli_tmp, capsys):
    """Cases replayed every run: some that once gave tracebacks or wrong exits, and one that must pass per
    command (so a check that refuses everything fails)."""
    assert _cli_case(argv[0], cli_tmp, argv[1:], capsys) == outcome
