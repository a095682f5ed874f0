"""Hybrid retrieval: z-scored fine-tuned dense, lexical (BM25) and zero-shot scores over the catalog.

:class:`HybridScorer` is the one definition of the hybrid score and its top k: the evaluation
(:class:`CatalogScorer`) and the exported ``search_retrieval`` SavedModel
(:class:`tfrec.search.export.RetrievalExport`) both call it, so the reported numbers are the
exported model's numbers. The evaluation picks its top rows from the same scores with the
documented tie rule (:func:`tfrec.evaluation.search.top_k`); the export with ``tf.math.top_k``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.evaluation.chunks import SCORE_CELLS, row_chunk
from tfrec.evaluation.search import top_k as top_rows
from tfrec.evaluation.zscore import zscore
from tfrec.retrieval.index import catalog_dot, catalog_variable

tf = compat.tensorflow()

QUERY_BATCH = 64  # queries per batch of CatalogScorer on catalogs up to 262,144 products
BATCH_CELLS = SCORE_CELLS // 4


@dataclass(frozen=True)
class HybridWeights:
    """Weights of the z-scored components (dense is the fine-tuned two-tower cosine)."""

    dense: float = 1.0
    lexical: float = 0.0
    zero_shot: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The weights by name."""
        return {"dense": self.dense, "lexical": self.lexical, "zero_shot": self.zero_shot}


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


class HybridScorer(tf.Module):
    """Query vectors and strings -> z-scored component scores over a catalog, the hybrid score, its top k.

    Holds the catalog matrices as variables (an export saves them once), as float32 or, with
    ``dtype="float16"``, half the size (scores stay float32). ``catalog_zero`` and ``lexical`` may
    be left out when every weight it is used with skips that component.
    """

    def __init__(self, catalog_dense: np.ndarray, catalog_zero: Optional[np.ndarray] = None, lexical: Any = None,
                 name: Optional[str] = None, dtype: str = "float32") -> None:
        super().__init__(name=name)
        self.catalog_dense = catalog_variable(catalog_dense, dtype, name="catalog_dense")
        self.catalog_zero = catalog_variable(catalog_zero, dtype, name="catalog_zero") if catalog_zero is not None else None
        self.lexical = lexical

    @property
    def catalog_size(self) -> int:
        """Number of catalog products."""
        return int(self.catalog_dense.shape[0])

    def z_components(self, q_dense: Any, q_zero: Any, queries: Any, weights: Optional[HybridWeights] = None) -> tuple:
        """(z dense, z lexical, z zero-shot) [B, N]; with ``weights``, a component of weight 0 is None (not computed)."""
        dense = zscore(catalog_dot(q_dense, self.catalog_dense))
        lexical = zero = None
        if weights is None or weights.lexical:
            lexical = zscore(self._needs(self.lexical, "a lexical scorer").catalog_scores(queries))
        if weights is None or weights.zero_shot:
            zero = zscore(catalog_dot(q_zero, self._needs(self.catalog_zero, "zero-shot catalog vectors")))
        return dense, lexical, zero

    def scores(self, q_dense: Any, q_zero: Any, queries: Any, weights: HybridWeights) -> Any:
        """The hybrid score [B, N] of each query against every catalog product."""
        return combine(*self.z_components(q_dense, q_zero, queries, weights), weights)

    def top_k(self, q_dense: Any, q_zero: Any, queries: Any, weights: HybridWeights, k: int) -> tuple[Any, Any]:
        """(catalog rows int32 [B, k], hybrid scores [B, k]) of the best k products, best first."""
        top = tf.math.top_k(self.scores(q_dense, q_zero, queries, weights), k=min(int(k), self.catalog_size))
        return top.indices, top.values

    def _needs(self, part: Any, what: str) -> Any:
        if part is None:
            raise ValueError("this HybridScorer was built without %s, but a weight uses that component" % what)
        return part


class CatalogScorer:
    """Hybrid scores of query batches (numpy in and out): the evaluation side of :class:`HybridScorer`.

    A batch is 64 queries, fewer on catalogs over 262,144 products: a batch holds several
    [batch, N] score matrices at once (three components and their z-scores), each kept within
    :data:`BATCH_CELLS` scores.
    """

    def __init__(self, catalog_dense: np.ndarray, catalog_zero: np.ndarray, lexical_scorer: Any) -> None:
        self.hybrid = HybridScorer(catalog_dense, catalog_zero, lexical_scorer)
        self._components = tf.function(self.hybrid.z_components, reduce_retracing=True)
        self._scores = tf.function(self.hybrid.scores, reduce_retracing=True)

    def _batches(self, q_dense: np.ndarray, q_zero: np.ndarray, queries: Sequence[str], batch_size: int) -> Iterator[tuple]:
        queries = np.asarray(queries).astype(str)
        for start in range(0, len(queries), batch_size):
            stop = start + batch_size
            yield start, tf.constant(q_dense[start:stop]), tf.constant(q_zero[start:stop]), tf.constant(queries[start:stop])

    def batch_size(self) -> int:
        """Queries per batch: :data:`QUERY_BATCH`, fewer over large catalogs (see the class)."""
        return row_chunk(self.hybrid.catalog_size, BATCH_CELLS, most=QUERY_BATCH)

    def z_components(
        self, q_dense: np.ndarray, q_zero: np.ndarray, queries: Sequence[str], batch_size: Optional[int] = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (start, z dense, z lexical, z zero-shot) [b, N] per batch of queries."""
        for start, *batch in self._batches(q_dense, q_zero, queries, self.batch_size() if batch_size is None else batch_size):
            yield (start, *(p.numpy() for p in self._components(*batch)))

    def top_k(
        self, q_dense: np.ndarray, q_zero: np.ndarray, queries: Sequence[str], weights: HybridWeights, k: int,
        batch_size: Optional[int] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows and hybrid scores per query (equal scores ordered by the evaluation's tie rule)."""
        k = min(k, self.hybrid.catalog_size)
        rows = np.zeros((len(queries), k), np.int32)
        scores = np.zeros((len(queries), k), np.float32)
        for start, *batch in self._batches(q_dense, q_zero, queries, self.batch_size() if batch_size is None else batch_size):
            r, s = top_rows(self._scores(*batch, weights).numpy(), k)
            rows[start : start + len(r)], scores[start : start + len(r)] = r, s
        return rows, scores


def tune_weights(
    components: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: Any,
    k: int,
    lexical_grid: Sequence[float],
    zero_shot_grid: Sequence[float],
) -> tuple[HybridWeights, list[dict]]:
    """Grid-search the lexical and zero-shot weights (dense fixed at 1) maximizing ``metric(top_rows)``.

    ``components`` is read once, batch by batch (a generator of :meth:`CatalogScorer.z_components`
    does): only each grid point's top-k rows are kept, never every batch's [b, N] scores.
    """
    grid = [HybridWeights(1.0, float(lexical), float(zero)) for lexical in lexical_grid for zero in zero_shot_grid]
    parts: list[list[np.ndarray]] = [[] for _ in grid]
    for zd, zl, zz in components:
        for weights, rows in zip(grid, parts):
            rows.append(top_rows(combine(zd, zl, zz, weights), k)[0])
    trials = []
    best, best_value = HybridWeights(), -np.inf
    for weights, rows in zip(grid, parts):
        value = float(metric(np.concatenate(rows)))
        trials.append({**weights.as_dict(), "value": value})
        if value > best_value + 1e-9:
            best, best_value = weights, value
    return best, trials
