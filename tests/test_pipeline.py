"""minisd.pipeline and minisd.forward: the networks on the course's ops against the torch model (float64
oracle), the latents' decoding and the whole pipeline (prompts -> latents -> images) against it too, the
sampling loop against the scheduler and against the PyTorch model, determinism, the backend checked once. (Speed is measured by `python -m minisd bench`, never asserted here: CI machines vary many-fold.)"""

import copy
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import minisd
import minisd.mode as mode
from minisd import architecture, lesson_kernels, pipeline, weights
from minisd.architecture import default_config
from minisd.forward import Forward, one_hot_tokens, prepare_params
from minisd.lesson_kernels import LessonKernelsError
from minisd.model import MiniSD, ResnetBlock2D, timestep_embedding
from minisd.ops import Ops
from minisd.ops.harness import assert_close
from minisd.pipeline import MiniSDPipeline, SamplingPlan, to_uint8
from minisd.scenes import PromptError
from minisd.schedulers import DDIMScheduler
from minisd.text import MAX_LENGTH, VOCAB, tokenize

PROMPTS = [
    "a big red circle on the left on a blue background",
    "",
    "a small green star left of a big yellow heart on a white background",  # the longest: MAX_LENGTH tokens
]
PROMPT = "a big red circle on the left on a blue background"


def ragged_config():
    """Odd sizes everywhere: 1, 2 and 3 heads of 16, 2 layers per block, 3 latent channels of 12x12, another
    time embedding; an autoencoder of 2 levels (latents 2x smaller than the 24x24 images), 2 layers a block,
    a scaling factor that is not 1."""
    c = default_config()
    c["text_encoder"].update(hidden_size=24, num_layers=1, num_heads=3, intermediate_size=40)
    c["unet"].update(
        sample_size=12,
        in_channels=3,
        out_channels=3,
        block_out_channels=[16, 32, 48],
        layers_per_block=2,
        norm_num_groups=4,
        attention_head_dim=[1, 2, 3],
        cross_attention_dim=24,
        flip_sin_to_cos=False,
        freq_shift=1,
    )
    c["vae"].update(
        block_out_channels=[12, 20],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=2,
        latent_channels=3,
        norm_num_groups=4,
        sample_size=24,
        scaling_factor=0.6,
    )
    return c


def tiny_config():
    """Small enough for Numba's CUDA simulator (a Python thread per CUDA thread)."""
    c = default_config()
    c["text_encoder"].update(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16)
    c["unet"].update(
        sample_size=4,
        block_out_channels=[8, 16],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        norm_num_groups=4,
        attention_head_dim=[1, 2],
        cross_attention_dim=8,
    )
    c["vae"].update(
        block_out_channels=[8, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=4,
        sample_size=8,
    )
    return c


def random_model(config, seed=0):
    """A randomly initialised model whose norm scales and biases are not 1 and 0 (so they are tested too)."""
    torch.manual_seed(seed)
    model = MiniSD(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def state_of(model):
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def network(ops, model, forward_class=Forward):
    arch = architecture.read(model.config)
    return forward_class(ops, prepare_params(state_of(model), arch, ops), arch)


def forward_on(ops, model, sample, timesteps, ids, forward_class=Forward):
    """Text encoder + UNet through ``ops`` -> (context, eps) as numpy."""
    net = network(ops, model, forward_class)
    context = net.text_encoder(ops.to_device(one_hot_tokens(ids, net.arch.text_encoder.vocab_size)))
    temb = net.time_projections(ops.to_device(timesteps.astype(np.float32)))
    eps = net.unet(ops.to_device(sample), temb, net.cross_attention_kv(context))
    return ops.to_numpy(context), ops.to_numpy(eps)


def oracle(model, sample, timesteps, ids):
    """The torch model in float64."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        context = m.text_encoder(torch.from_numpy(ids))
        eps = m.unet(torch.from_numpy(sample).double(), torch.from_numpy(timesteps).double(), context)
    return context.numpy(), eps.numpy()


def inputs(config, seed=1):
    rng = np.random.default_rng(seed)
    size, channels = config["unet"]["sample_size"], config["unet"]["in_channels"]
    sample = rng.standard_normal((len(PROMPTS), channels, size, size)).astype(np.float32)
    timesteps = np.array([999, 421, 0], np.int64)
    return sample, timesteps, tokenize(PROMPTS)


@pytest.mark.parametrize("make_config", [default_config, ragged_config], ids=["minisd", "ragged"])
def test_numpy_forward_matches_torch_float64(make_config):
    config = make_config()
    model = random_model(config)
    sample, timesteps, ids = inputs(config)
    context, eps = forward_on(Ops("numpy"), model, sample, timesteps, ids)
    ref_context, ref_eps = oracle(model, sample, timesteps, ids)
    assert eps.shape == sample.shape, "the UNet predicts the noise of its latents"
    assert_close(context, ref_context, 2e-5, "text encoder")
    assert_close(eps, ref_eps, 2e-5, "UNet")


def decode_oracle(model, latents):
    """torch's MiniSD.vae.decode in float64, of latents as the UNet samples them: divided by the scaling
    factor first, as diffusers' pipelines do."""
    vae = copy.deepcopy(model.vae).double()
    with torch.no_grad():
        return vae.decode(torch.from_numpy(latents).double() / model.config["vae"]["scaling_factor"]).numpy()


@pytest.mark.parametrize(
    "make_config, size", [(default_config, (16, 16)), (ragged_config, (3, 5))], ids=["minisd", "ragged"]
)
def test_decode_matches_torch_float64(make_config, size):
    """pipe.decode, the pipeline's last stage on numpy: 17 latents (two chunks of CPU_CHUNK on the CPU) ->
    images, against torch's decoder. minisd: 4x16x16 -> 3x64x64; ragged: 3x3x5 latents -> 3x6x10 images
    (2 levels: 2x), scaling factor 0.6."""
    config = make_config()
    model = random_model(config, seed=5)
    pipe = MiniSDPipeline(state_of(model), config, "numpy")
    vae = config["vae"]
    n, scale = pipeline.CPU_CHUNK + 1, 2 ** (len(vae["block_out_channels"]) - 1)
    assert pipe.latent_scale == scale
    rng = np.random.default_rng(6)
    shape = (n, vae["latent_channels"], *size)
    latents = (vae["scaling_factor"] * rng.standard_normal(shape)).astype(np.float32)
    images = pipe.decode(latents)
    assert images.shape == (n, 3, size[0] * scale, size[1] * scale) and images.dtype == np.float32
    assert_close(images, decode_oracle(model, latents), 2e-5, "decode (numpy)")  # measured <= 1e-6
    assert np.abs(images[: n - 1] - images[1:]).max() > 0.1, "every latent decodes to its own image"


@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["unguided", "guided"])
def test_the_whole_pipeline_matches_torch_float64(guidance):
    """Prompts -> text encoder -> 3 DDIM steps of the UNet on the latents (with and without guidance) ->
    decoder -> images: pipe.sample on numpy against the torch model in float64, stepped by diffusers'
    DDIMScheduler from the same noise. The ragged model at 24x40 pixels (latents 3 x 12 x 20)."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the test oracle) is not installed")
    config = ragged_config()
    model = random_model(config, seed=6)
    pipe = MiniSDPipeline(state_of(model), config, "numpy")
    prompts = [PROMPTS[0], PROMPTS[2]]
    got = pipe.sample(prompts, 3, guidance, seed=4, height=24, width=40)
    assert got.shape == (2, 3, 24, 40) and got.dtype == np.float32

    plan = pipe.plan(len(prompts), 3, guidance, height=24, width=40)
    assert plan.noise_shape(3) == (2, 3, 12, 20)
    scheduler = diffusers.DDIMScheduler.from_config(config["scheduler"])
    scheduler.set_timesteps(3)
    assert plan.timesteps == tuple(int(t) for t in scheduler.timesteps)
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        context = m.text_encoder(torch.from_numpy(tokenize(plan.prompt_rows(prompts))))
        x = torch.from_numpy(Ops("numpy").randn(plan.noise_shape(3), 4)).double()  # the pipeline's noise
        for t in scheduler.timesteps:
            rows = torch.cat([x, x]) if guidance != 1.0 else x
            eps = m.unet(rows, torch.full((len(rows),), float(t), dtype=torch.float64), context)
            if guidance != 1.0:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            x = scheduler.step(eps, t, x).prev_sample
        want = m.vae.decode(x / config["vae"]["scaling_factor"]).numpy()
    assert_close(got, want, 2e-5, f"pipeline, guidance {guidance}")  # measured <= 5e-7


@pytest.mark.parametrize(
    "where",
    [
        "unet.norm_eps",
        "text_encoder.layer_norm_eps",
        "TRANSFORMER_GROUP_NORM_EPS",
        "TRANSFORMER_LAYER_NORM_EPS",
    ],
)
def test_every_eps_comes_from_the_architecture(monkeypatch, where):
    """Drift guard: an eps the torch model and the kernel forward pass each wrote down for themselves could
    change in one and not the other (the transformers' GroupNorm eps once did). Change each (in the config,
    or diffusers' fixed ones in minisd.architecture): the result must change, and both must still agree."""
    config = ragged_config()
    sample, timesteps, ids = inputs(config)
    before = np.concatenate(
        [a.ravel() for a in forward_on(Ops("numpy"), random_model(config), sample, timesteps, ids)]
    )
    if "." in where:
        section, key = where.split(".")
        config[section][key] = 0.3
    else:
        monkeypatch.setattr(architecture, where, 0.3)
    model = random_model(config)
    context, eps = forward_on(Ops("numpy"), model, sample, timesteps, ids)
    ref_context, ref_eps = oracle(model, sample, timesteps, ids)
    assert_close(context, ref_context, 2e-5, f"text encoder with {where} = 0.3")
    assert_close(eps, ref_eps, 2e-5, f"UNet with {where} = 0.3")
    after = np.concatenate([context.ravel(), eps.ravel()])
    assert np.abs(after - before).max() > 1e-3, f"{where} does not reach the forward pass"


def test_no_other_unet_walks_the_blocks():
    """Drift guard: a UNet written out a third time (the CuPy harness had one) would be a copy to forget.
    Only the architecture names the blocks; the torch model and minisd/forward.py walk its specs."""
    root = pipeline.__file__.rsplit("/", 1)[0]
    import pathlib

    for path in pathlib.Path(root).rglob("*.py"):
        if path.name in ("architecture.py", "model.py"):
            continue
        text = path.read_text()
        assert "down_blocks" not in text and "mid_block." not in text, f"{path} walks the UNet by hand"


@pytest.mark.slow
def test_numba_blocks_in_simulator_match_torch(monkeypatch):
    """Every op kind through the Numba backend: text encoder, time embedding, a ResNet block with a shortcut
    and a transformer block. (The whole tiny UNet takes ~150 s in the simulator: the GPU test covers it.)"""
    if mode.ON_GPU:
        pytest.skip("test_gpu_backends_match_numpy runs the whole UNet on the GPU")
    monkeypatch.setenv("MINISD_ALLOW_SIMULATOR", "1")
    config = tiny_config()
    model = random_model(config)
    ops = Ops("numba")
    net = network(ops, model)
    ids = tokenize(PROMPTS[:2])
    timesteps = np.array([999.0, 3.0], np.float32)
    x = np.random.default_rng(2).standard_normal((2, 8, 3, 5)).astype(np.float32)  # ragged on purpose

    context = net.text_encoder(ops.to_device(one_hot_tokens(ids, len(VOCAB))))
    temb = net.time_projections(ops.to_device(timesteps))
    kv = net.cross_attention_kv(context)
    block = net.arch.unet.down[1]
    h = net.resnet_block(block.resnets[0], ops.to_device(x), temb)
    out = net.transformer_2d(block.attentions[0], h, kv)

    m = copy.deepcopy(model).double()
    with torch.no_grad():
        ref_context = m.text_encoder(torch.from_numpy(ids))
        u = m.unet
        ref_temb = u.time_embedding(timestep_embedding(torch.from_numpy(timesteps), 8).double())
        ref_h = u.down_blocks[1].resnets[0](torch.from_numpy(x).double(), ref_temb)
        ref_out = u.down_blocks[1].attentions[0](ref_h, ref_context)
    assert_close(context, ref_context, 2e-5, "text encoder (numba)")
    assert_close(h, ref_h, 2e-5, "ResNet block (numba)")
    assert_close(out, ref_out, 2e-5, "transformer block (numba)")


def test_prepared_params_have_canonical_strides():
    """Numba's device arrays (on a GPU) reject "contiguous" arrays whose size-1 axes have odd strides."""
    params = network(Ops("numpy"), random_model(tiny_config())).p
    for key, value in params.items():
        canonical = tuple(int(np.prod(value.shape[i + 1 :])) * value.itemsize for i in range(value.ndim))
        assert value.strides == canonical, f"{key}: strides {value.strides}, expected {canonical}"


@pytest.mark.parametrize("clip_sample", [False, True], ids=["unclipped", "minisd"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_fused_step_is_the_schedulers_step(eta, clip_sample):
    """Drift guard: the loop applies schedulers.StepCoefficients in one fused op (scheduler_step); it must be
    DDIMScheduler.step (itself checked against diffusers) at every step of minisd's plan, with the clipping
    the plan takes from the config (minisd's: x_0 clipped to +-clip_sample_range, 2.5; or none)."""
    config = default_config()["scheduler"] | {"clip_sample": clip_sample}
    scheduler = DDIMScheduler.from_config(config)
    plan = SamplingPlan.make(scheduler, 2, 25, 1.5, 5, 7)
    assert (
        plan.clip_range == (config["clip_sample_range"] if clip_sample else None)
        and config["clip_sample_range"] == 2.5
    )
    rng = np.random.default_rng(0)
    ops = Ops("numpy")
    for t in scheduler.timesteps:
        sample, eps, noise = (rng.standard_normal((2, 4, 5, 7)).astype(np.float32) for _ in range(3))
        got = ops.scheduler_step(
            sample, eps, noise if eta else None, scheduler.step_coefficients(t, eta), plan.clip_range
        )
        want = scheduler.step(eps, t, sample, eta=eta, noise=noise).prev_sample
        assert_close(got, want, 2e-6 / scheduler.alpha_prods(t)[0] ** 0.5, f"t={t} eta={eta}")
        a_t, a_prev = scheduler.alpha_prods(t)
        np.testing.assert_array_equal(
            ops.ddim_step(sample, eps, a_t, a_prev, eta, noise, clip_sample, config["clip_sample_range"]), got
        )


def test_concat_batch_and_uint8():
    ops = Ops("numpy")
    a, b = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5), np.ones((2, 3, 4, 5), np.float32)
    np.testing.assert_array_equal(ops.concat_batch(a, b), np.concatenate([a, b]))
    pixels = to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 1, 1, 5).repeat(3, 1))
    assert pixels.shape == (1, 1, 5, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[0, 0, :, 0], [0, 0, 128, 255, 255])


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A trained-format weights file holding a random model of minisd's real config."""
    model = random_model(default_config(), seed=3)
    path = tmp_path_factory.mktemp("weights") / "minisd.safetensors"
    weights.save(model.state_dict(), model.config, path, dtype="float32")
    return path


def test_generate_is_deterministic(small_weights):
    prompts = [PROMPT, "a small yellow heart below a big red square on a black background"]
    a = minisd.generate(prompts, num_inference_steps=3, seed=7, backend="numpy", weights_path=small_weights)
    b = minisd.generate(prompts, num_inference_steps=3, seed=7, backend="numpy", weights_path=small_weights)
    c = minisd.generate(prompts, num_inference_steps=3, seed=8, backend="numpy", weights_path=small_weights)
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5, "a different seed should give different images"


def test_guidance_and_plan(small_weights):
    pipe = MiniSDPipeline.from_pretrained(small_weights, backend="numpy")
    plan = pipe.plan(2, 25, 3.0)
    assert isinstance(plan, SamplingPlan) and plan.rows == 4 and len(plan.timesteps) == 25
    assert plan.timesteps[0] == 999, "trailing spacing starts from pure noise"
    assert plan.prompt_rows(["a", "b"]) == ["", "", "a", "b"], "[unconditional..., conditional...]"
    assert pipe.plan(2, 25, 1.0).rows == 2, "guidance 1 needs no unconditional rows"
    assert pipe.latent_scale == 4 and pipe.image_size == 64
    assert (plan.height, plan.width, plan.noise_shape(4)) == (16, 16, (2, 4, 16, 16)), "it samples latents"
    unguided = pipe(PROMPT, 2, guidance_scale=1.0)
    guided = pipe(PROMPT, 2, guidance_scale=5.0)
    assert unguided.shape == guided.shape == (1, 64, 64, 3) and (unguided != guided).any()
    assert set(pipe.last_timings) == {"total_s", "per_step_s"}
    small = pipe.plan(1, 2, 1.5, height=16, width=48)  # image pixels in, latent sizes out
    assert (small.height, small.width) == (4, 12)
    assert pipe(PROMPT, 1, height=16, width=48).shape == (1, 16, 48, 3)
    for bad in (8, 24, 40):  # the UNet halves the latents twice, which are 4x smaller: multiples of 16
        with pytest.raises(ValueError, match="height must be a multiple of 16"):
            pipe.plan(1, 2, 1.5, height=bad)


def test_every_scheduler_setting_comes_from_the_weights():
    """Drift guard: the spacing was once filled in by the pipeline, unknown to the weights; now the stored
    config is read as it is. "leading" starts at 960 of 1000, "trailing" (minisd's) at 999."""
    config = default_config()
    state = state_of(random_model(config))
    assert MiniSDPipeline(state, config, "numpy").plan(1, 25, 1.5).timesteps[:2] == (999, 959)
    config["scheduler"]["timestep_spacing"] = "leading"
    assert MiniSDPipeline(state, config, "numpy").plan(1, 25, 1.5).timesteps[:2] == (960, 920)


def test_the_torch_model_is_sampled_by_the_same_loop(small_weights):
    """Drift guard: bench's PyTorch contenders and training's validation sample minisd.model with the loop
    that ships (once they stepped 960 -> 0 with their own noise): same seed, same picture."""
    from minisd.torch_sampler import TorchSampler

    state, config = weights.load(small_weights)
    model = MiniSD(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    prompts = [PROMPT, "a small yellow heart below a big red square on a black background"]
    for guidance in (1.0, 2.0):
        ours = MiniSDPipeline(state, config, "numpy")(prompts, 4, guidance, seed=3).astype(int)
        theirs = TorchSampler(model)(prompts, 4, guidance, seed=3).astype(int)
        assert np.abs(ours - theirs).max() <= 2, f"guidance {guidance}: the two loops draw different pictures"


def test_the_torch_sampler_takes_a_wrapped_unet(small_weights):
    """bench hands TorchSampler a torch.compile'd UNet, a wrapper with no truth value (``bool()`` of it
    raises, as torch's OptimizedModule does): the sampler must use it, not test it."""
    from minisd.torch_sampler import TorchSampler

    state, config = weights.load(small_weights)
    model = MiniSD(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    calls = []

    class Wrapped(torch.nn.Module):
        def __len__(self):
            raise TypeError("UNet2DConditionModel does not support len()")

        def forward(self, *args):
            calls.append(1)
            return model.unet(*args)

    prompt = [PROMPT]
    theirs = TorchSampler(model, Wrapped())(prompt, 2, 1.5, seed=3)
    assert calls, "the wrapped UNet was not called"
    assert np.array_equal(theirs, TorchSampler(model)(prompt, 2, 1.5, seed=3))


def test_the_backend_is_checked_once(small_weights, monkeypatch):
    """Ops checks its backend when it is made, not on every op call (~6,000 an image once)."""
    pipe = MiniSDPipeline.from_pretrained(small_weights, backend="numpy")
    calls = []
    monkeypatch.setattr(mode, "check_backend", lambda backend: calls.append(backend))
    pipe(PROMPT, 2)
    assert calls == []


def test_bad_inputs_are_clear(small_weights):
    pipe = MiniSDPipeline.from_pretrained(small_weights, backend="numpy")
    with pytest.raises(PromptError, match="word 4 is 'dog', but a shape goes there: circle, square"):
        pipe("a big red dog on the left on a blue background")
    with pytest.raises(PromptError, match="word 2 is 'red', but a size goes there: small, big"):
        pipe("a red circle on a blue background")  # the 32x32 model's prompts are not the scenes' grammar
    with pytest.raises(PromptError, match="'blue' is the background's colour"):
        pipe("a big blue circle on the left on a blue background")
    with pytest.raises(PromptError):  # one bad prompt of several, the unconditional "" among them
        pipe([PROMPT, "", "a big red circle on the left"])
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(PROMPT, 0)
    with pytest.raises(ValueError, match="prompts is empty"):
        pipe([])
    for bad in (-0.5, float("nan"), float("inf"), 1e39, "2"):  # 1e39 is inf in float32: a black image
        with pytest.raises(
            ValueError, match=r"guidance_scale must be a number from 0 to 3.4e\+38 \(float32\)"
        ):
            pipe(PROMPT, 1, guidance_scale=bad)
    with pytest.raises(ValueError, match="between 1 and num_train_timesteps=1000"):
        pipe(PROMPT, 1001)
    with pytest.raises(weights.WeightsError, match="no minisd weights"):
        MiniSDPipeline.from_pretrained(small_weights.parent / "missing.safetensors")
    with pytest.raises(ValueError, match="kernels must be one of"):
        MiniSDPipeline.from_pretrained(small_weights, kernels="mine")
    with pytest.raises(ValueError, match="unknown backend"):
        minisd.generate(PROMPT, backend="tpu")


def test_numpy_sampling_does_not_import_torch(small_weights, tmp_path):
    """Loading and sampling on numpy checks the weights against minisd.architecture, not a torch model."""
    code = (
        "import sys; from minisd.__main__ import main; "
        f"main(['sample', '--weights', {str(small_weights)!r}, '--backend', 'numpy', '--steps', '1', "
        f"'--num-images', '1', '--out', {str(tmp_path / 'x.png')!r}]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


# -------------------------------------------------------------------------- a lesson's kernels (lesson 11)
# minisd.lesson_kernels: each op probed first; NotImplementedError (the stubs' marker) means minisd's op runs,
# anything wrong is reported, never replaced.

NUMPY = Ops("numpy")


def fake_lesson(monkeypatch, source="solutions", **functions):
    lesson = types.ModuleType(f"{source}.lesson11")
    for name, fn in functions.items():
        setattr(lesson, name, fn)
    monkeypatch.setitem(sys.modules, f"{source}.lesson11", lesson)
    return lesson


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 11.1")


def run_tiny_model(ops_and_forward):
    """The tiny UNet through a lesson's ops, against the torch oracle."""
    ops, forward_class = ops_and_forward
    config = tiny_config()
    model = random_model(config)
    sample, timesteps, ids = inputs(config)
    _, eps = forward_on(ops, model, sample, timesteps, ids, forward_class)
    assert_close(eps, oracle(model, sample, timesteps, ids)[1], 2e-5, "UNet with a lesson's kernels")


def test_implemented_ops_run_and_stubs_fall_back(monkeypatch, capsys):
    calls = {"gelu": 0, "linear": 0}

    def gelu(x):
        calls["gelu"] += 1
        return NUMPY.gelu(x)

    def linear(x, weight, bias=None):
        calls["linear"] += 1
        raise NotImplementedError("Exercise 11.1: linear")

    fake_lesson(monkeypatch, gelu=gelu, linear=linear)
    loaded = lesson_kernels.load("solutions")
    assert calls == {"gelu": 1, "linear": 1}, "the probe calls each op once"
    run_tiny_model(loaded)
    assert calls["gelu"] > 1 and calls["linear"] == 1, "the stub is not called again"
    out = capsys.readouterr().out
    assert "yours: gelu" in out and "not implemented yet (minisd's run instead): linear" in out
    assert "not in the file (minisd's): conv2d, group_norm" in out


@pytest.mark.parametrize(
    "gelu,message",
    [
        (lambda x: np.full_like(x, np.nan), "7 of 7 outputs are NaN or inf"),
        (lambda x: NUMPY.silu(x), "differs from minisd's by"),
        (lambda x: NUMPY.gelu(x).astype(np.float64), "returned float64"),
        (lambda x: NUMPY.gelu(x)[:3], r"returned shape \(3,\), expected \(7,\)"),
        (lambda x: x[99], "raised IndexError"),
    ],
)
def test_a_wrong_kernel_is_reported_not_replaced(monkeypatch, capsys, gelu, message):
    """Drift guard: a NaN once meant "not implemented" and quietly became minisd's op, hiding real bugs."""
    fake_lesson(monkeypatch, gelu=gelu, linear=stub)
    with pytest.raises(LessonKernelsError, match="solutions/lesson11.py: gelu is wrong"):
        lesson_kernels.load("solutions")
    out = capsys.readouterr().out
    assert "WRONG gelu:" in out and len(re.findall(message, out)) == 1, out


def test_a_kernel_that_goes_wrong_after_its_probe_stops_the_run(monkeypatch):
    def gelu(x):
        return NUMPY.gelu(x) if x.size < 100 else np.full_like(x, np.nan)  # right on tiny inputs only

    fake_lesson(monkeypatch, gelu=gelu)
    with pytest.raises(LessonKernelsError, match=r"solutions.lesson11.gelu\(\) .* are NaN or inf"):
        run_tiny_model(lesson_kernels.load("solutions"))


def test_lesson_blocks_replace_minisd_blocks(monkeypatch, capsys):
    """Exercise 11.3's resnet_block runs in place of minisd's (here a torch stand-in); 11.4's stub falls back."""
    calls = {"resnet_block": 0, "transformer_block": 0}

    def resnet_block(x, temb, p, groups, eps):
        calls["resnet_block"] += 1
        block = ResnetBlock2D(x.shape[1], p["conv1.weight"].shape[0], temb.shape[1], groups, eps)
        block.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()})
        with torch.no_grad():
            return block(torch.from_numpy(x), torch.from_numpy(temb)).numpy()

    def transformer_block(x, context, p, heads):
        calls["transformer_block"] += 1
        raise NotImplementedError("Exercise 11.4: transformer_block")

    fake_lesson(monkeypatch, "exercises", resnet_block=resnet_block, transformer_block=transformer_block)
    run_tiny_model(lesson_kernels.load("exercises"))
    assert calls == {"resnet_block": 1 + 8, "transformer_block": 1}, (
        calls
    )  # probe + 8 resnets of the tiny UNet
    out = capsys.readouterr().out
    assert "yours: resnet_block" in out and "minisd's run instead): transformer_block" in out


def test_nothing_to_run_is_an_error(monkeypatch):
    fake_lesson(monkeypatch, "exercises", linear=stub, gelu=stub)
    with pytest.raises(LessonKernelsError, match="implements none of minisd's ops yet"):
        lesson_kernels.load("exercises")
    monkeypatch.setitem(sys.modules, "exercises.lesson11", None)  # as if exercises/lesson11.py did not exist
    with pytest.raises(LessonKernelsError, match="exercises/lesson11.py does not exist"):
        lesson_kernels.load("exercises")
    with pytest.raises(ValueError, match="kernels must be one of"):
        lesson_kernels.load("mine")


def test_every_op_has_one_calling_convention():
    """Drift guard: the backends once took out= three ways. Every op the pipeline calls is an explicit method
    of Ops, and each backend (numpy, Numba, CuPy, a lesson's) has a function of that name taking Ops'
    arguments, then ``out``. (CuPy's file is read, not imported: it needs a GPU.)"""
    import ast
    import inspect
    import pathlib

    import minisd.ops
    from minisd.ops import numba, numpy_ops

    tree = ast.parse(pathlib.Path(minisd.ops.__file__).with_name("cupy_ops.py").read_text())
    cupy = {f.name: f.args for f in tree.body if isinstance(f, ast.FunctionDef)}
    for name in [n for n in lesson_kernels.OPS if n != "ddim_step"] + ["scheduler_step"]:
        assert name in Ops.__dict__, f"Ops has no method {name}"
        signatures = {
            "numpy": inspect.signature(getattr(numpy_ops, name)),
            "numba": inspect.signature(getattr(numba, name)),
            "lesson": inspect.signature(getattr(lesson_kernels.LessonKernels, name).__get__(object())),
        }
        params = {where: list(sig.parameters) for where, sig in signatures.items()}
        params["cupy"] = [a.arg for a in cupy[name].args] + [a.arg for a in cupy[name].kwonlyargs][:1]
        assert params["numpy"][-1] == "out", name
        assert signatures["numpy"].parameters["out"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert all(p == params["numpy"] for p in params.values()), f"{name}: {params}"


def test_the_reference_solutions_plug_in(capsys):
    """solutions/lesson11.py (Numba kernels: the simulator here) passes every probe."""
    ops, forward_class = lesson_kernels.load("solutions")
    out = capsys.readouterr().out
    assert "WRONG" not in out and "not implemented" not in out, out
    x = np.linspace(-4, 4, 37, dtype=np.float32).reshape(1, 37)
    assert_close(ops.gelu(x), NUMPY.gelu(x), 1e-6, "lesson gelu")
    w = np.random.default_rng(0).standard_normal((5, 37)).astype(np.float32)
    assert_close(ops.linear(x, w), x @ w.T, 1e-5, "lesson linear")


# ------------------------------------------------- CUDA graphs (minisd/cuda_graphs.py): what a CPU can check
# Capturing needs a GPU (tests/test_cuda_graphs.py); the choice of loop and the host's side of the ops do not.


def test_graphs_where_the_loop_can_be_captured(monkeypatch):
    """Graphs for the cupy and numba backends on a GPU with CuPy, unless graphs=False; the eager loop in the
    simulator (which cannot capture), on numpy and for a lesson's kernels (numpy in, numpy out)."""
    monkeypatch.setenv("MINISD_ALLOW_SIMULATOR", "1")
    config = tiny_config()
    state = state_of(random_model(config))
    if not mode.ON_GPU:
        assert MiniSDPipeline(state, config, backend="numba").graphs is None
    graphed = types.ModuleType("minisd.cuda_graphs")
    graphed.GraphedSampler = lambda sampler: ("graphs of", sampler)
    monkeypatch.setitem(sys.modules, "minisd.cuda_graphs", graphed)
    monkeypatch.setattr(mode, "has_cupy", lambda: True)  # as on a GPU machine
    pipe = MiniSDPipeline(state, config, backend="numba")
    assert pipe.graphs == ("graphs of", pipe.sampler)
    assert MiniSDPipeline(state, config, backend="numba", graphs=False).graphs is None
    assert MiniSDPipeline(state, config, backend="numpy").graphs is None
    fake_lesson(monkeypatch, gelu=lambda x: NUMPY.gelu(x))
    assert MiniSDPipeline(state, config, kernels="solutions", log=lambda *a: None).graphs is None


def test_a_warm_numba_sampler_leaves_the_host_alone(monkeypatch):
    """What a CUDA graph can hold, on the host's side (kernel launches recorded, not run: only the Python
    around them matters here): after one eager run, the prologue and the steps on Ops("numba") launch kernels
    on device arrays only (a numpy argument is copied both ways), copy nothing between host and device,
    synchronize nothing, and allocate only through set_allocator (on a GPU: the graph's memory pool)."""
    from numba.cuda.simulator import kernel as simulated
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from minisd.kernel_backend import cuda
    from minisd.ops import set_allocator

    if mode.ON_GPU:
        pytest.skip("records the simulator's launches; tests/test_cuda_graphs.py captures the real ones")
    monkeypatch.setenv("MINISD_ALLOW_SIMULATOR", "1")
    config = tiny_config()
    pipe = MiniSDPipeline(state_of(random_model(config)), config, backend="numba")
    plan = pipe.plan(2, 3, 3.0)
    ops = pipe.ops
    one_hot = ops.to_device(one_hot_tokens(tokenize(plan.prompt_rows(PROMPTS[:2])), len(VOCAB)))
    timestep_rows = ops.to_device(plan.timestep_rows())
    noise = ops.to_device(np.zeros(plan.noise_shape(config["unet"]["in_channels"]), np.float32))
    launches, allocated, host = [], [], []
    monkeypatch.setattr(simulated.FakeCUDAKernel, "__call__", lambda kernel, *args: launches.append(args))
    device_array = cuda.device_array

    def allocate(shape):
        allocated.append(shape)
        return device_array(shape, np.float32)

    def counted(name, fn):
        def call(*args, **kwargs):
            host.append(name)
            return fn(*args, **kwargs)

        return call

    def run():
        state = pipe.sampler.prologue(one_hot, timestep_rows, plan)
        x = noise
        for i in range(len(plan.timesteps)):
            x = pipe.sampler.step(i, x, state, plan)

    run()  # eager: what may happen once, before a capture (e.g. the placeholder for a missing bias)
    launches.clear()
    for where, names in (
        (cuda, ("to_device", "device_array", "device_array_like", "pinned_array", "synchronize")),
        (FakeCUDAArray, ("copy_to_host", "copy_to_device")),
    ):
        for name in names:
            monkeypatch.setattr(where, name, counted(name, getattr(where, name)))
    previous = set_allocator(allocate)
    try:
        run()
    finally:
        set_allocator(previous)
    assert host == [], f"host work in a step: { {name: host.count(name) for name in set(host)} }"
    assert len(launches) > 100 and len(allocated) > 50, (len(launches), len(allocated))
    on_host = [type(a).__name__ for args in launches for a in args if isinstance(a, np.ndarray) and a.ndim]
    assert on_host == [], f"kernels launched on host arrays: {on_host}"


# ------------------------------------------------------------------------------------ GPU (lead's H100 runs)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_gpu_backend_matches_numpy(small_weights, backend):
    """Same seed, same picture: numba and cupy in fp32 (eager, then CUDA-graph replays) against numpy (the half
    precision path against fp32: test_half_pipeline.py)."""
    if not mode.ON_GPU or (backend == "cupy" and not mode.has_cupy()):
        pytest.skip(f"backend {backend} needs a GPU" + (" and CuPy" if backend == "cupy" else ""))
    prompts = [
        PROMPT,
        "a small white star at the top on a purple background",
        "a big black heart right of a small orange triangle on a green background",
    ]
    ref = MiniSDPipeline.from_pretrained(small_weights, backend="numpy")(prompts, 10, 3.0, seed=5).astype(int)
    gpu = MiniSDPipeline.from_pretrained(small_weights, backend=backend, precision="fp32")
    for run in range(3):  # cupy: eager, capture + replay, replay
        got = gpu(prompts, 10, 3.0, seed=5).astype(int)
        diff = np.abs(got - ref)
        assert diff.max() <= 3, f"{backend} run {run}: max pixel difference {diff.max()}"
        assert (diff > 0).mean() < 0.01, f"{backend} run {run}: {(diff > 0).mean():.1%} pixels differ"
    other = gpu(prompts, 10, 3.0, seed=6)
    assert (other != gpu(prompts, 10, 3.0, seed=5)).mean() > 0.5, f"{backend}: the seed must reach the graphs"


@pytest.mark.gpu
@pytest.mark.skipif(not mode.has_cupy(), reason="needs a GPU with CuPy")
def test_schedulers_keep_cupy_arrays_on_the_device():
    """minisd.schedulers on CuPy arrays = on numpy arrays (which test_schedulers checks against diffusers)."""
    import cupy

    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(5)
    rng = np.random.default_rng(0)
    model_output, sample = (rng.standard_normal((2, 3, 5, 7)).astype(np.float32) for _ in range(2))
    t = scheduler.timesteps[1]
    got = scheduler.step(cupy.asarray(model_output), t, cupy.asarray(sample)).prev_sample
    assert isinstance(got, cupy.ndarray)
    assert_close(got, scheduler.step(model_output, t, sample).prev_sample, 1e-5, "cupy step")
    noisy = scheduler.add_noise(cupy.asarray(model_output), cupy.asarray(sample), cupy.asarray([3, 700]))
    assert isinstance(noisy, cupy.ndarray)
    want = scheduler.add_noise(model_output, sample, np.array([3, 700]))
    assert_close(noisy, want, 1e-6, "cupy add_noise")


def test_vocab_in_one_hot():
    ids = tokenize([PROMPT, PROMPTS[2]])
    assert ids.shape == (2, MAX_LENGTH) and (ids[1] != 0).all() and (ids[0] == 0).sum() == MAX_LENGTH - 11
    one_hot = one_hot_tokens(ids, len(VOCAB))
    assert one_hot.shape == (2, MAX_LENGTH, len(VOCAB) + MAX_LENGTH) == (2, 14, 44)
    np.testing.assert_array_equal(one_hot.sum(-1), 2.0)
    np.testing.assert_array_equal(one_hot[:, :, : len(VOCAB)].argmax(-1), ids)


def test_numpy_sampling_holds_blas_to_one_thread():
    """OpenBLAS threads spin while they wait: on a shared machine 2 threads ran 4.5-12x slower than 1
    (benchmarks/cpu_under_load.md)."""
    from threadpoolctl import threadpool_info

    with pipeline.host_threads("numpy"):
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(n == 1 for n in blas), f"BLAS thread pools inside host_threads: {blas}"
