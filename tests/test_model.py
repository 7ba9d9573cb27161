"""minisd.model: shapes, size, and state_dict names that read like diffusers' / CLIP's."""

import math

import numpy as np
import pytest
import torch

from minisd import architecture, text
from minisd.model import MiniSD, count_parameters, timestep_embedding


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MiniSD().eval()


def test_forward_shapes(model):
    ids = torch.from_numpy(
        text.tokenize(
            [
                "a big red star on the left on a blue background",
                "",
                "a small white square above a big red star on a blue background",
            ]
        )
    )
    context = model.text_encoder(ids)
    assert context.shape == (3, 14, 64)
    sample = torch.randn(3, 4, 16, 16)  # latents
    with torch.no_grad():
        eps = model.unet(sample, torch.tensor([0, 500, 999]), context)
    assert eps.shape == sample.shape and torch.isfinite(eps).all()


def test_scalar_timestep_broadcasts(model):
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 14, 64)
    with torch.no_grad():
        np.testing.assert_allclose(
            model.unet(x, 10, ctx), model.unet(x, torch.tensor([10, 10]), ctx), atol=1e-5
        )


def test_the_prompt_changes_the_prediction(model):
    x = torch.randn(1, 4, 16, 16)
    ids = torch.from_numpy(text.tokenize(["a big red star on the left on a blue background", ""]))
    with torch.no_grad():
        eps = model(x.repeat(2, 1, 1, 1), torch.tensor([300, 300]), ids)
    assert (eps[0] - eps[1]).abs().max() > 1e-4, "cross-attention must carry the prompt into the UNet"


def test_parameter_count_is_5_to_10_million(model):
    assert 5_000_000 <= count_parameters(model) <= 10_000_000


def test_state_dict_key_names_follow_the_spec(model):
    keys = set(model.state_dict())
    assert all(k.startswith(("text_encoder.", "unet.", "vae.")) for k in keys)
    expected = [
        "text_encoder.token_embedding.weight",
        "text_encoder.position_embedding.weight",
        "text_encoder.layers.1.self_attn.q_proj.bias",
        "text_encoder.layers.0.mlp.fc2.weight",
        "text_encoder.final_layer_norm.weight",
        "unet.time_embedding.linear_1.weight",
        "unet.time_embedding.linear_2.bias",
        "unet.conv_in.weight",
        "unet.down_blocks.0.resnets.0.time_emb_proj.weight",
        "unet.down_blocks.0.downsamplers.0.conv.weight",
        "unet.down_blocks.1.resnets.0.conv_shortcut.weight",
        "unet.down_blocks.1.attentions.0.proj_in.weight",
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "unet.mid_block.resnets.1.norm2.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        "unet.up_blocks.0.resnets.1.conv_shortcut.weight",
        "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0.bias",
        "unet.up_blocks.1.upsamplers.0.conv.weight",
        "unet.up_blocks.2.resnets.1.conv2.weight",
        "unet.conv_norm_out.weight",
        "unet.conv_out.bias",
    ]
    assert not [k for k in expected if k not in keys]
    forbidden = [
        "unet.down_blocks.0.attentions",  # DownBlock2D has no attention
        "unet.down_blocks.2.downsamplers",  # the deepest block keeps 4 x 4 latents
        "unet.up_blocks.2.upsamplers",
        "unet.up_blocks.2.attentions",
        "transformer_blocks.0.attn1.to_q.bias",  # the UNet's q/k/v projections have no bias (the VAE's do)
        "net.1",  # diffusers' Dropout slot holds no weights
    ]
    assert not [k for k in keys for f in forbidden if f in k]


def test_shapes_of_key_tensors(model):
    sd = model.state_dict()
    assert sd["text_encoder.token_embedding.weight"].shape == (30, 64)
    assert sd["text_encoder.position_embedding.weight"].shape == (14, 64)
    assert sd["unet.time_embedding.linear_1.weight"].shape == (256, 64)
    assert sd["unet.down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (128, 64)
    assert sd["unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"].shape == (1024, 128)
    assert sd["unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"].shape == (128, 512)
    # Each up resnet takes the previous output concatenated with one skip (diffusers' channel bookkeeping).
    up_in = [sd[f"unet.up_blocks.{b}.resnets.{r}.conv1.weight"].shape[1] for b in range(3) for r in range(2)]
    assert up_in == [256, 256, 256, 192, 192, 128]


def test_attention_heads_are_channels_over_32(model):
    assert model.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.heads == 4
    assert model.unet.mid_block.attentions[0].transformer_blocks[0].attn2.heads == 4
    assert model.text_encoder.layers[0].self_attn.heads == 2


def test_timestep_embedding_matches_the_formula():
    t = torch.tensor([0, 1, 17, 999])
    got = timestep_embedding(t, 32).double().numpy()
    freqs = np.exp(-math.log(10000) * np.arange(16) / 16)
    args = t.numpy()[:, None].astype(np.float64) * freqs
    np.testing.assert_allclose(got, np.concatenate([np.cos(args), np.sin(args)], axis=1), atol=1e-4)


def test_default_config_is_a_copy():
    cfg = architecture.default_config()
    cfg["unet"]["block_out_channels"][0] = 999
    assert architecture.default_config()["unet"]["block_out_channels"][0] == 64
