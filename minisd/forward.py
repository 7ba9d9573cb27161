"""minisd's text encoder and UNet written with the course's ops instead of torch.

The same computation as minisd/model.py (the torch oracle the tests compare against): both walk the one
description of the architecture in minisd/architecture.py (channels, heads, eps, skips, state-dict
prefixes), but every array op here is a method of ``ops`` (minisd.ops.Ops), so one piece of code runs on
numpy, Numba or CuPy. Three things differ from a literal transcription, each to save work during sampling:

* the token lookup is a matrix product with a one-hot matrix built on the host (``one_hot_tokens``): an
  embedding gather is one more kernel for no gain, and the position embedding rides in the same product;
* what depends only on the timestep (time embedding and every ResNet's ``time_emb_proj``) is computed once
  for all sampling steps (``time_projections``);
* what depends only on the prompt (the cross-attention keys and values) is computed once per prompt
  (``cross_attention_kv``) instead of once per step.

    net = Forward(ops, prepare_params(state, arch, ops), arch)
    context = net.text_encoder(one_hot)
    eps = net.unet(sample, net.time_projections(timesteps), net.cross_attention_kv(context))
"""

import numpy as np


def prepare_params(state, arch, ops):
    """The state dict (numpy float32) on ``ops``' device, plus the derived arrays the forward pass uses."""
    te = arch.text_encoder
    params = {key: ops.to_device(np.ascontiguousarray(value, np.float32)) for key, value in state.items()}
    # [token_embedding | position_embedding] as one linear layer's (hidden, vocab + max_length) weight.
    table = np.concatenate(
        [
            state["text_encoder.token_embedding.weight"],
            state["text_encoder.position_embedding.weight"][: te.max_length],
        ]
    )
    params["text_encoder.embeddings"] = ops.to_device(np.ascontiguousarray(table.T, np.float32))
    for block in arch.unet.blocks:
        for t in block.attentions:  # (C, C) linear -> (C, C, 1, 1) conv, see transformer_2d
            # reshape, not value[:, :, None, None]: that view has stride 0 on the new axes, which numpy calls
            # contiguous but Numba's device arrays do not
            value = np.ascontiguousarray(state[t.prefix + "proj_out.weight"], np.float32)
            params[t.prefix + "proj_out.weight_1x1"] = ops.to_device(value.reshape(*value.shape, 1, 1))
    return params


def one_hot_tokens(token_ids, vocab_size):
    """(N, L) token ids -> (N, L, vocab + L) float32: a 1 at the token's column and at its position's."""
    n, length = token_ids.shape
    out = np.zeros((n, length, vocab_size + length), np.float32)
    rows, cols = np.indices((n, length))
    out[rows, cols, token_ids] = 1.0
    out[rows, cols, vocab_size + cols] = 1.0
    return out


class Forward:
    """The two networks of ``arch`` (minisd.architecture.Architecture) on ``ops``, with weights ``p``
    (from ``prepare_params``)."""

    def __init__(self, ops, p, arch):
        self.ops, self.p, self.arch = ops, p, arch

    def _linear(self, prefix, x, residual=None):
        return self.ops.linear(x, self.p[prefix + "weight"], self.p.get(prefix + "bias"), residual=residual)

    def _norm(self, prefix):
        return self.p[prefix + "weight"], self.p[prefix + "bias"]

    def _conv(self, spec, x, residual=None, upsample=False):
        w, b = self.p[spec.prefix + "weight"], self.p[spec.prefix + "bias"]
        return self.ops.conv2d(x, w, b, spec.stride, spec.padding, residual=residual, upsample=upsample)

    # ------------------------------------------------------------------------------------- text encoder

    def text_encoder(self, one_hot):
        """(N, L, vocab + L) one-hot tokens -> encoder_hidden_states (N, L, hidden)."""
        ops, te = self.ops, self.arch.text_encoder
        eps = te.layer_norm_eps
        x = ops.linear(one_hot, self.p["text_encoder.embeddings"])
        for i in range(te.num_layers):
            pre = f"text_encoder.layers.{i}."
            h = ops.layer_norm(x, *self._norm(pre + "layer_norm1."), eps)
            q, k, v = (self._linear(f"{pre}self_attn.{name}.", h) for name in ("q_proj", "k_proj", "v_proj"))
            x = self._linear(pre + "self_attn.out_proj.", ops.attention(q, k, v, heads=te.num_heads), x)
            h = ops.layer_norm(x, *self._norm(pre + "layer_norm2."), eps)
            x = self._linear(pre + "mlp.fc2.", ops.gelu(self._linear(pre + "mlp.fc1.", h)), x)
        return ops.layer_norm(x, *self._norm("text_encoder.final_layer_norm."), eps)

    # ---------------------------------------------------------------------------------- hoisted inputs

    def time_projections(self, timesteps):
        """(R,) float32 timesteps -> {resnet prefix: (R, C) time_emb_proj(SiLU(temb))}, for all resnets at
        once, and {"temb": (R, T) temb} (a lesson's resnet_block projects temb itself)."""
        ops, t = self.ops, self.arch.unet.time
        emb = ops.timestep_embedding(timesteps, t.proj_dim, t.flip_sin_to_cos, t.freq_shift)
        temb = self._linear(
            "unet.time_embedding.linear_2.", ops.silu(self._linear("unet.time_embedding.linear_1.", emb))
        )
        projections = {"temb": temb}
        temb = ops.silu(temb)  # every ResNet applies SiLU to temb first: do it once
        for block in self.arch.unet.blocks:
            for r in block.resnets:
                projections[r.prefix] = self._linear(r.prefix + "time_emb_proj.", temb)
        return projections

    def cross_attention_kv(self, context):
        """{transformer prefix: (keys, values)} of the prompt for every cross-attention layer, and "context"
        itself (a lesson's transformer_block projects it itself)."""
        kv = {"context": context}
        for block in self.arch.unet.blocks:
            for t in block.attentions:
                a = t.block + "attn2."
                kv[t.prefix] = (
                    self.ops.linear(context, self.p[a + "to_k.weight"]),
                    self.ops.linear(context, self.p[a + "to_v.weight"]),
                )
        return kv

    # --------------------------------------------------------------------------------------------- UNet

    def resnet_block(self, spec, x, temb):
        """ResnetBlock2D (minisd.architecture.Resnet); ``temb`` from ``time_projections`` (None for the VAE's
        blocks, which have no time embedding)."""
        ops, pre = self.ops, spec.prefix
        h = ops.group_norm(x, spec.groups, *self._norm(pre + "norm1."), spec.eps, silu=True)
        w, b = self.p[pre + "conv1.weight"], self.p[pre + "conv1.bias"]
        h = ops.conv2d(h, w, b, padding=1, channel_add=temb[pre] if spec.temb_channels else None)
        h = ops.group_norm(h, spec.groups, *self._norm(pre + "norm2."), spec.eps, silu=True)
        shortcut = x
        if spec.shortcut:
            shortcut = ops.conv2d(x, self.p[pre + "conv_shortcut.weight"], self.p[pre + "conv_shortcut.bias"])
        w, b = self.p[pre + "conv2.weight"], self.p[pre + "conv2.bias"]
        return ops.conv2d(h, w, b, padding=1, residual=shortcut)

    def _norm_linear(self, norm, eps, x, prefix, geglu=False):
        """layer_norm(x) with ``norm``'s weights, then the linear layer ``prefix`` (GEGLU: linear_geglu). One
        kernel where the params hold the LayerNorm folded into that layer (``prefix + "ln_colsum"``: see
        minisd.half_precision), two otherwise."""
        w, b = self.p[prefix + "weight"], self.p.get(prefix + "bias")
        colsum = self.p.get(prefix + "ln_colsum")
        if colsum is not None:
            return self.ops.layer_norm_linear(x, w, b, colsum, eps, geglu=geglu)
        n = self.ops.layer_norm(x, *self._norm(norm), eps)
        return self.ops.linear_geglu(n, w, b) if geglu else self.ops.linear(n, w, b)

    def _attention(self, prefix, norm, eps, tokens, heads, context_kv=None):
        """diffusers' Attention before to_out, on the LayerNorm ``norm`` of ``tokens``: self-attention, or
        cross-attention with the prompt's k, v."""
        if context_kv is not None:
            return self.ops.attention(
                self._norm_linear(norm, eps, tokens, prefix + "to_q."), *context_kv, heads=heads
            )
        if prefix + "to_qkv.weight" in self.p:  # q, k, v packed in one weight: one product, not three
            return self.ops.self_attention(self._norm_linear(norm, eps, tokens, prefix + "to_qkv."), heads)
        n = self.ops.layer_norm(tokens, *self._norm(norm), eps)
        q, k, v = (self.ops.linear(n, self.p[prefix + f"to_{name}.weight"]) for name in "qkv")
        return self.ops.attention(q, k, v, heads=heads)

    def transformer_block(self, spec, tokens, kv):
        """BasicTransformerBlock: self-attention, cross-attention to the prompt, GEGLU feed-forward; each
        pre-norm, with a residual."""
        blk, eps = spec.block, spec.layer_norm_eps
        attn = self._attention(blk + "attn1.", blk + "norm1.", eps, tokens, spec.heads)
        tokens = self._linear(blk + "attn1.to_out.0.", attn, tokens)
        cross = self._attention(blk + "attn2.", blk + "norm2.", eps, tokens, spec.heads, kv[spec.prefix])
        tokens = self._linear(blk + "attn2.to_out.0.", cross, tokens)
        ff = self._norm_linear(blk + "norm3.", eps, tokens, blk + "ff.net.0.proj.", geglu=True)
        return self._linear(blk + "ff.net.2.", ff, tokens)

    def transformer_2d(self, spec, x, kv):
        """Transformer2DModel (use_linear_projection): tokens in, the block, image out, + x."""
        ops, pre = self.ops, spec.prefix
        h, w = ops.image_size(x)
        normed = ops.group_norm(x, spec.groups, *self._norm(pre + "norm."), spec.group_norm_eps)
        tokens = self.transformer_block(spec, self._linear(pre + "proj_in.", ops.to_tokens(normed)), kv)
        # proj_out as a 1x1 conv after from_tokens: the same product, and the conv adds the residual x in its
        # epilogue (one pass fewer than linear, transpose, add).
        image = ops.from_tokens(tokens, h, w)
        return ops.conv2d(
            image, self.p[pre + "proj_out.weight_1x1"], self.p[pre + "proj_out.bias"], residual=x
        )

    def _layer(self, resnet, attention, x, temb, kv):
        x = self.resnet_block(resnet, x, temb)
        return x if attention is None else self.transformer_2d(attention, x, kv)

    def unet(self, sample, temb, kv):
        """(N, C, H, W) noisy sample -> predicted noise, given this step's ``time_projections`` rows and the
        prompt's ``cross_attention_kv``. Skips as minisd.architecture.UNet says."""
        ops, u = self.ops, self.arch.unet
        x = self._conv(u.conv_in, sample)
        skips = [x]
        for block in u.down:
            for resnet, attention in block.layers():
                x = self._layer(resnet, attention, x, temb, kv)
                skips.append(x)
            if block.sampler is not None:
                x = self._conv(block.sampler, x)
                skips.append(x)
        for resnet, attention in u.mid.layers():
            x = self._layer(resnet, attention, x, temb, kv)
        for block in u.up:
            for resnet, attention in block.layers():
                x = self._layer(resnet, attention, ops.concat_channels(x, skips.pop()), temb, kv)
            if block.sampler is not None:
                x = self._conv(block.sampler, x, upsample=True)
        x = ops.group_norm(x, u.groups, *self._norm("unet.conv_norm_out."), u.eps, silu=True)
        return self._conv(u.conv_out, x)
