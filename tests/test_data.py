"""minisd.data: the procedural dataset matches the spec (ranges, colours, prompts, anti-aliasing)."""

import numpy as np
import pytest

from minisd import data


@pytest.fixture(scope="module")
def batch():
    return data.make_batch(200, np.random.default_rng(123))


def test_layout_dtype_and_range(batch):
    images, prompts = batch
    assert images.shape == (200, 3, 32, 32) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len(prompts) == 200 and all(isinstance(p, str) for p in prompts)


def test_prompts_follow_the_format(batch):
    for prompt in batch[1]:
        words = prompt.split()
        assert len(words) == 7 and words[0] == "a" and words[3:5] == ["on", "a"] and words[6] == "background"
        assert words[1] in data.COLORS and words[5] in data.COLORS and words[2] in data.SHAPES
        assert words[1] != words[5], "the shape colour must differ from the background"
        assert prompt == data.PROMPT_FORMAT.format(color=words[1], shape=words[2], background=words[5])


def test_every_colour_and_shape_occurs(batch):
    words = [p.split() for p in batch[1]]
    assert {w[2] for w in words} == set(data.SHAPES)
    assert {w[1] for w in words} == set(data.COLORS) == {w[5] for w in words}


def test_colours_are_jittered_spec_centres(batch):
    pixels = data.to_uint8(batch[0]).astype(int)
    for image, prompt in zip(pixels, batch[1], strict=True):
        words = prompt.split()
        corner = image[0, 0]  # shapes never reach the corners
        assert np.abs(corner - data.COLORS[words[5]]).max() <= data.COLOR_JITTER + 1
        # The pixel least like the background is fully inside the shape (every shape is >= 12 px wide).
        inside = image.reshape(-1, 3)[np.abs(image - corner).sum(-1).argmax()]
        assert np.abs(inside - data.COLORS[words[1]]).max() <= data.COLOR_JITTER + 1, prompt


def test_shapes_are_centred_and_sized():
    for shape_id, name in enumerate(data.SHAPES):
        fg, bg = np.array([[255.0, 255, 255]]), np.array([[0.0, 0, 0]])
        size = data.SIZE * 0.5
        img = data.render(np.array([shape_id]), fg, bg, np.array([[16.0, 16.0]]), np.array([size]))[0, ..., 0]
        ys, xs = np.nonzero(img > 127)
        assert abs(xs.mean() - 15.5) < 1.0, name  # horizontally symmetric about the centre
        assert 0.8 * size <= xs.max() - xs.min() + 1 <= size + 1, name
        assert 0.8 * size <= ys.max() - ys.min() + 1 <= size + 1, name


def test_edges_are_anti_aliased():
    fg, bg = np.array([[255.0, 255, 255]]), np.array([[0.0, 0, 0]])
    img = data.render(np.array([0]), fg, bg, np.array([[16.3, 15.8]]), np.array([20.0]))[0, ..., 0]
    partial = (img > 5) & (img < 250)
    assert partial.sum() > 20, "a supersampled circle has a rim of partly covered pixels"


def test_same_seed_same_batch_and_different_seeds_differ():
    a, pa = data.make_batch(8, np.random.default_rng(1))
    b, pb = data.make_batch(8, np.random.default_rng(1))
    c, _ = data.make_batch(8, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert pa == pb and not np.array_equal(a, c)


def test_to_uint8_round_trips():
    images, _ = data.make_batch(4, np.random.default_rng(0))
    pixels = data.to_uint8(images)
    assert pixels.shape == (4, 32, 32, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels.transpose(0, 3, 1, 2) / 127.5 - 1, images, atol=1 / 127.5)
