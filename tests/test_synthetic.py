"""SYNTHETIC generators and CSV writers: deterministic, well-formed, loadable by tfrec's strict readers."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before TensorFlow is imported)

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from tfrec.config import ConfigError, load_config
from tfrec.data import RecommendationData, SearchData, load_data
from tfrec.data.readers import leave_one_out
from tfrec.data.synthetic import (
    synthetic_catalog,
    synthetic_interactions,
    synthetic_judgments,
    write_interactions_csv,
    write_search_csv,
)

SMALL = ["evaluation.ks=[10]", "retrieval.top_k=10"]


def search_config(folder: Path, *extra: str):
    """A search-csv config over a folder written by write_search_csv."""
    return load_config(
        None,
        [
            "data.dataset=search-csv",
            "data.dir=%s" % folder,
            "data.catalog.numeric_columns=[price]",
            "data.catalog.categorical_columns=[category]",
            *extra,
        ],
    )


def interactions_config(folder: Path, *extra: str):
    """An interactions-csv config over a folder written by write_interactions_csv."""
    return load_config(
        None,
        [
            "data.dataset=interactions-csv",
            "data.dir=%s" % folder,
            "data.interactions.rating_column=rating",
            "data.catalog.numeric_columns=[price]",
            "data.catalog.categorical_columns=[category]",
            *extra,
        ],
    )


def _same_catalog(a, b) -> bool:
    return (
        a.ids.tolist() == b.ids.tolist()
        and a.texts["title"].tolist() == b.texts["title"].tolist()
        and np.array_equal(a.numeric["price"], b.numeric["price"])
        and a.categorical["category"].tolist() == b.categorical["category"].tolist()
    )


# ----------------------------------------------------------------------------- generators


def test_catalog_deterministic_per_seed():
    """The same seed gives the same catalog; another seed gives other titles, prices and categories."""
    assert _same_catalog(synthetic_catalog(120, seed=3), synthetic_catalog(120, seed=3))
    a, b = synthetic_catalog(120, seed=3), synthetic_catalog(120, seed=4)
    assert a.ids.tolist() == b.ids.tolist()  # ids are positional
    assert a.texts["title"].tolist() != b.texts["title"].tolist()
    assert not np.array_equal(a.numeric["price"], b.numeric["price"])


def test_catalog_ids_unique_and_columns_well_formed():
    """Catalog ids are unique, every product has a title, a positive price and a known category."""
    cat = synthetic_catalog(300, seed=0)
    assert len(cat) == 300 and len(set(cat.ids.tolist())) == 300
    assert cat.index_of(cat.ids.tolist()).tolist() == list(range(300))
    assert all(isinstance(t, str) and t for t in cat.texts["title"].tolist())
    assert cat.numeric["price"].dtype == np.float32 and (cat.numeric["price"] > 0).all()
    assert set(cat.categorical["category"].tolist()) == {"tools", "paint", "garden", "lighting"}


def test_judgments_deterministic_per_seed():
    """The same seed gives identical judgments; another seed gives different ones."""
    cat = synthetic_catalog(200, seed=0)
    a, b, c = (synthetic_judgments(cat, 50, seed=s) for s in (1, 1, 2))
    assert a.queries.tolist() == b.queries.tolist()
    np.testing.assert_array_equal(a.products, b.products)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.queries.tolist() != c.queries.tolist()


def test_judgments_labels_in_range_and_pairs_unique():
    """Labels lie in [1, 3], products are catalog rows, (query, product) pairs are unique, n queries as asked."""
    cat = synthetic_catalog(200, seed=0)
    for seed in (0, 1, 2):
        j = synthetic_judgments(cat, n_queries=120, per_query=6, seed=seed)
        assert j.labels.dtype == np.float32 and j.products.dtype == np.int32
        assert j.labels.min() >= 1.0 and j.labels.max() <= 3.0
        assert ((j.products >= 0) & (j.products < len(cat))).all()
        pairs = list(zip(j.queries.tolist(), j.products.tolist()))
        assert len(set(pairs)) == len(pairs)
        assert j.n_queries == 120
        assert set(Counter(j.queries.tolist()).values()) <= {5, 6}  # anchor may repeat one of the others


def test_judgments_have_learnable_structure():
    """Products whose title holds every query word score higher than products sharing no query word."""
    cat = synthetic_catalog(200, seed=0)
    j = synthetic_judgments(cat, 100, seed=0)
    words = [set(t.lower().split()) for t in cat.texts["title"].tolist()]
    full, none = [], []
    for q, p, label in zip(j.queries.tolist(), j.products.tolist(), j.labels.tolist()):
        query_words = set(q.split()[:2])
        shared = len(query_words & words[p])
        (full if shared == len(query_words) else none if shared == 0 else []).append(label)
    assert len(full) >= 100 and len(none) >= 100
    assert np.mean(full) > 2.7 and np.mean(none) < 1.3


def test_interactions_deterministic_and_time_ordered():
    """The same seed gives the same log; timestamps strictly increase within each user; sizes are in range."""
    cat = synthetic_catalog(200, seed=0)
    a, b = synthetic_interactions(cat, 40, seed=5), synthetic_interactions(cat, 40, seed=5)
    c = synthetic_interactions(cat, 40, seed=6)
    for key in ("users", "items", "timestamps", "ratings"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.items.tolist() != c.items.tolist()
    stamps: dict[str, list[int]] = defaultdict(list)
    for user, stamp in zip(a.users.tolist(), a.timestamps.tolist()):
        stamps[user].append(stamp)
    assert len(stamps) == 40
    assert all(3 <= len(s) <= 12 for s in stamps.values())
    assert all(np.all(np.diff(s) > 0) for s in stamps.values())
    assert a.timestamps.dtype == np.int64 and a.items.dtype == np.int32
    assert ((a.items >= 0) & (a.items < len(cat))).all()
    assert set(a.ratings.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_interactions_users_stay_mostly_in_one_category():
    """Most of a user's events fall in that user's dominant category."""
    cat = synthetic_catalog(200, seed=0)
    log = synthetic_interactions(cat, 50, events_per_user=(10, 20), seed=0)
    category = cat.categorical["category"]
    by_user: dict[str, Counter] = defaultdict(Counter)
    for user, item in zip(log.users.tolist(), log.items.tolist()):
        by_user[user][category[item]] += 1
    dominant = sum(c.most_common(1)[0][1] for c in by_user.values())
    assert dominant / len(log) > 0.75


# ----------------------------------------------------------------------------- CSV writers


def test_write_search_csv_deterministic(tmp_path):
    """Two writes with one seed give byte-identical files; another seed changes them."""
    a = write_search_csv(tmp_path / "a", seed=2)
    b = write_search_csv(tmp_path / "b", seed=2)
    c = write_search_csv(tmp_path / "c", seed=3)
    for name in ("products.csv", "train.csv", "valid.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()


def test_write_search_csv_loads_in_strict_mode(tmp_path):
    """write_search_csv output loads as search-csv in strict mode and round-trips the generated data."""
    folder = write_search_csv(tmp_path / "search", n_items=200, n_queries=100, seed=0)
    loaded = search_config(folder, *SMALL)
    assert loaded.config.data.strict is True
    data = load_data(loaded)
    assert isinstance(data, SearchData) and data.name == "search-csv" and data.drops.total == 0
    cat = synthetic_catalog(200, seed=0)
    assert data.catalog.ids.tolist() == cat.ids.tolist()
    assert data.catalog.texts["title"].tolist() == cat.texts["title"].tolist()
    np.testing.assert_allclose(data.catalog.numeric["price"], cat.numeric["price"], atol=0.006)
    assert data.catalog.categorical["category"].tolist() == cat.categorical["category"].tolist()
    j = synthetic_judgments(cat, 100, seed=0)
    train_q, valid_q = set(data.train.queries.tolist()), set(data.valid.queries.tolist())
    assert not train_q & valid_q and len(train_q) == 80 and len(valid_q) == 20
    got = Counter(zip(np.concatenate([data.train.queries, data.valid.queries]).tolist(), np.concatenate([data.train.products, data.valid.products]).tolist()))
    assert got == Counter(zip(j.queries.tolist(), j.products.tolist()))
    labels = {(q, p): l for q, p, l in zip(j.queries.tolist(), j.products.tolist(), j.labels.tolist())}
    for split in (data.train, data.valid):
        for q, p, label in zip(split.queries.tolist(), split.products.tolist(), split.labels.tolist()):
            assert label == pytest.approx(labels[(q, p)], abs=1e-6)


def test_write_interactions_csv_loads_in_strict_mode(tmp_path):
    """write_interactions_csv output loads as interactions-csv (strict) into the leave-one-out split of the log."""
    folder = write_interactions_csv(tmp_path / "recs", n_items=200, n_users=30, seed=1)
    assert (folder / "interactions.csv").is_file() and (folder / "products.csv").is_file()
    data = load_data(interactions_config(folder, *SMALL))
    assert isinstance(data, RecommendationData) and data.name == "interactions-csv" and data.drops.total == 0
    cat = synthetic_catalog(200, seed=1)
    log = synthetic_interactions(cat, 30, seed=1)
    assert data.catalog.ids.tolist() == cat.ids.tolist()
    assert data.interactions.users.tolist() == log.users.tolist()
    np.testing.assert_array_equal(data.interactions.items, log.items)
    np.testing.assert_array_equal(data.interactions.timestamps, log.timestamps)
    np.testing.assert_array_equal(data.interactions.ratings, log.ratings)
    split = leave_one_out(log)
    assert len(data.valid) == 30 == split.held_out_test  # every synthetic user has >= 3 events
    for got, expected in ((data.train, split.train), (data.valid, split.valid)):
        np.testing.assert_array_equal(got.targets, expected.targets)
        assert got.users.tolist() == expected.users.tolist()
        np.testing.assert_array_equal(got.history_lengths(), expected.history_lengths())


def test_default_ks_exceed_a_small_catalog(tmp_path):
    """Default evaluation.ks (up to 1000) on a 200-item catalog is a ConfigError naming evaluation.ks."""
    folder = write_search_csv(tmp_path / "search", n_items=200, n_queries=20, seed=0)
    with pytest.raises(ConfigError) as info:
        load_data(search_config(folder))
    assert info.value.key == "evaluation.ks"
    assert "evaluation.ks" in str(info.value) and "1000" in str(info.value)
    recs = write_interactions_csv(tmp_path / "recs", n_items=200, n_users=10, seed=0)
    with pytest.raises(ConfigError, match="evaluation.ks"):
        load_data(interactions_config(recs))


def test_top_k_above_catalog_names_retrieval_top_k(tmp_path):
    """With ks fitting but retrieval.top_k above the catalog size, the ConfigError names retrieval.top_k."""
    folder = write_search_csv(tmp_path / "search", n_items=60, n_queries=20, seed=0)
    with pytest.raises(ConfigError) as info:
        load_data(search_config(folder, "evaluation.ks=[10]"))
    assert info.value.key == "retrieval.top_k" and "60" in str(info.value)
    data = load_data(search_config(folder, "evaluation.ks=[10]", "retrieval.top_k=60"))
    assert len(data.catalog) == 60


def test_larger_catalog_accepts_default_cutoffs(tmp_path):
    """With 1000 items the default ks [10, 100, 1000] and top_k 100 are accepted."""
    folder = write_search_csv(tmp_path / "big", n_items=1000, n_queries=10, seed=0)
    data = load_data(search_config(folder))
    assert len(data.catalog) == 1000 and len(data.train) > 0
