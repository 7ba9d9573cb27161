"""minisd.ops: every op on the numpy and numba backends, and every Numba kernel version, against torch float64.

Numba runs in the CUDA simulator here (MINISD_ALLOW_SIMULATOR=1, tests/conftest.py), so numba shapes stay
tiny; outputs are poisoned with NaN (kernel checks: the output array; backend checks: every allocation),
so an element a kernel forgets to write fails. Tests marked ``gpu`` need a real GPU (CuPy/torch CUDA
arrays, streams, CUDA graphs) and are skipped elsewhere.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minisd.mode as mode
from minisd import ops
from minisd.ops import Ops, dev, harness, rng


def gpu(test):
    """``-m gpu`` selects these; without a GPU they are skipped."""
    return pytest.mark.gpu(pytest.mark.skipif(not mode.ON_GPU, reason="needs a CUDA GPU")(test))


BACKENDS = ["numpy", "numba"] + (["cupy"] if mode.has_cupy() else [])  # cupy: through the same dispatcher
pytestmark = pytest.mark.usefixtures("numba_ops_poisoned")


def r(gen, *shape):
    return gen.standard_normal(shape).astype(np.float32)


def t64(a):
    return torch.from_numpy(np.asarray(a)).double()


def assert_close(out, ref, tol=2e-6, what="output"):
    """The result is a float32 numpy array (numpy in, numpy out) and passes the harness's one check."""
    out = ops.to_numpy(out)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, f"{what}: got {type(out)} {out.dtype}"
    harness.assert_close(out, ref, tol, what)


# --- every Numba kernel version, through the one harness of minisd.ops.dev ------------------------------


def _versions():
    from minisd.ops.numba import VERSIONS

    return [(op, v) for op in dev.CASES for v in sorted(VERSIONS[op])]


@pytest.mark.parametrize("op,version", _versions())
def test_kernel_version(op, version, gen):
    err, tol = dev.check(op, version, gen)
    assert err <= tol, f"{op} v{version}: max relative error {err:.2e} > {tol:.0e}"


VARIANTS = [  # the corners the default cases miss: (op, variant[, versions]), default every version
    ("conv2d", {"stride": 2, "bias": False}),
    ("conv2d", {"k": 1, "padding": 0, "shape": (1, 4, 5, 3, 6)}),
    ("conv2d", {"k": 5, "padding": 2, "shape": (1, 2, 6, 5, 3)}),
    # several channel groups / tiles
    ("conv2d", {"k": 1, "padding": 0, "shape": (1, 2, 3, 3, 33)}, (3, 4, 5)),
    # v5's split-K (test_split_k_rule: these do split, the last chunk short): K = 37*9 = 333 in 11 chunks
    ("conv2d", {"shape": (1, 37, 4, 3, 5)}, (5,)),
    ("conv2d", {"stride": 2, "padding": 0, "bias": False, "shape": (2, 37, 7, 6, 5)}, (5,)),
    ("conv2d", {"k": 1, "padding": 0, "shape": (1, 70, 3, 4, 5)}, (5,)),  # K = 70: 32 + 32 + 6
    ("conv2d", {"shape": (1, 5, 9, 8, 66)}, (5,)),  # 2 x 2 tiles (72 pixels, 66 channels) x 2 splits
    ("conv2d", {"k": (2, 3), "shape": (1, 11, 5, 4, 3)}),  # kh != kw (v5 carries k -> (c, ky, kx)); 3 splits
    ("group_norm", {"silu": False, "affine": False}),
    ("layer_norm", {"affine": False}),
    (
        "attention",
        {"shape": (1, 70, 40, 1, 4)},
        (2, 3),
    ),  # v3: several query blocks (TQ=64), key tiles (TK=32)
    ("attention", {"shape": (1, 5, 1, 1, 4)}),  # a single key
    ("linear", {"bias": False, "shape": (66, 17, 65)}, (3, 4)),  # v3: more than one 64x64 tile each way
    ("linear", {"shape": (21, 333, 19)}, (4,)),  # v4's split-K: 11 chunks, the last 13 long
    ("linear", {"bias": False, "shape": (70, 45, 66)}, (4,)),  # 2 x 2 tiles x 2 splits
    ("softmax", {"shape": (3, 70)}),
    ("add", {"broadcast": False}),
    ("timestep_embedding", {"flip": False, "shift": 1}),
    ("scheduler_step", {"eta": 0.0, "noise": False, "clip": False}),
]


@pytest.mark.parametrize(
    "op,variant,version",
    [
        (op, var, v)
        for op, var, *only in VARIANTS
        for o, v in _versions()
        if o == op and (not only or v in only[0])
    ],
)
def test_kernel_version_corners(op, variant, version, gen, no_none_launches):
    err, tol = dev.check(op, version, gen, **variant)
    assert err <= tol, f"{op} v{version} {variant}: max relative error {err:.2e} > {tol:.0e}"


def test_split_k_rule():
    """split-K (minisd/ops/numba/common.py) covers K in whole chunks of BK-slices, the last maybe short; the
    corners above split with a short last chunk; tiles that fill the GPU alone, and a short K, are not split;
    minisd's batch-1 convolutions (8 and 16 tiles of 64x64) get at least one block per SM."""
    from minisd.ops.numba.common import TARGET_BLOCKS, split_k

    for tiles in (1, 2, 4, 8, 16, 100, TARGET_BLOCKS):
        for k in (0, 1, 16, 45, 70, 333, 1152, 2304):
            splits, chunk = split_k(tiles, k, 16)
            assert chunk % 16 == 0 and (splits - 1) * chunk < max(k, 1) <= splits * chunk, (tiles, k)
    for tiles, k in [(1, 333), (1, 70), (4, 45), (1, 50), (1, 66)]:  # the corners' (tiles, K)
        splits, chunk = split_k(tiles, k, 16)
        assert splits > 1 and k % chunk, (tiles, k, splits, chunk)
    assert split_k(TARGET_BLOCKS, 2304, 16)[0] == 1 and split_k(1, 27, 16)[0] == 1
    assert split_k(8, 2304, 16)[0] * 8 >= 132 and split_k(16, 1152, 16)[0] * 16 >= 132


# --- no kernel is ever launched with None -----------------------------------------------------------------
# numba-cuda cannot pass None as a kernel argument on a real GPU (the launch raises NotImplementedError);
# the simulator can, so without this check an `if b is not None:` kernel passes CI and fails on the GPU.


@pytest.fixture
def no_none_launches(monkeypatch):
    """Make the simulator refuse a kernel launch with a None argument, as a real GPU does."""
    if mode.ON_GPU:
        return  # the real launcher refuses None by itself
    from numba.cuda.simulator import kernel as sim  # numba-cuda's own: numba-cuda-mlir has no simulator

    launch = sim.FakeCUDAKernel.__call__

    def checked(self, *args):
        if not self._device and not sim._kernel_context:  # a launch from the host, not a device-function call
            nones = [i for i, a in enumerate(args) if a is None]
            assert not nones, f"kernel {self.fn.__name__} launched with None as argument(s) {nones}"
        return launch(self, *args)

    monkeypatch.setattr(sim.FakeCUDAKernel, "__call__", checked)


@pytest.mark.skipif(mode.ON_GPU, reason="checks the simulator's stand-in for the GPU's refusal")
def test_no_none_launches_catches_a_none(no_none_launches):
    from minisd.kernel_backend import cuda

    @cuda.jit
    def kernel(a, b):
        if b is not None:
            a[0] = b[0]

    a = cuda.to_device(np.zeros(1, np.float32))
    kernel[1, 1](a, a)  # fine
    with pytest.raises(AssertionError, match="launched with None"):
        kernel[1, 1](a, None)


NONE_VARIANTS = [  # every op with an optional argument, with it left out
    ("conv2d", {"bias": False}),
    ("group_norm", {"affine": False}),
    ("layer_norm", {"affine": False}),
    ("linear", {"bias": False}),
    ("scheduler_step", {"noise": False, "clip": False}),
]


@pytest.mark.parametrize(
    "op,variant,version", [(op, var, v) for op, var in NONE_VARIANTS for o, v in _versions() if o == op]
)
def test_kernel_versions_never_get_none(op, variant, version, gen, no_none_launches):
    err, tol = dev.check(op, version, gen, **variant)
    assert err <= tol, f"{op} v{version} {variant}: max relative error {err:.2e} > {tol:.0e}"


def test_numba_backend_never_passes_none(gen, no_none_launches):
    """The public API with each optional argument left out, alone or with the others given."""
    x, w, b = r(gen, 2, 4, 3, 5) + 1, r(gen, 4), r(gen, 4)
    for wt, bt in [(None, None), (w, None), (None, b)]:
        ref = F.group_norm(t64(x), 2, None if wt is None else t64(wt), None if bt is None else t64(bt))
        assert_close(Ops("numba").group_norm(x, 2, wt, bt), ref, what="group_norm")
    xr, wr, br = r(gen, 3, 7), r(gen, 7), r(gen, 7)
    for wt, bt in [(None, None), (wr, None), (None, br)]:
        ref = F.layer_norm(t64(xr), (7,), None if wt is None else t64(wt), None if bt is None else t64(bt))
        assert_close(Ops("numba").layer_norm(xr, wt, bt), ref, what="layer_norm")
    xc, wc = r(gen, 1, 2, 5, 4), r(gen, 3, 2, 3, 3)
    assert_close(Ops("numba").conv2d(xc, wc, padding=1), F.conv2d(t64(xc), t64(wc), padding=1))
    xl, wl = r(gen, 3, 6), r(gen, 5, 6)
    assert_close(Ops("numba").linear(xl, wl), F.linear(t64(xl), t64(wl)))
    s, e = r(gen, 2, 3, 4) * 2, r(gen, 2, 3, 4)
    out = Ops("numba").ddim_step(s, e, 0.3, 0.55, eta=0.0, clip_sample=False)
    assert_close(out, _ddim_ref(s, e, 0.3, 0.55, 0.0, None, False))
    assert_close(Ops("numba").ddpm_step(s, e, 0.3, 0.55), _ddpm_ref(s, e, 0.3, 0.55, None, True))


def test_dev_harness_prints_a_table(capsys):
    assert dev.main(["softmax", "randn"]) == 0
    out = capsys.readouterr().out
    assert "softmax" in out and "v3" in out and "randn" in out


# --- the public API on both backends --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv2d(backend, stride, padding, gen):
    x, w, b = r(gen, 2, 3, 7, 6), r(gen, 4, 3, 3, 3), r(gen, 4)
    out = Ops(backend).conv2d(x, w, b, stride=stride, padding=padding)
    assert_close(out, F.conv2d(t64(x), t64(w), t64(b), stride=stride, padding=padding))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_1x1_without_bias(backend, gen):
    x, w = r(gen, 2, 5, 3, 4), r(gen, 3, 5, 1, 1)
    assert_close(Ops(backend).conv2d(x, w), F.conv2d(t64(x), t64(w)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm(backend, silu, gen):
    x, w, b = r(gen, 2, 4, 3, 5) * 2 + 3, r(gen, 4), r(gen, 4)
    ref = F.group_norm(t64(x), 2, t64(w), t64(b), eps=1e-6)
    out = Ops(backend).group_norm(x, 2, w, b, eps=1e-6, silu=silu)
    assert_close(out, F.silu(ref) if silu else ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm(backend, gen):
    x, w, b = r(gen, 2, 5, 19) + 2, r(gen, 19), r(gen, 19)
    assert_close(Ops(backend).layer_norm(x, w, b), F.layer_norm(t64(x), (19,), t64(w), t64(b)))
    assert_close(Ops(backend).layer_norm(x), F.layer_norm(t64(x), (19,)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear(backend, gen):
    x, w, b = r(gen, 2, 5, 13), r(gen, 7, 13), r(gen, 7)
    assert_close(Ops(backend).linear(x, w, b), F.linear(t64(x), t64(w), t64(b)))
    assert_close(Ops(backend).linear(x, w), F.linear(t64(x), t64(w)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_activations(backend, gen):
    x = r(gen, 3, 4, 10) * 4
    assert_close(Ops(backend).silu(x), F.silu(t64(x)), what="silu")
    assert_close(Ops(backend).gelu(x), F.gelu(t64(x)), what="gelu")
    a, g = t64(x).chunk(2, -1)
    assert_close(Ops(backend).geglu(x), a * F.gelu(g), what="geglu")


def test_numba_silu_of_large_magnitudes_is_the_gpus_answer():
    """silu(-1000) is -0 on a GPU (exp(1000) = inf there); the simulator's Python math raised OverflowError."""
    x = np.array([-1000, -104, -88.8, -87, -20, -1e-30, 0, 1e-30, 20, 88.8, 1000, np.inf, np.nan], np.float32)
    out = ops.to_numpy(Ops("numba").silu(x))
    ref = F.silu(t64(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-37)  # NaN where torch has NaN
    assert np.signbit(out[0]) and out[0] == 0, f"silu(-1000) = {out[0]!r}, a GPU gives -0.0"


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax(backend, gen):
    x = r(gen, 3, 2, 37) * 10 + 50  # large values: overflows without the max subtraction
    assert_close(Ops(backend).softmax(x), torch.softmax(t64(x), -1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lq,lk", [(7, 7), (6, 9)])  # self- and cross-attention
def test_attention_4d(backend, lq, lk, gen):
    q, k, v = r(gen, 2, 2, lq, 8), r(gen, 2, 2, lk, 8), r(gen, 2, 2, lk, 8)
    out = Ops(backend).attention(q, k, v)
    assert_close(out, F.scaled_dot_product_attention(t64(q), t64(k), t64(v)))
    out = Ops(backend).attention(q, k, v, scale=0.5)
    assert_close(out, F.scaled_dot_product_attention(t64(q), t64(k), t64(v), scale=0.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_3d_heads_cross(backend, gen):
    b, lq, lk, h, d = 2, 5, 8, 3, 4
    q, k, v = r(gen, b, lq, h * d), r(gen, b, lk, h * d), r(gen, b, lk, h * d)

    def split(t, n):
        return t64(t).reshape(b, n, h, d).transpose(1, 2)

    ref = (
        F.scaled_dot_product_attention(split(q, lq), split(k, lk), split(v, lk))
        .transpose(1, 2)
        .reshape(b, lq, -1)
    )
    assert_close(Ops(backend).attention(q, k, v, heads=h), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_ops(backend, gen):
    x, y = r(gen, 2, 3, 4, 5), r(gen, 2, 2, 4, 5)
    assert_close(Ops(backend).upsample_nearest2x(x), F.interpolate(t64(x), scale_factor=2), what="upsample")
    assert_close(Ops(backend).concat_channels(x, y), torch.cat([t64(x), t64(y)], 1), what="concat")
    tokens = Ops(backend).to_tokens(x)
    assert_close(tokens, t64(x).flatten(2).transpose(1, 2), what="to_tokens")
    assert_close(Ops(backend).from_tokens(tokens, 4, 5), t64(x), what="from_tokens")


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_and_mix(backend, gen):
    a, b, c = r(gen, 2, 3, 4, 5), r(gen, 2, 3, 4, 5), r(gen, 2, 3)
    assert_close(Ops(backend).add(a, b), t64(a) + t64(b), what="add")
    assert_close(Ops(backend).add(a, c), t64(a) + t64(c)[:, :, None, None], what="add (B,C)")
    assert_close(Ops(backend).scale_add(a, b, 0.5, -2.0), 0.5 * t64(a) - 2 * t64(b), what="scale_add")
    assert_close(Ops(backend).cfg_combine(a, b, 7.5), t64(a) + 7.5 * (t64(b) - t64(a)), what="cfg")


def _diffusers_timestep_embedding(t, dim, flip, shift):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - shift))
    arg = torch.as_tensor(t).double()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], -1)
    if flip:
        emb = torch.cat([emb[:, half:], emb[:, :half]], -1)
    return F.pad(emb, (0, dim % 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim,flip,shift", [(32, True, 0), (11, False, 1)])
def test_timestep_embedding(backend, dim, flip, shift, gen):
    t = gen.integers(0, 1000, 5)
    out = Ops(backend).timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert_close(out, _diffusers_timestep_embedding(t, dim, flip, shift))
    floats = Ops(backend).timestep_embedding(t.astype(np.float32), dim, flip, shift)
    assert_close(floats, _diffusers_timestep_embedding(t, dim, flip, shift), what="float timesteps")
    assert Ops(backend).timestep_embedding([999], dim).shape == (1, dim)


def _ddim_ref(x, e, a_t, a_prev, eta, noise, clip):
    """diffusers' DDIMScheduler.step, epsilon prediction, float64."""
    x, e = t64(x), t64(e)
    x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
    if clip:
        x0 = x0.clamp(-1, 1)
    std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * e
    return prev + std * t64(noise) if eta > 0 else prev


def _ddpm_ref(x, e, a_t, a_prev, noise, clip):
    """diffusers' DDPMScheduler.step, epsilon prediction, fixed_small variance, float64."""
    x, e = t64(x), t64(e)
    alpha_t = a_t / a_prev
    x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
    if clip:
        x0 = x0.clamp(-1, 1)
    mean = (a_prev**0.5 * (1 - alpha_t) / (1 - a_t)) * x0 + (alpha_t**0.5 * (1 - a_prev) / (1 - a_t)) * x
    variance = max((1 - a_prev) / (1 - a_t) * (1 - alpha_t), 1e-20)
    return mean + variance**0.5 * t64(noise) if noise is not None else mean


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eta,clip", [(0.0, True), (0.7, False)])
def test_ddim_step(backend, eta, clip, gen):
    x, e, z = r(gen, 2, 3, 4, 5) * 2, r(gen, 2, 3, 4, 5), r(gen, 2, 3, 4, 5)
    out = Ops(backend).ddim_step(x, e, 0.3, 0.55, eta=eta, noise=z, clip_sample=clip)
    assert_close(out, _ddim_ref(x, e, 0.3, 0.55, eta, z, clip))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_noise", [True, False])
def test_ddpm_step(backend, with_noise, gen):
    x, e, z = r(gen, 2, 3, 4, 5) * 2, r(gen, 2, 3, 4, 5), r(gen, 2, 3, 4, 5)
    z = z if with_noise else None
    out = Ops(backend).ddpm_step(x, e, 0.3, 0.55, noise=z)
    assert_close(out, _ddpm_ref(x, e, 0.3, 0.55, z, True))


# --- random numbers -------------------------------------------------------------------------------------


def test_randn_same_numbers_on_every_backend(gen):
    seed = int(gen.integers(0, 2**63))
    host = Ops("numpy").randn((3, 67), seed)  # odd count: the last Box-Muller pair is half used
    device = ops.to_numpy(Ops("numba").randn((3, 67), seed))
    assert host.dtype == np.float32 and host.shape == (3, 67)
    assert np.array_equal(host, device), "numpy and numba randn differ for the same seed"
    assert np.array_equal(Ops("numpy").randn(201, seed)[:5], host.ravel()[:5])  # a prefix: same stream


def test_randn_is_standard_normal_and_seeded():
    a = Ops("numpy").randn((200_000,), 1).astype(np.float64)
    assert abs(a.mean()) < 0.01 and abs(a.std() - 1) < 0.01
    assert abs(np.mean(a**4) - 3) < 0.1  # kurtosis of a normal
    assert not np.array_equal(Ops("numpy").randn(8, 1), Ops("numpy").randn(8, 2))
    assert np.array_equal(Ops("numpy").randn(8, -1), Ops("numpy").randn(8, 2**64 - 1))


def test_randn_generator_definition():
    """Pin the generator's first outputs: changing it would silently change every sampled image."""
    key = rng.mix64_int(0)
    bits0 = rng.mix64_int(key + rng.GOLDEN)
    bits1 = rng.mix64_int(key + 2 * rng.GOLDEN)
    r_ = math.sqrt(-2 * math.log(((bits0 >> 11) + 1) * 2.0**-53))
    first = np.float32(r_ * math.cos(2 * math.pi * (bits1 >> 11) * 2.0**-53))
    assert Ops("numpy").randn(1, 0)[0] == first


# --- device arrays and moving data ----------------------------------------------------------------------


def test_numba_device_arrays_stay_on_device(gen):
    x, w = r(gen, 1, 2, 5, 4), r(gen, 3, 2, 3, 3)
    dx, dw = ops.to_device(x, "numba"), ops.to_device(w, "numba")
    out = Ops("numba").conv2d(dx, dw, padding=1)
    assert not isinstance(out, np.ndarray) and hasattr(out, "copy_to_host")
    assert_close(ops.to_numpy(out), F.conv2d(t64(x), t64(w), padding=1))
    mixed = Ops("numba").conv2d(dx, w, padding=1)  # a numpy weight is uploaded for the call
    assert hasattr(mixed, "copy_to_host")
    noise = Ops("numba").randn((2, 3), 5)
    assert hasattr(noise, "copy_to_host")
    assert isinstance(Ops("numba").randn((2, 3), 5, like=x), np.ndarray)


def test_to_numpy_and_to_device(gen):
    x = r(gen, 3, 4)
    assert ops.to_numpy(x) is x
    assert np.array_equal(ops.to_numpy(ops.to_device(x, "numba")), x)
    assert np.array_equal(ops.to_device(x, "numpy"), x)


def test_numba_ops_allocate_through_set_allocator(gen):
    """What a CUDA graph needs (minisd/cuda_graphs.py): while an allocator is set, every array the Numba
    backend allocates comes from it, outputs and kernels' scratch (attention v1's scores and probabilities);
    after it is unset, none does."""
    from minisd.kernel_backend import cuda
    from minisd.ops.numba import VERSIONS

    made = []

    def allocate(shape):
        made.append(cuda.to_device(np.full(shape, np.nan, np.float32)))
        return made[-1]

    x, w = r(gen, 1, 4, 3, 2), r(gen, 4)
    q, k = r(gen, 1, 3, 4), r(gen, 1, 5, 4)  # 3 queries, 5 keys, 2 heads of 2
    dq, dk = ops.to_device(q, "numba"), ops.to_device(k, "numba")
    previous = ops.set_allocator(allocate)
    try:
        out = Ops("numba").group_norm(ops.to_device(x, "numba"), 2, ops.to_device(w, "numba"), silu=True)
        att = Ops("numba").linear(dq, ops.to_device(np.eye(4, dtype=np.float32), "numba"))
        VERSIONS["attention"][1](dq, dk, dk, 2, np.float32(0.5), att)
    finally:
        restored = ops.set_allocator(previous)
    assert restored is allocate
    assert [tuple(a.shape) for a in made] == [(1, 4, 3, 2), (1, 3, 4), (1, 2, 3, 5), (1, 2, 3, 5)]
    assert out is made[0] and att is made[1]
    assert_close(out, F.silu(F.group_norm(t64(x), 2, t64(w))), what="group_norm")
    heads = (t64(q).view(1, 3, 2, 2).transpose(1, 2), t64(k).view(1, 5, 2, 2).transpose(1, 2))
    ref = F.scaled_dot_product_attention(*heads, heads[1], scale=0.5).transpose(1, 2).reshape(1, 3, 4)
    assert_close(att, ref, what="attention v1")
    later = Ops("numba").silu(dq)
    assert len(made) == 4 and not any(later is a for a in made)


# --- clear errors ---------------------------------------------------------------------------------------


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        Ops("jax").silu(np.zeros(3, np.float32))


@pytest.mark.skipif(mode.ON_GPU, reason="only without a GPU")
def test_gpu_backends_without_gpu(monkeypatch):
    with pytest.raises(RuntimeError, match="cupy"):
        Ops("cupy").silu(np.zeros(3, np.float32))
    monkeypatch.delenv("MINISD_ALLOW_SIMULATOR")
    with pytest.raises(RuntimeError, match="MINISD_ALLOW_SIMULATOR"):
        Ops("numba").silu(np.zeros(3, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_is_rejected(backend):
    with pytest.raises(TypeError, match=r"x must be float32, got float64.*astype"):
        Ops(backend).silu(np.zeros(3))
    with pytest.raises(TypeError, match="weight must be float32, got int64"):
        Ops(backend).linear(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_numpy_inputs_are_made_contiguous(backend, gen):
    x, w = r(gen, 2, 3, 5, 7), r(gen, 4, 3, 3, 3)
    xt = x.transpose(0, 1, 3, 2)  # a strided view: a kernel reading it as C order would be wrong
    assert_close(Ops(backend).conv2d(xt, w, padding=1), F.conv2d(t64(xt), t64(w), padding=1))
    assert_close(Ops(backend).silu(x[:, :, :, ::2]), F.silu(t64(x[:, :, :, ::2])))


def test_non_contiguous_device_arrays_are_refused(gen):
    device = ops.to_device(r(gen, 2, 3, 4, 6), "numba")
    with pytest.raises(ValueError, match="x must be C-contiguous on the device"):
        Ops("numba").silu(device[:, :, :, ::2])


def test_bad_array_types():
    with pytest.raises(TypeError, match="CPU torch tensor"):
        Ops("numpy").silu(torch.zeros(3))
    with pytest.raises(TypeError, match="x must be a numpy array or a CUDA device array, got list"):
        Ops("numpy").silu([1.0, 2.0])
    device = ops.to_device(np.zeros(3, np.float32), "numba")
    with pytest.raises(TypeError, match="backend 'numpy' takes numpy arrays.*to_numpy"):
        Ops("numpy").silu(device)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda z: Ops().conv2d(z(2, 3, 5, 5)[0], z(4, 3, 3, 3)),
            ValueError,
            r"x must be 4-D, got shape \(3, 5, 5\)",
        ),
        (
            lambda z: Ops().conv2d(z(2, 3, 5, 5), z(4, 2, 3, 3)),
            ValueError,
            "weight expects 2 input channels.*x has 3",
        ),
        (
            lambda z: Ops().conv2d(z(1, 3, 5, 5), z(4, 3, 3, 3), z(3)),
            ValueError,
            r"bias must have shape \(4,\)",
        ),
        (lambda z: Ops().conv2d(z(1, 3, 2, 2), z(4, 3, 3, 3)), ValueError, "larger than the padded input"),
        (
            lambda z: Ops().conv2d(z(1, 3, 5, 5), z(4, 3, 3, 3), stride=0),
            ValueError,
            "stride must be an int >= 1",
        ),
        (lambda z: Ops().group_norm(z(2, 6, 4, 4), 4), ValueError, "num_groups=4 must divide.*C=6"),
        (lambda z: Ops().group_norm(z(2, 6, 4, 4), 3, z(5)), ValueError, r"weight must have shape \(6,\)"),
        (lambda z: Ops().layer_norm(z(2, 6), z(5)), ValueError, r"weight must have shape \(6,\)"),
        (lambda z: Ops().linear(z(2, 6), z(4, 5)), ValueError, "last axis must match weight's in_features"),
        (lambda z: Ops().geglu(z(2, 5)), ValueError, "must be even"),
        (
            lambda z: Ops().attention(z(1, 2, 3, 8), z(1, 2, 4, 6), z(1, 2, 4, 6)),
            ValueError,
            "same head dim: q 8, k 6",
        ),
        (
            lambda z: Ops().attention(z(1, 3, 8), z(1, 4, 6), z(1, 4, 6), heads=2),
            ValueError,
            "head dim mismatch",
        ),
        (lambda z: Ops().attention(z(1, 3, 8), z(1, 4, 8), z(1, 4, 8)), ValueError, "need heads=H"),
        (
            lambda z: Ops().attention(z(1, 3, 8), z(1, 4, 8), z(1, 4, 8), heads=3),
            ValueError,
            "heads=3 must divide",
        ),
        (
            lambda z: Ops().attention(z(1, 3, 8), z(1, 4, 8), z(1, 5, 8), heads=2),
            ValueError,
            "k and v must have the same",
        ),
        (lambda z: Ops().attention(z(1, 3, 8), z(1, 1, 4, 8), z(1, 1, 4, 8)), ValueError, "same ndim"),
        (lambda z: Ops().concat_channels(z(1, 2, 3, 3), z(1, 2, 3, 4)), ValueError, "agree on N, H, W"),
        (lambda z: Ops().from_tokens(z(1, 12, 4), 3, 5), ValueError, r"12 tokens, but h\*w = 3\*5 = 15"),
        (lambda z: Ops().add(z(1, 2, 3, 3), z(1, 3)), ValueError, r"b must have a's shape"),
        (lambda z: Ops().cfg_combine(z(2, 3), z(3, 2), 7.5), ValueError, "must have the same shape"),
        (lambda z: Ops().ddim_step(z(2, 3), z(2, 3), 0.5, 0.6, eta=1.0), ValueError, "eta > 0 needs noise"),
        (
            lambda z: Ops().ddim_step(z(2, 3), z(2, 3), 1.5, 0.6),
            ValueError,
            r"alpha_prod_t must be in \[0, 1\]",
        ),
        (
            lambda z: Ops().ddpm_step(z(2, 3), z(2, 3), 0.5, 0.6, noise=z(3, 2)),
            ValueError,
            "sample and noise",
        ),
        (lambda z: Ops().timestep_embedding(z(2, 2), 8), ValueError, "timesteps must be 1-D"),
        (lambda z: Ops().timestep_embedding(np.array(["a"]), 8), TypeError, "timesteps must hold numbers"),
        (lambda z: Ops().randn((2, -1), 0), ValueError, "every entry of shape must be an int >= 0"),
        (lambda z: Ops().randn(3, 1.5), TypeError, "seed must be an int"),
    ],
)
def test_errors_name_the_problem(call, error, message):
    def z(*shape):
        return np.zeros(shape, np.float32)

    with pytest.raises(error, match=message):
        call(z)


# --- GPU only: CuPy / torch CUDA arrays, streams, CUDA graphs (run by the lead on a GPU) -----------------


@gpu
def test_gpu_torch_tensors_stay_torch(gen):
    x, w, b = r(gen, 2, 8, 9, 7), r(gen, 4, 8, 3, 3), r(gen, 4)
    tx, tw, tb = (torch.from_numpy(a).cuda() for a in (x, w, b))
    out = Ops("numba").conv2d(tx, tw, tb, padding=1)
    assert torch.is_tensor(out) and out.is_cuda and out.dtype == torch.float32
    assert_close(out.cpu().numpy(), F.conv2d(t64(x), t64(w), t64(b), padding=1))
    q = torch.from_numpy(r(gen, 2, 70, 64)).cuda()
    kv = torch.from_numpy(r(gen, 2, 8, 64)).cuda()
    out = Ops("numba").attention(q, kv, kv, heads=2)
    assert torch.is_tensor(out) and out.is_cuda
    noise = Ops("numba").randn((4, 3), 7, like=tx)
    assert torch.is_tensor(noise) and np.array_equal(noise.cpu().numpy(), Ops("numpy").randn((4, 3), 7))


@gpu
def test_gpu_cupy_arrays_stay_cupy(gen):
    cupy = pytest.importorskip("cupy")
    x, w = r(gen, 2, 6, 5, 4), r(gen, 6)
    out = Ops("numba").group_norm(cupy.asarray(x), 3, cupy.asarray(w), silu=True)
    assert isinstance(out, cupy.ndarray)
    assert_close(out.get(), F.silu(F.group_norm(t64(x), 3, t64(w))))
    stream = cupy.cuda.Stream(non_blocking=True)
    previous = ops.set_stream(stream)
    try:
        with stream:
            y = Ops("numba").silu(cupy.asarray(x))
        stream.synchronize()
    finally:
        ops.set_stream(previous)
    assert_close(y.get(), F.silu(t64(x)))


@gpu
def test_gpu_numba_kernels_in_a_torch_cuda_graph(gen):
    from minisd.kernel_backend import cuda

    x, w = torch.from_numpy(r(gen, 2, 8, 16, 16)).cuda(), torch.from_numpy(r(gen, 8, 8, 3, 3)).cuda()

    def block(t):
        return Ops("numba").conv2d(Ops("numba").group_norm(t, 4, silu=True), w, padding=1)

    eager = block(x)  # also compiles every kernel outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    previous = ops.set_stream(stream)
    # outputs and split-K scratch from torch's allocator: inside the capture it draws on the graph's own pool
    # (a cudaMalloc there would break the capture)
    allocator = ops.set_allocator(lambda shape: cuda.as_cuda_array(torch.empty(shape, device="cuda")))
    try:
        with torch.cuda.stream(stream):
            block(x)  # warm up on the capture stream
            with torch.cuda.graph(graph, stream=stream):
                captured = block(x)
    finally:
        ops.set_stream(previous)
        ops.set_allocator(allocator)
    x.add_(1.0)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(captured.cpu().numpy(), block(x).double().cpu(), what="graph replay")
    assert not torch.equal(captured, eager)


@gpu
@pytest.mark.parametrize("backend", ["numba", "cupy"])
def test_gpu_full_size_matches_numpy(backend, gen):
    if backend == "cupy" and not mode.has_cupy():
        pytest.skip("CuPy not installed")
    x, w, b = r(gen, 8, 64, 32, 32), r(gen, 64, 64, 3, 3), r(gen, 64)
    assert_close(Ops(backend).conv2d(x, w, b, padding=1), Ops("numpy").conv2d(x, w, b, padding=1), 1e-5)
    q = r(gen, 8, 256, 64)
    out = Ops(backend).attention(q, q, q, heads=2)
    assert_close(out, Ops("numpy").attention(q, q, q, heads=2), 1e-5)
