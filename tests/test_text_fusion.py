"""FeatureFusion with real tf-keras layers on small generated data: cold-start ids, features, serialization, training."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before TensorFlow is imported)

import json

import numpy as np
import pytest

from tfrec import compat
from tfrec.data.synthetic import synthetic_catalog
from tfrec.text.fusion import CatalogFeatureLookup, FeatureFusion, numeric_statistics

tf = compat.tensorflow()

TEXT_DIM = 8
VOCAB = ["P00000", "P00001", "P00002", "P00003"]
CATEGORIES = ["tools", "paint", "garden"]


def make_layer(**overrides) -> FeatureFusion:
    settings = dict(
        output_dim=6,
        id_vocabulary=VOCAB,
        id_embedding_dim=4,
        categorical={"category": CATEGORIES, "brand": 5},
        categorical_embedding_dim={"category": 3, "brand": 2},
        numeric=["price"],
        numeric_mean={"price": 20.0},
        numeric_variance={"price": 100.0},
        hidden_units=[16],
        seed=1,
    )
    settings.update(overrides)
    tf.keras.utils.set_random_seed(0)
    return FeatureFusion(**settings)


def make_inputs(ids, categories=None, prices=None, text=None, brands=None) -> dict:
    n = len(ids)
    if text is None:
        text = np.tile(np.linspace(-1.0, 1.0, TEXT_DIM, dtype=np.float32), (n, 1))
    return {
        "text_embedding": tf.constant(text, tf.float32),
        "id": tf.constant(ids),
        "category": tf.constant(categories or ["tools"] * n),
        "brand": tf.constant(brands or ["Acme"] * n),
        "price": tf.constant(prices or [25.0] * n, tf.float32),
    }


def test_output_shape_and_unit_norm():
    layer = make_layer()
    out = layer(make_inputs(VOCAB[:3]))
    assert out.shape == (3, 6) and out.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, rtol=1e-5)
    raw = make_layer(normalize_output=False, layer_norm=True, dropout=0.2)(make_inputs(VOCAB[:3]))
    assert raw.shape == (3, 6) and not np.allclose(np.linalg.norm(raw.numpy(), axis=1), 1.0)
    # [B, 1] features (a common tf.data layout) are accepted too.
    column = {k: (v[:, None] if v.shape.rank == 1 else v) for k, v in make_inputs(VOCAB[:3]).items()}
    np.testing.assert_allclose(layer(column).numpy(), out.numpy(), rtol=1e-6)


@pytest.mark.parametrize("num_oov", [1, 3])
def test_out_of_vocabulary_ids_contribute_exactly_zero(num_oov):
    layer = make_layer(id_num_oov_indices=num_oov)
    ids = ["P00001", "never-seen", "P00003", "another-unseen"]
    id_part = layer.id_embedding(tf.constant(ids)).numpy()
    assert id_part.shape == (4, 4)
    assert np.all(id_part[[1, 3]] == 0.0)
    assert np.all(np.abs(id_part[[0, 2]]).sum(axis=1) > 0)
    out = layer(make_inputs(ids)).numpy()
    np.testing.assert_array_equal(out[1], out[3])  # two unseen products, same other features
    assert not np.allclose(out[0], out[1])
    # The table has one row per known id: no shared OOV row exists that could learn a bias.
    table = [w for w in layer.trainable_weights if "id_embedding" in w.name]
    assert len(table) == 1 and table[0].shape == (len(VOCAB), 4)


def test_unseen_ids_get_no_gradient_and_stay_zero_after_training():
    layer = make_layer()
    with tf.GradientTape() as tape:
        out = layer(make_inputs(["unseen-1", "unseen-2"]), training=True)
        loss = tf.reduce_sum(out)
    table = next(w for w in layer.trainable_weights if "id_embedding" in w.name)
    gradient = tape.gradient(loss, table)
    assert gradient is None or np.all(tf.convert_to_tensor(gradient).numpy() == 0.0)


def test_hashed_ids_have_no_out_of_vocabulary_notion():
    """Documented: with hashing every id lands in a bucket, unseen ones collide with seen ones."""
    layer = make_layer(id_vocabulary=None, id_hash_buckets=2)
    ids = ["P%05d" % i for i in range(20)] + ["never-seen"]
    id_part = layer.id_embedding(tf.constant(ids)).numpy()
    assert np.all(np.abs(id_part).sum(axis=1) > 0)  # unseen ids are not zeroed
    assert len(np.unique(id_part.round(6), axis=0)) <= 2  # 21 ids share 2 buckets: collisions
    assert layer(make_inputs(ids)).shape == (21, 6)


def test_id_dropout_zeroes_whole_id_vectors_only_in_training():
    layer = make_layer(id_dropout=0.5)
    ids = tf.constant([VOCAB[i % 4] for i in range(400)])
    trained = layer.id_embedding(ids, training=True).numpy()
    zero_rows = np.all(trained == 0.0, axis=1)
    assert 0.35 < zero_rows.mean() < 0.65
    inference = layer.id_embedding(ids, training=False).numpy()
    assert not np.any(np.all(inference == 0.0, axis=1))
    # Kept rows are not rescaled by 1/(1-p): they equal the inference vectors.
    np.testing.assert_array_equal(trained[~zero_rows], inference[~zero_rows])
    inputs = make_inputs(VOCAB)
    np.testing.assert_array_equal(layer(inputs, training=False).numpy(), layer(inputs).numpy())


def test_full_id_dropout_makes_seen_products_look_unseen_in_training():
    layer = make_layer(id_dropout=1.0)
    seen = layer(make_inputs(["P00002"]), training=True).numpy()
    unseen = layer(make_inputs(["not-in-vocabulary"]), training=True).numpy()
    np.testing.assert_array_equal(seen, unseen)
    assert not np.allclose(layer(make_inputs(["P00002"]), training=False).numpy(), unseen)


def test_missing_numerics_become_zero_plus_an_indicator():
    layer = make_layer()
    out = layer(make_inputs(["P00001"] * 4, prices=[float("nan"), float("inf"), 20.0, 25.0])).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], out[1])  # NaN and inf are both "missing"
    assert not np.allclose(out[0], out[2])  # missing differs from "present at the mean" (indicator)
    means, variances = numeric_statistics({"price": np.array([1.0, np.nan, 3.0, np.inf])})
    assert means == {"price": 2.0} and variances == {"price": 1.0}


def test_adapt_sets_numeric_statistics_from_data():
    catalog = synthetic_catalog(50)
    price = catalog.numeric["price"].copy()
    price[:5] = np.nan
    layer = make_layer(numeric_mean=None, numeric_variance=None)
    layer.adapt({"price": price})
    finite = price[np.isfinite(price)].astype(np.float64)
    assert layer.numeric_mean["price"] == pytest.approx(finite.mean())
    assert layer.numeric_variance["price"] == pytest.approx(finite.var())
    assert np.all(np.isfinite(layer(make_inputs(VOCAB[:2], prices=[float("nan"), 12.5])).numpy()))
    with pytest.raises(RuntimeError, match="before the layer is first called"):
        layer.adapt({"price": price})
    with pytest.raises(ValueError, match="no mean/variance"):
        make_layer(numeric_mean=None, numeric_variance=None)(make_inputs(VOCAB[:1]))


def test_unknown_categorical_values_share_the_oov_embedding():
    layer = make_layer()
    out = layer(make_inputs(["P00000"] * 3, categories=["tools", "plumbing", "flooring"])).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[1], out[2])
    assert not np.allclose(out[0], out[1])


def test_get_config_round_trip():
    layer = make_layer(id_dropout=0.25, layer_norm=True, dropout=0.1)
    inputs = make_inputs(VOCAB[:3], prices=[1.0, float("nan"), 40.0])
    expected = layer(inputs).numpy()
    config = layer.get_config()
    json.dumps(config)  # plain JSON: vocabularies and statistics unwrapped from Keras tracking
    clone = FeatureFusion.from_config(config)
    assert clone.get_config() == config
    clone(inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(inputs).numpy(), expected, rtol=1e-6)
    registered = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(registered, FeatureFusion)


def keras_model(layer: FeatureFusion):
    inputs = {
        "text_embedding": tf.keras.Input(shape=(TEXT_DIM,), dtype=tf.float32, name="text_embedding"),
        "id": tf.keras.Input(shape=(), dtype=tf.string, name="id"),
        "category": tf.keras.Input(shape=(), dtype=tf.string, name="category"),
        "brand": tf.keras.Input(shape=(), dtype=tf.string, name="brand"),
        "price": tf.keras.Input(shape=(), dtype=tf.float32, name="price"),
    }
    return tf.keras.Model(inputs, layer(inputs))


def test_savedmodel_round_trip(tmp_path):
    model = keras_model(make_layer(id_dropout=0.3))
    inputs = make_inputs(["P00001", "unseen", "P00003"], categories=["paint", "??", "garden"], prices=[3.0, float("nan"), 50.0])
    expected = model(inputs, training=False).numpy()
    tf.saved_model.save(model, str(tmp_path / "fusion"))
    loaded = tf.saved_model.load(str(tmp_path / "fusion"))
    served = loaded.signatures["serving_default"](**inputs)
    (output,) = served.values()
    np.testing.assert_allclose(output.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The Keras SavedModel path revives FeatureFusion itself (registered as "tfrec>FeatureFusion").
    model.save(str(tmp_path / "keras"), save_format="tf")
    reloaded = tf.keras.models.load_model(str(tmp_path / "keras"))
    assert any(isinstance(layer, FeatureFusion) for layer in reloaded.layers)
    np.testing.assert_allclose(reloaded(inputs, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_catalog_lookup_feeds_fusion_by_id_and_survives_a_savedmodel(tmp_path):
    """CatalogFeatureLookup: ids -> the catalog's columns in-graph, missing values for unknown ids; exported with the model."""
    catalog = synthetic_catalog(20, seed=0)
    prices, categories = catalog.numeric["price"].copy(), catalog.categorical["category"].copy()
    prices[2], categories[2] = np.nan, ""  # P00002: every column missing
    lookup = CatalogFeatureLookup(catalog.ids, numeric={"price": prices}, categorical={"category": categories})
    arguments = lookup.fusion_arguments()
    mean, variance = numeric_statistics({"price": prices})
    assert arguments == {"numeric": ["price"], "numeric_mean": mean, "numeric_variance": variance,
                         "categorical": {"category": sorted(set(categories.tolist()) - {""})}}
    ids = tf.constant(["P00000", "P00001", "P00002", "not-in-the-catalog"])
    columns = lookup(ids)
    np.testing.assert_allclose(columns["price"].numpy()[:2], prices[:2])
    assert np.isnan(columns["price"].numpy()[2:]).all()
    assert columns["category"].numpy().tolist() == [categories[0].encode(), categories[1].encode(), b"", b""]
    assert not lookup.weights  # tables, not weights: nothing to checkpoint or train

    tf.keras.utils.set_random_seed(0)
    fusion = FeatureFusion(6, hidden_units=[8], **arguments)

    class Tower(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lookup, self.fusion = lookup, fusion

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, TEXT_DIM], tf.float32)])
        def __call__(self, ids, text):
            return self.fusion({"text_embedding": text, **self.lookup(ids)})

    text = tf.constant(np.tile(np.random.default_rng(0).normal(size=(1, TEXT_DIM)), (4, 1)), tf.float32)  # one title for all
    expected = Tower()(ids, text).numpy()
    assert np.abs(expected[0] - expected[1]).max() > 1e-4  # other price and category: another vector
    np.testing.assert_allclose(expected[2], expected[3], atol=1e-6)  # unknown id = every column missing
    tower = Tower()
    tf.saved_model.save(tower, str(tmp_path / "tower"))
    served = tf.saved_model.load(str(tmp_path / "tower"))
    np.testing.assert_allclose(served(ids, text).numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="empty for every product"):
        CatalogFeatureLookup(["a", "b"], categorical={"brand": ["", ""]})
    with pytest.raises(ValueError, match="2 values for 3 ids"):
        CatalogFeatureLookup(["a", "b", "c"], numeric={"price": [1.0, 2.0]})


def test_training_a_few_steps_reduces_the_loss():
    """A real fit on SYNTHETIC data: predict the category from a hashed bag-of-words title vector."""
    catalog = synthetic_catalog(160, seed=2)
    titles = catalog.text().tolist()
    text = np.zeros((len(titles), 32), np.float32)
    for row, title in enumerate(titles):
        for word in title.lower().split():
            text[row, sum(map(ord, word)) % 32] += 1.0
    labels = np.searchsorted(sorted(set(catalog.categorical["category"])), catalog.categorical["category"])
    train_ids = catalog.ids[:120].tolist()
    layer = FeatureFusion(
        16,
        id_vocabulary=train_ids,
        id_embedding_dim=4,
        id_dropout=0.3,
        numeric=["price"],
        hidden_units=[32],
        normalize_output=False,
        seed=3,
    )
    layer.adapt({"price": catalog.numeric["price"]})
    tf.keras.utils.set_random_seed(0)
    inputs = {
        "text_embedding": tf.keras.Input(shape=(32,), name="text_embedding"),
        "id": tf.keras.Input(shape=(), dtype=tf.string, name="id"),
        "price": tf.keras.Input(shape=(), name="price"),
    }
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(layer(inputs)))
    model.compile(tf.keras.optimizers.Adam(0.01), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    features = {"text_embedding": text, "id": catalog.ids.astype(str), "price": catalog.numeric["price"]}
    before = model.evaluate(features, labels, verbose=0)
    history = model.fit(features, labels, batch_size=32, epochs=8, verbose=0)
    after = model.evaluate(features, labels, verbose=0)
    assert after < 0.5 * before, (before, history.history["loss"], after)


def test_configuration_and_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="not both"):
        FeatureFusion(id_vocabulary=VOCAB, id_hash_buckets=8)
    with pytest.raises(ValueError, match="duplicates, e.g. 'P00001'"):
        FeatureFusion(id_vocabulary=["P00001", "P00001"])
    with pytest.raises(ValueError, match="id_dropout"):
        FeatureFusion(id_dropout=1.5)
    with pytest.raises(ValueError, match="categorical_embedding_dim has no entry for brand"):
        FeatureFusion(categorical={"brand": 4}, categorical_embedding_dim={})
    with pytest.raises(ValueError, match="used twice"):
        FeatureFusion(categorical={"id": 4})
    with pytest.raises(ValueError, match="numeric_mean has no entry for price"):
        FeatureFusion(numeric=["price"], numeric_mean={}, numeric_variance={})
    layer = make_layer()
    inputs = make_inputs(VOCAB[:2])
    del inputs["price"]
    with pytest.raises(ValueError, match="inputs lack price"):
        layer(inputs)
    text_only = FeatureFusion(4, hidden_units=[])
    assert text_only({"text_embedding": tf.ones((2, TEXT_DIM))}).shape == (2, 4)
    with pytest.raises(ValueError, match="no id feature"):
        text_only.id_embedding(tf.constant(["x"]))
