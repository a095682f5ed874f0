"""`tfrec train` for search: baselines, two-tower retrieval, hybrid index, ranker, evaluation.

The run is a sequence of stages (``tfrec.search.stages``), each timed into metrics.json; every
stage gets the run's :class:`SearchContext` and the results of the stages before it:

1. split the training queries: most train the two towers, a held-out share trains the ranker;
2. lexical index (in-graph BM25) over the catalog, vocabulary from catalog + training queries;
3. the baselines on valid (BM25 plain/stemmed with bm25s, zero-shot MiniLM, hybrid);
4. fine-tune the two towers (TFRS in-batch softmax) and encode the catalog;
5. hybrid weights chosen on the tuning half of valid (reported: both halves and all of valid);
6. ranker lists (judged + unjudged retrieved candidates) -> TF-Ranking listwise training; the ranker
   is kept only if it beats the hybrid order on the tuning half (else results keep retrieval order);
7. valid: retrieval recall/MRR over the whole catalog, end-to-end NDCG@10 (top-k retrieved then
   ranked), re-rank NDCG of the judged products, seen/cold splits, paired bootstrap;
8. the run's files (metrics.json, search_config.json, catalog vectors, per-query results).

The report is rendered from those files by the caller (``tfrec.api.train``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from tfrec import compat
from tfrec.config.loader import LoadedConfig
from tfrec.data.tables import Judgments, SearchData
from tfrec.search.hybrid import CatalogScorer
from tfrec.search.stages.artifacts import save_search_run
from tfrec.search.stages.baselines import search_baselines, zero_shot_vectors
from tfrec.search.stages.context import SearchContext
from tfrec.search.stages.continual import load_previous, previous_valid
from tfrec.search.stages.cross_encoder import train_cross_encoder_ranker
from tfrec.search.stages.evaluation import evaluate_search
from tfrec.search.stages.hybrid import choose_weights, retrieve_valid
from tfrec.search.stages.lexical import build_lexical
from tfrec.search.stages.queries import split_for_training
from tfrec.search.stages.ranker import rank_valid, ranker_lists, train_ranker
from tfrec.search.stages.towers import encode_vectors, train_towers

tf = compat.tensorflow()


def train_search(loaded: LoadedConfig, data: SearchData, run_dir: Path, warm_start: Optional[Path] = None) -> dict:
    """Train and evaluate the search path of a config (from a previous run's towers with ``warm_start``); returns the metrics."""
    ctx = SearchContext.create(loaded, data, run_dir)  # first: the strategy needs a fresh TensorFlow runtime
    if warm_start is not None and not isinstance(data.train, Judgments):
        raise ValueError("warm start replays the previous run's judgments beside the new ones in memory; train from the "
                         "judgment files rather than a prepared dataset (data.prepared) to continue a run")
    previous = load_previous(warm_start) if warm_start is not None else None
    cfg, timer = ctx.cfg, ctx.timer
    tf.keras.utils.set_random_seed(cfg.run.seed)
    queries = split_for_training(cfg, data)

    with timer.stage("lexical index"):
        lexical = build_lexical(ctx)
    with timer.stage("zero-shot MiniLM vectors"):
        zero = zero_shot_vectors(ctx, queries)
    baselines = None
    if cfg.evaluation.baselines:
        with timer.stage("baselines"):
            baselines = search_baselines(ctx, zero)

    with timer.stage("two-tower training"):
        towers = train_towers(ctx, lexical, queries.retrieval_train, queries.ranker, previous)
    with timer.stage("catalog and query encoding"):
        dense = encode_vectors(ctx, towers, queries)
        scorer = CatalogScorer(dense.catalog, zero.catalog, lexical.scorer)

    with timer.stage("hybrid weights"):
        hybrid = choose_weights(ctx, scorer, queries, dense, zero)
    with timer.stage("retrieval on valid"):
        retrieval = retrieve_valid(ctx, scorer, hybrid.weights, queries, dense, zero)

    with timer.stage("ranker training"):
        lists = ranker_lists(ctx, lexical, scorer, hybrid.weights, queries, dense, zero, retrieval.top)
        ranker = train_ranker(ctx, lists, queries, retrieval.top, dense.catalog)
    with timer.stage("ranker on valid"):
        ranked = rank_valid(ctx, ranker, lists, retrieval.top)

    cross = None
    if cfg.ranking.cross_encoder.enabled:
        with timer.stage("cross-encoder"):
            cross = train_cross_encoder_ranker(ctx, queries, lists.candidates, retrieval.top)
    forgetting = None
    if previous is not None:
        with timer.stage("previous valid"):
            forgetting = previous_valid(ctx, previous, towers.model, zero.model, scorer, hybrid.weights)

    with timer.stage("metrics and report"):
        evaluation = evaluate_search(ctx, queries, baselines, towers, hybrid, retrieval, ranker, ranked, cross, forgetting)
        save_search_run(ctx, evaluation, hybrid.weights, dense.catalog, queries, ranked.top, rerank=ranker.kept)
    return evaluation.metrics.to_json()
