"""The course website (book/): it builds from lessons/ and the GPU-executed notebooks with jupyter-book 2, and in
headless Chromium every lesson and notebook page renders, every picture loads and no link inside it is broken.

Needs jupyter-book (`pip install -e ".[site]"`), Node.js 18+ and Chromium (`apt-get install chromium`); where
one is missing the tests that need it skip, except in CI (CI=true), which must install them all.
"""

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def book_module(name):
    spec = importlib.util.spec_from_file_location(f"book_{name}", ROOT / "book" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need(*tools):
    """Skip (or, in CI, fail) unless jupyter-book, Node.js and Chromium are there, as asked."""
    missing = []
    if "jupyter-book" in tools and importlib.util.find_spec("jupyter_book") is None:
        missing.append('jupyter-book (pip install -e ".[site]")')
    if "node" in tools and shutil.which("node") is None:
        missing.append("Node.js 18+ (apt-get install nodejs)")
    if "chromium" in tools and (importlib.util.find_spec("websocket") is None or check.chromium() is None):
        missing.append('Chromium (apt-get install chromium) and websocket-client (pip install -e ".[site]")')
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must install what the course website's tests need: {', '.join(missing)}")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


build = book_module("build")
check = book_module("check") if importlib.util.find_spec("websocket") else None


def git(repo, *args, date="2026-01-01T00:00:00"):
    env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, env=env, check=True)


def test_each_notebook_comes_from_the_newest_recording(tmp_path):
    for gpu, names in {"h100": ["a", "b"], "a100": ["b", "c"], "h200": ["a"]}.items():
        folder = tmp_path / "benchmarks" / gpu / "notebooks"
        folder.mkdir(parents=True)
        for name in names:
            (folder / f"{name}.ipynb").write_text("{}")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "benchmarks/h100")
    git(tmp_path, "commit", "-qm", "h100 run", date="2026-11-24T12:00:00")
    git(tmp_path, "add", "benchmarks/a100")
    git(tmp_path, "commit", "-qm", "a100 run", date="2026-11-25T12:00:00")
    chosen = {name: folder.parent.name for name, folder in build.recordings(tmp_path).items()}
    # a100 was committed after h100; h200 is not committed yet: just recorded, the newest
    assert chosen == {"a.ipynb": "h200", "b.ipynb": "a100", "c.ipynb": "a100"}


def test_a_notebook_no_gpu_run_recorded_is_shown_bare_and_says_so(tmp_path):
    build.stage_notebook(ROOT / "notebooks" / "00_why_gpus.ipynb", None, tmp_path / "00_why_gpus.ipynb")
    cells = json.loads((tmp_path / "00_why_gpus.ipynb").read_text())["cells"]
    assert cells[0]["source"][0].startswith("# ") and "Not recorded on a GPU yet" in cells[1]["source"]
    assert not any(cell.get("outputs") for cell in cells)


PAGE = """<!DOCTYPE html><html><head><meta name="myst-source" content="{source}"></head><body><article>
<h1>{title}</h1><p>{text}</p>{extra}</article></body></html>"""
PNG = base64.b64decode(  # a 1x1 picture
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def page(folder, source, title="A page", text="words " * 50, extra=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(PAGE.format(source=source, title=title, text=text, extra=extra))


def test_the_check_fails_on_planted_defects(tmp_path):
    """A missing picture, a corrupt one, a broken link, a missing anchor and an empty page: each is caught."""
    need("chromium")
    (tmp_path / "ok.png").write_bytes(PNG)
    (tmp_path / "corrupt.png").write_bytes(PNG[:20])
    links = '<a href="good/index.html#here">ok</a> <a href="gone/index.html">gone</a> <a href="good/index.html#nowhere">x</a>'
    pictures = (
        '<img src="ok.png"> <img src="missing.png"> <img src="corrupt.png"> <a href="empty/index.html">e</a>'
    )
    page(tmp_path, "lessons/a.md", extra=links + pictures)
    page(tmp_path / "good", "lessons/good.md", extra='<p id="here">anchor</p><img src="../ok.png">')
    page(tmp_path / "empty", "lessons/empty.md", title="", text="")
    pages, problems = check.check(tmp_path)
    assert set(pages) == {"index.html", "good/index.html", "empty/index.html"}
    assert sorted(problems) == sorted(
        [
            "index.html (from lessons/a.md): missing.png did not load (net::ERR_FILE_NOT_FOUND)",
            "index.html (from lessons/a.md): picture missing.png does not load",
            "index.html (from lessons/a.md): picture corrupt.png does not load",
            "index.html (from lessons/a.md): broken link to gone/index.html",
            "index.html (from lessons/a.md): link to good/index.html#nowhere, which has no such anchor",
            "empty/index.html (from lessons/empty.md): does not render (title '', 0 characters)",
        ]
    )


def test_the_site_builds_and_every_page_renders_in_chromium(tmp_path):
    need("jupyter-book", "node", "chromium")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "book" / "build.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    html = tmp_path / "html"
    pages, problems = check.check(html)
    assert problems == [], "\n".join(problems)

    sources = {page["source"] for page in pages.values()}
    wanted = {f"lessons/{p.name}" for p in (ROOT / "lessons").glob("*.md")}
    wanted |= {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert wanted <= sources, f"pages missing from the site: {sorted(wanted - sources)}"

    # A recorded notebook shows every picture its GPU run drew; one not recorded shows no output at all:
    # the build executes nothing.
    recorded = build.recordings()
    for path, page in pages.items():
        if not page["source"].endswith(".ipynb"):
            continue
        name = Path(page["source"]).name
        text = (html / path).read_text()
        if name in recorded:
            cells = json.loads((recorded[name] / name).read_text())["cells"]
            drawn = sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
            assert "Recorded on a GPU:" in text, path
            assert len(re.findall(r'<img class="output"', text)) == drawn, path
        else:
            assert "Not recorded on a GPU yet" in text, path
            assert not re.search(r'class="outputs">(?!</div>)', text), (
                f"{path} shows outputs: was it executed?"
            )
