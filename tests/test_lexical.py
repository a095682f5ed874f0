"""tfrec.lexical: tokenization parity (Python vs graph), BM25 vs bm25s and numpy, pair features, export, storage."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import homedepot_titles_and_queries
from tfrec import compat
from tfrec.lexical import LexicalIndex, LexicalIndexError, LexicalScorer
from tfrec.lexical.index import MANIFEST_NAME, STOPWORD, UNKNOWN
from tfrec.lexical.scorer import PAIR_FEATURES, graph_raw_tokens
from tfrec.lexical.tokens import MAX_TEXT_BYTES, STOPWORDS, analyze, analyze_all, make_stemmer, raw_tokens

tf = compat.tensorflow()

EDGE_TEXTS = [
    "", "   ", "the and of", "18in.", "3/4 in. x 10 ft. Hampton Bay", "Café ÜBER-cool", "30å¡ Galvanized",
    "\u212a-rated", "İstanbul", "a\x00b", "x² ٣4", "tab\tnew\nline", "DEWALT 20-Volt MAX",
]


@pytest.fixture(scope="module")
def real(shared_datasets):
    """300 real titles, 100 train queries (given as extra texts) and 60 later train queries (not given)."""
    titles, queries = homedepot_titles_and_queries(shared_datasets, 300, 160)
    return titles, queries[:100], queries[100:]


@pytest.fixture(scope="module")
def index(real) -> LexicalIndex:
    titles, seen_queries, _ = real
    return LexicalIndex.build(titles, seen_queries)


@pytest.fixture(scope="module")
def scorer(index) -> LexicalScorer:
    return LexicalScorer(index)


def _decoded(ragged) -> list[list[str]]:
    return [[t.decode("utf-8") for t in row] for row in ragged.to_list()]


def test_raw_tokens_and_stopwords():
    import bm25s.stopwords

    assert STOPWORDS == set(bm25s.stopwords.STOPWORDS_EN)
    assert raw_tokens("Paslode 3 in. x 0.120-Gauge 18in") == ["paslode", "3", "in", "x", "0", "120", "gauge", "18", "in"]
    assert raw_tokens("Café \u212a") == ["caf"]  # ASCII lowercasing only: the Kelvin sign is no "k"
    assert raw_tokens(b"ab\xffcd") == ["ab", "cd"]
    stem = make_stemmer()
    assert analyze("The Cordless Drills and Batteries", stem) == ["cordless", "drill", "batteri"]


def test_python_and_graph_tokenizers_agree(real):
    titles, seen, unseen = real
    texts = titles + seen + unseen + EDGE_TEXTS
    assert _decoded(graph_raw_tokens(tf.constant(texts))) == [raw_tokens(t) for t in texts]
    invalid = [b"ab\xffcd", b"\xc3(\xe2\x82 9x"]
    assert _decoded(graph_raw_tokens(tf.constant(invalid))) == [raw_tokens(t) for t in invalid]


def test_graph_term_ids_equal_python_and_pystemmer(index, scorer, real):
    titles, seen, unseen = real
    texts = titles + seen + unseen + EDGE_TEXTS
    graph = scorer.term_ids(tf.constant(texts))
    assert graph.dtype == tf.int32
    assert graph.to_list() == [index.term_ids(t) for t in texts]
    # For every text seen at build time the lookup is exact Snowball stemming.
    stem = make_stemmer()
    for text, ids in zip(titles + seen, graph.to_list()):
        assert [index.terms[i] for i in ids] == analyze(text, stem)


def test_suffix_rules_reach_unseen_inflections():
    index = LexicalIndex.build(["cordless drill kit", "lithium battery pack", "wood shelving unit", "chef knife", "glu stick glue"])
    stem = make_stemmer()
    expected = {"drills": "drill", "batteries": stem("battery"), "shelves": stem("shelving"), "glues": "glue"}
    for word, term in expected.items():
        assert word not in index.raw_tokens
        assert index.terms[index.term_id(word)] == term, word
    assert index.term_id("knives") == UNKNOWN  # irregular and unseen: documented limitation
    assert index.term_id("the") == STOPWORD and index.term_id("is") == STOPWORD  # no "is" -> "i" stripping
    graph = LexicalScorer(index).term_ids(tf.constant(["drills, batteries & shelves", "knives", "glues"]))
    assert graph.to_list() == [index.term_ids(t) for t in ["drills, batteries & shelves", "knives", "glues"]]
    without_stemming = LexicalIndex.build(["cordless drill kit"], stem=False)
    assert without_stemming.term_id("drills") == UNKNOWN


def test_graph_scores_equal_numpy_reference(index, scorer, real):
    titles, seen, unseen = real
    queries = seen + unseen + EDGE_TEXTS + ["White white", "white"]
    expected = index.scores(queries)
    graph = tf.function(scorer.catalog_scores)(tf.constant(queries)).numpy()
    assert graph.shape == (len(queries), len(titles)) and graph.dtype == np.float32
    np.testing.assert_allclose(graph, expected, rtol=1e-5, atol=1e-6)
    assert (expected > 0).sum(axis=1).mean() > 5  # real overlaps, not an all-zero comparison
    np.testing.assert_allclose(expected[-2], 2 * expected[-1], rtol=1e-6)  # a repeated term counts twice


def test_scores_equal_bm25s_for_the_same_terms(index, real):
    import bm25s

    titles, seen, _ = real
    retriever = bm25s.BM25(k1=1.5, b=0.75)  # method="lucene" is the default
    retriever.index(analyze_all(titles), show_progress=False)
    stem = make_stemmer()
    queries = seen + ["white white paint"]
    ours = index.scores(queries)
    compared = 0
    for row, query in enumerate(queries):
        terms = analyze(query, stem)
        if not terms:
            assert not ours[row].any()
            continue
        np.testing.assert_allclose(ours[row], retriever.get_scores(terms), rtol=1e-5, atol=1e-6)
        compared += 1
    assert compared >= 90


def test_pair_bm25_equals_catalog_score_and_features_match_python(index, scorer, real):
    titles, seen, unseen = real
    rng = np.random.default_rng(0)
    queries = seen[:40] + unseen[:20]
    rows = rng.integers(0, len(titles), len(queries))
    rows[:30] = [int(np.argmax(s)) for s in index.scores(queries[:30])]  # plenty of matching pairs
    pair_titles = [titles[r] for r in rows]
    features = {k: v.numpy() for k, v in scorer.pair_features(tf.constant(queries), tf.constant(pair_titles)).items()}
    assert set(features) == set(PAIR_FEATURES)
    catalog = index.scores(queries)[np.arange(len(queries)), rows]
    np.testing.assert_allclose(features["bm25"], catalog, rtol=1e-5, atol=1e-6)
    assert (catalog > 0).sum() >= 25

    for i, (query, title) in enumerate(zip(queries, pair_titles)):
        q_terms, t_terms = set(index.term_ids(query)), set(index.term_ids(title))
        idf_all = sum(float(index.idf[t]) for t in q_terms)
        idf_hit = sum(float(index.idf[t]) for t in q_terms & t_terms)
        grams = [{s.lower()[j : j + 3] for j in range(len(s) - 2)} for s in (query, title)]
        union = len(grams[0] | grams[1])
        expected = {
            "matched_fraction": len(q_terms & t_terms) / len(q_terms) if q_terms else 0.0,
            "idf_matched_fraction": idf_hit / idf_all if idf_all else 0.0,
            "query_terms": len(q_terms),
            "title_terms": len(index.term_ids(title)),
            "char_trigram_jaccard": len(grams[0] & grams[1]) / union if union else 0.0,
        }
        for name, value in expected.items():
            assert math.isclose(features[name][i], value, rel_tol=1e-5, abs_tol=1e-6), (name, query, title)


def test_pair_bm25_scores_a_title_outside_the_catalog(index, scorer):
    title = "Cordless Drill Kit with Cordless Battery"
    query = "cordless drill"
    bm25 = float(scorer.pair_features(tf.constant([query]), tf.constant([title]))["bm25"][0])
    k1, b = index.k1, index.b
    terms = index.term_ids(title)
    expected = 0.0
    for term in index.term_ids(query):
        tf_count = terms.count(term)
        expected += index.idf[term] * tf_count / (tf_count + k1 * (1 - b + b * len(terms) / index.avgdl))
    assert expected > 0
    assert math.isclose(bm25, expected, rel_tol=1e-5)


def test_repeated_query_terms_add_again_with_one_posting_gather(index, scorer, real):
    titles, seen, _ = real
    word = next(t for q in seen for t in raw_tokens(q) if index.term_id(t) >= 0)
    queries = ["%s %s drill %s" % (word, word, word), word, " ".join([word] * 5000)]
    graph = scorer.catalog_scores(tf.constant(queries)).numpy()
    np.testing.assert_allclose(graph, index.scores(queries, max_query_terms=scorer.max_query_terms), rtol=1e-5, atol=1e-5)
    # 5,000 repeats are read as the first 32 words: 32 times the single word's score.
    np.testing.assert_allclose(graph[2], 32 * graph[1], rtol=1e-5, atol=1e-5)
    assert graph[1].max() > 0
    rows = np.argsort(-graph[0])[:5]
    pairs = scorer.pair_features(tf.constant([queries[0]] * 5), tf.constant([titles[r] for r in rows]))
    np.testing.assert_allclose(pairs["bm25"].numpy(), graph[0, rows], rtol=1e-5, atol=1e-6)


def test_a_query_is_read_up_to_max_query_terms_words(index, real):
    titles, seen, _ = real
    words = " ".join(seen[:40]).split()
    long_query = " ".join(words[:60])
    short = LexicalScorer(index, max_query_terms=5)
    got = short.catalog_scores(tf.constant([long_query])).numpy()
    np.testing.assert_allclose(got, index.scores([" ".join(words[:5])]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, index.scores([long_query], max_query_terms=5), rtol=1e-5, atol=1e-6)
    features = short.pair_features(tf.constant([long_query]), tf.constant([titles[0]]))
    expected = short.pair_features(tf.constant([" ".join(words[:5])]), tf.constant([titles[0]]))
    for name in ("bm25", "matched_fraction", "idf_matched_fraction", "query_terms"):
        assert float(features[name][0]) == pytest.approx(float(expected[name][0]), rel=1e-6), name
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_query_terms"):
            LexicalScorer(index, max_query_terms=bad)


def test_huge_texts_are_read_up_to_their_byte_limits(index, scorer):
    # A 192 KB title of one repeated word against a 192 KB query: dense [query x title] comparisons
    # would need 32k x 32k booleans per row; a title is read up to MAX_TEXT_BYTES, a query up to
    # max_query_bytes and max_query_terms words, in the graph as in the index.
    huge = " ".join(["drill"] * 32000)
    features = scorer.pair_features(tf.constant([huge, "drill", "é" * 4000]), tf.constant([huge, huge, "é" * 5000 + " drill"]))
    assert float(features["title_terms"][0]) == len(index.term_ids(huge)) == MAX_TEXT_BYTES // len("drill ")
    assert float(features["query_terms"][0]) == 1 and float(features["matched_fraction"][0]) == 1.0
    np.testing.assert_allclose(features["bm25"][0].numpy(), 32 * features["bm25"][1].numpy(), rtol=1e-5)
    assert float(features["title_terms"][2]) == 0  # "drill" starts past the first MAX_TEXT_BYTES bytes
    assert scorer.max_query_bytes == 64 * scorer.max_query_terms
    ids = scorer.term_ids(tf.constant(["drill " + "é" * 5000, "é" * 5000 + "drill"])).to_list()
    assert ids == [index.term_ids("drill " + "é" * 5000), index.term_ids("é" * 5000 + "drill")] and ids[1] == []


@pytest.fixture(scope="module")
def traced(scorer):
    """catalog_scores and pair_features traced once for any batch size, as a SavedModel signature would be."""
    spec = [tf.TensorSpec([None], tf.string)]
    return tf.function(scorer.catalog_scores, input_signature=spec), tf.function(scorer.pair_features, input_signature=spec * 2)


@pytest.mark.parametrize("batch", [0, 1, 5])
def test_batch_sizes_and_empty_strings(traced, index, batch):
    catalog_scores, pair_features = traced
    texts = (["", "the and", "dewalt drill", "  ", "\u00e9\u00e9"] * 2)[:batch]
    scores = catalog_scores(tf.constant(texts, tf.string)).numpy()
    assert scores.shape == (batch, index.num_docs)
    np.testing.assert_allclose(scores, index.scores(texts), rtol=1e-5, atol=1e-6)
    features = pair_features(tf.constant(texts, tf.string), tf.constant([""] * batch, tf.string))
    for name, value in features.items():
        assert value.shape == (batch,) and value.dtype == tf.float32, name
        assert np.isfinite(value.numpy()).all(), name
        if name != "query_terms":
            assert not value.numpy().any(), name  # nothing matches an empty title
    np.testing.assert_array_equal(features["query_terms"].numpy(), [len(set(index.term_ids(t))) for t in texts])


def test_empty_and_stopword_only_texts_score_zero_eagerly(scorer, index):
    texts = ["", "the and of", "?!", "dewalt"]
    scores = scorer(tf.constant(texts)).numpy()
    assert not scores[:3].any() and scores[3].max() > 0
    features = scorer.pair_features(tf.constant(texts), tf.constant(texts))
    for name, value in features.items():
        assert np.isfinite(value.numpy()).all(), name
        if name != "char_trigram_jaccard":  # "the and of" has trigrams, and shares them all with itself
            assert not value.numpy()[:3].any(), name
    np.testing.assert_array_equal(features["char_trigram_jaccard"].numpy(), [0, 1, 0, 1])
    assert float(features["matched_fraction"][3]) == 1.0


_LOAD_AND_RUN = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (TF Serving links the TF Text ops)
assert not {"tfrec", "tf_keras", "bm25s", "Stemmer"} & set(sys.modules), "the export needs only TF and TF Text"
queries = [q.encode("utf-8") for q in json.loads(open(sys.argv[2], encoding="utf-8").read())]
loaded = tf.saved_model.load(sys.argv[1])
out = loaded.signatures["serving_default"](queries=tf.constant(queries, tf.string))
pairs = loaded.signatures["pair_features"](queries=tf.constant(queries), titles=tf.constant(queries[::-1]))
np.savez(sys.argv[3], rows=out["rows"].numpy(), scores=out["scores"].numpy(), bm25=pairs["bm25"].numpy())
"""


class _Serving(tf.Module):
    def __init__(self, scorer: LexicalScorer):
        super().__init__()
        self.scorer = scorer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="queries")])
    def top10(self, queries):
        scores, rows = self.scorer.retrieve(queries, k=10)
        return {"rows": rows, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=n) for n in ("queries", "titles")])
    def pairs(self, queries, titles):
        return self.scorer.pair_features(queries, titles)


def test_saved_model_runs_in_a_fresh_process_with_only_tensorflow(scorer, index, real, tmp_path):
    _, seen, unseen = real
    queries = seen[:10] + unseen[:10] + ["", "drills"]
    module = _Serving(scorer)
    export_dir = tmp_path / "export"
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.top10, "pair_features": module.pairs})
    (tmp_path / "queries.json").write_text(json.dumps(queries), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN, str(export_dir), str(tmp_path / "queries.json"), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(tmp_path / "out.npz")
    expected = module.top10(tf.constant(queries))
    np.testing.assert_array_equal(served["rows"], expected["rows"].numpy())
    np.testing.assert_allclose(served["scores"], expected["scores"].numpy(), rtol=1e-6)
    reference = index.scores(queries)
    np.testing.assert_allclose(served["scores"], -np.sort(-reference, axis=1)[:, :10], rtol=1e-5, atol=1e-6)
    assert served["scores"][:, 0].max() > 0
    pairs = module.pairs(tf.constant(queries), tf.constant(queries[::-1]))["bm25"].numpy()
    np.testing.assert_allclose(served["bm25"], pairs, rtol=1e-6)


def test_save_load_round_trip(index, tmp_path):
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # a second save replaces the first and leaves one arrays file
    assert len(list((tmp_path / "idx").glob("*.npz"))) == 1
    loaded = LexicalIndex.load(tmp_path / "idx")
    assert loaded.raw_tokens == index.raw_tokens and loaded.terms == index.terms
    assert (loaded.avgdl, loaded.k1, loaded.b, loaded.stem) == (index.avgdl, index.k1, index.b, index.stem)
    for name in ("raw_to_term", "idf", "doc_len", "term_offsets", "term_docs", "term_weights"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(index, name))
    queries = ["dewalt drill", "white paint", "drills"]
    np.testing.assert_array_equal(loaded.scores(queries), index.scores(queries))
    from_folder = LexicalScorer(str(tmp_path / "idx"))
    rebuilt = LexicalScorer.from_config(from_folder.get_config())
    np.testing.assert_allclose(rebuilt(tf.constant(queries)).numpy(), index.scores(queries), rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError, match="LexicalIndex.save"):
        LexicalScorer(index).get_config()


def test_missing_and_corrupt_files_give_clear_errors(index, tmp_path):
    with pytest.raises(FileNotFoundError, match=MANIFEST_NAME):
        LexicalIndex.load(tmp_path / "nowhere")
    folder = index.save(tmp_path / "idx")
    arrays = next(folder.glob("*.npz"))
    manifest = folder / MANIFEST_NAME
    original = manifest.read_text(encoding="utf-8")

    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(LexicalIndexError, match="corrupt.*sha256"):
        LexicalIndex.load(folder)

    manifest.write_text(original[: len(original) // 2], encoding="utf-8")
    with pytest.raises(LexicalIndexError, match="not valid JSON"):
        LexicalIndex.load(folder)

    index.save(folder)
    fields = json.loads(manifest.read_text(encoding="utf-8"))
    fields["terms"] = fields["terms"][:-1]
    manifest.write_text(json.dumps(fields), encoding="utf-8")
    with pytest.raises(LexicalIndexError, match="idf has"):
        LexicalIndex.load(folder)

    next(folder.glob("*.npz")).unlink()
    with pytest.raises(LexicalIndexError, match="which is missing"):
        LexicalIndex.load(folder)


def test_build_rejects_bad_input():
    with pytest.raises(ValueError, match="catalog_texts is empty"):
        LexicalIndex.build([])
    with pytest.raises(ValueError, match="no terms"):
        LexicalIndex.build(["the", ""])
    with pytest.raises(ValueError, match="b must be"):
        LexicalIndex.build(["drill"], b=1.5)
    with pytest.raises(ValueError, match=r"catalog_texts\[1\] must be a string"):
        LexicalIndex.build(["drill", None])


CATALOG_EDGE_TITLES = ["", "ab", "x", "é", "Café ÜBER-cool", "a\x00b drill", "the and of", "18in. DEWALT 20-Volt MAX " * 400]
CATALOG_EDGE_QUERIES = ["", "the and of", "Café", "ab", "é", "x² ٣4", "cordless drill " * 5000]


def test_catalog_pair_features_equal_the_string_path(real):
    """Precomputed title sides give pair_features' numbers: real queries x their top 100, and edge cases."""
    from tfrec.lexical.scorer import CatalogPairFeatures

    titles, seen, unseen = real
    titles = titles + CATALOG_EDGE_TITLES
    scorer = LexicalScorer(LexicalIndex.build(titles, seen))
    catalog = CatalogPairFeatures(scorer, titles)
    assert catalog.size == len(titles)
    queries = [q.encode("utf-8") for q in seen + unseen + CATALOG_EDGE_QUERIES] + [b"\xff\xfedrill caf\xc3", b"ab\xffcd"]
    top = np.argsort(-scorer.catalog_scores(tf.constant(queries)).numpy(), axis=1, kind="stable")[:, :100]
    edge_rows = np.arange(len(titles) - len(CATALOG_EDGE_TITLES), len(titles))
    rows = np.concatenate([top, np.tile(edge_rows, (len(queries), 1))], axis=1)  # every query meets every edge title
    query_of = np.repeat(np.arange(len(queries)), rows.shape[1])
    spec = [tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64)]
    fast = tf.function(catalog.pair_features, input_signature=spec)(tf.constant(queries), query_of, rows.reshape(-1))
    slow = scorer.pair_features(tf.constant([queries[i] for i in query_of]), tf.constant([titles[r] for r in rows.reshape(-1)]))
    assert set(fast) == set(PAIR_FEATURES)
    for name in PAIR_FEATURES:
        np.testing.assert_allclose(fast[name].numpy(), slow[name].numpy(), rtol=0, atol=1e-5, err_msg=name)
    assert (slow["bm25"].numpy() > 0).sum() > 1000 and (slow["char_trigram_jaccard"].numpy() > 0.2).sum() > 20
    long_terms = scorer.index.term_ids(titles[-1])  # read up to MAX_TEXT_BYTES
    assert float(tf.reduce_max(fast["title_terms"])) == len(long_terms) < len(scorer.index.term_ids(titles[-1], max_bytes=None))

    # One query, pairs in any order and repeated; no pairs at all.
    again = catalog.pair_features(tf.constant(queries[:1]), [0, 0, 0], [len(titles) - 1, 3, 3])
    expected = scorer.pair_features(tf.constant(queries[:1] * 3), tf.constant([titles[-1], titles[3], titles[3]]))
    for name in PAIR_FEATURES:
        np.testing.assert_array_equal(again[name].numpy(), expected[name].numpy(), err_msg=name)
    empty = catalog.pair_features(tf.constant([], tf.string), tf.zeros([0], tf.int64), tf.zeros([0], tf.int64))
    assert all(v.shape == (0,) for v in empty.values())
