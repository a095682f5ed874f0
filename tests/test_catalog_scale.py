"""Whole-catalog ranking at catalog scale: chunked evaluation equals one pass, float16 catalog exports.

Evaluation, baselines and indexes rank users or queries against the catalog a chunk of rows at a
time (no [n, n_items] matrix); the lists must be those of one pass, tie rules included. The
recommendation exports can hold the catalog as float16 (``export.catalog_dtype``): half the size,
nearly the same top-100 lists, and a 1M-item export still loads and runs in a TensorFlow-only process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfrec import compat
from tfrec.baselines.recommend import popularity_top_k
from tfrec.evaluation import chunks
from tfrec.evaluation import recommend as er
from tfrec.evaluation import search as es

tf = compat.tensorflow()


def clustered_vectors(n: int, d: int = 64, clusters: int = 100, spread: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors float32 [n, d] drawn around ``clusters`` centres, the cluster of each) - a catalog-like space."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    of = rng.integers(0, clusters, size=n)
    vectors = np.empty((n, d), np.float32)
    for start in range(0, n, 1 << 17):  # float32 throughout: 1M x 64 stays 256 MB
        stop = min(start + (1 << 17), n)
        part = centres[of[start:stop]] + rng.standard_normal((stop - start, d), dtype=np.float32) * np.float32(spread / np.sqrt(d))
        vectors[start:stop] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return vectors, of


def recommender(vectors: np.ndarray, max_history: int = 5):
    """An untrained residual mean-encoder recommender whose item vectors are ``vectors`` and user vectors their history mean."""
    from tfrec.recommend.model import SequentialRecommender

    ids = np.char.add("p", np.arange(len(vectors)).astype(str))
    return SequentialRecommender(ids, vectors, ids[:1000], encoder="mean", dim=vectors.shape[1], max_history=max_history,
                                 dropout=0.0, id_dropout=0.0, seed=0)


# ----------------------------------------------------------------------------- chunked ranking = one pass


def test_row_chunk_bounds_the_cells_of_a_chunk():
    assert chunks.row_chunk(1 << 20) == 64 and chunks.row_chunk(1_000_000) == 67
    assert chunks.row_chunk(1_585, most=1024) == 1024  # small catalogs keep their historical batch
    assert chunks.row_chunk(10 ** 9) == 1 and chunks.row_chunk(0) == chunks.SCORE_CELLS
    with pytest.raises(ValueError, match="cells"):
        chunks.row_chunk(10, cells=0)


def _stable_top(scores: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
    out = []
    for row, ex in zip(scores.astype(np.float64), exclude):
        row = row.copy()
        row[ex[ex >= 0]] = -np.inf
        kept = [j for j in np.argsort(-row, kind="stable") if row[j] > -np.inf][:k]
        out.append(kept + [-1] * (k - len(kept)))
    return np.array(out)


def test_top_k_items_in_many_chunks_keeps_the_tie_rule(monkeypatch):
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, size=(37, 30)).astype(np.float32)
    exclude = rng.integers(-1, 30, size=(37, 6))
    whole = er.top_k_items(scores, 8, exclude)
    monkeypatch.setattr(er, "TOP_K_CELLS", 30 * 4)  # 4 rows per chunk
    chunked = er.top_k_items(scores, 8, exclude)
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(chunked, _stable_top(scores, 8, exclude))
    with pytest.raises(ValueError, match="NaN"):
        er.top_k_items(np.where(np.arange(30) == 29, np.nan, scores), 3)


def test_shared_ranking_with_exclusions_equals_the_full_matrix():
    """Popularity with history exclusion: no [users, items] matrix, the same lists (ties, repeats, too few items left)."""
    rng = np.random.default_rng(2)
    for n_items, k, history in [(40, 10, 6), (8, 8, 6), (5, 5, 0), (300, 100, 50)]:
        counts = rng.integers(0, 4, size=n_items)
        exclude = rng.integers(-1, n_items, size=(23, history))
        if history:
            exclude[:, 1] = exclude[:, 0]  # a repeated purchase excludes one item
        expected = _stable_top(np.broadcast_to(counts, (23, n_items)), k, exclude)
        np.testing.assert_array_equal(popularity_top_k(counts, 23, k, exclude, batch_size=4), expected)
        np.testing.assert_array_equal(er.top_k_shared_scores(counts, 23, k, exclude), expected)
        assert er.top_k_shared_scores(counts, 23, k).dtype == np.int32
    with pytest.raises(ValueError, match="k must be"):
        er.top_k_shared_scores(np.ones(3), 2, 4)
    with pytest.raises(ValueError, match="exclude holds item row 9"):
        popularity_top_k(np.ones(3), 1, 2, np.array([[9]]))


def test_diversity_in_chunks_is_the_one_pass_value(monkeypatch):
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((50, 6))
    vectors[7] = 0.0
    top = rng.integers(-1, 50, size=(31, 5))
    whole = er.intra_list_diversity(top, vectors)
    monkeypatch.setattr(er, "DIVERSITY_CELLS", 2 * 5 * 6)  # 2 users per chunk
    assert er.intra_list_diversity(top, vectors) == whole
    assert np.isfinite(whole)


def test_search_top_k_in_chunks_keeps_the_tie_keys(monkeypatch):
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 3, size=(11, 40)).astype(np.float32)
    rows, values = es.top_k(scores, 7)
    monkeypatch.setattr(es, "row_chunk", lambda n_items: 2)
    chunked_rows, chunked_values = es.top_k(scores, 7)
    np.testing.assert_array_equal(chunked_rows, rows)
    np.testing.assert_array_equal(chunked_values, values)
    keys = es.tie_break_keys(np.arange(40))
    for row, top in zip(scores, rows):
        assert list(top) == list(np.lexsort((keys, -row))[:7])


def test_tune_weights_reads_a_generator_once():
    from tfrec.search.hybrid import tune_weights

    rng = np.random.default_rng(8)
    batches = [tuple(rng.standard_normal((4, 30)).astype(np.float32) for _ in range(3)) for _ in range(3)]
    metric = lambda rows: float(np.mean(rows[:, 0] % 3 == 0))  # noqa: E731
    expected = tune_weights(batches, metric, 5, (0.0, 0.5, 1.0), (0.0, 0.25))
    reads = []

    def once():
        for batch in batches:
            reads.append(1)
            yield batch

    assert tune_weights(once(), metric, 5, (0.0, 0.5, 1.0), (0.0, 0.25)) == expected
    assert len(reads) == len(batches)


# ----------------------------------------------------------------------------- float16 catalogs


def test_catalog_dot_in_float16_returns_float32_close_to_float32():
    from tfrec.retrieval.index import catalog_dot, catalog_variable

    vectors, _ = clustered_vectors(2000, seed=1)
    queries = tf.constant(vectors[:7])
    exact = catalog_dot(queries, catalog_variable(vectors)).numpy()
    half_matrix = catalog_variable(vectors, "float16")
    half = catalog_dot(queries, half_matrix).numpy()
    assert half_matrix.dtype == tf.float16 and half.dtype == np.float32
    np.testing.assert_allclose(half, exact, atol=2e-3)
    with pytest.raises(ValueError, match="float32, float16"):
        catalog_variable(vectors, "bfloat16")


def test_hybrid_scorer_in_float16_ranks_like_float32():
    from tfrec.search.hybrid import HybridScorer, HybridWeights

    vectors, _ = clustered_vectors(5000, seed=2)
    queries = tf.constant(vectors[:20] + 0.01)
    weights = HybridWeights(1.0, 0.0, 0.5)
    exact = HybridScorer(vectors, vectors).top_k(queries, queries, None, weights, 50)
    half_scorer = HybridScorer(vectors, vectors, dtype="float16")
    half = half_scorer.top_k(queries, queries, None, weights, 50)
    assert half_scorer.catalog_dense.dtype == tf.float16 and half[1].dtype == tf.float32
    overlap = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(exact[0].numpy(), half[0].numpy())])
    assert overlap > 0.97


def _history_queries(of: np.ndarray, n: int, history: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(histories [n, history] of item rows, target row of each): the history is other items of the target's cluster."""
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(of == c) for c in np.unique(of)}
    targets = rng.choice(len(of), size=n, replace=False)
    histories = np.stack([rng.choice(members[of[t]][members[of[t]] != t], size=history, replace=False) for t in targets])
    return histories, targets


def test_float16_recall_at_100_matches_float32_on_50k_items():
    """500 users of a 50k-item catalog: float16 vs float32 export recall@100 of a held-out same-cluster item."""
    from tfrec.recommend.export import RecommenderExport

    vectors, of = clustered_vectors(50_000, clusters=100, spread=1.0, seed=3)
    model = recommender(vectors)
    histories, targets = _history_queries(of, 500, 3, seed=4)
    ids = model.item_ids.numpy().astype(str)
    request = tf.constant(ids[histories])
    found = {}
    for dtype in ("float32", "float16"):
        module = RecommenderExport(model, 100, catalog_dtype=dtype)
        assert module.items.dtype == tf.as_dtype(dtype)
        out = module.serve(history=request)
        assert out["scores"].dtype == tf.float32
        found[dtype] = out["item_ids"].numpy().astype(str)
    recall = {d: float(np.mean([ids[t] in set(row) for t, row in zip(targets, f)])) for d, f in found.items()}
    overlap = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(found["float32"], found["float16"])])
    assert 0.05 < recall["float32"] < 0.95  # the check means something: targets are neither always nor never found
    assert abs(recall["float16"] - recall["float32"]) < 0.002, (recall, overlap)
    assert overlap > 0.98


def test_float16_recommender_keeps_excluded_history_items_last():
    """k = the whole catalog: the history's items come last with the exclusion score, as in the float32 export."""
    from tfrec.recommend.export import RecommenderExport

    vectors, _ = clustered_vectors(40, d=16, clusters=4, seed=9)
    model = recommender(vectors)
    request = tf.constant([["p3", "p11", "", "p30"], ["p5", "unknown", "", ""]])
    modules = {dtype: RecommenderExport(model, 40, exclude_history=True, catalog_dtype=dtype) for dtype in ("float32", "float16")}
    out = {dtype: module.serve(history=request) for dtype, module in modules.items()}
    ids = {dtype: o["item_ids"].numpy().astype(str) for dtype, o in out.items()}
    np.testing.assert_array_equal(ids["float16"], ids["float32"])
    assert list(ids["float16"][0, -3:]) == ["p3", "p11", "p30"] and ids["float16"][1, -1] == "p5"
    np.testing.assert_allclose(out["float16"]["scores"].numpy(), out["float32"]["scores"].numpy(), atol=1e-3)
    assert np.all(out["float16"]["scores"].numpy()[0, -3:] == -3.0)


def test_float16_similar_items_leave_the_item_out_and_answer_unknown_ids():
    from tfrec.recommend.export import SimilarItemsExport

    vectors, _ = clustered_vectors(3000, seed=5)
    model = recommender(vectors)
    module = SimilarItemsExport(model, 10, catalog_dtype="float16")
    out = module.serve(item_id=tf.constant(["p17", "nope"]))
    ids, scores = out["item_ids"].numpy().astype(str), out["scores"].numpy()
    expected = np.argsort(-(vectors @ vectors[17]), kind="stable")[1:11]
    assert "p17" not in ids[0] and len(set(ids[0]) & set(np.char.add("p", expected.astype(str)))) >= 9
    assert list(ids[1]) == [""] * 10 and scores.dtype == np.float32 and np.all(scores[1] == 0)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_1m_item_float16_export_passes_the_conformance_check(tmp_path):
    """1M items x 64-d, float16: both SavedModels load in a TensorFlow-only process and run every signature and warm-up."""
    from tfrec.recommend.export import export_recommendation
    from tfrec.serving.conformance import check_export

    n = 1_000_000
    vectors, _ = clustered_vectors(n, clusters=2000, seed=7)
    model = recommender(vectors)
    titles = np.char.add("product ", np.arange(n).astype(str))
    del vectors
    out = export_recommendation(model, titles, tmp_path, k=100, catalog_dtype="float16")
    for name in ("recommender", "similar_items"):
        stored = sum(f.stat().st_size for f in (Path(out[name]["path"]) / "variables").iterdir())
        assert stored < 1.1 * n * 64 * 2, "%s keeps %d bytes of variables: the catalog is not float16" % (name, stored)
    report = check_export(tmp_path, timeout=1200)
    assert report.ok, "\n".join(report.lines())
    assert {m.model for m in report.models} == {"recommender", "similar_items"}
    assert all(m.warmup_replayed == m.warmup_records > 0 for m in report.models)
