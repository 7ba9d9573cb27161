"""Lesson 13 — latent diffusion and the VAE decoder: your exercises.

minisd's UNet denoises 4 x 16 x 16 latents; an autoencoder (diffusers' AutoencoderKL) maps them to and from
64 x 64 RGB images. Your exercises: 13.1 sample_latents (the reparameterisation, grid-stride), 13.2
kl_per_image (one block per image, a shared-memory tree), 13.3 upsample_conv2d (the decoder's Upsample2D,
fused), 13.4 vae_attention (the mid block's self-attention on lesson 11's ops). Host wrappers take
C-contiguous float32 numpy arrays (``_array`` below refuses anything else) and return numpy arrays.

Grade them with  python -m pytest tests/exercises/test_lesson13.py
Once upsample_conv2d runs,  python -m minisd sample --kernels exercises  decodes with it.
"""

import math

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda, float32  # noqa: F401  (float32: for your kernels' constants)

from . import lesson11  # noqa: F401  (13.4 composes its ops)

THREADS = 256
MAX_BLOCKS = 1024  # a grid-stride loop needs no more: 1024 x 256 threads fill every SM of an H100 or H200
KL_THREADS = 128  # threads per image in kl_kernel: a power of two, so the tree halves evenly


def _blocks(n):
    return max(1, math.ceil(n / THREADS))


def _array(x, what, ndim=None):
    """``x`` if the kernels can take it as it is, else a clear refusal (nothing is silently copied)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{what} must be float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(
            f"{what} is not C-contiguous (a transposed or sliced view?): np.ascontiguousarray it"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {x.shape}")
    return x


# --------------------------------------------------------------------------- Exercise 13.1: sampling latents
@cuda.jit
def sample_latents_kernel(mean, logvar, noise, scaling_factor, out):
    """Exercise 13.1 — out[i] = (mean[i] + exp(logvar[i] / 2) · noise[i]) · scaling_factor on flat arrays.

    A grid-stride loop (lesson 01): thread cuda.grid(1) does elements i, i + cuda.gridsize(1), ... so any
    grid covers any size. float32(0.5), not 0.5: a bare constant is float64, slow on a GPU.

    Graded: the answer on a grid smaller than the data, and each thread's share of the reads and writes.
    """
    # TODO
    pass


def sample_latents(mean, logvar, noise, scaling_factor):
    """Exercise 13.1 — the reparameterised latents z = (mean + σ·ε)·scaling_factor, σ = exp(logvar / 2).

    1. _array each of mean, logvar, noise; ValueError (naming the shapes) unless all three have one shape;
       ValueError unless scaling_factor is a positive finite number.
    2. out = np.full(shape, np.nan, np.float32); launch sample_latents_kernel on the flat (reshape(-1))
       arrays with min(_blocks(size), MAX_BLOCKS) blocks of THREADS, scaling_factor as np.float32.
    3. Return out (the input's shape).
    """
    raise NotImplementedError("Exercise 13.1: sample_latents")


# --------------------------------------------------------------------------- Exercise 13.2: the KL term
@cuda.jit
def kl_kernel(mean, logvar, out):
    """Exercise 13.2 — out[n] = 0.5 · Σ_j (mean[n, j]² + exp(logvar[n, j]) − 1 − logvar[n, j]), (N, M) in.

    Block n sums row n with KL_THREADS threads (lesson 03):
    1. partial = cuda.shared.array(KL_THREADS, float32); thread t sums j = t, t + KL_THREADS, ... < M
       (M is ragged: some threads get one term fewer, some none) and stores its sum in partial[t].
    2. A tree: stride = KL_THREADS // 2, then while stride > 0: threads t < stride add partial[t + stride];
       EVERY thread then reaches cuda.syncthreads(); halve stride. (A barrier before the tree, too.)
    3. Thread 0 writes 0.5 · partial[0].

    Graded: ragged rows, each thread's share of the reads, one write per block.
    """
    # TODO
    pass


def kl_per_image(mean, logvar):
    """Exercise 13.2 — KL(N(mean, exp(logvar)) ‖ N(0, 1)) of each image of (N, C, H, W) latents → float32 (N,).

    _array both (4-D), ValueError unless they have one shape; launch kl_kernel[N, KL_THREADS] on the
    (N, C·H·W) reshapes, into np.full(N, np.nan, np.float32).
    """
    raise NotImplementedError("Exercise 13.2: kl_per_image")


# --------------------------------------------------------------------------- Exercise 13.3: fused upsample + conv
@cuda.jit
def upsample_conv2d_kernel(x, w, b, out):
    """Exercise 13.3 — out = conv3x3(upsample_nearest2x(x), padding 1) + b, NCHW, no upsampled image stored.

    x (N, C, H, W), w (O, C, 3, 3), b (O,), out (N, O, 2H, 2W). One thread per element of out, flat index
    i → (n, o, oy, ox) as in lesson 06. Start from b[o]; for each c, ky, kx the tap sits at row
    uy = oy + ky − 1, column ux = ox + kx − 1 of the UPSAMPLED image: skip it unless 0 <= uy < 2H and
    0 <= ux < 2W (that is the zero padding), else add x[n, c, uy // 2, ux // 2] · w[o, c, ky, kx].
    Test the bounds before halving: −1 // 2 would read row 0 in C, where −1 / 2 is 0.

    Graded: torch's interpolate + conv2d on ragged shapes, at most C·9 reads of x and one write per thread.
    """
    # TODO
    pass


def upsample_conv2d(x, weight, bias=None):
    """Exercise 13.3 — the decoder's Upsample2D: conv2d(upsample_nearest2x(x), weight, bias, padding=1).

    1. _array x and weight (4-D); ValueError unless weight is (O, C, 3, 3) with x's C; bias (O,), or zeros
       when None.
    2. out = np.full((N, O, 2H, 2W), np.nan, np.float32); upsample_conv2d_kernel on _blocks(out.size)
       blocks of THREADS: one launch, no upsampled intermediate.
    minisd's pipeline runs this for every Upsample2D of the decoder with --kernels exercises once it works.
    """
    raise NotImplementedError("Exercise 13.3: upsample_conv2d")


# --------------------------------------------------------------------------- Exercise 13.4: the mid block's attention
def vae_attention(x, p, groups, eps=1e-6, heads=1):
    """Exercise 13.4 — minisd.model.VAEAttention.forward on lesson 11's ops: x (N, C, H, W) → same shape.

      tokens = GroupNorm(x) as (N, H·W, C)          lesson11.group_norm, then reshape + transpose (contiguous)
      q, k, v = to_q(tokens), to_k(tokens), to_v(tokens)      lesson11.linear, each with its bias
      out = to_out.0(attention(q, k, v, heads))               lesson11.attention, lesson11.linear
      return x + out back as (N, C, H, W)
    Keys of p: "group_norm.weight", "group_norm.bias", "to_q.weight", "to_q.bias", ..., "to_out.0.bias".

    Graded: against minisd's block in float64, and that your kernels (GroupNorm, GEMM, attention) ran.
    """
    raise NotImplementedError("Exercise 13.4: vae_attention")
