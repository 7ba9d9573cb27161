"""Build the course website: the readings (lessons/) and the GPU-executed notebooks, with jupyter-book 2.

    python book/build.py                  # writes book/_build/html; open book/_build/html/index.html
    python book/build.py --out DIR        # writes DIR/html

Nothing is executed (CI has no GPU). Each notebook is shown as it was last recorded on a GPU: the copy in the
newest benchmarks/*/notebooks/ folder that has it, outputs and pictures included; one that no GPU run has
recorded yet is shown from notebooks/, without outputs, and says so. jupyter-book needs Node.js 18 or newer.
"""

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
LINK = re.compile(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"")  # Markdown links and pictures, HTML pictures


def recorded_at(folder):
    """When a recording folder was committed; one git does not know yet was just recorded: the newest."""
    proc = subprocess.run(
        ["git", "log", "-1", "--format=%ct", "--", folder.name],
        cwd=folder.parent,
        capture_output=True,
        text=True,
    )
    stamp = proc.stdout.strip()
    return int(stamp) if proc.returncode == 0 and stamp else float("inf")


def recordings(root=ROOT):
    """{notebook file name: the newest benchmarks/<gpu>/notebooks/ folder holding a GPU-executed copy}."""
    folders = sorted(root.glob("benchmarks/*/notebooks"), key=lambda f: (recorded_at(f), f.parent.name))
    return {notebook.name: folder for folder in folders for notebook in folder.glob("*.ipynb")}


def gpu_name(folder):
    """The GPU named in the recording's info.txt (`python -m minisd info`), else the folder's name."""
    info = folder.parent / "info.txt"
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("gpu:"):
                return line.split(":", 1)[1].split("(")[0].strip()
    return folder.parent.name


def note(notebook, folder):
    """The first thing a reader sees under the title: where the outputs below come from."""
    if folder is None:
        return (
            ":::{warning} Not recorded on a GPU yet\n"
            f"No GPU run of this notebook is recorded under `benchmarks/*/notebooks/` yet, so it is shown without "
            f"outputs. Run `notebooks/{notebook.name}` yourself: without a GPU it runs in Numba's CUDA simulator.\n"
            ":::"
        )
    where = folder.relative_to(ROOT).as_posix()
    return (
        f":::{{note}} Recorded on a GPU: {gpu_name(folder)}\n"
        f"The outputs below are from `{where}/{notebook.name}`, run at full size on that GPU "
        f"(`{folder.parent.relative_to(ROOT).as_posix()}/info.txt`). Run `notebooks/{notebook.name}` yourself "
        "to see your machine's numbers.\n"
        ":::"
    )


def stage_notebook(notebook, folder, dest):
    """Copy the recorded notebook (or the bare one) to dest with the note after its title cell."""
    source = folder / notebook.name if folder else notebook
    nb = json.loads(source.read_text())
    cells = nb["cells"]
    titled = cells and cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    cells.insert(
        1 if titled else 0, {"cell_type": "markdown", "metadata": {}, "source": note(notebook, folder)}
    )
    dest.write_text(json.dumps(nb, indent=1))


def markdown(page):
    """A page's Markdown: the file itself, or a notebook's Markdown cells."""
    if page.suffix != ".ipynb":
        return page.read_text()
    cells = json.loads(page.read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


def linked_files(text, source_dir):
    """Repository files a page links to or shows (exercises/lesson00.py, a picture), relative to the root."""
    found = []
    for match in LINK.finditer(text):
        target = (match.group(1) or match.group(2)).split("#")[0]
        if not target or re.match(r"[a-z]+:", target) or target.startswith("/"):
            continue
        path = (source_dir / target).resolve()
        if path.is_file() and path.is_relative_to(ROOT):
            found.append(path.relative_to(ROOT))
    return found


def stage(src):
    """Lay the site's sources out in src as they are in the repository; return the table of contents."""
    shutil.copytree(ROOT / "lessons", src / "lessons")
    (src / "notebooks").mkdir()
    recorded = recordings()
    toc = [{"file": "lessons/README.md"}]
    for lesson in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.md")):
        entry = {"file": f"lessons/{lesson.name}"}
        notebook = ROOT / "notebooks" / (lesson.stem + ".ipynb")
        if notebook.is_file():
            stage_notebook(notebook, recorded.get(notebook.name), src / "notebooks" / notebook.name)
            entry["children"] = [{"file": f"notebooks/{notebook.name}"}]
        toc.append(entry)
    # A page's links resolve against its folder in the repository: bring along the files they point to.
    for page in [*(src / "lessons").glob("*.md"), *(src / "notebooks").glob("*.ipynb")]:
        for path in linked_files(markdown(page), ROOT / page.parent.name):
            if not (src / path).exists():
                (src / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, src / path)
    return toc


def build(out):
    """Stage the sources in out/src, build them with jupyter-book, leave the site in out/html."""
    if importlib.util.find_spec("jupyter_book") is None:
        sys.exit('jupyter-book is not installed: pip install -e ".[site]"')
    if shutil.which("node") is None:
        sys.exit("jupyter-book needs Node.js 18 or newer: apt-get install nodejs (or see https://nodejs.org)")
    src, html = out / "src", out / "html"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    config = yaml.safe_load((BOOK / "myst.yml").read_text())
    config["project"]["toc"] = stage(src)
    config["site"]["template"] = str(BOOK / config["site"]["template"])
    (src / "myst.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    command = [sys.executable, "-m", "jupyter_book", "build", "--html", "--ci", "--strict"]
    proc = subprocess.run(command, cwd=src, capture_output=True, text=True)
    theme = [line.strip() for line in proc.stdout.splitlines() if "theme error:" in line]
    if proc.returncode != 0 or theme:
        log = "\n".join(sorted(set(theme))) or proc.stdout[-6000:] + proc.stderr[-3000:]
        sys.exit(f"jupyter-book failed to build the site (in {src}):\n{log}")
    shutil.rmtree(html, ignore_errors=True)
    shutil.move(src / "_build" / "html", html)
    # jupyter-book adds a script for its own theme's router to every page; it would send a reader who opened
    # lessons/x/index.html from disk to the folder's listing.
    router = re.compile(r"<script>\(function\(\)\{var p=window\.location\.pathname;.*?</script>")
    for page in html.rglob("index.html"):
        page.write_text(router.sub("", page.read_text()))
    return html


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BOOK / "_build", help="folder for src/ and html/")
    html = build(parser.parse_args().out.resolve())
    print(f"built {html / 'index.html'}")


if __name__ == "__main__":
    main()
