"""One self-contained HTML report for a training run, an evaluation, an explanation or the demo.

``write_report(folder)`` looks at what a foveal command left in ``folder`` and writes ``folder/report.html``: every
image is embedded as a ``data:`` URI (the file opens from ``file://`` with no network, and can be mailed or printed
alone), the styles are inline, and there is no script. Links to other reports (the demo's stages) are relative.

What the report shows is built by the section builders of :mod:`foveal.report.sections` (what every report has, and
training) and :mod:`foveal.report.task_sections` (classification, segmentation, detection, explanations, the demo);
this module holds the page and the HTML fragments they are made of.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foveal.errors import FovealError
from foveal.version import __version__

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT = "report.html"
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1b1f24;
margin:0 auto;max-width:1180px;padding:0 20px 40px}
header{border-bottom:2px solid #24292f;margin-bottom:12px}
h1{font-size:26px;margin:18px 0 4px}
h2{font-size:20px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:3px}
h3{font-size:16px;margin:16px 0 6px}
nav a{margin-right:14px}
a{color:#0a58ca}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13.5px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow-x:auto;font-size:12.5px;white-space:pre-wrap}
figure{margin:8px 0 14px;display:inline-block;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{font-size:13px;color:#57606a;max-width:100%}
.gallery figure{margin-right:10px;max-width:360px}
.gallery.small figure{max-width:150px}
.note{color:#57606a;font-size:13.5px}
.big{font-size:18px}
footer{margin-top:30px;color:#57606a;font-size:12.5px;border-top:1px solid #d0d7de;padding-top:6px}
@media print{body{max-width:none;padding:0;font-size:11pt}nav{display:none}a{color:inherit;text-decoration:none}
section{break-inside:auto}figure,table,pre{break-inside:avoid}h2,h3{break-after:avoid}
pre{white-space:pre-wrap}.gallery figure{max-width:45%}}
"""


def esc(value: Any) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    """A number for a table cell: floats to ``digits`` significant decimals, None as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def percent(value: Any) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.2f} %"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped, the columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = (f'<td class="n">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of names and values."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{esc(text)}</p>' if css else f"<p>{esc(text)}</p>"


def preformatted(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def data_uri(path: str | os.PathLike[str], what: str = "figure") -> str:
    """The file's bytes as a ``data:`` URI; a missing file is a FovealError naming it."""
    p = Path(path)
    mime = _MIME.get(p.suffix.lower())
    if mime is None:
        raise FovealError(f"cannot embed {p} in a report: only PNG, JPEG, GIF and SVG images are shown")
    try:
        payload = p.read_bytes()
    except OSError as exc:
        raise FovealError(
            f"report: the {what} {p} is missing or unreadable ({exc.strerror or exc}): rerun the command that wrote "
            "this folder, or delete the reference to it"
        ) from None
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def image(path: str | os.PathLike[str], caption: str = "", width: int | None = None, what: str = "figure") -> str:
    """A captioned figure with the image embedded."""
    style = f' style="max-width:{width}px"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    alt = esc(caption or Path(path).name)
    return f'<figure{style}><img src="{data_uri(path, what)}" alt="{alt}">{cap}</figure>'


def figure_image(fig: Figure, caption: str = "", width: int | None = None) -> str:
    """A matplotlib figure drawn to PNG and embedded."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    style = f' style="max-width:{width}px"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure{style}><img src="{uri}" alt="{esc(caption or "figure")}">{cap}</figure>'


def gallery(items: Iterable[str], small: bool = False) -> str:
    """Figures side by side (wrapping)."""
    return f'<div class="gallery{" small" if small else ""}">{"".join(items)}</div>'


@dataclass
class Page:
    """A report page: a title, a subtitle and sections (title, anchor, HTML fragments)."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def add(self, title: str, parts: Sequence[str], anchor: str | None = None) -> None:
        anchor = anchor or "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
        self.sections.append((title, anchor, list(parts)))

    def render(self) -> str:
        nav = " ".join(link(f"#{a}", t) for t, a, _ in self.sections)
        body = "".join(f'<section id="{esc(a)}"><h2>{esc(t)}</h2>{"".join(p)}</section>' for t, a, p in self.sections)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        sub = f'<p class="note">{esc(self.subtitle)}</p>' if self.subtitle else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{esc(self.title)}</h1>{sub}<nav>{nav}</nav></header>{body}"
            f"<footer>Written by foveal {esc(__version__)} on {esc(now)}. Self-contained: every image is embedded."
            "</footer></body></html>\n"
        )


def read_json(path: str | os.PathLike[str], what: str, kind: type = dict) -> Any:
    """A JSON file a report needs; missing, broken or not holding a ``kind`` (an object by default) is a FovealError
    naming it.

    Args:
        path: the JSON file (UTF-8, a byte-order mark allowed).
        what: what the file is, for messages ("the run record").
        kind: the type of its top-level value (``dict`` or ``list``).
    """
    p = Path(path)
    fix = "rerun the command that writes it"
    try:
        value = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FovealError(f"report: {what} {p} is missing: {fix}") from None
    except UnicodeDecodeError as exc:
        raise FovealError(
            f"report: {what} {p} is not UTF-8 text (byte {exc.start} is not): it is damaged; {fix}"
        ) from None
    except RecursionError:
        raise FovealError(
            f"report: {what} {p} is nested too deeply to be foveal's JSON: it is damaged; {fix}"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise FovealError(f"report: cannot read {what} {p} ({exc}): {fix}") from None
    if not isinstance(value, kind):
        shown = "an object" if kind is dict else f"a {kind.__name__}"
        raise FovealError(f"report: {what} {p} holds a {type(value).__name__}, not {shown}: it is damaged; {fix}")
    return value
