"""minisd.checker against ground truth: fresh scenes read back as their prompts (>= 99 % per attribute,
>= 97 % blurred and noisy), lies are caught attribute by attribute, and hand-drawn pictures read right.

The checker shares no code with minisd.scenes, so this validates both at once: if either drew or measured a
scene wrongly, they would disagree here.
"""

import ast
import dataclasses
import inspect
import secrets
import warnings

import numpy as np
import pytest

from minisd import checker, data, scenes

ATTRIBUTES = ("shape", "color", "size", "place", "background")


@pytest.fixture(scope="module")
def fresh(request):
    """1000 scenes from a fresh seed each run (``pytest --seed N`` replays one; a failure prints it)."""
    seed = request.config.getoption("--seed")
    seed = secrets.randbits(32) if seed is None else seed
    print(f"test data: --seed {seed}")
    rng = np.random.default_rng(seed)
    images, prompts = scenes.make_batch(1000, rng)
    return data.to_uint8(images), prompts, rng


def blurred_and_noisy(images, rng):
    """A slight blur (the 3x3 binomial kernel, sd ~0.7 px) and then gaussian noise of sd 8 per channel."""
    x = np.pad(images.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    x = (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4
    x = (x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]) / 4
    return np.clip(np.rint(x + rng.normal(0, 8, x.shape)), 0, 255).astype(np.uint8)


def accuracy(images, prompts):
    scores = [checker.score(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
    misses = {key: [p for s, p in zip(scores, prompts, strict=True) if not s[key]] for key in ATTRIBUTES}
    return {key: 1 - len(missed) / len(prompts) for key, missed in misses.items()}, misses


def test_clean_scenes_read_back_at_least_99_percent_per_attribute(fresh):
    images, prompts, _ = fresh
    rates, misses = accuracy(images, prompts)
    for key in ATTRIBUTES:
        assert rates[key] >= 0.99, f"{key}: {rates[key]:.1%}, e.g. {misses[key][:3]}"


def test_blurred_noisy_scenes_read_back_at_least_97_percent_per_attribute(fresh):
    images, prompts, rng = fresh
    rates, misses = accuracy(blurred_and_noisy(images, rng), prompts)
    for key in ATTRIBUTES:
        assert rates[key] >= 0.97, f"{key}: {rates[key]:.1%}, e.g. {misses[key][:3]}"


def other(values, *avoid):
    return next(v for v in values if v not in avoid)


def lies(scene):
    """(attribute, a prompt that is wrong about exactly that attribute of ``scene``)."""
    first, *rest = scene.objects
    taken_colors = [scene.background, *(o.color for o in scene.objects)]

    def with_first(**change):
        return dataclasses.replace(scene, objects=(dataclasses.replace(first, **change), *rest)).prompt

    yield "color", with_first(color=other(data.COLORS, *taken_colors))
    yield "shape", with_first(shape=other(data.SHAPES, *(o.shape for o in scene.objects)))
    yield "size", with_first(size=other(scenes.SIZES, first.size))
    yield "background", dataclasses.replace(scene, background=other(data.COLORS, *taken_colors)).prompt
    if rest:
        for place in (
            scenes.OPPOSITE[first.place],
            other(scenes.RELATIONS, first.place, scenes.OPPOSITE[first.place]),
        ):
            moved = (
                dataclasses.replace(first, place=place),
                dataclasses.replace(rest[0], place=scenes.OPPOSITE[place]),
            )
            yield "place", dataclasses.replace(scene, objects=moved).prompt
    else:
        yield "place", with_first(place=other(scenes.PLACES, first.place))


def test_a_lie_about_one_attribute_fails_that_attribute_only(fresh):
    images, prompts, _ = fresh
    checked = set()
    for image, prompt in zip(images[:100], prompts[:100], strict=True):
        truth = checker.score(image, prompt)
        for attribute, lie in lies(scenes.parse(prompt)):
            said = checker.score(image, lie)
            assert not said[attribute], f"{lie!r} passed on {attribute} for an image of {prompt!r}"
            assert {k: v for k, v in said.items() if k != attribute} == {
                k: v for k, v in truth.items() if k != attribute
            }, (prompt, lie)
            checked.add((attribute, len(scenes.parse(prompt).objects)))
    assert checked == {(a, n) for a in ATTRIBUTES for n in (1, 2)}


def canvas(background):
    return np.full((64, 64, 3), data.COLORS[background], np.uint8)


def test_a_hand_drawn_square_and_circle():
    image = canvas("black")
    image[24:44, 6:26] = data.COLORS["yellow"]  # a 20 px square, left of ...
    yy, xx = np.mgrid[:64, :64] + 0.5
    image[(xx - 48) ** 2 + (yy - 34) ** 2 <= 6.5**2] = data.COLORS["red"]  # ... a 13 px circle
    seen = checker.read(image)
    assert seen["background"] == "black"
    assert [(o["color"], o["shape"], o["size"]) for o in seen["objects"]] == [
        ("yellow", "square", "big"),
        ("red", "circle", "small"),
    ]
    prompt = "a big yellow square left of a small red circle on a black background"
    assert checker.score(image, prompt) == dict.fromkeys(ATTRIBUTES, True)
    swapped = "a small red circle left of a big yellow square on a black background"
    assert checker.score(image, swapped) == dict.fromkeys(ATTRIBUTES, True) | {"place": False}


@pytest.mark.parametrize(
    "corner, place",
    [((20, 4), "left"), ((20, 40), "right"), ((4, 22), "top"), ((40, 22), "bottom"), ((22, 24), "centre")],
)
def test_the_place_of_a_hand_drawn_square(corner, place):
    image = canvas("white")
    y, x = corner
    image[y : y + 20, x : x + 20] = data.COLORS["blue"]
    (seen,) = checker.read(image)["objects"]
    assert seen["place"] == place and seen["shape"] == "square"


def test_a_flat_picture_has_no_objects_and_specks_are_not_objects():
    image = canvas("green")
    assert checker.read(image) == {"background": "green", "objects": []}
    image[10, 10] = image[40, 50:52] = data.COLORS["white"]
    assert checker.read(image)["objects"] == []
    wanted = dict.fromkeys(ATTRIBUTES, False) | {"background": True}
    assert checker.score(image, "a big red star on the left on a green background") == wanted


def test_any_picture_gets_an_answer_without_warnings():
    half = canvas("black")
    half[:, 32:] = 255  # the border's median is neither colour
    line = canvas("white")
    line[30:32, 30:60] = 20  # too thin to have corners
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for image in (half, line, noise):
            seen = checker.read(image)
            assert all(o["shape"] in checker.SHAPES for o in seen["objects"])
            assert set(checker.score(image, "a big red star on the left on a white background")) == set(
                ATTRIBUTES
            )


def test_blobs_are_4_connected_and_largest_first():
    mask = np.zeros((8, 8), bool)
    mask[1:6, 1] = mask[5, 1:5] = mask[1:6, 4] = True  # a U: its arms meet only around the bottom
    mask[6, 5] = mask[7, 6] = True  # two pixels touching the U and each other only at corners
    found = checker.blobs(mask)
    assert [blob.sum() for blob in found] == [12, 1, 1]
    assert found[0][1, 1] and found[0][1, 4]


def test_asked_for_reads_the_prompt_itself():
    asked = checker.asked_for(" A small red star LEFT OF an big blue circle on a white background.")
    assert asked == {
        "background": "white",
        "objects": [
            {"size": "small", "color": "red", "shape": "star"},
            {"size": "big", "color": "blue", "shape": "circle"},
        ],
        "place": "left of",
    }
    assert checker.asked_for("a big red star in the centre on a white background")["place"] == "centre"
    with pytest.raises(ValueError, match="is not a scene prompt"):
        checker.asked_for("a red star on a white background")


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match=r"uint8 \(64, 64, 3\)"):
        checker.read(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"uint8 \(64, 64, 3\)"):
        checker.read(np.zeros((3, 64, 64), np.uint8))


def test_the_checker_imports_nothing_of_minisd():
    tree = ast.parse(inspect.getsource(checker))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"re", "functools", "numpy"}


def test_its_own_tables_agree_with_the_generators():
    """Written out twice on purpose (independence); this catches the two drifting apart."""
    assert checker.PALETTE == data.COLORS and checker.SHAPES == scenes.SHAPES
    assert checker.SIZE == scenes.SIZE and checker.BORDER < scenes.MARGIN
    assert scenes.SIZES["small"][1] < checker.BIG_EXTENT < scenes.SIZES["big"][0]
    assert scenes.CENTRE_JITTER < checker.CENTRE_RADIUS < scenes.SIDE_OFFSET
