"""The in-graph BM25 index over the catalog (vocabulary from the catalog and the training queries)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tfrec import compat
from tfrec.data.tables import Judgments
from tfrec.lexical.index import LexicalIndex
from tfrec.lexical.scorer import LexicalScorer
from tfrec.search.stages.context import SearchContext

tf = compat.tensorflow()


@dataclass(frozen=True, eq=False)
class Lexical:
    """The saved BM25 index, its in-graph scorer and the scorer's (query, title) features as a tf.function."""

    index: LexicalIndex
    scorer: LexicalScorer
    pair_features: Any


def build_lexical(ctx: SearchContext) -> Lexical:
    """Build the BM25 index, save it in the run folder and wrap its scorer."""
    train = ctx.data.train
    # Training queries only add vocabulary; a prepared dataset lists their terms instead of the queries.
    extra = list(np.unique(train.queries.astype(str))) if isinstance(train, Judgments) else train.query_terms()
    index = LexicalIndex.build(list(ctx.titles), extra)
    index.save(ctx.run.lexical)
    scorer = LexicalScorer(index, max_query_terms=ctx.cfg.retrieval.query_max_terms)
    return Lexical(index, scorer, tf.function(scorer.pair_features, reduce_retracing=True))
