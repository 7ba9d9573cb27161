"""Does a 64x64 scene show what its prompt asked for? A rule-based judge of one- and two-object scenes.

It shares no code with minisd.scenes (which draws the scenes and parses their prompts) or minisd.data: it
measures the picture like a person with a ruler, so a bug in the generator or its parser ("left of" drawn
and read the wrong way round, say) cannot hide behind the same bug here. The colour table, the word lists
and the sizes below are written out again on purpose.

1. Background: the median of the outer BORDER px ring (objects never reach it), nearest reference colour.
2. Objects: the pixels at least MIN_CONTRAST from the background, split into 4-connected blobs (noise can
   bridge a narrow gap diagonally far more easily than edge to edge); blobs under MIN_AREA px are specks.
3. Each object's colour: the median of its most distinct pixels, nearest reference colour. Its coverage:
   how far each pixel near it lies on the line from the background to that colour (0..1), so the
   anti-aliased rim counts in fractions and the measurements below are sub-pixel accurate.
4. Size: the side of its bounding box (width or height, whichever is longer) against BIG_EXTENT. Not the
   area: a big star covers fewer pixels than a small square.
5. Shape, from three size-free measurements of where its mass sits and how its width changes from top to
   bottom (``measure``), one threshold at a time (``classify_shape``).
6. Place: one object, the region of its box centre (within CENTRE_RADIUS of the middle, else the side it
   leans to most); two objects, the relation of their centres along the axis they differ most on.

The prompt comes as text, read by this module's own regular expressions rather than as minisd.scenes.parse's
Scene (or fields a caller parsed): whoever calls score can hand it exactly what the model was given, and the
meaning of every word is decided twice, independently.

    read(image)   ->  {"background": "white", "objects": [{"color", "shape", "size", "centre", "place"}, ...]}
    score(image, "a small red star left of a big blue circle on a white background")
                  ->  {"shape": True, "color": True, "size": True, "place": True, "background": True}
"""

import re
from functools import reduce

import numpy as np

PALETTE = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
_PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.float32)
SHAPES = ("circle", "square", "triangle", "star", "heart")
SIZE = 64
BORDER = 2  # px: the ring read for the background (objects stay 3 px clear of the edge)
MIN_CONTRAST = 30.0  # RGB distance from the background: nearer is background, or noise on it
MIN_AREA = 20  # px: the smallest object (a 12 px star) has about 70
# px: drawn 12-16 and 22-26 px wide; measured 9.7-17.1 and 19.5-26.9 (a star's thin points read short)
BIG_EXTENT = 18.0
CENTRE_RADIUS = 7.5  # px from the middle, in x and in y: "in the centre" (drawn within 4, sides 11 or more)
CORNER = 0.2  # the corners of a box: this fraction of its width by this fraction of its height
# Shape thresholds (classify_shape), about halfway between the ranges measured on 4000 clean and 4000 blurred,
# noisy scenes (benchmarks/scenes.md):
DROP_TRIANGLE = 0.075  # triangles 0.09-0.16; the other shapes 0.06 or less
SHOULDER_STAR = 0.45  # stars 0.16-0.38; circles, hearts, squares 0.53 or more (triangles are out by now)
TAPER_HEART = 0.8  # hearts 0.53-0.67; circles and squares 0.9 or more
CORNERS_SQUARE = 0.44  # squares 0.53 or more; circles 0.35 or less, also when drawn without anti-aliasing


def nearest_color(rgb):
    return list(PALETTE)[int(np.argmin(np.linalg.norm(_PALETTE_RGB - np.asarray(rgb), axis=1)))]


def background_rgb(img):
    ring = np.ones(img.shape[:2], bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    return np.median(img[ring].astype(np.float32), axis=0)


def _grow(mask):
    """``mask`` and its 8 neighbours."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])


_CROSS = ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2))  # a pixel and its 4 neighbours, as offsets into the padding


def blobs(mask):
    """The 4-connected components of a boolean mask, as boolean masks, largest first.

    Every pixel starts labelled with its own (1-based) index; each step it takes the largest label among
    itself and its neighbours, then the label of the pixel its label names (labels only grow, and that one
    has grown further). A handful of whole-image numpy steps instead of a flood fill pixel by pixel."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.int64)  # a ring of 0 (no label) around the image
    labels = padded[1:-1, 1:-1]
    labels[...] = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        grown = reduce(np.maximum, [padded[i : i + h, j : j + w] for i, j in _CROSS]) * mask
        by_index = np.concatenate([[0], grown.ravel()])
        grown = by_index[grown]
        if np.array_equal(grown, labels):
            break
        labels[...] = grown
    found = [labels == label for label in np.unique(labels[mask])]
    return sorted(found, key=lambda blob: -blob.sum())


def _width_at(widths, top, height, fraction):
    """Row width (sum of coverage) at ``fraction`` of the way down from ``top`` (px), between row centres."""
    return float(np.interp(top + fraction * height - 0.5, np.arange(len(widths)), widths))


def _near_the_ends(at, start, length):
    """Which pixel centres ``at`` lie inside [start, start + length] but within CORNER of its length of an end."""
    position = (at - start) / length  # 0..1 inside
    return (position > 0) & (position < 1) & (np.abs(position - 0.5) > 0.5 - CORNER)


def measure(img, bg, blob):
    """One object: its colour, box centre and extent (px), and the size-free features that tell its shape
    (None if no pixel of the blob is clearly of one colour).

    drop     = (centroid - box centre) / box height: + when the mass sits low (a triangle +0.15, a heart -0.06)
    taper    = width 80 % of the way down / width 20 % down: a triangle ~3.3, a star ~2.4, a heart ~0.6
    shoulder = width 12 % down / width halfway: a square 1, a circle 0.64, a star (one point) 0.2
    corners  = mean coverage in the box's four corners (CORNER of its width and height): a square ~0.9,
               a circle ~0.15"""
    pixels = img.astype(np.float32)
    dist = np.linalg.norm(pixels - bg, axis=-1)
    inner = blob & (dist >= 0.8 * np.percentile(dist[blob], 90))  # its own colour, not the blended rim
    fg = np.median(pixels[inner], axis=0)
    direction = fg - bg
    alpha = np.clip(((pixels - bg) @ direction) / max(direction @ direction, 1.0), 0.0, 1.0) * _grow(blob)
    if not (alpha > 0.5).any():
        return None  # no pixel is clearly of one colour: a smear (two colours averaging out), not an object
    rows, cols, widths = alpha.max(axis=1), alpha.max(axis=0), alpha.sum(axis=1)
    height, width = rows.sum(), cols.sum()  # sub-pixel: a half-covered edge row counts one half
    at = np.arange(SIZE) + 0.5  # pixel centres
    centre = ((cols * at).sum() / width, (rows * at).sum() / height)  # of the box, not of the mass
    top, left = centre[1] - height / 2, centre[0] - width / 2
    corners = _near_the_ends(at, top, height)[:, None] & _near_the_ends(at, left, width)[None, :]
    return {
        "color": nearest_color(fg),
        "centre": (float(centre[0]), float(centre[1])),
        "extent": float(max(width, height)),
        "drop": float(((widths * at).sum() / widths.sum() - centre[1]) / height),
        "taper": _width_at(widths, top, height, 0.8) / max(_width_at(widths, top, height, 0.2), 1e-6),
        "shoulder": _width_at(widths, top, height, 0.12) / max(_width_at(widths, top, height, 0.5), 1e-6),
        "corners": float(alpha[corners].mean()) if corners.any() else 0.0,  # none in a box under 3 px
    }


def classify_shape(features):
    """The shape, by one feature per step, each threshold halfway between the shapes it separates (measured on
    clean and on blurred, noisy scenes: benchmarks/scenes.md)."""
    if features["drop"] > DROP_TRIANGLE:
        return "triangle"
    if features["shoulder"] < SHOULDER_STAR:
        return "star"
    if features["taper"] < TAPER_HEART:
        return "heart"
    return "square" if features["corners"] > CORNERS_SQUARE else "circle"


def region(centre):
    """Where a lone object sits: "centre", or the side ("left", "right", "top", "bottom") it leans to most."""
    dx, dy = centre[0] - SIZE / 2, centre[1] - SIZE / 2
    if max(abs(dx), abs(dy)) < CENTRE_RADIUS:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def relation(first, second):
    """How the first centre sits relative to the second, along the axis they differ most on."""
    dx, dy = second[0] - first[0], second[1] - first[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def read(img):
    """uint8 (64, 64, 3) -> {"background", "objects": [{"color", "shape", "size", "centre", "place"}, ...]}."""
    img = np.asarray(img)
    if img.shape != (SIZE, SIZE, 3) or img.dtype != np.uint8:
        raise ValueError(f"read() wants a uint8 (64, 64, 3) RGB image, got {img.dtype} {img.shape}")
    bg = background_rgb(img)
    far = np.linalg.norm(img.astype(np.float32) - bg, axis=-1) >= MIN_CONTRAST
    objects = []
    for blob in blobs(far):
        if blob.sum() < MIN_AREA:
            break  # largest first: the rest are specks too
        features = measure(img, bg, blob)
        if features is None:
            continue
        objects.append(
            {
                "color": features["color"],
                "shape": classify_shape(features),
                "size": "big" if features["extent"] >= BIG_EXTENT else "small",
                "centre": features["centre"],
                "place": region(features["centre"]),
            }
        )
    return {"background": nearest_color(bg), "objects": objects}


_COLOR, _SHAPE = "|".join(PALETTE), "|".join(SHAPES)
_OBJECT = rf"a (small|big) ({_COLOR}) ({_SHAPE})"
_PLACES = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the centre": "centre",
}
_ONE = re.compile(rf"{_OBJECT} ({'|'.join(_PLACES)}) on a ({_COLOR}) background")
_TWO = re.compile(rf"{_OBJECT} (left of|right of|above|below) {_OBJECT} on a ({_COLOR}) background")


def asked_for(prompt):
    """A scene prompt -> {"background", "objects": [{"size", "color", "shape"}, ...], "place"}.

    "place" is a region for one object ("left", ...), the relation of the first to the second for two
    ("left of", ...). Its own regular expressions, not minisd.scenes.parse: see the module docstring."""
    text = re.sub(r"\ban\b", "a", " ".join(prompt.lower().strip().removesuffix(".").split()))
    if one := _ONE.fullmatch(text):
        size, color, shape, place, background = one.groups()
        return {
            "background": background,
            "objects": [dict(size=size, color=color, shape=shape)],
            "place": _PLACES[place],
        }
    if two := _TWO.fullmatch(text):
        size, color, shape, rel, size2, color2, shape2, background = two.groups()
        objects = [dict(size=size, color=color, shape=shape), dict(size=size2, color=color2, shape=shape2)]
        return {"background": background, "objects": objects, "place": rel}
    raise ValueError(f"prompt {prompt!r} is not a scene prompt (see minisd.scenes' grammar)")


def _matches(seen, wanted):
    return sum(
        s[key] == w[key] for s, w in zip(seen, wanted, strict=True) for key in ("color", "shape", "size")
    )


def score(img, prompt):
    """Booleans per attribute: "shape", "color", "size", "place", "background".

    With two objects an attribute is right only if right for both, each prompt object matched to the image
    object that agrees with it most in colour, shape and size (the grammar's two objects differ in colour or
    shape, so a faithful image matches one way only; a tie keeps the image's order, largest first). The wrong
    number of objects makes every object attribute wrong."""
    wanted, seen = asked_for(prompt), read(img)
    found, objects = seen["objects"], wanted["objects"]
    background = seen["background"] == wanted["background"]
    if len(found) != len(objects):
        return {"shape": False, "color": False, "size": False, "place": False, "background": background}
    if len(found) == 2 and _matches(found[::-1], objects) > _matches(found, objects):
        found = found[::-1]
    result = {
        key: all(s[key] == w[key] for s, w in zip(found, objects, strict=True))
        for key in ("shape", "color", "size")
    }
    if len(found) == 1:
        result["place"] = found[0]["place"] == wanted["place"]
    else:
        result["place"] = relation(found[0]["centre"], found[1]["centre"]) == wanted["place"]
    return result | {"background": background}
