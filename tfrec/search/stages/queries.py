"""Which queries do what: the two towers' and the ranker's training queries, valid and its tuning half.

Most training queries train the two towers; a held-out share trains the ranker (there the
two-tower scores are as unsure as on new queries, so the ranker learns how far to trust them).
The valid queries are split into a seeded tuning half (hybrid weights, ranker loss, dense fusion)
and an untouched half.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tfrec.config.schema import Config
from tfrec.data.tables import Judgments, SearchData
from tfrec.evaluation import search as ev

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class QuerySplits:
    """The run's queries by role."""

    retrieval_train: Judgments  # the two towers' training judgments
    ranker_train: Judgments  # held-out training judgments: the ranker's
    valid: ev.SearchEvalSet
    ranker: ev.SearchEvalSet  # the ranker's training queries as an eval set
    tune: np.ndarray  # bool [valid queries]: the tuning half
    holdout: np.ndarray  # bool [valid queries]: the untouched half


def split_queries(train: Judgments, holdout_fraction: float, seed: int) -> tuple[Judgments, Judgments]:
    """(retrieval part, ranker part) of the training judgments, split by query at random."""
    queries = np.unique(train.queries.astype(str))
    rng = np.random.default_rng(seed)
    n_hold = int(round(len(queries) * holdout_fraction))
    held = set(rng.permutation(queries)[:n_hold].tolist())
    in_held = np.fromiter((q in held for q in train.queries), bool, count=len(train))

    def part(keep: np.ndarray) -> Judgments:
        return Judgments(train.queries[keep], train.products[keep], train.labels[keep], train.source)

    return part(~in_held), part(in_held)


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
    retrieval_train, ranker_train = split_queries(data.train, cfg.ranking.holdout_fraction, cfg.run.seed)
    log.info(
        "training queries: %d for the two towers, %d held out for the ranker"
        % (len(np.unique(retrieval_train.queries)), len(np.unique(ranker_train.queries)))
    )
    seen = ev.seen_products(data.train, len(data.catalog))
    valid = ev.SearchEvalSet.from_judgments(data.valid, cfg.evaluation.positive_relevance, seen)
    ranker = ev.SearchEvalSet.from_judgments(ranker_train, cfg.evaluation.positive_relevance, seen)
    tune, holdout = split_eval_queries(valid.n_queries, cfg.evaluation.tune_fraction, cfg.run.seed)
    return QuerySplits(retrieval_train, ranker_train, valid, ranker, tune, holdout)
