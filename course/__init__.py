"""The learner's toolkit: grading, timing, pictures, and simulator stand-ins used by the lessons.

Importing it decides the mode first (see minisd.mode), so numba.cuda picks the simulator when there is no GPU.
"""

import minisd.mode  # noqa: F401  (must run before numba.cuda is imported)
