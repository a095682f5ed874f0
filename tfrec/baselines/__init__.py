"""Baselines that reports compare against (search: BM25, stemmed BM25, zero-shot MiniLM, hybrid, re-rank).

Importing this package does not import TensorFlow; building a MiniLM baseline does.
"""
from tfrec.baselines.search import (
    STEMMER_LANGUAGE,
    STOPWORDS,
    TOKEN_PATTERN,
    Bm25Baseline,
    MiniLMBaseline,
    evaluate_search_baselines,
    hybrid_scores,
)

__all__ = [
    "STEMMER_LANGUAGE",
    "STOPWORDS",
    "TOKEN_PATTERN",
    "Bm25Baseline",
    "MiniLMBaseline",
    "evaluate_search_baselines",
    "hybrid_scores",
]
