"""Free-form training records (metrics.json's ``training``) as readable key/value lists and tables, never as JSON."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from tfrec.reports.markup import Block, Heading, KeyValues, TableBlock
from tfrec.reports.tables import MISSING, Cell, Table, fmt_value

# Words that read better in their usual spelling than in a snake_case key.
_WORDS = {"e2e": "end-to-end", "mrr": "MRR", "map": "MAP", "scann": "ScaNN", "bm25": "BM25", "id": "id", "mb": "MB",
          "s": "(s)", "tune": "tuning", "mlp": "MLP"}
_METRIC = re.compile(r"^(ndcg|recall|precision)@(\d+)$")
# A mapping of at most this many numbers reads well on one line ("dense 1, lexical 0.3, zero_shot 0.25").
INLINE_ENTRIES = 5


def humanize(key: str) -> str:
    """A snake_case record key as words: "loss_per_epoch" -> "Loss per epoch", "tune_half_e2e_ndcg@10" -> "Tuning half end-to-end NDCG@10"."""
    words = []
    for word in str(key).replace("-", "_").split("_"):
        match = _METRIC.match(word.lower())
        if match:
            words.append("%s@%s" % ({"ndcg": "NDCG", "recall": "Recall", "precision": "Precision"}[match.group(1)], match.group(2)))
        elif word:
            words.append(_WORDS.get(word.lower(), word))
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _metric_name(key: str) -> str:
    match = _METRIC.match(str(key).lower())
    if match:
        return "%s@%s" % ({"ndcg": "NDCG", "recall": "Recall", "precision": "Precision"}[match.group(1)], match.group(2))
    return {"mrr": "MRR", "map": "MAP"}.get(str(key).lower(), str(key))


def show(value: Any) -> str:
    """A record value as text: counts with thousands separators, mappings as "key value, ...", lists as "a, b"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "{:,}".format(value)
    if isinstance(value, Mapping):
        return ", ".join("%s %s" % (_metric_name(k), show(v)) for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(show(v) for v in value) or "none"
    return fmt_value(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> bool:
    return not isinstance(value, (Mapping, list, tuple))


def _is_rows(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def rows_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """A list of records as a table: one row per record, one column per key (in first-seen order)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = tuple(tuple(Cell(show(row.get(k)) if k in row else MISSING,
                             numeric=isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)) for k in keys)
                  for row in rows)
    return Table(tuple(humanize(k) for k in keys), cells)


def _collect(details: Mapping[str, Any], prefix: str, items: list[tuple[str, str]], tables: list[tuple[str, Table]]) -> None:
    for key, value in details.items():
        name = "%s: %s" % (prefix, humanize(key)) if prefix else humanize(key)
        if _is_rows(value):
            tables.append((name, rows_table(value)))
        elif isinstance(value, Mapping) and value and (len(value) > INLINE_ENTRIES or not all(_number(v) for v in value.values())):
            _collect(value, name, items, tables)
        elif isinstance(value, (list, tuple)) and not all(_plain(v) for v in value):
            items.append((name, "; ".join(show(v) for v in value)))
        else:
            items.append((name, show(value)))


def detail_blocks(title: str, details: Mapping[str, Any], skip: Sequence[str] = ()) -> list[Block]:
    """A level-3 heading, the record's values as a key/value list, and each list of records (trials, epochs) as a table."""
    items: list[tuple[str, str]] = []
    tables: list[tuple[str, Table]] = []
    _collect({k: v for k, v in details.items() if k not in skip}, "", items, tables)
    if not items and not tables:
        return []
    blocks: list[Block] = [Heading(humanize(title), level=3)]
    blocks += [KeyValues(tuple(items))] if items else []
    for name, table in tables:
        blocks += [Heading(name, level=4), TableBlock(table)]
    return blocks
