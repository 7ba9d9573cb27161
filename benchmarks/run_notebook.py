"""Execute a notebook without Jupyter and save it with its outputs: the record of a run on a GPU machine.

The GPU machines have no Jupyter, so this runs each code cell with plain ``exec`` in one namespace, the way a
kernel would, and stores what a kernel would show: printed text, the value of a cell's last expression,
errors, and every matplotlib figure as a PNG. A whole run on a GPU is stamped with the GPU and the day
(``metadata.recorded``): course.recorded shows the newest recording to learners in the simulator.

    python benchmarks/run_notebook.py notebooks/02_memory.ipynb gpu-out/02_memory.ipynb
"""

import ast
import base64
import contextlib
import datetime
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")


def _figures():
    import matplotlib.pyplot as plt

    outputs = []
    for number in plt.get_fignums():
        buffer = io.BytesIO()
        plt.figure(number).savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        png = base64.b64encode(buffer.getvalue()).decode()
        outputs.append({"output_type": "display_data", "data": {"image/png": png}, "metadata": {}})
    plt.close("all")
    return outputs


def run_cell(source, namespace):
    """Run one cell; return its outputs in the notebook format and whether it raised."""
    text = io.StringIO()
    outputs, failed = [], False
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            tree = ast.parse(source)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<cell>", "exec"), namespace)
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace) if last else None
        except Exception:
            failed, value = True, None
            traceback.print_exc()
    if text.getvalue():
        outputs.append({"output_type": "stream", "name": "stdout", "text": text.getvalue()})
    if value is not None:
        outputs.append(
            {
                "output_type": "execute_result",
                "data": {"text/plain": repr(value)},
                "metadata": {},
                "execution_count": None,
            }
        )
    return outputs + _figures(), failed


def main(src, dst):
    notebook = json.loads(Path(src).read_text())
    dst = Path(dst).resolve()
    os.chdir(Path(src).resolve().parent)  # notebooks run from their own folder, as in Jupyter
    namespace = {"__name__": "__main__"}
    start, count = time.perf_counter(), 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        count += 1
        cell["outputs"], failed = run_cell("".join(cell["source"]), namespace)
        cell["execution_count"] = count
        if failed:
            print(
                f"{src}: cell {count} raised:\n{cell['outputs'][0].get('text', '')[-2000:]}", file=sys.stderr
            )
            break
    mode = sys.modules.get("minisd.mode")  # the notebook imported it: it knows where the kernels ran
    if not failed and mode is not None and mode.ON_GPU:  # a whole run on a GPU: a recording
        notebook["metadata"]["recorded"] = {
            "device": mode.gpu_name(),
            "date": datetime.date.today().isoformat(),
        }
    Path(dst).write_text(json.dumps(notebook, indent=1))
    print(
        f"{src}: {count} cells in {time.perf_counter() - start:.1f} s{' (stopped at an error)' if failed else ''}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
