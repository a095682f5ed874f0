"""Lists and features for the feature ranker: judged products plus unjudged retrieved candidates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.evaluation.search import SearchEvalSet
from tfrec.ranking.model import LEXICAL_FEATURES

tf = compat.tensorflow()

PAD = -1


@dataclass
class CandidateLists:
    """Per-query product lists: rows [n, L] (-1 = padding) and ranking labels (relevance - 1; -1 = padding)."""

    query_index: np.ndarray  # [n] index into the query vectors / strings
    rows: np.ndarray  # [n, L] int32
    labels: np.ndarray  # [n, L] float32

    @property
    def mask(self) -> np.ndarray:
        """True where a list position holds a real product."""
        return self.rows >= 0


def training_lists(
    es: SearchEvalSet, candidates: Optional[np.ndarray], *, list_size: int, negatives: int, seed: int
) -> CandidateLists:
    """Judged products (at most ``list_size``, a seeded sample) plus ``negatives`` unjudged candidates.

    Unjudged candidates get label 0, like judged relevance 1: end-to-end NDCG gives both gain 0.
    """
    rng = np.random.default_rng(seed)
    width = list_size + (negatives if candidates is not None else 0)
    rows = np.full((es.n_queries, width), PAD, np.int32)
    labels = np.full((es.n_queries, width), PAD, np.float32)
    for q in range(es.n_queries):
        judged = es.products[es.offsets[q] : es.offsets[q + 1]]
        relevance = es.labels[es.offsets[q] : es.offsets[q + 1]]
        pick = rng.permutation(len(judged))[:list_size]
        n = len(pick)
        rows[q, :n], labels[q, :n] = judged[pick], relevance[pick] - 1.0
        if candidates is not None and negatives:
            unjudged = np.setdiff1d(candidates[q], judged, assume_unique=False)
            chosen = rng.permutation(unjudged)[:negatives]
            rows[q, n : n + len(chosen)] = chosen
            labels[q, n : n + len(chosen)] = 0.0
    return CandidateLists(np.arange(es.n_queries), rows, labels)


def judged_lists(es: SearchEvalSet) -> CandidateLists:
    """Every judged product of each query, in eval-set order (for the re-rank view)."""
    sizes = np.diff(es.offsets)
    width = int(sizes.max()) if len(sizes) else 1
    rows = np.full((es.n_queries, width), PAD, np.int32)
    labels = np.full((es.n_queries, width), PAD, np.float32)
    position = np.arange(len(es.products)) - np.repeat(es.offsets[:-1], sizes)
    query = es.query_of_judgment()
    rows[query, position] = es.products
    labels[query, position] = es.labels - 1.0
    return CandidateLists(np.arange(es.n_queries), rows, labels)


def candidate_lists(candidates: np.ndarray) -> CandidateLists:
    """Retrieved candidates [Q, K] as lists to score (labels unknown: 0)."""
    return CandidateLists(np.arange(len(candidates)), candidates.astype(np.int32), np.zeros(candidates.shape, np.float32))


def lexical_pair_features(run: Any, queries: Sequence[str], titles: Sequence[str], batch_size: int = 4096) -> np.ndarray:
    """[n, F] lexical features of aligned (query, title) pairs, in LEXICAL_FEATURES order.

    ``run`` is a (traced) ``LexicalScorer.pair_features``; keep one per scorer so it traces once.
    """
    queries = np.asarray(queries).astype(str)
    titles = np.asarray(titles).astype(str)
    out = np.zeros((len(queries), len(LEXICAL_FEATURES)), np.float32)
    for start in range(0, len(queries), batch_size):
        stop = start + batch_size
        feats = run(tf.constant(queries[start:stop]), tf.constant(titles[start:stop]))
        out[start:stop] = np.stack([feats[name].numpy() for name in LEXICAL_FEATURES], axis=1)
    return out


def head_inputs(
    lists: CandidateLists,
    queries: np.ndarray,
    query_dense: np.ndarray,
    query_zero: np.ndarray,
    catalog_dense: np.ndarray,
    catalog_zero: np.ndarray,
    catalog_ids: np.ndarray,
    titles: np.ndarray,
    pair_features: Any,
) -> dict[str, np.ndarray]:
    """The RankerHead inputs of some lists (padding positions get zeros and empty ids)."""
    mask = lists.mask
    safe = np.where(mask, lists.rows, 0)
    flat_q = np.repeat(lists.query_index, lists.rows.shape[1])[mask.ravel()]
    flat_rows = lists.rows[mask]
    lexical = np.zeros(lists.rows.shape + (len(LEXICAL_FEATURES),), np.float32)
    lexical[mask] = lexical_pair_features(pair_features, queries[flat_q], titles[flat_rows])
    product_dense = catalog_dense[safe] * mask[..., None]
    product_zero = catalog_zero[safe] * mask[..., None]
    return {
        "query_vector": query_dense[lists.query_index],
        "product_vector": product_dense.astype(np.float32),
        "query_zero": query_zero[lists.query_index],
        "product_zero": product_zero.astype(np.float32),
        "lexical": lexical,
        "product_id": np.where(mask, catalog_ids[safe], "").astype(str),
    }
