"""minisd: a small Stable-Diffusion-like model that runs on this course's own GPU kernels."""

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)
