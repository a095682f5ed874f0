"""Which queries do what: the two towers' and the ranker's training queries, valid and its tuning half.

Most training queries train the two towers; a held-out share trains the ranker (there the
two-tower scores are as unsure as on new queries, so the ranker learns how far to trust them).
The valid queries are split into a seeded tuning half (hybrid weights, ranker loss, dense fusion)
and an untouched half.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfrec.config.schema import Config
from tfrec.data.tables import Judgments, SearchData
from tfrec.evaluation import search as ev

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class QuerySplits:
    """The run's queries by role."""

    retrieval_train: Any  # the two towers' training judgments: Judgments, or ShardedJudgments streamed from prepared shards
    ranker_train: Judgments  # held-out training judgments: the ranker's
    valid: ev.SearchEvalSet
    ranker: ev.SearchEvalSet  # the ranker's training queries as an eval set
    tune: np.ndarray  # bool [valid queries]: the tuning half
    holdout: np.ndarray  # bool [valid queries]: the untouched half


def split_queries(train: Judgments, holdout_fraction: float, seed: int) -> tuple[Judgments, Judgments]:
    """(retrieval part, ranker part) of the training judgments, split by query at random."""
    held = train.held_out_queries(holdout_fraction, seed)
    return train.take(~held), train.take(held)


def split_eval_queries(n_queries: int, tune_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """bool masks (tune, holdout) over the valid queries."""
    rng = np.random.default_rng(seed + 1)
    tune = np.zeros(n_queries, bool)
    tune[rng.permutation(n_queries)[: int(round(n_queries * tune_fraction))]] = True
    return tune, ~tune


def subset_eval_set(es: ev.SearchEvalSet, keep: np.ndarray) -> ev.SearchEvalSet:
    """The eval set restricted to some queries (bool mask [Q])."""
    sizes = np.diff(es.offsets)
    judged = np.repeat(keep, sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes[keep])]).astype(np.int64)
    return ev.SearchEvalSet(es.queries[keep], offsets, es.products[judged], es.labels[judged], es.positive_relevance, es.seen)


def rank_candidates(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Candidates [Q, K] re-ordered by scores [Q, K] (stable: retrieval order breaks ties)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def split_for_training(cfg: Config, data: SearchData) -> QuerySplits:
    """Split the training queries (towers / ranker) and the valid ones (tuning half / the rest)."""
    if isinstance(data.train, Judgments):
        retrieval_train, ranker_train = split_queries(data.train, cfg.ranking.holdout_fraction, cfg.run.seed)
        towers_queries = len(np.unique(retrieval_train.queries))
    else:  # prepared: split when prepared, by the same keys (checked when the data loaded); the towers' part streams
        retrieval_train, ranker_train = data.train, data.train.ranker_judgments()
        towers_queries = data.train.towers_queries()
    log.info("training queries: %d for the two towers, %d held out for the ranker" % (towers_queries, ranker_train.n_queries))
    seen = ev.seen_products(data.train, len(data.catalog))
    valid = ev.SearchEvalSet.from_judgments(data.valid, cfg.evaluation.positive_relevance, seen)
    ranker = ev.SearchEvalSet.from_judgments(ranker_train, cfg.evaluation.positive_relevance, seen)
    tune, holdout = split_eval_queries(valid.n_queries, cfg.evaluation.tune_fraction, cfg.run.seed)
    return QuerySplits(retrieval_train, ranker_train, valid, ranker, tune, holdout)
