"""Small real SavedModels with the signatures of tfrec's exports, for serving tests (seconds to build).

* ``write_toy_retrieval``: ``serving_default``: ``query`` string [None] -> ``product_ids`` string
  [None, k], ``scores`` float32 [None, k] (like ``search_retrieval``).
* ``write_toy_ranker``: ``serving_default``: ``query``, ``product_id``, ``title`` string [None] ->
  ``score`` float32 [None]; ``regress`` (method tensorflow/serving/regress): ``inputs`` string [None]
  of serialized tf.Examples with bytes features query/product_id/title -> ``outputs`` float32 [None]
  (like ``search_ranker``).

Both score with plain TF ops over an in-graph catalog of :data:`TOY_CATALOG`; :func:`retrieval_reference`
and :func:`ranker_reference` compute the same numbers in pure Python, so tests can check served
results independently. ``bias`` shifts every score, which lets a test tell versions apart.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.serving.publish import ExportSet
from tfrec.serving.publish import save_versioned
from tfrec.serving.savedmodel import REGRESS_METHOD, next_version, predict_log, regress_log

tf = compat.tensorflow()

TOY_CATALOG: tuple[tuple[str, str], ...] = (
    ("100001", "cordless drill with two batteries"),
    ("100002", "white ceiling paint"),
    ("100003", "outdoor led light bulb"),
    ("100004", "garden hose with spray nozzle"),
    ("100005", "white interior door"),
    ("100006", "led ceiling light fixture"),
    ("100007", "drill bit set"),
    ("100008", "exterior wood paint"),
)
_TIE_BREAK = 1e-3  # earlier catalog rows win ties, so top-k is deterministic


def _tokens(text: str) -> list[str]:
    return text.lower().split()


def _vocabulary() -> list[str]:
    return sorted({t for _, title in TOY_CATALOG for t in _tokens(title)})


def retrieval_reference(queries: Sequence[str], k: int = 3, bias: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pure-Python top-k of the toy retrieval model: (product_ids [n,k] str, scores [n,k] float32)."""
    ids, scores = [], []
    for query in queries:
        q = _tokens(query)
        row = [sum(q.count(t) for t in _tokens(title)) - _TIE_BREAK * i + bias for i, (_, title) in enumerate(TOY_CATALOG)]
        order = sorted(range(len(row)), key=lambda i: -row[i])[:k]
        ids.append([TOY_CATALOG[i][0] for i in order])
        scores.append([row[i] for i in order])
    return np.array(ids, dtype=object).reshape(len(queries), k), np.array(scores, dtype=np.float32).reshape(len(queries), k)


def ranker_reference(query: str, product_id: str, title: str, bias: float = 0.0) -> float:
    """Pure-Python score of the toy ranker: share of distinct query tokens found in the title (+ id length / 1000)."""
    q, t = set(_tokens(query)), set(_tokens(title))
    return len(q & t) / max(1, len(q)) + 0.001 * len(product_id.encode("utf-8")) + bias


class _ToyRetrieval(tf.Module):
    """Bag-of-words match counts against the toy catalog, then top-k."""

    def __init__(self, k: int, bias: float) -> None:
        super().__init__()
        vocab = _vocabulary()
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(vocab), tf.range(len(vocab), dtype=tf.int64)), default_value=-1)
        counts = np.zeros((len(TOY_CATALOG), len(vocab)), np.float32)
        for row, (_, title) in enumerate(TOY_CATALOG):
            for token in _tokens(title):
                counts[row, vocab.index(token)] += 1
        self.catalog = tf.constant(counts)
        self.ids = tf.constant([pid for pid, _ in TOY_CATALOG])
        self.offsets = tf.constant(bias - _TIE_BREAK * np.arange(len(TOY_CATALOG), dtype=np.float32))
        self.k = k
        self.vocab_size = len(vocab)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
    def serve(self, query):
        tokens = tf.strings.split(tf.strings.lower(query))
        index = self.table.lookup(tokens)
        bags = tf.reduce_sum(tf.one_hot(index, self.vocab_size), axis=1)  # -1 (unknown) one-hots to zeros
        scores = tf.matmul(bags.to_tensor() if isinstance(bags, tf.RaggedTensor) else bags, self.catalog, transpose_b=True)
        top = tf.math.top_k(scores + self.offsets, k=self.k)
        return {"product_ids": tf.gather(self.ids, top.indices), "scores": top.values}


class _ToyRanker(tf.Module):
    """Distinct-token overlap of query and title, with a tf.Example regress signature."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.bias = tf.constant(bias, tf.float32)

    def _score(self, query, product_id, title):
        q = tf.strings.split(tf.strings.lower(query)).to_sparse()
        t = tf.strings.split(tf.strings.lower(title)).to_sparse()
        overlap = tf.cast(tf.sets.size(tf.sets.intersection(q, t)), tf.float32)
        distinct = tf.cast(tf.maximum(tf.sets.size(q), 1), tf.float32)
        return overlap / distinct + 0.001 * tf.cast(tf.strings.length(product_id), tf.float32) + self.bias

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query"),
                                  tf.TensorSpec([None], tf.string, name="product_id"),
                                  tf.TensorSpec([None], tf.string, name="title")])
    def serve(self, query, product_id, title):
        return {"score": self._score(query, product_id, title)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        spec = {name: tf.io.FixedLenFeature([], tf.string) for name in ("query", "product_id", "title")}
        features = tf.io.parse_example(inputs, spec)
        return {"outputs": self._score(features["query"], features["product_id"], features["title"])}


def save_toy_retrieval(export: ExportSet, name: str = "search_retrieval", k: int = 3, bias: float = 0.0) -> Path:
    """Save a toy retrieval SavedModel (with a warm-up record) into an export set; returns its future version folder."""
    if not 1 <= k <= len(TOY_CATALOG):
        raise ValueError("k must be in [1, %d], got %r" % (len(TOY_CATALOG), k))
    module = _ToyRetrieval(k, bias)
    warmup = [predict_log(name, {"query": ["led light", "white paint"]})]
    return export.save(name, module, {"serving_default": module.serve}, warmup=warmup)


def save_toy_ranker(export: ExportSet, name: str = "search_ranker", bias: float = 0.0) -> Path:
    """Save a toy ranker SavedModel (serving_default + regress, warm-up for both) into an export set."""
    module = _ToyRanker(bias)
    pid, title = TOY_CATALOG[0]
    warmup = [
        predict_log(name, {"query": ["cordless drill"], "product_id": [pid], "title": [title]}),
        regress_log(name, [{"query": "cordless drill", "product_id": pid, "title": title}]),
    ]
    return export.save(name, module, {"serving_default": module.serve, "regress": module.regress},
                       warmup=warmup, methods={"regress": REGRESS_METHOD})


def write_toy_retrieval(export_dir: Path, name: str = "search_retrieval", k: int = 3, version: Optional[int] = None,
                        bias: float = 0.0) -> Path:
    """Write a toy retrieval SavedModel (with a warm-up record) to export_dir/name/<version>/ and return that folder."""
    with ExportSet(export_dir, [name], version=version) as export:
        return save_toy_retrieval(export, name, k, bias)


def write_toy_ranker(export_dir: Path, name: str = "search_ranker", version: Optional[int] = None,
                     bias: float = 0.0) -> Path:
    """Write a toy ranker SavedModel (serving_default + regress, warm-up for both) and return its version folder."""
    with ExportSet(export_dir, [name], version=version) as export:
        return save_toy_ranker(export, name, bias)


def write_broken_version(export_dir: Path, name: str, version: Optional[int] = None) -> Path:
    """Write a version folder whose saved_model.pb is not a SavedModel (renamed into place like a real export)."""
    model_dir = Path(export_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError("%s already exists" % final)
    tmp = Path(tempfile.mkdtemp(prefix=".%d.tmp-" % version, dir=model_dir))
    (tmp / "saved_model.pb").write_bytes(b"\x08this is not a SavedModel protobuf\xff\xfe")
    (tmp / "variables").mkdir()
    os.replace(tmp, final)
    return final


def write_failing_warmup_version(export_dir: Path, name: str = "search_retrieval", version: Optional[int] = None) -> Path:
    """Write a loadable toy retrieval model whose warm-up record feeds an input it does not have (its load must fail)."""
    module = _ToyRetrieval(3, 0.0)
    warmup = [predict_log(name, {"no_such_input": ["led light"]})]
    return save_versioned(module, export_dir, name, {"serving_default": module.serve}, warmup=warmup, version=version)


def recommend_reference(history: Sequence[str], k: int = 3) -> tuple[list[str], list[float]]:
    """Pure-Python top-k of the toy recommender: title-token overlap with the history's items."""
    rows = {pid: i for i, (pid, _) in enumerate(TOY_CATALOG)}
    bag: dict[str, float] = {}
    for item in history:
        if item in rows:
            for token in _tokens(TOY_CATALOG[rows[item]][1]):
                bag[token] = bag.get(token, 0.0) + 1.0
    scores = [sum(bag.get(t, 0.0) for t in _tokens(title)) - _TIE_BREAK * i for i, (_, title) in enumerate(TOY_CATALOG)]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    return [TOY_CATALOG[i][0] for i in order], [float(np.float32(scores[i])) for i in order]


class _ToyRecommender(tf.Module):
    """History (or one item) -> catalog items by title-token overlap (like ``recommender``/``similar_items``)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        vocab = _vocabulary()
        bags = np.zeros((len(TOY_CATALOG) + 1, len(vocab)), np.float32)  # the last row: padding/unknown ids
        for row, (_, title) in enumerate(TOY_CATALOG):
            for token in _tokens(title):
                bags[row, vocab.index(token)] += 1
        self.bags = tf.constant(bags)
        self.rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([pid for pid, _ in TOY_CATALOG]), tf.range(len(TOY_CATALOG), dtype=tf.int64)),
            default_value=len(TOY_CATALOG))
        self.ids = tf.constant([pid for pid, _ in TOY_CATALOG])
        self.offsets = tf.constant(-_TIE_BREAK * np.arange(len(TOY_CATALOG), dtype=np.float32))
        self.k = k

    def _top(self, history):
        user = tf.reduce_sum(tf.gather(self.bags, self.rows.lookup(history)), axis=1)
        top = tf.math.top_k(tf.matmul(user, self.bags[:-1], transpose_b=True) + self.offsets, k=self.k)
        return {"item_ids": tf.gather(self.ids, top.indices), "scores": top.values}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
    def recommend(self, history):
        return self._top(history)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")])
    def similar(self, item_id):
        return self._top(item_id[:, None])


def write_toy_recommenders(export_dir: Path, k: int = 3) -> tuple[Path, Path]:
    """Write toy ``recommender`` (history [None, None]) and ``similar_items`` (item_id [None]) exports."""
    module = _ToyRecommender(k)
    pid = TOY_CATALOG[0][0]
    rec = save_versioned(module, export_dir, "recommender", {"serving_default": module.recommend},
                         warmup=[predict_log("recommender", {"history": [[pid, ""]]})])
    sim = save_versioned(module, export_dir, "similar_items", {"serving_default": module.similar},
                         warmup=[predict_log("similar_items", {"item_id": [pid]})])
    return rec, sim
