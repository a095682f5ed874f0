"""Stage 2: train the history model with tfrec's Trainer.

The number of epochs is chosen by early stopping on each user's newest training example (never
on valid), then the model is re-trained from scratch on every training example for that many
epochs (``recommendation.refit``), so the last transition of every user is learned too.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from tfrec.config.schema import Config
from tfrec.data.tables import RecommendationData, Sequences
from tfrec.evaluation.recommend import rank_metrics, top_k_from_vectors
from tfrec.recommend import train as rt
from tfrec.recommend.metrics import EpochSelection
from tfrec.recommend.model import SequentialRecommender
from tfrec.runs import RunFolder
from tfrec.training.trainer import Trainer, run_trainer

log = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"


def next_item_metrics(model: SequentialRecommender, sequences: Sequences, max_history: int, k: int = 10) -> dict[str, float]:
    """Full-ranking recall@k / ndcg@k of a model on (history -> next item) examples, nothing excluded."""
    history, _ = sequences.padded_histories(max_history)
    top = top_k_from_vectors(rt.user_matrix(model, history), rt.item_matrix(model), k)
    means = rank_metrics(top, sequences.targets, [k])
    return {"recall@%d" % k: means["recall@%d" % k], "ndcg@%d" % k: means["ndcg@%d" % k]}


def _trainer(config: Config, folder: RunFolder, name: str, strategy: object, *, early_stopping: bool) -> Trainer:
    # float32 always: the full-softmax logits over the catalog and the cosine norms need it.
    return run_trainer(config, folder.root, name, strategy, mixed_precision="none",
                       early_stopping_metric=SELECTION_METRIC if early_stopping else None,
                       early_stopping_patience=config.recommendation.patience if early_stopping else 0)


def select_epochs(config: Config, data: RecommendationData, text_vectors: Optional[np.ndarray], folder: RunFolder,
                  strategy: object) -> tuple[SequentialRecommender, EpochSelection]:
    """Train on all but each user's newest training example, early-stopped on those; returns the best epoch's model."""
    rc, seed, catalog = config.recommendation, config.run.seed, data.catalog
    rest, holdout = rt.split_newest(data.train, rc.max_history)
    log.info("%s encoder, %s softmax, %d-d: selecting epochs on %d held-out newest training examples (%d left to train on)",
             rc.encoder, rc.softmax, rc.dim, len(holdout), len(rest))
    # The Trainer validates every epoch and puts the best epoch's weights back.
    model, result = rt.fit_recommender(
        lambda: rt.build_recommender(rc, catalog, text_vectors, rest, seed), rest, rc,
        _trainer(config, folder, "select", strategy, early_stopping=True), epochs=rc.epochs, seed=seed,
        validate=lambda m: next_item_metrics(m, holdout, rc.max_history), shuffle_buffer=config.data.shuffle_buffer,
    )
    best = result.best_epoch if result.best_epoch is not None else result.epochs_run - 1
    return model, EpochSelection(
        epochs_run=result.epochs_run, best_epoch=best + 1,
        history=[{k: round(float(v), 5) for k, v in h.items()} for h in result.history],
        holdout_examples=len(holdout), train_examples=len(rest), stopped_early=result.stopped_early,
    )


def refit_on_all(config: Config, data: RecommendationData, text_vectors: Optional[np.ndarray], folder: RunFolder,
                 strategy: object, epochs: int) -> tuple[SequentialRecommender, float]:
    """A fresh model trained ``epochs`` epochs on every training example; returns it and its examples per second."""
    rc, seed = config.recommendation, config.run.seed
    log.info("re-training on all %d training examples for %d epoch(s)", len(data.train), epochs)
    model, result = rt.fit_recommender(
        lambda: rt.build_recommender(rc, data.catalog, text_vectors, data.train, seed), data.train, rc,
        _trainer(config, folder, "refit", strategy, early_stopping=False), epochs=epochs, seed=seed,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    return model, round(result.examples_per_second, 1)
