"""Training data and the training loop of the sequential recommender.

Model selection never looks at the reported split: each user's newest training example (the
transition just before the valid one) is held out, training early-stops on its NDCG@10, and the
model is then re-trained from scratch on every training example for the chosen number of epochs
(``refit``), so the last transition of every user is learned too.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np

from tfrec import compat
from tfrec.config.schema import RecommendationConfig
from tfrec.data.prepared.reader import ShardedSequences
from tfrec.data.tables import Catalog, Sequences
from tfrec.recommend.model import SequentialRecommender
from tfrec.training.strategy import describe
from tfrec.training.trainer import Trainer, TrainResult, epoch_seed

tf = compat.tensorflow()


# Training examples: in memory, or streamed from the shards of a prepared dataset (data.prepared).
TrainExamples = Union[Sequences, ShardedSequences]


def split_newest(sequences: TrainExamples, max_history: int = 0) -> tuple[TrainExamples, Sequences]:
    """(rest, holdout): the holdout is each user's example with the longest history (their newest transition).

    Streamed examples stay streamed; their holdout (one example per user) is read into memory with
    histories cut to ``max_history``.
    """
    if isinstance(sequences, ShardedSequences):
        if len(sequences.rest()) == 0:
            raise ValueError("every user has a single training example: nothing is left to train on after holding out the newest")
        return sequences.rest(), sequences.newest(max_history)
    if len(sequences) == 0:
        raise ValueError("no training examples in %s" % sequences.source)
    rest, holdout = sequences.newest_split()
    if len(rest) == 0:
        raise ValueError("every user has a single training example: nothing is left to train on after holding out the newest")
    return sequences.take(rest), sequences.take(holdout)


def sampling_probability(sequences: TrainExamples, n_items: int) -> np.ndarray:
    """Each item's share of the training targets (the chance it is an in-batch candidate, for logQ)."""
    counts = (sequences.target_counts() if isinstance(sequences, ShardedSequences)
              else np.bincount(sequences.targets, minlength=n_items)).astype(np.float64)
    return (counts / max(counts.sum(), 1.0)).astype(np.float32)


def training_items(sequences: TrainExamples, catalog: Catalog) -> np.ndarray:
    """Ids of the items that occur in training (histories or targets): the id vocabulary."""
    if isinstance(sequences, ShardedSequences):
        return catalog.ids[sequences.vocabulary_mask()].astype(str)
    rows = np.unique(np.concatenate([sequences.items, sequences.targets]))
    return catalog.ids[rows].astype(str)


def build_recommender(cfg: RecommendationConfig, catalog: Catalog, text_vectors: Optional[np.ndarray], train: TrainExamples,
                      seed: int) -> SequentialRecommender:
    """The configured model, compiled with Adam."""
    model = SequentialRecommender(
        catalog.ids.astype(str),
        text_vectors if cfg.item_text else None,
        training_items(train, catalog) if cfg.item_id else None,
        encoder=cfg.encoder, dim=cfg.dim, encoder_dim=cfg.encoder_dim, max_history=cfg.max_history, layers=cfg.transformer_layers,
        heads=cfg.transformer_heads, dropout=cfg.dropout, id_dropout=cfg.id_dropout, temperature=cfg.temperature,
        softmax=cfg.softmax, sampling_probability=sampling_probability(train, len(catalog)) if cfg.sampling_correction else None,
        seed=seed,
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))
    return model


def example_arrays(sequences: Sequences, max_history: int) -> dict[str, np.ndarray]:
    """{history_index [n, max_history] (front-padded with -1), target_index [n]}."""
    history, _ = sequences.padded_histories(max_history)
    return {"history_index": history, "target_index": sequences.targets.astype(np.int32)}


def epoch_dataset(arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> Any:
    """One epoch of shuffled batches; the same batches for the same seed."""
    n = len(arrays["target_index"])
    return tf.data.Dataset.from_tensor_slices(arrays).shuffle(n, seed=seed, reshuffle_each_iteration=False).batch(batch_size)


def user_matrix(model: SequentialRecommender, histories: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """User vectors [n, dim] of front-padded history rows."""
    encode = getattr(model, "_user_fn", None)
    if encode is None:  # one traced function per model, not one per call
        encode = model._user_fn = tf.function(lambda h: model.user_vectors(h, training=False), reduce_retracing=True)
    parts = [encode(tf.constant(histories[i : i + batch_size])).numpy() for i in range(0, len(histories), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)


def item_matrix(model: SequentialRecommender) -> np.ndarray:
    """Every catalog item's vector [n_items, dim]."""
    return model.catalog_vectors(training=False).numpy()


def fit_recommender(
    build: Callable[[], SequentialRecommender],
    train: TrainExamples,
    cfg: RecommendationConfig,
    trainer: Trainer,
    *,
    epochs: int,
    seed: int,
    validate: Optional[Callable[[Any], dict]] = None,
    shuffle_buffer: int = 200_000,
) -> tuple[SequentialRecommender, TrainResult]:
    """Train ``epochs`` epochs with tfrec's Trainer; returns (model, TrainResult)."""
    if isinstance(train, ShardedSequences):
        workers = describe(trainer.strategy or tf.distribute.get_strategy())["workers"]

        def streamed(epoch: int) -> Any:
            return train.dataset(cfg.max_history, cfg.batch_size, epoch_seed(seed, epoch), shuffle_buffer=shuffle_buffer,
                                 workers=workers)

        return trainer.fit(build, streamed, epochs, validate=validate)
    arrays = example_arrays(train, cfg.max_history)
    return trainer.fit(build, lambda epoch: epoch_dataset(arrays, cfg.batch_size, epoch_seed(seed, epoch)), epochs,
                       validate=validate)
