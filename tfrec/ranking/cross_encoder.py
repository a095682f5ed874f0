"""A TFR-BERT-style cross-encoder: BERT reads "[CLS] query [SEP] title [SEP]" and scores the pair.

:class:`CrossEncoderRanker` scores judged lists (``{"query": [B], "title": [B, L]}`` -> ``[B, L]``)
with the in-graph tokenizer, the pretrained MiniLM and a ``Dense(1)`` head on the pooled hidden
state. Only the valid (query, title) pairs go through BERT: they are gathered out of the
``[B, L]`` grid and their scores scattered back, padding gets :data:`tfrec.ranking.PADDING_SCORE`.
Fine-tuning the whole BERT is the point of a cross-encoder, so it is meant for accelerators. On
the 2-core development CPU (shared, ~1 core effective) at max_length 48, measured November 2026:
about 44 training pairs/s (8 lists a step) and 170 inference pairs/s (length-sorted batches of 64
pairs); one Home Depot training epoch (~60k pairs) would take ~25 minutes there.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal, Optional

import numpy as np

from tfrec import compat
from tfrec.log import Progress
from tfrec.schedules import WarmupLinearDecay
from tfrec.ranking import PADDING_SCORE
from tfrec.ranking.losses import ranking_loss
from tfrec.text.encoder import load_bert
from tfrec.text.model_files import ModelFiles, ModelFilesError, resolve_model_files
from tfrec.text.tokenizer import BertTokenizerLayer

tf = compat.tensorflow()
log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]
WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
# BERT fine-tuning convention: no decay on biases and LayerNorm scales/offsets.
_NO_DECAY = ["bias", "LayerNorm", "layer_norm"]


class CrossEncoderRanker(tf.keras.Model):
    """Scores (query, title) pairs with a fine-tuned BERT: {"query": [B], "title": [B, L]} -> [B, L]."""

    def __init__(
        self,
        files: ModelFiles,
        *,
        max_length: int = 48,
        dropout: float = 0.1,
        pooling: Pooling = "mean",
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if pooling not in ("mean", "cls"):
            raise ValueError("pooling must be 'mean' or 'cls', got %r" % (pooling,))
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1), got %r" % (dropout,))
        self.files = files
        self.pooling = pooling
        self.dropout_rate = float(dropout)
        self.seed = int(seed)
        # Batch-length padding: a Home Depot pair averages ~26 tokens; 48 truncates about 2% of pairs.
        self.tokenizer = BertTokenizerLayer.from_model_files(files, max_length=max_length, pad_to="batch")
        self.bert = load_bert(files, with_pooler=False)
        if self.tokenizer.vocab_size != self.bert.config.vocab_size:
            raise ModelFilesError(
                "%s has %d tokens but %s declares vocab_size %d"
                % (files.vocab, self.tokenizer.vocab_size, files.config, self.bert.config.vocab_size)
            )
        self.dropout = tf.keras.layers.Dropout(dropout, seed=seed, name="head_dropout")
        initializer = tf.keras.initializers.TruncatedNormal(stddev=self.bert.config.initializer_range, seed=seed)
        self.head = tf.keras.layers.Dense(1, kernel_initializer=initializer, name="score")
        # Built now so that the optimizer and checkpoints see every variable before the first call.
        with tf.name_scope(self.head.name):
            self.head.build(tf.TensorShape([None, self.bert.config.hidden_size]))

    @property
    def max_length(self) -> int:
        """Token budget of one "[CLS] query [SEP] title [SEP]" pair (longest-first truncation)."""
        return self.tokenizer.max_length

    def call(self, inputs: dict, training: Optional[bool] = None) -> tf.Tensor:
        """Scores [B, L] float32 of {"query": [B], "title": [B, L][, "mask": [B, L] bool]}; padding -> PADDING_SCORE.

        Without "mask", the valid items are the non-empty titles.
        """
        missing = [key for key in ("query", "title") if key not in inputs]
        if missing:
            raise ValueError(
                "CrossEncoderRanker inputs need %s; got keys %s" % (" and ".join(missing), sorted(inputs))
            )
        query = tf.convert_to_tensor(inputs["query"])
        if query.shape.rank == 2:
            query = tf.squeeze(query, axis=-1)  # [B, 1] from Keras-style inputs
        titles = tf.convert_to_tensor(inputs["title"])
        if titles.shape.rank != 2:
            raise ValueError("'title' must be a [batch, list] string tensor, got shape %s" % titles.shape)
        mask = inputs.get("mask")
        mask = tf.not_equal(titles, "") if mask is None else tf.cast(mask, tf.bool)
        where = tf.where(mask)  # [N, 2] (row, position) of the valid items
        scores = self.score_pairs(tf.gather(query, where[:, 0]), tf.gather_nd(titles, where), training=training)
        padded = tf.fill(tf.shape(titles), tf.constant(PADDING_SCORE, tf.float32))
        return tf.tensor_scatter_nd_update(padded, where, scores)

    def score_pairs(self, query: Any, title: Any, training: Optional[bool] = None) -> tf.Tensor:
        """Scores [N] float32 of N (query, title) string pairs, each read as "[CLS] query [SEP] title [SEP]"."""
        tokens = self.tokenizer((query, title))
        # No pairs at all (a batch of padding) gives 0 tokens a row, which BERT's attention rejects;
        # one masked [PAD] column keeps the shapes valid and is a no-op whenever there are pairs.
        short = tf.maximum(0, 1 - tf.shape(tokens["input_ids"])[1])
        input_ids = tf.pad(tokens["input_ids"], [[0, 0], [0, short]], constant_values=self.tokenizer.pad_id)
        mask = tf.pad(tokens["attention_mask"], [[0, 0], [0, short]])
        token_type_ids = tf.pad(tokens["token_type_ids"], [[0, 0], [0, short]])
        hidden = self.bert(
            input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids, training=training
        ).last_hidden_state
        hidden = tf.cast(hidden, tf.float32)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = tf.cast(mask, tf.float32)[:, :, None]
            pooled = tf.reduce_sum(hidden * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
        scores = self.head(self.dropout(pooled, training=training))
        return tf.cast(tf.squeeze(scores, axis=-1), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
    def predict_pairs(self, query: tf.Tensor, title: tf.Tensor) -> tf.Tensor:
        """Inference scores [N] of N (query, title) pairs, traced once per model (no dropout)."""
        return self.score_pairs(query, title, training=False)

    def get_config(self) -> dict:
        """Constructor arguments (the model folder by path), for Keras serialization."""
        return {
            "model_dir": str(self.files.dir),
            "max_length": self.max_length,
            "dropout": self.dropout_rate,
            "pooling": self.pooling,
            "seed": self.seed,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> "CrossEncoderRanker":
        """Rebuild from :meth:`get_config` output (pretrained weights; restore a checkpoint for trained ones)."""
        config = dict(config)
        return cls(resolve_model_files(config.pop("model_dir")), **config)


def _check_lists(
    queries: Any, titles: Any, labels: Optional[Any] = None
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    queries = np.asarray(queries, dtype=object)
    titles = np.asarray(titles, dtype=object)
    if queries.ndim != 1:
        raise ValueError("queries must be a 1-D array [n], got shape %s" % (queries.shape,))
    if titles.ndim != 2 or titles.shape[0] != queries.shape[0]:
        raise ValueError("titles must be [n, L] with n = %d queries, got shape %s" % (len(queries), titles.shape))
    if labels is None:
        return queries, titles, None
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape != titles.shape:
        raise ValueError("labels must have the titles' shape %s, got %s" % (titles.shape, labels.shape))
    judged_empty = (titles == "") & (labels >= 0)
    if judged_empty.any():
        row, position = np.argwhere(judged_empty)[0]
        raise ValueError(
            "list %d position %d has a label (%g) but an empty title; padding needs label -1"
            % (row, position, labels[row, position])
        )
    return queries, titles, labels


def train_cross_encoder(
    model: CrossEncoderRanker,
    queries: np.ndarray,
    titles: np.ndarray,
    labels: np.ndarray,
    *,
    loss: str = "softmax",
    epochs: int = 1,
    batch_size: int = 8,
    learning_rate: float = 3e-5,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fine-tune on judged lists (titles "" and labels -1 are padding); returns the training history.

    AdamW (weight decay 0.01, none on biases and LayerNorm), global-norm clipping at 1, linear
    warm-up over the first 10% of steps then linear decay to 0. ``batch_size`` counts lists.
    Seeds TensorFlow's global random generator with ``seed`` (dropout, tie shuffling) and the
    list order. History: "loss" (mean per epoch), "step_loss", "pairs_per_second" (per epoch; the
    first includes tracing the step), "steps", "pairs" (valid pairs seen), "seconds".
    """
    queries, titles, labels = _check_lists(queries, titles, labels)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError("epochs must be an int >= 0 (0: no training), got %r" % (epochs,))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be a positive int, got %r" % (batch_size,))
    if not learning_rate > 0:
        raise ValueError("learning_rate must be > 0, got %r" % (learning_rate,))
    if epochs and not len(queries):
        raise ValueError("train_cross_encoder got no lists to train on")
    loss_fn = ranking_loss(loss)
    tf.random.set_seed(seed)
    steps_per_epoch = math.ceil(len(queries) / batch_size)
    total = max(steps_per_epoch * epochs, 1)
    optimizer = tf.keras.optimizers.AdamW(
        learning_rate=WarmupLinearDecay(learning_rate, total, math.ceil(WARMUP_FRACTION * total)),
        weight_decay=WEIGHT_DECAY,
        global_clipnorm=1.0,
    )
    optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
    variables = model.trainable_variables

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string),
            tf.TensorSpec([None, None], tf.string),
            tf.TensorSpec([None, None], tf.float32),
        ]
    )
    def train_step(query: tf.Tensor, title: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            scores = model({"query": query, "title": title, "mask": label >= 0}, training=True)
            value = loss_fn(label, scores)
        optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
        return value

    rng = np.random.default_rng(seed)
    history: dict = {"loss": [], "step_loss": [], "pairs_per_second": [], "steps": 0, "pairs": 0, "seconds": 0.0}
    for epoch in range(epochs):
        order = rng.permutation(len(queries))
        bar = Progress("cross-encoder epoch %d/%d" % (epoch + 1, epochs), steps_per_epoch, logger=log, unit="step", show=progress)
        if progress:
            log.info("cross-encoder epoch %d/%d", epoch + 1, epochs)
        start, pairs, losses = time.perf_counter(), 0, []
        for step in range(steps_per_epoch):
            rows = order[step * batch_size : (step + 1) * batch_size]
            batch_labels = labels[rows]
            width = max(int((batch_labels >= 0).sum(axis=1).max()), 1)  # trims list padding shared by the batch
            keep = np.argsort(batch_labels < 0, axis=1, kind="stable")[:, :width]  # valid items first
            value = float(
                train_step(
                    tf.constant(queries[rows].astype(str)),
                    tf.constant(np.take_along_axis(titles[rows], keep, axis=1).astype(str)),
                    tf.constant(np.take_along_axis(batch_labels, keep, axis=1)),
                )
            )
            if not math.isfinite(value):
                raise FloatingPointError(
                    "cross-encoder loss became %r at epoch %d step %d" % (value, epoch + 1, step + 1)
                )
            losses.append(value)
            pairs += int((batch_labels >= 0).sum())
            bar.update(1, {"loss": "%.4g" % value, "pairs/s": "%.0f" % (pairs / (time.perf_counter() - start))})
        bar.close()
        history["loss"].append(float(np.mean(losses)))
        history["step_loss"].extend(losses)
        seconds = time.perf_counter() - start
        history["pairs_per_second"].append(pairs / seconds)
        history["seconds"] += seconds
        history["steps"] += len(losses)
        history["pairs"] += pairs
    return history


def score_lists(
    model: CrossEncoderRanker, queries: np.ndarray, titles: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Inference scores [n, L] float32 of lists (titles "" are padding: PADDING_SCORE); batch_size counts pairs.

    Pairs, not lists, make the batches: memory stays bounded however wide the lists are (e.g. 100
    retrieved candidates each), and pairs of similar length share a batch, so little is padded.
    """
    queries, titles, _ = _check_lists(queries, titles)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be a positive int, got %r" % (batch_size,))
    rows, positions = np.nonzero(titles != "")
    pair_queries, pair_titles = queries[rows].astype(str), titles[rows, positions].astype(str)
    # Character length predicts token length well enough to group pairs for batch-length padding.
    order = np.argsort(np.char.str_len(pair_queries) + np.char.str_len(pair_titles), kind="stable")
    flat = np.empty(len(rows), np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        flat[chunk] = model.predict_pairs(tf.constant(pair_queries[chunk]), tf.constant(pair_titles[chunk])).numpy()
    scores = np.full(titles.shape, PADDING_SCORE, np.float32)
    scores[rows, positions] = flat
    return scores


__all__ = ["CrossEncoderRanker", "score_lists", "train_cross_encoder"]
