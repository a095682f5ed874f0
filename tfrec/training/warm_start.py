"""Warm-start (continual) training: start from a previous run's weights on new data.

* Id vocabularies grow without disturbing old ids: the previous vocabulary keeps its order and
  new ids are appended, so every old id keeps its embedding row; new rows start fresh.
* Weights move variable by variable between two models of the same architecture; a variable
  whose shape differs only in its first axis (a grown embedding table) gets the old rows.
* Replay: a share of the previous run's training judgments joins the new data, against forgetting.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from tfrec.config.loader import load_config
from tfrec.data.tables import Catalog, Judgments
from tfrec.runs import SEARCH, RunFolder, RunIncomplete


class WarmStartError(ValueError):
    """A previous run that cannot seed this one (missing files, another architecture)."""


@dataclass
class PreviousRun:
    """What a warm start needs from an earlier run directory."""

    run_dir: Path
    loaded: Any  # its LoadedConfig
    retrieval_vocabulary: list[str]
    metrics: dict

    @property
    def retrieval_weights(self) -> Path:
        """The two towers' checkpoint prefix."""
        return RunFolder(self.run_dir).retrieval_weights


def read_previous_run(run_dir: Path) -> PreviousRun:
    """Load a previous search run's config, vocabulary and metrics (clear errors for what is missing)."""
    folder = RunFolder(run_dir)
    record = folder.record()
    if record is not None:  # runs without run.json (older tfrec) are judged by their files alone
        if folder.kind() != SEARCH:
            raise WarmStartError("--warm-start %s is a %s run, not a search run" % (folder.root, record.kind))
        try:
            folder.require_finished()
        except RunIncomplete as err:
            raise WarmStartError("--warm-start: %s" % err) from err
    weights_index = folder.retrieval_weights.with_name(folder.retrieval_weights.name + ".index")
    missing = [str(p) for p in (folder.config, weights_index, folder.retrieval_vocabulary) if not p.is_file()]
    if missing:
        raise WarmStartError("--warm-start %s is not a trained search run; missing: %s" % (folder.root, ", ".join(missing)))
    vocabulary = [line for line in folder.retrieval_vocabulary.read_text(encoding="utf-8").split("\n") if line]
    metrics = json.loads(folder.metrics.read_text(encoding="utf-8")) if folder.metrics.is_file() else {}
    return PreviousRun(folder.root, load_config(folder.config, []), vocabulary, metrics)


def grown_vocabulary(old: list[str], new: Iterable[str]) -> list[str]:
    """The old vocabulary in its order, then the new ids it lacks (sorted)."""
    known = set(old)
    return list(old) + sorted({str(i) for i in new} - known)


def transfer_weights(source: Any, target: Any) -> dict:
    """Copy every variable of ``source`` into ``target`` (same architecture; grown first axes keep old rows)."""
    src, dst = source.weights, target.weights
    if len(src) != len(dst):
        raise WarmStartError("the previous model has %d variables and this one %d: the architecture changed "
                             "(warm starts need the same text/retrieval settings)" % (len(src), len(dst)))
    grown = []
    for a, b in zip(src, dst):
        old, new = tuple(a.shape), tuple(b.shape)
        if old == new:
            b.assign(a)
        elif len(old) == len(new) and old[1:] == new[1:] and new[0] > old[0]:
            value = b.numpy()
            value[: old[0]] = a.numpy()
            b.assign(value)
            grown.append({"variable": b.name, "old_rows": old[0], "new_rows": new[0] - old[0]})
        else:
            raise WarmStartError("variable %s has shape %s in the previous run and %s now: the architecture changed"
                                 % (b.name, old, new))
    return {"variables": len(dst), "grown": grown}


def replay_judgments(old: Judgments, old_catalog: Catalog, catalog: Catalog, fraction: float, seed: int) -> tuple[Judgments, dict]:
    """A seeded ``fraction`` of the old queries' judgments, with products re-indexed into ``catalog``."""
    queries = np.unique(old.queries.astype(str))
    take = int(round(len(queries) * fraction))
    if take == 0:
        return Judgments(old.queries[:0], old.products[:0], old.labels[:0], old.source), {"queries": 0, "judgments": 0, "dropped": 0}
    chosen = set(np.random.default_rng(seed).permutation(queries)[:take].tolist())
    keep = np.fromiter((q in chosen for q in old.queries), bool, count=len(old))
    ids = old_catalog.ids[old.products[keep]]
    rows = catalog.index_of(ids)
    present = rows >= 0  # products the new catalog no longer holds are dropped (and counted)
    out = Judgments(old.queries[keep][present], rows[present].astype(np.int32), old.labels[keep][present], old.source)
    return out, {"queries": take, "judgments": int(present.sum()), "dropped": int((~present).sum())}


def concat_judgments(a: Judgments, b: Judgments) -> Judgments:
    """Two judgment tables as one (same catalog)."""
    return Judgments(np.concatenate([a.queries, b.queries]), np.concatenate([a.products, b.products]).astype(np.int32),
                     np.concatenate([a.labels, b.labels]).astype(np.float32), a.source)


def forgetting(before: Optional[dict], after: dict, keys: Iterable[str]) -> dict:
    """{metric: after - before} where both exist (negative = forgotten)."""
    if not before:
        return {}
    return {k: round(float(after[k]) - float(before[k]), 4) for k in keys if k in after and k in before}
