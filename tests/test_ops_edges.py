"""minisd.ops at the edges: NaN/Inf propagation and degenerate shapes, every backend against torch.

Where torch has an answer (a NaN row of a softmax, attention with no keys, a 0-d silu) every backend gives
it; where minisd refuses (a 0x0 conv kernel, a NaN eta), every backend refuses with the same one line.
Numba runs in the simulator here (tiny shapes); cupy joins BACKENDS on a GPU.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minisd.mode as mode
from minisd import ops
from minisd.ops import Ops

BACKENDS = ["numpy", "numba"] + (["cupy"] if mode.has_cupy() else [])
NAN, INF = np.nan, np.inf
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # NaN arithmetic is the point
    pytest.mark.usefixtures("numba_ops_poisoned"),
]


def f32(a):
    return np.array(a, np.float32)


def assert_like_torch(out, ref, rtol=1e-5, atol=1e-6):
    """Same shape, NaN exactly where torch has NaN, the same infinities, the rest close."""
    out = ops.to_numpy(out)
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert out.shape == ref.shape, f"shape {out.shape}, torch {ref.shape}"
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, equal_nan=True)


def refusals(call):
    """The message ``call(Ops(backend))`` raises on each backend: one line, the same everywhere."""
    messages = set()
    for backend in BACKENDS:
        with pytest.raises((ValueError, TypeError)) as info:
            call(Ops(backend))
        messages.add(f"{type(info.value).__name__}: {info.value}")
    assert len(messages) == 1, f"the backends disagree: {messages}"
    (message,) = messages
    assert "\n" not in message
    return message


# --- softmax: NaN anywhere in a row makes the row NaN; inf - inf is NaN ------------------------------


def _softmax_rows():
    rows = np.tile(np.linspace(-3, 3, 37, dtype=np.float32), (6, 1))  # 37: more than one 32-lane pass
    rows[0, 0] = NAN  # first (a lane's first value), middle, last, past the first 32 lanes
    rows[1, 17] = NAN
    rows[2, 36] = NAN
    rows[3, 5] = INF
    rows[4, :] = -INF  # 0/0
    rows[5, :3] = -INF  # leading -inf: weight 0, the rest finite
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_special_values_as_torch(backend):
    x = _softmax_rows()
    assert_like_torch(Ops(backend).softmax(x), torch.softmax(torch.from_numpy(x), -1))


def test_softmax_special_values_every_numba_version():
    from minisd.kernel_backend import cuda
    from minisd.ops.numba import VERSIONS

    x = _softmax_rows()
    ref = torch.softmax(torch.from_numpy(x), -1)
    for version, kernel in VERSIONS["softmax"].items():
        out = cuda.to_device(np.full(x.shape, 7.0, np.float32))
        kernel(cuda.to_device(x), out)
        assert_like_torch(out.copy_to_host(), ref), f"softmax v{version}"


# --- attention: NaN spreads like torch's; no keys (Lk = 0) gives zeros --------------------------------


def _attention_ref(q, k, v):
    q, k, v = (torch.from_numpy(a) for a in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(scores, -1) @ v


def _qkv_with_nan(where):
    gen = np.random.default_rng(0)
    q, k, v = (gen.standard_normal((1, 2, n, 4)).astype(np.float32) for n in (3, 5, 5))
    {"q": q, "k": k, "v": v}[where][0, 1, 2, 1] = NAN  # one head only: the other stays finite
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_attention_nan_as_torch(backend, where):
    q, k, v = _qkv_with_nan(where)
    assert_like_torch(Ops(backend).attention(q, k, v), _attention_ref(q, k, v))


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_attention_nan_every_numba_version(where):
    from minisd.kernel_backend import cuda
    from minisd.ops.numba import VERSIONS

    q, k, v = _qkv_with_nan(where)
    ref = _attention_ref(q, k, v)
    flat = [cuda.to_device(a.reshape(2, a.shape[2], 4)) for a in (q, k, v)]  # (B*H, L, D), one head
    for version, kernel in VERSIONS["attention"].items():
        out = cuda.to_device(np.full((2, 3, 4), 7.0, np.float32))
        kernel(*flat, 1, np.float32(0.5), out)
        assert_like_torch(out.copy_to_host().reshape(ref.shape), ref), f"attention v{version}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_without_keys_is_zeros(backend):
    q, kv = np.ones((2, 3, 4, 6), np.float32), np.ones((2, 3, 0, 6), np.float32)
    ref = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, kv, kv)))
    assert_like_torch(Ops(backend).attention(q, kv, kv), ref)
    q3, kv3 = np.ones((2, 4, 6), np.float32), np.ones((2, 0, 6), np.float32)
    assert_like_torch(Ops(backend).attention(q3, kv3, kv3, heads=3), np.zeros((2, 4, 6), np.float32))


def test_attention_without_keys_every_numba_version():
    from minisd.kernel_backend import cuda
    from minisd.ops.numba import VERSIONS

    q, kv = cuda.to_device(np.ones((2, 3, 4), np.float32)), cuda.to_device(np.ones((2, 0, 4), np.float32))
    for version, kernel in VERSIONS["attention"].items():
        out = cuda.to_device(np.full((2, 3, 4), 7.0, np.float32))
        kernel(q, kv, kv, 1, np.float32(0.5), out)
        assert (out.copy_to_host() == 0).all(), f"attention v{version} without keys"


# --- norms: NaN / inf in a row or group make it NaN, as torch --------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("special", [NAN, INF, -INF])
def test_norms_special_values_as_torch(backend, special):
    x = np.tile(np.linspace(-2, 2, 10, dtype=np.float32), (2, 4, 1))  # (N=2, C=4, L=10)
    x[1, 2, 7] = special  # image 1, group 1 (of 2), layer-norm row (1, 2)
    t = torch.from_numpy(x)
    assert_like_torch(Ops(backend).group_norm(x, 2), F.group_norm(t, 2), atol=1e-5)
    assert_like_torch(Ops(backend).layer_norm(x), F.layer_norm(t, (10,)), atol=1e-5)


# --- 0-d and empty shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_0d_pointwise_stays_0d(backend):
    o, x, y = Ops(backend), f32(0.75), f32(-2.0)
    t, u = torch.tensor(0.75), torch.tensor(-2.0)
    assert_like_torch(o.silu(x), F.silu(t))
    assert_like_torch(o.gelu(x), F.gelu(t))
    assert_like_torch(o.add(x, y), t + u)
    assert_like_torch(o.scale_add(x, y, 2.0, 3.0), 2 * t + 3 * u)
    assert_like_torch(o.cfg_combine(x, y, 7.5), t + 7.5 * (u - t))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda o: o.softmax(f32(1.0)), "softmax is over the last axis: x must have one, got a 0-d array"),
        (lambda o: o.layer_norm(f32(1.0)), "layer_norm is over the last axis"),
        (lambda o: o.geglu(f32(1.0)), "geglu splits the last axis"),
        (lambda o: o.linear(f32(1.0), f32([[1.0]])), "x's last axis must match"),
    ],
)
def test_0d_where_an_axis_is_needed_is_refused(call, message):
    assert message in refusals(call)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_shapes_as_torch(backend):
    o = Ops(backend)
    e = np.ones((2, 0), np.float32)
    assert_like_torch(o.softmax(e), torch.softmax(torch.from_numpy(e), -1))
    assert_like_torch(o.layer_norm(e), F.layer_norm(torch.from_numpy(e), (0,)))
    x, w, b = np.ones((3, 0), np.float32), np.ones((2, 0), np.float32), f32([1.5, -2.0])
    assert_like_torch(o.linear(x, w, b), F.linear(*(torch.from_numpy(a) for a in (x, w, b))))  # the bias
    n0 = np.ones((0, 4, 3, 3), np.float32)
    assert_like_torch(o.group_norm(n0, 2), F.group_norm(torch.from_numpy(n0), 2))
    assert_like_torch(o.silu(n0), F.silu(torch.from_numpy(n0)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tokens_are_a_copy_even_with_one_channel(backend):
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)  # C = 1: (B, H*W, C) is x's memory reshaped
    tokens = ops.to_numpy(Ops(backend).to_tokens(x))
    back = ops.to_numpy(Ops(backend).from_tokens(tokens, 2, 3))
    assert not np.shares_memory(tokens, x) and not np.shares_memory(back, tokens)
    x[...] = -1
    assert (tokens.ravel() == np.arange(6)).all() and (back.ravel() == np.arange(6)).all()


# --- refused on every backend with the same line -------------------------------------------------------


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda o: o.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 0, 0), np.float32)),
            "weight must have no empty axis",
        ),
        (
            lambda o: o.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((0, 1, 1, 1), np.float32)),
            "weight must have no empty axis",
        ),
        (lambda o: o.ddim_step(f32([1.0]), f32([1.0]), 0.5, 0.6, eta=NAN, noise=f32([1.0])), "eta must be"),
        (lambda o: o.ddim_step(f32([1.0]), f32([1.0]), 0.5, 0.6, eta=INF, noise=f32([1.0])), "eta must be"),
        (lambda o: o.ddim_step(f32([1.0]), f32([1.0]), 0.5, 0.6, clip_range=NAN), "clip_range must be > 0"),
        (lambda o: o.ddim_step(f32([1.0]), f32([1.0]), NAN, 0.6), "alpha_prod_t must be in"),
    ],
)
def test_refused_the_same_on_every_backend(call, message):
    assert message in refusals(call)


# --- what the property tests (tests/test_properties.py) found, kept as plain regressions ---------------


def _diffusers_prev(kind, sample, eps, a_t, a_prev, clip=1.0):
    """diffusers' DDIM / DDPM step (epsilon, no noise): DDIM has no sample term, DDPM no eps term."""
    x0 = ((sample - (1 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-clip, clip)
    if kind == "ddim":
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    alpha = a_t / a_prev
    return (a_prev**0.5 * (1 - alpha) / (1 - a_t)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a_t)) * sample


@pytest.mark.parametrize("backend", BACKENDS)
def test_scheduler_steps_with_inf_as_diffusers(backend):
    """An inf sample (DDIM) or eps (DDPM) is clipped in x0 and absent from the rest of the formula: the
    fused step used to add 0 * inf = NaN for the term the formula does not have."""
    sample, eps = f32([INF, 0.5, -INF, 0.2]), f32([0.1, -INF, 0.3, INF])
    s, e = torch.from_numpy(sample).double(), torch.from_numpy(eps).double()
    ddim = Ops(backend).ddim_step(sample, f32([0.1, 0.2, 0.3, 0.4]), 0.5, 0.6)
    assert_like_torch(ddim, _diffusers_prev("ddim", s, torch.tensor([0.1, 0.2, 0.3, 0.4]).double(), 0.5, 0.6))
    ddpm = Ops(backend).ddpm_step(f32([0.1, 0.2, 0.3, 0.4]), eps, 0.5, 0.6)
    assert_like_torch(ddpm, _diffusers_prev("ddpm", torch.tensor([0.1, 0.2, 0.3, 0.4]).double(), e, 0.5, 0.6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scheduler_step_of_0d_stays_0d(backend):
    out = Ops(backend).ddim_step(f32(0.3), f32(-0.2), 0.5, 0.6)
    assert_like_torch(
        out, _diffusers_prev("ddim", torch.tensor(0.3).double(), torch.tensor(-0.2).double(), 0.5, 0.6)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_norm_silu_of_huge_values(backend):
    """silu(-3e15) is -0: exp(3e15) is inf on a GPU, and the simulator's Python math raised OverflowError."""
    x, w = np.tile(f32([1.0, -2.0, 0.5]), (1, 2, 1)), f32([3e15, -3e15])
    ref = F.silu(F.group_norm(torch.from_numpy(x).double(), 1, torch.from_numpy(w).double()))
    assert_like_torch(Ops(backend).group_norm(x, 1, w, silu=True), ref, atol=0)
