"""How many rows of a ``[rows, n_items]`` score matrix one step of a whole-catalog ranking holds.

Ranking every user or query against the whole catalog never builds the full ``[n, n_items]``
matrix: rows go through in chunks whose scores stay near :data:`SCORE_CELLS` values (256 MB of
float32). Callers with a historical chunk size keep it as ``most``, so results on catalogs small
enough for it are computed exactly as before.
"""
from __future__ import annotations

from typing import Optional

SCORE_CELLS = 1 << 26  # 64M scores: 256 MB of float32 per chunk


def row_chunk(n_items: int, cells: int = SCORE_CELLS, most: Optional[int] = None) -> int:
    """Rows per chunk so that rows x ``n_items`` stays within ``cells`` (at least 1, at most ``most``)."""
    if cells < 1:
        raise ValueError("cells must be >= 1, got %d" % cells)
    rows = max(1, int(cells) // max(1, int(n_items)))
    return rows if most is None else max(1, min(int(most), rows))
