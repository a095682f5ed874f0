"""The sequential recommender: a history encoder over BERT-fused items against the same item tower (TFRS).

Item tower: each catalog item is the fusion (``FeatureFusion``) of its frozen BERT text vector
(computed once through the embedding cache and kept in the model as a constant table) and an
item-id embedding. The id vocabulary holds the items seen in training only; every other item
gets an exactly zero id embedding, so a cold item is represented by its text alone, and
``id_dropout`` trains that path on seen items too. User tower: the same item vectors for the
user's history, encoded by the configured history encoder (:mod:`tfrec.recommend.encoders`).

Training uses ``tfrs.tasks.Retrieval`` over cosine scores divided by a temperature: ``in_batch``
takes the batch's targets as candidates with the logQ correction by each item's training
frequency; ``full`` gives every example the whole catalog as candidates, an exact softmax for small catalogs.

Item ids in, catalog rows inside: ``rows_of(ids)`` maps the catalog's own ids (ASINs, movie ids)
to rows, -1 for ids the catalog does not know; histories use -1 as padding, so an unknown id in
a history is simply not part of it.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.recommend.encoders import MaskedMeanEncoder, history_encoder
from tfrec.text.fusion import FeatureFusion

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402  (after compat: Keras 2 mode)

SOFTMAX_KINDS = ("in_batch", "full")


class SequentialRecommender(tfrs.models.Model):
    """Histories of catalog rows -> user vectors; catalog rows -> item vectors; tfrs Retrieval loss."""

    def __init__(
        self,
        item_ids: Sequence[str],
        text_vectors: Optional[np.ndarray],
        train_items: Optional[Sequence[str]],
        *,
        encoder: str = "transformer",
        dim: int = 64,
        encoder_dim: Optional[int] = None,
        max_history: int = 50,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        id_dropout: float = 0.2,
        temperature: float = 0.1,
        softmax: str = "full",
        sampling_probability: Optional[np.ndarray] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        ids = np.asarray(item_ids).astype(str)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError("item_ids must be a non-empty 1-D list of the catalog's item ids")
        if softmax not in SOFTMAX_KINDS:
            raise ValueError("softmax must be one of %s, got %r" % (", ".join(SOFTMAX_KINDS), softmax))
        if temperature <= 0:
            raise ValueError("temperature must be > 0, got %r" % (temperature,))
        if text_vectors is None and (train_items is None or len(train_items) == 0):
            raise ValueError("an item needs text vectors, an id vocabulary (train_items) or both")
        if text_vectors is not None and np.asarray(text_vectors).shape[0] != len(ids):
            raise ValueError("text_vectors has %d rows for %d catalog items" % (np.asarray(text_vectors).shape[0], len(ids)))
        self.n_items = len(ids)
        self.dim = int(dim)
        self.max_history = int(max_history)
        self.softmax = softmax
        self.item_ids = tf.constant(ids)
        self.row_lookup = tf.keras.layers.StringLookup(vocabulary=list(ids), num_oov_indices=1, name="item_rows")
        # The text table is data, not a weight: a constant keeps it out of checkpoints and optimizers.
        texts = np.zeros((len(ids), 0), np.float32) if text_vectors is None else np.asarray(text_vectors, np.float32)
        self.text_table = tf.constant(texts)
        # With dim == the text vectors' size the item tower is residual (text + a zero-initialised MLP of
        # text and id) and the user tower adds a zero-initialised projection of the encoder's output to
        # the history mean: at step 0 the model *is* the zero-shot text baseline and training moves away
        # from it only as far as the data pays.
        self.residual = texts.shape[1] == self.dim
        self.item_fusion = FeatureFusion(
            self.dim,
            id_vocabulary=list(dict.fromkeys(np.asarray(train_items).astype(str))) if train_items is not None and len(train_items) else None,
            id_embedding_dim=min(self.dim, 64) if self.residual else self.dim,
            id_dropout=id_dropout,
            hidden_units=(256,) if self.residual else (),
            residual=self.residual,
            normalize_output=False,
            seed=seed,
            name="item_fusion",
        )
        # The GRU/Transformer run at encoder_dim (cheaper than the 384-d text space); a projection maps
        # items into it, and user_projection maps its output back.
        self.encoder_dim = int(encoder_dim or self.dim) if encoder != "mean" else self.dim
        self.encoder_input = (tf.keras.layers.Dense(self.encoder_dim, name="encoder_input")
                              if self.encoder_dim != self.dim else None)
        self.encoder = history_encoder(encoder, dim=self.encoder_dim, max_length=self.max_history, layers=layers, heads=heads,
                                       dropout=dropout)
        self.mean = MaskedMeanEncoder(name="history_mean_skip")
        self.user_projection = tf.keras.layers.Dense(self.dim, kernel_initializer="zeros" if self.residual else "glorot_uniform",
                                                     name="user_projection")
        probability = None if sampling_probability is None else np.asarray(sampling_probability, np.float32)
        if probability is not None and probability.shape != (len(ids),):
            raise ValueError("sampling_probability needs one value per catalog item (%d), got shape %s" % (len(ids), probability.shape))
        self.sampling_probability = None if probability is None else tf.constant(np.maximum(probability, 1e-8))
        self.temperature = float(temperature)
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

    # -- towers --------------------------------------------------------------------------------

    def rows_of(self, ids: Any) -> Any:
        """Catalog ids (strings, any shape) -> int32 rows, -1 for unknown ids and for ""."""
        return tf.cast(self.row_lookup(ids), tf.int32) - 1

    def item_vectors(self, rows: Any, training: bool = False) -> Any:
        """Catalog rows (any shape, -1 allowed) -> unit item vectors [..., dim]; row -1 gives zeros."""
        rows = tf.convert_to_tensor(rows, tf.int32)
        flat = tf.reshape(rows, [-1])
        # Each distinct item is fused once per call (a batch repeats items across histories).
        unique, index = tf.unique(tf.maximum(flat, 0))
        fused = self.item_fusion(
            {"text_embedding": tf.gather(self.text_table, unique), "id": tf.gather(self.item_ids, unique)}, training=training
        )
        vectors = tf.math.l2_normalize(tf.gather(fused, index), axis=-1)
        vectors = tf.where((flat >= 0)[:, None], vectors, tf.zeros_like(vectors))
        return tf.reshape(vectors, tf.concat([tf.shape(rows), [self.dim]], axis=0))

    def catalog_vectors(self, training: bool = False) -> Any:
        """Every catalog item's vector, [n_items, dim]."""
        return self.item_vectors(tf.range(self.n_items, dtype=tf.int32), training=training)

    def user_vectors(self, history: Any, training: bool = False, catalog: Any = None) -> Any:
        """Histories of catalog rows [B, H] (front-padded with -1, newest last) -> unit user vectors [B, dim].

        ``catalog`` (every item's inference vector, precomputed at export) is gathered from instead of
        fusing the history's items again.
        """
        history = tf.convert_to_tensor(history, tf.int32)[:, -self.max_history:]
        if catalog is None:
            items = self.item_vectors(history, training=training)
        else:
            items = tf.where((history >= 0)[..., None], tf.gather(catalog, tf.maximum(history, 0)), tf.zeros([], catalog.dtype))
        mask = history >= 0
        inputs = self.encoder_input(items) if self.encoder_input is not None else items
        encoded = self.encoder(inputs, mask, training=training)
        if self.residual:
            user = self.mean(items, mask) + self.user_projection(encoded)
        elif self.encoder_input is not None:
            user = self.user_projection(encoded)  # the encoder ran narrower than the item space: only the projection maps back
        else:
            user = encoded + self.user_projection(encoded)
        return tf.math.l2_normalize(user, axis=-1)

    def call(self, features: dict, training: bool = False) -> Any:
        """{"history_index": [B, H]} -> user vectors (Keras needs a call to build the model)."""
        return self.user_vectors(features["history_index"], training=training)

    # -- training ------------------------------------------------------------------------------

    def compute_loss(self, features: dict, training: bool = False) -> Any:
        """tfrs Retrieval loss of (history -> next item) examples."""
        users = self.user_vectors(features["history_index"], training=training)
        targets = tf.cast(features["target_index"], tf.int32)
        if self.softmax == "full":
            # Exact softmax over the whole catalog (tfrs's task fixes the positive on the diagonal of
            # in-batch candidates, so the full case is written out; summed over the batch like tfrs).
            # The history's items are fused apart from the candidates on purpose: each gets its own
            # id-dropout draw, so a history item and its candidate copy do not drop their ids together.
            logits = tf.matmul(users, self.catalog_vectors(training=training), transpose_b=True) / self.temperature
            return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))
        target_vectors = self.item_vectors(targets, training=training)
        target_ids = tf.gather(self.item_ids, targets)
        probability = None if self.sampling_probability is None else tf.gather(self.sampling_probability, targets)
        return self.task(users, target_vectors, candidate_sampling_probability=probability, candidate_ids=target_ids,
                         compute_metrics=False)


def pad_front(rows: Any, max_history: int) -> Any:
    """[B, H] rows with -1 anywhere -> [B, max_history]: the known rows kept in order, right-aligned, -1 in front."""
    rows = tf.convert_to_tensor(rows, tf.int32)
    length = tf.shape(rows)[1]
    positions = tf.range(length)[None, :]
    # Sort key: padding first (keys < length), then the items in their original order.
    key = tf.where(rows >= 0, positions + length, positions)
    ordered = tf.gather(rows, tf.argsort(key, axis=1, stable=True), batch_dims=1)
    ordered = tf.concat([tf.fill([tf.shape(rows)[0], max_history], -1), ordered], axis=1)
    return ordered[:, -max_history:]
