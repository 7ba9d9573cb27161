"""Does a 32x32 picture show what its prompt asked for? A rule-based judge for minisd's images.

It shares no code with minisd.data (which draws the training images) or the model: it measures the picture
like a person with a ruler would, so a bug in the generator cannot hide behind the same bug here.

1. Background colour: the median of the outermost ring of pixels (shapes never reach the border).
2. Shape colour: the median of the pixels that differ most from the background.
3. Coverage: how far each pixel lies from the background towards the shape colour (0..1). Anti-aliased
   edges get fractions, which makes the measurements below sub-pixel accurate.
4. Shape from geometry, all independent of size and position (values for ideal shapes; measured on the
   32 px grid they come out a little different, see PROTOTYPES):
   extent   = area / bounding-box area       circle 0.79, square 1, triangle 0.5, star 0.43, heart 0.72
   solidity = area / convex-hull area        1 for convex shapes, about 0.6 for a star
   drop     = (centroid - box centre) / box height, + when the mass sits low: triangle +0.17, heart -0.08

    check(image_uint8_32x32x3)  ->  {"color": "red", "background": "blue", "shape": "circle"}
"""

import numpy as np

# The spec's colour centres (docs/MINISD_SPEC.md), written out again on purpose: see the module docstring.
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
MIN_CONTRAST = 40.0  # RGB distance below which "the shape" is just noise on the background


def nearest_color(rgb):
    return list(PALETTE)[int(np.argmin(np.linalg.norm(_PALETTE_RGB - np.asarray(rgb), axis=1)))]


def background_color(img):
    ring = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]]).astype(np.float32)
    return np.median(ring, axis=0)


def coverage(img, bg):
    """(alpha map in 0..1, shape colour): alpha is the pixel's position on the line background -> shape."""
    pixels = img.astype(np.float32)
    dist = np.linalg.norm(pixels - bg, axis=-1)
    far = np.percentile(dist, 99)
    if far < MIN_CONTRAST:
        return np.zeros(img.shape[:2], np.float32), bg
    fg = np.median(pixels[dist >= 0.8 * far], axis=0)  # the shape's interior, not its blended edges
    direction = fg - bg
    alpha = ((pixels - bg) @ direction) / (direction @ direction)
    return np.clip(alpha, 0.0, 1.0), fg


def largest_component(mask):
    """The biggest 4-connected blob of ``mask``: stray specks in a generated image are not the shape."""
    seen = np.zeros_like(mask)
    best = np.zeros_like(mask)
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        blob, stack = [], [start]
        seen[start] = True
        while stack:
            i, j = stack.pop()
            blob.append((i, j))
            for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and mask[a, b] and not seen[a, b]:
                    seen[a, b] = True
                    stack.append((a, b))
        if len(blob) > best.sum():
            best = np.zeros_like(mask)
            best[tuple(np.array(blob).T)] = True
    return best


def _dilate(mask):
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def convex_hull(points):
    """Andrew's monotone chain: the hull's corners, counter-clockwise, from (n, 2) points."""
    pts = sorted(map(tuple, points))
    if len(pts) < 3:
        return np.array(pts, dtype=np.float64)

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(pts) + half(pts[::-1]), dtype=np.float64)


def _points_in_hull(hull, points):
    """How many of ``points`` lie inside or on the convex polygon ``hull``."""
    if len(hull) < 3:
        return len(points)
    a, b = hull, np.roll(hull, -1, axis=0)
    cross = (b[:, 0] - a[:, 0]) * (points[:, None, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (
        points[:, None, 0] - a[:, 0]
    )
    return int((cross >= -1e-9).all(axis=1).sum())


def shape_features(alpha):
    """Size-free measurements of the shape in a coverage map (see the module docstring)."""
    blob = largest_component(alpha > 0.5)
    if blob.sum() < 3:
        return None
    alpha = alpha * _dilate(blob)  # the blob and its anti-aliased rim only
    area = alpha.sum()
    rows, cols = alpha.max(axis=1), alpha.max(axis=0)  # how much of each row / column the shape reaches
    height, width = rows.sum(), cols.sum()
    ys = np.arange(alpha.shape[0])
    centroid = (alpha.sum(axis=1) * ys).sum() / area
    box_centre = (rows * ys).sum() / height
    points = np.argwhere(blob).astype(np.float64)
    # Solidity on the pixel grid: pixels in the blob / pixel centres inside the hull of the blob's centres.
    every_pixel = np.argwhere(np.ones_like(blob)).astype(np.float64)
    solidity = len(points) / _points_in_hull(convex_hull(points), every_pixel)
    return {
        "extent": float(area / (width * height)),
        "solidity": float(solidity),
        "drop": float((centroid - box_centre) / height),
        "aspect": float(width / height),
        "size": float(max(width, height)),
    }


# What each shape measures when drawn cleanly at 32x32 (anti-aliasing shifts the exact values a little),
# and how far a feature may stray before it counts as one unit of "different": the nearest shape wins.
PROTOTYPES = {
    "circle": {"extent": 0.79, "solidity": 1.0, "drop": 0.0},
    "square": {"extent": 1.0, "solidity": 1.0, "drop": 0.0},
    "triangle": {"extent": 0.54, "solidity": 1.0, "drop": 0.15},
    "star": {"extent": 0.49, "solidity": 0.76, "drop": 0.05},
    "heart": {"extent": 0.74, "solidity": 0.98, "drop": -0.07},
}
TOLERANCE = {"extent": 0.1, "solidity": 0.1, "drop": 0.05}


def classify_shape(features):
    """The prototype nearest to the measured features (distance in units of TOLERANCE); "none" if no shape."""
    if features is None:
        return "none"

    def distance(proto):
        return sum(((features[k] - v) / TOLERANCE[k]) ** 2 for k, v in proto.items())

    return min(PROTOTYPES, key=lambda name: distance(PROTOTYPES[name]))


def check(img):
    """uint8 (32, 32, 3) -> {"color", "background", "shape"}: what the picture shows, as prompt words."""
    img = np.asarray(img)
    if img.shape != (32, 32, 3) or img.dtype != np.uint8:
        raise ValueError(f"check() wants a uint8 (32, 32, 3) RGB image, got {img.dtype} {img.shape}")
    bg = background_color(img)
    alpha, fg = coverage(img, bg)
    return {
        "color": nearest_color(fg),
        "background": nearest_color(bg),
        "shape": classify_shape(shape_features(alpha)),
    }
