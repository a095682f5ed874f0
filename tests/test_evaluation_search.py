"""Search metrics against hand-computed values and plain-Python references: NDCG, recall, MRR, seen/cold, bootstrap."""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from tfrec.data.tables import Judgments
from tfrec.evaluation.search import (
    SearchEvalSet,
    end_to_end_ndcg,
    ideal_dcg,
    mrr,
    mrr_per_query,
    paired_bootstrap,
    perfect_rerank_ndcg,
    random_rerank_ndcg,
    random_rerank_ndcg_per_query,
    recall_at_k,
    recall_at_k_per_query,
    rerank_ndcg,
    retrieval_report,
    seen_products,
    split_by_seen,
    tie_break_keys,
    top_k,
)


def gain(label: float) -> float:
    return 2 ** (label - 1) - 1


def dcg(labels_in_order, k: int) -> float:
    return sum(gain(label) / math.log2(r + 2) for r, label in enumerate(labels_in_order[:k]))


def eval_set(groups: list[list[tuple[int, float]]], seen=None, positive_relevance: float = 2.5) -> SearchEvalSet:
    """An eval set from per-query lists of (catalog row, label), queries named q0, q1, ... (sorted)."""
    queries = np.array(["q%d" % i for i in range(len(groups))], dtype=object)
    offsets = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int64)
    products = np.array([p for g in groups for p, _ in g], dtype=np.int32)
    labels = np.array([label for g in groups for _, label in g], dtype=np.float32)
    return SearchEvalSet(queries, offsets, products, labels, positive_relevance, seen)


def test_rerank_ndcg_matches_hand_computed_value():
    """Gain 2^(rel-1)-1, log2(rank+1) discount, ideal DCG from the sorted labels: 2.5 / (3 + 1/log2 3)."""
    es = eval_set([[(0, 3.0), (1, 2.0), (2, 1.0)]])
    mean, per_query = rerank_ndcg(es, np.array([0.1, 0.9, 0.5]), k=10)
    expected = (1 / math.log2(2) + 0 + 3 / math.log2(4)) / (3 + 1 / math.log2(3))
    assert mean == pytest.approx(expected) and per_query[0] == pytest.approx(expected)
    assert perfect_rerank_ndcg(es) == pytest.approx(1.0)


def test_rerank_ndcg_averages_over_tie_orders():
    """Tied scores score the mean of every order of the tie, so constant scores give the random expectation."""
    labels = [3.0, 2.0, 1.0, 2.67, 1.33]
    es = eval_set([[(i, label) for i, label in enumerate(labels)]])
    scores = np.array([0.5, 0.5, 0.9, 0.5, 0.1])
    ideal = dcg(sorted(labels, reverse=True), 3)
    tied = [0, 1, 3]  # after product 2, before product 4
    orders = [[2, *p, 4] for p in itertools.permutations(tied)]
    expected = np.mean([dcg([labels[i] for i in o], 3) / ideal for o in orders])
    assert rerank_ndcg(es, scores, k=3)[0] == pytest.approx(expected)
    everything = [list(p) for p in itertools.permutations(range(5))]
    uniform = np.mean([dcg([labels[i] for i in o], 3) / ideal for o in everything])
    assert rerank_ndcg(es, np.zeros(5), k=3)[0] == pytest.approx(uniform)
    assert random_rerank_ndcg(es, k=3) == pytest.approx(uniform)


def test_rerank_ndcg_truncates_at_k_and_scores_zero_ideal_queries_0():
    """Only the top k count; a query whose labels are all 1 (ideal DCG 0) scores 0 and counts in the mean."""
    rng = np.random.default_rng(1)
    labels = rng.choice([1.0, 1.67, 2.33, 3.0], size=12)
    scores = rng.normal(size=12)
    es = eval_set([[(i, float(label)) for i, label in enumerate(labels)], [(20, 1.0), (21, 1.0)]])
    mean, per_query = rerank_ndcg(es, np.concatenate([scores, [0.3, 0.2]]), k=10)
    ranked = [float(labels[i]) for i in np.argsort(-scores)]
    expected = dcg(ranked, 10) / dcg(sorted(labels.tolist(), reverse=True), 10)
    assert ideal_dcg(es, 10)[1] == 0.0
    assert per_query.tolist() == [pytest.approx(expected), 0.0]
    assert mean == pytest.approx(expected / 2)
    # Every NDCG variant scores the zero-ideal query 0 in its mean, so no system reaches 1.0.
    assert perfect_rerank_ndcg(es) == pytest.approx(0.5)
    random_mean, random_per_query = random_rerank_ndcg_per_query(es, k=10)
    assert random_per_query[1] == 0.0 and random_mean == pytest.approx(random_per_query[0] / 2)
    e2e_mean, e2e = end_to_end_ndcg(es, np.array([np.arange(10), [20, 21, *range(30, 38)]]), k=10)
    assert e2e[1] == 0.0 and e2e_mean == pytest.approx(e2e[0] / 2)


def test_random_rerank_is_the_exact_expectation_on_random_data():
    """The closed form equals a brute-force average over all permutations, per query (zero-ideal queries 0)."""
    rng = np.random.default_rng(2)
    groups = [[(j, float(rng.choice([1.0, 2.0, 3.0]))) for j in range(n)] for n in (1, 3, 4, 6)]
    groups.append([(0, 1.0), (1, 1.0), (2, 1.0)])
    es = eval_set(groups)
    per_query = []
    for g in groups:
        labels = [label for _, label in g]
        ideal = dcg(sorted(labels, reverse=True), 2)
        orders = itertools.permutations(range(len(g)))
        per_query.append(np.mean([dcg([labels[i] for i in p], 2) / ideal for p in orders]) if ideal > 0 else 0.0)
    assert random_rerank_ndcg_per_query(es, k=2)[1] == pytest.approx(per_query)
    assert random_rerank_ndcg(es, k=2) == pytest.approx(np.mean(per_query))


def test_end_to_end_ndcg_with_unjudged_rows_and_empty_slots():
    """Unjudged rows and -1 slots gain 0; the ideal comes from the judged labels, even ones not retrieved."""
    es = eval_set([[(5, 3.0), (7, 2.0), (9, 2.5)], [(1, 2.0)]])
    top = np.array([[100, 7, 5, 101], [1, -1, -1, -1]])
    mean, per_query = end_to_end_ndcg(es, top, k=3)
    first = (gain(2.0) / math.log2(3) + gain(3.0) / math.log2(4)) / dcg([3.0, 2.5, 2.0], 3)
    assert per_query == pytest.approx([first, 1.0])
    assert mean == pytest.approx((first + 1.0) / 2)


def test_recall_and_mrr_hand_computed():
    """Positives are labels >= 2.5; recall averages over queries with a positive; MRR is 0 when none is found."""
    es = eval_set([[(0, 3.0), (1, 2.5), (2, 2.0)], [(3, 3.0)], [(4, 1.0)], [(5, 2.67)]])
    top = np.array([[9, 1, 8, 0], [7, 6, 5, 4], [4, 0, 1, 2], [9, 8, 5, 7]])
    per_query = recall_at_k_per_query(es, top, [2, 4])
    assert per_query[2] == pytest.approx([0.5, 0.0, np.nan, 0.0], nan_ok=True)
    assert per_query[4] == pytest.approx([1.0, 0.0, np.nan, 1.0], nan_ok=True)
    assert recall_at_k(es, top, [2, 4]) == pytest.approx({2: 0.5 / 3, 4: 2 / 3})
    assert mrr_per_query(es, top) == pytest.approx([0.5, 0.0, np.nan, 1 / 3], nan_ok=True)
    assert mrr(es, top) == pytest.approx((0.5 + 0 + 1 / 3) / 3)


def test_seen_cold_split():
    """Recall per seen / cold positives and NDCG per query group, with the group sizes.

    Query 3 (one cold product of relevance 1) has no positive, so recall leaves it out, and an
    ideal DCG of 0, so NDCG counts it as 0 in the cold group.
    """
    seen = np.zeros(10, dtype=bool)
    seen[[0, 3]] = True
    es = eval_set([[(0, 3.0), (1, 3.0)], [(2, 3.0), (4, 2.0)], [(3, 1.0), (5, 2.0)], [(6, 1.0)]], seen=seen)
    top = np.array([[1, 9], [9, 2], [5, 3], [6, 7]])
    report = retrieval_report(es, top, [1, 2], ndcg_k=2)
    assert report["n_queries"] == 2 and report["n_queries_ndcg"] == 4
    assert report["seen"]["n_queries"] == 1 and report["seen"]["recall@2"] == 0.0  # only product 0, missed
    assert report["cold"]["n_queries"] == 2  # queries 0 (product 1) and 1 (product 2); queries 2, 3 have no positive
    assert report["cold"]["recall@1"] == pytest.approx(0.5) and report["cold"]["recall@2"] == pytest.approx(1.0)
    _, e2e = end_to_end_ndcg(es, top, k=2)
    assert e2e[3] == 0.0 and report["ndcg@2_e2e"] == pytest.approx(np.mean(e2e))
    first = gain(3.0) / dcg([3.0, 3.0], 2)  # product 1 at rank 1, 9 unjudged
    second = gain(3.0) / math.log2(3) / dcg([3.0, 2.0], 2)
    third = gain(2.0) / dcg([2.0, 1.0], 2)
    assert e2e[:3] == pytest.approx([first, second, third])
    assert report["seen"]["n_queries_ndcg"] == 2 and report["cold"]["n_queries_ndcg"] == 2
    assert report["seen"]["ndcg@2_e2e"] == pytest.approx((first + third) / 2)
    assert report["cold"]["ndcg@2_e2e"] == pytest.approx((second + 0.0) / 2)
    # NaN entries (recall or MRR without a positive) stay out of a group's mean and count.
    assert split_by_seen(es, np.array([0.2, 0.4, 0.6, np.nan])) == {
        "seen": {"mean": pytest.approx(0.4), "n_queries": 2},
        "cold": {"mean": pytest.approx(0.4), "n_queries": 1},
    }


def test_from_judgments_groups_sorts_and_averages_duplicates():
    """Queries sorted, products by row, duplicate (query, product) labels averaged; seen mask from train."""
    judgments = Judgments(
        queries=np.array(["b", "a", "b", "a", "b"], dtype=object),
        products=np.array([4, 2, 1, 2, 3], dtype=np.int32),
        labels=np.array([3.0, 1.0, 2.0, 2.0, 2.5], dtype=np.float32),
    )
    es = SearchEvalSet.from_judgments(judgments, seen=seen_products(judgments, 6))
    assert es.queries.tolist() == ["a", "b"] and es.offsets.tolist() == [0, 1, 4]
    assert es.products.tolist() == [2, 1, 3, 4]
    assert es.labels.tolist() == pytest.approx([1.5, 2.0, 2.5, 3.0])
    assert es.seen.tolist() == [False, True, True, True, True, False]
    assert es.has_seen_judged().tolist() == [True, True]


def test_top_k_breaks_ties_by_the_fixed_hash_not_by_row():
    """Descending score, ties by ascending tie key, including ties at the k-th place."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(5, 40)).astype(np.float32)
    rows, values = top_k(scores, 7)
    keys = tie_break_keys(np.arange(40))
    for i in range(5):
        expected = sorted(range(40), key=lambda j: (-scores[i, j], int(keys[j])))[:7]
        assert rows[i].tolist() == expected
        assert values[i].tolist() == scores[i, expected].tolist()
    assert len(set(tie_break_keys(np.arange(1000)).tolist())) == 1000


def test_paired_bootstrap():
    """The CI holds the true mean difference; identical inputs give a zero-width CI and p = 1."""
    rng = np.random.default_rng(4)
    b = rng.uniform(0.5, 1.0, size=500)
    a = b + 0.05 + rng.normal(0, 0.05, size=500)
    result = paired_bootstrap(a, b, n_resamples=1000, seed=0)
    assert result["low"] < 0.05 < result["high"] and result["high"] - result["low"] < 0.02
    assert result["mean_diff"] == pytest.approx(np.mean(a - b)) and result["p_value"] < 0.01
    same = paired_bootstrap(b, b, n_resamples=200)
    assert same["low"] == same["high"] == same["mean_diff"] == 0.0 and same["p_value"] == 1.0
    noise = paired_bootstrap(b + rng.normal(0, 0.05, size=500), b, n_resamples=1000)
    assert noise["low"] < 0 < noise["high"] and noise["p_value"] > 0.05
    with_nan = paired_bootstrap(np.array([1.0, np.nan, 0.5]), np.array([0.0, 0.2, 0.5]), n_resamples=50)
    assert with_nan["n_queries"] == 2 and with_nan["mean_diff"] == pytest.approx(0.5)


def test_errors_name_the_offending_values():
    es = eval_set([[(0, 3.0)], [(1, 2.0)]])
    with pytest.raises(ValueError, match=r"n_queries=2.*\(3, 4\)"):
        end_to_end_ndcg(es, np.zeros((3, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="fewer than k=10"):
        end_to_end_ndcg(es, np.zeros((2, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(es, np.zeros((2, 4)), [1])
    with pytest.raises(ValueError, match=r"align.*\(2,\).*\(3,\)"):
        rerank_ndcg(es, np.zeros(3))
    with pytest.raises(ValueError, match="twice"):
        mrr(es, np.array([[0, 0], [1, 2]]))
    with pytest.raises(ValueError, match="shapes"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="same product twice"):
        eval_set([[(0, 3.0), (0, 2.0)]])


def test_full_size_evaluation_is_fast():
    """1,128 queries x K=1000 (the Home Depot valid shape) evaluate in well under a second (3 s on a busy box)."""
    rng = np.random.default_rng(5)
    label_values = [1.0, 2.0, 2.67, 3.0]
    groups = [[(int(p), float(rng.choice(label_values))) for p in rng.choice(54_667, 6, replace=False)] for _ in range(1128)]
    es = eval_set(groups, seen=rng.random(54_667) < 0.5)
    top = np.empty((1128, 1000), dtype=np.int32)
    for q, g in enumerate(groups):
        judged = [p for p, _ in g]
        others = [p for p in rng.choice(54_667, 1010, replace=False) if p not in judged]
        top[q] = judged[:3] + others[:997]
    started = time.perf_counter()
    report = retrieval_report(es, top, [10, 100, 1000])
    assert time.perf_counter() - started < 3.0
    assert 0 < report["recall@10"] <= 1 and report["mrr"] > 0.3
    assert report["n_queries_ndcg"] == 1128 and 0 < report["ndcg@10_e2e"] < 1
