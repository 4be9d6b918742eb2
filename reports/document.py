"""A tiny document model rendered to Markdown and to self-contained HTML.

A report is a list of ``Section``s; a section is a list of blocks (paragraph, table,
figure). Figures are PNG bytes: written next to the Markdown and embedded base64 in the
HTML, so ``report.html`` opens offline with nothing beside it.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class Figure:
    name: str  # file name, e.g. "slowdown.png"
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # goes to results.json under the title's key

    def para(self, text: str) -> "Section":
        self.blocks.append(("p", text))
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> "Section":
        self.blocks.append(("table", (list(headers), [list(r) for r in rows])))
        return self

    def figure(self, fig: Figure) -> "Section":
        self.blocks.append(("figure", fig))
        return self

    def code(self, text: str) -> "Section":
        self.blocks.append(("code", text))
        return self


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for kind, b in s.blocks:
            if kind == "p":
                lines += [b, ""]
            elif kind == "code":
                lines += ["```", b, "```", ""]
            elif kind == "table":
                headers, rows = b
                lines.append("| " + " | ".join(headers) + " |")
                lines.append("|" + "---|" * len(headers))
                lines += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in r) + " |" for r in rows]
                lines.append("")
            elif kind == "figure":
                lines += [f"![{b.caption}]({b.name})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}
th{background:#eee}img{max-width:100%}figcaption{font-style:italic;color:#555}pre{background:#f4f4f4;padding:.5em;overflow-x:auto}"""


def _inline(text: str) -> str:
    """Escape ``text`` for HTML, then render the two Markdown inlines the sections use:
    **bold** and `code`."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)


def to_html(title: str, sections: Sequence[Section]) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        for kind, b in s.blocks:
            if kind == "p":
                parts.append(f"<p>{_inline(b)}</p>")
            elif kind == "code":
                parts.append(f"<pre>{e(b)}</pre>")
            elif kind == "table":
                headers, rows = b
                parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(_cell(c))}</td>" for c in r) + "</tr>" for r in rows]
                parts.append("</table>")
            elif kind == "figure":
                data = base64.b64encode(b.png).decode()
                parts.append(f"<figure><img alt='{e(b.caption)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{e(b.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
