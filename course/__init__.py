"""The learner's toolkit: grading, timing, pictures, and simulator stand-ins used by the lessons.

Importing it decides the mode first (see minisd.mode), so numba.cuda picks the simulator when there is no GPU,
and makes the simulator refuse kernel arguments a GPU refuses (see minisd.simulator).
"""

import minisd.mode  # noqa: F401, I001  (must run before numba.cuda is imported)
import minisd.simulator

minisd.simulator.make_strict()
