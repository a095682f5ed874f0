"""A report as a list of blocks, rendered to Markdown or to one self-contained HTML page.

Block text is raw; each renderer escapes it, so strings from metrics.json can hold any character.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Sequence, Union

from tfrec.files import write_bytes_atomic
from tfrec.reports.tables import Cell, Table
from tfrec.runs import RunFolder

MARKDOWN_FILE = RunFolder(Path()).report_markdown.name
HTML_FILE = RunFolder(Path()).report_html.name


@dataclass(frozen=True)
class Heading:
    """A section heading (level 1 is the page title)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Running text: (text, style) parts, style "" / "strong" / "code"; ``note`` renders it small and muted."""

    parts: tuple[tuple[str, str], ...]
    note: bool = False


@dataclass(frozen=True)
class Bullets:
    """A bullet list of plain lines."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class KeyValues:
    """A key/value list."""

    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TableBlock:
    """A table with an optional note under it."""

    table: Table
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A chart: Markdown links the PNG file written beside it, HTML inlines the PNG (a data: URI)."""

    file_name: str
    png: bytes
    alt: str
    caption: str


@dataclass(frozen=True)
class Card:
    """One gallery entry: a title line, a muted subtitle, and titled lists of lines."""

    title: str
    subtitle: str
    lists: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Gallery:
    """Cards side by side (HTML) or one after another (Markdown)."""

    cards: tuple[Card, ...]


Block = Union[Heading, Paragraph, Bullets, KeyValues, TableBlock, Figure, Gallery]

# Escape only what CommonMark/GFM would read as markup, so the raw file stays readable too:
# code, emphasis, table pipes, "_" that is not inside a word, tags/autolinks, entities, link syntax.
_MD_SPECIAL = re.compile(r"([\\`*|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|\](?=[(\[:]))")
_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")
_MD_ENTITY = re.compile(r"&(?=#?\w+;)")
_MD_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+[.)])")


def md_escape(text: str) -> str:
    """Inline text that Markdown shows literally, also inside a table cell (pipes, emphasis, HTML)."""
    text = re.sub(r"\s+", " ", str(text))  # a newline would end a table row or a list item
    text = _MD_TAG.sub("&lt;", _MD_ENTITY.sub("&amp;", text))
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_line(text: str) -> str:
    """Like :func:`md_escape`, for text that starts a line (so "1." or "#" cannot start a list or heading)."""
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), md_escape(text))


def md_code(text: str) -> str:
    """An inline code span that holds ``text`` literally, pipes escaped for table cells."""
    text = re.sub(r"\s+", " ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    body = text.replace("|", "\\|")
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return "%s%s%s%s%s" % (fence, pad, body, pad, fence)


def _md_part(text: str, style: str) -> str:
    if style == "code":
        return md_code(text)
    return "**%s**" % md_escape(text) if style == "strong" else md_escape(text)


def _md_parts(parts: Sequence[tuple[str, str]]) -> str:
    rendered = [_md_part(text, style) for text, style in parts]
    if parts and parts[0][1] == "":
        rendered[0] = md_line(parts[0][0])
    return "".join(rendered)


def _md_cell(cell: Cell) -> str:
    text = md_escape(cell.text)
    return "**%s**" % text if cell.bold and text else text


def _md_table(table: Table) -> list[str]:
    numeric = table.numeric_columns()
    lines = ["| " + " | ".join(md_escape(h) for h in table.header) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def _md_card(card: Card) -> str:
    lines = ["**%s**" % md_escape(card.title)] + (["_%s_" % md_escape(card.subtitle)] if card.subtitle else [])
    for heading, items in card.lists:
        lines += ["", md_line(heading)] + ["%d. %s" % (i, md_escape(item)) for i, item in enumerate(items, 1)]
    return "\n".join(lines)


def to_markdown(blocks: Sequence[Block]) -> str:
    """The report as GitHub-flavoured Markdown; figures are image links to their PNG files."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + md_line(block.text))
        elif isinstance(block, Paragraph):
            text = _md_parts(block.parts)
            out.append("_%s_" % text if block.note else text)
        elif isinstance(block, Bullets):
            out.append("\n".join("- " + md_line(item) for item in block.items))
        elif isinstance(block, KeyValues):
            out.append("\n".join("- %s: %s" % (md_line(k), md_escape(v)) for k, v in block.items))
        elif isinstance(block, TableBlock):
            lines = _md_table(block.table)
            if block.note:
                lines += ["", "_%s_" % md_escape(block.note)]
            out.append("\n".join(lines))
        elif isinstance(block, Figure):
            out.append("![%s](%s)\n\n_%s_" % (md_escape(block.alt), block.file_name, md_escape(block.caption)))
        elif isinstance(block, Gallery):
            out.append("\n\n".join(_md_card(card) for card in block.cards))
        else:
            raise ValueError("unknown report block %r" % (block,))
    return "\n\n".join(out) + "\n"


CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f3f4f6; color: #1f2328;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1080px; margin: 24px auto; padding: 28px 36px 48px; background: #fff;
  border: 1px solid #e4e7eb; border-radius: 8px; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 5px; border-bottom: 1px solid #e4e7eb; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p { margin: 8px 0; }
p.note, figcaption { color: #59636e; font-size: 13px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0; font-size: 14px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e4e7eb; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; border-bottom: 2px solid #d0d7de; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tbody tr:hover { background: #fafbfc; }
td.good { color: #1a7f37; }
td.bad { color: #cf222e; }
td.muted { color: #8c959f; }
h4 { font-size: 14px; margin: 14px 0 4px; color: #59636e; }
figure { margin: 14px 0 8px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e7eb; border-radius: 4px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f3f5f7;
  padding: 1px 4px; border-radius: 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 6px 0; font-size: 14px; }
dt { color: #59636e; } dd { margin: 0; overflow-wrap: anywhere; }
ul { padding-left: 22px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; margin: 10px 0; }
.card { border: 1px solid #e4e7eb; border-radius: 6px; padding: 10px 12px; font-size: 13px; background: #fcfcfd; }
.card-title { font-weight: 600; font-size: 14px; }
.card-sub { color: #59636e; margin-bottom: 4px; }
.card-list { color: #59636e; margin-top: 6px; font-weight: 600; }
.card ol { margin: 2px 0; padding-left: 20px; }
"""


def _html_part(text: str, style: str) -> str:
    if style in ("strong", "code"):
        return "<%s>%s</%s>" % (style, escape(text), style)
    return escape(text)


def _html_cell(cell: Cell) -> str:
    classes = " ".join(c for c in ("num" if cell.numeric else "", cell.tone) if c)
    text = escape(cell.text)
    if cell.bold and text:
        text = "<strong>%s</strong>" % text
    return "<td%s>%s</td>" % (' class="%s"' % classes if classes else "", text)


def _html_table(table: Table) -> str:
    numeric = table.numeric_columns()
    head = "".join("<th%s>%s</th>" % (' class="num"' if n else "", escape(h)) for h, n in zip(table.header, numeric))
    rows = "\n".join("<tr>%s</tr>" % "".join(_html_cell(c) for c in row) for row in table.rows)
    return '<div class="scroll"><table>\n<thead><tr>%s</tr></thead>\n<tbody>\n%s\n</tbody>\n</table></div>' % (head, rows)


def _html_card(card: Card) -> str:
    parts = ['<div class="card"><div class="card-title">%s</div>' % escape(card.title)]
    if card.subtitle:
        parts.append('<div class="card-sub">%s</div>' % escape(card.subtitle))
    for heading, items in card.lists:
        parts.append('<div class="card-list">%s</div><ol>%s</ol>' % (escape(heading), "".join("<li>%s</li>" % escape(i) for i in items)))
    return "".join(parts) + "</div>"


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """The report as one HTML page: inline CSS and PNG charts as data: URIs, no scripts, no external resources."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("<h%d>%s</h%d>" % (block.level, escape(block.text), block.level))
        elif isinstance(block, Paragraph):
            out.append('<p%s>%s</p>' % (' class="note"' if block.note else "", "".join(_html_part(t, s) for t, s in block.parts)))
        elif isinstance(block, Bullets):
            out.append("<ul>\n%s\n</ul>" % "\n".join("<li>%s</li>" % escape(item) for item in block.items))
        elif isinstance(block, KeyValues):
            out.append("<dl>\n%s\n</dl>" % "\n".join("<dt>%s</dt><dd>%s</dd>" % (escape(k), escape(v)) for k, v in block.items))
        elif isinstance(block, TableBlock):
            out.append(_html_table(block.table) + ('\n<p class="note">%s</p>' % escape(block.note) if block.note else ""))
        elif isinstance(block, Gallery):
            out.append('<div class="gallery">\n%s\n</div>' % "\n".join(_html_card(card) for card in block.cards))
        elif isinstance(block, Figure):
            out.append('<figure>\n<img src="data:image/png;base64,%s" alt="%s">\n<figcaption>%s</figcaption>\n</figure>'
                       % (base64.b64encode(block.png).decode("ascii"), escape(block.alt), escape(block.caption)))
        else:
            raise ValueError("unknown report block %r" % (block,))
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            "<title>%s</title>\n<style>%s</style>\n</head>\n<body>\n<main>\n%s\n</main>\n</body>\n</html>\n"
            % (escape(title), CSS, "\n".join(out)))


def write_report(run_dir: Path, title: str, blocks: Sequence[Block], chart_names: Sequence[str]) -> tuple[Path, Path, list[Path]]:
    """Write report.md, its PNG charts beside it and a self-contained report.html; returns (md, html, pngs).

    ``chart_names`` are every chart this kind of report can hold: one left from an earlier
    report that this one lacks is deleted, since it would contradict the new report.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    figures = {block.file_name: block for block in blocks if isinstance(block, Figure)}
    unknown = sorted(set(figures) - set(chart_names))
    if unknown:
        raise ValueError("figures %s are not among the report's chart names %s" % (unknown, list(chart_names)))
    written = []
    for name in chart_names:
        if name in figures:
            write_bytes_atomic(run_dir / name, figures[name].png)
            written.append(run_dir / name)
        else:
            (run_dir / name).unlink(missing_ok=True)
        (run_dir / (Path(name).stem + ".svg")).unlink(missing_ok=True)  # the SVG charts of tfrec 0.1 reports
    md, html = RunFolder(run_dir).report_markdown, RunFolder(run_dir).report_html
    write_bytes_atomic(md, to_markdown(blocks).encode("utf-8"))
    write_bytes_atomic(html, to_html(title, blocks).encode("utf-8"))
    return md, html, written
