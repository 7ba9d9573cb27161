"""MyST's page tree (mdast, as jupyter-book writes it in _build/site/content/*.json) to plain HTML.

Every URL comes out relative to the page (`prefix` climbs from the page's folder to the site's root), so the
built site opens from disk as well as from any web server or sub-folder. Nodes this theme does not know raise
UnknownNode, naming the type: the page then fails to build instead of silently losing content.
"""

import re
from html import escape

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in captured stdout/stderr and tracebacks


class UnknownNode(ValueError):
    pass


def page_href(url, prefix):
    """A page URL from MyST ('/', '/lessons/why-gpus', with an optional #fragment) as a relative file link."""
    path, _, fragment = url.partition("#")
    path = path.strip("/")
    href = prefix + (f"{path}/index.html" if path else "index.html")
    return f"{href}#{fragment}" if fragment else href


def asset_href(url, prefix):
    """MyST serves pictures and linked files from its public folder; the static build puts them in build/."""
    return url if re.match(r"[a-z]+:", url) else f"{prefix}build/{url.lstrip('/')}"


def link_href(node, prefix):
    url = node.get("url", "")
    if node.get("static"):
        return asset_href(url, prefix)
    if node.get("internal") or node.get("dataUrl"):
        return page_href(url, prefix)
    return url  # external, mailto: or #fragment


class Renderer:
    def __init__(self, prefix, text_file):
        self.prefix = prefix
        self.text_file = text_file  # reads an output that MyST moved out of the page (large text/html)

    def children(self, node):
        return "".join(self.node(child) for child in node.get("children", []))

    def node(self, node):
        kind = node["type"]
        method = getattr(self, "n_" + kind, None)
        if method is None:
            raise UnknownNode(f"the course website's theme cannot draw a '{kind}' node: add it to {__file__}")
        return method(node)

    # Blocks
    def n_root(self, node):
        return self.children(node)

    def n_block(self, node):
        css = {"notebook-code": "cell code-cell", "notebook-content": "cell"}.get(node.get("kind"), "block")
        return f'<div class="{css}">{self.children(node)}</div>\n'

    def n_heading(self, node):
        depth, anchor = node["depth"], escape(node.get("html_id", ""))
        return f'<h{depth} id="{anchor}">{self.children(node)}</h{depth}>\n'

    def n_paragraph(self, node):
        return f"<p>{self.children(node)}</p>\n"

    def n_blockquote(self, node):
        return f"<blockquote>{self.children(node)}</blockquote>\n"

    def n_list(self, node):
        if node.get("ordered"):
            start = node.get("start", 1)
            return f'<ol start="{start}">{self.children(node)}</ol>\n'
        return f"<ul>{self.children(node)}</ul>\n"

    def n_listItem(self, node):
        return f"<li>{self.children(node)}</li>\n"

    def n_table(self, node):
        return f"<table>{self.children(node)}</table>\n"

    def n_tableRow(self, node):
        return f"<tr>{self.children(node)}</tr>\n"

    def n_tableCell(self, node):
        tag = "th" if node.get("header") else "td"
        align = f' style="text-align:{node["align"]}"' if node.get("align") else ""
        return f"<{tag}{align}>{self.children(node)}</{tag}>"

    def n_code(self, node):
        lang = escape(node.get("lang") or "text")
        return f'<pre class="code" data-lang="{lang}"><code>{escape(node["value"])}</code></pre>\n'

    def n_math(self, node):  # MyST renders the TeX with KaTeX; its MathML half draws without KaTeX's CSS
        return f'<div class="math">{node.get("html") or escape(node["value"])}</div>\n'

    def n_thematicBreak(self, node):
        return "<hr>\n"

    def n_html(self, node):
        return node["value"]

    def n_admonition(self, node):
        return f'<aside class="admonition {escape(node.get("kind", "note"))}">{self.children(node)}</aside>\n'

    def n_admonitionTitle(self, node):
        return f'<p class="admonition-title">{self.children(node)}</p>\n'

    # Inline
    def n_text(self, node):
        return escape(node["value"])

    def n_strong(self, node):
        return f"<strong>{self.children(node)}</strong>"

    def n_emphasis(self, node):
        return f"<em>{self.children(node)}</em>"

    def n_inlineCode(self, node):
        return f"<code>{escape(node['value'])}</code>"

    def n_inlineMath(self, node):
        return f'<span class="math">{node.get("html") or escape(node["value"])}</span>'

    def n_footnoteReference(self, node):
        number = escape(str(node.get("enumerator", node["identifier"])))
        return f'<sup><a href="#fn-{escape(node["identifier"])}">{number}</a></sup>'

    def n_footnoteDefinition(self, node):
        number = escape(str(node.get("enumerator", node["identifier"])))
        return f'<div class="footnote" id="fn-{escape(node["identifier"])}">{number}. {self.children(node)}</div>\n'

    def n_break(self, node):
        return "<br>"

    def n_link(self, node):
        return f'<a href="{escape(link_href(node, self.prefix))}">{self.children(node)}</a>'

    def n_crossReference(self, node):
        """[text](#label) or {ref}: a heading, figure or table, maybe on another page."""
        anchor = "#" + node.get("html_id", node.get("identifier", ""))
        href = page_href(node["url"] + anchor, self.prefix) if node.get("url") else anchor
        return f'<a href="{escape(href)}">{self.children(node) or escape(node.get("label", ""))}</a>'

    def n_image(self, node):
        alt = escape(node.get("alt", ""))
        width = f' width="{escape(node["width"])}"' if node.get("width") else ""
        return f'<img src="{escape(asset_href(node["url"], self.prefix))}" alt="{alt}"{width}>'

    # Notebook outputs, as recorded by Jupyter (or benchmarks/run_notebook.py on the GPU machines)
    def n_outputs(self, node):
        return f'<div class="outputs">{self.children(node)}</div>\n'

    def n_output(self, node):
        out = node["jupyter_data"]
        kind = out["output_type"]
        if kind == "stream":
            return self.pre(out["text"], f"output {out.get('name', 'stdout')}")
        if kind == "error":  # jupyter-book joins the traceback's lines into one string
            return self.pre(out["traceback"], "output error")
        if kind in ("display_data", "execute_result"):
            return self.rich(out["data"])
        raise UnknownNode(f"the course website's theme cannot draw a notebook output of type '{kind}'")

    def pre(self, text, css):
        return f'<pre class="{css}">{escape(ANSI.sub("", text))}</pre>\n'

    def rich(self, data):
        """The richest form a browser shows: a picture, then HTML, then plain text."""
        for mime in ("image/png", "image/jpeg", "image/svg+xml", "image/gif"):
            if mime in data:
                src = asset_href(data[mime]["path"], self.prefix)
                return f'<img class="output" src="{escape(src)}" alt="notebook output">\n'
        if "text/html" in data:
            return f'<div class="output html">{self.content(data["text/html"])}</div>\n'
        if "text/plain" in data:
            return self.pre(self.content(data["text/plain"]), "output result")
        return ""  # only forms a browser cannot show (widgets, JSON for an extension)

    def content(self, item):
        return item["content"] if "content" in item else self.text_file(item["path"])
