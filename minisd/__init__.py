"""minisd: a small Stable-Diffusion-like model that runs on this course's own GPU kernels."""

import minisd.mode  # noqa: F401, I001  (first: decides GPU or simulator before numba.cuda is imported)

from minisd.pipeline import MiniSDPipeline, generate

__all__ = ["MiniSDPipeline", "generate"]
