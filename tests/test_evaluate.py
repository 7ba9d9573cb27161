"""minisd.evaluate: prompts, scoring, the exit code, and (on a GPU) the real gate on the trained weights."""

import dataclasses

import numpy as np
import pytest

import minisd.mode as mode
from minisd import data, evaluate, scenes, text

PERFECT = dict.fromkeys(evaluate.ATTRIBUTES, 1.0)


def test_random_prompts_are_valid_and_varied():
    prompts = evaluate.random_prompts(300, np.random.default_rng(0))
    assert all(text.check_prompt(p) == p for p in prompts), "canonical sentences of the grammar"
    drawn = [scenes.parse(p) for p in prompts]
    objects = [o for scene in drawn for o in scene.objects]
    assert all(o.color != scene.background for scene in drawn for o in scene.objects)
    assert {o.shape for o in objects} == set(data.SHAPES) and {o.size for o in objects} == set(scenes.SIZES)
    assert {o.color for o in objects} == set(data.COLORS) == {scene.background for scene in drawn}
    singles = [scene for scene in drawn if len(scene.objects) == 1]
    pairs = [scene for scene in drawn if len(scene.objects) == 2]
    assert 100 < len(singles) < 200, "one or two objects, about equally often"
    assert {scene.objects[0].place for scene in singles} == set(scenes.PLACES)
    assert {scene.objects[0].place for scene in pairs} == set(scenes.RELATIONS)
    assert prompts == evaluate.random_prompts(300, np.random.default_rng(0))
    assert prompts != evaluate.random_prompts(300, np.random.default_rng(1))


def _lie(scene, about):
    """The scene with its first object's size, or the place (or relation) of its objects, turned around."""
    first, *rest = scene.objects
    if about == "size":
        first = dataclasses.replace(first, size={"small": "big", "big": "small"}[first.size])
    else:
        turn = scenes.OPPOSITE | {"centre": "left"}
        first, rest = (
            dataclasses.replace(first, place=turn[first.place]),
            [dataclasses.replace(o, place=turn[o.place]) for o in rest],
        )
    return dataclasses.replace(scene, objects=(first, *rest))


def test_score_is_perfect_on_the_dataset_and_counts_each_attribute():
    images, prompts = scenes.make_batch(40, np.random.default_rng(3))
    pixels = data.to_uint8(images)
    assert pixels.shape == (40, 64, 64, 3)
    assert evaluate.score(pixels, prompts) == PERFECT
    assert list(evaluate.score(pixels, prompts)) == list(evaluate.ATTRIBUTES)
    # Lie about one attribute on half of the prompts: only that attribute's score may drop, to one half.
    for about in ("size", "place"):
        lied = [_lie(scenes.parse(p), about).prompt if i % 2 else p for i, p in enumerate(prompts)]
        assert evaluate.score(pixels, lied) == PERFECT | {about: 0.5}, about
    # Another background word on every prompt (one the objects do not have): only the background drops.
    other = [
        scenes.Scene(
            next(c for c in data.COLORS if c not in {s.background, *(o.color for o in s.objects)}), s.objects
        )
        for s in map(scenes.parse, prompts)
    ]
    assert evaluate.score(pixels, [s.prompt for s in other]) == PERFECT | {"background": 0.0}


def test_main_exits_non_zero_below_the_pass_mark(monkeypatch, capsys):
    import minisd

    def blank(prompts, seed, **options):  # a "model" that draws nothing: flat grey pictures
        return np.full((len(prompts), 64, 64, 3), 128, np.uint8)

    monkeypatch.setattr(minisd, "generate", blank, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--num-images", "5", "--backend", "numpy"])
    assert exit_info.value.code == 1
    assert "BELOW 90%" in capsys.readouterr().out


def fake_generate(calls):
    """A "model" that draws nothing, reports its steps like minisd.generate, and records each call."""

    def generate(prompts, seed, progress=None, **options):
        calls.append((len(prompts), options))
        steps = options["num_inference_steps"]
        for i in range(steps):
            progress(i, steps)
        return np.full((len(prompts), 64, 64, 3), 128, np.uint8)

    return generate


def test_cpu_default_progress_bar_and_the_backend_used(monkeypatch, capsys):
    import minisd

    calls = []
    monkeypatch.setattr(minisd, "generate", fake_generate(calls), raising=False)
    with pytest.raises(SystemExit):
        evaluate.main(["--backend", "numpy", "--batch-size", "10", "--steps", "3"])
    out, err = capsys.readouterr()
    assert [n for n, _ in calls] == [10, evaluate.CPU_IMAGES - 10], "a CPU-sized default, in batches"
    assert calls[0][1]["backend"] == "numpy"
    assert out.startswith(f"scoring {evaluate.CPU_IMAGES} images, 3 steps, guidance 1.5, numpy on the CPU")
    assert "sampling" in err and f"{evaluate.CPU_IMAGES}/{evaluate.CPU_IMAGES}" in err.replace(".0/", "/")


def test_one_image_is_singular(monkeypatch, capsys):
    import minisd

    monkeypatch.setattr(minisd, "generate", fake_generate([]), raising=False)
    with pytest.raises(SystemExit):
        evaluate.main(["--backend", "numpy", "--num-images", "1", "--steps", "1"])
    out = capsys.readouterr().out
    assert out.startswith("scoring 1 image, 1 step,") and "1 image in" in out and "1 images" not in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-images", "1000000000000"], "--num-images must be at most 10000"),
        (["--num-images", "0"], "--num-images must be at least 1"),
        (["--steps", "5000"], "--steps must be at most 1000, the timesteps this model was trained on"),
        (["--guidance", "1e39"], "--guidance must be a number from 0 to 100"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--weights", ""], "--weights is empty"),
    ],
)
def test_bad_options_are_refused_before_sampling(monkeypatch, capsys, args, message):
    import minisd

    calls = []
    monkeypatch.setattr(minisd, "generate", fake_generate(calls), raising=False)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--backend", "numpy", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and message in err, err
    assert calls == []


@pytest.mark.gpu
@pytest.mark.skipif(not mode.ON_GPU, reason="needs a CUDA GPU")
def test_trained_weights_follow_prompts_on_the_gpu():
    """The real gate: 200 images from minisd/weights with the course's kernels, >= 90 % on every attribute."""
    assert evaluate.main(["--num-images", "200", "--guidance", "1.5"]) == 0


@pytest.mark.slow
def test_shipped_weights_follow_prompts_with_numpy():
    """The trained weights, through the course's numpy kernels: 8 random prompts (one or two objects), at most
    one image wrong on any attribute (an untrained model gets nearly all of them wrong)."""
    import minisd

    prompts = evaluate.random_prompts(8, np.random.default_rng(42))
    images = minisd.generate(prompts, num_inference_steps=25, guidance_scale=1.5, seed=0, backend="numpy")
    assert images.shape == (8, 64, 64, 3)
    accuracy = evaluate.score(images, prompts)
    assert list(accuracy) == list(evaluate.ATTRIBUTES) and min(accuracy.values()) >= 7 / 8, accuracy


def test_several_guidance_scales_in_one_run(monkeypatch, capsys):
    """How the default guidance is chosen: every scale on the same prompts and seeds, by the shipped loop."""
    import minisd

    asked = []
    images, prompts = scenes.make_batch(6, np.random.default_rng(0))
    pixels = data.to_uint8(images)

    def dataset_pictures(batch, seed, guidance_scale, **options):  # seed = the batch's first index here
        asked.append((guidance_scale, seed, len(batch)))
        drawn = pixels[seed : seed + len(batch)]
        return drawn if guidance_scale == 1.5 else np.full_like(drawn, 128)  # only 1.5 draws anything

    monkeypatch.setattr(minisd, "generate", dataset_pictures, raising=False)
    monkeypatch.setattr(evaluate, "random_prompts", lambda n, rng: prompts)
    assert evaluate.main(["--num-images", "6", "--batch-size", "4", "--guidance", "1", "1.5", "3"]) == 0
    assert asked == [(g, s, n) for g in (1.0, 1.5, 3.0) for s, n in ((0, 4), (4, 2))]
    assert "guidance scales that pass on every attribute: 1.5" in capsys.readouterr().out
