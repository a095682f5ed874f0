"""Catalog columns in the product tower and the ranker: a search-csv catalog with a numeric price and a categorical brand.

The towers and the ranker's feature layer look the columns up by product id in-graph (training
pairs, the catalog encoding and the export pass only ids and titles); without configured columns
the towers and the ranker head are exactly the plain ones.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import tfrec
from tfrec import compat
from tfrec.config.loader import LoadedConfig, load_config
from tfrec.data.datasets import load_data
from tfrec.data.stats import dataset_stats, format_stats
from tfrec.data.synthetic import write_search_csv
from tfrec.evaluation.search import SearchEvalSet
from tfrec.lexical import LexicalIndex, LexicalScorer
from tfrec.ranking.model import LEXICAL_FEATURES
from tfrec.retrieval.train import encode_catalog, encode_queries, train_retrieval, training_pairs
from tfrec.runs import RunFolder
from tfrec.search.export import RankerExport, load_search_models
from tfrec.search.features import RankerFeatures
from tfrec.search.models import build_retrieval, catalog_columns, catalog_features, ranker_head, retrieval_model
from tfrec.search.ranker_data import PAD, CandidateLists, head_inputs, judged_lists
from tfrec.search.tuning import RankerTrialObjective
from tfrec.serving.service import RANKER_MODEL

tf = compat.tensorflow()

COLUMNS = ["data.catalog.numeric_columns=[price]", "data.catalog.categorical_columns=[brand]"]
# A tiny whole run: frozen BERT, one epoch each, no baselines, one ranking loss; no product-id embeddings,
# so a product outside the catalog and one whose price and brand are both missing look alike.
TINY_RUN = ["retrieval.epochs=1", "retrieval.batch_size=16", "retrieval.product_id=false", "ranking.epochs=1",
            "ranking.negatives=4", "ranking.candidate_losses=[]", "evaluation.baselines=false", "evaluation.bootstrap_resamples=100"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """A SYNTHETIC search-csv folder whose products.csv gains a brand column (the title's first word).

    Product P00001 has neither price nor brand (missing values), like an id outside the catalog.
    """
    folder = write_search_csv(tmp_path_factory.mktemp("shop"), n_items=60, n_queries=30, seed=0)
    path = folder / "products.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "brand"])
        writer.writeheader()
        for row in rows:
            missing = row["product_id"] == "P00001"
            writer.writerow({**row, "price": "" if missing else row["price"], "brand": "" if missing else row["title"].split()[0]})
    return folder


def shop_config(folder: Path, *extra: str) -> LoadedConfig:
    """A frozen-BERT search-csv config over the shop (frozen: only the fusion head trains, which is what is tested)."""
    return load_config(None, ["data.dataset=search-csv", "data.dir=%s" % folder, "evaluation.ks=[10]", "retrieval.top_k=10",
                              "retrieval.text_training=frozen", *extra])


def test_without_catalog_columns_the_towers_are_the_plain_ones(shop):
    """No numeric/categorical columns configured: no lookup, the same variables and the same numbers as without a catalog."""
    loaded = shop_config(shop)
    catalog = load_data(loaded).catalog
    vocabulary = list(catalog.ids[:10])
    tf.keras.utils.set_random_seed(1)
    with_catalog = build_retrieval(retrieval_model(loaded.config, vocabulary, catalog=catalog))
    tf.keras.utils.set_random_seed(1)
    plain = build_retrieval(retrieval_model(loaded.config, vocabulary))
    assert with_catalog.catalog_features is None and not with_catalog.product_fusion.numeric and not with_catalog.product_fusion.categorical
    assert [tuple(v.shape) for v in with_catalog.weights] == [tuple(v.shape) for v in plain.weights]
    assert [v.name.split("/", 1)[1] for v in with_catalog.product_fusion.weights] == [v.name.split("/", 1)[1] for v in plain.product_fusion.weights]
    for a, b in zip(with_catalog.product_fusion.weights, plain.product_fusion.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_price_and_brand_feed_the_product_tower_and_the_report_lists_them(shop):
    """The columns are looked up by id, standardized / embedded, trained, and change the product vectors."""
    loaded = shop_config(shop, *COLUMNS)
    cfg, data = loaded.config, load_data(loaded)
    catalog = data.catalog
    prices, brands = catalog.numeric["price"], catalog.categorical["brand"]
    assert np.isnan(prices[1]) and brands[1] == ""  # P00001: both missing

    # The run's data statistics (printed by tfrec train, saved as data_stats.json) list both columns.
    stats = dataset_stats(data, cfg)["catalog"]
    assert stats["numeric_price_missing"] == 1
    assert stats["categorical_brand_values"] == len(set(brands.tolist()) - {""}) and stats["categorical_brand_missing"] == 1
    lines = format_stats(dataset_stats(data, cfg))
    assert any("numeric_price_missing: 1" in line for line in lines) and any("categorical_brand_values" in line for line in lines)

    with pytest.raises(ValueError, match="need the catalog to look them up"):
        retrieval_model(cfg, [])
    tf.keras.utils.set_random_seed(0)
    model = build_retrieval(retrieval_model(cfg, [], catalog=catalog))  # no id embedding: only the columns tell products apart
    fusion = model.product_fusion
    assert fusion.numeric == ["price"] and fusion.numeric_mean["price"] == pytest.approx(float(np.nanmean(prices)), rel=1e-5)
    assert fusion.numeric_variance["price"] == pytest.approx(float(np.nanvar(prices)), rel=1e-4)
    assert list(fusion.categorical) == ["brand"] and fusion.categorical["brand"] == sorted(set(brands.tolist()) - {""})

    looked_up = model.catalog_features(tf.constant(["P00000", "P00001", "not-in-the-catalog"]))
    np.testing.assert_allclose(looked_up["price"].numpy()[:1], prices[:1])
    assert np.isnan(looked_up["price"].numpy()[1:]).all()
    assert looked_up["brand"].numpy().tolist() == [brands[0].encode(), b"", b""]

    # One title under the ids of products with different (price, brand), a product with both missing, an unknown id.
    other = int(np.flatnonzero((brands != brands[0]) & np.isfinite(prices))[0])
    ids = tf.constant(["P00000", catalog.ids[other], "P00001", "not-in-the-catalog"])
    titles = tf.constant([catalog.texts["title"][0]] * 4)
    # The residual fusion starts at zero: before training, the tower is the zero-shot title vector.
    start = model.product_vectors(ids, titles).numpy()
    np.testing.assert_allclose(start, model.title_encoder(titles).numpy(), atol=1e-6)

    brand_table = next(v for v in fusion.weights if "brand_embedding" in v.name)
    before = brand_table.numpy().copy()
    pairs = training_pairs(data.train, catalog, min_relevance=cfg.retrieval.min_relevance, max_pairs=32, seed=0)
    train_retrieval(model, pairs, epochs=3, batch_size=16, learning_rate=1e-5, head_learning_rate=1e-2, seed=0, verbose=0)
    assert not np.array_equal(brand_table.numpy(), before)  # the brand embedding trained

    vectors = model.product_vectors(ids, titles).numpy()
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4  # same title, other price and brand: another vector
    np.testing.assert_allclose(vectors[2], vectors[3], atol=1e-6)  # unknown id = missing price and brand
    assert np.abs(vectors[0] - start[0]).max() > 1e-4

    # Catalog encoding (ids and titles only) reads the same columns in-graph.
    encoded = encode_catalog(model, catalog.ids.astype(str), catalog.text().astype(str))
    direct = model.product_vectors(tf.constant(catalog.ids[:8].astype(str)), tf.constant(catalog.text()[:8].astype(str))).numpy()
    np.testing.assert_allclose(encoded[:8], direct, atol=1e-5)


def _one_item_inputs(width: int = 1) -> dict:
    """Placeholder head inputs of one list of ``width`` items (query and product vectors of size 4 and 3)."""
    return {"query_vector": tf.ones([1, 4]), "product_vector": tf.ones([1, width, 4]), "query_zero": tf.ones([1, 3]),
            "product_zero": tf.ones([1, width, 3]), "lexical": tf.ones([1, width, len(LEXICAL_FEATURES)]),
            "product_id": tf.fill([1, width], "P00000")}


def test_without_catalog_columns_the_ranker_is_the_plain_one(shop):
    """No columns configured: the same head variables and numbers whether given the catalog or not, and no extra inputs."""
    loaded = shop_config(shop)
    cfg, data = loaded.config, load_data(loaded)
    catalog = data.catalog
    assert catalog_features(cfg, catalog) is None and catalog_columns(cfg) is None
    heads, scores = [], []
    for given in (catalog, None):
        tf.keras.utils.set_random_seed(1)
        head = ranker_head(cfg, None, given)
        scores.append(head(_one_item_inputs(2)).numpy())
        heads.append(head)
    with_catalog, plain = heads
    assert with_catalog.columns is None and with_catalog.column_inputs == () and with_catalog.missing_columns([1, 1]) == {}
    assert [v.name.split("/", 1)[-1] for v in with_catalog.weights] == [v.name.split("/", 1)[-1] for v in plain.weights]
    for a, b in zip(with_catalog.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(scores[0], scores[1])

    titles, ids = catalog.text().astype(str), catalog.ids.astype(str)
    scorer = LexicalScorer(LexicalIndex.build(list(titles), ["drill"]))
    features = RankerFeatures(scorer.pair_features, np.ones((len(ids), 4), np.float32), np.ones((len(ids), 3), np.float32), ids, titles,
                              catalog_columns=catalog_features(cfg, catalog))
    computed = features({"query": tf.constant(["drill"]), "query_vector": tf.ones([1, 4]), "query_zero": tf.ones([1, 3]),
                         "product_id": tf.constant([ids[:2]]), "title": tf.constant([titles[:2]])})
    assert set(computed) == {"query_vector", "query_zero", "product_vector", "product_zero", "lexical", "product_id"}
    assert features.column_dtypes == {}


@pytest.fixture(scope="module")
def column_run(shop, tmp_path_factory) -> Path:
    """A whole tiny ``tfrec.train`` run over the shop with the price and brand columns configured."""
    out = tmp_path_factory.mktemp("column-run")
    loaded = shop_config(shop, *COLUMNS, *TINY_RUN, "run.output_dir=%s" % out, "text.cache_dir=%s" % (out / "cache"))
    return tfrec.train(loaded)


def test_a_run_with_catalog_columns_trains_both_models_on_them_and_its_report_lists_them(column_run):
    run = RunFolder(column_run)
    metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
    listed = {"numeric": ["price"], "categorical": ["brand"]}
    assert metrics["training"]["ranker"]["catalog_columns"] == listed
    assert metrics["training"]["retrieval"]["catalog_columns"] == listed
    assert metrics["training"]["ranker"]["epochs"] == 1
    stats = json.loads(run.stats.read_text(encoding="utf-8"))["catalog"]
    assert stats["numeric_price_missing"] == 1 and stats["categorical_brand_missing"] == 1 and stats["categorical_brand_values"] > 1
    # The report's run line names the columns; its training section lists each model's.
    report = run.report_markdown.read_text(encoding="utf-8")
    assert "catalog columns in the models: price (numeric), brand (categorical)" in report
    training = report[report.index("## Training"):]
    lines = [line for line in training.splitlines() if line.lower().lstrip("-* ").startswith("catalog columns")]
    # One line per kind, for each of the two models (the two towers and the ranker).
    assert sorted(lines) == sorted(["- Catalog columns: Numeric: price", "- Catalog columns: Categorical: brand"] * 2), lines


def test_the_ranker_scores_catalog_columns_alike_in_training_and_in_the_exported_model(shop, column_run, tmp_path):
    """Head inputs carry each item's price and brand; they move its score; the saved search_ranker scores as training does."""
    loaded = shop_config(shop, *COLUMNS)
    cfg, data = loaded.config, load_data(loaded)
    prices, brands = data.catalog.numeric["price"], data.catalog.categorical["brand"]
    models = load_search_models(column_run)
    head = models.head
    assert head.column_inputs == ("catalog_price", "catalog_brand")
    assert head.columns.numeric == ["price"] and head.columns.categorical["brand"] == sorted(set(brands.tolist()) - {""})
    assert head.columns.numeric_mean["price"] == pytest.approx(float(np.nanmean(prices)), rel=1e-5)

    # The training path: the stage's head inputs of the valid queries' judged products.
    es = SearchEvalSet.from_judgments(data.valid)
    queries = np.asarray(es.queries).astype(str)
    judged = judged_lists(es)
    # One padding position per list (the synthetic queries all have as many judged products).
    lists = CandidateLists(judged.query_index, np.pad(judged.rows, ((0, 0), (0, 1)), constant_values=PAD),
                           np.pad(judged.labels, ((0, 0), (0, 1)), constant_values=PAD))
    q_dense = encode_queries(models.retrieval, list(queries))
    q_zero = models.zero_encoder(tf.constant(queries)).numpy()
    inputs = head_inputs(lists, queries, q_dense, q_zero, models.catalog_dense, models.catalog_zero, models.ids, models.titles,
                         models.lexical.pair_features, catalog_columns=catalog_features(cfg, data.catalog))
    mask, rows = lists.mask, lists.rows[lists.mask]
    assert (~mask).any()  # padding too
    np.testing.assert_array_equal(inputs["catalog_price"][mask], prices[rows])
    assert inputs["catalog_brand"][mask].tolist() == brands[rows].tolist()
    assert np.isnan(inputs["catalog_price"][~mask]).all() and set(inputs["catalog_brand"][~mask]) == {""}
    scores = head.predict(inputs, verbose=0)

    # Another brand, or another price, for the same item: another ranker score.
    first = (0, 0)
    other_brand = next(b for b in sorted(set(brands.tolist()) - {""}) if b != inputs["catalog_brand"][first])
    for name, value in (("catalog_brand", other_brand), ("catalog_price", float(np.nanmax(prices)) * 3 + 1.0)):
        changed = {k: v[:1].astype(object) if v.dtype.kind == "U" else v[:1].copy() for k, v in inputs.items()}
        changed[name][first] = value
        assert abs(float(head.predict(changed, verbose=0)[first]) - float(scores[first])) > 1e-6, name

    # The exported search_ranker, saved and reloaded, scores the same (query, product_id, title) rows alike.
    exported = tfrec.export(column_run, tmp_path / "export")
    ranker = tf.saved_model.load(exported[RANKER_MODEL]["path"]).signatures["serving_default"]
    query_of_item = np.repeat(lists.query_index, lists.rows.shape[1])[mask.ravel()]
    served = ranker(query=tf.constant(queries[query_of_item]), product_id=tf.constant(models.ids[rows]),
                    title=tf.constant(models.titles[rows]))["score"].numpy()
    np.testing.assert_allclose(served, scores[mask], rtol=TOLERANCE, atol=TOLERANCE)

    # An id outside the catalog gets the missing values: it scores like P00001 (price and brand missing), not like P00000.
    title = "a new product"
    pair = dict(query=tf.constant([queries[0]] * 3), product_id=tf.constant(["not-in-the-catalog", "P00001", "P00000"]),
                title=tf.constant([title] * 3))
    unknown, missing, known = ranker(**pair)["score"].numpy()
    assert unknown == pytest.approx(missing, abs=TOLERANCE) and abs(unknown - known) > 1e-6
    module = RankerExport(models.retrieval, models.zero_encoder, models.lexical, head, models.catalog_dense, models.catalog_zero,
                          models.ids, models.titles, catalog_columns=models.catalog_columns)
    vectors = module.features.encode_queries(pair["query"], 8)
    features = module.pair_inputs(pair["query"], pair["product_id"], pair["title"], vectors["query_vector"], vectors["query_zero"])
    assert np.isnan(features["catalog_price"].numpy()[:2, 0]).all() and features["catalog_brand"].numpy()[:2, 0].tolist() == [b"", b""]
    with pytest.raises(ValueError, match="catalog columns"):
        RankerExport(models.retrieval, models.zero_encoder, models.lexical, head, models.catalog_dense, models.catalog_zero,
                     models.ids, models.titles)


def test_a_tuning_trial_feeds_the_catalog_columns_to_its_head(shop, tmp_path):
    """``tfrec tune``'s ranker trials build their lists' inputs and heads with the configured columns, as tfrec train does."""
    loaded = shop_config(shop, *COLUMNS, "ranking.epochs=1", "ranking.negatives=4", "text.cache_dir=%s" % tmp_path)
    cfg, data = loaded.config, load_data(loaded)
    objective = RankerTrialObjective(data.catalog, data.train, cfg.text, holdout_fraction=0.2, seed=0, progress=False)
    setup = objective.lists_for(cfg)
    mask = setup.fit_lists.mask
    np.testing.assert_array_equal(setup.fit_inputs["catalog_price"][mask], data.catalog.numeric["price"][setup.fit_lists.rows[mask]])
    assert "catalog_brand" in setup.judged_inputs and "catalog_brand" in setup.candidate_inputs
    head = objective.train_head(cfg, setup)
    assert head.column_inputs == ("catalog_price", "catalog_brand")
    assert all(np.isfinite(v) for v in objective.score(head, setup).values())
