"""minisd's text encoder and UNet written with the course's ops instead of torch.

The same computation as minisd/model.py (the torch oracle the tests compare against), key for key, but
every array op is a call on an ``OpSet`` (minisd/opset.py), so one piece of code runs on numpy, Numba or
CuPy. Three things differ from a literal transcription, each to save work during sampling:

* the token lookup is a matrix product with a one-hot matrix built on the host (``one_hot_tokens``): an
  embedding gather is one more kernel for no gain, and the position embedding rides in the same product;
* what depends only on the timestep (time embedding and every ResNet's ``time_emb_proj``) is computed once
  for all sampling steps (``time_projections``);
* what depends only on the prompt (the cross-attention keys and values) is computed once per prompt
  (``cross_attention_kv``) instead of once per step.
"""

import numpy as np

# ------------------------------------------------------------------------------------------- parameters


def prepare_params(state, config, ops):
    """The state dict (numpy float32) on ``ops``' device, plus the derived arrays the forward pass uses."""
    te = config["text_encoder"]
    params = {key: ops.to_device(np.ascontiguousarray(value, np.float32)) for key, value in state.items()}
    # [token_embedding | position_embedding] as one linear layer's (hidden, vocab + max_length) weight.
    table = np.concatenate(
        [
            state["text_encoder.token_embedding.weight"],
            state["text_encoder.position_embedding.weight"][: te["max_length"]],
        ]
    )
    params["text_encoder.embeddings"] = ops.to_device(np.ascontiguousarray(table.T, np.float32))
    for key, value in state.items():
        if key.endswith(".proj_out.weight"):  # (C, C) linear -> (C, C, 1, 1) conv, see transformer_2d
            # reshape, not value[:, :, None, None]: that view has stride 0 on the new axes, which numpy calls
            # contiguous but Numba's device arrays do not
            params[key + "_1x1"] = ops.to_device(
                np.ascontiguousarray(value, np.float32).reshape(*value.shape, 1, 1)
            )
    return params


def one_hot_tokens(token_ids, vocab_size):
    """(N, L) token ids -> (N, L, vocab + L) float32: a 1 at the token's column and at its position's."""
    n, length = token_ids.shape
    out = np.zeros((n, length, vocab_size + length), np.float32)
    rows, cols = np.indices((n, length))
    out[rows, cols, token_ids] = 1.0
    out[rows, cols, vocab_size + cols] = 1.0
    return out


def _linear(ops, p, prefix, x, residual=None):
    return ops.linear(x, p[prefix + ".weight"], p.get(prefix + ".bias"), residual=residual)


def _norm(p, prefix):
    return p[prefix + ".weight"], p[prefix + ".bias"]


# ----------------------------------------------------------------------------------------- text encoder


def text_encoder_forward(ops, p, config, one_hot):
    """(N, L, vocab + L) one-hot tokens -> encoder_hidden_states (N, L, hidden)."""
    te = config["text_encoder"]
    eps = te["layer_norm_eps"]
    x = ops.linear(one_hot, p["text_encoder.embeddings"])
    for i in range(te["num_layers"]):
        pre = f"text_encoder.layers.{i}."
        h = ops.layer_norm(x, *_norm(p, pre + "layer_norm1"), eps)
        q, k, v = (_linear(ops, p, f"{pre}self_attn.{name}", h) for name in ("q_proj", "k_proj", "v_proj"))
        x = _linear(ops, p, pre + "self_attn.out_proj", ops.attention(q, k, v, heads=te["num_heads"]), x)
        h = ops.layer_norm(x, *_norm(p, pre + "layer_norm2"), eps)
        x = _linear(ops, p, pre + "mlp.fc2", ops.gelu(_linear(ops, p, pre + "mlp.fc1", h)), x)
    return ops.layer_norm(x, *_norm(p, "text_encoder.final_layer_norm"), eps)


# ------------------------------------------------------------------------------------ hoisted inputs


def _prefixes(p, suffix):
    return [key[: -len(suffix)] for key in p if key.startswith("unet.") and key.endswith(suffix)]


def time_projections(ops, p, config, timesteps):
    """(R,) float32 timesteps -> {resnet prefix: (R, C) time_emb_proj(SiLU(temb))}, for all resnets at once,
    and {"temb": (R, T) temb}."""
    u = config["unet"]
    t = ops.timestep_embedding(timesteps, u["time_proj_dim"], u["flip_sin_to_cos"], u["freq_shift"])
    temb = _linear(
        ops, p, "unet.time_embedding.linear_2", ops.silu(_linear(ops, p, "unet.time_embedding.linear_1", t))
    )
    projections = {"temb": temb}  # kept for a lesson's resnet_block, which projects it itself
    temb = ops.silu(temb)  # every ResNet applies SiLU to temb first: do it once
    for pre in _prefixes(p, "time_emb_proj.weight"):
        projections[pre] = _linear(ops, p, pre + "time_emb_proj", temb)
    return projections


def cross_attention_kv(ops, p, context):
    """{"...attn2." prefix: (keys, values)} of the prompt, for every cross-attention layer; and "context"
    itself, for a lesson's transformer_block, which projects it itself."""
    prefixes = [pre + "attn2." for pre in _prefixes(p, "attn2.to_k.weight")]
    return {"context": context} | {
        pre: (ops.linear(context, p[pre + "to_k.weight"]), ops.linear(context, p[pre + "to_v.weight"]))
        for pre in prefixes
    }


# ------------------------------------------------------------------------------------------------- UNet


def _local(p, prefix):
    """A block's own state dict (keys without ``prefix``), as a lesson's block function takes it."""
    return {key[len(prefix) :]: value for key, value in p.items() if key.startswith(prefix)}


def resnet_block(ops, p, pre, x, temb, groups, eps):
    lesson = ops.blocks.get("resnet_block")
    out = lesson(x, temb["temb"], _local(p, pre), groups, eps) if lesson else None
    if out is not None:
        return out
    h = ops.group_norm(x, groups, *_norm(p, pre + "norm1"), eps, silu=True)
    h = ops.add(ops.conv2d(h, p[pre + "conv1.weight"], p[pre + "conv1.bias"], padding=1), temb[pre])
    h = ops.group_norm(h, groups, *_norm(p, pre + "norm2"), eps, silu=True)
    shortcut = x
    if pre + "conv_shortcut.weight" in p:
        shortcut = ops.conv2d(x, p[pre + "conv_shortcut.weight"], p[pre + "conv_shortcut.bias"])
    return ops.conv2d(h, p[pre + "conv2.weight"], p[pre + "conv2.bias"], padding=1, residual=shortcut)


def attention_block(ops, p, pre, tokens, heads, context_kv=None):
    """diffusers' Attention: self-attention, or cross-attention with the prompt's precomputed k, v."""
    q = ops.linear(tokens, p[pre + "to_q.weight"])
    if context_kv is None:
        k, v = ops.linear(tokens, p[pre + "to_k.weight"]), ops.linear(tokens, p[pre + "to_v.weight"])
    else:
        k, v = context_kv
    return ops.attention(q, k, v, heads=heads)


def basic_transformer_block(ops, p, blk, tokens, kv, heads):
    """Self-attention, cross-attention to the prompt, GEGLU feed-forward; each pre-norm, with a residual."""
    n = ops.layer_norm(tokens, *_norm(p, blk + "norm1"))
    tokens = _linear(
        ops, p, blk + "attn1.to_out.0", attention_block(ops, p, blk + "attn1.", n, heads), tokens
    )
    n = ops.layer_norm(tokens, *_norm(p, blk + "norm2"))
    cross = attention_block(ops, p, blk + "attn2.", n, heads, kv[blk + "attn2."])
    tokens = _linear(ops, p, blk + "attn2.to_out.0", cross, tokens)
    n = ops.layer_norm(tokens, *_norm(p, blk + "norm3"))
    ff = ops.geglu(_linear(ops, p, blk + "ff.net.0.proj", n))
    return _linear(ops, p, blk + "ff.net.2", ff, tokens)


def transformer_2d(ops, p, pre, x, kv, groups, heads):
    """Transformer2DModel (use_linear_projection): tokens in, one BasicTransformerBlock, image out + x."""
    _, _, h, w = x.shape
    normed = ops.group_norm(x, groups, *_norm(p, pre + "norm"), 1e-6)
    tokens = _linear(ops, p, pre + "proj_in", ops.to_tokens(normed))
    blk = pre + "transformer_blocks.0."
    lesson = ops.blocks.get("transformer_block")
    out = lesson(tokens, kv["context"], _local(p, blk), heads) if lesson else None
    tokens = out if out is not None else basic_transformer_block(ops, p, blk, tokens, kv, heads)
    # proj_out as a 1x1 conv after from_tokens: the same product, and the conv adds the residual x in its
    # epilogue (one pass fewer than linear, transpose, add).
    image = ops.from_tokens(tokens, h, w)
    return ops.conv2d(image, p[pre + "proj_out.weight_1x1"], p[pre + "proj_out.bias"], residual=x)


def unet_forward(ops, p, config, sample, temb, kv):
    """(N, C, H, W) noisy sample -> predicted noise, given this step's ``time_projections`` rows and the
    prompt's ``cross_attention_kv``."""
    u = config["unet"]
    groups, eps, head_dim = u["norm_num_groups"], u["norm_eps"], u["attention_head_dim"]
    last = len(u["block_out_channels"]) - 1

    def transformer(pre, x):
        return transformer_2d(ops, p, pre, x, kv, groups, x.shape[1] // head_dim)

    x = ops.conv2d(sample, p["unet.conv_in.weight"], p["unet.conv_in.bias"], padding=1)
    skips = [x]
    for i, kind in enumerate(u["down_block_types"]):
        pre = f"unet.down_blocks.{i}."
        for j in range(u["layers_per_block"]):
            x = resnet_block(ops, p, f"{pre}resnets.{j}.", x, temb, groups, eps)
            if kind == "CrossAttnDownBlock2D":
                x = transformer(f"{pre}attentions.{j}.", x)
            skips.append(x)
        if i < last:
            conv = pre + "downsamplers.0.conv"
            x = ops.conv2d(x, p[conv + ".weight"], p[conv + ".bias"], stride=2, padding=1)
            skips.append(x)

    x = resnet_block(ops, p, "unet.mid_block.resnets.0.", x, temb, groups, eps)
    x = transformer("unet.mid_block.attentions.0.", x)
    x = resnet_block(ops, p, "unet.mid_block.resnets.1.", x, temb, groups, eps)

    for i, kind in enumerate(u["up_block_types"]):
        pre = f"unet.up_blocks.{i}."
        for j in range(u["layers_per_block"] + 1):
            x = resnet_block(
                ops, p, f"{pre}resnets.{j}.", ops.concat_channels(x, skips.pop()), temb, groups, eps
            )
            if kind == "CrossAttnUpBlock2D":
                x = transformer(f"{pre}attentions.{j}.", x)
        if i < last:
            conv = pre + "upsamplers.0.conv"
            x = ops.conv2d(ops.upsample_nearest2x(x), p[conv + ".weight"], p[conv + ".bias"], padding=1)

    x = ops.group_norm(x, groups, *_norm(p, "unet.conv_norm_out"), eps, silu=True)
    return ops.conv2d(x, p["unet.conv_out.weight"], p["unet.conv_out.bias"], padding=1)
