"""`tfrec train` for sequential recommendation datasets (Amazon Scientific): train, evaluate, save.

The run is the stages of :mod:`tfrec.recommend.stages`, in order: frozen BERT vectors of every
item's text -> the history model, early-stopped on each user's newest training example and
re-trained on all training examples -> full-ranking evaluation on valid against the popularity
and zero-shot text baselines -> similar items from the item tower -> the run folder's files
(metrics.json, per_query.npz and the weights ``tfrec export`` rebuilds the model from). The
report is rendered from those files afterwards (:func:`tfrec.reports.evaluation.evaluate_run`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tfrec.config.loader import LoadedConfig
from tfrec.data.prepared.reader import ShardedSequences
from tfrec.data.tables import RecommendationData
from tfrec.recommend.metrics import RecommendationMetrics, TrainingSummary
from tfrec.recommend.stages.artifacts import load_recommender, save_artifacts
from tfrec.recommend.stages.evaluation import evaluate_recommender
from tfrec.recommend.stages.item_text import item_text_vectors
from tfrec.recommend.stages.similar_items import similar_items
from tfrec.recommend.stages.training import refit_on_all, select_epochs
from tfrec.runs import RunFolder
from tfrec.training.progress import StageTimer
from tfrec.training.steps import worker
from tfrec.training.strategy import describe, make_strategy

log = logging.getLogger(__name__)


def train_recommendation(loaded: LoadedConfig, data: RecommendationData, run_dir: Path, strategy: Any = None) -> dict[str, Any]:
    """Train and evaluate a sequential recommendation config in ``run_dir``; returns the metrics written to metrics.json.

    ``strategy``: one made by the caller (multi_worker is made before the data is read), else the config's.
    A non-chief worker of a multi-worker run stops after training and writes nothing; it returns {}.
    """
    config, folder, timer = loaded.config, RunFolder(run_dir), StageTimer(log)
    strategy = strategy if strategy is not None else make_strategy(config.train.distribute)
    note = data.train.sharding_note(describe(strategy)["workers"]) if isinstance(data.train, ShardedSequences) else None
    if note:
        log.warning(note)
    with timer.stage("text vectors"):
        text_vectors = item_text_vectors(config, data.catalog)

    with timer.stage("training (selection)"):
        model, selection = select_epochs(config, data, text_vectors, folder, strategy)
    refit, speed = bool(config.recommendation.refit and selection.best_epoch > 0), None
    if refit:
        with timer.stage("training (refit)"):
            model, speed = refit_on_all(config, data, text_vectors, folder, strategy, epochs=selection.best_epoch)
    training = TrainingSummary(selection, selection.holdout_metrics(), refit=refit, examples_per_second=speed)
    if not worker(strategy)[0]:
        return {}  # the chief evaluates the same weights and writes the run

    with timer.stage("evaluation"):
        evaluation = evaluate_recommender(config, data, model, text_vectors)
        similar = similar_items(config, data, model, text_vectors)

    metrics = RecommendationMetrics(evaluation.ranking, evaluation.seen_cold, similar, training, evaluation.model, timer.seconds)
    save_artifacts(folder, model, config.recommendation, metrics, data.valid.users, evaluation.per_user)
    return metrics.to_json()


# load_recommender is re-exported: `tfrec export` (tfrec.api) rebuilds a run's model through this module.
__all__ = ["load_recommender", "train_recommendation"]
