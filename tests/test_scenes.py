"""minisd.scenes and minisd.text: the grammar, its errors, the drawing (inside, apart, where the prompt
says), the batch, the prompt distribution and the tokenizer."""

import itertools

import numpy as np
import pytest

from minisd import data, scenes, text


@pytest.fixture(scope="module")
def every_prompt():
    return list(scenes.all_prompts())


@pytest.fixture(scope="module")
def batch():
    return scenes.make_batch(600, np.random.default_rng(5))


def test_the_grammar_has_the_counted_prompts_each_once(every_prompt):
    objects = 2 * 7 * 5  # size x colour (not the background's) x shape, on each of the 8 backgrounds
    pairs = objects * (objects - 2)  # the second differs from the first in colour or shape (either size)
    assert len(every_prompt) == len(set(every_prompt)) == 8 * (objects * 5 + pairs * 4) == 155_120


def test_every_prompt_parses_back_to_itself(every_prompt):
    for prompt in every_prompt:
        assert scenes.parse(prompt).prompt == prompt


def test_the_vocabulary_is_exactly_the_grammars_words(every_prompt):
    used = {word for prompt in every_prompt for word in prompt.split()}
    assert text.VOCAB[0] == "<pad>" and len(set(text.VOCAB)) == len(text.VOCAB)
    assert set(text.VOCAB[1:]) == used
    assert text.MAX_LENGTH == max(len(prompt.split()) for prompt in every_prompt)


def test_parse_reads_every_field():
    scene = scenes.parse("a small red star left of a big blue circle on a white background")
    assert scene == scenes.Scene(
        "white",
        (scenes.Object("red", "star", "small", "left"), scenes.Object("blue", "circle", "big", "right")),
    )
    one = scenes.parse("a big green heart at the bottom on a black background")
    assert one == scenes.Scene("black", (scenes.Object("green", "heart", "big", "bottom"),))
    above = scenes.parse("a small white square above a small white circle on a red background")
    assert [o.place for o in above.objects] == ["top", "bottom"]


@pytest.mark.parametrize(
    "typed",
    [
        "A Big ORANGE star in the centre on a blue background.",
        "  an big orange\tstar in   the centre on an blue background ",
        "a big orange star in the centre on a blue background .",
    ],
)
def test_case_spacing_an_and_a_full_stop_do_not_matter(typed):
    assert scenes.parse(typed).prompt == "a big orange star in the centre on a blue background"


@pytest.mark.parametrize(
    "prompt, wanted",
    [
        (
            "a big pink star on the left on a white background",
            "word 3 is 'pink', but a colour goes there: red, orange",
        ),
        (
            "a red star in the centre on a white background",
            "word 2 is 'red', but a size goes there: small, big",
        ),
        ("a big star red on the left on a white background", "word 3 is 'star', but a colour goes there"),
        (
            "a big red star on a white background",
            "word 6 is 'a', but a place or a relation goes there: on the left",
        ),
        (
            "a big red star beside a small blue circle on a white background",
            "word 5 is 'beside', but a place",
        ),
        ("a big red star on the left on white background", "word 9 is 'white', but 'a' goes there"),
        ("a small red star left of", "ends after word 6 'of', but 'a' goes there"),
        ("a big red star on the left on a white", "ends after word 10 'white', but 'background' goes there"),
        ("a big red star on the left on a white background please", "word 12 'please' comes after the end"),
        (
            "a big red star left of a small red star on a white background",
            "word 10 'star' makes the second object",
        ),
        (
            "a big red star on the left on a red background",
            "word 3 'red' is the background's colour (word 10)",
        ),
        (
            "a small red star left of a big blue circle on a blue background",
            "word 9 'blue' is the background's",
        ),
        ("", "has no words; write a SIZE COLOR SHAPE PLACE on a COLOR background"),
    ],
)
def test_a_prompt_outside_the_grammar_is_refused_naming_the_word_and_what_fits(prompt, wanted):
    with pytest.raises(scenes.PromptError) as err:
        scenes.parse(prompt)
    message = str(err.value)
    assert wanted in message and "\n" not in message and message.startswith(f"prompt {prompt!r}")
    assert isinstance(err.value, ValueError)


def test_refusals_list_what_is_allowed_there():
    with pytest.raises(scenes.PromptError, match="another shape \\(circle, square, triangle, heart\\)"):
        scenes.parse("a big red star left of a small red star on a white background")
    with pytest.raises(
        scenes.PromptError, match="allowed there: orange, yellow, green, blue, purple, white, black$"
    ):
        scenes.parse("a big red star on the left on a red background")
    with pytest.raises(TypeError, match="a prompt is a str"):
        scenes.parse(None)


def masks_of(scenes_list, rng):
    _, masks = scenes.render(scenes_list, rng)
    return masks


def footprint(mask):
    """(first col, last col, first row, last row) of the pixels a mask touches at all."""
    ys, xs = np.nonzero(mask > 0)
    return xs.min(), xs.max(), ys.min(), ys.max()


class Extremes:
    """A stand-in for the generator's rng that always answers at one end of each range: the worst cases."""

    def __init__(self, high, split):
        self.high, self.split = high, split

    def uniform(self, low, high, size=None):
        return np.full(size, high if self.high else low) if size else (high if self.high else low)

    def dirichlet(self, alpha):
        return np.eye(len(alpha))[self.split]  # all the free room before, between or after the objects

    def integers(self, low, high, size=None):
        return np.full(size, high - 1 if self.high else low)


def layouts():
    """One scene per way of laying objects out: every shape, size and place; every pair of them and relation."""
    singles = [
        scenes.Scene("white", (scenes.Object("red", shape, size, place),))
        for shape, size, place in itertools.product(scenes.SHAPES, scenes.SIZES, scenes.PLACES)
    ]
    kinds = list(itertools.product(scenes.SHAPES, scenes.SIZES))
    pairs = [
        scenes.Scene(
            "white",
            (
                scenes.Object("red", shape, size, place),
                scenes.Object("blue", shape2, size2, scenes.OPPOSITE[place]),
            ),
        )
        for (shape, size), (shape2, size2), place in itertools.product(kinds, kinds, scenes.RELATIONS)
    ]
    return singles + pairs


@pytest.mark.parametrize(
    "rng",
    [np.random.default_rng(0), Extremes(True, 1), Extremes(True, 2), Extremes(False, 0)],
    ids=["random", "biggest-at-both-borders", "biggest-closest-together", "smallest-closest-together"],
)
def test_every_layout_stays_inside_apart_and_where_the_prompt_says(rng):
    margin, gap = (
        int(scenes.MARGIN),
        int(scenes.GAP) - 1,
    )  # whole pixels untouched, whatever the sub-pixel offset
    scene_list = layouts()
    masks = masks_of(scene_list, rng)
    assert masks.min() >= 0 and masks.sum(axis=1).max() <= 1 + 1e-6
    for scene, pair in zip(scene_list, masks, strict=True):
        boxes = [footprint(mask) for mask in pair[: len(scene.objects)]]
        for (x0, x1, y0, y1), obj in zip(boxes, scene.objects, strict=True):
            assert min(x0, y0) >= margin and max(x1, y1) < scenes.SIZE - margin, scene.prompt
            extent = max(x1 - x0, y1 - y0) + 1
            assert extent <= 17 if obj.size == "small" else extent >= 22, scene.prompt
        if len(boxes) == 1:
            x0, x1, y0, y1 = boxes[0]
            dx, dy = (x0 + x1 + 1) / 2 - 32, (y0 + y1 + 1) / 2 - 32  # box centre, from the middle
            along, across = {"left": (-dx, dy), "right": (dx, dy), "top": (-dy, dx), "bottom": (dy, dx)}.get(
                scene.objects[0].place, (None, None)
            )
            if along is None:
                assert max(abs(dx), abs(dy)) <= 5, scene.prompt
            else:
                assert along >= 10 and abs(across) <= 6, scene.prompt
        else:
            (ax0, ax1, ay0, ay1), (bx0, bx1, by0, by1) = boxes
            apart = {"left": bx0 - ax1, "right": ax0 - bx1, "top": by0 - ay1, "bottom": ay0 - by1}
            assert apart[scene.objects[0].place] > gap, scene.prompt  # and on the side the prompt says


def test_make_batch_layout_range_and_prompts(batch):
    images, prompts = batch
    assert images.shape == (600, 3, 64, 64) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len(prompts) == 600 and all(scenes.parse(p).prompt == p for p in prompts)


def test_the_prompt_distribution_covers_every_value(batch):
    parsed = [scenes.parse(p) for p in batch[1]]
    singles = [s for s in parsed if len(s.objects) == 1]
    objects = [o for s in parsed for o in s.objects]
    assert 0.4 <= len(singles) / len(parsed) <= 0.6, "one and two objects equally often"
    assert {s.background for s in parsed} == {o.color for o in objects} == set(data.COLORS)
    assert {o.shape for o in objects} == set(data.SHAPES) and {o.size for o in objects} == set(scenes.SIZES)
    assert {s.objects[0].place for s in singles} == set(scenes.PLACES)
    assert {s.objects[0].place for s in parsed if len(s.objects) == 2} == set(scenes.RELATIONS)
    assert all(o.color != s.background for s in parsed for o in s.objects)


def test_same_seed_same_batch_and_different_seeds_differ():
    a, pa = scenes.make_batch(6, np.random.default_rng(1))
    b, pb = scenes.make_batch(6, np.random.default_rng(1))
    c, pc = scenes.make_batch(6, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert pa == pb and pa != pc and not np.array_equal(a, c)


def test_draw_shows_the_colours_where_the_prompt_says():
    image = scenes.draw("a big red star on the left on a white background", np.random.default_rng(0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    pixels = image.astype(int)
    assert np.abs(pixels[0, 0] - data.COLORS["white"]).max() <= data.COLOR_JITTER + 1
    red = np.abs(pixels - data.COLORS["red"]).max(axis=-1) <= data.COLOR_JITTER + 1
    ys, xs = np.nonzero(red)
    assert red.sum() > 100 and xs.max() < 32 and abs(ys.mean() - 32) < 8
    with pytest.raises(scenes.PromptError, match="word 3 is 'pink'"):
        scenes.draw("a big pink star on the left on a white background", np.random.default_rng(0))


def test_edges_are_anti_aliased():
    image = scenes.draw("a big black circle in the centre on a white background", np.random.default_rng(3))
    grey = image[..., 0].astype(int)
    assert ((grey > 60) & (grey < 200)).sum() > 30, "a supersampled circle has a rim of partly covered pixels"


def test_tokenize_round_trips_to_the_canonical_prompt(batch):
    prompts = batch[1][:50]
    ids = text.tokenize(prompts)
    assert ids.dtype == np.int64 and ids.shape == (50, text.MAX_LENGTH)
    assert text.detokenize(ids) == prompts
    typed = text.tokenize("A Big ORANGE heart above  a small blue circle on an white background.")
    assert text.detokenize(typed) == ["a big orange heart above a small blue circle on a white background"]


def test_tokenize_ids_and_padding():
    v = text.VOCAB.index
    ids = text.tokenize(["a big red star on the left on a white background", ""])
    words = "a big red star on the left on a white background".split()
    assert ids[0].tolist() == [v(w) for w in words] + [0] * (text.MAX_LENGTH - len(words))
    assert (ids[1] == 0).all() and (text.tokenize("  ") == 0).all(), "the unconditional prompt is all <pad>"


def test_tokenize_refuses_what_parse_refuses():
    with pytest.raises(scenes.PromptError, match="word 3 is 'dragon'"):
        text.tokenize(["a big dragon star on the left on a white background"])
    with pytest.raises(TypeError, match="prompt 1 is a int"):
        text.tokenize(["", 3])
