"""Seeded slices of a dataset, for smoke runs and CI (configs/quick.yaml)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from tfrec.data.tables import Catalog, Judgments, RecommendationData, SearchData


def _keep_queries(judgments: Judgments, limit: int, rng: np.random.Generator) -> Judgments:
    """The judgments of at most ``limit`` queries, chosen at random (0 = all)."""
    queries = np.unique(judgments.queries.astype(str))
    if not limit or limit >= len(queries):
        return judgments
    chosen = set(rng.choice(queries, size=limit, replace=False).tolist())
    keep = np.fromiter((q in chosen for q in judgments.queries), bool, count=len(judgments))
    return Judgments(judgments.queries[keep], judgments.products[keep], judgments.labels[keep], judgments.source)


def period_of(judgments: Judgments, period: int, periods: int) -> Judgments:
    """The judgments of the queries in ``period`` (1-based) of ``periods`` equal parts, by first appearance."""
    if periods == 1:
        return judgments
    if not 1 <= period <= periods:
        raise ValueError("period must be in 1..%d, got %d" % (periods, period))
    order = list(dict.fromkeys(judgments.queries.astype(str).tolist()))
    bounds = np.linspace(0, len(order), periods + 1).round().astype(int)
    chosen = set(order[bounds[period - 1] : bounds[period]])
    keep = np.fromiter((q in chosen for q in judgments.queries), bool, count=len(judgments))
    return Judgments(judgments.queries[keep], judgments.products[keep], judgments.labels[keep], judgments.source)


def slice_for_config(data: SearchData, cfg: Any) -> SearchData:
    """The data a config trains on: its period (data.period of data.periods), then its seeded slice (data.max_*)."""
    dc = cfg.data
    if dc.periods > 1:
        data = SearchData(catalog=data.catalog, train=period_of(data.train, dc.period, dc.periods),
                          valid=period_of(data.valid, dc.period, dc.periods), drops=data.drops, name=data.name)
    return slice_search_data(data, max_train_queries=dc.max_train_queries, max_valid_queries=dc.max_valid_queries,
                             max_products=dc.max_products, seed=cfg.run.seed)


def slice_search_data(
    data: SearchData, *, max_train_queries: int = 0, max_valid_queries: int = 0, max_products: int = 0, seed: int = 0
) -> SearchData:
    """Keep some train/valid queries and a catalog of their judged products plus random others."""
    if not (max_train_queries or max_valid_queries or max_products):
        return data
    rng = np.random.default_rng(seed)
    train = _keep_queries(data.train, max_train_queries, rng)
    valid = _keep_queries(data.valid, max_valid_queries, rng)
    n = len(data.catalog)
    judged = np.unique(np.concatenate([train.products, valid.products]))
    rows = judged
    if max_products and max_products > len(judged):
        others = np.setdiff1d(np.arange(n), judged)
        extra = rng.choice(others, size=min(max_products - len(judged), len(others)), replace=False)
        rows = np.sort(np.concatenate([judged, extra]))
    elif not max_products:
        rows = np.arange(n)
    new_row = np.full(n, -1, np.int64)
    new_row[rows] = np.arange(len(rows))
    cat = data.catalog
    catalog = Catalog(
        ids=cat.ids[rows],
        texts={k: v[rows] for k, v in cat.texts.items()},
        numeric={k: v[rows] for k, v in cat.numeric.items()},
        categorical={k: v[rows] for k, v in cat.categorical.items()},
        source=cat.source,
    )

    def remap(j: Judgments) -> Judgments:
        return Judgments(j.queries, new_row[j.products].astype(np.int32), j.labels, j.source)

    return SearchData(catalog=catalog, train=remap(train), valid=remap(valid), drops=data.drops, name=data.name)


def slice_recommendation_data(data: RecommendationData, max_users: int, seed: int) -> RecommendationData:
    """Keep a seeded sample of ``max_users`` users (all their train and valid examples); the catalog stays whole."""
    if not max_users:
        return data
    users = np.unique(np.concatenate([data.train.users.astype(str), data.valid.users.astype(str)]))
    if max_users >= len(users):
        return data
    chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return replace(data, train=data.train.take(np.isin(data.train.users.astype(str), chosen)),
                   valid=data.valid.take(np.isin(data.valid.users.astype(str), chosen)))
