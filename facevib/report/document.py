"""A small document model rendered twice: Markdown (``REPORT.md``) and a standalone HTML page.

A report is a list of blocks (headings, paragraphs, tables, images, code); both renderers
walk the same list, so the two files always hold the same content. Inline markup is limited
to backtick code spans, which both formats support. The HTML page inlines its images as
base64 data URIs, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Heading", "Paragraph", "Table", "Image", "Code", "Bullets", "Block", "to_markdown", "to_html", "write"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""


@dataclass(frozen=True)
class Image:
    """A PNG file, referenced relative to the report's folder."""

    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


Block = Heading | Paragraph | Bullets | Table | Image | Code

_CODE_SPAN = re.compile(r"`([^`]+)`")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """Markdown text; image paths are written relative to ``base`` (the report's folder)."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in block.headers) + " |"]
            lines.append("|" + "|".join("---" for _ in block.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            if block.note:
                lines.append("\n" + block.note)
            out.append("\n".join(lines))
        elif isinstance(block, Image):
            relative = Path(os.path.relpath(block.path, base)).as_posix()
            out.append(f"![{block.caption}]({relative})\n\n*{block.caption}*")
        elif isinstance(block, Code):
            out.append(f"```{block.language}\n{block.text.rstrip()}\n```")
        else:  # pragma: no cover - the union above is closed
            raise TypeError(f"unknown block {block!r}")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape for HTML, then turn backtick spans into <code>."""
    return _CODE_SPAN.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text, quote=False))


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; }
code { font-family: ui-monospace, monospace; font-size: 0.92em; }
figure { margin: 1rem 0; } figcaption { font-style: italic; color: #444; }
img { max-width: 100%; }
"""


def to_html(blocks: Sequence[Block], title: str) -> str:
    """A standalone HTML page (images inlined as data URIs)."""
    parts: list[str] = []
    parts.append(f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>")
    parts.append(f"<style>{_STYLE}</style></head><body>")
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(str(h))}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            if block.note:
                parts.append(f"<p>{_inline(block.note)}</p>")
        elif isinstance(block, Image):
            data = base64.b64encode(Path(block.path).read_bytes()).decode("ascii")
            alt = html.escape(block.caption)
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{alt}'>"
                f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>")
        else:  # pragma: no cover
            raise TypeError(f"unknown block {block!r}")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(blocks: Sequence[Block], markdown_path: Path, html_path: Path, title: str) -> None:
    """Write both renderings (each atomically: temp file, then rename)."""
    for path, text in (
        (markdown_path, to_markdown(blocks, markdown_path.parent)),
        (html_path, to_html(blocks, title)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
