"""Paired comparisons of runs: per-query (or per-user) metrics saved by every run, bootstrap CIs over them.

Each trained run writes ``per_query.npz``: ``keys`` (the query strings, or user ids, in evaluation
order) and one float array per ``"<system>/<metric>"`` (NaN where a metric is undefined, e.g. a
query without a positive). Two runs on the same split compare row by row after aligning on the
keys; a run also compares one of its systems with another (a model against a baseline).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfrec.evaluation.search import paired_bootstrap
from tfrec.runs import RunFolder

PER_QUERY_FILE = RunFolder(Path()).per_query.name  # the file's name, for callers that write it by name
KEYS = "keys"


def write_per_query(path: Path, keys: Sequence[str], per_query: dict[str, dict[str, np.ndarray]]) -> Path:
    """Save ``{system: {metric: [n]}}`` with the row keys as ``"<system>/<metric>"`` arrays."""
    keys = np.asarray(keys).astype(str)
    arrays = {KEYS: keys}
    for system, metrics in per_query.items():
        for metric, values in metrics.items():
            values = np.asarray(values, dtype=np.float64)
            if values.shape != keys.shape:
                raise ValueError("%s/%s has %d values for %d keys" % (system, metric, len(values), len(keys)))
            arrays["%s/%s" % (system, metric)] = values
    np.savez_compressed(path, **arrays)
    return Path(path)


@dataclass
class PerQuery:
    """One run's saved per-query metrics."""

    source: str
    keys: np.ndarray
    values: dict[str, np.ndarray]  # "<system>/<metric>" -> [n]

    @classmethod
    def load(cls, run_or_file: Path) -> "PerQuery":
        """Read ``per_query.npz`` of a run folder whose training finished (or the file itself)."""
        path = Path(run_or_file)
        if not path.exists():
            raise FileNotFoundError("%s: no run folder or per-query file there" % path)
        if path.is_dir():
            folder = RunFolder(path)
            folder.require_finished()  # a running or failed run may hold an earlier attempt's file
            path = folder.per_query
        if not path.is_file():
            raise FileNotFoundError("%s not found: runs trained with this version of tfrec save it; re-run `tfrec train`" % path)
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
        except (ValueError, OSError) as err:
            raise ValueError("%s is not a readable per-query file: %s" % (path, err)) from err
        if KEYS not in arrays:
            raise ValueError("%s has no %r array" % (path, KEYS))
        keys = arrays.pop(KEYS).astype(str)
        return cls(str(path), keys, {k: v.astype(np.float64) for k, v in arrays.items()})

    def systems(self) -> list[str]:
        """System names, in file order."""
        return list(dict.fromkeys(k.split("/", 1)[0] for k in self.values))

    def metrics(self, system: str) -> list[str]:
        """The metrics saved for ``system``."""
        return [k.split("/", 1)[1] for k in self.values if k.split("/", 1)[0] == system]

    def get(self, system: str, metric: str) -> np.ndarray:
        """One array; a clear error naming what exists otherwise."""
        key = "%s/%s" % (system, metric)
        if key not in self.values:
            raise KeyError("%s has no %s; systems: %s; metrics of %s: %s" % (
                self.source, key, ", ".join(self.systems()), system, ", ".join(self.metrics(system)) or "none"))
        return self.values[key]


def align(a: PerQuery, b: PerQuery) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into a and b of their common keys (in a's order); refuses runs that share no key."""
    if len(set(a.keys)) != len(a.keys) or len(set(b.keys)) != len(b.keys):
        raise ValueError("per-query keys repeat in %s or %s; cannot pair rows" % (a.source, b.source))
    where_b = {k: i for i, k in enumerate(b.keys)}
    rows_a = np.array([i for i, k in enumerate(a.keys) if k in where_b], dtype=np.int64)
    if len(rows_a) == 0:
        raise ValueError("%s and %s share no query/user: they were not evaluated on the same split" % (a.source, b.source))
    rows_b = np.array([where_b[k] for k in a.keys[rows_a]], dtype=np.int64)
    return rows_a, rows_b


def compare(a: PerQuery, b: PerQuery, pairs: Sequence[tuple[str, str, str]], *, n_resamples: int = 2000,
            seed: int = 0) -> list[dict]:
    """Paired bootstrap of ``a`` minus ``b`` for each (system in a, system in b, metric), over their common rows."""
    rows_a, rows_b = align(a, b)
    out = []
    for system_a, system_b, metric in pairs:
        x, y = a.get(system_a, metric)[rows_a], b.get(system_b, metric)[rows_b]
        test = paired_bootstrap(x, y, n_resamples=n_resamples, seed=seed)
        kept = ~(np.isnan(x) | np.isnan(y))
        out.append({
            "a": system_a, "b": system_b, "metric": metric, "mean_a": float(x[kept].mean()), "mean_b": float(y[kept].mean()),
            "diff": test["mean_diff"], "low": test["low"], "high": test["high"], "p_value": test["p_value"],
            "n": test["n_queries"], "common_rows": int(len(rows_a)), "rows_a": int(len(a.keys)), "rows_b": int(len(b.keys)),
        })
    return out


def default_pairs(a: PerQuery, b: PerQuery, system: Optional[str] = None, against: Optional[str] = None) -> list[tuple[str, str, str]]:
    """Which arrays to compare: ``system`` of a vs ``against`` (default: the same system) of b, on every metric both have."""
    if system is None:
        common = [s for s in a.systems() if s in b.systems()]
        systems = [(s, s) for s in common] if against is None else []
        if against is not None:
            raise ValueError("--against needs --system")
    else:
        systems = [(system, against or system)]
    pairs = [(sa, sb, m) for sa, sb in systems for m in a.metrics(sa) if m in b.metrics(sb)]
    if not pairs:
        raise ValueError("nothing to compare: no metric is saved for both %s (in %s) and %s (in %s)" % (
            systems[0][0] if systems else "any system", a.source, systems[0][1] if systems else "any system", b.source))
    return pairs


def format_comparison(rows: list[dict], label_a: str, label_b: str) -> str:
    """A plain-text table: means, difference, 95% CI, p-value and whether the CI excludes 0."""
    lines = ["A = %s" % label_a, "B = %s" % label_b, "",
             "%-22s %-22s %-14s %8s %8s %9s %21s %7s %6s" % ("system A", "system B", "metric", "A", "B", "A - B", "95% CI", "p", "n")]
    for r in rows:
        verdict = "A better" if r["low"] > 0 else ("B better" if r["high"] < 0 else "no measurable difference")
        lines.append("%-22s %-22s %-14s %8.4f %8.4f %+9.4f [%+8.4f, %+8.4f] %7.4f %6d  %s" % (
            r["a"][:22], r["b"][:22], r["metric"][:14], r["mean_a"], r["mean_b"], r["diff"], r["low"], r["high"], r["p_value"], r["n"], verdict))
    if rows and rows[0]["common_rows"] < max(rows[0]["rows_a"], rows[0]["rows_b"]):
        lines.append("(paired on the %d rows both runs evaluated; A has %d, B %d)" % (rows[0]["common_rows"], rows[0]["rows_a"], rows[0]["rows_b"]))
    return "\n".join(lines)
