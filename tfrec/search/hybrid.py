"""Hybrid retrieval: z-scored fine-tuned dense, lexical (BM25) and zero-shot scores over the catalog.

The same TensorFlow function scores candidates in evaluation and inside the exported
SavedModel, so the reported numbers are the exported model's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from tfrec import compat
from tfrec.evaluation.search import top_k as top_rows

tf = compat.tensorflow()


@dataclass(frozen=True)
class HybridWeights:
    """Weights of the z-scored components (dense is the fine-tuned two-tower cosine)."""

    dense: float = 1.0
    lexical: float = 0.0
    zero_shot: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The weights by name."""
        return {"dense": self.dense, "lexical": self.lexical, "zero_shot": self.zero_shot}


def zscore(scores: Any) -> Any:
    """Standardize each row (query) over the catalog; a constant row becomes zeros."""
    mean, variance = tf.nn.moments(scores, axes=[1], keepdims=True)
    return (scores - mean) / (tf.sqrt(variance) + 1e-6)


def combine(z_dense: Any, z_lexical: Any, z_zero_shot: Any, weights: HybridWeights) -> Any:
    """The hybrid score from already z-scored components (TF tensors or numpy; weight 0 skips a component)."""
    total = weights.dense * z_dense
    if weights.lexical:
        total = total + weights.lexical * z_lexical
    if weights.zero_shot:
        total = total + weights.zero_shot * z_zero_shot
    return total


def hybrid_scores(dense: Any, lexical: Any, zero_shot: Any, weights: HybridWeights) -> Any:
    """Weighted sum of the z-scored [B, N] component scores (components with weight 0 are not computed)."""
    return combine(
        zscore(dense),
        zscore(lexical) if weights.lexical else None,
        zscore(zero_shot) if weights.zero_shot else None,
        weights,
    )


class CatalogScorer:
    """Component scores of query batches against a catalog held as constants (evaluation side)."""

    def __init__(self, catalog_dense: np.ndarray, catalog_zero: np.ndarray, lexical_scorer: Any) -> None:
        self.catalog_dense = tf.constant(catalog_dense, tf.float32)
        self.catalog_zero = tf.constant(catalog_zero, tf.float32)
        self.lexical = lexical_scorer
        self._components = tf.function(self._components_graph, reduce_retracing=True)

    def _components_graph(self, q_dense: Any, q_zero: Any, queries: Any) -> tuple:
        dense = tf.matmul(q_dense, self.catalog_dense, transpose_b=True)
        zero = tf.matmul(q_zero, self.catalog_zero, transpose_b=True)
        return zscore(dense), zscore(self.lexical.catalog_scores(queries)), zscore(zero)

    def z_components(
        self, q_dense: np.ndarray, q_zero: np.ndarray, queries: Sequence[str], batch_size: int = 64
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (start, z dense, z lexical, z zero-shot) [b, N] per batch of queries."""
        queries = np.asarray(queries).astype(str)
        for start in range(0, len(queries), batch_size):
            stop = start + batch_size
            parts = self._components(tf.constant(q_dense[start:stop]), tf.constant(q_zero[start:stop]), tf.constant(queries[start:stop]))
            yield (start, *(p.numpy() for p in parts))

    def top_k(
        self, q_dense: np.ndarray, q_zero: np.ndarray, queries: Sequence[str], weights: HybridWeights, k: int, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows and hybrid scores per query."""
        k = min(k, int(self.catalog_dense.shape[0]))
        rows = np.zeros((len(queries), k), np.int32)
        scores = np.zeros((len(queries), k), np.float32)
        for start, zd, zl, zz in self.z_components(q_dense, q_zero, queries, batch_size):
            r, s = top_rows(combine(zd, zl, zz, weights), k)
            rows[start : start + len(r)], scores[start : start + len(r)] = r, s
        return rows, scores


def tune_weights(
    components: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: Any,
    k: int,
    lexical_grid: Sequence[float],
    zero_shot_grid: Sequence[float],
) -> tuple[HybridWeights, list[dict]]:
    """Grid-search the lexical and zero-shot weights (dense fixed at 1) maximizing ``metric(top_rows)``."""
    trials = []
    best, best_value = HybridWeights(), -np.inf
    for lexical in lexical_grid:
        for zero in zero_shot_grid:
            weights = HybridWeights(1.0, float(lexical), float(zero))
            rows = np.concatenate([top_rows(combine(zd, zl, zz, weights), k)[0] for zd, zl, zz in components])
            value = float(metric(rows))
            trials.append({**weights.as_dict(), "value": value})
            if value > best_value + 1e-9:
                best, best_value = weights, value
    return best, trials
