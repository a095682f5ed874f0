"""Full-ranking recommendation metrics: one target per example, ranked against every catalog item (pure numpy).

Conventions (those of the shared datasets README for Amazon Scientific):

- Every example has exactly one target (leave-one-out: ``Sequences.targets``) and a system
  ranks ALL catalog items for it; nothing is excluded unless ``exclude`` is given, and a
  report says which.
- Recall@k is a hit (1 if the target is in the top k, else 0); NDCG@k is ``1 / log2(rank + 2)``
  with the 0-based rank of the target when ``rank < k`` (ideal DCG is 1: one relevant item);
  MRR is ``1 / (rank + 1)`` within the whole top-K list given, 0 when the target is not in it.
- Ties in scores rank the lower item row first, so lists are reproducible.
- Beyond accuracy (top-10 lists by default): catalog coverage, intra-list diversity (mean pairwise
  cosine distance of the items' text vectors) and novelty (mean self-information of the
  recommended items under add-one smoothed training popularity).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tfrec.data.tables import Sequences
from tfrec.evaluation.chunks import SCORE_CELLS, row_chunk
from tfrec.evaluation.search import paired_bootstrap

EMPTY = -1  # a top-k slot with no item (fewer than k items left after exclusion)
# Scores per chunk of top_k_items: its working copies take ~17-25 bytes a score (~140-200 MB).
TOP_K_CELLS = SCORE_CELLS // 8
DIVERSITY_CELLS = 1 << 23  # float64 list vectors per chunk of intra_list_diversity (64 MB)
USER_BATCH = 1024  # users scored per matrix product on catalogs up to 65,536 items
BEYOND_ACCURACY_K = 10
CI_METRICS = ("recall@10", "ndcg@10")
NOVELTY_SMOOTHING = "p(item) = (count + 1) / (total + n_items) from training interaction counts"


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError("scores must be [examples, n_items], got shape %s" % (scores.shape,))
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise ValueError("scores must be real numbers, got dtype %s" % scores.dtype)
    return scores


def _check_finite(scores: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    return scores


def _check_exclude(exclude: Optional[np.ndarray], n: int, n_items: int) -> Optional[np.ndarray]:
    if exclude is None:
        return None
    exclude = np.asarray(exclude)
    if exclude.ndim != 2 or exclude.shape[0] != n:
        raise ValueError("exclude must be [examples=%d, H] item rows padded with -1, got shape %s" % (n, exclude.shape))
    if exclude.size and not np.issubdtype(exclude.dtype, np.integer):
        raise ValueError("exclude must hold integer item rows, got dtype %s" % exclude.dtype)
    if exclude.size and exclude.max() >= n_items:
        raise ValueError("exclude holds item row %d but there are %d items" % (exclude.max(), n_items))
    return exclude.astype(np.int64)


def top_k_items(scores: np.ndarray, k: int, exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact top-k item rows int32 [n, k] by descending score, ties by lower row, ``exclude`` rows never returned.

    ``exclude`` is [n, H] item rows padded with -1 (e.g. ``Sequences.padded_histories``). When
    fewer than k items remain after exclusion the last slots hold -1. Rows are ranked a chunk at a
    time (:data:`TOP_K_CELLS` scores), so the working copies stay bounded whatever ``n``.
    """
    scores = _check_scores(scores)
    n, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError("k must be in [1, %d] (the number of items), got %d" % (n_items, k))
    exclude = _check_exclude(exclude, n, n_items)
    top = np.empty((n, k), dtype=np.int32)
    step = row_chunk(n_items, TOP_K_CELLS)
    for start in range(0, n, step):
        stop = min(start + step, n)
        top[start:stop] = _top_k_rows(_check_finite(scores[start:stop]), k, None if exclude is None else exclude[start:stop])
    return top


def _top_k_rows(scores: np.ndarray, k: int, exclude: Optional[np.ndarray]) -> np.ndarray:
    """:func:`top_k_items` of one chunk of rows (checked arguments)."""
    # A copy (exclusion must not touch the caller's scores) in which every score is exact: float32
    # stays float32 (half the memory of float64, the same order), anything else becomes float64.
    work = scores.astype(scores.dtype if scores.dtype in (np.float32, np.float64) else np.float64)
    if exclude is not None:
        users, slots = np.nonzero(exclude >= 0)
        work[users, exclude[users, slots]] = -np.inf
    candidates = np.argpartition(-work, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(work, candidates, axis=1)
    kth = picked.min(axis=1)
    # argpartition picks an arbitrary subset of the items tied with the k-th score; rows with
    # such a tie are re-ranked by a stable full sort, which keeps the lower rows.
    boundary_ties = np.sum(work >= kth[:, None], axis=1) > k
    top = np.take_along_axis(candidates, np.lexsort((candidates, -picked), axis=-1), axis=1)
    for i in np.flatnonzero(boundary_ties):
        top[i] = np.argsort(-work[i], kind="stable")[:k]
    top = top.astype(np.int32)
    top[np.take_along_axis(work, top.astype(np.int64), axis=1) == -np.inf] = EMPTY
    return top


def top_k_shared_scores(
    scores: np.ndarray, n: int, k: int, exclude: Optional[np.ndarray] = None, batch_size: int = 1024
) -> np.ndarray:
    """:func:`top_k_items` of ``n`` rows that all hold the same ``scores`` [n_items], without an [n, n_items] matrix.

    Each row's list is the first k items of the one shared ranking that its ``exclude`` row
    (item rows padded with -1) does not name, so only the ranking's first k + H items are read.
    """
    row = np.asarray(scores)
    if row.ndim != 1:
        raise ValueError("scores must be one row [n_items], got shape %s" % (row.shape,))
    if n < 0:
        raise ValueError("n must be >= 0, got %d" % n)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, got %d" % batch_size)
    n_items = len(row)
    if not 1 <= k <= n_items:
        raise ValueError("k must be in [1, %d] (the number of items), got %d" % (n_items, k))
    exclude = _check_exclude(exclude, n, n_items)
    if exclude is None:
        return np.repeat(top_k_items(row[None, :], k), n, axis=0)
    # At most H of the ranking's items are excluded for a row, so its first k + H hold k others.
    order = top_k_items(row[None, :], min(n_items, k + exclude.shape[1]))[0].astype(np.int64)
    top = np.empty((n, k), dtype=np.int32)
    step = max(1, min(batch_size, TOP_K_CELLS // max(1, len(order) * exclude.shape[1])))
    for start in range(0, n, step):
        stop = min(start + step, n)
        hit = (order[None, :, None] == exclude[start:stop, None, :]).any(axis=2)
        kept = np.argsort(hit, axis=1, kind="stable")[:, :k]  # the items not excluded first, in ranking order
        chunk = order[kept].astype(np.int32)
        chunk[np.take_along_axis(hit, kept, axis=1)] = EMPTY
        top[start:stop] = chunk
    return top


def _check_vectors(user_vectors: np.ndarray, item_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users float32 [n, d], distinct item vectors [u, d], distinct row of each item [m])."""
    users = np.asarray(user_vectors, dtype=np.float32)
    items = np.asarray(item_vectors, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError("user_vectors [n, d] and item_vectors [m, d] must share d, got shapes %s and %s" % (users.shape, items.shape))
    distinct, of_item = np.unique(items, axis=0, return_inverse=True)
    return users, distinct, of_item.reshape(-1)


def dot_scores(user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """float32 [n, m] dot products in which items with identical vectors get bit-identical scores.

    A BLAS matrix product may round the same dot product differently at different columns, which
    would break exact ties (e.g. two items whose truncated texts encode alike) at random instead
    of by the lower row; scoring each distinct vector once and copying it keeps the tie exact.
    """
    users, distinct, of_item = _check_vectors(user_vectors, item_vectors)
    return (users @ distinct.T)[:, of_item]


def top_k_from_vectors(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    exclude: Optional[np.ndarray] = None,
    batch_size: Optional[int] = None,
) -> np.ndarray:
    """Top-k item rows int32 [n, k] by :func:`dot_scores`, ``batch_size`` users at a time (see :func:`top_k_items`).

    The default batch is 1024 users, fewer on catalogs over 65,536 items so that one batch's
    scores stay within :data:`~tfrec.evaluation.chunks.SCORE_CELLS` (256 MB).
    """
    users, distinct, of_item = _check_vectors(user_vectors, item_vectors)
    if batch_size is None:
        batch_size = row_chunk(len(of_item), most=USER_BATCH)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, got %d" % batch_size)
    if not 1 <= k <= len(of_item):
        raise ValueError("k must be in [1, %d] (the number of items), got %d" % (len(of_item), k))
    exclude = _check_exclude(exclude, len(users), len(of_item))
    top = np.empty((len(users), k), dtype=np.int32)
    for start in range(0, len(users), batch_size):
        stop = min(start + batch_size, len(users))
        part = None if exclude is None else exclude[start:stop]
        top[start:stop] = top_k_items((users[start:stop] @ distinct.T)[:, of_item], k, part)
    return top


def _check_top(top: np.ndarray, name: str = "top") -> np.ndarray:
    top = np.asarray(top)
    if top.ndim != 2:
        raise ValueError("%s must be [examples, K] item rows, got shape %s" % (name, top.shape))
    if top.size and not np.issubdtype(top.dtype, np.integer):
        raise ValueError("%s must hold integer item rows, got dtype %s" % (name, top.dtype))
    return top.astype(np.int64)


def _check_ks(ks: Sequence[int], depth: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be one or more cut-offs >= 1, got %r" % (ks,))
    if ks[-1] > depth:
        raise ValueError("k=%d is deeper than the top lists (%d items each)" % (ks[-1], depth))
    return ks


def target_ranks(top: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """int64 [n]: 0-based position of each target in its top list, -1 when it is not there."""
    top = _check_top(top)
    targets = np.asarray(targets)
    if targets.shape != (len(top),):
        raise ValueError("targets must be one item row per example (%d), got shape %s" % (len(top), targets.shape))
    if len(targets) and targets.min() < 0:
        raise ValueError("targets must be item rows >= 0, got %d" % targets.min())
    hit = top == targets.astype(np.int64)[:, None]
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1), -1).astype(np.int64)


def rank_metrics_per_user(top: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """float64 [n] per example: ``recall@k`` (hit) and ``ndcg@k`` for each k, and ``mrr`` of the whole top list."""
    top = _check_top(top)
    ks = _check_ks(ks, top.shape[1])
    rank = target_ranks(top, targets)
    found = rank >= 0
    gain = np.where(found, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        within = found & (rank < k)
        out["recall@%d" % k] = within.astype(np.float64)
        out["ndcg@%d" % k] = np.where(within, gain, 0.0)
    out["mrr"] = np.where(found, 1.0 / (np.maximum(rank, 0) + 1.0), 0.0)
    return out


def rank_metrics(top: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Means over examples of :func:`rank_metrics_per_user` (NaN when there are no examples)."""
    return {name: float(values.mean()) if len(values) else float("nan") for name, values in rank_metrics_per_user(top, targets, ks).items()}


def _check_rows(top: np.ndarray, n_items: int) -> np.ndarray:
    top = _check_top(top)
    if top.size and top.max() >= n_items:
        raise ValueError("top holds item row %d but there are %d items" % (top.max(), n_items))
    return top


def coverage(top: np.ndarray, n_items: int) -> float:
    """Share of the catalog recommended to at least one user: distinct items in ``top`` / ``n_items`` (-1 ignored)."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1, got %d" % n_items)
    top = _check_rows(top, n_items)
    return float(len(np.unique(top[top >= 0])) / n_items)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError("item_vectors must be [n_items, d], got shape %s" % (vectors.shape,))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # a zero vector (an item without text) has no direction: it stays zero, cosine 0 with everything
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def intra_list_diversity(top: np.ndarray, item_vectors: np.ndarray) -> float:
    """Mean over users of the mean pairwise cosine distance ``1 - cos`` between the items of their list.

    Vectors are L2-normalised first; -1 slots are skipped and users with fewer than two items
    are left out of the mean (NaN if no user has two). Users go through in chunks and only their
    listed items' vectors are normalised, so the memory does not grow with the catalog or the users.
    """
    vectors = np.asarray(item_vectors)
    if vectors.ndim != 2:
        raise ValueError("item_vectors must be [n_items, d], got shape %s" % (vectors.shape,))
    top = _check_rows(top, len(vectors))
    valid = top >= 0
    pair_cos = np.empty(len(top))
    step = max(1, DIVERSITY_CELLS // max(1, top.shape[1] * vectors.shape[1]))
    for start in range(0, len(top), step):
        stop = min(start + step, len(top))
        listed = np.maximum(top[start:stop], 0)
        chunk = _unit_rows(vectors[listed.reshape(-1)]).reshape(*listed.shape, vectors.shape[1]) * valid[start:stop, :, None]
        sum_vec = chunk.sum(axis=1)
        # sum over ordered pairs i != j of cos = |sum v|^2 - sum |v|^2
        pair_cos[start:stop] = np.einsum("nd,nd->n", sum_vec, sum_vec) - np.einsum("nkd,nkd->n", chunk, chunk)
    count = valid.sum(axis=1)
    pairs = count * (count - 1)
    defined = pairs > 0
    if not defined.any():
        return float("nan")
    return float(np.mean(1.0 - pair_cos[defined] / pairs[defined]))


def novelty(top: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean over recommended items (all users' slots, -1 skipped) of ``-log2 p(item)``.

    Smoothing: ``p(item) = (count + 1) / (total + n_items)`` with the training interaction
    counts, so an item never seen in training has a finite novelty.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise ValueError("item_counts must be a 1-D array of counts >= 0, got shape %s" % (counts.shape,))
    top = _check_rows(top, len(counts))
    shown = top[top >= 0]
    if not len(shown):
        return float("nan")
    p = (counts + 1.0) / (counts.sum() + len(counts))
    return float(np.mean(-np.log2(p[shown])))


def beyond_accuracy(
    top: np.ndarray, item_vectors: np.ndarray, item_counts: np.ndarray, k: int = BEYOND_ACCURACY_K
) -> dict[str, float]:
    """``coverage@k``, ``diversity@k`` and ``novelty@k`` of the first k items of each list."""
    top = _check_top(top)
    if not 1 <= k <= top.shape[1]:
        raise ValueError("k must be in [1, %d] (the depth of the top lists), got %d" % (top.shape[1], k))
    n_items = len(item_counts)
    if len(item_vectors) != n_items:
        raise ValueError("item_vectors has %d rows but item_counts %d" % (len(item_vectors), n_items))
    head = top[:, :k]
    return {
        "coverage@%d" % k: coverage(head, n_items),
        "diversity@%d" % k: intra_list_diversity(head, item_vectors),
        "novelty@%d" % k: novelty(head, item_counts),
    }


def item_counts(train: Sequences, n_items: int) -> np.ndarray:
    """int64 [n_items]: how often each item was interacted with in the training data, each interaction once.

    Training ``Sequences`` hold prefix examples of each user (history -> next item, many rows
    per user sharing one log), so counting every history would count early items again for
    every later prefix. Each user's interactions are their longest history plus its target,
    counted once (repeat purchases count as separate interactions). On Amazon Scientific this
    reproduces the README's popularity anchor (Recall@10 0.0529 on valid, vs 0.0502 when every
    prefix's history is counted again).
    """
    if n_items < 1:
        raise ValueError("n_items must be >= 1, got %d" % n_items)
    if len(train) == 0:
        return np.zeros(n_items, dtype=np.int64)
    lengths = train.history_lengths()
    users = np.asarray(train.users).astype(str)
    order = np.lexsort((np.arange(len(train)), lengths, users))
    last_of_user = np.ones(len(order), dtype=bool)
    last_of_user[:-1] = users[order][1:] != users[order][:-1]
    longest = order[last_of_user]
    histories = [train.items[train.starts[i] : train.ends[i]] for i in longest]
    rows = np.concatenate(histories + [train.targets[longest]]).astype(np.int64)
    if rows.min() < 0 or rows.max() >= n_items:
        raise ValueError("training items must be rows in [0, %d), got range [%d, %d]" % (n_items, rows.min(), rows.max()))
    return np.bincount(rows, minlength=n_items).astype(np.int64)


def per_user_metrics(
    systems: Mapping[str, Mapping[str, Any]], targets: np.ndarray, ks: Sequence[int]
) -> dict[str, dict[str, np.ndarray]]:
    """{system: {metric: float64 [n]}} of :func:`rank_metrics_per_user` for each system's ``"top"``."""
    out = {}
    for name, system in systems.items():
        if "top" not in system:
            raise ValueError("system %r has no 'top' array of item rows" % name)
        out[name] = rank_metrics_per_user(system["top"], targets, ks)
    return out


def recommendation_report(
    systems: Mapping[str, Mapping[str, Any]],
    targets: np.ndarray,
    ks: Sequence[int],
    item_vectors: np.ndarray,
    item_counts: np.ndarray,
    n_items: int,
    exclude_history: bool,
    reference: Optional[str] = None,
    *,
    beyond_k: int = BEYOND_ACCURACY_K,
    ci_metrics: Sequence[str] = CI_METRICS,
    n_resamples: int = 2000,
    seed: int = 0,
    per_user: Optional[dict[str, dict[str, np.ndarray]]] = None,
) -> dict:
    """JSON-able report: per system the metric means and beyond-accuracy numbers, and paired bootstrap CIs.

    ``systems`` maps a name to ``{"top": [n, K] item rows, "label": ..., "kind": ...}`` (label and
    kind optional, e.g. kind "baseline"). Each system other than ``reference`` (default: the first
    listed) is compared with it on ``ci_metrics`` over users. ``exclude_history`` only records how
    the lists were made. Per-user arrays stay out of the result; pass a dict as ``per_user`` to
    receive them ({system: {metric: float64 [n]}}).
    """
    if not systems:
        raise ValueError("systems must name at least one system")
    names = list(systems)
    reference = names[0] if reference is None else reference
    if reference not in systems:
        raise ValueError("reference %r is not one of the systems %r" % (reference, names))
    if len(item_counts) != n_items or len(item_vectors) != n_items:
        raise ValueError("item_counts (%d) and item_vectors (%d) must have n_items=%d rows" % (len(item_counts), len(item_vectors), n_items))
    ci_ks = [int(m.partition("@")[2]) for m in ci_metrics if "@" in m]
    metrics = per_user_metrics(systems, targets, list(ks) + ci_ks)
    if per_user is not None:
        per_user.update(metrics)
    out_systems = {}
    for name in names:
        system = systems[name]
        top = _check_rows(system["top"], n_items)
        entry: dict[str, Any] = {"label": str(system.get("label") or name), "kind": str(system.get("kind") or "")}
        entry.update({metric: float(values.mean()) if len(values) else float("nan") for metric, values in metrics[name].items()})
        entry.update(beyond_accuracy(top, item_vectors, item_counts, min(beyond_k, top.shape[1])))
        entry["depth"] = int(top.shape[1])
        out_systems[name] = entry
    significance = []
    for name in names:
        if name == reference:
            continue
        for metric in ci_metrics:
            if metric not in metrics[name]:
                raise ValueError("ci metric %r is not computed; choose among %r" % (metric, sorted(metrics[name])))
            test = paired_bootstrap(metrics[name][metric], metrics[reference][metric], n_resamples=n_resamples, seed=seed)
            significance.append({
                "system": name, "versus": reference, "metric": metric,
                "mean_diff": test["mean_diff"], "low": test["low"], "high": test["high"],
                "p_value": test["p_value"], "n_users": test["n_queries"], "confidence": 0.95,
            })
    return {
        "n_users": int(len(targets)),
        "n_items": int(n_items),
        "ks": sorted({int(k) for k in ks}),
        "exclude_history": bool(exclude_history),
        "reference": reference,
        "beyond_accuracy_k": int(beyond_k),
        "novelty_smoothing": NOVELTY_SMOOTHING,
        "systems": out_systems,
        "significance": significance,
    }
