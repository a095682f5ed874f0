"""SYNTHETIC catalogs, judgments and interactions for fast unit tests.

Generated data has a learnable structure (queries reuse words of relevant titles, users stay
mostly inside a category) so tests can check that things train, but it is never used for a
reported quality number: those come from the real datasets.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tfrec.data.tables import Catalog, Interactions, Judgments

_BRANDS = ["Acme", "Bolt", "Cobalt", "Delta", "Everbright", "Fjord", "Granite", "Harbor"]
_KINDS = {
    "tools": ["drill", "hammer", "saw", "wrench", "screwdriver", "sander"],
    "paint": ["primer", "stain", "enamel", "sealer", "varnish", "coating"],
    "garden": ["hose", "rake", "shovel", "planter", "sprinkler", "mower"],
    "lighting": ["lamp", "bulb", "fixture", "lantern", "sconce", "chandelier"],
}
_MATERIALS = ["steel", "oak", "brass", "vinyl", "ceramic", "aluminum", "cedar", "copper"]
_COLORS = ["white", "black", "red", "gray", "bronze", "green"]


def synthetic_catalog(n_items: int = 200, seed: int = 0) -> Catalog:
    """A SYNTHETIC catalog: ids, titles from brand/material/kind words, a price and a category."""
    rng = np.random.default_rng(seed)
    categories = list(_KINDS)
    category = rng.choice(categories, size=n_items)
    titles, prices = [], []
    for i in range(n_items):
        kind = rng.choice(_KINDS[category[i]])
        size = int(rng.integers(1, 48))
        titles.append("%s %s %s %s %d in. model %d" % (rng.choice(_BRANDS), rng.choice(_COLORS), rng.choice(_MATERIALS), kind, size, i))
        prices.append(round(float(rng.lognormal(3.0, 0.8)), 2))
    return Catalog(
        ids=np.asarray(["P%05d" % i for i in range(n_items)], dtype=object),
        texts={"title": np.asarray(titles, dtype=object)},
        numeric={"price": np.asarray(prices, dtype=np.float32)},
        categorical={"category": category.astype(object)},
        source="synthetic",
    )


def synthetic_judgments(catalog: Catalog, n_queries: int = 100, per_query: int = 6, seed: int = 0) -> Judgments:
    """SYNTHETIC graded judgments in [1, 3]: products sharing more query words score higher."""
    rng = np.random.default_rng(seed)
    titles = catalog.text().tolist()
    words = [set(t.lower().split()) for t in titles]
    queries, products, labels = [], [], []
    used: set[str] = set()
    for q in range(n_queries):
        anchor = int(rng.integers(len(catalog)))
        anchor_words = titles[anchor].lower().split()
        query_words = list(rng.choice(anchor_words[:4], size=2, replace=False))
        query = " ".join(query_words)
        if query in used:  # each query string is one list: keep (query, product) pairs unique
            query = "%s %d" % (query, q)
        used.add(query)
        others = rng.choice(len(catalog), size=min(per_query - 1, len(catalog) - 1), replace=False)
        for index in {anchor, *[int(o) for o in others]}:
            overlap = len(set(query_words) & words[index]) / len(query_words)
            label = float(np.clip(1.0 + 2.0 * overlap + rng.normal(0.0, 0.2), 1.0, 3.0))
            queries.append(query)
            products.append(index)
            labels.append(round(label, 2))
    return Judgments(
        queries=np.asarray(queries, dtype=object),
        products=np.asarray(products, dtype=np.int32),
        labels=np.asarray(labels, dtype=np.float32),
        source="synthetic",
    )


def synthetic_interactions(catalog: Catalog, n_users: int = 50, events_per_user: tuple[int, int] = (3, 12), seed: int = 0) -> Interactions:
    """A SYNTHETIC log: each user mostly browses one category, with increasing timestamps."""
    rng = np.random.default_rng(seed)
    categories = catalog.categorical.get("category")
    by_category: dict = {}
    if categories is not None:
        for index, cat in enumerate(categories.tolist()):
            by_category.setdefault(cat, []).append(index)
    pools = list(by_category.values()) or [list(range(len(catalog)))]
    users, items, stamps, ratings = [], [], [], []
    for u in range(n_users):
        pool = pools[int(rng.integers(len(pools)))]
        n_events = int(rng.integers(events_per_user[0], events_per_user[1] + 1))
        t = 1_600_000_000 + int(rng.integers(0, 10_000_000))
        for _ in range(n_events):
            in_pool = rng.random() < 0.8
            items.append(int(rng.choice(pool)) if in_pool else int(rng.integers(len(catalog))))
            users.append("U%04d" % u)
            t += int(rng.integers(60, 86_400))
            stamps.append(t)
            ratings.append(float(rng.integers(1, 6)))
    return Interactions(
        users=np.asarray(users, dtype=object),
        items=np.asarray(items, dtype=np.int32),
        timestamps=np.asarray(stamps, dtype=np.int64),
        ratings=np.asarray(ratings, dtype=np.float32),
        source="synthetic",
    )


def write_search_csv(folder: Path, n_items: int = 200, n_queries: int = 100, seed: int = 0) -> Path:
    """Write a SYNTHETIC search dataset as products.csv, train.csv and valid.csv (queries split 80/20)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    catalog = synthetic_catalog(n_items, seed)
    judgments = synthetic_judgments(catalog, n_queries, seed=seed)
    with open(folder / "products.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "title", "price", "category"])
        for pid, title, price, cat in zip(catalog.ids, catalog.texts["title"], catalog.numeric["price"], catalog.categorical["category"]):
            writer.writerow([pid, title, "%.2f" % price, cat])
    distinct = sorted(set(judgments.queries.tolist()))
    valid_queries = set(distinct[:: 5])
    for name, keep_valid in (("train.csv", False), ("valid.csv", True)):
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["query", "product_id", "relevance"])
            for q, p, label in zip(judgments.queries, judgments.products, judgments.labels):
                if (q in valid_queries) == keep_valid:
                    writer.writerow([q, catalog.ids[p], "%.2f" % label])
    return folder


def write_interactions_csv(folder: Path, n_items: int = 200, n_users: int = 50, seed: int = 0) -> Path:
    """Write a SYNTHETIC recommendation dataset as products.csv and interactions.csv."""
    folder = Path(folder)
    write_search_csv(folder, n_items=n_items, n_queries=10, seed=seed)
    catalog = synthetic_catalog(n_items, seed)
    log = synthetic_interactions(catalog, n_users, seed=seed)
    with open(folder / "interactions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp", "rating"])
        for user, item, stamp, rating in zip(log.users, log.items, log.timestamps, log.ratings):
            writer.writerow([user, catalog.ids[item], stamp, "%g" % rating])
    return folder
