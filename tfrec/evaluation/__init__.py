"""Evaluation: search metrics (re-rank and end-to-end NDCG, Recall@K, MRR, seen/cold split, paired bootstrap).

Importing this package does not import TensorFlow.
"""
from tfrec.evaluation.search import (
    SearchEvalSet,
    end_to_end_ndcg,
    mrr,
    paired_bootstrap,
    perfect_rerank_ndcg,
    random_rerank_ndcg,
    recall_at_k,
    rerank_ndcg,
    retrieval_report,
    seen_products,
    top_k,
)

__all__ = [
    "SearchEvalSet",
    "end_to_end_ndcg",
    "mrr",
    "paired_bootstrap",
    "perfect_rerank_ndcg",
    "random_rerank_ndcg",
    "recall_at_k",
    "rerank_ndcg",
    "retrieval_report",
    "seen_products",
    "top_k",
]
