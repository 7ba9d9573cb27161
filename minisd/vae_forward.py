"""minisd's autoencoder (diffusers' AutoencoderKL, minisd/model.py) on the course's kernels.

The torch model's blocks, walked from the same spec (minisd.architecture.AutoencoderKL), with every array op
a method of ``ops`` (minisd.ops.Ops), so the one code runs on numpy, Numba or CuPy. Its ResNet blocks are the
UNet's (minisd.forward.Forward.resnet_block, without a time embedding). Three things need a thought:

* the mid block's attention: to_out runs as a 1x1 conv after from_tokens, which adds the residual in its
  epilogue (as Forward.transformer_2d does with proj_out);
* the encoder's Downsample2D pads one zero row and column after the image only, which conv2d's padding
  (the same on every side) cannot say. A 4x4 kernel says it: the 3x3 one behind a zero row and column,
  with padding 1 and stride 2. Output row i then reads input rows 2i-1 .. 2i+2, where the zero weights drop
  row 2i-1: rows 2i .. 2i+2, as diffusers' (row H, if reached, is a padded zero in both);
* ``encode`` returns the latents' mean (diffusers' ``latent_dist.mode()``), from the first
  ``latent_channels`` rows of quant_conv: no op needs to split channels.

``prepare_vae_params`` builds those kernels once, with the weights on ``ops``' device:

    vae = VAEForward(ops, prepare_vae_params(state, spec, ops), spec)
    images = vae.decode(latents / spec.scaling_factor)    # (N, 4, 16, 16) -> (N, 3, 64, 64)
    images = vae.decode_scaled(latents)                    # the same, from the UNet's (scaled) latents
    mean = vae.encode(images)                              # (N, 3, 64, 64) -> (N, 4, 16, 16)
"""

import numpy as np

from minisd.architecture import EncoderDownsample
from minisd.forward import Forward


def prepare_vae_params(state, spec, ops):
    """The "vae.*" arrays of ``state`` (a VAE's or a whole MiniSD's) on ``ops``' device, float32, plus the
    derived kernels ``VAEForward`` runs."""
    host = {k: np.ascontiguousarray(v, np.float32) for k, v in state.items() if k.startswith("vae.")}
    for block in spec.encoder.blocks:
        if block.sampler is not None:
            w = host[block.sampler.prefix + "weight"]
            host[block.sampler.prefix + "weight_4x4"] = np.pad(w, ((0, 0), (0, 0), (1, 0), (1, 0)))
    for block in (*spec.encoder.blocks, *spec.decoder.blocks):
        for a in block.attentions:
            w = host[
                a.prefix + "to_out.0.weight"
            ]  # reshaped, not w[..., None, None]: minisd.forward says why
            host[a.prefix + "to_out.0.weight_1x1"] = w.reshape(*w.shape, 1, 1)
    # decode_scaled's first conv: post_quant_conv(z / s) = (W / s) z + b, the division folded into W
    pq = spec.post_quant_conv.prefix
    host[pq + "weight_unscaling"] = host[pq + "weight"] / np.float32(spec.scaling_factor)
    q, n = spec.quant_conv.prefix, spec.latent_channels
    host[q + "weight_mean"] = np.ascontiguousarray(host[q + "weight"][:n])
    host[q + "bias_mean"] = np.ascontiguousarray(host[q + "bias"][:n])
    return {key: ops.to_device(value) for key, value in host.items()}


class VAEForward:
    """The AutoencoderKL ``spec`` on ``ops``, with weights ``p`` (from ``prepare_vae_params``)."""

    def __init__(self, ops, p, spec):
        self.ops, self.p, self.spec = ops, p, spec
        self.blocks = Forward(ops, p, None)  # the UNet's ResnetBlock2D, which reads only its own spec

    def _norm(self, prefix):
        return self.p[prefix + "weight"], self.p[prefix + "bias"]

    def _conv(self, spec, x, upsample=False):
        w, b = self.p[spec.prefix + "weight"], self.p[spec.prefix + "bias"]
        return self.ops.conv2d(x, w, b, spec.stride, spec.padding, upsample=upsample)

    def decode(self, latents):
        """(N, latent_channels, h, w) latents as ``encode`` gives them -> (N, out_channels, 4h, 4w) images
        (for 2 halvings; in about [-1, 1] once trained)."""
        return self._coder(self.spec.decoder, self._conv(self.spec.post_quant_conv, latents))

    def decode_scaled(self, latents):
        """The UNet's latents (``encode``'s times scaling_factor) -> images: no op of its own divides them,
        post_quant_conv does (``prepare_vae_params``)."""
        pq = self.spec.post_quant_conv.prefix
        x = self.ops.conv2d(latents, self.p[pq + "weight_unscaling"], self.p[pq + "bias"])
        return self._coder(self.spec.decoder, x)

    def encode(self, images):
        """(N, in_channels, H, W) images -> (N, latent_channels, H/4, W/4): the mean of the latents."""
        q = self.spec.quant_conv.prefix
        x = self._coder(self.spec.encoder, images)
        return self.ops.conv2d(x, self.p[q + "weight_mean"], self.p[q + "bias_mean"])

    def attention(self, spec, x):
        """minisd.architecture.VAEAttention: GroupNorm, tokens, softmax(q k^T / sqrt(d)) v, to_out, + x."""
        ops, pre = self.ops, spec.prefix
        h, w = ops.image_size(x)
        tokens = ops.to_tokens(ops.group_norm(x, spec.groups, *self._norm(pre + "group_norm."), spec.eps))
        q, k, v = (
            ops.linear(tokens, self.p[f"{pre}to_{n}.weight"], self.p[f"{pre}to_{n}.bias"]) for n in "qkv"
        )
        out = ops.from_tokens(ops.attention(q, k, v, heads=spec.heads), h, w)
        return ops.conv2d(out, self.p[pre + "to_out.0.weight_1x1"], self.p[pre + "to_out.0.bias"], residual=x)

    def _coder(self, spec, x):
        """An Encoder or Decoder (minisd.architecture.Coder): conv_in, the blocks, GroupNorm+SiLU, conv_out."""
        ops = self.ops
        x = self._conv(spec.conv_in, x)
        for block in spec.blocks:
            for resnet, attention in block.layers():
                x = self.blocks.resnet_block(resnet, x, None)
                if attention is not None:
                    x = self.attention(attention, x)
            if isinstance(block.sampler, EncoderDownsample):
                w, b = self.p[block.sampler.prefix + "weight_4x4"], self.p[block.sampler.prefix + "bias"]
                x = ops.conv2d(x, w, b, stride=2, padding=1)
            elif block.sampler is not None:  # the decoder's Upsample2D: nearest x2, then the conv
                x = self._conv(block.sampler, x, upsample=True)
        x = ops.group_norm(x, spec.groups, *self._norm(spec.prefix + "conv_norm_out."), spec.eps, silu=True)
        return self._conv(spec.conv_out, x)
