"""``tf.data`` pipelines for the three training shapes: retrieval pairs, ranking lists, sequences.

Examples are assembled with vectorized numpy from the loaded tables, then sliced, shuffled
(seeded, so a seed fixes the order of every epoch) and batched by ``tf.data``; no per-example
Python runs while training. Padding conventions: catalog index -1, id "", label -1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from tfrec import compat
from tfrec.data.tables import Catalog, Judgments, Sequences

PAD_INDEX = -1
PAD_LABEL = -1.0  # TF-Ranking treats labels < 0 as padding


def _finish(tf: Any, features: dict, *, batch_size: int, seed: int, shuffle: bool, shuffle_buffer: int, drop_remainder: bool) -> Any:
    """Slice ``features`` into a batched, prefetched dataset; shuffle each epoch when asked."""
    n = len(next(iter(features.values())))
    ds = tf.data.Dataset.from_tensor_slices(features)
    if shuffle and n > 1:
        ds = ds.shuffle(min(shuffle_buffer, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def retrieval_pair_arrays(judgments: Judgments, catalog: Catalog, min_relevance: float, text_fields: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """(query, positive product) pairs: judgments with label >= ``min_relevance``, as columns."""
    keep = judgments.labels >= min_relevance
    products = judgments.products[keep]
    return {
        "query": judgments.queries[keep].astype(str),
        "product_index": products.astype(np.int32),
        "product_id": catalog.ids[products].astype(str),
        "product_text": catalog.text(text_fields)[products].astype(str),
        "relevance": judgments.labels[keep].astype(np.float32),
    }


def retrieval_pairs(
    judgments: Judgments,
    catalog: Catalog,
    *,
    min_relevance: float,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    shuffle_buffer: int = 10_000,
    drop_remainder: bool = False,
    text_fields: Optional[list[str]] = None,
) -> Any:
    """Batches of {query, product_index, product_id, product_text, relevance} for retrieval training."""
    tf = compat.tensorflow()
    arrays = retrieval_pair_arrays(judgments, catalog, min_relevance, text_fields)
    if len(arrays["query"]) == 0:
        raise ValueError("no judgment in %s has relevance >= %g: no retrieval pairs" % (judgments.source, min_relevance))
    return _finish(tf, arrays, batch_size=batch_size, seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer, drop_remainder=drop_remainder)


@dataclass
class RankingLists:
    """Per-query lists of judged products, padded/truncated to ``list_size``."""

    queries: np.ndarray  # [n] str
    products: np.ndarray  # [n, list_size] int32 catalog rows, -1 = padding
    labels: np.ndarray  # [n, list_size] float32, -1 = padding
    truncated_lists: int  # queries with more than list_size judged products
    dropped_items: int  # judgments cut off by truncation

    @property
    def mask(self) -> np.ndarray:
        """True where a list position holds a real product."""
        return self.products >= 0


def build_ranking_lists(judgments: Judgments, list_size: int, seed: int) -> RankingLists:
    """Group judgments by query; the order inside a list is a seeded shuffle, so truncation is unbiased."""
    n = len(judgments)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    queries = judgments.queries.astype(str)
    order = shuffled[np.argsort(queries[shuffled], kind="stable")]  # grouped by query, shuffled within
    grouped = queries[order]
    if n == 0:
        empty = np.zeros((0, list_size))
        return RankingLists(grouped, empty.astype(np.int32), empty.astype(np.float32), 0, 0)
    starts = np.concatenate([[0], np.flatnonzero(grouped[1:] != grouped[:-1]) + 1])
    counts = np.diff(np.concatenate([starts, [n]]))
    group = np.repeat(np.arange(len(starts)), counts)
    position = np.arange(n) - starts[group]
    keep = position < list_size
    products = np.full((len(starts), list_size), PAD_INDEX, dtype=np.int32)
    labels = np.full((len(starts), list_size), PAD_LABEL, dtype=np.float32)
    products[group[keep], position[keep]] = judgments.products[order[keep]]
    labels[group[keep], position[keep]] = judgments.labels[order[keep]]
    return RankingLists(
        queries=grouped[starts].astype(object),
        products=products,
        labels=labels,
        truncated_lists=int((counts > list_size).sum()),
        dropped_items=int((~keep).sum()),
    )


def ranking_lists(
    judgments: Judgments,
    catalog: Catalog,
    *,
    list_size: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    shuffle_buffer: int = 10_000,
    text_fields: Optional[list[str]] = None,
) -> Any:
    """Batches of {query, product_index, product_id, product_text, label, mask} lists for listwise ranking."""
    tf = compat.tensorflow()
    lists = build_ranking_lists(judgments, list_size, seed)
    mask = lists.mask
    safe = np.where(mask, lists.products, 0)
    features = {
        "query": lists.queries.astype(str),
        "product_index": lists.products,
        "product_id": np.where(mask, catalog.ids[safe], "").astype(str),
        "product_text": np.where(mask, catalog.text(text_fields)[safe], "").astype(str),
        "label": lists.labels,
        "mask": mask,
    }
    return _finish(tf, features, batch_size=batch_size, seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer, drop_remainder=False)


def sequence_arrays(sequences: Sequences, catalog: Catalog, max_history: int) -> dict[str, np.ndarray]:
    """(history -> next item) examples as fixed-width columns, the newest item last."""
    history, length = sequences.padded_histories(max_history)
    valid = history >= 0
    return {
        "user_id": sequences.users.astype(str),
        "history_index": history,
        "history_id": np.where(valid, catalog.ids[np.where(valid, history, 0)], "").astype(str),
        "history_length": length,
        "target_index": sequences.targets.astype(np.int32),
        "target_id": catalog.ids[sequences.targets].astype(str),
    }


def sequences_dataset(
    sequences: Sequences,
    catalog: Catalog,
    *,
    max_history: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    shuffle_buffer: int = 10_000,
    drop_remainder: bool = False,
) -> Any:
    """Batches of {user_id, history_index, history_id, history_length, target_index, target_id}."""
    tf = compat.tensorflow()
    if len(sequences) == 0:
        raise ValueError("no (history -> next item) examples in %s" % sequences.source)
    arrays = sequence_arrays(sequences, catalog, max_history)
    return _finish(tf, arrays, batch_size=batch_size, seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer, drop_remainder=drop_remainder)
