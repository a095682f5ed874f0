"""Top-K indexes over a whole catalog of product vectors (TensorFlow Recommenders layers).

* ``brute_force``: ``tfrs.layers.factorized_top_k.BruteForce``, exact (matmul + top_k); plain
  TensorFlow ops, so a SavedModel holding it loads in stock TF Serving.
* ``scann``: ``tfrs.layers.factorized_top_k.ScaNN``, approximate and faster in-process on large
  catalogs. Stock TF Serving does not link ScaNN's custom ops ("Op type not registered
  'Scann>...'"), so tfrec's default exports never hold it; ``tfrec export --scann`` writes an
  extra, clearly separate ScaNN export for servers that link ScaNN.
"""
from __future__ import annotations

import contextlib
from typing import Any, Literal, Optional

import numpy as np

from tfrec import compat

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402  (after compat: Keras 2 mode)

IndexKind = Literal["brute_force", "scann"]


def build_index(kind: IndexKind, vectors: np.ndarray, *, k: int = 100, identifiers: Optional[np.ndarray] = None) -> Any:
    """A TFRS top-k layer over ``vectors`` [N, d]; called with query vectors [B, d] -> (scores, identifiers)."""
    n = int(vectors.shape[0])
    if n == 0:
        raise ValueError("cannot index an empty catalog")
    k = min(int(k), n)
    ids = tf.constant(np.arange(n, dtype=np.int32) if identifiers is None else identifiers)
    candidates = tf.data.Dataset.from_tensor_slices((ids, tf.constant(vectors, tf.float32))).batch(4096)
    if kind == "brute_force":
        index = tfrs.layers.factorized_top_k.BruteForce(k=k)
    elif kind == "scann":
        # Partitioning only pays off on catalogs of tens of thousands; ScaNN needs leaves <= N.
        leaves = max(1, min(int(np.sqrt(n)), 1000))
        index = tfrs.layers.factorized_top_k.ScaNN(
            k=k, num_leaves=leaves, num_leaves_to_search=max(1, leaves // 10), num_reordering_candidates=max(k, 500)
        )
    else:
        raise ValueError("unknown index kind %r: use 'brute_force' or 'scann'" % (kind,))
    # ScaNN's builder logs INFO lines through its own absl, which no log level setting reaches.
    with compat.native_stderr_muted() if kind == "scann" else contextlib.nullcontext():
        index.index_from_dataset(candidates)
    return index


def search_index(index: Any, query_vectors: np.ndarray, *, k: Optional[int] = None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(rows/identifiers [Q, k], scores [Q, k]) of query vectors, in batches."""
    rows, scores = [], []
    for start in range(0, len(query_vectors), batch_size):
        s, r = index(tf.constant(query_vectors[start : start + batch_size], tf.float32), k=k)
        rows.append(r.numpy())
        scores.append(s.numpy())
    return np.concatenate(rows), np.concatenate(scores)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of the top-k of ``a`` that is also in the top-k of ``b``, per query."""
    return float(np.mean([len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b)]))
