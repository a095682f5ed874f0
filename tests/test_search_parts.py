"""Pieces of the search pipeline: hybrid scoring, ranker lists, the feature ranker head, query splits."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tfrec import compat
from tfrec.data.tables import Judgments
from tfrec.evaluation.search import SearchEvalSet
from tfrec.evaluation.zscore import ZSCORE_EPSILON, zscore
from tfrec.search.hybrid import HybridWeights, hybrid_scores, tune_weights
from tfrec.search.ranker_data import judged_lists, training_lists
from tfrec.search.stages.evaluation import Half, SearchMetrics, SystemMetrics, headline_recall
from tfrec.search.stages.queries import rank_candidates, split_eval_queries, split_queries, subset_eval_set

tf = compat.tensorflow()


def eval_set() -> SearchEvalSet:
    judgments = Judgments(
        queries=np.array(["a", "a", "a", "b", "b"], dtype=object),
        products=np.array([4, 1, 7, 2, 3], np.int32),
        labels=np.array([3.0, 1.0, 2.0, 2.5, 1.0], np.float32),
    )
    return SearchEvalSet.from_judgments(judgments)


def test_hybrid_is_the_weighted_sum_of_row_zscores():
    rng = np.random.default_rng(0)
    dense, lexical, zero = (rng.normal(size=(3, 20)).astype(np.float32) for _ in range(3))
    lexical[1] = 0.0  # a query without a known term: constant row -> z = 0, no NaN
    weights = HybridWeights(1.0, 0.4, 0.25)
    got = hybrid_scores(tf.constant(dense), tf.constant(lexical), tf.constant(zero), weights).numpy()

    def z(x):
        return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)

    np.testing.assert_allclose(got, z(dense) + 0.4 * z(lexical) + 0.25 * z(zero), rtol=1e-4, atol=1e-4)
    assert np.all(zscore(tf.constant(lexical)).numpy()[1] == 0.0)


def test_one_zscore_for_numpy_and_tensorflow_rows_and_given_moments():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(4, 50)).astype(np.float32)
    scores[2] = 0.7  # constant row: exactly 0, no NaN
    mean, std = scores.mean(1, keepdims=True), scores.std(1, keepdims=True)
    expected = np.where(std > 0, (scores - mean) / np.where(std > 0, std + ZSCORE_EPSILON, 1.0), 0.0)
    np.testing.assert_allclose(zscore(scores), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(zscore(tf.constant(scores)).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(zscore(tf.constant(scores), tf.constant(mean), tf.constant(std)).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert zscore(scores).dtype == np.float32 and np.all(zscore(scores)[2] == 0.0)
    # epsilon 0 (the search baselines) divides by the exact standard deviation.
    np.testing.assert_allclose(zscore(scores, epsilon=0.0)[0], (scores[0] - mean[0]) / std[0], rtol=1e-6)


def test_tune_weights_picks_the_best_grid_point():
    # Query 0's positive is row 3: the lexical component finds it, dense does not.
    zd = np.array([[3.0, 2.0, 1.0, 0.0]])
    zl = np.array([[0.0, 0.0, 0.0, 5.0]])
    zz = np.zeros_like(zd)
    best, trials = tune_weights([(zd, zl, zz)], lambda rows: float(rows[0, 0] == 3), 1, (0.0, 0.5, 1.0), (0.0,))
    assert best.lexical == 1.0 and len(trials) == 3
    assert [t["value"] for t in trials] == [0.0, 0.0, 1.0]


def test_training_lists_hold_judged_then_unjudged_candidates_with_label_zero():
    es = eval_set()
    candidates = np.array([[4, 9, 1, 8, 7, 6], [2, 5, 3, 0, 11, 12]])
    lists = training_lists(es, candidates, list_size=2, negatives=3, seed=0)
    assert lists.rows.shape == (2, 5)
    for q in range(2):
        judged = set(es.products[es.offsets[q]:es.offsets[q + 1]].tolist())
        real = lists.rows[q][lists.mask[q]]
        first, rest = real[:2], real[2:]
        assert set(first.tolist()) <= judged and len(rest) == 3
        assert not (set(rest.tolist()) & judged)  # negatives are never judged products
        np.testing.assert_array_equal(lists.labels[q][2:5], 0.0)
    # Labels are relevance - 1 for judged items, -1 for padding.
    assert set(np.unique(lists.labels).tolist()) <= {0.0, 1.0, 1.5, 2.0}


def test_judged_lists_round_trip_to_eval_set_order():
    es = eval_set()
    lists = judged_lists(es)
    np.testing.assert_array_equal(lists.rows[lists.mask], es.products)
    np.testing.assert_allclose(lists.labels[lists.mask], es.labels - 1.0)
    assert lists.labels[1, 2] == -1.0  # query b has two judged products: one padding slot


def test_rank_candidates_is_stable():
    candidates = np.array([[10, 11, 12, 13]])
    np.testing.assert_array_equal(rank_candidates(candidates, np.array([[0.1, 0.5, 0.5, 0.2]])), [[11, 12, 13, 10]])


def test_query_splits_are_disjoint_seeded_and_complete():
    judgments = Judgments(np.array(["q%d" % (i % 40) for i in range(200)], dtype=object),
                          np.arange(200, dtype=np.int32), np.full(200, 2.0, np.float32))
    a, b = split_queries(judgments, 0.25, seed=1)
    assert len(a) + len(b) == 200 and not set(a.queries) & set(b.queries)
    assert len(set(b.queries)) == 10
    a2, _ = split_queries(judgments, 0.25, seed=1)
    np.testing.assert_array_equal(a.products, a2.products)
    tune, hold = split_eval_queries(10, 0.5, seed=0)
    assert tune.sum() == 5 and not np.any(tune & hold)
    sub = subset_eval_set(eval_set(), np.array([False, True]))
    assert list(sub.queries) == ["b"] and sorted(sub.products.tolist()) == [2, 3]


def test_ranker_head_scores_do_not_depend_on_padding():
    from tfrec.ranking.model import LEXICAL_FEATURES, RankerHead

    rng = np.random.default_rng(0)
    head = RankerHead(product_vocabulary=["p1", "p2"], id_dropout=0.0, seed=0)

    def inputs(width):
        return {
            "query_vector": tf.constant(rng.normal(size=(1, 8)).astype(np.float32)),
            "product_vector": tf.constant(np.pad(base_p, ((0, 0), (0, width - 2), (0, 0)))),
            "query_zero": tf.constant(base_qz),
            "product_zero": tf.constant(np.pad(base_pz, ((0, 0), (0, width - 2), (0, 0)))),
            "lexical": tf.constant(np.pad(base_lex, ((0, 0), (0, width - 2), (0, 0)))),
            "product_id": tf.constant([["p1", "unknown"] + [""] * (width - 2)]),
        }

    base_p = rng.normal(size=(1, 2, 8)).astype(np.float32)
    base_qz = rng.normal(size=(1, 8)).astype(np.float32)
    base_pz = rng.normal(size=(1, 2, 8)).astype(np.float32)
    base_lex = rng.uniform(0, 3, size=(1, 2, len(LEXICAL_FEATURES))).astype(np.float32)
    head.adapt_lexical(base_lex[0])
    rng = np.random.default_rng(1)
    short = head(inputs(2)).numpy()
    rng = np.random.default_rng(1)
    long = head(inputs(6)).numpy()
    assert short.shape == (1, 2) and long.shape == (1, 6)
    np.testing.assert_allclose(short[0], long[0, :2], rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception):
        head({"query_vector": tf.zeros([1, 8])})


def test_ranker_head_dense_fusion_adds_the_catalog_z_scored_two_tower_score():
    from tfrec.ranking.model import LEXICAL_FEATURES, RankerHead

    rng = np.random.default_rng(0)
    catalog = rng.normal(size=(500, 8)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    query = rng.normal(size=(3, 8)).astype(np.float32)
    rows = rng.integers(0, len(catalog), size=(3, 5))
    inputs = {"query_vector": query, "product_vector": catalog[rows], "query_zero": query[:, :4],
              "product_zero": catalog[rows][..., :4], "lexical": rng.uniform(0, 3, size=(3, 5, len(LEXICAL_FEATURES))).astype(np.float32),
              "product_id": np.full((3, 5), "", object)}
    head = RankerHead(seed=1)
    mlp = head(inputs).numpy()
    np.testing.assert_array_equal(head.mlp_score(inputs).numpy(), mlp)  # weight 0, scale 1 until set
    head.set_dense_fusion(catalog, 0.5, 2.0)
    # The same z-score as the hybrid retrieval's dense component, without scoring the catalog.
    z = np.take_along_axis(zscore(tf.constant(query @ catalog.T)).numpy(), rows, axis=1)
    np.testing.assert_allclose(head.dense_z(inputs).numpy(), z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head(inputs).numpy(), mlp / 2.0 + 0.5 * z, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="dimensions"):
        head.set_dense_fusion(catalog[:, :4], 0.5, 2.0)
    with pytest.raises(ValueError, match="score_scale"):
        head.set_dense_fusion(catalog, 0.5, 0.0)


def test_search_metrics_to_json_keeps_the_published_layout():
    """metrics.json: keys in their published order, floats rounded to 6 places, NaN as null, continual last and only when set."""
    system = SystemMetrics("x", "tfrec", {"recall@10": np.float64(0.1234567891)}, None, {"ndcg@10": float("nan")})
    metrics = SearchMetrics("d", "valid", "r", "now", {"e2e": 2}, 10, {"x": system}, [], {"lexical index": 0.1},
                            {"retrieval": {}}, [], {"tune": Half(float("nan"), 0.5, 0)}, ["a note"])
    out = metrics.to_json()
    assert list(out) == ["dataset", "split", "run_name", "created", "n_queries", "catalog_size", "systems", "significance",
                         "timings", "training", "hybrid_weight_trials", "halves", "notes"]
    assert out["systems"]["x"] == {"label": "x", "kind": "tfrec", "retrieval": {"recall@10": 0.123457}, "e2e": None,
                                   "rerank": {"ndcg@10": None}}
    assert out["halves"] == {"tune": {"e2e_ndcg@10": None, "recall@100": 0.5, "n_queries": 0}}
    assert list(dataclasses.replace(metrics, continual={"warm_start": None}).to_json())[-1] == "continual"


def test_headline_recall_is_recall_at_100_else_the_deepest_cut_off():
    """The retrieval view's headline metric: recall@100 when evaluated, else the deepest recall@K (evaluation.ks)."""
    assert headline_recall({"recall@10": 0.1, "recall@100": 0.5, "recall@1000": 0.7, "mrr": 0.2}) == "recall@100"
    assert headline_recall({"recall@10": 0.1, "recall@20": 0.3, "mrr": 0.2}) == "recall@20"
    assert headline_recall({"mrr": 0.2}) is None


def test_the_ranker_is_kept_only_when_it_beats_retrieval():
    from tfrec.search.stages.ranker import RANKER, RETRIEVAL, Ranker, keep_ranker

    assert keep_ranker(0.4274, 0.4010) == RANKER
    assert keep_ranker(0.6380, 0.6530) == RETRIEVAL
    assert keep_ranker(0.5, 0.5) == RETRIEVAL  # a tie: the ranker's cost buys nothing
    assert Ranker(None, {"selection": {"kept": RETRIEVAL}}).kept is False
    assert Ranker(None, {}).kept is True  # no tuning half: nothing to compare on, the ranker stays
