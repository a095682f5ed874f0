"""The recommendation baselines every report compares against, scored with :mod:`tfrec.evaluation.recommend`.

1. Popularity: every user gets the items most interacted with in training
   (:func:`~tfrec.evaluation.recommend.item_counts`: each user's interactions once, not once per
   prefix example), ties by lower item row.
2. Zero-shot text: the cosine between each item's frozen text vector and the mean of the
   (normalised) text vectors of the user's history items. No training.

On Amazon Scientific valid (2,928 users, 1,585 items, full ranking, nothing excluded):
popularity Recall@10 0.0529 (the README's 0.053); zero-shot MiniLM 0.1168 with the default
text config (``max_length`` 32) and 0.1233 (the README's 0.123) with ``max_length`` 128: 90% of
these texts (title, category path, brand; median 48 tokens) are longer than 32 tokens, and
at 32 the truncated texts of 40 more items encode identically (1,545 distinct vectors, not 1,575).
Importing this module does not import TensorFlow; the text vectors are passed in
(``tfrec.text.catalog.catalog_text_features``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tfrec.data.tables import Sequences
from tfrec.evaluation.recommend import dot_scores, top_k_from_vectors, top_k_shared_scores
from tfrec.evaluation.recommend import item_counts as training_item_counts

BASELINES = ("popularity", "zero_shot_text")
BASELINE_LABELS = {"popularity": "Popularity", "zero_shot_text": "Zero-shot MiniLM (history mean)"}


def popularity_scores(item_counts: np.ndarray) -> np.ndarray:
    """float64 [n_items]: the training interaction count of each item as its score."""
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise ValueError("item_counts must be a 1-D array of counts >= 0, got shape %s" % (counts.shape,))
    return counts


def popularity_score_matrix(item_counts: np.ndarray, n_users: int) -> np.ndarray:
    """[n_users, n_items] read-only view: the same popularity row for every user (no copy)."""
    if n_users < 0:
        raise ValueError("n_users must be >= 0, got %d" % n_users)
    row = popularity_scores(item_counts)
    return np.broadcast_to(row, (n_users, len(row)))


def popularity_top_k(
    item_counts: np.ndarray, n_users: int, k: int, exclude: Optional[np.ndarray] = None, batch_size: int = 1024
) -> np.ndarray:
    """int32 [n_users, k]: the most popular items (ties by lower row), ``batch_size`` users at a time when excluding.

    Everyone shares one ranking, so no [n_users, n_items] matrix is built: an excluding user's
    list is the ranking's first k items outside their ``exclude`` row.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, got %d" % batch_size)
    if exclude is not None and len(exclude) != n_users:
        raise ValueError("exclude has %d rows but there are %d users" % (len(exclude), n_users))
    return top_k_shared_scores(popularity_scores(item_counts), n_users, k, exclude, batch_size=batch_size)


def _check_histories(histories: np.ndarray, n_items: int) -> np.ndarray:
    histories = np.asarray(histories)
    if histories.ndim != 2:
        raise ValueError("histories must be [n, H] item rows padded with -1, got shape %s" % (histories.shape,))
    if histories.size and not np.issubdtype(histories.dtype, np.integer):
        raise ValueError("histories must hold integer item rows, got dtype %s" % histories.dtype)
    if histories.size and (histories.max() >= n_items or histories.min() < -1):
        raise ValueError("histories must hold item rows in [0, %d) or -1 padding, got range [%d, %d]"
                         % (n_items, histories.min(), histories.max()))
    return histories.astype(np.int64)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def history_profiles(histories: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """float32 [n, d] unit vectors: the mean of each history's normalised item vectors (padding masked; empty -> 0)."""
    items = np.asarray(item_vectors, dtype=np.float32)
    if items.ndim != 2:
        raise ValueError("item_vectors must be [n_items, d], got shape %s" % (items.shape,))
    histories = _check_histories(histories, len(items))
    units = _unit(items)
    kept = histories >= 0
    summed = np.einsum("nh,nhd->nd", kept.astype(np.float32), units[np.maximum(histories, 0)])
    # the cosine does not depend on the mean's length, so normalising the sum is the same as the mean
    return _unit(summed).astype(np.float32)


def zero_shot_history_scores(histories: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """float32 [n, m]: cosine of every item's text vector with the mean of the history's; an empty history scores 0."""
    items = np.asarray(item_vectors, dtype=np.float32)
    return dot_scores(history_profiles(histories, items), _unit(items))


def baseline_tops(
    train: Sequences,
    examples: Sequences,
    item_vectors: np.ndarray,
    k: int,
    max_history: int,
    exclude_history: bool = False,
    counts: Optional[np.ndarray] = None,
) -> dict[str, dict]:
    """{name: {"top": int32 [n, k], "label", "kind": "baseline"}} of both baselines for ``examples``.

    ``counts`` defaults to :func:`~tfrec.evaluation.recommend.item_counts` of ``train``; with
    ``exclude_history`` each example's own history items (its last ``max_history``) are removed
    from its list.
    """
    n_items = len(item_vectors)
    counts = training_item_counts(train, n_items) if counts is None else np.asarray(counts)
    if len(counts) != n_items:
        raise ValueError("counts has %d items but item_vectors %d" % (len(counts), n_items))
    histories, _ = examples.padded_histories(max_history)
    exclude = histories if exclude_history else None
    tops = {
        "popularity": popularity_top_k(counts, len(examples), k, exclude),
        "zero_shot_text": top_k_from_vectors(history_profiles(histories, item_vectors), _unit(np.asarray(item_vectors, np.float32)), k, exclude),
    }
    return {name: {"top": tops[name], "label": BASELINE_LABELS[name], "kind": "baseline"} for name in BASELINES}
