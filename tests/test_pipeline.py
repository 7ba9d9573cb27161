"""minisd.pipeline and minisd.forward: the networks on the course's ops against the torch model (float64
oracle), the sampler's arithmetic against the scheduler, determinism, the lesson-kernel fallback.
(Speed is measured by `python -m minisd bench`, never asserted here: CI machines vary many-fold.)"""

import copy
import sys
import types

import numpy as np
import pytest
import torch

import minisd
import minisd.mode as mode
from minisd import forward, pipeline, weights
from minisd.model import MiniSD, ResnetBlock2D, default_config, timestep_embedding
from minisd.opset import OpSet
from minisd.pipeline import MiniSDPipeline, SamplingPlan, concat_batch, to_uint8
from minisd.schedulers import DDIMScheduler
from minisd.text import VOCAB, tokenize

PROMPTS = ["a red circle on a blue background", "", "a green star on a white background"]


def ragged_config():
    """Odd sizes everywhere: 3 heads, 2 layers per block, 12x12 images, non-default time embedding."""
    c = default_config()
    c["text_encoder"].update(hidden_size=24, num_layers=1, num_heads=3, intermediate_size=40)
    c["unet"].update(
        sample_size=12,
        block_out_channels=[16, 32, 48],
        layers_per_block=2,
        norm_num_groups=4,
        attention_head_dim=16,
        cross_attention_dim=24,
        time_proj_dim=16,
        flip_sin_to_cos=False,
        freq_shift=1,
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
        attention_head_dim=8,
        cross_attention_dim=8,
        time_proj_dim=8,
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


def assert_close(got, ref, what, tol=2e-5):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(1.0, np.abs(ref).max())
    err = np.abs(got - ref).max()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g} (largest value {scale:.3g})"


def forward_on(ops, model, config, sample, timesteps, ids):
    """Text encoder + UNet through ``ops`` -> (context, eps) as numpy."""
    p = forward.prepare_params(state_of(model), config, ops)
    one_hot = forward.one_hot_tokens(ids, config["text_encoder"]["vocab_size"])
    context = forward.text_encoder_forward(ops, p, config, ops.to_device(one_hot))
    temb = forward.time_projections(ops, p, config, ops.to_device(timesteps.astype(np.float32)))
    kv = forward.cross_attention_kv(ops, p, context)
    eps = forward.unet_forward(ops, p, config, ops.to_device(sample), temb, kv)
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
    size = config["unet"]["sample_size"]
    sample = rng.standard_normal((len(PROMPTS), 3, size, size)).astype(np.float32)
    timesteps = np.array([999, 421, 0], np.int64)
    return sample, timesteps, tokenize(PROMPTS)


@pytest.mark.parametrize("make_config", [default_config, ragged_config], ids=["minisd", "ragged"])
def test_numpy_forward_matches_torch_float64(make_config):
    config = make_config()
    model = random_model(config)
    sample, timesteps, ids = inputs(config)
    context, eps = forward_on(OpSet("numpy"), model, config, sample, timesteps, ids)
    ref_context, ref_eps = oracle(model, sample, timesteps, ids)
    assert_close(context, ref_context, "text encoder")
    assert_close(eps, ref_eps, "UNet")


@pytest.mark.slow
def test_numba_blocks_in_simulator_match_torch(monkeypatch):
    """Every op kind through the Numba backend: text encoder, time embedding, a ResNet block with a shortcut
    and a transformer block. (The whole tiny UNet takes ~150 s in the simulator: the GPU test covers it.)"""
    if mode.ON_GPU:
        pytest.skip("test_gpu_backends_match_numpy runs the whole UNet on the GPU")
    monkeypatch.setenv("MINISD_ALLOW_SIMULATOR", "1")
    config = tiny_config()
    model = random_model(config)
    ops = OpSet("numba")
    p = forward.prepare_params(state_of(model), config, ops)
    ids = tokenize(PROMPTS[:2])
    timesteps = np.array([999.0, 3.0], np.float32)
    x = np.random.default_rng(2).standard_normal((2, 8, 3, 5)).astype(np.float32)  # ragged on purpose

    context = forward.text_encoder_forward(
        ops, p, config, ops.to_device(forward.one_hot_tokens(ids, len(VOCAB)))
    )
    temb = forward.time_projections(ops, p, config, ops.to_device(timesteps))
    kv = forward.cross_attention_kv(ops, p, context)
    pre = "unet.down_blocks.1."
    h = forward.resnet_block(ops, p, pre + "resnets.0.", ops.to_device(x), temb, 4, 1e-5)
    out = forward.transformer_2d(ops, p, pre + "attentions.0.", h, kv, 4, heads=2)

    m = copy.deepcopy(model).double()
    with torch.no_grad():
        ref_context = m.text_encoder(torch.from_numpy(ids))
        u = m.unet
        ref_temb = u.time_embedding(timestep_embedding(torch.from_numpy(timesteps), 8).double())
        ref_h = u.down_blocks[1].resnets[0](torch.from_numpy(x).double(), ref_temb)
        ref_out = u.down_blocks[1].attentions[0](ref_h, ref_context)
    assert_close(ops.to_numpy(context), ref_context.numpy(), "text encoder (numba)")
    assert_close(ops.to_numpy(h), ref_h.numpy(), "ResNet block (numba)")
    assert_close(ops.to_numpy(out), ref_out.numpy(), "transformer block (numba)")


def test_prepared_params_have_canonical_strides():
    """Numba's device arrays (on a GPU) reject "contiguous" arrays whose size-1 axes have odd strides."""
    config = tiny_config()
    params = forward.prepare_params(state_of(random_model(config)), config, OpSet("numpy"))
    for key, value in params.items():
        canonical = tuple(int(np.prod(value.shape[i + 1 :])) * value.itemsize for i in range(value.ndim))
        assert value.strides == canonical, f"{key}: strides {value.strides}, expected {canonical}"


def test_ddim_step_op_matches_scheduler():
    """The pipeline steps with ops.ddim_step; it must be DDIMScheduler.step (itself checked against diffusers)."""
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    scheduler.set_timesteps(25)
    rng = np.random.default_rng(0)
    ops = OpSet("numpy")
    for t in scheduler.timesteps[[0, 1, 12, 24]]:
        sample, eps = (rng.standard_normal((2, 3, 5, 7)).astype(np.float32) for _ in range(2))
        a_t, a_prev = scheduler.alpha_prods(t)
        got = ops.ddim_step(sample, eps, a_t, a_prev, 0.0, None, True, 1.0)
        want = scheduler.step(eps, t, sample).prev_sample
        assert_close(got, want, f"t={t}", tol=1e-5 / a_t**0.5)


def test_concat_batch_and_uint8():
    ops = OpSet("numpy")
    a, b = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5), np.ones((2, 3, 4, 5), np.float32)
    np.testing.assert_array_equal(concat_batch(ops, a, b), np.concatenate([a, b]))
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
    prompts = ["a red circle on a blue background", "a yellow heart on a black background"]
    a = minisd.generate(prompts, num_inference_steps=3, seed=7, backend="numpy", weights_path=small_weights)
    b = minisd.generate(prompts, num_inference_steps=3, seed=7, backend="numpy", weights_path=small_weights)
    c = minisd.generate(prompts, num_inference_steps=3, seed=8, backend="numpy", weights_path=small_weights)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5, "a different seed should give different images"


def test_guidance_and_plan(small_weights):
    pipe = MiniSDPipeline.from_pretrained(small_weights, backend="numpy")
    plan = pipe.plan(2, 25, 3.0)
    assert isinstance(plan, SamplingPlan) and plan.rows == 4 and len(plan.timesteps) == 25
    assert plan.timesteps[0] == 999, "trailing spacing starts from pure noise"
    assert pipe.plan(2, 25, 1.0).rows == 2, "guidance 1 needs no unconditional rows"
    unguided = pipe("a red circle on a blue background", 2, guidance_scale=1.0)
    guided = pipe("a red circle on a blue background", 2, guidance_scale=5.0)
    assert unguided.shape == guided.shape == (1, 32, 32, 3) and (unguided != guided).any()


def test_bad_inputs_are_clear(small_weights):
    pipe = MiniSDPipeline.from_pretrained(small_weights, backend="numpy")
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        pipe("a red dog on a blue background")
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe("a red circle on a blue background", 0)
    with pytest.raises(ValueError, match="prompts is empty"):
        pipe([])
    for bad in (-0.5, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
            pipe("a red circle on a blue background", 1, guidance_scale=bad)
    with pytest.raises(ValueError, match="between 1 and num_train_timesteps=1000"):
        pipe("a red circle on a blue background", 1001)
    with pytest.raises(weights.WeightsError, match="no minisd weights"):
        MiniSDPipeline.from_pretrained(small_weights.parent / "missing.safetensors")
    with pytest.raises(ValueError, match="kernels must be one of"):
        OpSet("numpy", kernels="mine")
    with pytest.raises(ValueError, match="unknown backend"):
        minisd.generate("a red circle on a blue background", backend="tpu")


def test_lesson_kernels_replace_ops_and_fall_back(monkeypatch, capsys):
    """kernels="solutions": the lesson's functions run; NotImplementedError -> minisd's op, with one note."""
    calls = {"gelu": 0, "linear": 0}

    def gelu(x):
        calls["gelu"] += 1
        return minisd.ops.gelu(x, backend="numpy")

    def linear(x, weight, bias=None):
        calls["linear"] += 1
        raise NotImplementedError("Exercise 11.2")

    lesson = types.ModuleType("solutions.lesson11")
    lesson.gelu, lesson.linear = gelu, linear
    monkeypatch.setitem(sys.modules, "solutions.lesson11", lesson)
    config = tiny_config()
    model = random_model(config)
    sample, timesteps, ids = inputs(config)
    ops = OpSet("numpy", kernels="solutions")
    context, eps = forward_on(ops, model, config, sample, timesteps, ids)
    ref_context, ref_eps = oracle(model, sample, timesteps, ids)
    assert_close(eps, ref_eps, "UNet with lesson kernels")
    assert calls["gelu"] > 0 and calls["linear"] == 1, calls
    assert ops.lesson_ran == {"gelu"}, "the CLI refuses a run where this stays empty"
    out = capsys.readouterr().out
    assert out.count("solutions.lesson11.linear() is not implemented yet") == 1
    assert "using solutions.lesson11 for gelu, linear" in out
    assert "solutions.lesson11 has no add, attention" in out


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

    lesson = types.ModuleType("exercises.lesson11")
    lesson.resnet_block, lesson.transformer_block = resnet_block, transformer_block
    monkeypatch.setitem(sys.modules, "exercises.lesson11", lesson)
    config = tiny_config()
    model = random_model(config)
    sample, timesteps, ids = inputs(config)
    ops = OpSet("numpy", kernels="exercises")
    _, eps = forward_on(ops, model, config, sample, timesteps, ids)
    assert_close(eps, oracle(model, sample, timesteps, ids)[1], "UNet with a lesson's resnet_block")
    assert calls == {"resnet_block": 8, "transformer_block": 1}, calls  # 8 resnets in the tiny UNet
    assert ops.lesson_ran == {"resnet_block"}
    out = capsys.readouterr().out
    assert "using exercises.lesson11 for resnet_block, transformer_block" in out
    assert out.count("transformer_block() is not implemented yet") == 1


def test_missing_lesson_module_falls_back(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "exercises.lesson11", None)  # as if exercises/lesson11.py did not exist
    ops = OpSet("numpy", kernels="exercises")
    assert "exercises.lesson11 does not exist yet" in capsys.readouterr().out
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    np.testing.assert_array_equal(ops.gelu(x), minisd.ops.gelu(x, backend="numpy"))


def test_real_lesson_module_plugs_in(capsys):
    """solutions/lesson11.py (Numba kernels: the simulator here) runs where minisd's op would."""
    ops = OpSet("numpy", kernels="solutions")
    assert "using solutions.lesson11 for" in capsys.readouterr().out
    x = np.linspace(-4, 4, 37, dtype=np.float32).reshape(1, 37)
    assert_close(ops.gelu(x), minisd.ops.gelu(x, backend="numpy"), "lesson gelu", 1e-6)
    w = np.random.default_rng(0).standard_normal((5, 37)).astype(np.float32)
    assert_close(ops.linear(x, w), x @ w.T, "lesson linear", 1e-5)


# ------------------------------------------------------------------------------------ GPU (lead's H100 runs)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_gpu_backend_matches_numpy(small_weights, backend):
    """Same seed, same picture: numba and cupy (eager, then CUDA-graph replays) against numpy."""
    if not mode.ON_GPU or (backend == "cupy" and not mode.has_cupy()):
        pytest.skip(f"backend {backend} needs a GPU" + (" and CuPy" if backend == "cupy" else ""))
    prompts = [
        "a red circle on a blue background",
        "a white star on a purple background",
        "a black heart on a green background",
    ]
    ref = MiniSDPipeline.from_pretrained(small_weights, backend="numpy")(prompts, 10, 3.0, seed=5).astype(int)
    gpu = MiniSDPipeline.from_pretrained(small_weights, backend=backend)
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
    assert_close(cupy.asnumpy(got), scheduler.step(model_output, t, sample).prev_sample, "cupy step", 1e-5)
    noisy = scheduler.add_noise(cupy.asarray(model_output), cupy.asarray(sample), cupy.asarray([3, 700]))
    assert isinstance(noisy, cupy.ndarray)
    want = scheduler.add_noise(model_output, sample, np.array([3, 700]))
    assert_close(cupy.asnumpy(noisy), want, "cupy add_noise", 1e-6)


def test_vocab_in_one_hot():
    ids = tokenize(["a red circle on a blue background"])
    one_hot = forward.one_hot_tokens(ids, len(VOCAB))
    assert one_hot.shape == (1, 8, len(VOCAB) + 8)
    np.testing.assert_array_equal(one_hot.sum(-1), 2.0)
    np.testing.assert_array_equal(one_hot[0, :, : len(VOCAB)].argmax(-1), ids[0])


def test_numpy_sampling_holds_blas_to_one_thread():
    """OpenBLAS threads spin while they wait: on a shared machine 2 threads ran 4.5-12x slower than 1
    (benchmarks/cpu_under_load.md)."""
    from threadpoolctl import threadpool_info

    with pipeline.host_threads("numpy"):
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(n == 1 for n in blas), f"BLAS thread pools inside host_threads: {blas}"
