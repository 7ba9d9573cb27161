"""minisd's networks in PyTorch: a CLIP-like text encoder, a small diffusers-style UNet and, for a latent
minisd, diffusers' AutoencoderKL.

PyTorch is used to TRAIN minisd and as the test oracle for the course's own kernels. Module names follow
diffusers' UNet2DConditionModel and transformers' CLIPTextModel, so ``state_dict()`` keys read like Stable
Diffusion's (``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``) and a learner can
hold the two side by side. Embeddings are nn.Embedding, so their keys end in ".weight"
(``text_encoder.position_embedding.weight``). See docs/MINISD_SPEC.md for the contract; every block here is
written out in full (no diffusers import) so it can be read top to bottom.

The UNet is diffusers' exactly (its weights in diffusers' UNet2DConditionModel give the same outputs). The
text encoder is not CLIP's: its keys load into CLIPTextModel after a prefix rename, but CLIP masks attention
causally and this encoder does not mask at all, so CLIPTextModel gives other hidden states (up to 1.99 apart
on the shipped weights). The autoencoder is diffusers' AutoencoderKL exactly, its keys under "vae.".

    model = MiniSD()                             # minisd.architecture.default_config(); .text_encoder, .unet, .vae
    context = model.text_encoder(token_ids)      # (B, 14) int64 -> (B, 14, 64)
    eps = model.unet(noisy, timesteps, context)  # latents (B, 4, 16, 16) -> (B, 4, 16, 16)
    mean, logvar = model.vae.encode(images)      # (B, 3, 64, 64) -> 2 x (B, 4, 16, 16); .decode(z)

Every channel count, head count, group count and eps comes from minisd.architecture, read from the config:
the same description the kernel forward pass (minisd/forward.py) walks.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from minisd import architecture

# ----------------------------------------------------------------------------------------------- text encoder


class CLIPAttention(nn.Module):
    """Multi-head self-attention over the prompt's tokens, with no mask: unlike CLIP's, whose mask is causal,
    every token sees the whole prompt (a tiny one: 8 tokens, <pad> included)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class CLIPMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as the spec and ops.gelu


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim, heads, hidden, eps):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = CLIPAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(dim, hidden)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class TextEncoder(nn.Module):
    """Token ids (B, max_length) -> encoder_hidden_states (B, max_length, hidden_size)."""

    def __init__(
        self, vocab_size, max_length, hidden_size, num_layers, num_heads, intermediate_size, layer_norm_eps
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_length, hidden_size)
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(hidden_size, num_heads, intermediate_size, layer_norm_eps)
            for _ in range(num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        for layer in self.layers:
            x = layer(x)
        return self.final_layer_norm(x)


# ------------------------------------------------------------------------------------------- shared pieces


def attention(q, k, v, heads):
    """(B, Lq, H*D), (B, Lk, H*D) -> (B, Lq, H*D), softmax(q k^T / sqrt(D)) v per head."""
    b, lq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)  # default scale is 1/sqrt(D); fused kernel on GPU
    return out.transpose(1, 2).reshape(b, lq, inner)


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0.0, max_period=10000):
    """Sinusoidal embedding of the (B,) timesteps, same formula as diffusers' get_timestep_embedding."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


# ------------------------------------------------------------------------------------------------ UNet parts


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim, dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """Two 3x3 convs with GroupNorm+SiLU; the timestep enters as a per-channel bias between them (the UNet's:
    the VAE's have no time embedding, ``temb_channels`` None)."""

    def __init__(self, in_channels, out_channels, temb_channels, groups, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # A 1x1 conv only where the channel count changes, so the residual can be added.
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class Downsample2D(nn.Module):
    """A 3x3 conv with stride 2. ``padding=0`` is diffusers' convention of the VAE encoder: pad one zero row
    and column after the image only (minisd.architecture.EncoderDownsample)."""

    def __init__(self, channels, padding=1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.padding == 0 else x)


class Upsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """diffusers' Attention: q from the image tokens, k/v from ``context`` (cross) or the tokens (self)."""

    def __init__(self, dim, heads, context_dim=None):
        super().__init__()
        self.heads = heads
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # diffusers keeps a Dropout at to_out.1

    def forward(self, x, context=None):
        context = x if context is None else context
        return self.to_out[0](attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads))


class GEGLU(nn.Module):
    """Linear to twice the width; one half gates the other through GELU."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=architecture.FF_MULT):
        super().__init__()
        # net.1 is a Dropout in diffusers; nn.Identity keeps the index (and so the key names) the same.
        self.net = nn.ModuleList([GEGLU(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the prompt, feed-forward; each pre-norm with a residual."""

    def __init__(
        self,
        dim,
        heads,
        context_dim,
        eps=architecture.TRANSFORMER_LAYER_NORM_EPS,
        ff_mult=architecture.FF_MULT,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """Image (B,C,H,W) -> H*W tokens -> transformer block -> image, plus the input (use_linear_projection)."""

    def __init__(self, spec):
        super().__init__()
        c = spec.channels
        self.norm = nn.GroupNorm(spec.groups, c, eps=spec.group_norm_eps)
        self.proj_in = nn.Linear(c, c)
        block = BasicTransformerBlock(
            c, spec.heads, spec.context_dim, spec.layer_norm_eps, spec.ff_inner // c
        )
        self.transformer_blocks = nn.ModuleList([block])
        self.proj_out = nn.Linear(c, c)

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = self.proj_out(tokens)
        return x + tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------- UNet blocks


def _resnets(block):
    return nn.ModuleList(
        ResnetBlock2D(r.in_channels, r.out_channels, r.temb_channels, r.groups, r.eps) for r in block.resnets
    )


def _attentions(block):
    return nn.ModuleList(Transformer2DModel(t) for t in block.attentions) if block.attentions else None


class DownBlock(nn.Module):
    """DownBlock2D (no attentions) or CrossAttnDownBlock2D; returns the output and the skips it pushes."""

    def __init__(self, spec):
        super().__init__()
        self.resnets, self.attentions = _resnets(spec), _attentions(spec)
        self.downsamplers = nn.ModuleList([Downsample2D(spec.sampler.in_channels)]) if spec.sampler else None

    def forward(self, x, temb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """UpBlock2D or CrossAttnUpBlock2D: each resnet eats one skip, concatenated on the channels."""

    def __init__(self, spec):
        super().__init__()
        self.resnets, self.attentions = _resnets(spec), _attentions(spec)
        self.upsamplers = nn.ModuleList([Upsample2D(spec.sampler.in_channels)]) if spec.sampler else None

    def forward(self, x, skips, temb, context):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.resnets, self.attentions = _resnets(spec), _attentions(spec)

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UNet2DConditionModel(nn.Module):
    """(noisy sample, timestep, encoder_hidden_states) -> predicted noise (epsilon), shaped like the sample.

    Built from ``spec`` (minisd.architecture.UNet), which holds every block's channels, heads and skips."""

    def __init__(self, spec):
        super().__init__()
        self.sample_size = spec.sample_size
        t = spec.time
        self.time_proj_args = (t.proj_dim, t.flip_sin_to_cos, t.freq_shift)
        self.time_embedding = TimestepEmbedding(t.proj_dim, t.channels)
        self.conv_in = nn.Conv2d(spec.conv_in.in_channels, spec.conv_in.out_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList(DownBlock(b) for b in spec.down)
        self.mid_block = UNetMidBlock2DCrossAttn(spec.mid)
        self.up_blocks = nn.ModuleList(UpBlock(b) for b in spec.up)
        self.conv_norm_out = nn.GroupNorm(spec.groups, spec.conv_out.in_channels, eps=spec.eps)
        self.conv_out = nn.Conv2d(spec.conv_out.in_channels, spec.conv_out.out_channels, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states):
        if not torch.is_tensor(timestep) or timestep.ndim == 0:
            timestep = torch.full((sample.shape[0],), float(timestep), device=sample.device)
        temb = self.time_embedding(timestep_embedding(timestep, *self.time_proj_args).to(sample.dtype))

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, pushed = block(x, temb, encoder_hidden_states)
            skips += pushed
        x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            x = block(x, skips, temb, encoder_hidden_states)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# ------------------------------------------------------------------------------------------- autoencoder


class VAEAttention(nn.Module):
    """The VAE mid block's self-attention over its pixels (diffusers' Attention with group_norm, biased
    q/k/v projections and a residual connection)."""

    def __init__(self, spec):
        super().__init__()
        c, self.heads = spec.channels, spec.heads
        self.group_norm = nn.GroupNorm(spec.groups, c, eps=spec.eps)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])  # diffusers keeps a Dropout at to_out.1

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens), self.heads)
        return x + self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)


class UNetMidBlock2D(nn.Module):
    """resnet, attention (if the config keeps it), resnet."""

    def __init__(self, spec):
        super().__init__()
        self.resnets = _resnets(spec)
        self.attentions = nn.ModuleList(VAEAttention(a) for a in spec.attentions)

    def forward(self, x):
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.resnets = _resnets(spec)
        sampler = spec.sampler
        self.downsamplers = (
            nn.ModuleList([Downsample2D(sampler.in_channels, sampler.padding)]) if sampler else None
        )

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.resnets = _resnets(spec)
        self.upsamplers = nn.ModuleList([Upsample2D(spec.sampler.in_channels)]) if spec.sampler else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> (B, 2 * latent_channels, H/4, W/4): the latents' mean and log-variance, before
    quant_conv. ``spec`` is a minisd.architecture.Coder."""

    def __init__(self, spec):
        super().__init__()
        *down, mid = spec.blocks
        self.conv_in = nn.Conv2d(spec.conv_in.in_channels, spec.conv_in.out_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList(DownEncoderBlock2D(b) for b in down)
        self.mid_block = UNetMidBlock2D(mid)
        self.conv_norm_out = nn.GroupNorm(spec.groups, spec.conv_out.in_channels, eps=spec.eps)
        self.conv_out = nn.Conv2d(spec.conv_out.in_channels, spec.conv_out.out_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    """Latents (B, latent_channels, h, w), after post_quant_conv -> image (B, 3, 4h, 4w)."""

    def __init__(self, spec):
        super().__init__()
        mid, *up = spec.blocks
        self.conv_in = nn.Conv2d(spec.conv_in.in_channels, spec.conv_in.out_channels, 3, padding=1)
        self.mid_block = UNetMidBlock2D(mid)
        self.up_blocks = nn.ModuleList(UpDecoderBlock2D(b) for b in up)
        self.conv_norm_out = nn.GroupNorm(spec.groups, spec.conv_out.in_channels, eps=spec.eps)
        self.conv_out = nn.Conv2d(spec.conv_out.in_channels, spec.conv_out.out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """diffusers' AutoencoderKL, built from ``spec`` (minisd.architecture.AutoencoderKL).

    ``encode`` gives the diagonal Gaussian of the latents (mean, log-variance clamped to [-30, 20] as
    diffusers' DiagonalGaussianDistribution does); ``decode`` takes latents as they come from it (divide a
    diffusion model's latents by ``scaling_factor`` first). ``forward`` reconstructs from the mean."""

    def __init__(self, spec):
        super().__init__()
        self.encoder = Encoder(spec.encoder)
        self.quant_conv = nn.Conv2d(2 * spec.latent_channels, 2 * spec.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(spec.latent_channels, spec.latent_channels, 1)
        self.decoder = Decoder(spec.decoder)

    def encode(self, x):
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x):
        return self.decode(self.encode(x)[0])


# ------------------------------------------------------------------------------------------------ holders


class MiniSD(nn.Module):
    """Both networks in one module, so ``state_dict()`` keys start with "text_encoder." and "unet.".

    ``config`` is what the weights file stores (default: minisd.architecture.default_config())."""

    def __init__(self, config=None):
        super().__init__()
        self.config = copy.deepcopy(config or architecture.default_config())
        arch = architecture.read(self.config)
        te = arch.text_encoder
        self.text_encoder = TextEncoder(
            te.vocab_size, te.max_length, te.hidden_size, te.num_layers, te.num_heads, te.intermediate_size,
            te.layer_norm_eps,
        )  # fmt: skip
        self.unet = UNet2DConditionModel(arch.unet)
        self.vae = AutoencoderKL(arch.vae) if arch.vae else None  # only when the config has a "vae" section

    def forward(self, sample, timestep, input_ids):
        return self.unet(sample, timestep, self.text_encoder(input_ids))


class VAEOnly(nn.Module):
    """The autoencoder on its own, as minisd/train_vae.py trains it and a VAE weights file holds it:
    ``state_dict()`` keys start with "vae." (those of a MiniSD that has one), ``config`` is {"vae": ...}
    (default: minisd.architecture.default_vae_config())."""

    def __init__(self, config=None):
        super().__init__()
        self.config = copy.deepcopy(config or {"vae": architecture.default_vae_config()})
        self.vae = AutoencoderKL(architecture.read_vae(self.config))

    def forward(self, x):
        return self.vae(x)


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())
