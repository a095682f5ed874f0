"""Top-K indexes over a whole catalog of product vectors (TensorFlow Recommenders layers).

* ``brute_force``: ``tfrs.layers.factorized_top_k.BruteForce``, exact (matmul + top_k); plain
  TensorFlow ops, so a SavedModel holding it loads in stock TF Serving.
* ``scann``: ``tfrs.layers.factorized_top_k.ScaNN``, approximate and faster in-process on large
  catalogs. Stock TF Serving does not link ScaNN's custom ops ("Op type not registered
  'Scann>...'"), so tfrec's default exports never hold it; ``tfrec export --scann`` writes an
  extra, clearly separate ScaNN export for servers that link ScaNN.

Exports hold their catalog matrix through :func:`catalog_variable` and score it with
:func:`catalog_dot` and :func:`catalog_top_k`: float32 by default, or float16
(``export.catalog_dtype``), which halves the matrix and is scored with the queries cast to float16,
the best candidates scored again in float32; scores are returned as float32.
"""
from __future__ import annotations

import contextlib
from typing import Any, Literal, Optional

import numpy as np

from tfrec import compat
from tfrec.evaluation.chunks import row_chunk

tf = compat.tensorflow()

IndexKind = Literal["brute_force", "scann"]
CATALOG_DTYPES = ("float32", "float16")
SEARCH_BATCH = 256  # queries per index call on catalogs up to 262,144 vectors


def catalog_variable(vectors: Any, dtype: str = "float32", name: str = "catalog") -> Any:
    """A non-trainable variable of catalog vectors [N, d] stored as ``dtype`` (float32 or float16)."""
    if dtype not in CATALOG_DTYPES:
        raise ValueError("catalog dtype must be one of %s, got %r" % (", ".join(CATALOG_DTYPES), dtype))
    return tf.Variable(np.asarray(vectors, np.float32).astype(dtype), trainable=False, name=name)


def catalog_dot(queries: Any, catalog: Any) -> Any:
    """float32 [B, N] dot products of float32 query vectors [B, d] with a catalog matrix [N, d] of either dtype.

    A float16 catalog is multiplied with the queries cast to float16: on CPU that beat casting
    the matrix up on every call (1 x 64 against 1M x 64: 22 ms in float16, 28 ms in float32,
    66 ms with the cast), since the float16 matrix is half the memory to read.
    """
    if catalog.dtype == tf.float32:
        return tf.matmul(queries, catalog, transpose_b=True)
    return tf.cast(tf.matmul(tf.cast(queries, catalog.dtype), catalog, transpose_b=True), tf.float32)


def catalog_top_k(queries: Any, catalog: Any, scores: Any, k: int, masked_below: float = -2.0) -> tuple[Any, Any]:
    """(catalog rows int32 [B, k], float32 scores [B, k]) best first, from ``scores`` = :func:`catalog_dot` [B, N].

    The caller may have set rows it leaves out below ``masked_below`` (cosines never are). A float32
    catalog is ``tf.math.top_k`` of ``scores``. A float16 catalog's scores are rounded to float16
    (errors up to ~2e-4 on unit vectors, enough to swap items at the k-th place), so they only pick
    2k candidates, which are scored again in float32 from their stored vectors and re-ranked.
    """
    if catalog.dtype == tf.float32:
        top = tf.math.top_k(scores, k=k)
        return top.indices, top.values
    n = catalog.shape[0]
    rough = tf.math.top_k(scores, k=min(2 * k, n) if n is not None else 2 * k)
    exact = tf.einsum("bd,bmd->bm", queries, tf.cast(tf.gather(catalog, rough.indices), tf.float32))
    exact = tf.where(rough.values < masked_below, rough.values, exact)
    best = tf.math.top_k(exact, k=k)
    return tf.gather(rough.indices, best.indices, batch_dims=1), best.values


def build_index(kind: IndexKind, vectors: np.ndarray, *, k: int = 100, identifiers: Optional[np.ndarray] = None) -> Any:
    """A TFRS top-k layer over ``vectors`` [N, d]; called with query vectors [B, d] -> (scores, identifiers)."""
    import tensorflow_recommenders as tfrs  # lazy: the catalog helpers above do not need it

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
    index.catalog_size = n  # what search_index sizes its batches by
    return index


def search_index(index: Any, query_vectors: np.ndarray, *, k: Optional[int] = None,
                 batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows/identifiers [Q, k], scores [Q, k]) of query vectors, in batches.

    The default batch is :data:`SEARCH_BATCH` queries, fewer over an index of more than 262,144
    vectors (from :func:`build_index`), so that a brute-force batch's [batch, N] scores stay within 256 MB.
    """
    if batch_size is None:
        batch_size = row_chunk(getattr(index, "catalog_size", 0), most=SEARCH_BATCH)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, got %d" % batch_size)
    rows, scores = [], []
    for start in range(0, len(query_vectors), batch_size):
        s, r = index(tf.constant(query_vectors[start : start + batch_size], tf.float32), k=k)
        rows.append(r.numpy())
        scores.append(s.numpy())
    return np.concatenate(rows), np.concatenate(scores)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of the top-k of ``a`` that is also in the top-k of ``b``, per query."""
    return float(np.mean([len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b)]))
