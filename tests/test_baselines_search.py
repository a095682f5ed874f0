"""Search baselines on real Home Depot slices: BM25 search vs dense scores, stemming, MiniLM, the z-score hybrid."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import write_homedepot_slice
from tfrec.baselines.search import (
    BASELINES,
    Bm25Baseline,
    MiniLMBaseline,
    bm25_tokenize,
    evaluate_search_baselines,
    hybrid_scores,
    rerank_candidates,
)
from tfrec.config import load_config
from tfrec.config.schema import TextConfig
from tfrec.data import load_data
from tfrec.evaluation.search import SearchEvalSet, ideal_dcg


@pytest.fixture(scope="module")
def search_slice(shared_datasets, tmp_path_factory):
    """12 train and 12 valid queries of Home Depot with their judged products (~170 titles)."""
    folder = write_homedepot_slice(shared_datasets, tmp_path_factory.mktemp("slice") / "homedepot", n_queries=12)
    return load_data(load_config(None, ["data.dir=%s" % folder, "evaluation.ks=[10]", "retrieval.top_k=10"]))


@pytest.fixture(scope="module")
def text_cfg(tmp_path_factory) -> TextConfig:
    return TextConfig(cache_dir=str(tmp_path_factory.mktemp("embedding-cache")))


@pytest.fixture(scope="module")
def minilm(search_slice, text_cfg, files) -> MiniLMBaseline:
    return MiniLMBaseline(search_slice.catalog.text(), text_cfg)


def test_tokenization_splits_digits_drops_stopwords_and_stems():
    """"18in." -> "18" + "in" (a stopword); the stemmed variant maps "Brackets" to "bracket"."""
    assert bm25_tokenize(["Steel 18in. Angle Brackets"], stem=False) == [["steel", "18", "angle", "brackets"]]
    assert bm25_tokenize(["Steel 18in. Angle Brackets"], stem=True) == [["steel", "18", "angl", "bracket"]]


def test_bm25_search_agrees_with_dense_scores(search_slice):
    """search() returns the k best of scores(), in order, and bm25s's own retrieve() finds the same scores."""
    titles = search_slice.catalog.text()
    queries = list(np.unique(search_slice.valid.queries.astype(str)))
    bm25 = Bm25Baseline(titles, stem=True)
    dense = bm25.scores(queries)
    rows, values = bm25.search(queries, 20)
    assert dense.shape == (len(queries), len(titles)) and rows.shape == values.shape == (len(queries), 20)
    np.testing.assert_array_equal(values, np.take_along_axis(dense, rows, axis=1))
    np.testing.assert_array_equal(values, -np.sort(-dense, axis=1)[:, :20])
    assert (dense > 0).any(axis=1).mean() > 0.9  # most queries match some title
    library = bm25.retriever.retrieve(bm25_tokenize(queries, stem=True), k=20, show_progress=False)
    np.testing.assert_allclose(values, library.scores, rtol=1e-6)
    pairs = np.arange(len(queries)).repeat(3), rows[:, :3].ravel()
    np.testing.assert_array_equal(bm25.score_pairs([queries[q] for q in pairs[0]], pairs[1]), dense[pairs])


def test_stemming_matches_plural_titles():
    """Query "bracket" scores a "Brackets" title only with the stemmer; unknown words score nothing."""
    titles = ["Simpson Strong-Tie 18in. Angle Brackets", "Wood Screws 2 in.", "Deck Paint"]
    plain, stemmed = Bm25Baseline(titles, stem=False), Bm25Baseline(titles, stem=True)
    assert plain.scores(["bracket"])[0].tolist() == [0.0, 0.0, 0.0]
    assert stemmed.scores(["bracket"])[0, 0] > 0 and stemmed.scores(["bracket"])[0, 1:].tolist() == [0.0, 0.0]
    assert stemmed.scores(["zzzz the", ""]).tolist() == [[0.0] * 3, [0.0] * 3]
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        plain.search(["deck"], 4)


def test_minilm_finds_a_title_from_its_own_text(minilm, search_slice):
    """A title as the query retrieves an identical title first (cosine ~1); search() is the dot-product top-k."""
    titles = search_slice.catalog.text()
    picked = np.arange(0, len(titles), 20)
    vectors = minilm.encode([titles[i] for i in picked])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    rows, values = minilm.search(vectors, 5)
    assert [titles[r] for r in rows[:, 0]] == [titles[i] for i in picked]
    assert values[:, 0].min() > 0.999
    manual = vectors @ minilm.catalog_vectors.T
    np.testing.assert_allclose(values, -np.sort(-manual, axis=1)[:, :5], atol=1e-6)
    np.testing.assert_allclose(minilm.score_pairs(vectors, rows[:, 1]), values[:, 1], atol=1e-6)


def test_hybrid_is_the_sum_of_per_query_zscores(minilm, search_slice):
    """hybrid = (bm25 - mean) / std + (cosine - mean) / std per query over the catalog; a constant row adds 0."""
    queries = ["angle bracket", "deck paint", "zzzzqqq"]
    lexical = Bm25Baseline(search_slice.catalog.text(), stem=True).scores(queries)
    semantic = minilm.scores(minilm.encode(queries))
    z = lambda s: (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)  # noqa: E731
    got = hybrid_scores(lexical, semantic)
    np.testing.assert_allclose(got[:2], z(lexical[:2]) + z(semantic[:2]), rtol=1e-4, atol=1e-5)
    assert lexical[2].max() == 0  # no token in the catalog: only the semantic part counts
    np.testing.assert_allclose(got[2], z(semantic[2:])[0], rtol=1e-4, atol=1e-5)


def test_rerank_candidates_orders_by_score_keeping_ties():
    candidates = np.array([[7, 3, 9, 1]])
    assert rerank_candidates(candidates, np.array([[0.1, 0.5, 0.1, 0.9]])).tolist() == [[1, 3, 7, 9]]


def test_evaluate_search_baselines_on_a_slice(search_slice, text_cfg, minilm):
    """Every baseline is reported; numbers agree with an independent recall and the re-rank's construction."""
    data = search_slice
    titles = data.catalog.text()
    result = evaluate_search_baselines(titles, data.train, data.valid, text_cfg, ks=(10, 100), progress=False, minilm=minilm)
    es: SearchEvalSet = result["eval_set"]
    assert set(BASELINES) <= set(result) and es.n_queries == 12
    # Independent recall@10 of stemmed BM25 in plain Python.
    rows, _ = Bm25Baseline(titles, stem=True).search(list(es.queries), 10)
    recalls = []
    for q in range(es.n_queries):
        judged = slice(es.offsets[q], es.offsets[q + 1])
        positives = set(es.products[judged][es.labels[judged] >= 2.5].tolist())
        if positives:
            recalls.append(len(positives & set(rows[q].tolist())) / len(positives))
    assert result["bm25_stemmed"]["recall@10"] == pytest.approx(np.mean(recalls))
    assert result["bm25_stemmed"]["n_queries"] == len(recalls)
    # Independent E2E NDCG@10 of the same ranking; a query whose judged labels are all 1 scores 0.
    ndcgs = []
    for q in range(es.n_queries):
        judged = slice(es.offsets[q], es.offsets[q + 1])
        label_of = dict(zip(es.products[judged].tolist(), es.labels[judged].tolist()))
        gain = lambda label: 2 ** (label - 1) - 1  # noqa: E731
        dcg = sum(gain(label_of.get(row, 1.0)) / np.log2(r + 2) for r, row in enumerate(rows[q].tolist()))
        ideal = sum(gain(label) / np.log2(r + 2) for r, label in enumerate(sorted(label_of.values(), reverse=True)[:10]))
        ndcgs.append(dcg / ideal if ideal > 0 else 0.0)
    assert result["bm25_stemmed"]["ndcg@10_e2e"] == pytest.approx(np.mean(ndcgs))
    np.testing.assert_allclose(result["per_query"]["bm25_stemmed"]["ndcg@10_e2e"], ndcgs, rtol=1e-6)
    # Per-query recall (NaN without a positive) for the paired test of tfrec's retrieval against the strongest baseline.
    per_query_recall = result["per_query"]["bm25_stemmed"]["recall@10"]
    np.testing.assert_allclose(per_query_recall[~np.isnan(per_query_recall)], recalls, rtol=1e-6)
    assert all(set(result["per_query"][name]) >= {"recall@10", "recall@100"} for name in BASELINES)
    # Re-ranking BM25's top 100 keeps its recall@100 and only reorders.
    assert result["bm25_rerank_minilm"]["recall@100"] == pytest.approx(result["bm25_stemmed"]["recall@100"])
    assert "ndcg@10_rerank" not in result["bm25_rerank_minilm"]
    # Perfect re-ranking scores 1 on every query except those of ideal DCG 0, which count as 0.
    assert result["perfect"]["ndcg@10_rerank"] == pytest.approx(np.mean(ideal_dcg(es, 10) > 0))
    for name in ("bm25", "bm25_stemmed", "minilm_zero_shot", "hybrid_bm25_minilm"):
        report = result[name]
        assert result["random"]["ndcg@10_rerank"] - 0.1 < report["ndcg@10_rerank"] <= result["perfect"]["ndcg@10_rerank"]
        assert report["n_queries_ndcg"] == es.n_queries
        assert report["seen"]["n_queries_ndcg"] + report["cold"]["n_queries_ndcg"] == es.n_queries
        per_query = result["per_query"][name]
        assert per_query["ndcg@10_e2e"].shape == per_query["ndcg@10_rerank"].shape == (12,)
        assert not np.isnan(per_query["ndcg@10_e2e"]).any() and not np.isnan(per_query["ndcg@10_rerank"]).any()
        assert per_query["ndcg@10_e2e"].mean() == pytest.approx(report["ndcg@10_e2e"])
        assert per_query["ndcg@10_rerank"].mean() == pytest.approx(report["ndcg@10_rerank"])


# Anchor numbers on Home Depot valid (issue); queries of ideal DCG 0 count as 0 in the NDCG means, as in tfrec.
ANCHORS = {
    ("bm25", "recall@10"): 0.399, ("bm25", "recall@100"): 0.698,
    ("bm25_stemmed", "recall@10"): 0.454, ("bm25_stemmed", "recall@100"): 0.779,
    ("minilm_zero_shot", "recall@10"): 0.333, ("minilm_zero_shot", "recall@100"): 0.675,
    ("bm25_stemmed", "ndcg@10_e2e"): 0.356, ("minilm_zero_shot", "ndcg@10_e2e"): 0.257,
    ("hybrid_bm25_minilm", "ndcg@10_e2e"): 0.369, ("bm25_rerank_minilm", "ndcg@10_e2e"): 0.292,
    ("random", "ndcg@10_rerank"): 0.889, ("bm25", "ndcg@10_rerank"): 0.899,
    ("bm25_stemmed", "ndcg@10_rerank"): 0.900, ("minilm_zero_shot", "ndcg@10_rerank"): 0.906,
    ("perfect", "ndcg@10_rerank"): 0.996,
}


@pytest.mark.slow
def test_full_valid_evaluation_matches_the_anchors(shared_datasets, in_repo):
    """The whole valid split (MiniLM catalog cached in the embedding cache, see text.cache_dir) lands within 0.01 of the anchors."""
    loaded = load_config("configs/default.yaml", [])
    data = load_data(loaded)
    result = evaluate_search_baselines(data.catalog.text(), data.train, data.valid, loaded.config.text, progress=False)
    es = result["eval_set"]
    # 5 of the 1,128 queries judge only relevance-1 products; they count (as 0) in every NDCG mean.
    assert es.n_queries == 1128 and int(np.sum(ideal_dcg(es, 10) == 0)) == 5
    assert result["bm25"]["n_queries_ndcg"] == 1128
    assert result["perfect"]["ndcg@10_rerank"] == pytest.approx(1123 / 1128)
    for (name, metric), anchor in ANCHORS.items():
        value = result[name][metric]
        assert value == pytest.approx(anchor, abs=0.01), (name, metric, value)
