"""SavedModels of a trained recommendation run: ``recommender`` and ``similar_items``.

Both take the catalog's own item ids as raw strings and load with TensorFlow alone (the item
text vectors were computed at training time and travel in the graph; no BERT, no tfrs op):

* ``recommender/<version>/`` ``serving_default``: ``history`` string [None, None] (item ids,
  oldest first, padded with "" anywhere) -> ``item_ids`` string [None, K], ``scores`` float32
  [None, K]. Ids the catalog does not know are skipped like padding; the newest
  ``max_history`` known items are used; an empty history gets the model's "no history" user.
* ``similar_items/<version>/`` ``serving_default``: ``item_id`` string [None] -> ``item_ids``,
  ``scores`` [None, K], the item tower's nearest items (the item itself left out). An unknown id
  gets K empty ids with score 0.

Scores are cosines of the trained towers (brute force over the catalog: exact, and what stock TF
Serving can run). ``assets.extra/catalog.json`` holds ids and titles for the service pipeline.
With ``catalog_dtype="float16"`` (``export.catalog_dtype``) both hold the catalog's item vectors as
float16, half the size: float16 scores pick candidates that are scored again in float32
(:func:`~tfrec.retrieval.index.catalog_top_k`); the returned scores are float32 either way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec import compat
from tfrec.config.loader import load_config
from tfrec.recommend.model import SequentialRecommender, pad_front
from tfrec.retrieval.index import catalog_dot, catalog_top_k, catalog_variable
from tfrec.serving.bounded import DEFAULT_CHUNK_ROWS, map_row_chunks
from tfrec.serving.catalog_file import catalog_json
from tfrec.serving.publish import ExportSet
from tfrec.serving.savedmodel import predict_log
from tfrec.runs import RunFolder
from tfrec.serving.service import CATALOG_FILE, RECOMMENDER_MODEL, SIMILAR_MODEL

tf = compat.tensorflow()


class _ModelParts(tf.Module):
    """Tracks the trained layers the signatures use, not the tfrs model (whose Keras serialization is moot here)."""

    def __init__(self, model: SequentialRecommender, catalog_dtype: str = "float32") -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # used by the signatures; its variables are tracked below
        self.layers = [model.row_lookup, model.item_fusion, model.encoder, model.user_projection] + ([model.encoder_input] if model.encoder_input else [])
        self.items = catalog_variable(model.catalog_vectors(training=False), catalog_dtype, name="item_vectors")

    def item_vectors(self, rows: Any) -> Any:
        """float32 vectors of catalog rows (any shape, >= 0) from the stored item matrix."""
        return tf.cast(tf.gather(self.items, rows), tf.float32)


class RecommenderExport(_ModelParts):
    """Histories of item ids -> top-K item ids and scores."""

    def __init__(self, model: SequentialRecommender, k: int, exclude_history: bool = False, catalog_dtype: str = "float32") -> None:
        super().__init__(model, catalog_dtype)
        self.k = int(min(k, model.n_items))
        self.exclude_history = bool(exclude_history)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
    def serve(self, history: Any) -> dict:
        """The serving signature."""
        # Each row scores the whole catalog: a bounded number of rows at a time bounds a request's memory.
        ids, scores = map_row_chunks(self._top_k, [history], DEFAULT_CHUNK_ROWS, [(tf.string, [self.k]), (tf.float32, [self.k])])
        return {"item_ids": ids, "scores": scores}

    def _top_k(self, history: Any) -> tuple[Any, Any]:
        rows = pad_front(self.model.rows_of(history), self.model.max_history)
        users = self._users(rows)
        scores = catalog_dot(users, self.items)
        if self.exclude_history:
            known = rows >= 0
            owner = tf.broadcast_to(tf.range(tf.shape(rows)[0])[:, None], tf.shape(rows))
            seen = tf.stack([tf.boolean_mask(owner, known), tf.boolean_mask(rows, known)], axis=1)
            # One update per history item, below any cosine.
            scores = tf.tensor_scatter_nd_update(scores, seen, tf.fill(tf.shape(seen)[:1], -3.0))
        top, values = catalog_top_k(users, self.items, scores, self.k)
        return tf.gather(self.model.item_ids, top), values

    def _users(self, rows: Any) -> Any:
        """User vectors of front-padded history rows, from the item vectors precomputed at export."""
        if self.items.dtype == tf.float32:
            return self.model.user_vectors(rows, training=False, catalog=self.items)
        # A float16 catalog: the history's own vectors, cast up, form the table user_vectors reads,
        # so no request casts the whole catalog.
        flat = tf.reshape(rows, [-1])
        own = tf.where(flat >= 0, tf.range(tf.size(flat)), -1)
        return self.model.user_vectors(tf.reshape(own, tf.shape(rows)), training=False, catalog=self.item_vectors(tf.maximum(flat, 0)))


class SimilarItemsExport(_ModelParts):
    """Item ids -> the item tower's nearest other items."""

    def __init__(self, model: SequentialRecommender, k: int, catalog_dtype: str = "float32") -> None:
        super().__init__(model, catalog_dtype)
        self.k = int(min(k, model.n_items - 1))
        if self.k < 1:
            raise ValueError("similar_items needs a catalog of at least 2 items")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")])
    def serve(self, item_id: Any) -> dict:
        """The serving signature."""
        ids, scores = map_row_chunks(self._top_k, [item_id], DEFAULT_CHUNK_ROWS, [(tf.string, [self.k]), (tf.float32, [self.k])])
        return {"item_ids": ids, "scores": scores}

    def _top_k(self, item_id: Any) -> tuple[Any, Any]:
        rows = self.model.rows_of(item_id)
        known = rows >= 0
        queries = self.item_vectors(tf.maximum(rows, 0))
        scores = catalog_dot(queries, self.items)
        itself = tf.equal(tf.range(self.model.n_items)[None, :], rows[:, None])
        top, values = catalog_top_k(queries, self.items, tf.where(itself, tf.fill(tf.shape(scores), -3.0), scores), self.k)
        ids = tf.where(known[:, None], tf.gather(self.model.item_ids, top), tf.fill(tf.shape(top), ""))
        return ids, tf.where(known[:, None], values, tf.zeros_like(values))


def export_recommendation(model: SequentialRecommender, titles: np.ndarray, export_dir: Path, *, k: int,
                          exclude_history: bool = False, version: Optional[int] = None, run: str = "",
                          catalog_dtype: str = "float32") -> dict[str, dict]:
    """Write ``recommender`` and ``similar_items`` as one version published together; returns {name: {"path", "mb"}}.

    Both carry warm-up records, catalog.json and a marker naming ``run``; ``catalog_dtype`` is how
    they store the item vectors (``export.catalog_dtype``: float32 or float16).
    """
    ids = model.item_ids.numpy().astype(str)
    catalog = {CATALOG_FILE: catalog_json(ids, titles)}
    first, middle = str(ids[0]), str(ids[len(ids) // 2])
    # Real ids, right padding, an unknown id and an empty history: the paths live requests take.
    histories = [[first, middle, ""], [middle, "unknown-item", ""], ["", "", ""]]
    recommender = RecommenderExport(model, k, exclude_history, catalog_dtype)
    similar = SimilarItemsExport(model, k, catalog_dtype)
    with ExportSet(export_dir, [RECOMMENDER_MODEL, SIMILAR_MODEL], run=run, version=version) as export:
        export.save(RECOMMENDER_MODEL, recommender, {"serving_default": recommender.serve},
                    warmup=[predict_log(RECOMMENDER_MODEL, {"history": histories}),
                            predict_log(RECOMMENDER_MODEL, {"history": [[first]]})],
                    extra_files=catalog)
        export.save(SIMILAR_MODEL, similar, {"serving_default": similar.serve},
                    warmup=[predict_log(SIMILAR_MODEL, {"item_id": [first, middle, "unknown-item"]}),
                            predict_log(SIMILAR_MODEL, {"item_id": [first]})],
                    extra_files=catalog)
    return export.published


def run_catalog_dtype(run_dir: Path) -> str:
    """The ``export.catalog_dtype`` of a trained run's config (float32 or float16)."""
    return load_config(RunFolder(run_dir).config, []).config.export.catalog_dtype
