"""A PNG grid of samples: one row per prompt, captioned, upscaled so 64x64 images are easy to see."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from minisd import files

GAP = 2  # pixels between images, before upscaling
CAPTION_HEIGHT = 16  # pixels above each row, after upscaling
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # ~89 MP: PIL refuses to open larger images (a decompression-bomb guard)


def grid_size(prompts, per_prompt, scale, image_size=64):
    """(width, height) in pixels of the grid ``save_grid`` draws: known before any image is sampled."""
    cell = (image_size + GAP) * scale
    width = max(per_prompt * cell + GAP * scale, 8 * max(len(p) for p in prompts))
    return width, len(prompts) * (cell + CAPTION_HEIGHT) + GAP * scale


def save_grid(images, prompts, per_prompt, path, scale=4):
    """images (len(prompts) * per_prompt, H, W, 3) uint8, row-major by prompt -> PNG at ``path``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(prompts) * per_prompt:
        raise ValueError(f"expected {len(prompts) * per_prompt} uint8 (H, W, 3) images, got {images.shape}")
    h, w = images.shape[1:3]
    cell_w, cell_h = (w + GAP) * scale, (h + GAP) * scale
    canvas = Image.new("RGB", grid_size(prompts, per_prompt, scale, w), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for row, prompt in enumerate(prompts):
        top = row * (cell_h + CAPTION_HEIGHT)
        draw.text((GAP * scale, top + 2), prompt, fill="black", font=font)
        for col in range(per_prompt):
            tile = Image.fromarray(images[row * per_prompt + col]).resize(
                (w * scale, h * scale), Image.NEAREST
            )
            canvas.paste(tile, (GAP * scale + col * cell_w, top + CAPTION_HEIGHT + GAP * scale))
    with files.atomic_open(path) as f:  # a kill mid-write keeps the previous grid, never half of one
        canvas.save(f, format="PNG")
    return Path(path)
