"""minisd sampled with a half-precision UNet: what runs in fp16/bf16, and what stays float32.

    net = HalfPrecisionNet(state, arch, Ops("cupy"), "bf16")    # then minisd.pipeline.Sampler(ops, net)

* Once per run, float32 (minisd.forward.Forward on the CuPy ops): the text encoder, the cross-attention keys
  and values (then rounded to half once: the attention kernel reads them every step) and the time
  projections (kept float32: the convolutions add them in their float32 epilogue).
* Every step, half: the UNet, the same minisd.forward.Forward walking the same architecture, on
  minisd.ops.half_ops.HalfOps with weights from ``prepare_half_params``. The sample enters as float32 NCHW
  and the noise prediction leaves as float32 NCHW. Each transformer block's three LayerNorms are folded
  into the products that read them (HalfOps.layer_norm_linear): no normalised tokens are ever stored.
* Every step, float32: guidance and the DDIM step. x_0 = (x - sqrt(1 - a) eps) / sqrt(a) divides by
  sqrt(a) ~ 0.006 at t = 999, which would blow a half-precision rounding of x up 160-fold.
"""

import copy

import cupy as cp
import numpy as np

from minisd.forward import Forward, prepare_params
from minisd.ops.half_ops import HalfOps, fold_layer_norm, interleave_geglu


def _pad_to_8(a, axis):
    extra = -a.shape[axis] % 8
    if not extra:
        return a
    width = [(0, 0)] * a.ndim
    width[axis] = (0, extra)
    return np.pad(a, width)


def prepare_half_params(state, arch, ops):
    """The UNet's weights for ``ops`` (a HalfOps): convolutions as (O, kh, kw, C) with C and O padded to
    multiples of 8, linear layers as they are, the GEGLU projection's rows interleaved, self-attention's
    q, k, v weights also stacked into one, all in half; biases and norm weights float32 (conv biases padded
    like their O). The LayerNorms of the transformer blocks are folded into the layers after them
    (``_fold_layer_norms``)."""
    params = {}
    for key, value in state.items():
        if not key.startswith("unet."):
            continue
        value = np.asarray(value, np.float32)
        stem = key.rsplit(".", 1)[0]
        if key.endswith("ff.net.0.proj.weight") or key.endswith("ff.net.0.proj.bias"):
            value = interleave_geglu(value)
        if value.ndim == 4:
            value = _pad_to_8(_pad_to_8(value.transpose(0, 2, 3, 1), 3), 0)
        elif value.ndim == 1 and np.ndim(state.get(stem + ".weight")) == 4:
            value = _pad_to_8(value, 0)
        array = cp.asarray(np.ascontiguousarray(value))
        params[key] = array if value.ndim == 1 else ops.from_float32(array)
    for block in arch.unet.blocks:
        for t in block.attentions:  # proj_out as a 1x1 convolution (see Forward.transformer_2d)
            w = params[t.prefix + "proj_out.weight"]
            params[t.prefix + "proj_out.weight_1x1"] = w.reshape(w.shape[0], 1, 1, w.shape[1])
            _fold_layer_norms(state, t.block, ops, params)
    return params


def _fold_layer_norms(state, block, ops, params):
    """norm1 into self-attention's q, k, v (stacked into one product: HalfOps.self_attention), norm2 into
    cross-attention's to_q, norm3 into the GEGLU projection: each layer's weight and bias replaced by the
    folded ones, plus its "ln_colsum" (minisd.forward.Forward._norm_linear uses them)."""
    a1, a2, ff = block + "attn1.", block + "attn2.", block + "ff.net.0.proj."
    qkv = np.concatenate([state[a1 + f"to_{name}.weight"] for name in "qkv"])
    for norm, prefix, weight, bias in (
        ("norm1.", a1 + "to_qkv.", qkv, None),
        ("norm2.", a2 + "to_q.", state[a2 + "to_q.weight"], None),
        ("norm3.", ff, state[ff + "weight"], state[ff + "bias"]),
    ):
        weight, bias = fold_layer_norm(
            state[block + norm + "weight"], state[block + norm + "bias"], weight, bias
        )
        if prefix == ff:
            weight, bias = interleave_geglu(weight), interleave_geglu(bias)
        half = ops.from_float32(cp.asarray(weight, cp.float32))
        params[prefix + "weight"], params[prefix + "bias"] = half, cp.asarray(bias, cp.float32)
        params[prefix + "ln_colsum"] = ops.layer_norm_colsum(half)


class HalfPrecisionNet:
    """The four parts minisd.pipeline.Sampler calls, split between float32 and ``precision``."""

    def __init__(self, state, arch, ops32, precision):
        ops = HalfOps(precision)
        self.arch = arch
        self.full = Forward(ops32, prepare_params(state, arch, ops32), arch)
        self.half = Forward(ops, prepare_half_params(state, arch, ops), arch)

    @property
    def ops(self):
        """The half-precision ops the UNet runs on (replace them, e.g. to time every call: minisd.profile)."""
        return self.half.ops

    @ops.setter
    def ops(self, ops):
        self.half = copy.copy(self.half)  # this net's own Forward: a shallow copy of the net shares the other
        self.half.ops = ops

    def text_encoder(self, one_hot):
        return self.full.text_encoder(one_hot)

    def time_projections(self, timesteps):
        return self.full.time_projections(timesteps)

    def cross_attention_kv(self, context):
        kv = self.full.cross_attention_kv(context)
        half = {
            key: tuple(self.ops.from_float32(a) for a in pair) for key, pair in kv.items() if key != "context"
        }
        return half | {"context": kv["context"]}

    def unet(self, sample, temb, kv):
        """float32 (N, C, H, W) sample -> float32 (N, C, H, W) noise prediction, through the half UNet."""
        u = self.arch.unet
        x = self.ops.from_nchw(sample, u.in_channels + -u.in_channels % 8)
        return self.ops.to_nchw(self.half.unet(x, temb, kv), u.out_channels)
