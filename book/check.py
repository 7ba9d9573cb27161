"""Check the built course website in headless Chromium: every page renders, every picture loads, no link is broken.

    python book/check.py [book/_build/html]

Starts at index.html and follows every link inside the site, loading each page in Chromium (Debian's
`chromium` package) driven over the DevTools protocol. A page renders when it has a title and text; a picture
loads when the browser decoded it (a missing or corrupt file has no width); a link holds when its file exists
and its #anchor is on that page. Links that leave the site are not followed (the network may be closed).
"""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import websocket  # websocket-client

FLAGS = [  # the network is closed: without the background-networking flags Chromium hangs on refused connections
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WHAT_IS_ON_THE_PAGE = """JSON.stringify({
  source: document.querySelector('meta[name="myst-source"]')?.content ?? null,
  title: document.querySelector('article h1')?.textContent ?? '',
  text: document.querySelector('article')?.innerText.length ?? 0,
  pictures: [...document.images].map(i => ({src: i.currentSrc || i.src, loaded: i.complete && i.naturalWidth > 0})),
  links: [...document.links].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
})"""


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium and one tab, spoken to over the DevTools protocol."""

    def __enter__(self):
        if chromium() is None:
            sys.exit("no Chromium found: apt-get install chromium (Debian), then run this again")
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [chromium(), *FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=5) as answer:
                    address = json.load(answer)["webSocketDebuggerUrl"]
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    sys.exit(f"Chromium did not start: {' '.join(command)}")
                time.sleep(0.2)
        self.socket = websocket.create_connection(address, timeout=60, suppress_origin=True)
        self.next_id, self.events, self.session = 0, [], None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")
        return self

    def __exit__(self, *exc):
        if getattr(self, "socket", None):
            self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            answer = json.loads(self.socket.recv())
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, method):
        while not any(event.get("method") == method for event in self.events):
            self.events.append(json.loads(self.socket.recv()))

    def visit(self, url):
        """Load a page; return what is on it and the requests that failed (URL, reason)."""
        self.events = []
        answer = self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            return None, [(url, answer["errorText"])]
        self.wait_for("Page.loadEventFired")
        found = json.loads(self.send("Runtime.evaluate", expression=WHAT_IS_ON_THE_PAGE)["result"]["value"])
        requested = {
            e["params"]["requestId"]: e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        }
        failed = [
            (requested.get(e["params"]["requestId"], "?"), e["params"]["errorText"])
            for e in self.events
            if e.get("method") == "Network.loadingFailed"
        ]
        return found, failed


def check(html):
    """Crawl the site in html/ from index.html: ({page path: what is on it}, [problems, one line each])."""
    html = Path(html).resolve()

    def local(url):  # a file:// URL inside the site as (path relative to html/, #anchor), else None
        parts = urlsplit(url)
        path = Path(unquote(parts.path))
        if parts.scheme != "file" or not path.is_relative_to(html):
            return None
        return path.relative_to(html).as_posix(), parts.fragment

    def shown(url):
        return local(url)[0] if local(url) else url

    pages, problems, anchors = {}, [], []
    queue = ["index.html"]
    with Browser() as browser:
        while queue:
            page = queue.pop(0)
            if page in pages:
                continue
            found, failed = browser.visit((html / page).as_uri())
            where = f"{page} (from {found['source']})" if found and found["source"] else page
            problems += [f"{where}: {shown(url)} did not load ({reason})" for url, reason in failed]
            if found is None:
                continue
            pages[page] = found
            if not found["title"].strip() or found["text"] < 200:
                problems.append(
                    f"{where}: does not render (title {found['title']!r}, {found['text']} characters)"
                )
            problems += [
                f"{where}: picture {shown(p['src'])} does not load"
                for p in found["pictures"]
                if not p["loaded"]
            ]
            for link in found["links"]:
                target = local(link)
                if target is None:
                    continue  # leaves the site
                path, anchor = target
                if path.endswith("/") or path == "":
                    path += "index.html"
                if not (html / path).is_file():
                    problems.append(f"{where}: broken link to {path}")
                elif path.endswith(".html"):
                    queue.append(path)
                    if anchor:
                        anchors.append((where, path, anchor))
    for where, path, anchor in anchors:
        if path in pages and anchor not in pages[path]["ids"]:
            problems.append(f"{where}: link to {path}#{anchor}, which has no such anchor")
    return pages, problems


def main():
    html = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "_build" / "html")
    if not (html / "index.html").is_file():
        sys.exit(f"no site in {html}: build it first with `python book/build.py`")
    pages, problems = check(html)
    pictures = sum(len(found["pictures"]) for found in pages.values())
    print("\n".join(problems))
    print(f"{len(pages)} pages, {pictures} pictures: {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
