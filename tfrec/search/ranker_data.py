"""Lists and features for the feature ranker: judged products plus unjudged retrieved candidates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from tfrec import compat
from tfrec.evaluation.search import SearchEvalSet
from tfrec.ranking.model import LEXICAL_FEATURES
from tfrec.search.features import RankerFeatures
from tfrec.text.fusion import CatalogFeatureLookup

tf = compat.tensorflow()

PAD = -1
# (query, product) pairs per feature pass: the lexical work and gathers of a pass stay bounded.
PAIRS_PER_PASS = 4096


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
    catalog_columns: Optional[CatalogFeatureLookup] = None,
) -> dict[str, np.ndarray]:
    """The RankerHead inputs of some lists (padding positions get zeros and empty ids), by :class:`RankerFeatures`.

    ``pair_features`` is a (traced) ``LexicalScorer.pair_features``; keep one per scorer so it traces once.
    ``catalog_columns`` (``search.models.catalog_features``) adds the products' catalog columns.
    """
    features = RankerFeatures(pair_features, catalog_dense, catalog_zero, catalog_columns=catalog_columns)
    return list_features(features, lists, queries, query_dense, query_zero, catalog_ids, titles)


def list_features(
    features: RankerFeatures,
    lists: CandidateLists,
    queries: np.ndarray,
    query_dense: np.ndarray,
    query_zero: np.ndarray,
    catalog_ids: np.ndarray,
    titles: np.ndarray,
    pairs_per_pass: int = PAIRS_PER_PASS,
) -> dict[str, np.ndarray]:
    """Run ``features`` over catalog-row lists (query vectors already encoded), a bounded number of pairs per pass."""
    n, width = lists.rows.shape
    queries, catalog_ids, titles = (np.asarray(a).astype(str) for a in (queries, catalog_ids, titles))
    query_dense, query_zero = np.asarray(query_dense, np.float32), np.asarray(query_zero, np.float32)
    spec = {
        "query": tf.TensorSpec([None], tf.string),
        "query_vector": tf.TensorSpec([None, query_dense.shape[1]], tf.float32),
        "query_zero": tf.TensorSpec([None, query_zero.shape[1]], tf.float32),
        "product_id": tf.TensorSpec([None, None], tf.string),
        "title": tf.TensorSpec([None, None], tf.string),
        "product_row": tf.TensorSpec([None, None], tf.int32),
        "mask": tf.TensorSpec([None, None], tf.bool),
    }
    run = tf.function(lambda inputs: features(inputs), input_signature=[spec])
    dims = {"query_vector": (query_dense.shape[1],), "query_zero": (query_zero.shape[1],), "lexical": (width, len(LEXICAL_FEATURES)),
            **{name: (width, dim) for name, dim in features.item_dims.items()}}
    out: dict[str, np.ndarray] = {name: np.zeros((n, *shape), np.float32) for name, shape in dims.items()}
    columns = features.column_dtypes
    out.update({name: np.zeros((n, width), np.float32) for name, dtype in columns.items() if dtype == tf.float32})
    strings = ["product_id", *(name for name, dtype in columns.items() if dtype == tf.string)]
    out.update({name: np.empty((n, width), object) for name in strings})
    step = max(1, pairs_per_pass // max(width, 1))
    for start in range(0, n, step):
        part = slice(start, start + step)
        rows = lists.rows[part]
        mask = rows >= 0
        safe = np.where(mask, rows, 0)
        q = lists.query_index[part]
        computed = run({"query": queries[q], "query_vector": query_dense[q], "query_zero": query_zero[q],
                        "product_id": catalog_ids[safe], "title": titles[safe], "product_row": rows.astype(np.int32), "mask": mask})
        for name, values in computed.items():
            out[name][part] = values.numpy()
    for name in strings:
        out[name] = np.char.decode(out[name].astype(bytes), "utf-8") if n else np.zeros((0, width), str)
    return out
