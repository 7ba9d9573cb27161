"""The CuPy backend's CUDA kernels against torch in float64, on fresh random ragged shapes.

The kernels (minisd.ops.cupy_ops) are called directly, with outputs preallocated full of NaN and passed as
``out=``: an element a kernel forgets stays NaN and fails. Checks and errors that belong to the op layer go
through ``Ops("cupy")``. GPU only (CuPy has no simulator): every test is skipped without a GPU and CuPy.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minisd.mode as mode
from minisd.ops.harness import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not mode.has_cupy(), reason="needs a CUDA GPU and CuPy"),
]

if mode.has_cupy():
    import cupy as cp

    from minisd.ops import Ops, rng
    from minisd.ops import cupy_ops as ops
    from minisd.schedulers import ddim_coefficients, ddpm_coefficients

# error / max|ref|, see check(). 3xTF32 sits near float32 but not on it: the tensor cores add the products
# of one MMA with truncation, so its error grows like K * 2^-24 where float32 FMAs grow like sqrt(K).
PRECISION_TOL = {"fp32": 2e-6, "3xtf32": 2e-5, "tf32": 3e-3}


def rand(gen, *shape, scale=1.0, shift=0.0):
    return cp.asarray((gen.standard_normal(shape) * scale + shift).astype(np.float32))


def t64(x):
    """A CuPy array as a float64 CPU torch tensor: the oracle computes in double precision."""
    return torch.from_numpy(cp.asnumpy(x)).double()


def poisoned(*shape):
    return cp.full(shape, cp.nan, cp.float32)


def check(out, ref, tol, what):
    """The harness's one check: every element written (no NaN), max|out - ref| <= tol * max|ref|."""
    assert_close(out, ref, tol, what)


# ---------------------------------------------------------------------------------------------- conv2d

CONV_CASES = [  # N, C, H, W, O, k, stride, padding
    (2, 5, 11, 13, 7, 3, 1, 1),
    (3, 6, 9, 7, 10, 3, 2, 1),
    (1, 70, 8, 6, 33, 1, 1, 0),
    (2, 3, 17, 15, 32, 3, 1, 1),  # conv_in-like: K = 27 is not a multiple of the tile's 16
    (2, 40, 5, 5, 129, 3, 1, 0),
    (1, 2, 4, 9, 3, 5, 2, 2),
]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "3xtf32"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(gen, case, precision):
    n, c, h, w, o, k, stride, pad = case
    x, wt, b = rand(gen, n, c, h, w), rand(gen, o, c, k, k), rand(gen, o)
    ref = F.conv2d(t64(x), t64(wt), t64(b), stride=stride, padding=pad)
    out = poisoned(*ref.shape)
    assert ops.conv2d(x, wt, b, stride, pad, out=out, precision=precision) is out
    check(out, ref, PRECISION_TOL[precision], f"conv2d {case} {precision}")


PLANS = [(64, 64, 1), (64, 32, 2), (32, 64, 4), (32, 32, 8), (32, 32, 1)]  # (bm, bn, split-K)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("precision", ["fp32", "tf32", "3xtf32"])
def test_conv2d_every_plan(gen, monkeypatch, plan, precision):
    """minisd's shapes pick few of the compiled variants; force each tile shape and split-K factor.
    K = 37 * 9 = 333 is 21 steps of 16: split 8 ways, the last block of each cluster gets no K at all."""
    monkeypatch.setattr(ops, "_gemm_plan", lambda rows, cols, k: plan)
    x, wt = rand(gen, 2, 37, 9, 11), rand(gen, 71, 37, 3, 3)
    res = rand(gen, 2, 71, 9, 11)
    ref = F.conv2d(t64(x), t64(wt), padding=1) + t64(res)
    out = poisoned(2, 71, 9, 11)
    ops.conv2d(x, wt, None, 1, 1, residual=res, out=out, precision=precision)
    check(out, ref, PRECISION_TOL[precision], f"conv2d plan {plan} {precision}")


def test_conv2d_rectangular_kernel(gen):
    x, wt, b = rand(gen, 2, 6, 10, 7), rand(gen, 5, 6, 3, 2), rand(gen, 5)
    out = poisoned(2, 5, 5, 4)  # Ho = (10 + 2 - 3) // 2 + 1, Wo = (7 + 2 - 2) // 2 + 1
    ops.conv2d(x, wt, b, 2, 1, out=out, precision="fp32")
    check(out, F.conv2d(t64(x), t64(wt), t64(b), stride=2, padding=1), 2e-6, "conv2d 3x2 kernel")


def test_conv2d_through_ops_allocates_and_defaults(gen):
    x, wt = rand(gen, 1, 4, 6, 5), rand(gen, 3, 4, 3, 3)
    out = Ops("cupy").conv2d(x, wt)  # no bias, stride 1, no padding, default precision (3xtf32)
    assert isinstance(out, cp.ndarray)
    check(out, F.conv2d(t64(x), t64(wt)), PRECISION_TOL["3xtf32"], "conv2d defaults")


# ---------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("precision", ["fp32", "tf32", "3xtf32"])
@pytest.mark.parametrize("shape", [(2, 37, 70), (70,), (5, 3, 2, 19), (300, 129)])
def test_linear(gen, shape, precision):
    fin = shape[-1]
    fout = 45 if fin != 129 else 257
    x, wt, b = rand(gen, *shape), rand(gen, fout, fin), rand(gen, fout)
    res = rand(gen, *shape[:-1], fout)
    out = poisoned(*shape[:-1], fout)
    ops.linear(x, wt, b, residual=res, out=out, precision=precision)
    check(out, F.linear(t64(x), t64(wt), t64(b)) + t64(res), PRECISION_TOL[precision], f"linear {shape}")
    out = poisoned(*shape[:-1], fout)
    ops.linear(x, wt, None, out=out, precision=precision)  # no bias, no residual
    check(out, F.linear(t64(x), t64(wt)), PRECISION_TOL[precision], f"linear {shape} no bias")


@pytest.mark.parametrize("plan", PLANS)
def test_linear_every_plan(gen, monkeypatch, plan):
    monkeypatch.setattr(ops, "_gemm_plan", lambda rows, cols, k: plan)
    for precision in PRECISION_TOL:
        x, wt, b = rand(gen, 3, 41, 153), rand(gen, 77, 153), rand(gen, 77)
        out = poisoned(3, 41, 77)
        ops.linear(x, wt, b, out=out, precision=precision)
        check(out, F.linear(t64(x), t64(wt), t64(b)), PRECISION_TOL[precision], f"linear {plan} {precision}")


def test_linear_residual_in_place(gen):
    x, wt, res = rand(gen, 9, 33), rand(gen, 33, 33), rand(gen, 9, 33)
    ref = F.linear(t64(x), t64(wt)) + t64(res)
    ops.linear(x, wt, None, residual=res, out=res)  # x = x + f(x): the transformer's skip, in place
    check(res, ref, 1e-5, "linear residual in place")


# ---------------------------------------------------------------------------------------------- attention


def attention_ref(q, k, v, scale):
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(s, dim=-1), v)


@pytest.mark.parametrize(
    "b, h, lq, lk, d",
    [
        (2, 3, 37, 45, 32),
        (1, 2, 256, 256, 32),
        (2, 4, 64, 8, 32),
        (3, 1, 5, 1, 20),
        (1, 2, 19, 130, 64),
        (2, 2, 70, 67, 48),
        (1, 1, 1, 200, 7),
    ],  # fmt: skip
)
@pytest.mark.parametrize("split", [8, 16])
def test_attention_4d(gen, monkeypatch, b, h, lq, lk, d, split):
    monkeypatch.setattr(ops, "_attention_split", lambda b, h, lq: split)  # threads per query
    q, k, v = rand(gen, b, h, lq, d, scale=2.0), rand(gen, b, h, lk, d), rand(gen, b, h, lk, d)
    out = poisoned(b, h, lq, d)
    ops.attention(q, k, v, None, 1 / math.sqrt(d), out=out)
    check(out, attention_ref(t64(q), t64(k), t64(v), 1 / math.sqrt(d)), 1e-5, f"attention {b, h, lq, lk, d}")


@pytest.mark.parametrize("b, heads, lq, lk, d", [(2, 2, 256, 8, 32), (2, 4, 64, 64, 32), (3, 3, 33, 17, 24)])
@pytest.mark.parametrize("split", [8, 16])
def test_attention_3d_heads(gen, monkeypatch, b, heads, lq, lk, d, split):
    monkeypatch.setattr(ops, "_attention_split", lambda b, h, lq: split)
    q, k, v = rand(gen, b, lq, heads * d), rand(gen, b, lk, heads * d), rand(gen, b, lk, heads * d)
    heads_first = lambda t: t64(t).reshape(b, -1, heads, d).transpose(1, 2)  # noqa: E731
    ref = attention_ref(heads_first(q), heads_first(k), heads_first(v), 0.3)
    ref = ref.transpose(1, 2).reshape(b, lq, heads * d)
    out = poisoned(b, lq, heads * d)
    ops.attention(q, k, v, heads=heads, scale=0.3, out=out)
    check(out, ref, 1e-5, "attention 3-D")


def test_attention_large_scores_are_stable(gen):
    """Scores of several hundred: a softmax without the running max would overflow exp."""
    q, k, v = (
        rand(gen, 1, 2, 40, 32, scale=30.0),
        rand(gen, 1, 2, 150, 32, scale=3.0),
        rand(gen, 1, 2, 150, 32),
    )
    out = ops.attention(q, k, v, None, 1 / math.sqrt(32), out=poisoned(*q.shape))
    check(out, attention_ref(t64(q), t64(k), t64(v), 1 / math.sqrt(32)), 1e-4, "attention, large scores")


# ---------------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize(
    "shape, groups", [((2, 12, 7, 5), 4), ((2, 64, 32, 32), 8), ((3, 6, 1, 1), 3), ((1, 8, 11), 2)]
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("silu", [True, False])
def test_group_norm(gen, shape, groups, affine, silu):
    x = rand(gen, *shape, scale=3.0, shift=5.0)  # |mean| >> std: one-pass variance would lose digits
    c = shape[1]
    wt, b = (rand(gen, c), rand(gen, c)) if affine else (None, None)
    ref = F.group_norm(
        t64(x), groups, None if wt is None else t64(wt), None if b is None else t64(b), eps=1e-6
    )
    if silu:
        ref = F.silu(ref)
    out = poisoned(*shape)
    ops.group_norm(x, groups, wt, b, eps=1e-6, silu=silu, out=out)
    # rsqrtf and __expf are a few ulp off: 1.3e-5 seen on an H200 with 2 values a group
    check(out, ref, 3e-5, f"group_norm {shape} affine={affine} silu={silu}")


@pytest.mark.parametrize("shape", [(5, 7, 70), (3, 300), (2, 256, 64), (4, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(gen, shape, affine):
    x = rand(gen, *shape, scale=2.0, shift=-3.0)
    f = shape[-1]
    wt, b = (rand(gen, f), rand(gen, f)) if affine else (None, None)
    ref = F.layer_norm(t64(x), (f,), None if wt is None else t64(wt), None if b is None else t64(b), eps=1e-5)
    out = poisoned(*shape)
    ops.layer_norm(x, wt, b, 1e-5, out=out)
    check(out, ref, 1e-5, f"layer_norm {shape}")


@pytest.mark.parametrize("shape", [(6, 77), (3, 5, 1000), (9, 1), (2, 2, 256, 256)])
def test_softmax(gen, shape):
    x = rand(gen, *shape, scale=10.0, shift=100.0)  # exp(100) overflows float32 without the max shift
    out = poisoned(*shape)
    ops.softmax(x, out=out)
    check(out, torch.softmax(t64(x), dim=-1), 1e-5, f"softmax {shape}")


# ---------------------------------------------------------------------------------------------- pointwise


@pytest.mark.parametrize("shape", [(1000,), (3, 5, 7), (2, 64, 32, 32)])
def test_silu_gelu(gen, shape):
    x = rand(gen, *shape, scale=4.0)
    for name, fn in (("silu", F.silu), ("gelu", F.gelu)):
        out = poisoned(*shape)
        getattr(ops, name)(x, out=out)
        check(out, fn(t64(x)), 2e-6, name)
    ops.silu(x, out=x)  # in place is allowed for pointwise ops
    assert not cp.isnan(x).any()


@pytest.mark.parametrize("shape", [(7, 10), (2, 256, 512), (3, 2, 6)])
def test_geglu(gen, shape):
    x = rand(gen, *shape, scale=3.0)
    a, g = t64(x).chunk(2, dim=-1)
    out = poisoned(*shape[:-1], shape[-1] // 2)
    ops.geglu(x, out=out)
    check(out, a * F.gelu(g), 2e-6, "geglu")


def test_add_scale_add_cfg(gen):
    a, b, bc = rand(gen, 3, 5, 7, 9), rand(gen, 3, 5, 7, 9), rand(gen, 3, 5)
    cases = [
        (ops.add(a, b, out=poisoned(*a.shape)), t64(a) + t64(b), "add"),
        (ops.add(a, bc, out=poisoned(*a.shape)), t64(a) + t64(bc)[:, :, None, None], "add (B, C) broadcast"),
        (ops.scale_add(a, b, 0.5, -2.0, out=poisoned(*a.shape)), 0.5 * t64(a) - 2.0 * t64(b), "scale_add"),
        (ops.cfg_combine(a, b, 7.5, out=poisoned(*a.shape)), t64(a) + 7.5 * (t64(b) - t64(a)), "cfg_combine"),
    ]
    for out, ref, what in cases:
        check(out, ref, 2e-6, what)


def test_data_movement(gen):
    x = rand(gen, 2, 5, 7, 9)
    check(
        ops.upsample_nearest2x(x, out=poisoned(2, 5, 14, 18)),
        F.interpolate(t64(x), scale_factor=2),
        0,
        "upsample",
    )
    y = rand(gen, 2, 3, 7, 9)
    check(ops.concat_channels(x, y, out=poisoned(2, 8, 7, 9)), torch.cat([t64(x), t64(y)], 1), 0, "concat")
    tokens = ops.to_tokens(x, out=poisoned(2, 63, 5))
    check(tokens, t64(x).flatten(2).transpose(1, 2), 0, "to_tokens")
    check(ops.from_tokens(tokens, 7, 9, out=poisoned(2, 5, 7, 9)), t64(x), 0, "from_tokens")
    big = rand(gen, 3, 70, 33, 35)  # several 32 x 32 transpose tiles with ragged edges
    check(Ops("cupy").to_tokens(big), t64(big).flatten(2).transpose(1, 2), 0, "to_tokens, many tiles")


@pytest.mark.parametrize("dim, flip, shift", [(32, True, 0), (33, False, 1), (128, True, 0)])
def test_timestep_embedding(dim, flip, shift):
    t = cp.asarray([0, 1, 17, 500, 999], dtype=cp.int64)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - shift))
    args = torch.tensor([0, 1, 17, 500, 999], dtype=torch.float64)[:, None] * freqs[None]
    parts = [torch.cos(args), torch.sin(args)] if flip else [torch.sin(args), torch.cos(args)]
    ref = torch.cat(parts + [torch.zeros(5, dim - 2 * half, dtype=torch.float64)], dim=1)
    out = poisoned(5, dim)
    ops.timestep_embedding(t, dim, flip, shift, out=out)
    check(out, ref, 1e-6, "timestep_embedding")


# ---------------------------------------------------------------------------------------------- sampling


def test_ddim_and_ddpm_steps(gen):
    """diffusers' formulas, written out here in float64."""
    sample, eps, noise = rand(gen, 2, 3, 9, 11), rand(gen, 2, 3, 9, 11), rand(gen, 2, 3, 9, 11)
    s, e, z = t64(sample), t64(eps), t64(noise)
    at, ap = 0.31, 0.52
    x0 = ((s - math.sqrt(1 - at) * e) / math.sqrt(at)).clamp(-1, 1)
    for eta in (0.0, 1.0):
        std = eta * math.sqrt((1 - ap) / (1 - at) * (1 - at / ap))
        ref = math.sqrt(ap) * x0 + math.sqrt(1 - ap - std**2) * e + std * z
        coef = ddim_coefficients(at, ap, eta)
        out = ops.scheduler_step(sample, eps, noise if eta else None, coef, 1.0, out=poisoned(*sample.shape))
        check(out, ref, 2e-6, f"ddim step eta={eta}")
    unclipped = (s - math.sqrt(1 - at) * e) / math.sqrt(at)
    ref = math.sqrt(ap) * unclipped + math.sqrt(1 - ap) * e
    out = ops.scheduler_step(sample, eps, None, ddim_coefficients(at, ap), None, out=poisoned(*sample.shape))
    check(out, ref, 2e-6, "ddim step, no clip")
    alpha = at / ap
    mean = math.sqrt(ap) * (1 - alpha) / (1 - at) * x0 + math.sqrt(alpha) * (1 - ap) / (1 - at) * s
    std = math.sqrt((1 - ap) / (1 - at) * (1 - alpha))
    coef = ddpm_coefficients(at, ap)
    check(
        ops.scheduler_step(sample, eps, noise, coef, 1.0, out=poisoned(*sample.shape)),
        mean + std * z,
        2e-6,
        "ddpm",
    )
    out = ops.scheduler_step(sample, eps, None, coef, 1.0, out=poisoned(*sample.shape))
    check(out, mean, 2e-6, "ddpm step, last step (no noise)")
    check(Ops("cupy").ddim_step(sample, eps, at, ap), math.sqrt(ap) * x0 + math.sqrt(1 - ap) * e, 2e-6, "Ops")


@pytest.mark.parametrize("shape", [(100_003,), (2, 3, 32, 32), (1,)])
@pytest.mark.parametrize("seed", [0, 1234, -5, 2**63 + 11])
def test_randn_matches_numpy_backend(shape, seed):
    out = poisoned(*shape)
    ops.randn(shape, seed, out=out)
    ref = rng.normal_numpy(int(np.prod(shape)), seed).reshape(shape)
    got = cp.asnumpy(out)
    differ = got != ref
    # rng.py: float64 log/cos/sin may differ in the last bit, which moves ~1 value in 1e8 by one float32 ulp.
    assert differ.sum() <= 1, f"randn: {differ.sum()} of {got.size} values differ from the numpy backend"
    assert np.all(np.abs(got - ref) <= np.spacing(np.abs(ref)))


def test_randn_statistics():
    x = cp.asnumpy(Ops("cupy").randn((1 << 20,), 7)).astype(np.float64)
    assert abs(x.mean()) < 5e-3 and abs(x.std() - 1) < 5e-3
    assert not np.array_equal(x[:1000], cp.asnumpy(Ops("cupy").randn((1000,), 8)))


# ---------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors(gen):
    """Ops("cupy") checks every call once (the kernels trust it); what only a CuPy kernel knows it says itself."""
    o = Ops("cupy")
    x = rand(gen, 2, 4, 5, 5)
    wt = rand(gen, 3, 4, 3, 3)
    bad = [
        (lambda: o.conv2d(x.astype(cp.float64), wt), "float32"),
        (lambda: o.conv2d(x[:, :, :, ::2], wt), "C-contiguous"),
        (lambda: o.conv2d(x, rand(gen, 3, 5, 3, 3)), "input channels"),
        (lambda: o.conv2d(x, wt, rand(gen, 4)), "bias"),
        (lambda: o.conv2d(x, rand(gen, 3, 4, 9, 9)), "larger than"),
        (lambda: ops.conv2d(x, wt, None, 1, 0, out=poisoned(2, 3, 3, 3), precision="fp16"), "precision"),
        (lambda: o.linear(rand(gen, 3, 7), rand(gen, 5, 6)), "in_features"),
        (lambda: o.attention(*(rand(gen, 1, 2, 5, 80),) * 3), "head_dim"),
        (
            lambda: o.attention(rand(gen, 1, 2, 5, 8), rand(gen, 1, 2, 6, 8), rand(gen, 1, 2, 7, 8)),
            "same shape",
        ),
        (lambda: o.attention(*(rand(gen, 1, 5, 12),) * 3, heads=5), "heads"),
        (lambda: o.group_norm(x, 3), "num_groups"),
        (lambda: o.add(x, rand(gen, 2, 5)), "shape"),
        (lambda: o.geglu(rand(gen, 3, 5)), "even"),
        (lambda: o.from_tokens(rand(gen, 2, 10, 4), 3, 3), "tokens"),
        (lambda: o.ddim_step(x, x, 0.5, 0.6, eta=1.0), "noise"),
    ]
    for call, words in bad:
        with pytest.raises((TypeError, ValueError), match=words):
            call()


# ---------------------------------------------------------------------------------------------- graphs


def test_ops_capture_in_a_cuda_graph(gen):
    """With out= buffers a chain of ops records into a CUDA graph; replays see new inputs, like eager runs."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x, wt, b = rand(gen, 2, 32, 16, 16), rand(gen, 64, 32, 3, 3), rand(gen, 64)
        ctx, wq = rand(gen, 2, 8, 64), rand(gen, 64, 64)
        h, tok, q, att, emb = (poisoned(2, 64, 16, 16), poisoned(2, 256, 64), poisoned(2, 256, 64),
                               poisoned(2, 256, 64), poisoned(2, 3, 16, 16))  # fmt: skip
        t = cp.asarray([3.0, 900.0], cp.float32)
        temb = poisoned(2, 32)

        def chain():
            ops.conv2d(x, wt, b, 1, 1, out=h)
            ops.group_norm(h, 8, None, None, 1e-5, True, out=h)
            ops.to_tokens(h, out=tok)
            ops.linear(tok, wq, None, out=q)
            ops.attention(q, ctx, ctx, 2, 1 / math.sqrt(32), out=att)
            ops.timestep_embedding(t, 32, True, 0, out=temb)
            ops.randn(emb.shape, 42, out=emb)

        chain()  # compile and load every kernel before the capture
        stream.synchronize()
        stream.begin_capture()
        chain()
        graph = stream.end_capture()
        x[...] = rand(gen, 2, 32, 16, 16)  # new input, same buffer
        graph.launch(stream)
        stream.synchronize()
        replayed = [cp.asnumpy(a) for a in (att, temb, emb)]
        chain()
        stream.synchronize()
    for got, again in zip(replayed, (att, temb, emb), strict=True):
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got, cp.asnumpy(again))


def test_unet_on_cupy_ops_matches_torch(gen):
    """All the ops together: minisd's forward pass (minisd/forward.py, random weights) on Ops("cupy") against
    the torch model."""
    from minisd import architecture
    from minisd.forward import Forward, prepare_params
    from minisd.model import MiniSD

    torch.manual_seed(int(gen.integers(1 << 30)))
    model = MiniSD().double().eval()
    arch = architecture.read(model.config)
    o = Ops("cupy")
    net = Forward(
        o, prepare_params({k: v.float().numpy() for k, v in model.state_dict().items()}, arch, o), arch
    )
    sample, ctx = rand(gen, 2, 3, 32, 32), rand(gen, 2, 8, 64)
    steps = cp.asarray([17.0, 951.0], cp.float32)
    with torch.no_grad():
        ref = model.unet(t64(sample), t64(steps), t64(ctx))
    for precision, tol in (("fp32", 1e-5), ("3xtf32", 1e-4), ("tf32", 1e-2)):
        ops.DEFAULT_PRECISION = precision
        try:
            out = net.unet(sample, net.time_projections(steps), net.cross_attention_kv(ctx))
        finally:
            ops.DEFAULT_PRECISION = "3xtf32"
        err = float(np.linalg.norm(cp.asnumpy(out) - ref.numpy()) / np.linalg.norm(ref.numpy()))
        assert err < tol, f"UNet on the CuPy ops, {precision}: relative error {err:.2e} (tol {tol})"
