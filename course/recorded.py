"""What the course recorded on real GPUs: the numbers a learner in the simulator is shown instead of its own.

Each number has one home, the files a GPU run wrote (``benchmarks/gpu_check.sh notebooks``) and the course keeps
under ``benchmarks/<gpu>/notebooks/``: every executed notebook, with what its cells printed, and lesson 00's
``lesson00_gpu.json``. Each names its GPU and the day it ran (``run_notebook.py`` stamps the notebooks, lesson
00 its JSON). When several GPUs recorded the same file, the newest recording is the one shown::

    from course import recorded

    gpu = recorded.newest("notebooks/01_threads_blocks_grids.ipynb")  # None: never recorded
    print(gpu)                     # "NVIDIA H100 80GB HBM3, 2026-11-24"
    gpu.timings()["v2 x = column"]  # "0.1608 ms    1669.2 GB/s": the line course.timing.report printed there
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_TIMING = re.compile(r"^(?P<name>\S.*?)\s+(?P<time>\d+\.\d+ ms.*)$")  # a row of course.timing.report


@dataclass(frozen=True)
class Recording:
    path: Path
    device: str  # the GPU, as the driver names it
    date: str  # ISO date of the run: newer recordings win

    def __str__(self):
        return f"{self.device}, {self.date}"

    def data(self):
        """The recorded file's contents (a notebook or lesson 00's JSON)."""
        return json.loads(self.path.read_text())

    def timings(self):
        """``{row name: "ms  GB/s"}`` for every row that course.timing.report printed in this notebook."""
        rows = {}
        for cell in self.data()["cells"]:
            for output in cell.get("outputs", []):
                for line in "".join(output.get("text", "")).splitlines():
                    if match := _TIMING.match(line.strip()):
                        rows.setdefault(match["name"], match["time"])
        return rows


def read(path):
    """The Recording of one file, from its stamp; None when it names no GPU and day (a simulator run)."""
    data = json.loads(path.read_text())
    stamp = data.get("metadata", {}).get("recorded") if path.suffix == ".ipynb" else data
    if not stamp or not stamp.get("device") or not stamp.get("date"):
        return None
    return Recording(path, stamp["device"], stamp["date"])


def newest(name, root=BENCHMARKS):
    """The newest GPU recording of ``name`` (a path under ``benchmarks/<gpu>/``), or None if no GPU has one."""
    found = [r for path in sorted(Path(root).glob(f"*/{name}")) if (r := read(path))]
    return max(found, key=lambda r: r.date, default=None)
