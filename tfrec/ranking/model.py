"""The feature ranker: scores each (query, product) of a list from text, lexical and id signals.

Per item it sees the fine-tuned two-tower vectors (their cosine, which is the retrieval score,
and their element-wise product), the zero-shot MiniLM cosine, lexical match features computed
in-graph (BM25, matched-term shares, character trigram overlap) and optionally a product-id
embedding (training products only; unseen ids get exact zeros and ``id_dropout`` trains that
path). Optional DCN-v2 cross layers model feature interactions explicitly. Trained listwise with
TF-Ranking losses on padded lists (label -1 = padding, masked by the losses and metrics).

The head works on precomputed vectors, so training and evaluation never re-run BERT; the
export (tfrec.search.export) wraps it with the in-graph encoders and lexical scorer so the
SavedModel takes raw strings.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from tfrec import compat
from tfrec.text.fusion import FeatureFusion

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402  (after compat: Keras 2 mode)

# The lexical features the head reads, in this order (tfrec.lexical pair_features keys).
LEXICAL_FEATURES = ("bm25", "matched_fraction", "idf_matched_fraction", "query_terms", "title_terms", "char_trigram_jaccard")


def log_lexical(values: Any) -> tf.Tensor:
    """log1p of the lexical features: BM25 and term counts are heavy-tailed."""
    return tf.math.log1p(tf.maximum(tf.cast(values, tf.float32), 0.0))


class RankerHead(tf.keras.Model):
    """Lists of precomputed item features -> scores [B, L]."""

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
        return tf.concat(parts, axis=-1)

    def call(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """Scores [B, L] of every list item (padding items get a score too; losses mask them)."""
        x = self.item_features(inputs, training=training)
        shape = tf.shape(x)
        x = tf.reshape(x, [-1, x.shape[-1]])
        x0 = x
        for layer in self.cross:
            x = layer(x0, x)
        for dense, drop in zip(self.hidden, self.dropouts):
            x = drop(dense(x), training=training)
        return tf.reshape(self.out(x), shape[:2])
