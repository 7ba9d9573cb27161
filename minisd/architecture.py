"""minisd's architecture, read once from its config: what every part of minisd builds or checks.

The config is what the weights file stores (minisd.weights). ``read(config)`` turns it into a tree of small
specs (channels, heads, groups, eps and the state-dict prefix of every block, in the order the UNet runs
them), and three parts walk that one tree:

* minisd/model.py builds the PyTorch modules from it (training, and the tests' oracle);
* minisd/forward.py runs the same blocks on the course's kernels;
* minisd/weights.py checks a file's tensors against ``parameter_shapes()``, without importing torch.

The "unet" section is a diffusers ``UNet2DConditionModel`` config and the "scheduler" section a diffusers
``DDIMScheduler`` config, both readable by diffusers as they are (``from_config``). Mind diffusers' naming:
its ``attention_head_dim`` is the number of heads of each block (minisd's (2, 4, 4): 32 channels per head).
The "text_encoder" section is minisd's own (a CLIP-like encoder, no diffusers class).

The "vae" section is a diffusers ``AutoencoderKL`` config (``default_vae_config()``): minisd is a latent
diffusion model, its UNet denoises 4x16x16 latents that the autoencoder decodes to 64x64 images. A config
without it (the 32x32 pixel-space model minisd shipped before) still reads, with ``Architecture.vae = None``;
``read_vae`` reads the section alone (a weights file of the autoencoder only, as minisd/train_vae.py writes).
"""

import copy
import math
import numbers
from dataclasses import dataclass

from minisd.text import MAX_LENGTH, VOCAB

# Facts of diffusers' blocks that its config does not expose (and so neither does minisd's):
TRANSFORMER_GROUP_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm in front of proj_in
TRANSFORMER_LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's three LayerNorms
FF_MULT = 4  # FeedForward's hidden width, in multiples of the channels (GEGLU doubles it for the gate)
VAE_NORM_EPS = 1e-6  # every GroupNorm of AutoencoderKL's Encoder and Decoder (resnets, attention, output)

# minisd's choices for the scheduler; default_config() stores every other DDIMScheduler setting too.
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    # x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), and abar_999 = 2.4e-9: the first step from pure noise
    # multiplies the UNet's error by 2e4. Clipping x_0 to +-2.5 (98.7 % of the scaled latents' values lie
    # inside) keeps that step sane; unclipped, 48 prompts followed 7-67 % per attribute, clipped 92-97 %.
    "clip_sample": True,
    "clip_sample_range": 2.5,
    "timestep_spacing": "trailing",  # the first step starts at t = 999, from pure noise
}

_CONFIG = {
    "text_encoder": {
        "vocab_size": len(VOCAB),
        "max_length": MAX_LENGTH,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 256,
        "layer_norm_eps": 1e-5,
    },
    "unet": {  # on the autoencoder's latents: 4 x 16 x 16 for a 64 x 64 image
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [64, 128, 128],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "cross_attention_dim": 64,
        "attention_head_dim": [2, 4, 4],  # diffusers' name for heads per block: 32 channels per head
        "use_linear_projection": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    },
}


# The autoencoder, small enough to train in minutes on one GPU and for the numpy backend to decode 4 images
# in 0.17 s on 2 CPU cores (954,567 parameters). Every key diffusers' AutoencoderKL stores, at diffusers' default where
# minisd has no reason to differ.
_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],  # 3 levels: 2 halvings, 64x64 -> 16x16
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 64,
    # latents are multiplied by it before the UNet sees them: 1 / their std, which minisd/train_vae.py
    # measures and stores; 1.0 until a training run has measured it
    "scaling_factor": 1.0,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,  # the mid blocks' self-attention: the VAE's only one (16x16 = 256 tokens)
}


def default_config():
    """minisd's config (a fresh copy, safe to edit), with every scheduler setting spelled out."""
    from minisd.schedulers import DDIMScheduler

    scheduler = dict(DDIMScheduler.from_config(SCHEDULER).config)
    return copy.deepcopy(_CONFIG) | {"scheduler": scheduler, "vae": default_vae_config()}


def default_vae_config():
    """minisd's autoencoder, a diffusers AutoencoderKL config (a fresh copy, safe to edit)."""
    return copy.deepcopy(_VAE)


class ConfigError(ValueError):
    """The config does not describe a model minisd can build."""


# --------------------------------------------------------------------------------------------- the specs


def _conv(prefix, out_ch, in_ch, k):
    return {prefix + "weight": (out_ch, in_ch, k, k), prefix + "bias": (out_ch,)}


def _linear(prefix, out_f, in_f, bias=True):
    return {prefix + "weight": (out_f, in_f)} | ({prefix + "bias": (out_f,)} if bias else {})


def _norm(prefix, c):
    return {prefix + "weight": (c,), prefix + "bias": (c,)}


@dataclass(frozen=True)
class Conv:
    """A Conv2d with bias: ``prefix`` + "weight" (out, in, k, k), + "bias" (out,)."""

    prefix: str
    in_channels: int
    out_channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1

    def parameter_shapes(self):
        return _conv(self.prefix, self.out_channels, self.in_channels, self.kernel)


@dataclass(frozen=True)
class EncoderDownsample(Conv):
    """The VAE encoder's Downsample2D (diffusers' padding=0): one zero row and column after the image
    (F.pad (0, 1, 0, 1)), then the 3x3 conv with stride 2 and no padding, where the UNet's pads all round."""

    stride: int = 2
    padding: int = 0


@dataclass(frozen=True)
class Resnet:
    """ResnetBlock2D: GroupNorm+SiLU, conv 3x3, + time embedding, GroupNorm+SiLU, conv 3x3, + shortcut.
    The VAE's have no time embedding (``temb_channels`` None) and so no time_emb_proj."""

    prefix: str
    in_channels: int
    out_channels: int
    temb_channels: int | None
    groups: int
    eps: float

    @property
    def shortcut(self):
        """A 1x1 conv_shortcut only where the channel count changes."""
        return self.in_channels != self.out_channels

    def parameter_shapes(self):
        p, i, o = self.prefix, self.in_channels, self.out_channels
        shapes = _norm(p + "norm1.", i) | _conv(p + "conv1.", o, i, 3)
        if self.temb_channels:
            shapes |= _linear(p + "time_emb_proj.", o, self.temb_channels)
        shapes |= _norm(p + "norm2.", o) | _conv(p + "conv2.", o, o, 3)
        return shapes | (_conv(p + "conv_shortcut.", o, i, 1) if self.shortcut else {})


@dataclass(frozen=True)
class Transformer:
    """Transformer2DModel with use_linear_projection: GroupNorm, proj_in, one BasicTransformerBlock
    (self-attention, cross-attention to the prompt, GEGLU feed-forward), proj_out, + the input."""

    prefix: str
    channels: int
    heads: int
    context_dim: int
    groups: int
    group_norm_eps: float
    layer_norm_eps: float
    ff_inner: int  # the feed-forward's hidden width

    @classmethod
    def of(cls, prefix, channels, heads, context_dim, groups):
        """One with diffusers' fixed eps and feed-forward width (this module's constants)."""
        eps = (TRANSFORMER_GROUP_NORM_EPS, TRANSFORMER_LAYER_NORM_EPS)
        return cls(prefix, channels, heads, context_dim, groups, *eps, FF_MULT * channels)

    @property
    def block(self):
        """The prefix of its BasicTransformerBlock."""
        return self.prefix + "transformer_blocks.0."

    def parameter_shapes(self):
        p, b, c = self.prefix, self.block, self.channels
        shapes = _norm(p + "norm.", c) | _linear(p + "proj_in.", c, c) | _linear(p + "proj_out.", c, c)
        for n in (1, 2, 3):
            shapes |= _norm(f"{b}norm{n}.", c)
        for attn, kv_dim in (("attn1.", c), ("attn2.", self.context_dim)):
            shapes |= _linear(b + attn + "to_q.", c, c, bias=False)
            shapes |= _linear(b + attn + "to_k.", c, kv_dim, bias=False) | _linear(
                b + attn + "to_v.", c, kv_dim, bias=False
            )
            shapes |= _linear(b + attn + "to_out.0.", c, c)
        return (
            shapes
            | _linear(b + "ff.net.0.proj.", 2 * self.ff_inner, c)
            | _linear(b + "ff.net.2.", c, self.ff_inner)
        )


@dataclass(frozen=True)
class VAEAttention:
    """The VAE mid block's self-attention (diffusers' Attention with group_norm, residual_connection and
    rescale_output_factor 1): GroupNorm, the pixels as tokens, to_q/to_k/to_v with biases, softmax attention
    with ``heads`` heads, to_out.0, back to an image, + the input."""

    prefix: str
    channels: int
    heads: int
    groups: int
    eps: float

    def parameter_shapes(self):
        p, c = self.prefix, self.channels
        shapes = _norm(p + "group_norm.", c) | _linear(p + "to_out.0.", c, c)
        for name in ("to_q.", "to_k.", "to_v."):
            shapes |= _linear(p + name, c, c)
        return shapes


@dataclass(frozen=True)
class Block:
    """A down, mid or up block: ``resnets[j]``, each followed by ``attentions[j]`` where there is one, then
    the ``sampler`` (a stride-2 conv going down; nearest x2 then a conv going up), if any."""

    kind: str  # diffusers' block type
    resnets: tuple
    attentions: tuple
    sampler: Conv | None

    def layers(self):
        """(resnet, attention or None) in the order they run."""
        return [
            (r, self.attentions[j] if j < len(self.attentions) else None) for j, r in enumerate(self.resnets)
        ]


@dataclass(frozen=True)
class TimeEmbedding:
    """Sinusoidal projection of the timestep (``proj_dim`` wide), then linear_1, SiLU, linear_2."""

    proj_dim: int
    channels: int
    flip_sin_to_cos: bool
    freq_shift: float

    def parameter_shapes(self):
        p = "unet.time_embedding."
        return _linear(p + "linear_1.", self.channels, self.proj_dim) | _linear(
            p + "linear_2.", self.channels, self.channels
        )


@dataclass(frozen=True)
class UNet:
    """UNet2DConditionModel. Skips, as in diffusers: conv_in's output, then every layer's output and every
    downsampler's output going down; each up resnet takes the latest one, concatenated on the channels."""

    sample_size: int
    in_channels: int
    out_channels: int
    time: TimeEmbedding
    conv_in: Conv
    down: tuple
    mid: Block
    up: tuple
    groups: int
    eps: float
    conv_out: Conv

    @property
    def blocks(self):
        return (*self.down, self.mid, *self.up)

    @property
    def downsamplings(self):
        """How many times the sample is halved: sizes must be multiples of 2**downsamplings."""
        return sum(b.sampler is not None for b in self.down)

    def parameter_shapes(self):
        shapes = (
            self.time.parameter_shapes() | self.conv_in.parameter_shapes() | self.conv_out.parameter_shapes()
        )
        return shapes | _blocks_shapes(self.blocks) | _norm("unet.conv_norm_out.", self.conv_out.in_channels)


def _blocks_shapes(blocks):
    shapes = {}
    for block in blocks:
        for spec in (*block.resnets, *block.attentions, *([block.sampler] if block.sampler else [])):
            shapes |= spec.parameter_shapes()
    return shapes


@dataclass(frozen=True)
class Coder:
    """AutoencoderKL's Encoder or Decoder: conv_in, its ``blocks`` in the order they run (the encoder's
    DownEncoderBlock2Ds then its mid block; the decoder's mid block then its UpDecoderBlock2Ds), GroupNorm
    + SiLU (``prefix`` + "conv_norm_out."), conv_out. The mid block is resnet, attention, resnet."""

    prefix: str
    conv_in: Conv
    blocks: tuple
    groups: int
    eps: float
    conv_out: Conv

    def parameter_shapes(self):
        shapes = self.conv_in.parameter_shapes() | _blocks_shapes(self.blocks)
        shapes |= _norm(self.prefix + "conv_norm_out.", self.conv_out.in_channels)
        return shapes | self.conv_out.parameter_shapes()


@dataclass(frozen=True)
class AutoencoderKL:
    """diffusers' AutoencoderKL: encoder, quant_conv (1x1) to the mean and log-variance of the latents (each
    ``latent_channels``); post_quant_conv (1x1), decoder back to an image. Latents are divided by
    ``scaling_factor`` before decoding (and multiplied after encoding), as diffusers' pipelines do."""

    sample_size: int
    in_channels: int
    out_channels: int
    latent_channels: int
    scaling_factor: float
    encoder: Coder
    quant_conv: Conv
    post_quant_conv: Conv
    decoder: Coder

    @property
    def downsamplings(self):
        """How many times the encoder halves the image: latents are 2**downsamplings times smaller."""
        return sum(b.sampler is not None for b in self.encoder.blocks)

    def parameter_shapes(self):
        return (
            self.encoder.parameter_shapes()
            | self.quant_conv.parameter_shapes()
            | self.post_quant_conv.parameter_shapes()
            | self.decoder.parameter_shapes()
        )


@dataclass(frozen=True)
class TextEncoder:
    """CLIP-like: token + position embeddings, pre-norm transformer layers (no causal mask), final LayerNorm."""

    vocab_size: int
    max_length: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float

    def parameter_shapes(self):
        p, h = "text_encoder.", self.hidden_size
        shapes = {
            p + "token_embedding.weight": (self.vocab_size, h),
            p + "position_embedding.weight": (self.max_length, h),
        }
        for i in range(self.num_layers):
            layer = f"{p}layers.{i}."
            shapes |= _norm(layer + "layer_norm1.", h) | _norm(layer + "layer_norm2.", h)
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes |= _linear(f"{layer}self_attn.{proj}.", h, h)
            shapes |= _linear(layer + "mlp.fc1.", self.intermediate_size, h) | _linear(
                layer + "mlp.fc2.", h, self.intermediate_size
            )
        return shapes | _norm(p + "final_layer_norm.", h)


@dataclass(frozen=True)
class Architecture:
    text_encoder: TextEncoder
    unet: UNet
    vae: AutoencoderKL | None = None  # a latent minisd's autoencoder; the pixel-space model has none

    def parameter_shapes(self):
        """Every state-dict key of the model, with its shape."""
        shapes = self.text_encoder.parameter_shapes() | self.unet.parameter_shapes()
        return shapes | (self.vae.parameter_shapes() if self.vae else {})


# ------------------------------------------------------------------------------------------ reading a config

_UNET_KEYS = set(_CONFIG["unet"])
# diffusers options minisd implements at one value only: a config may state them, but only at that value.
_UNET_FIXED = {
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "use_linear_projection": True,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "transformer_layers_per_block": 1,
    "only_cross_attention": False,
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "num_attention_heads": None,
}
_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
_UP = ("UpBlock2D", "CrossAttnUpBlock2D")


def _section(config, name, keys, optional=()):
    section = config.get(name) if isinstance(config, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"the config has no {name!r} section")
    given = {k for k in section if not k.startswith("_")}  # diffusers' _class_name, _diffusers_version
    missing, unknown = sorted(keys - given), sorted(given - keys - set(optional))
    if missing or unknown:
        raise ConfigError(
            f"config[{name!r}]: "
            + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown {', '.join(unknown)}"] if unknown else [])
            )
        )
    return section


def _positive_int(where, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where} must be a positive int, got {value!r}")
    return int(value)


def _text_encoder(config):
    te = _section(config, "text_encoder", set(_CONFIG["text_encoder"]))
    ints = {k: _positive_int(f"text_encoder.{k}", te[k]) for k in te if k != "layer_norm_eps"}
    spec = TextEncoder(**ints, layer_norm_eps=float(te["layer_norm_eps"]))
    if spec.hidden_size % spec.num_heads:
        raise ConfigError(
            f"text_encoder.num_heads={spec.num_heads} must divide hidden_size={spec.hidden_size}"
        )
    return spec


def _unet(config):
    u = _section(config, "unet", _UNET_KEYS - set(_UNET_FIXED), optional=_UNET_FIXED)
    for key, value in _UNET_FIXED.items():
        if key in u and u[key] != value:
            raise ConfigError(f"unet.{key}={u[key]!r}: minisd implements only {value!r}")
    channels = [_positive_int("unet.block_out_channels", c) for c in u["block_out_channels"]]
    levels = len(channels)
    down_types, up_types = list(u["down_block_types"]), list(u["up_block_types"])
    if len(down_types) != levels or len(up_types) != levels:
        raise ConfigError(f"unet: {levels} block_out_channels need {levels} down and up block types")
    if any(t not in _DOWN for t in down_types) or any(t not in _UP for t in up_types):
        raise ConfigError(f"unet: block types must be among {_DOWN} (down) and {_UP} (up)")
    heads = u["attention_head_dim"]  # diffusers: heads per block, one int for all or one per block
    heads = [heads] * levels if isinstance(heads, numbers.Integral) else list(heads)
    if len(heads) != levels:
        raise ConfigError(
            f"unet.attention_head_dim must give one head count per block ({levels}), got {heads}"
        )
    heads = [_positive_int("unet.attention_head_dim", h) for h in heads]
    groups, eps = _positive_int("unet.norm_num_groups", u["norm_num_groups"]), float(u["norm_eps"])
    layers = _positive_int("unet.layers_per_block", u["layers_per_block"])
    context = _positive_int("unet.cross_attention_dim", u["cross_attention_dim"])
    temb = 4 * channels[0]
    for c, h in zip(channels, heads, strict=True):
        if c % groups or c % h:
            raise ConfigError(f"unet: {c} channels must split into norm_num_groups={groups} and {h} heads")

    def resnet(prefix, i, o):
        if i % groups:
            raise ConfigError(
                f"unet: {prefix} takes {i} channels, which norm_num_groups={groups} does not divide"
            )
        return Resnet(prefix, i, o, temb, groups, eps)

    def attention(prefix, c, h):
        return Transformer.of(prefix, c, h, context, groups)

    skips, down = [channels[0]], []
    for i, kind in enumerate(down_types):
        pre, out_ch, last = f"unet.down_blocks.{i}.", channels[i], i == levels - 1
        resnets = tuple(
            resnet(f"{pre}resnets.{j}.", channels[max(i - 1, 0)] if j == 0 else out_ch, out_ch)
            for j in range(layers)
        )
        attns = (
            tuple(attention(f"{pre}attentions.{j}.", out_ch, heads[i]) for j in range(layers))
            if kind == _DOWN[1]
            else ()
        )
        sampler = None if last else Conv(pre + "downsamplers.0.conv.", out_ch, out_ch, stride=2)
        down.append(Block(kind, resnets, attns, sampler))
        skips += [out_ch] * layers + ([] if last else [out_ch])

    mid_ch = channels[-1]
    mid = Block(
        "UNetMidBlock2DCrossAttn",
        tuple(resnet(f"unet.mid_block.resnets.{j}.", mid_ch, mid_ch) for j in range(2)),
        (attention("unet.mid_block.attentions.0.", mid_ch, heads[-1]),),
        None,
    )

    up, prev = [], mid_ch
    for i, kind in enumerate(up_types):
        pre, out_ch, last = f"unet.up_blocks.{i}.", channels[-1 - i], i == levels - 1
        resnets = []
        for j in range(layers + 1):  # each takes the latest skip
            resnets.append(resnet(f"{pre}resnets.{j}.", (prev if j == 0 else out_ch) + skips.pop(), out_ch))
        n = len(resnets)
        attns = (
            tuple(attention(f"{pre}attentions.{j}.", out_ch, heads[-1 - i]) for j in range(n))
            if kind == _UP[1]
            else ()
        )
        sampler = None if last else Conv(pre + "upsamplers.0.conv.", out_ch, out_ch)
        up.append(Block(kind, tuple(resnets), attns, sampler))
        prev = out_ch

    return UNet(
        sample_size=_positive_int("unet.sample_size", u["sample_size"]),
        in_channels=_positive_int("unet.in_channels", u["in_channels"]),
        out_channels=_positive_int("unet.out_channels", u["out_channels"]),
        time=TimeEmbedding(channels[0], temb, bool(u["flip_sin_to_cos"]), float(u["freq_shift"])),
        conv_in=Conv("unet.conv_in.", u["in_channels"], channels[0]),
        down=tuple(down),
        mid=mid,
        up=tuple(up),
        groups=groups,
        eps=eps,
        conv_out=Conv("unet.conv_out.", channels[0], u["out_channels"]),
    )


# diffusers options of AutoencoderKL that minisd implements at one value only (stated or not).
_VAE_FIXED = {
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}
_VAE_OPTIONAL = {"force_upcast", "mid_block_add_attention", *_VAE_FIXED}  # diffusers' defaults if left out
_VAE_KEYS = set(_VAE) - _VAE_OPTIONAL


def read_vae(config):
    """The AutoencoderKL of ``config["vae"]`` (a diffusers AutoencoderKL config); ConfigError if it has none
    or one minisd cannot build. Its state-dict keys start with "vae."."""
    v = _section(config, "vae", _VAE_KEYS, optional=_VAE_OPTIONAL)
    for key, value in _VAE_FIXED.items():
        if key in v and v[key] != value:
            raise ConfigError(f"vae.{key}={v[key]!r}: minisd implements only {value!r}")
    channels = v["block_out_channels"]
    if not isinstance(channels, list | tuple) or not channels:
        raise ConfigError(f"vae.block_out_channels must be a list of channel counts, got {channels!r}")
    channels = [_positive_int("vae.block_out_channels", c) for c in channels]
    levels = len(channels)
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if not isinstance(v[key], list | tuple) or list(v[key]) != [kind] * levels:
            raise ConfigError(f"vae.{key} must be {levels} x {kind!r} (one per block_out_channels entry)")
    groups = _positive_int("vae.norm_num_groups", v["norm_num_groups"])
    if any(c % groups for c in channels):
        raise ConfigError(f"vae: norm_num_groups={groups} must divide every block_out_channels {channels}")
    layers = _positive_int("vae.layers_per_block", v["layers_per_block"])
    latent = _positive_int("vae.latent_channels", v["latent_channels"])
    in_ch, out_ch = (_positive_int(f"vae.{k}", v[k]) for k in ("in_channels", "out_channels"))
    scaling = v["scaling_factor"]
    if not isinstance(scaling, numbers.Real) or isinstance(scaling, bool) or not 0 < scaling < math.inf:
        raise ConfigError(f"vae.scaling_factor must be a finite number > 0, got {scaling!r}")
    attend = v.get("mid_block_add_attention", True)
    if not isinstance(attend, bool):
        raise ConfigError(f"vae.mid_block_add_attention must be true or false, got {attend!r}")
    eps = VAE_NORM_EPS

    def resnet(prefix, i, o):
        return Resnet(prefix, i, o, None, groups, eps)

    def mid(prefix):
        c = channels[-1]  # diffusers: attention_head_dim = the channels, so one head
        attentions = (VAEAttention(prefix + "attentions.0.", c, 1, groups, eps),) if attend else ()
        return Block(
            "UNetMidBlock2D", tuple(resnet(f"{prefix}resnets.{j}.", c, c) for j in range(2)), attentions, None
        )

    down, prev = [], channels[0]
    for i, c in enumerate(channels):
        pre = f"vae.encoder.down_blocks.{i}."
        resnets = tuple(resnet(f"{pre}resnets.{j}.", prev if j == 0 else c, c) for j in range(layers))
        sampler = None if i == levels - 1 else EncoderDownsample(pre + "downsamplers.0.conv.", c, c)
        down.append(Block("DownEncoderBlock2D", resnets, (), sampler))
        prev = c
    encoder = Coder(
        "vae.encoder.",
        Conv("vae.encoder.conv_in.", in_ch, channels[0]),
        (*down, mid("vae.encoder.mid_block.")),
        groups,
        eps,
        Conv("vae.encoder.conv_out.", channels[-1], 2 * latent),  # mean and log-variance
    )

    up, prev = [], channels[-1]
    for i, c in enumerate(reversed(channels)):
        pre = f"vae.decoder.up_blocks.{i}."
        resnets = tuple(resnet(f"{pre}resnets.{j}.", prev if j == 0 else c, c) for j in range(layers + 1))
        sampler = None if i == levels - 1 else Conv(pre + "upsamplers.0.conv.", c, c)
        up.append(Block("UpDecoderBlock2D", resnets, (), sampler))
        prev = c
    decoder = Coder(
        "vae.decoder.",
        Conv("vae.decoder.conv_in.", latent, channels[-1]),
        (mid("vae.decoder.mid_block."), *up),
        groups,
        eps,
        Conv("vae.decoder.conv_out.", channels[0], out_ch),
    )
    return AutoencoderKL(
        sample_size=_positive_int("vae.sample_size", v["sample_size"]),
        in_channels=in_ch,
        out_channels=out_ch,
        latent_channels=latent,
        scaling_factor=float(scaling),
        encoder=encoder,
        quant_conv=Conv("vae.quant_conv.", 2 * latent, 2 * latent, kernel=1, padding=0),
        post_quant_conv=Conv("vae.post_quant_conv.", latent, latent, kernel=1, padding=0),
        decoder=decoder,
    )


def read(config):
    """The Architecture a config describes; ConfigError (one line) when it describes none minisd can build.
    The "vae" section is optional: without it, ``vae`` is None."""
    text_encoder, unet = _text_encoder(config), _unet(config)
    vae = read_vae(config) if "vae" in config else None
    if vae is not None and not unet.in_channels == unet.out_channels == vae.latent_channels:
        raise ConfigError(
            f"unet in_channels/out_channels ({unet.in_channels}/{unet.out_channels}) must equal "
            f"vae.latent_channels ({vae.latent_channels}): the UNet denoises the autoencoder's latents"
        )
    return Architecture(text_encoder, unet, vae)


def upgrade_v1(config):
    """A config of format "minisd-1" (weights trained before minisd wrote diffusers' config) in today's form.

    minisd-1 called the head width ``attention_head_dim`` (32) and stored ``time_proj_dim`` (= the first
    block's channels); its pipeline filled in timestep_spacing "trailing", which the file did not say.
    """
    config = copy.deepcopy(config)
    u = config.get("unet", {})
    width, proj = u.pop("attention_head_dim", None), u.pop("time_proj_dim", None)
    channels = u.get("block_out_channels", [])
    if not isinstance(width, int) or not channels or proj != channels[0]:
        raise ConfigError(
            "a minisd-1 config needs attention_head_dim (an int) and time_proj_dim = block_out_channels[0]"
        )
    u.update(attention_head_dim=[c // width for c in channels], use_linear_projection=True)
    u.setdefault("mid_block_type", "UNetMidBlock2DCrossAttn")
    from minisd.schedulers import DDIMScheduler

    scheduler = {"timestep_spacing": "trailing", **config.get("scheduler", {})}
    config["scheduler"] = dict(DDIMScheduler.from_config(scheduler).config)
    return config
