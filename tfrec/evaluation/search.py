"""Search metrics with the conventions of the shared datasets README (pure numpy, no TensorFlow).

- Gain ``2**(relevance - 1) - 1``, discount ``1 / log2(rank + 1)`` with ranks from 1.
- Re-rank NDCG@k ranks a query's judged products by a model's scores; end-to-end (E2E) NDCG@k
  scores the top k of a whole-catalog ranking with judged gains (unjudged products gain 0). Both
  divide by the ideal DCG@k of the query's judged labels. Queries whose ideal DCG is 0 (every
  judged product has relevance 1; 5 of 1,128 on valid) count as 0 in every mean, as in the
  dataset's reference figures (random 0.889, perfect 0.996 on valid);
  so no model can reach 1.0 and every system is scored over the same queries.
- Retrieval positives are judged products with relevance >= ``positive_relevance``; Recall@K
  and MRR average over queries with at least one positive.
- Ties. Re-rank NDCG gives tied products the mean discount of the ranks they span (the
  expected value over the orders of the tie), so it needs no tie order at all. Whole-catalog
  top-k lists (:func:`top_k`) order equal scores by :func:`tie_break_keys` of the catalog row,
  a fixed hash, not by the row itself: Home Depot's product ids correlate with relevance
  (-0.13 on valid), and a fixed order of ties is one random draw (+-0.002 NDCG on valid).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from tfrec.data.tables import Judgments
from tfrec.evaluation.chunks import row_chunk

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def tie_break_keys(rows: np.ndarray) -> np.ndarray:
    """Fixed pseudo-random uint64 keys of catalog rows (splitmix64); equal scores rank by ascending key."""
    with np.errstate(over="ignore"):
        z = np.asarray(rows).astype(np.int64).astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        return z ^ (z >> np.uint64(31))


def gains(labels: np.ndarray) -> np.ndarray:
    """Graded gain ``2**(relevance - 1) - 1`` of relevance labels in [1, 3] (float64)."""
    return np.exp2(np.asarray(labels, dtype=np.float64) - 1.0) - 1.0


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


@dataclass(frozen=True)
class SearchEvalSet:
    """The judged products of each query, grouped: query ``q`` owns rows ``offsets[q]:offsets[q + 1]``."""

    queries: np.ndarray  # object array of unique query strings, sorted
    offsets: np.ndarray  # int64 [Q + 1]
    products: np.ndarray  # int32 catalog rows of the judged products (flattened)
    labels: np.ndarray  # float32 relevance of each
    positive_relevance: float = 2.5
    seen: Optional[np.ndarray] = None  # bool [n_catalog]: the product appears in a training judgment

    def __post_init__(self) -> None:
        offsets, products = self.offsets, self.products
        if offsets.ndim != 1 or len(offsets) != len(self.queries) + 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must be non-decreasing from 0 with one entry per query plus one, got %r" % (offsets,))
        if offsets[-1] != len(products) or len(self.labels) != len(products):
            raise ValueError(
                "offsets end at %d but there are %d products and %d labels" % (offsets[-1], len(products), len(self.labels))
            )
        if len(products) and products.min() < 0:
            raise ValueError("judged products must be catalog rows >= 0, got %d" % products.min())
        if self.seen is not None:
            if self.seen.dtype != np.bool_ or self.seen.ndim != 1:
                raise ValueError("seen must be a 1-D bool mask over catalog rows, got %s %s" % (self.seen.dtype, self.seen.shape))
            if len(products) and products.max() >= len(self.seen):
                raise ValueError("judged product row %d is outside the seen mask of %d rows" % (products.max(), len(self.seen)))
        keys = _pair_keys(self.query_of_judgment(), products.astype(np.int64), _key_base(products))
        if len(np.unique(keys)) != len(keys):
            raise ValueError("a query lists the same product twice; from_judgments averages duplicate rows")

    @classmethod
    def from_judgments(
        cls, judgments: Judgments, positive_relevance: float = 2.5, seen: Optional[np.ndarray] = None
    ) -> "SearchEvalSet":
        """Group judgments by query (sorted), products by row; duplicate (query, product) rows average their labels."""
        queries = np.asarray(judgments.queries).astype(str)
        products = np.asarray(judgments.products, dtype=np.int64)
        if len(products) and products.min() < 0:
            raise ValueError("judgments hold product row %d; rows must be >= 0 (unknown ids dropped)" % products.min())
        unique_queries, query_index = np.unique(queries, return_inverse=True)
        base = _key_base(products)
        keys = _pair_keys(query_index, products, base)
        pair_keys, pair_of_row = np.unique(keys, return_inverse=True)
        counts = np.bincount(pair_of_row, minlength=len(pair_keys))
        sums = np.bincount(pair_of_row, weights=np.asarray(judgments.labels, dtype=np.float64), minlength=len(pair_keys))
        pair_query, pair_product = pair_keys // base, pair_keys % base
        offsets = np.zeros(len(unique_queries) + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_query, minlength=len(unique_queries)), out=offsets[1:])
        return cls(
            queries=unique_queries.astype(object),
            offsets=offsets,
            products=pair_product.astype(np.int32),
            labels=(sums / counts).astype(np.float32),
            positive_relevance=float(positive_relevance),
            seen=seen,
        )

    @property
    def n_queries(self) -> int:
        """Number of queries."""
        return len(self.queries)

    def query_of_judgment(self) -> np.ndarray:
        """The query index of each judged product (int64, aligned with ``products``)."""
        return np.repeat(np.arange(self.n_queries, dtype=np.int64), np.diff(self.offsets))

    def has_seen_judged(self) -> np.ndarray:
        """bool [Q]: the query has at least one judged product seen in training (needs ``seen``)."""
        seen = self._require_seen()
        return np.bincount(self.query_of_judgment(), weights=seen[self.products], minlength=self.n_queries) > 0

    def _require_seen(self) -> np.ndarray:
        if self.seen is None:
            raise ValueError("this SearchEvalSet has no seen mask; build it with seen=seen_products(train, n_catalog)")
        return self.seen


def _key_base(products: np.ndarray) -> int:
    return int(products.max()) + 1 if len(products) else 1


def _pair_keys(query_index: np.ndarray, products: np.ndarray, base: int) -> np.ndarray:
    return query_index.astype(np.int64) * base + products


def seen_products(train: Judgments, n_catalog: int) -> np.ndarray:
    """bool [n_catalog]: which catalog rows appear in at least one training judgment (prepared: from the manifest)."""
    if not isinstance(train, Judgments):  # tfrec.data.prepared.reader.ShardedJudgments: counted when prepared
        return train.judged()["seen"]
    rows = np.asarray(train.products, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n_catalog):
        raise ValueError("training products must be rows in [0, %d), got range [%d, %d]" % (n_catalog, rows.min(), rows.max()))
    mask = np.zeros(n_catalog, dtype=bool)
    mask[rows] = True
    return mask


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows int32 [B, k] and scores float32 [B, k] of the k best columns per row, ties by :func:`tie_break_keys`."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError("scores must be [queries, catalog], got shape %s" % (scores.shape,))
    if not 1 <= k <= scores.shape[1]:
        raise ValueError("k must be in [1, %d] (the catalog size), got %d" % (scores.shape[1], k))
    tie_keys = tie_break_keys(np.arange(scores.shape[1]))
    rows = np.empty((len(scores), k), dtype=np.int32)
    step = row_chunk(scores.shape[1])
    for start in range(0, len(scores), step):
        rows[start : start + step] = _top_k_rows(scores[start : start + step], k, tie_keys)
    return rows, np.take_along_axis(scores, rows, axis=1).astype(np.float32)


def _top_k_rows(scores: np.ndarray, k: int, tie_keys: np.ndarray) -> np.ndarray:
    """The rows of :func:`top_k` for one chunk of queries (the partition copies stay chunk-sized)."""
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    rows = np.empty((len(scores), k), dtype=np.int32)
    for i, row in enumerate(scores):
        # Columns above the k-th best value are all kept; the columns tied with it fill the rest
        # by tie key, so the boundary follows the documented rule, not argpartition's choice.
        above = np.flatnonzero(row > kth[i])
        tied = np.flatnonzero(row == kth[i])
        need = k - len(above)
        if len(tied) > need:
            tied = tied[np.argpartition(tie_keys[tied], need - 1)[:need]]
        chosen = np.concatenate([above, tied])
        rows[i] = chosen[np.lexsort((tie_keys[chosen], -row[chosen]))]
    return rows


def _check_top(es: SearchEvalSet, top: np.ndarray, k: int, name: str = "top") -> np.ndarray:
    top = np.asarray(top)
    if top.ndim != 2 or top.shape[0] != es.n_queries:
        raise ValueError(
            "%s must be [n_queries=%d, K] catalog rows, got shape %s" % (name, es.n_queries, top.shape)
        )
    if not np.issubdtype(top.dtype, np.integer):
        raise ValueError("%s must hold integer catalog rows, got dtype %s" % (name, top.dtype))
    if top.shape[1] < k:
        raise ValueError("%s has %d columns per query, fewer than k=%d" % (name, top.shape[1], k))
    return top


def _judged_index(es: SearchEvalSet, top: np.ndarray) -> np.ndarray:
    """Index into ``es.products`` of each entry of ``top`` ([Q, K]); -1 where unjudged or negative."""
    top = top.astype(np.int64)
    base = max(_key_base(es.products), int(top.max(initial=0)) + 1)
    keys = _pair_keys(es.query_of_judgment(), es.products.astype(np.int64), base)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    wanted = np.arange(es.n_queries, dtype=np.int64)[:, None] * base + top
    at = np.minimum(np.searchsorted(sorted_keys, wanted), max(len(sorted_keys) - 1, 0))
    found = (top >= 0) & (sorted_keys[at] == wanted) if len(sorted_keys) else np.zeros(top.shape, bool)
    index = np.where(found, order[at] if len(order) else -1, -1)
    ranked = np.sort(index, axis=1)
    repeated = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
    if repeated.any():
        q = int(np.flatnonzero(repeated.any(axis=1))[0])
        raise ValueError("query %d (%r) lists a judged product twice in its ranking" % (q, es.queries[q]))
    return index


def ideal_dcg(es: SearchEvalSet, k: int = 10) -> np.ndarray:
    """float64 [Q]: DCG@k of each query's judged labels sorted by relevance."""
    query = es.query_of_judgment()
    g = gains(es.labels)
    order = np.lexsort((-g, query))
    rank = np.arange(len(order)) - es.offsets[query[order]]
    kept = rank < k
    discount = _discounts(k)
    return np.bincount(query[order][kept], weights=g[order][kept] * discount[rank[kept]], minlength=es.n_queries)


def _normalize(es: SearchEvalSet, dcg: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    ideal = ideal_dcg(es, k)
    per_query = np.zeros(es.n_queries)  # ideal DCG 0: the README's convention scores the query 0
    defined = ideal > 0
    per_query[defined] = dcg[defined] / ideal[defined]
    return _nanmean(per_query), per_query


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def rerank_ndcg(es: SearchEvalSet, scores: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    """(mean, per-query float64 [Q]) NDCG@k of judged products ranked by ``scores``.

    Tied scores share the mean discount of the ranks they span (the expected DCG over every
    order of the tie), so the value does not depend on any tie-breaking order: constant scores
    score exactly :func:`random_rerank_ndcg`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != es.products.shape:
        raise ValueError("scores must align with es.products: shape %s, got %s" % (es.products.shape, scores.shape))
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    query = es.query_of_judgment()
    order = np.lexsort((-scores, query))
    sorted_query, sorted_scores = query[order], scores[order]
    rank = np.arange(len(order)) - es.offsets[sorted_query]
    discount = np.where(rank < k, _discounts(k)[np.minimum(rank, k - 1)], 0.0)
    starts_tie = np.ones(len(order), dtype=bool)
    starts_tie[1:] = (sorted_query[1:] != sorted_query[:-1]) | (sorted_scores[1:] != sorted_scores[:-1])
    tie = np.cumsum(starts_tie) - 1
    tie_discount = np.bincount(tie, weights=discount) / np.bincount(tie)
    dcg = np.bincount(sorted_query, weights=gains(es.labels)[order] * tie_discount[tie], minlength=es.n_queries)
    return _normalize(es, dcg, k)


def perfect_rerank_ndcg(es: SearchEvalSet, k: int = 10) -> float:
    """Re-rank NDCG@k of ranking by the labels themselves: the share of queries whose ideal DCG is > 0."""
    return rerank_ndcg(es, es.labels, k)[0]


def random_rerank_ndcg(es: SearchEvalSet, k: int = 10) -> float:
    """Expected re-rank NDCG@k of a uniformly random order, computed exactly (no sampling)."""
    return random_rerank_ndcg_per_query(es, k)[0]


def random_rerank_ndcg_per_query(es: SearchEvalSet, k: int = 10) -> tuple[float, np.ndarray]:
    """(mean, per-query) expected NDCG@k of a random order: each product sits at each rank with probability 1/n."""
    sizes = np.diff(es.offsets)
    mean_discount_sum = np.concatenate([[0.0], np.cumsum(_discounts(max(int(sizes.max(initial=0)), 1)))])
    expected_discount = mean_discount_sum[np.minimum(sizes, k)] / np.maximum(sizes, 1)
    total_gain = np.bincount(es.query_of_judgment(), weights=gains(es.labels), minlength=es.n_queries)
    return _normalize(es, total_gain * expected_discount, k)


def end_to_end_ndcg(es: SearchEvalSet, top: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    """(mean, per-query) NDCG@k of whole-catalog rankings ``top`` [Q, K>=k]; unjudged rows gain 0, -1 is an empty slot."""
    top = _check_top(es, top, k)[:, :k]
    index = _judged_index(es, top)
    g = np.where(index >= 0, gains(es.labels)[np.maximum(index, 0)], 0.0) if len(es.labels) else np.zeros(top.shape)
    return _normalize(es, g @ _discounts(k), k)


def _hits(es: SearchEvalSet, top: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(positive [N] bool over judgments, hit index [Q, k_max] into es.products or -1)."""
    top = _check_top(es, top, k_max)[:, :k_max]
    return es.labels >= es.positive_relevance, _judged_index(es, top)


def _recall_per_query(
    es: SearchEvalSet, top: np.ndarray, ks: Sequence[int], subset: Optional[np.ndarray]
) -> dict[int, np.ndarray]:
    ks = _check_ks(ks)
    positive, index = _hits(es, top, max(ks))
    if subset is not None:
        positive = positive & subset
    n_positive = np.bincount(es.query_of_judgment(), weights=positive, minlength=es.n_queries)
    hit = (index >= 0) & positive[np.maximum(index, 0)] if len(positive) else np.zeros(index.shape, bool)
    found = np.cumsum(hit, axis=1)
    out = {}
    for k in ks:
        recall = np.full(es.n_queries, np.nan)
        defined = n_positive > 0
        recall[defined] = found[defined, k - 1] / n_positive[defined]
        out[k] = recall
    return out


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError("ks must be one or more cut-offs >= 1, got %r" % (ks,))
    return ks


def recall_at_k_per_query(es: SearchEvalSet, top: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """{k: float64 [Q]} recall@k of each query; NaN for queries without a positive."""
    return _recall_per_query(es, top, ks, None)


def recall_at_k(es: SearchEvalSet, top: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """{k: mean recall@k over queries with at least one positive}."""
    return {k: _nanmean(v) for k, v in recall_at_k_per_query(es, top, ks).items()}


def mrr_per_query(es: SearchEvalSet, top: np.ndarray) -> np.ndarray:
    """float64 [Q]: 1 / rank of the first positive in ``top`` (0 if none); NaN without positives."""
    top = np.asarray(top)
    positive, index = _hits(es, top, top.shape[1] if top.ndim == 2 else 1)
    n_positive = np.bincount(es.query_of_judgment(), weights=positive, minlength=es.n_queries)
    hit = (index >= 0) & positive[np.maximum(index, 0)] if len(positive) else np.zeros(index.shape, bool)
    first = np.argmax(hit, axis=1)
    reciprocal = np.where(hit.any(axis=1), 1.0 / (first + 1), 0.0)
    return np.where(n_positive > 0, reciprocal, np.nan)


def mrr(es: SearchEvalSet, top: np.ndarray) -> float:
    """Mean reciprocal rank of the first positive, over queries with at least one positive."""
    return _nanmean(mrr_per_query(es, top))


def seen_cold_recall(es: SearchEvalSet, top: np.ndarray, ks: Sequence[int]) -> dict:
    """Recall@k restricted to seen positives and to cold positives, each over queries having such a positive."""
    seen = es._require_seen()[es.products]
    out = {}
    for name, subset in (("seen", seen), ("cold", ~seen)):
        per_query = _recall_per_query(es, top, ks, subset)
        first = next(iter(per_query.values()))
        out[name] = {**{"recall@%d" % k: _nanmean(v) for k, v in per_query.items()}, "n_queries": int(np.sum(~np.isnan(first)))}
    return out


def split_by_seen(es: SearchEvalSet, per_query: np.ndarray) -> dict:
    """Mean of a per-query metric over queries with a seen judged product vs all judged products cold.

    NaN values (recall or MRR of a query without a positive) are left out of the mean and of
    ``n_queries``; NDCG has no NaN, so every query of the group counts.
    """
    per_query = np.asarray(per_query, dtype=np.float64)
    if per_query.shape != (es.n_queries,):
        raise ValueError("per_query must have one value per query (%d), got shape %s" % (es.n_queries, per_query.shape))
    has_seen = es.has_seen_judged()
    out = {}
    for name, group in (("seen", has_seen), ("cold", ~has_seen)):
        values = per_query[group]
        out[name] = {"mean": _nanmean(values), "n_queries": int(np.sum(~np.isnan(values)))}
    return out


def retrieval_report(es: SearchEvalSet, top: np.ndarray, ks: Sequence[int], ndcg_k: int = 10) -> dict:
    """Recall@ks, MRR and E2E NDCG@ndcg_k of whole-catalog rankings, split by seen/cold when ``es.seen`` is set.

    ``n_queries`` counts the queries with a positive (those recall and MRR average over);
    ``n_queries_ndcg`` counts those NDCG averages over, which is every query.
    """
    ks = _check_ks(ks)
    recall = recall_at_k_per_query(es, top, ks)
    e2e_mean, e2e = end_to_end_ndcg(es, top, ndcg_k)
    ndcg_key = "ndcg@%d_e2e" % ndcg_k
    report: dict = {
        **{"recall@%d" % k: _nanmean(v) for k, v in recall.items()},
        "mrr": mrr(es, top),
        ndcg_key: e2e_mean,
        "n_queries": int(np.sum(~np.isnan(recall[ks[0]]))),
        "n_queries_ndcg": int(np.sum(~np.isnan(e2e))),
    }
    if es.seen is not None:
        split_recall = seen_cold_recall(es, top, ks)
        split_ndcg = split_by_seen(es, e2e)
        for name in ("seen", "cold"):
            report[name] = {
                **split_recall[name],
                ndcg_key: split_ndcg[name]["mean"],
                "n_queries_ndcg": split_ndcg[name]["n_queries"],
            }
    return report


def paired_bootstrap(
    a_per_query: np.ndarray, b_per_query: np.ndarray, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """95% bootstrap CI and two-sided p-value of mean(a - b) over queries (pairs with a NaN are dropped)."""
    a = np.asarray(a_per_query, dtype=np.float64)
    b = np.asarray(b_per_query, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("per-query arrays must be 1-D and aligned, got shapes %s and %s" % (a.shape, b.shape))
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1, got %d" % n_resamples)
    kept = ~(np.isnan(a) | np.isnan(b))
    diff = (a - b)[kept]
    if len(diff) == 0:
        raise ValueError("no query has a value in both arrays")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // len(diff))  # bounds the [resamples, queries] index matrix
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = diff[rng.integers(0, len(diff), size=(stop - start, len(diff)))].mean(axis=1)
    observed = float(diff.mean())
    # Shifted to the null (mean 0): how often a resample strays at least as far as the observed mean.
    extreme = np.abs(means - observed) >= abs(observed) - 1e-12
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "mean_diff": observed,
        "low": float(low),
        "high": float(high),
        "p_value": float((1 + extreme.sum()) / (n_resamples + 1)),
        "n_queries": int(len(diff)),
    }
