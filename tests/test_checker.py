"""minisd.checker against ground truth: fresh dataset images must read back as their prompts (>= 97 %).

The checker shares no code with minisd.data, so this validates both at once: if either drew or measured a
shape wrongly, they would disagree here.
"""

import numpy as np
import pytest

from minisd import checker, data


@pytest.fixture(scope="module")
def readings():
    images, prompts = data.make_batch(500, np.random.default_rng(2024))
    return [checker.check(img) for img in data.to_uint8(images)], prompts


@pytest.mark.parametrize("attribute, word", [("color", 1), ("shape", 2), ("background", 5)])
def test_at_least_97_percent_per_attribute(readings, attribute, word):
    seen, prompts = readings
    wrong = [(p, s[attribute]) for s, p in zip(seen, prompts, strict=True) if s[attribute] != p.split()[word]]
    assert 1 - len(wrong) / len(prompts) >= 0.97, f"{len(wrong)} misread, e.g. {wrong[:5]}"


def test_every_shape_is_recognised(readings):
    seen, prompts = readings
    for shape in data.SHAPES:
        hits = [s["shape"] == shape for s, p in zip(seen, prompts, strict=True) if p.split()[2] == shape]
        assert len(hits) > 50 and np.mean(hits) >= 0.95, shape


def test_survives_mild_noise():
    images, prompts = data.make_batch(200, np.random.default_rng(7))
    pixels = data.to_uint8(images).astype(np.float32)
    noisy = np.clip(pixels + np.random.default_rng(8).normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    shapes = [checker.check(img)["shape"] == p.split()[2] for img, p in zip(noisy, prompts, strict=True)]
    assert np.mean(shapes) >= 0.9


def test_flat_image_has_no_shape():
    img = np.full((32, 32, 3), (40, 80, 220), np.uint8)
    assert checker.check(img) == {"color": "blue", "background": "blue", "shape": "none"}


def test_hand_drawn_square():
    img = np.full((32, 32, 3), 20, np.uint8)  # black background
    img[9:23, 10:24] = (240, 220, 40)  # a yellow 14 x 14 square
    assert checker.check(img) == {"color": "yellow", "background": "black", "shape": "square"}


def test_speck_far_from_the_shape_is_ignored():
    img = np.full((32, 32, 3), 240, np.uint8)  # white background
    yy, xx = np.mgrid[:32, :32]
    img[(yy - 16) ** 2 + (xx - 15) ** 2 <= 49] = (40, 170, 60)  # green circle, radius 7
    img[3, 28] = (40, 170, 60)  # one stray pixel
    assert checker.check(img)["shape"] == "circle"


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match=r"uint8 \(32, 32, 3\)"):
        checker.check(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"uint8 \(32, 32, 3\)"):
        checker.check(np.zeros((3, 32, 32), np.uint8))


def test_convex_hull_of_a_square_with_inner_points():
    pts = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [1, 0]], float)
    hull = checker.convex_hull(pts)
    assert sorted(map(tuple, hull)) == [(0, 0), (0, 2), (2, 0), (2, 2)]
