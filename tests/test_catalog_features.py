"""Catalog columns in the product tower: a search-csv catalog with a numeric price and a categorical brand.

The towers look the columns up by product id in-graph (training pairs and the catalog encoding
pass only ids and titles); without configured columns the towers are exactly the plain ones.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tfrec import compat
from tfrec.config.loader import LoadedConfig, load_config
from tfrec.data.datasets import load_data
from tfrec.data.stats import dataset_stats, format_stats
from tfrec.data.synthetic import write_search_csv
from tfrec.retrieval.train import encode_catalog, train_retrieval, training_pairs
from tfrec.search.models import build_retrieval, retrieval_model

tf = compat.tensorflow()

COLUMNS = ["data.catalog.numeric_columns=[price]", "data.catalog.categorical_columns=[brand]"]


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

    with pytest.raises(ValueError, match="needs the catalog"):
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
