"""Graded tests of lesson 13: sampling latents, the KL term, the decoder's fused upsample + conv, and the VAE
mid block's self-attention.

Every answer is checked against PyTorch in float64 on fresh, ragged inputs; the kernels run on poisoned
outputs. 13.4 composes lesson 11's ops (and so lessons 04, 07 and 08's kernels): finish those first.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import course.grading as grading
from course.grading import Out, assert_close, load
from minisd import architecture, model

ex = load("lesson13")
ex11 = load("lesson11")
rng = grading.rng


def f32(*shape, scale=1.0, shift=0.0):
    return (shift + scale * rng.standard_normal(shape)).astype(np.float32)


def t64(a):
    return torch.from_numpy(a).double()


def latents_ref(mean, logvar, noise, scaling_factor):
    return ((t64(mean) + torch.exp(0.5 * t64(logvar)) * t64(noise)) * scaling_factor).numpy()


def kl_ref(mean, logvar):
    m, lv = t64(mean).flatten(1), t64(logvar).flatten(1)
    return (0.5 * (m**2 + lv.exp() - 1 - lv).sum(dim=1)).numpy()


def upsample_conv_ref(x, w, b=None):
    up = F.interpolate(t64(x), scale_factor=2, mode="nearest")
    return F.conv2d(up, t64(w), None if b is None else t64(b), padding=1).numpy()


def _refuses_bad_arrays(fn, first, *rest):
    """``fn`` refuses a float64, a non-contiguous and a non-numpy first argument, naming the problem."""
    with pytest.raises(TypeError, match="float32"):
        fn(first.astype(np.float64), *rest)
    wide = np.repeat(first, 2, axis=-1)[..., ::2]  # the same values, strided
    with pytest.raises(ValueError, match="contiguous"):
        fn(wide, *rest)
    with pytest.raises(TypeError, match="numpy"):
        fn(first.tolist(), *rest)


@pytest.mark.exercise(
    "13.1",
    hints=(
        "Each thread handles every gridsize-th element, starting at its own index: any grid then covers any "
        "size, here a grid smaller than the data.",
        "for i in range(cuda.grid(1), out.size, cuda.gridsize(1)): out[i] = (mean[i] + exp(0.5 * logvar[i]) * "
        "noise[i]) * scaling_factor, with float32 constants.",
        "for i in range(cuda.grid(1), out.size, cuda.gridsize(1)): std = math.exp(float32(0.5) * logvar[i]); "
        "out[i] = (mean[i] + std * noise[i]) * scaling_factor",
    ),
)
def test_sample_latents_kernel_grid_stride():
    n = int(rng.integers(600, 700))  # ragged, and more than the 2 x 128 threads launched
    mean, noise = f32(n), f32(n)
    logvar = rng.uniform(-6, 2, n).astype(np.float32)
    s = float(rng.uniform(0.2, 1.5))
    run = grading.launch(ex.sample_latents_kernel, 2, 128, mean, logvar, noise, np.float32(s), Out(n))
    assert_close(
        run.out, latents_ref(mean, logvar, noise, s), rtol=1e-5, atol=1e-6, what="sample_latents_kernel"
    )
    share = math.ceil(n / 256)
    run.budget(reads={"mean": share, "logvar": share, "noise": share}, writes={"out": share})
    run.written_once("out")


@pytest.mark.exercise(
    "13.1",
    hints=(
        "The wrapper checks the three arrays and the factor, then launches the kernel once on flat views.",
        "_array each input; one shape for all three (ValueError); scaling_factor > 0; out = np.full(shape, "
        "np.nan, np.float32); launch on reshape(-1) views with min(_blocks(size), MAX_BLOCKS) blocks.",
        "sample_latents_kernel[min(_blocks(out.size), MAX_BLOCKS), THREADS](mean.reshape(-1), "
        "logvar.reshape(-1), noise.reshape(-1), np.float32(scaling_factor), out.reshape(-1)); return out",
    ),
)
def test_sample_latents():
    shape = (2, 4, 3, int(rng.integers(3, 7)))
    mean, noise = f32(*shape), f32(*shape)
    logvar = rng.uniform(-6, 2, shape).astype(np.float32)
    with grading.launches() as seen:
        z = ex.sample_latents(mean, logvar, noise, 0.3734)
    assert_close(z, latents_ref(mean, logvar, noise, 0.3734), rtol=1e-5, atol=1e-6, what="sample_latents")
    seen.expect(ex.sample_latents_kernel, "sample_latents()")
    with pytest.raises(ValueError, match="shape"):
        ex.sample_latents(mean, f32(1, *shape[1:]), noise, 0.3734)
    with pytest.raises(ValueError, match="scaling_factor"):
        ex.sample_latents(mean, logvar, noise, 0.0)
    _refuses_bad_arrays(lambda m: ex.sample_latents(m, logvar, noise, 0.3734), mean)


@pytest.mark.exercise(
    "13.2",
    hints=(
        "One block per image: each thread sums a strided share of the row into a register, then the block "
        "adds its threads' sums in shared memory, halving the active threads at each step.",
        "for j in range(t, M, KL_THREADS): acc += m*m + exp(lv) - 1 - lv; partial[t] = acc; syncthreads; "
        "while stride > 0: if t < stride: partial[t] += partial[t + stride]; syncthreads (outside the if); "
        "stride //= 2; thread 0 writes 0.5 * partial[0].",
        "partial = cuda.shared.array(KL_THREADS, float32); n, t = cuda.blockIdx.x, cuda.threadIdx.x; ... "
        "stride = KL_THREADS // 2; while stride > 0: (if t < stride: partial[t] += partial[t + stride]); "
        "cuda.syncthreads(); stride //= 2; if t == 0: out[n] = float32(0.5) * partial[0]",
    ),
)
@pytest.mark.parametrize("row", ["longer than a block", "shorter than a block"])
def test_kl_kernel(row):
    n = int(rng.integers(2, 4))
    m = int(rng.integers(2 * ex.KL_THREADS + 1, 3 * ex.KL_THREADS)) if row.startswith("longer") else 45
    mean = f32(n, m)
    logvar = rng.uniform(-4, 1.5, (n, m)).astype(np.float32)
    run = grading.launch(ex.kl_kernel, n, ex.KL_THREADS, mean, logvar, Out(n))
    assert_close(run.out, kl_ref(mean, logvar), rtol=1e-4, atol=1e-3, what=f"kl_kernel on ({n}, {m})")
    share = math.ceil(m / ex.KL_THREADS)
    run.budget(reads={"mean": share, "logvar": share}, block_writes={"out": 1})


@pytest.mark.exercise(
    "13.2",
    hints=(
        "Each image's C·H·W latents are one row: reshape to (N, C·H·W) and launch one block per image.",
        "_array both (4-D), one shape; out = np.full(N, np.nan, np.float32); kl_kernel[N, KL_THREADS]("
        "mean.reshape(N, -1), logvar.reshape(N, -1), out).",
        "n = mean.shape[0]; out = np.full(n, np.nan, np.float32); kl_kernel[n, KL_THREADS](mean.reshape(n, -1), "
        "logvar.reshape(n, -1), out); return out",
    ),
)
def test_kl_per_image():
    mean = f32(2, 4, 3, int(rng.integers(3, 7)))
    logvar = rng.uniform(-4, 1.5, mean.shape).astype(np.float32)
    with grading.launches() as seen:
        kl = ex.kl_per_image(mean, logvar)
    assert kl.dtype == np.float32, f"kl_per_image returns float32, got {kl.dtype}"
    assert_close(kl, kl_ref(mean, logvar), rtol=1e-4, atol=1e-3, what="kl_per_image")
    seen.expect(ex.kl_kernel, "kl_per_image()", grid=2, block=ex.KL_THREADS)
    with pytest.raises(ValueError, match="shape"):
        ex.kl_per_image(mean, f32(2, 2, *mean.shape[2:]))
    _refuses_bad_arrays(lambda a: ex.kl_per_image(a, logvar), mean)


@pytest.mark.exercise(
    "13.3",
    hints=(
        "Output pixel (oy, ox) of the upsampled-then-convolved image reads upsampled pixels (oy-1..oy+1, "
        "ox-1..ox+1); upsampled pixel (uy, ux) is input pixel (uy // 2, ux // 2). Zero padding lives around "
        "the UPSAMPLED image.",
        "acc = b[o]; for c, ky, kx: uy, ux = oy + ky - 1, ox + kx - 1; if 0 <= uy < OH and 0 <= ux < OW: acc += "
        "x[n, c, uy // 2, ux // 2] * w[o, c, ky, kx] (bound before halving: -1 // 2 must not become row 0).",
        "i → ox = i % OW, oy = i // OW % OH, o = i // (OW*OH) % O, n = i // (OW*OH*O); acc = b[o]; loops as "
        "above; out[n, o, oy, ox] = acc",
    ),
)
def test_upsample_conv2d_kernel():
    n, c, o = 2, 3, 2
    h, w = int(rng.integers(2, 4)), int(rng.integers(3, 5))  # ragged, and not square
    x, wt, b = f32(n, c, h, w), f32(o, c, 3, 3, scale=0.3), f32(o)
    shape = (n, o, 2 * h, 2 * w)
    run = grading.launch(
        ex.upsample_conv2d_kernel, math.ceil(math.prod(shape) / 64), 64, x, wt, b, Out(shape)
    )
    assert_close(run.out, upsample_conv_ref(x, wt, b), rtol=1e-4, atol=1e-5, what="upsample_conv2d_kernel")
    run.budget(reads={"x": 9 * c, "w": 9 * c, "b": 1}, writes={"out": 1})
    run.written_once("out")


@pytest.mark.exercise(
    "13.3",
    hints=(
        "One launch, one thread per output pixel: the wrapper checks shapes, defaults the bias, and never "
        "builds the 4x larger upsampled image.",
        "_array x and weight (4-D); weight.shape[1:] == (C, 3, 3) else ValueError; bias (O,) or zeros; out = "
        "np.full((N, O, 2H, 2W), np.nan, np.float32); upsample_conv2d_kernel[_blocks(out.size), THREADS](...).",
        "upsample_conv2d_kernel[_blocks(out.size), THREADS](x, weight, bias, out); return out",
    ),
)
def test_upsample_conv2d():
    x, wt, b = f32(1, 2, 3, 2), f32(3, 2, 3, 3, scale=0.3), f32(3)
    with grading.launches() as seen:
        out = ex.upsample_conv2d(x, wt, b)
    assert_close(out, upsample_conv_ref(x, wt, b), rtol=1e-4, atol=1e-5, what="upsample_conv2d")
    seen.expect(ex.upsample_conv2d_kernel, "upsample_conv2d()", threads_at_least=3 * 6 * 4)
    assert len(seen) == 1, (
        f"upsample_conv2d is one fused launch, no upsampled intermediate: it launched {seen}"
    )
    assert_close(ex.upsample_conv2d(x, wt), upsample_conv_ref(x, wt), rtol=1e-4, atol=1e-5, what="no bias")
    with pytest.raises(ValueError, match="3, 3"):
        ex.upsample_conv2d(x, f32(3, 2, 5, 5), b)
    with pytest.raises(ValueError, match="weight"):
        ex.upsample_conv2d(x, f32(3, 4, 3, 3), b)
    with pytest.raises(ValueError, match="bias"):
        ex.upsample_conv2d(x, wt, b[:2])
    _refuses_bad_arrays(lambda a: ex.upsample_conv2d(a, wt, b), x)


@pytest.mark.exercise(
    "13.4",
    hints=(
        "The mid block's attention is a residual around GroupNorm → tokens → q, k, v → attention → to_out, "
        "every step one of lesson 11's ops.",
        "normed = lesson11.group_norm(x, groups, w, b, eps); tokens (N, HW, C) = normed.reshape(N, C, HW) "
        "transposed (contiguous); q, k, v = lesson11.linear(tokens, W, b) each; out = lesson11.linear("
        "lesson11.attention(q, k, v, heads), to_out); x + out transposed back to (N, C, H, W).",
        "tokens = np.ascontiguousarray(normed.reshape(n, c, h * w).transpose(0, 2, 1)); q, k, v = (lesson11."
        "linear(tokens, p[f'to_{s}.weight'], p[f'to_{s}.bias']) for s in 'qkv'); ...; return x + out.transpose("
        "0, 2, 1).reshape(n, c, h, w)",
    ),
)
@pytest.mark.parametrize("heads", [1, 2])
def test_vae_attention_matches_minisd(heads):
    c, groups = 8, 4
    spec = architecture.VAEAttention("", c, heads, groups, architecture.VAE_NORM_EPS)
    torch.manual_seed(int(rng.integers(1 << 30)))
    block = model.VAEAttention(spec)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    params = {k: v.numpy().astype(np.float32) for k, v in block.state_dict().items()}
    x = f32(1, c, 3, int(rng.integers(3, 5)), scale=2.0, shift=0.5)
    with torch.no_grad():
        ref = block.double()(t64(x)).numpy()
    with grading.launches() as seen:
        out = ex.vae_attention(x, params, groups, spec.eps, heads)
    assert_close(out, ref, rtol=1e-3, atol=1e-3, what=f"vae_attention ({heads} head{'s' * (heads > 1)})")
    what = "vae_attention() (on your kernels)"
    seen.expect("group_norm_kernel", what).expect("attention_row_kernel", what)
    seen.expect(ex11.GEMM_KERNEL, what, times=4)
