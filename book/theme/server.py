"""The course website's theme: the web server that jupyter-book starts while it builds the static site.

`jupyter book build --html` serves the parsed pages as JSON on CONTENT_CDN_PORT, starts this server on PORT
(template.yml's build.start), asks it for every page and writes the answers to _build/html. jupyter-book's
default theme does the same job, but it is downloaded from the internet at build time; this one ships with the
course and needs nothing but Python's standard library.
"""

import functools
import json
import mimetypes
import os
import threading
import time
import urllib.error
import urllib.request
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from render import Renderer, UnknownNode, asset_href, page_href

CONTENT = f"http://localhost:{os.environ.get('CONTENT_CDN_PORT', '3100')}"
PUBLIC = Path(__file__).parent / "public"


def fetch(path):
    with urllib.request.urlopen(CONTENT + path) as answer:
        return answer.read()


@functools.cache  # a static build asks for each page twice or more; the content does not change meanwhile
def load(path):
    return json.loads(fetch(path))


def toc(project):
    """Every page in reading order, the index first: (slug, title, level); a lesson's notebook is 'Notebook'."""
    index = load(f"/content/{project['index']}.json")["frontmatter"].get("title", project["title"])
    pages = [(project["index"], index, 0)]
    for p in project["pages"]:
        notebook = load(f"/content/{p['slug']}.json")["kind"] == "Notebook" and p["level"] > 1
        pages.append((p["slug"], "Notebook" if notebook else p["title"], p["level"]))
    return pages


def url(slug, project):
    return "/" if slug == project["index"] else "/" + slug.replace(".", "/")


def sidebar(pages, project, current, prefix):
    items = []
    for slug, title, level in pages:
        here = ' aria-current="page"' if slug == current else ""
        href = page_href(url(slug, project), prefix)
        items.append(f'<li class="level-{level}"><a href="{href}"{here}>{escape(title)}</a></li>')
    home = page_href("/", prefix)
    return f'<nav class="toc"><a class="home" href="{home}">{escape(project["title"])}</a><ul>{"".join(items)}</ul></nav>'


def pager(pages, project, current, prefix):
    """Previous and next page in reading order."""
    slugs = [slug for slug, _, _ in pages]
    at = slugs.index(current)
    links = []
    for rel, neighbour in (("prev", at - 1), ("next", at + 1)):
        if 0 <= neighbour < len(pages):
            slug, _, _ = pages[neighbour]
            title = load(f"/content/{slug}.json")["frontmatter"].get("title", slug)
            arrow = "← " if rel == "prev" else ""
            after = " →" if rel == "next" else ""
            href = page_href(url(slug, project), prefix)
            links.append(f'<a rel="{rel}" href="{href}">{arrow}{escape(title)}{after}</a>')
    return f'<footer class="pager">{"".join(links)}</footer>'


def downloads(frontmatter, prefix):
    """The page's source (a notebook comes with the outputs shown here), as jupyter-book exports it."""
    links = [
        f'<a href="{escape(asset_href(e["url"], prefix))}" download="{escape(e["filename"])}">{escape(e["filename"])}</a>'
        for e in frontmatter.get("exports", [])
        if e.get("url")
    ]
    return f'<p class="downloads">Download {", ".join(links)}</p>\n' if links else ""


def page(route):
    """The HTML of the page at `route` ('/' or '/lessons/why-gpus'), written to route/index.html."""
    project = load("/config.json")["projects"][0]
    path = route.strip("/")
    slug = project["index"] if path in ("", project["index"]) else path.replace("/", ".")
    data = load(f"/content/{slug}.json")
    prefix = "../" * (path.count("/") + 1) if slug != project["index"] else ""
    article = Renderer(prefix, lambda p: fetch(p).decode()).node(data["mdast"])
    frontmatter = data["frontmatter"]
    title = frontmatter.get("title", "")
    if title and not frontmatter.get("content_includes_title"):
        article = f"<h1>{escape(title)}</h1>\n{downloads(frontmatter, prefix)}{article}"
    pages = toc(project)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="myst-source" content="{escape(data["location"].lstrip("/"))}">
<title>{escape(title)} · {escape(project["title"])}</title>
<link rel="icon" href="{prefix}favicon.ico">
<link rel="stylesheet" href="{prefix}myst-theme.css">
</head>
<body>
{sidebar(pages, project, slug, prefix)}
<main>
<article>
{article}
</article>
{pager(pages, project, slug, prefix)}
</main>
</body>
</html>
"""


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        route = self.path.split("?")[0]
        try:
            if route.endswith(".json"):  # page data: kept beside the HTML, as jupyter-book's theme does
                self.answer(200, "application/json", fetch("/content" + route))
            elif (PUBLIC / route.lstrip("/")).is_file():  # the stylesheet, favicon, robots.txt, sitemap
                kind = mimetypes.guess_type(route)[0] or "application/octet-stream"
                self.answer(200, kind, (PUBLIC / route.lstrip("/")).read_bytes())
            elif "." in route.rsplit("/", 1)[-1]:
                self.answer(404, "text/plain", b"not a page nor a file of this theme")
            else:
                self.answer(200, "text/html; charset=utf-8", page(route).encode())
        except urllib.error.HTTPError as error:  # jupyter-book has no such page
            self.answer(error.code, "text/plain", str(error).encode())
        except UnknownNode as error:
            print(f"theme error: {route}: {error}", flush=True)  # build.py fails the build on this line
            self.answer(500, "text/plain", str(error).encode())

    def answer(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # jupyter-book shows this server's stderr as errors: keep it quiet
        pass


def exit_with(parent):
    """jupyter-book stops this server when it is done; when a failed build exits without doing so, stop too."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=exit_with, args=(os.getppid(),), daemon=True).start()
    host, port = os.environ.get("HOST", "localhost"), int(os.environ.get("PORT", "3000"))
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"course website theme on http://{host}:{port}", flush=True)  # jupyter-book waits for this line
    server.serve_forever()
