"""The feature ranker: scores each (query, product) of a list from text, lexical and id signals.

Per item it sees the fine-tuned two-tower vectors (their cosine, which is the retrieval score,
and their element-wise product), the zero-shot MiniLM cosine, lexical match features computed
in-graph (BM25, matched-term shares, character trigram overlap) and optionally a product-id
embedding (training products only; unseen ids get exact zeros and ``id_dropout`` trains that
path) and, when the run names catalog columns (``data.catalog.numeric_columns`` /
``categorical_columns``), a :class:`~tfrec.text.fusion.FeatureFusion` of the product's columns
(numeric standardized with the catalog's statistics plus missing flags, categorical embeddings
with an out-of-vocabulary row). Optional DCN-v2 cross layers model feature interactions explicitly. Trained listwise with
TF-Ranking losses on padded lists (label -1 = padding, masked by the losses and metrics).

The final score adds ``dense_weight`` times the two-tower score z-scored over the whole catalog
(the dense component of the hybrid retrieval score) to the MLP's score divided by ``score_scale``.
Both are set after training (:meth:`RankerHead.set_dense_fusion`; 0 and 1 leave the MLP's score
as it is). The catalog's mean vector and covariance give each query's mean and standard
deviation over the catalog without scoring it, so the score stays a function of one item.

The head works on precomputed vectors, so training and evaluation never re-run BERT. Its inputs
come from one in-graph preprocessing layer, :class:`tfrec.search.features.RankerFeatures`, in
training and in the export (which adds the encoders, so the SavedModel takes raw strings).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.evaluation.zscore import zscore
from tfrec.text.fusion import TEXT_KEY, FeatureFusion

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402  (after compat: Keras 2 mode)

# The lexical features the head reads, in this order (tfrec.lexical pair_features keys).
LEXICAL_FEATURES = ("bm25", "matched_fraction", "idf_matched_fraction", "query_terms", "title_terms", "char_trigram_jaccard")
# Size of the fused catalog columns each item adds to the MLP's input (when the run has columns).
CATALOG_COLUMNS_DIM = 8


def catalog_input(column: str) -> str:
    """The head input holding a catalog column's per-item values [B, L] (prefixed: a column may be named like a feature)."""
    return "catalog_" + column


def log_lexical(values: Any) -> tf.Tensor:
    """log1p of the lexical features: BM25 and term counts are heavy-tailed."""
    return tf.math.log1p(tf.maximum(tf.cast(values, tf.float32), 0.0))


class CatalogZScore(tf.keras.layers.Layer):
    """A query's score mean and standard deviation over a catalog, from the catalog's mean and covariance.

    For q . p over catalog vectors p: mean = q . mu, variance = q^T C q, the same numbers as scoring
    every product and taking moments, at the cost of one [D, D] product per query.
    """

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[-1])
        self.mean = self.add_weight(name="catalog_mean", shape=[dim], initializer="zeros", trainable=False)
        self.covariance = self.add_weight(name="catalog_covariance", shape=[dim, dim], initializer="zeros", trainable=False)
        super().build(input_shape)

    def set_catalog(self, vectors: Any) -> None:
        """Store the mean and (population) covariance of catalog vectors [N, D], computed in float64."""
        x = np.asarray(vectors, np.float64)
        if x.ndim != 2 or not len(x):
            raise ValueError("catalog vectors must be a non-empty [N, D] array, got shape %s" % (x.shape,))
        if not self.built:
            self.build(tf.TensorShape([None, x.shape[1]]))
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError("catalog vectors have %d dimensions but the ranker's query vectors have %d" % (x.shape[1], self.mean.shape[0]))
        mean = x.mean(axis=0)
        self.mean.assign(mean.astype(np.float32))
        self.covariance.assign(((x.T @ x) / len(x) - np.outer(mean, mean)).astype(np.float32))

    def call(self, query: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """(mean [B, 1], standard deviation [B, 1]) of each query's scores over the catalog."""
        mean = tf.reduce_sum(query * self.mean, axis=-1, keepdims=True)
        variance = tf.reduce_sum(tf.matmul(query, self.covariance) * query, axis=-1, keepdims=True)
        return mean, tf.sqrt(tf.maximum(variance, 0.0))


class RankerHead(tf.keras.Model):
    """Lists of precomputed item features -> scores [B, L].

    ``catalog_columns`` is FeatureFusion's ``numeric``, ``numeric_mean``, ``numeric_variance`` and
    ``categorical`` for the catalog columns fused per item (``CatalogFeatureLookup.fusion_arguments()``);
    the head then reads them as :func:`catalog_input` inputs. None: no column branch, so no extra
    inputs or variables.
    """

    def __init__(
        self,
        *,
        product_vocabulary: Optional[Sequence[str]] = None,
        id_embedding_dim: int = 16,
        id_dropout: float = 0.5,
        interaction_dim: int = 0,
        hidden_units: Sequence[int] = (32, 16),
        cross_layers: int = 0,
        dropout: float = 0.1,
        catalog_columns: Optional[Mapping[str, Any]] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.use_ids = bool(product_vocabulary is not None and len(product_vocabulary))
        self.ids = (
            FeatureFusion(
                id_embedding_dim,
                id_vocabulary=list(product_vocabulary),
                id_embedding_dim=id_embedding_dim,
                id_dropout=id_dropout,
                hidden_units=(),
                normalize_output=False,
                seed=seed,
                name="product_id",
            )
            if self.use_ids
            else None
        )
        # The element-wise product q*p of the two-tower vectors, projected to interaction_dim (0: off).
        self.interaction = tf.keras.layers.Dense(interaction_dim, name="interaction") if interaction_dim else None
        # Statistics from real (non-padding) training items, set by adapt_lexical().
        self.lexical_norm = tf.keras.layers.Normalization(axis=-1, name="lexical_norm")
        self.cross = [tfrs.layers.dcn.Cross(name="cross_%d" % i) for i in range(cross_layers)]
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", name="hidden_%d" % i) for i, u in enumerate(hidden_units)]
        self.dropouts = [tf.keras.layers.Dropout(dropout, seed=seed) for _ in hidden_units]
        self.out = tf.keras.layers.Dense(1, name="score")
        self.catalog_stats = CatalogZScore(name="catalog_stats")
        self.dense_weight = self.add_weight(name="dense_weight", shape=[], initializer="zeros", trainable=False)
        self.score_scale = self.add_weight(name="score_scale", shape=[], initializer="ones", trainable=False)
        # Last, so a head without columns creates exactly the variables it always did, in the same order.
        self.columns = (
            FeatureFusion(CATALOG_COLUMNS_DIM, hidden_units=(), normalize_output=False, seed=seed, name="catalog_columns",
                          **catalog_columns)
            if catalog_columns
            else None
        )

    @property
    def column_inputs(self) -> tuple[str, ...]:
        """The head inputs of the catalog columns it fuses (empty without columns)."""
        if self.columns is None:
            return ()
        return tuple(catalog_input(name) for name in (*self.columns.numeric, *self.columns.categorical))

    def missing_columns(self, shape: Sequence[int]) -> dict[str, tf.Tensor]:
        """The catalog-column inputs of items of ``shape`` [B, L] whose columns are all missing (NaN, "")."""
        if self.columns is None:
            return {}
        values = {catalog_input(n): tf.fill(shape, float("nan")) for n in self.columns.numeric}
        values.update({catalog_input(n): tf.fill(shape, "") for n in self.columns.categorical})
        return values

    def set_dense_fusion(self, catalog_vectors: Any, weight: float, scale: float) -> None:
        """Final score = MLP score / ``scale`` + ``weight`` * the two-tower score z-scored over ``catalog_vectors``."""
        if not scale > 0:
            raise ValueError("score_scale must be > 0, got %r" % (scale,))
        self.catalog_stats.set_catalog(catalog_vectors)
        self.dense_weight.assign(float(weight))
        self.score_scale.assign(float(scale))

    def mlp_score(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """The MLP's scores [B, L] alone (what the listwise losses train)."""
        x = self.item_features(inputs, training=training)
        shape = tf.shape(x)
        x = tf.reshape(x, [-1, x.shape[-1]])
        x0 = x
        for layer in self.cross:
            x = layer(x0, x)
        for dense, drop in zip(self.hidden, self.dropouts):
            x = drop(dense(x), training=training)
        return tf.reshape(self.out(x), shape[:2])

    def dense_z(self, inputs: dict) -> tf.Tensor:
        """The two-tower score of each item z-scored over the catalog [B, L] (zeros before set_dense_fusion)."""
        q = inputs["query_vector"]
        mean, std = self.catalog_stats(q)
        cos = tf.reduce_sum(q[:, None, :] * inputs["product_vector"], axis=-1)
        # The hybrid retrieval's z-score, from moments without scoring the catalog; a zero std (no catalog set yet) gives zeros.
        return zscore(cos, mean, std)

    def adapt_lexical(self, lexical_items: Any) -> None:
        """Set the lexical feature normalization from the real items [n, F] of the training lists."""
        self.lexical_norm.adapt(log_lexical(tf.constant(lexical_items, tf.float32)))

    def item_features(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """[B, L, F] per-item features the MLP reads."""
        q = inputs["query_vector"][:, None, :]
        p = inputs["product_vector"]
        qz = inputs["query_zero"][:, None, :]
        pz = inputs["product_zero"]
        cos = tf.reduce_sum(q * p, axis=-1, keepdims=True)
        cos_zero = tf.reduce_sum(qz * pz, axis=-1, keepdims=True)
        lexical = log_lexical(inputs["lexical"])
        shape = tf.shape(lexical)
        flat = tf.reshape(lexical, [-1, len(LEXICAL_FEATURES)])
        lexical = tf.reshape(self.lexical_norm(flat), shape)
        parts = [cos, cos_zero, lexical]
        if self.interaction is not None:
            parts.append(self.interaction(q * p))
        if self.ids is not None:
            ids = tf.reshape(inputs["product_id"], [-1])
            vectors = self.ids.id_embedding(ids, training=training)
            parts.append(tf.reshape(vectors, tf.concat([tf.shape(cos)[:2], [self.ids.id_embedding_dim]], 0)))
        if self.columns is not None:
            parts.append(self._fused_columns(inputs, tf.shape(cos)[:2], training))
        return tf.concat(parts, axis=-1)

    def _fused_columns(self, inputs: dict, shape: Any, training: bool) -> tf.Tensor:
        """[B, L, CATALOG_COLUMNS_DIM]: each item's catalog columns through the column FeatureFusion."""
        absent = [name for name in self.column_inputs if name not in inputs]
        if absent:
            raise ValueError("RankerHead fuses catalog columns but its inputs lack %s (got %s): compute them with "
                             "RankerFeatures given the run's catalog columns" % (", ".join(absent), ", ".join(sorted(inputs))))
        names = [*self.columns.numeric, *self.columns.categorical]
        flat = {name: tf.reshape(inputs[catalog_input(name)], [-1]) for name in names}
        # The branch fuses columns only: its text input is empty.
        flat[TEXT_KEY] = tf.zeros(tf.stack([tf.size(flat[names[0]]), 0]))
        fused = self.columns(flat, training=training)
        return tf.reshape(fused, tf.concat([shape, [CATALOG_COLUMNS_DIM]], 0))

    def predict(self, x: Any, batch_size: Optional[int] = None, verbose: Any = "auto", **kwargs: Any) -> np.ndarray:
        """Scores [n, L] of list inputs (a dict of arrays), in eager batches of ``batch_size`` (default 32).

        Not Keras' ``predict`` loop: a run trains a new head per candidate loss, and each head
        would trace its own predict function for every list width it scores (training lists,
        valid's judged products, valid's top-k), which after a few heads makes TensorFlow warn
        about excessive retracing. The head is a handful of small layers, so eager batches cost
        no more than tracing and give the same numbers. Anything else than a dict of arrays
        (a ``tf.data.Dataset``, callbacks) goes to Keras' ``predict``.
        """
        if not isinstance(x, Mapping) or kwargs:
            return super().predict(x, batch_size=batch_size, verbose=verbose, **kwargs)
        size = int(batch_size or 32)
        n = len(next(iter(x.values())))
        parts = [self({k: v[s : s + size] for k, v in x.items()}, training=False).numpy() for s in range(0, n, size)]
        if parts:
            return np.concatenate(parts)
        return np.zeros((0, *np.shape(next(iter(x.values())))[1:2]), np.float32)

    def call(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """Scores [B, L] of every list item (padding items get a score too; losses mask them)."""
        return self.mlp_score(inputs, training=training) / self.score_scale + self.dense_weight * self.dense_z(inputs)
