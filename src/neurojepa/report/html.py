"""One self-contained HTML page: inline CSS, PNG images as base64 ``data:`` URIs, plain tables; no scripts and no
external resource of any kind, so the file can be mailed, archived or opened offline and looks the same.

Small string builders rather than a template engine: the page is a title, a table of contents and a list of
sections, each a list of blocks (paragraphs, figures, tables, preformatted text). Every piece of text that comes
from data passes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Sequence

NOT_AVAILABLE = "not available"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1em 2em 4em; color: #1a1a1a; background: #fff; line-height: 1.45; }
h1 { border-bottom: 3px solid #5b2a86; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; color: #5b2a86; }
h3 { margin-top: 1.4em; }
nav a { margin-right: 1.2em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3eef7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pass td.status { background: #d9f2d9; color: #145214; font-weight: bold; }
tr.fail td.status { background: #f8d7d7; color: #8a1010; font-weight: bold; }
tr.na td.status { background: #eee; color: #666; }
.na { color: #888; font-style: italic; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; border: 1px solid #e4e4e4; }
p.note { color: #555; font-size: .92em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
p.verdict { font-size: 1.1em; font-weight: bold; }
div.limits { background: #fff6e5; border-left: 4px solid #e0a030; padding: 0.2em 1em; }
"""


def figure_img(fig, alt: str, caption: str = "", dpi: int = 90) -> str:
    """A matplotlib Figure as an embedded PNG ``<figure>`` (the figure is closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return png_img(buf.getvalue(), alt, caption)


def png_img(png: bytes, alt: str, caption: str = "") -> str:
    """PNG bytes as an embedded ``<figure>``."""
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{html.escape(alt, quote=True)}">{cap}</figure>'


def row(*blocks: str) -> str:
    """Blocks side by side (wrapping on a narrow window)."""
    return '<div class="row">' + "".join(blocks) + "</div>"


def paragraph(text: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<p{c}>{html.escape(text)}</p>"


def not_available(what: str) -> str:
    """The one way a missing result is shown."""
    return f'<p class="na">{html.escape(what)}: {NOT_AVAILABLE}</p>'


def preformatted(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def cell(value, digits: int = 3) -> tuple[str, str]:
    """(html, css class) of a table value: numbers formatted and right-aligned, None/NaN as "not available"."""
    if value is None or (isinstance(value, float) and value != value):
        return f'<span class="na">{NOT_AVAILABLE}</span>', ""
    if isinstance(value, bool):
        return html.escape(str(value)), ""
    if isinstance(value, int):
        return f"{value:,}", "num"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}", "num"
    return html.escape(str(value)), ""


def table(header: Sequence[str], rows: Sequence[Sequence], row_classes: Sequence[str] | None = None,
          col_classes: Sequence[str] | None = None) -> str:
    """An HTML table. rows: values (formatted by :func:`cell`); row_classes: one CSS class per row (e.g. pass,
    fail, na); col_classes: an extra class per column (e.g. ``status``)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        tds = []
        for j, v in enumerate(row):
            text, cls = cell(v)
            extra = col_classes[j] if col_classes and j < len(col_classes) else ""
            classes = " ".join(c for c in (cls, extra) if c)
            tds.append(f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>")
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{rc}>{''.join(tds)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class Section:
    """One section of the page: an anchor id, a heading and HTML blocks (from the builders above)."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)

    def add(self, block: str) -> "Section":
        self.blocks.append(block)
        return self

    def subheading(self, text: str) -> "Section":
        return self.add(f"<h3>{html.escape(text)}</h3>")

    def render(self) -> str:
        return (f'<section id="{html.escape(self.id, quote=True)}"><h2>{html.escape(self.title)}</h2>'
                + "\n".join(self.blocks) + "</section>")


def page(title: str, sections: Sequence[Section], subtitle: str = "", lead: str = "") -> str:
    """The whole document: title, a table of contents linking the sections, ``lead`` (HTML, e.g. a verdict),
    the sections."""
    nav = " ".join(f'<a href="#{html.escape(s.id, quote=True)}">{html.escape(s.title)}</a>' for s in sections)
    sub = f'<p class="note">{html.escape(subtitle)}</p>' if subtitle else ""
    body = "\n".join(s.render() for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>{sub}<nav>{nav}</nav>\n{lead}\n{body}\n</body></html>\n")
