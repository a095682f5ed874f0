"""The optional cross-encoder re-ranker: trained on the ranker's lists, scored on valid's judged and retrieved lists."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfrec.ranking.cross_encoder import CrossEncoderRanker, score_lists, train_cross_encoder
from tfrec.search.ranker_data import CandidateLists, judged_lists, training_lists
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.queries import QuerySplits, rank_candidates
from tfrec.text.model_files import resolve_model_files


@dataclass(frozen=True, eq=False)
class CrossEncoderResult:
    """The cross-encoder's training record, its scores of valid's judged products and its re-ordered top-k."""

    info: dict
    judged_scores: np.ndarray
    top: np.ndarray  # [Q, top_k]


def train_cross_encoder_ranker(ctx: SearchContext, queries: QuerySplits, ranker_candidates: np.ndarray,
                               valid_top: np.ndarray) -> CrossEncoderResult:
    """Fine-tune the cross-encoder on the ranker's training lists and score valid with it."""
    cfg, titles = ctx.cfg, ctx.titles
    ce = cfg.ranking.cross_encoder
    ranker_es, valid_es = queries.ranker, queries.valid
    lists = training_lists(ranker_es, ranker_candidates, list_size=cfg.ranking.list_size, negatives=ce.negatives, seed=cfg.run.seed)
    if ce.max_lists and len(lists.rows) > ce.max_lists:
        keep = np.random.default_rng(cfg.run.seed).permutation(len(lists.rows))[: ce.max_lists]
        lists = CandidateLists(lists.query_index[keep], lists.rows[keep], lists.labels[keep])
    list_titles = np.where(lists.mask, titles[np.maximum(lists.rows, 0)], "")
    model = CrossEncoderRanker(resolve_model_files(cfg.text.model_dir), max_length=ce.max_length)
    info = train_cross_encoder(
        model, ranker_es.queries[lists.query_index].astype(str), list_titles, lists.labels, loss=cfg.ranking.loss,
        epochs=ce.epochs, batch_size=ce.batch_size, learning_rate=ce.learning_rate, seed=cfg.run.seed,
    )
    judged = judged_lists(valid_es)
    judged_titles = np.where(judged.mask, titles[np.maximum(judged.rows, 0)], "")
    rerank = score_lists(model, valid_es.queries.astype(str), judged_titles)
    cand = valid_top[:, : cfg.retrieval.top_k]
    e2e = score_lists(model, valid_es.queries.astype(str), titles[cand])
    return CrossEncoderResult(info, rerank[judged.mask], rank_candidates(cand, e2e))
