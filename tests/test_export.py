"""``python -m minisd export``: the ONNX files equal the PyTorch model in onnxruntime, the diffusers folders
load back with diffusers' from_pretrained (UNet2DConditionModel, AutoencoderKL, DDIMScheduler), give minisd's
numbers on the same inputs and draw minisd's pictures through the exported decoder, and what the export and
the spec say about the text encoder (CLIP's keys, without CLIP's causal mask) is exactly true."""

import copy
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import minisd.model
from minisd import export, scenes
from minisd.ops.harness import assert_close
from minisd.pipeline import MiniSDPipeline, to_uint8
from minisd.schedulers import DDIMScheduler
from minisd.text import tokenize

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a big red star on the left on a white background",
    "a small red star left of a big blue circle on a white background",
]
# max |diffusers - minisd| on the same inputs and weights, float32 (measured on the shipped weights):
TORCH_TOLERANCE = 1e-5  # diffusers' UNet and AutoencoderKL against minisd.model's torch modules (<= 4e-6)
KERNEL_TOLERANCE = 1e-4  # diffusers' decoder against minisd's numpy kernels, on pixels in about [-1, 1]
WORST_PROMPT = "a small white square above a big white heart on a purple background"  # from the sweep


@pytest.fixture(scope="module")
def model():
    return export.load_model()


@pytest.fixture(scope="module")
def minisd_pipe():
    """minisd's own pipeline on its numpy kernels, the shipped weights."""
    return MiniSDPipeline.from_pretrained(backend="numpy", log=lambda *a: None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One run of the command, as a user types it (the ONNX export takes most of a minute on 2 cores)."""
    pytest.importorskip("onnxruntime", reason="export --onnx needs onnxruntime")
    pytest.importorskip("onnxscript", reason="export --onnx needs onnxscript")
    out = tmp_path_factory.mktemp("export")
    result = subprocess.run(
        [sys.executable, "-m", "minisd", "export", "--onnx", out / "onnx", "--diffusers", out / "diffusers"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=1800,  # a hang guard, not a speed budget
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_onnx_export_matches_torch_in_onnxruntime(exported, model):
    import onnxruntime

    out, stdout = exported
    torch_model, config = model
    assert stdout.count("onnxruntime matches PyTorch") == 2, stdout
    assert "Traceback" not in stdout
    fresh = export.example_inputs(
        config, batch=5, seed=123
    )  # neither the traced (2) nor the checked (3) batch
    for name in ("text_encoder", "unet"):
        path = out / "onnx" / f"{name}.onnx"
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == list(fresh[name])
        assert export.check_onnx(path, getattr(torch_model, name), fresh[name]) <= export.ONNX_TOLERANCE
    meta = onnxruntime.InferenceSession(str(out / "onnx" / "text_encoder.onnx")).get_modelmeta()
    assert "without CLIP's causal attention mask" in meta.description


def test_onnx_check_catches_a_different_model(exported, model):
    out, _ = exported
    torch_model, config = model
    inputs = export.example_inputs(config, batch=2, seed=7)
    for name, key in [("unet", "conv_out.bias"), ("text_encoder", "final_layer_norm.bias")]:
        changed = copy.deepcopy(getattr(torch_model, name)).eval()
        with torch.no_grad():
            changed.get_parameter(key).add_(1e-3)  # ten times the tolerance
        with pytest.raises(export.ExportError, match=f"{name}.onnx differs from the PyTorch model by 0.001"):
            export.check_onnx(out / "onnx" / f"{name}.onnx", changed, inputs[name])


def test_diffusers_export_loads_back_in_diffusers(exported, model):
    """UNet2DConditionModel.from_pretrained: minisd's eps on the same latents, timesteps and context, to
    TORCH_TOLERANCE; all 324 UNet keys load strictly into diffusers' own class (the spec's claim)."""
    diffusers = pytest.importorskip("diffusers")
    out, stdout = exported
    torch_model, config = model
    assert "no text_encoder/" in stdout and "causal mask" in stdout
    assert sorted(p.name for p in (out / "diffusers").iterdir()) == ["scheduler", "unet", "vae"]
    unet = diffusers.UNet2DConditionModel.from_pretrained(out / "diffusers", subfolder="unet").eval()
    assert (unet.config.in_channels, unet.config.sample_size) == (4, 16), "the UNet denoises 4x16x16 latents"
    inputs = export.example_inputs(config, batch=2, seed=3)["unet"]
    assert inputs["sample"].shape == (2, 4, 16, 16)
    with torch.no_grad():
        expected = torch_model.unet(*inputs.values())
        got = unet(*inputs.values()).sample
    assert_close(got, expected, TORCH_TOLERANCE, "the exported UNet's eps against minisd's")
    # all 324 keys load strictly into diffusers' class built from the config, and the outputs are equal
    built = diffusers.UNet2DConditionModel(**export.diffusers_unet_config(config)).eval()
    assert len(torch_model.unet.state_dict()) == 324
    built.load_state_dict(torch_model.unet.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(built(*inputs.values()).sample, expected)


def test_diffusers_export_of_the_autoencoder_encodes_and_decodes_as_minisd(exported, model, minisd_pipe):
    """AutoencoderKL.from_pretrained: the trained scaling factor, and minisd's encode (mean, log-variance)
    and decode on the same inputs, against minisd's torch model (TORCH_TOLERANCE) and its numpy kernels
    (KERNEL_TOLERANCE; minisd's pipeline divides by the scaling factor itself, as diffusers' does)."""
    diffusers = pytest.importorskip("diffusers")
    out, _ = exported
    torch_model, config = model
    vae = diffusers.AutoencoderKL.from_pretrained(out / "diffusers", subfolder="vae").eval()
    scaling = config["vae"]["scaling_factor"]
    assert vae.config.scaling_factor == scaling != 1.0, "the trained factor, not the default"
    assert {k: v for k, v in vae.config.items() if not k.startswith("_")} == config["vae"]
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    latents = torch.randn(3, 4, 16, 16, generator=g)  # as the UNet's, in units of the scaling factor
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        mean, logvar = torch_model.vae.encode(images)
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
        expected = torch_model.vae.decode(latents / scaling)
    assert posterior.mean.shape == (2, 4, 16, 16) and decoded.shape == (3, 3, 64, 64)
    assert_close(posterior.mean, mean, TORCH_TOLERANCE, "the exported encoder's mean against minisd's")
    assert_close(posterior.logvar, logvar, TORCH_TOLERANCE, "the exported encoder's log-variance")
    assert_close(decoded, expected, TORCH_TOLERANCE, "the exported decoder against minisd's")
    kernels = minisd_pipe.decode(latents.numpy())
    difference = float(np.abs(kernels - decoded.numpy()).max())
    assert difference <= KERNEL_TOLERANCE, f"minisd's numpy decoder is {difference:.2g} from diffusers'"


def test_diffusers_export_of_the_scheduler_samples_as_minisd(exported, model):
    """DDIMScheduler.from_pretrained: minisd's config ("trailing" spacing, x0 clipped to +-2.5), its timesteps,
    and its step on the same eps and sample."""
    diffusers = pytest.importorskip("diffusers")
    out, _ = exported
    _, config = model
    theirs = diffusers.DDIMScheduler.from_pretrained(out / "diffusers", subfolder="scheduler")
    ours = DDIMScheduler.from_pretrained(out / "diffusers", subfolder="scheduler")
    assert ours.config == export.sampling_scheduler(config).config
    assert ours.config.timestep_spacing == "trailing"  # what minisd samples with, not diffusers' "leading"
    assert theirs.config.clip_sample_range == ours.config.clip_sample_range == 2.5  # minisd clips x_0
    rng = np.random.default_rng(0)
    for steps in (1, 10, 25):
        for scheduler in (theirs, ours):
            scheduler.set_timesteps(steps)
        np.testing.assert_array_equal(theirs.timesteps.numpy(), ours.timesteps, err_msg=f"{steps} steps")
    assert ours.timesteps[0] == 999
    for t in ours.timesteps[[0, 12, 24]]:
        sample, eps = (torch.from_numpy(3 * rng.standard_normal((2, 4, 16, 16), np.float32)) for _ in "ab")
        want = theirs.step(eps, int(t), sample).prev_sample
        got = ours.step(eps, int(t), sample).prev_sample
        assert_close(got, want, 2e-6 / ours.alpha_prods(t)[0] ** 0.5, f"the step at t={t}")


def test_stable_diffusion_pipeline_draws_minisd_pictures(exported, model, minisd_pipe):
    """diffusers' StableDiffusionPipeline with the exported UNet, scheduler and autoencoder, given minisd's
    prompt embeddings and starting noise, draws what minisd draws: its latents, decoded by the exported
    AutoencoderKL (divided by the scaling factor, as the pipeline does), are minisd's pictures."""
    pytest.importorskip("transformers", reason="StableDiffusionPipeline needs transformers")
    diffusers = pytest.importorskip("diffusers")

    from minisd import ops

    out, _ = exported
    torch_model, config = model
    steps, guidance, seed = 3, 1.5, 4
    expected = minisd_pipe(PROMPTS, steps, guidance, seed)
    assert expected.shape == (len(PROMPTS), 64, 64, 3)

    folder = out / "diffusers"
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    parts = dict(text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None)
    with pytest.warns(FutureWarning, match="steps_offset"):
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae, unet=unet, scheduler=scheduler, requires_safety_checker=False, **parts
        )
    # the constructor sets steps_offset to 1 in old-style configs (no effect on "trailing" timesteps): sample
    # with the exported scheduler exactly as minisd does
    pipe.scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 4  # 64x64 images from 16x16 latents
    with torch.no_grad():
        prompt_embeds = torch_model.text_encoder(torch.from_numpy(tokenize(PROMPTS)))
        negative_embeds = torch_model.text_encoder(torch.from_numpy(tokenize([""] * len(PROMPTS))))
        shape = (len(PROMPTS), 4, config["unet"]["sample_size"], config["unet"]["sample_size"])
        images = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            latents=torch.from_numpy(ops.Ops("numpy").randn(shape, seed)),
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="pt",  # (N, 3, 64, 64) in [0, 1]: the decoder's output, denormalized
        ).images
    assert {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")} == dict(
        minisd_pipe.scheduler.config
    )
    assert images.shape == (len(PROMPTS), 3, 64, 64)
    got = to_uint8(images.numpy() * 2 - 1)
    difference = np.abs(got.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99, (
        difference.max(),
        (difference == 0).mean(),
    )


def causal_attention(q, k, v, heads):
    """minisd.model.attention with CLIP's causal mask: token i attends to tokens 0..i only."""
    b, lq, inner = q.shape
    q, k, v = (t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(b, lq, inner)


def test_text_encoder_is_clip_without_the_causal_mask(model, monkeypatch):
    """The claim in docs/MINISD_SPEC.md and minisd/export.py: the text_encoder.* weights load strictly into
    transformers' CLIPTextModel after a prefix rename, and CLIP's output is minisd's with a causal mask;
    without the mask (minisd as shipped) the two differ by as much as the export's docstring says. The
    155 120 prompts of the grammar take minutes on a CPU: "", every 151st of them and the one that differs
    most (WORST_PROMPT, from a sweep over all of them on the shipped weights) give the same maximum."""
    transformers = pytest.importorskip("transformers")
    torch_model, config = model
    te = config["text_encoder"]
    clip_config = transformers.CLIPTextConfig(
        vocab_size=te["vocab_size"],
        max_position_embeddings=te["max_length"],
        hidden_size=te["hidden_size"],
        num_hidden_layers=te["num_layers"],
        num_attention_heads=te["num_heads"],
        intermediate_size=te["intermediate_size"],
        layer_norm_eps=te["layer_norm_eps"],
        hidden_act="gelu",  # exact erf GELU, as minisd; CLIP's checkpoints use quick_gelu
        bos_token_id=None,
        eos_token_id=2,  # CLIP's legacy pooling (argmax of the ids); the hidden states compared do not use it
    )
    clip = transformers.CLIPTextModel(clip_config).eval()
    # SD's text_encoder/model.safetensors spells them text_model.embeddings..., text_model.encoder.layers...;
    # transformers 5's CLIPTextModel.state_dict() leaves out the "text_model." prefix
    prefix = "text_model." if any(key.startswith("text_model.") for key in clip.state_dict()) else ""
    renames = {
        "token_embedding.": "embeddings.token_embedding.",
        "position_embedding.": "embeddings.position_embedding.",
        "layers.": "encoder.layers.",
        "final_layer_norm.": "final_layer_norm.",
    }
    state = {}
    for key, value in torch_model.text_encoder.state_dict().items():
        (old,) = [old for old in renames if key.startswith(old)]
        state[prefix + renames[old] + key[len(old) :]] = value
    clip.load_state_dict(state, strict=True)

    prompts = ["", WORST_PROMPT, *itertools.islice(scenes.all_prompts(), 0, None, 151)]
    ids = torch.from_numpy(tokenize(prompts))
    with torch.no_grad():
        theirs = clip(ids).last_hidden_state
        ours = torch_model.text_encoder(ids)
        monkeypatch.setattr(minisd.model, "attention", causal_attention)
        ours_causal = torch_model.text_encoder(ids)
    torch.testing.assert_close(ours_causal, theirs, rtol=0, atol=1e-5)
    difference = float((ours - theirs).abs().max())
    (stated,) = re.findall(r"up to (\d+\.\d\d) apart on the shipped\s+weights", export.__doc__)
    assert round(difference, 2) == float(stated), (
        f"{difference:.3f}: update the number in docs/MINISD_SPEC.md and minisd/export.py ({stated})"
    )


def test_bad_export_commands_say_what_to_fix(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main([])
    assert exit_info.value.code == 2 and "say what to write" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="the folder .*missing does not exist"):
        export.main(["--onnx", str(tmp_path / "missing" / "onnx")])
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="is a file; name a folder"):
        export.main(["--diffusers", str(tmp_path / "file")])
    with pytest.raises(SystemExit, match="no minisd weights at"):
        export.main(["--diffusers", str(tmp_path / "out"), "--weights", str(tmp_path / "none.safetensors")])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(SystemExit, match="export --onnx needs onnx, onnxscript and onnxruntime .onnxruntime"):
        export.main(["--onnx", str(tmp_path / "onnx")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # refused before writing anything
