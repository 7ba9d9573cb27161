"""minisd's training data, drawn on the fly: "a {color} {shape} on a {color} background", 32x32 RGB.

Every image is one filled shape on a flat background. Randomness makes the task worth learning: each
colour channel jitters by up to +-12, the shape's centre by up to +-3 px, its size from 40 % to 70 % of the
width. Edges are anti-aliased by supersampling: each pixel averages a 4x4 grid of sub-pixel samples, so
the model never learns jagged staircases.

    images, prompts = make_batch(256, np.random.default_rng(0))   # (256, 3, 32, 32) float32 in [-1, 1]
"""

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "heart")
PROMPT_FORMAT = "a {color} {shape} on a {background} background"

SIZE = 32
COLOR_JITTER = 12
CENTER_JITTER = 3.0
SIZE_RANGE = (0.4, 0.7)  # shape extent as a fraction of the image width
SUPERSAMPLE = 4

_RGB = np.array(list(COLORS.values()), dtype=np.float32)


# Each shape is a test "is (u, v) inside?" on coordinates scaled so the shape just fills the box
# [-1, 1] x [-1, 1]; v points down, like image rows.


def _circle(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _triangle(u, v):
    # Apex at the top centre, base along the bottom edge: the half-width grows from 0 to 1 going down.
    return (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)


_STAR_R = 1.0 / np.sin(np.radians(72))  # outer radius such that the star is exactly 2 wide
_STAR_INNER = 0.5  # inner/outer radius; 0.38 is the classic pentagram, a fatter star survives 32 px better
_STAR_SHIFT = _STAR_R * (1 - np.cos(np.radians(36))) / 2  # centres the star's box (its points reach higher)


def _star(u, v):
    # Fold every direction into one 36-degree wedge between an inner vertex (angle 0) and an outer
    # point (angle 36): inside means on the centre's side of the edge joining them.
    v = v - _STAR_SHIFT
    r = np.hypot(u, v)
    angle = np.degrees(np.arctan2(u, -v)) % 72.0  # 0 at the top point, clockwise
    phi = np.radians(np.abs(angle - 36.0))  # 36 at a point, 0 at an inner vertex
    x, y = r * np.cos(phi), r * np.sin(phi)
    x0, y0 = _STAR_INNER * _STAR_R, 0.0
    x1, y1 = _STAR_R * np.cos(np.radians(36)), _STAR_R * np.sin(np.radians(36))
    return (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0.0


# The classic heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3 (y up) spans x in [-1.139, 1.139], y in [-1, 1.236].
_HEART_SCALE, _HEART_SHIFT = 1.139, 0.118


def _heart(u, v):
    x, y = u * _HEART_SCALE, -v * _HEART_SCALE + _HEART_SHIFT
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


_INSIDE = {"circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "heart": _heart}


def _jittered(color_ids, rng):
    return _RGB[color_ids] + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, (len(color_ids), 3))


def render(shape_ids, fg, bg, centers, sizes):
    """Draw the shapes: (n,) shape indices, (n,3) RGB 0-255, (n,2) centres (x, y) in px, (n,) extents in px.

    Returns (n, 32, 32, 3) float32 RGB in 0-255.
    """
    n, s = len(shape_ids), SUPERSAMPLE
    sub = (np.arange(SIZE * s, dtype=np.float32) + 0.5) / s  # sub-pixel sample positions, in px
    coverage = np.zeros((n, SIZE * s, SIZE * s), dtype=np.float32)
    for k, name in enumerate(SHAPES):
        rows = np.flatnonzero(shape_ids == k)
        if rows.size == 0:
            continue
        half = (sizes[rows] / 2)[:, None, None]
        u = (sub[None, None, :] - centers[rows, 0, None, None]) / half
        v = (sub[None, :, None] - centers[rows, 1, None, None]) / half
        coverage[rows] = _INSIDE[name](u, v)
    alpha = coverage.reshape(n, SIZE, s, SIZE, s).mean(axis=(2, 4))[..., None]  # fraction of samples inside
    return bg[:, None, None, :] * (1 - alpha) + fg[:, None, None, :] * alpha


def make_batch(n, rng):
    """n random images and their prompts: ((n, 3, 32, 32) float32 in [-1, 1], list of n str)."""
    shape_ids = rng.integers(0, len(SHAPES), n)
    fg_ids = rng.integers(0, len(COLORS), n)
    bg_ids = (fg_ids + rng.integers(1, len(COLORS), n)) % len(COLORS)  # never the shape's own colour
    centers = SIZE / 2 + rng.uniform(-CENTER_JITTER, CENTER_JITTER, (n, 2))
    sizes = SIZE * rng.uniform(*SIZE_RANGE, n)
    rgb = render(shape_ids, _jittered(fg_ids, rng), _jittered(bg_ids, rng), centers, sizes)
    images = np.clip(rgb, 0, 255).transpose(0, 3, 1, 2) / 127.5 - 1.0
    names = list(COLORS)
    prompts = [
        PROMPT_FORMAT.format(color=names[f], shape=SHAPES[s], background=names[b])
        for f, s, b in zip(fg_ids, shape_ids, bg_ids, strict=True)
    ]
    return images.astype(np.float32), prompts


def to_uint8(images):
    """Model-space images (N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, the usual picture layout."""
    pixels = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
