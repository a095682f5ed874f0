"""Plain-text tables for what the ``tfrec`` commands print: a header row, aligned columns."""
from __future__ import annotations

from typing import Any, Sequence

from tfrec.reports.tables import clip_words

# A terminal line stays readable: longer titles are cut with "...".
TITLE_WIDTH = 80


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] = (), indent: str = "  ") -> str:
    """``rows`` under ``header``, each column as wide as its widest cell; ``numeric`` columns align right."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = list(numeric) + [False] * (len(header) - len(numeric))
    lines = []
    for row in cells:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def hits_table(hits: Sequence[Any], header: str = "", id_label: str = "product id") -> str:
    """Search or recommendation results (``Hit``s) as a table: rank, score, id and title, under a ``header`` line."""
    lines = [header] if header else []
    if not hits:
        lines.append("  (no results)")
        return "\n".join(lines)
    rows = [(hit.rank, "%.4f" % hit.score, hit.item_id, clip_words(hit.title, TITLE_WIDTH)) for hit in hits]
    lines.append(format_table(("rank", "score", id_label, "title"), rows, numeric=(True, True, False, False)))
    return "\n".join(lines)
