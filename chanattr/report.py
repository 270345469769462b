"""A self-contained HTML report: one page, figures embedded as base64 PNG, no scripts and
no external files, so it opens anywhere (and in a headless browser for tests)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    """A heading, paragraphs, tables (a header row and rows) and figures (PNG files)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list]]] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd;
       padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f5f8; } figure { margin: 1em 0; } img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; } .meta { color: #666; font-size: 0.9em; }
"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return html.escape(str(value))


def render(title: str, sections: list[Section], meta: str = "") -> str:
    """The page as an HTML string."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    if meta:
        out.append(f'<p class="meta">{html.escape(meta)}</p>')
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out.extend(f"<p>{html.escape(p)}</p>" for p in s.paragraphs)
        for header, rows in s.tables:
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>")
            out.append("<tbody>" + "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                                           for row in rows) + "</tbody></table>")
        for path, caption in s.figures:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
