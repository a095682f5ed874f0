"""How metrics.json shapes one system's retrieval and end-to-end views from an evaluation report."""
from __future__ import annotations


def e2e_view(report: dict) -> dict:
    """End-to-end NDCG@10, overall and per seen/cold group."""
    out = {"ndcg@10": report["ndcg@10_e2e"]}
    for group in ("seen", "cold"):
        if group in report:
            out[group] = {"ndcg@10": report[group]["ndcg@10_e2e"], "n_queries": report[group]["n_queries_ndcg"]}
    return out


def retrieval_view(report: dict) -> dict:
    """Recall@k and MRR over the catalog, overall and per seen/cold group."""
    out = {k: v for k, v in report.items() if k.startswith("recall@") or k == "mrr"}
    for group in ("seen", "cold"):
        if group in report:
            out[group] = {k: v for k, v in report[group].items() if k.startswith("recall@") or k == "n_queries"}
    return out
