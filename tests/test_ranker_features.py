"""One feature definition for the ranker: real Home Depot rows through training and through the export agree.

The training path (``head_inputs`` over training lists, then ``RankerHead.predict``) and the
``search_ranker`` module (saved and reloaded as a SavedModel) compute the same features with the
same :class:`RankerFeatures` layer, and so the same scores. The ``search_retrieval`` module returns
the evaluation's hybrid top k (one :class:`HybridScorer`).
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import write_homedepot_slice
from tfrec import compat
from tfrec.data.tables import Judgments
from tfrec.evaluation.search import SearchEvalSet
from tfrec.ranking.model import LEXICAL_FEATURES, RankerHead
from tfrec.search.features import RankerFeatures
from tfrec.search.hybrid import CatalogScorer, HybridWeights
from tfrec.search.ranker_data import head_inputs, list_features, training_lists

tf = compat.tensorflow()

WEIGHTS = HybridWeights(1.0, 0.5, 0.25)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(shared_datasets, files, tmp_path_factory):
    """Untrained towers and a ranker head over a 12-query slice: training lists, their head inputs and scores."""
    from tfrec.config.schema import TextConfig
    from tfrec.lexical import LexicalIndex, LexicalScorer
    from tfrec.retrieval.model import SearchRetrievalModel
    from tfrec.retrieval.train import encode_catalog, encode_queries
    from tfrec.search.models import build_retrieval
    from tfrec.text.catalog import frozen_encoder

    folder = write_homedepot_slice(shared_datasets, tmp_path_factory.mktemp("homedepot"), n_queries=12)
    with open(folder / "products.csv", encoding="utf-8", newline="") as f:
        products = list(csv.DictReader(f))
    ids = np.array([p["product_id"] for p in products])
    titles = np.array([p["title"] for p in products])
    with open(folder / "train.csv", encoding="utf-8", newline="") as f:
        judged = list(csv.DictReader(f))
    row = {pid: i for i, pid in enumerate(ids)}
    judgments = Judgments(np.array([j["query"] for j in judged], dtype=object), np.array([row[j["product_id"]] for j in judged], np.int32),
                          np.array([float(j["relevance"]) for j in judged], np.float32))
    es = SearchEvalSet.from_judgments(judgments)
    queries = np.asarray(es.queries).astype(str)

    retrieval = build_retrieval(SearchRetrievalModel(files, list(ids[::2]), title_max_length=16, training_mode="frozen", id_dropout=0.0, seed=0))
    zero_encoder = frozen_encoder(TextConfig())
    lexical = LexicalScorer(LexicalIndex.build(list(titles), list(queries)))
    catalog_dense = encode_catalog(retrieval, ids, titles)
    catalog_zero = zero_encoder(tf.constant(titles)).numpy()
    q_dense = encode_queries(retrieval, list(queries))
    q_zero = zero_encoder(tf.constant(queries)).numpy()

    candidates = CatalogScorer(catalog_dense, catalog_zero, lexical).top_k(q_dense, q_zero, queries, WEIGHTS, 10)[0]
    lists = training_lists(es, candidates, list_size=4, negatives=3, seed=0)
    assert (~lists.mask).any() and lists.mask.sum() > 50  # real items and padding
    pair_features = tf.function(lexical.pair_features, reduce_retracing=True)
    inputs = head_inputs(lists, queries, q_dense, q_zero, catalog_dense, catalog_zero, ids, titles, pair_features)

    head = RankerHead(product_vocabulary=list(ids[::3]), id_dropout=0.0, interaction_dim=4, cross_layers=1, seed=0)
    head.adapt_lexical(inputs["lexical"][lists.mask])
    head.set_dense_fusion(catalog_dense, 0.5, 2.0)
    scores = head.predict(inputs, batch_size=4, verbose=0)
    return dict(ids=ids, titles=titles, queries=queries, retrieval=retrieval, zero_encoder=zero_encoder, lexical=lexical,
                catalog_dense=catalog_dense, catalog_zero=catalog_zero, q_dense=q_dense, q_zero=q_zero, lists=lists,
                pair_features=pair_features, inputs=inputs, head=head, scores=scores)


def _real_items(t: dict) -> dict:
    """The real (query, product_id, title) rows of the training lists, as a request sends them."""
    lists = t["lists"]
    query_of_item = np.repeat(lists.query_index, lists.rows.shape[1])[lists.mask.ravel()]
    rows = lists.rows[lists.mask]
    return {"query": t["queries"][query_of_item], "product_id": t["ids"][rows], "title": t["titles"][rows], "list": query_of_item}


def test_training_features_are_the_layer_on_catalog_rows_with_zeros_at_padding(trained):
    inputs, lists = trained["inputs"], trained["lists"]
    n, width = lists.rows.shape
    assert inputs["product_vector"].shape == (n, width, trained["catalog_dense"].shape[1])
    assert inputs["lexical"].shape == (n, width, len(LEXICAL_FEATURES))
    padding = ~lists.mask
    for name in ("product_vector", "product_zero", "lexical"):
        assert np.all(inputs[name][padding] == 0.0), name
    assert set(inputs["product_id"][padding]) == {""}
    np.testing.assert_array_equal(inputs["product_id"][lists.mask], trained["ids"][lists.rows[lists.mask]])
    np.testing.assert_array_equal(inputs["product_vector"][lists.mask], trained["catalog_dense"][lists.rows[lists.mask]])
    # BM25 of a catalog title is the catalog score of that product.
    bm25 = trained["lexical"].catalog_scores(tf.constant(trained["queries"])).numpy()
    expected = np.take_along_axis(bm25, np.maximum(lists.rows, 0), axis=1)[lists.mask]
    np.testing.assert_allclose(inputs["lexical"][..., LEXICAL_FEATURES.index("bm25")][lists.mask], expected, rtol=1e-5, atol=1e-5)
    # A few pairs per pass or many: the same numbers.
    features = RankerFeatures(trained["pair_features"], trained["catalog_dense"], trained["catalog_zero"])
    small = list_features(features, lists, trained["queries"], trained["q_dense"], trained["q_zero"], trained["ids"], trained["titles"],
                          pairs_per_pass=5)
    for name, values in inputs.items():
        np.testing.assert_array_equal(small[name], values, err_msg=name)


def test_export_layer_computes_the_training_features_of_the_same_pairs(trained):
    from tfrec.search.export import RankerExport

    items = _real_items(trained)
    module = RankerExport(trained["retrieval"], trained["zero_encoder"], trained["lexical"], trained["head"], trained["catalog_dense"],
                          trained["catalog_zero"], trained["ids"], trained["titles"])
    query = tf.constant(items["query"])
    vectors = module.features.encode_queries(query, 8)
    served = {k: v.numpy() for k, v in module.pair_inputs(query, tf.constant(items["product_id"]), tf.constant(items["title"]),
                                                          vectors["query_vector"], vectors["query_zero"]).items()}
    inputs, mask = trained["inputs"], trained["lists"].mask
    assert set(served) == set(inputs)
    for name in ("query_vector", "query_zero"):
        np.testing.assert_allclose(served[name], inputs[name][items["list"]], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)
    for name in ("product_vector", "product_zero", "lexical"):
        np.testing.assert_allclose(served[name][:, 0], inputs[name][mask], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)
    assert [i.decode() for i in served["product_id"][:, 0]] == inputs["product_id"][mask].tolist()

    # A product outside the catalog (or sent with another title) is encoded by the towers instead.
    pair = [tf.constant(["cordless drill"] * 2), tf.constant(["not-a-product", str(trained["ids"][0])]), tf.constant(["drill kit"] * 2)]
    vectors = module.features.encode_queries(pair[0], 8)
    encoded = module.pair_inputs(*pair, vectors["query_vector"], vectors["query_zero"])
    expected = trained["retrieval"].product_vectors(pair[1], pair[2]).numpy()
    np.testing.assert_allclose(encoded["product_vector"].numpy()[:, 0], expected, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(encoded["product_zero"].numpy()[:, 0], trained["zero_encoder"](pair[2]).numpy(), rtol=TOLERANCE, atol=TOLERANCE)


@pytest.fixture(scope="module")
def exported_ranker(trained, tmp_path_factory):
    """The search_ranker module as export_search builds it, through a SavedModel round trip."""
    from tfrec.search.export import RankerExport

    module = RankerExport(trained["retrieval"], trained["zero_encoder"], trained["lexical"], trained["head"], trained["catalog_dense"],
                          trained["catalog_zero"], trained["ids"], trained["titles"])
    path = tmp_path_factory.mktemp("export") / "search_ranker"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def test_exported_ranker_scores_the_training_lists_like_the_trained_head(trained, exported_ranker):
    items = _real_items(trained)
    served = exported_ranker(query=tf.constant(items["query"]), product_id=tf.constant(items["product_id"]),
                             title=tf.constant(items["title"]))
    np.testing.assert_allclose(served["score"].numpy(), trained["scores"][trained["lists"].mask], rtol=TOLERANCE, atol=TOLERANCE)


def test_retrieval_export_returns_the_evaluation_hybrid_top_k(trained):
    from tfrec.search.export import RetrievalExport

    queries = trained["queries"]
    rows, scores = CatalogScorer(trained["catalog_dense"], trained["catalog_zero"], trained["lexical"]).top_k(
        trained["q_dense"], trained["q_zero"], queries, WEIGHTS, 10)
    module = RetrievalExport(trained["retrieval"], trained["zero_encoder"], trained["lexical"], trained["catalog_dense"],
                             trained["catalog_zero"], trained["ids"], WEIGHTS, 10, chunk_rows=5)
    served = module.serve(tf.constant(queries))
    np.testing.assert_allclose(served["scores"].numpy(), scores, rtol=TOLERANCE, atol=TOLERANCE)
    # Ids agree wherever scores are not (near) ties: the export orders ties by tf.math.top_k.
    gaps = np.abs(np.diff(scores, axis=1))
    clear = np.concatenate([gaps > 1e-4, np.ones((len(scores), 1), bool)], axis=1) & np.concatenate(
        [np.ones((len(scores), 1), bool), gaps > 1e-4], axis=1)
    got = np.array([[i.decode() for i in row] for row in served["product_ids"].numpy()])
    np.testing.assert_array_equal(got[clear], trained["ids"][rows][clear])


def test_feature_layer_refuses_what_it_cannot_compute(trained):
    with pytest.raises(ValueError, match="catalog matrices, the encoders"):
        RankerFeatures(trained["pair_features"])
    with pytest.raises(ValueError, match="one row per product"):
        RankerFeatures(trained["pair_features"], trained["catalog_dense"], trained["catalog_zero"][:3])
    with pytest.raises(ValueError, match="without encoders"):
        RankerFeatures(trained["pair_features"], trained["catalog_dense"], trained["catalog_zero"]).encode_queries(tf.constant(["a"]), 4)
