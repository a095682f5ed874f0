"""Validating readers for user data: catalog, search judgments and interaction logs.

Each comes as a CSV file, a Parquet file (``.parquet``) or a pandas DataFrame; all three go
through the same checks (:mod:`tfrec.data.sources` turns them into the same rows). Strict mode
raises a :class:`DataError` naming file (or DataFrame), line or row, and field; lenient mode
drops the row and counts it in the :class:`DropReport`. Problems with the whole file (not
found, wrong encoding, broken quoting, missing columns) are always errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

import numpy as np

from tfrec.config.schema import CatalogFiles, InteractionFiles, JudgmentFiles
from tfrec.data.errors import RowChecker
from tfrec.data.locations import Location, locate
from tfrec.data.sources import read_rows
from tfrec.data.tables import Catalog, Interactions, Judgments, Sequences


def read_catalog(spec: CatalogFiles, folder: Location, checker: RowChecker, frame: Any = None) -> Catalog:
    """Read a product catalog (CSV or Parquet file, or ``frame``); ids must be unique and every product needs some text."""
    required = [spec.id_column, *spec.text_columns, *spec.numeric_columns, *spec.categorical_columns]
    source = locate(folder, spec.path) if frame is None else frame
    table = read_rows(source, required, checker, encoding=spec.encoding, name="catalog DataFrame")
    id_col = table.column(spec.id_column)
    text_cols = {name: table.column(name) for name in spec.text_columns}
    num_cols = {name: table.column(name) for name in spec.numeric_columns}
    cat_cols = {name: table.column(name) for name in spec.categorical_columns}

    ids: list[str] = []
    texts: dict[str, list[str]] = {name: [] for name in text_cols}
    numeric: dict[str, list[float]] = {name: [] for name in num_cols}
    categorical: dict[str, list[str]] = {name: [] for name in cat_cols}
    seen: dict[str, Any] = {}
    for row, line in zip(table.rows, table.lines):
        pid = row[id_col].strip()
        if not pid:
            checker.reject(table.error("expected a non-empty product id", line, spec.id_column))
            continue
        if pid in seen:
            checker.reject(table.error("duplicate product id %r (first on %s)" % (pid, table.place(seen[pid])), line, spec.id_column))
            continue
        if not any(row[c].strip() for c in text_cols.values()):
            checker.reject(table.error("expected non-empty text in %s" % " or ".join(text_cols), line, spec.text_columns[0]))
            continue
        parsed = {}
        for name, col in num_cols.items():
            value = _parse_float(row[col])
            if value is None:
                break
            parsed[name] = value
        else:
            seen[pid] = line
            ids.append(pid)
            for name, col in text_cols.items():
                texts[name].append(row[col].strip())
            for name, value in parsed.items():
                numeric[name].append(value)
            for name, col in cat_cols.items():
                categorical[name].append(row[col].strip())
            continue
        bad = next(n for n in num_cols if n not in parsed)
        checker.reject(table.error("expected a number or an empty field, got %r" % row[num_cols[bad]], line, bad))
    if not ids:
        raise table.error("no products left to read (every row was empty or rejected)")
    return Catalog(
        ids=np.asarray(ids, dtype=object),
        texts={k: np.asarray(v, dtype=object) for k, v in texts.items()},
        numeric={k: np.asarray(v, dtype=np.float32) for k, v in numeric.items()},
        categorical={k: np.asarray(v, dtype=object) for k, v in categorical.items()},
        source=table.path,
    )


def _parse_float(text: str) -> Optional[float]:
    """A float, NaN for an empty field, or None when the text is not a finite number."""
    text = text.strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_judgments(spec: JudgmentFiles, source: Any, catalog: Catalog, checker: RowChecker, name: str = "judgments DataFrame") -> Judgments:
    """Read search judgments from a CSV or Parquet path or a DataFrame (called ``name`` in messages).

    Labels must lie in [label_min, label_max], products in the catalog.
    """
    table = read_rows(source, [spec.query_column, spec.product_column, spec.label_column], checker, encoding=spec.encoding, name=name)
    q_col, p_col, l_col = (table.column(c) for c in (spec.query_column, spec.product_column, spec.label_column))
    queries: list[str] = []
    products: list[int] = []
    labels: list[float] = []
    seen: dict[tuple[str, int], Any] = {}
    for row, line in zip(table.rows, table.lines):
        query = row[q_col].strip()
        if not query:
            checker.reject(table.error("expected a non-empty query", line, spec.query_column))
            continue
        label = _parse_float(row[l_col])
        if label is None or math.isnan(label) or not spec.label_min <= label <= spec.label_max:
            checker.reject(table.error("expected a number in [%g, %g], got %r" % (spec.label_min, spec.label_max, row[l_col]), line, spec.label_column))
            continue
        pid = row[p_col].strip()
        index = int(catalog.index_of([pid])[0])
        if index < 0:
            checker.reject(table.error("product id %r is not in the catalog (%s)" % (pid, catalog.source), line, spec.product_column))
            continue
        if (query, index) in seen:
            checker.reject(table.error("duplicate judgment of product %r for query %r (first on %s)"
                                       % (pid, query, table.place(seen[(query, index)])), line, spec.product_column))
            continue
        seen[(query, index)] = line
        queries.append(query)
        products.append(index)
        labels.append(label)
    return Judgments(
        queries=np.asarray(queries, dtype=object),
        products=np.asarray(products, dtype=np.int32),
        labels=np.asarray(labels, dtype=np.float32),
        source=table.path,
    )


def _parse_timestamp(text: str) -> Optional[int]:
    """Seconds since the epoch from an integer or an ISO 8601 date/time; None if neither."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


def read_interactions(spec: InteractionFiles, folder: Location, catalog: Catalog, checker: RowChecker, frame: Any = None) -> Interactions:
    """Read an interaction log (CSV or Parquet file, or ``frame``); items must be in the catalog, timestamps integers or ISO dates."""
    required = [spec.user_column, spec.item_column, spec.timestamp_column] + ([spec.rating_column] if spec.rating_column else [])
    source = locate(folder, spec.path) if frame is None else frame
    table = read_rows(source, required, checker, encoding=spec.encoding, name="interactions DataFrame")
    u_col, i_col, t_col = (table.column(c) for c in (spec.user_column, spec.item_column, spec.timestamp_column))
    r_col = table.column(spec.rating_column) if spec.rating_column else None
    users: list[str] = []
    items: list[int] = []
    stamps: list[int] = []
    ratings: list[float] = []
    for row, line in zip(table.rows, table.lines):
        user = row[u_col].strip()
        if not user:
            checker.reject(table.error("expected a non-empty user id", line, spec.user_column))
            continue
        item = int(catalog.index_of([row[i_col].strip()])[0])
        if item < 0:
            checker.reject(table.error("item id %r is not in the catalog (%s)" % (row[i_col].strip(), catalog.source), line, spec.item_column))
            continue
        stamp = _parse_timestamp(row[t_col])
        if stamp is None:
            checker.reject(table.error("expected an integer timestamp or an ISO 8601 date, got %r" % row[t_col], line, spec.timestamp_column))
            continue
        if r_col is not None:
            rating = _parse_float(row[r_col])
            if rating is None or math.isnan(rating):
                checker.reject(table.error("expected a number, got %r" % row[r_col], line, spec.rating_column))
                continue
            ratings.append(rating)
        users.append(user)
        items.append(item)
        stamps.append(stamp)
    return Interactions(
        users=np.asarray(users, dtype=object),
        items=np.asarray(items, dtype=np.int32),
        timestamps=np.asarray(stamps, dtype=np.int64),
        ratings=np.asarray(ratings, dtype=np.float32) if r_col is not None else None,
        source=table.path,
    )


@dataclass
class LeaveOneOut:
    """A per-user time-ordered split: every prefix trains, the second-to-last item validates."""

    train: Sequences
    valid: Sequences
    held_out_test: int  # users whose last item is kept apart as the test target
    short_users: int  # users with fewer than 3 events: they give no valid example


def leave_one_out(log: Interactions) -> LeaveOneOut:
    """Split a log per user by time: last item = test (held out), second-to-last = valid."""
    users = log.users.astype(str)
    order = np.lexsort((np.arange(len(log)), log.timestamps, users))  # stable within equal times
    items = log.items[order].astype(np.int32)
    sorted_users = users[order]
    if len(items) == 0:
        empty = Sequences(items, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, object), log.source)
        return LeaveOneOut(empty, empty, 0, 0)
    boundaries = np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1
    user_starts = np.concatenate([[0], boundaries]).astype(np.int64)
    user_ends = np.concatenate([boundaries, [len(items)]]).astype(np.int64)
    lengths = user_ends - user_starts
    long_enough = lengths >= 3

    # Train targets: positions start+1 .. end-3 of each user, history = items[start:target).
    n_train = np.where(long_enough, lengths - 3, 0)
    owner = np.repeat(np.arange(len(lengths)), n_train)
    step = np.arange(n_train.sum()) - np.repeat(np.cumsum(n_train) - n_train, n_train)
    target_pos = user_starts[owner] + 1 + step
    train = Sequences(items, user_starts[owner], target_pos, items[target_pos], sorted_users[user_starts[owner]].astype(object), log.source)

    valid_users = np.flatnonzero(long_enough)
    valid_pos = user_ends[valid_users] - 2
    valid = Sequences(items, user_starts[valid_users], valid_pos, items[valid_pos], sorted_users[user_starts[valid_users]].astype(object), log.source)
    return LeaveOneOut(train, valid, held_out_test=int(long_enough.sum()), short_users=int((~long_enough).sum()))
