"""Config values the loaded data makes impossible, found before any encoding or training starts.

``tfrec train`` calls :func:`preflight` on the data it will train on (after ``data.max_*``
slicing), before it creates a run folder: a cut-off above the catalog size or a relevance threshold
no judgment reaches fails in seconds, with every such problem listed in one
:class:`~tfrec.config.ConfigError` that names each key and the file or ``--set`` that set it.
"""
from __future__ import annotations

import numpy as np

from tfrec.config.loader import ConfigError, ConfigProblem, LoadedConfig
from tfrec.data.tables import Dataset, Judgments, RecommendationData, SearchData, Sequences


def preflight(loaded: LoadedConfig, dataset: Dataset) -> None:
    """Raise one ConfigError listing every config value that ``dataset`` makes impossible (nothing when all fit)."""
    problems = data_problems(loaded, dataset)
    if problems:
        raise ConfigError.of(problems)


def data_problems(loaded: LoadedConfig, dataset: Dataset) -> list[ConfigProblem]:
    """Every config value that ``dataset`` makes impossible, each naming its key and where it was set."""
    cfg = loaded.config
    n_items = len(dataset.catalog)
    problems = []
    too_big = [k for k in cfg.evaluation.ks if k > n_items]
    if too_big:
        problems.append(loaded.problem("evaluation.ks", "k=%d is larger than the catalog (%d items in %s)"
                                       % (max(too_big), n_items, dataset.catalog.source)))
    if isinstance(dataset, SearchData):
        problems += _search_problems(loaded, dataset, n_items)
    else:
        problems += _recommendation_problems(loaded, dataset)
    return problems


def _search_problems(loaded: LoadedConfig, data: SearchData, n_items: int) -> list[ConfigProblem]:
    cfg = loaded.config
    rc = cfg.retrieval
    problems = []
    if rc.top_k > n_items:
        problems.append(loaded.problem("retrieval.top_k", "%d is larger than the catalog (%d items)" % (rc.top_k, n_items)))
    if cfg.ranking.list_size > n_items:
        problems.append(loaded.problem("ranking.list_size", "%d is larger than the catalog (%d items)" % (cfg.ranking.list_size, n_items)))
    if rc.hard_negatives and rc.hard_negative_depth > n_items:
        problems.append(loaded.problem("retrieval.hard_negative_depth", "%d is larger than the catalog (%d items)"
                                       % (rc.hard_negative_depth, n_items)))
    if cfg.train.distribute.mixed_precision != "none":
        # tfrs.tasks.Retrieval has no dtype: under a mixed policy its matmul mixes float16 queries with float32 candidates.
        problems.append(loaded.problem("train.distribute.mixed_precision", "%s: the search two-tower model trains in float32 "
                                       "only in this release (set it to none)" % cfg.train.distribute.mixed_precision))
    if not isinstance(data.train, Judgments):  # a prepared dataset: the two towers' pairs stream, never all in memory
        if rc.max_pairs:
            problems.append(loaded.problem("retrieval.max_pairs", "%d samples pairs in memory; from a prepared dataset "
                                           "(data.prepared) every pair streams from the shards (set it to 0)" % rc.max_pairs))
        if rc.hard_negatives and rc.hard_negative_source == "model":
            problems.append(loaded.problem("retrieval.hard_negative_source", "model mines negatives with the towers every "
                                           "epoch over pairs in memory; from a prepared dataset (data.prepared) use lexical"))
        if cfg.train.distribute.strategy == "multi_worker":
            problems.append(loaded.problem("train.distribute.strategy", "multi_worker: a search run from a prepared dataset "
                                           "trains on one machine (default or mirrored); recommendation runs from one can use "
                                           "several workers"))
    if cfg.data.judgments.label_min < 1:
        # NDCG's graded gain is 2**(label - 1) - 1: a label below 1 would be a negative gain, silently skewing every NDCG.
        problems.append(loaded.problem("data.judgments.label_min", "%g: relevance labels start at 1 (the least relevant grade, "
                                       "gain 0); shift yours up, e.g. a 0-4 scale to 1-5, and set label_min/label_max and "
                                       "the relevance thresholds to match" % cfg.data.judgments.label_min))
    if len(data.train) == 0:
        problems.append(loaded.problem("data.judgments.train", "no judgments left in %s" % data.train.source))
    else:
        problems += _threshold_problem(loaded, "retrieval.min_relevance", rc.min_relevance, data.train,
                                       "so there are no (query, product) pairs to train the two towers on")
    if len(data.valid) == 0:
        problems.append(loaded.problem("data.judgments.valid", "no judgments left in %s" % data.valid.source))
    else:
        problems += _threshold_problem(loaded, "evaluation.positive_relevance", cfg.evaluation.positive_relevance, data.valid,
                                       "so every retrieval metric would be 0")
    return problems


def _threshold_problem(loaded: LoadedConfig, key: str, threshold: float, judgments: Judgments, consequence: str) -> list[ConfigProblem]:
    """A relevance threshold above every label of ``judgments`` (in memory, or prepared: their label range)."""
    if isinstance(judgments, Judgments):
        labels = np.asarray(judgments.labels, dtype=np.float64)
        low, high = float(labels.min()), float(labels.max())
    else:
        low, high = judgments.label_range
    if high >= threshold:
        return []
    return [loaded.problem(key, "%g is above every relevance label in %s (they range from %g to %g), %s"
                           % (threshold, judgments.source, low, high, consequence))]


def _recommendation_problems(loaded: LoadedConfig, data: RecommendationData) -> list[ConfigProblem]:
    cfg = loaded.config
    rc = cfg.recommendation
    source_key = "data.interactions.path" if cfg.data.dataset == "interactions-csv" else "data.dir"
    multitask = rc.task == "multitask" or (rc.task == "auto" and cfg.data.dataset == "movielens-100k")
    problems = []
    if multitask:
        log = data.interactions
        if log is None or log.ratings is None or len(log) < 100:
            problems.append(loaded.problem("data.dataset", "the MovieLens multi-task run needs a rated interaction log (u.data); "
                                           "%r has %s" % (data.name, "none" if log is None else "%d rows" % len(log))))
        return problems
    if rc.encoder == "transformer" and rc.encoder_dim % rc.transformer_heads:
        problems.append(loaded.problem("recommendation.transformer_heads", "%d heads do not divide recommendation.encoder_dim (%d)"
                                       % (rc.transformer_heads, rc.encoder_dim)))
    single = (len(data.train.rest()) == 0 if not isinstance(data.train, Sequences)  # streamed from prepared shards
              else len(np.unique(data.train.users.astype(str))) == len(data.train))
    if len(data.train) == 0:
        problems.append(loaded.problem(source_key, "no training examples in %s" % data.train.source))
    elif single:
        # Model selection holds out each user's newest training example: nothing would be left to train on.
        problems.append(loaded.problem(source_key, "every user in %s has a single training example: nothing is left to train "
                                       "on after holding out each user's newest one" % data.train.source))
    if len(data.valid) == 0:
        problems.append(loaded.problem(source_key, "no validation examples in %s" % data.valid.source))
    return problems
