"""Two-tower training pairs streamed from a prepared search dataset: no list of pairs in memory.

A first pass reads the two towers' per-query records in batches of queries (tf.data), keeps each
judgment at or above ``min_relevance`` as a (query, positive product) pair, gives it a hard negative
from its query's lexical top ``depth`` minus every product judged for that query (as the in-memory
:func:`tfrec.retrieval.train.add_mined_negatives` does), counts each product's pairs, and writes the
pairs to gzip TFRecord shards in the run's checkpoint folder. Training then streams those shards:
files interleaved, records parsed in parallel, catalog ids and titles gathered in the graph, and a
bounded shuffle buffer. Memory holds one batch of queries, the catalog and per-product counts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec import compat
from tfrec.data.prepared.records import ShardWriter, encode_example
from tfrec.log import Progress

tf = compat.tensorflow()

log = logging.getLogger(__name__)

QUERIES_PER_PASS = 512
PAIRS_PER_SHARD = 200_000
# query_group numbers a pair's query so other positives of the same query are not its negatives; a hash
# of the query in 31 bits does that without a table of every query (a collision in one batch is ~1e-6).
GROUP_BUCKETS = 2**31 - 1


@dataclass(frozen=True)
class PairShards:
    """The pairs of one streamed pass: their shards, how many, and what the loss needs of all of them."""

    files: list[str]
    pairs: int
    counts: np.ndarray  # float64 [n_items]: pairs whose positive is each product
    label_mean: float
    negatives: bool

    def vocabulary(self, ids: np.ndarray) -> list[str]:
        """The product ids of every positive (the id embedding's vocabulary, as the in-memory pairs give it)."""
        return sorted(np.asarray(ids).astype(str)[self.counts > 0].tolist())

    def batches(self, ids: np.ndarray, titles: np.ndarray, *, batch_size: int, seed: int, shuffle_buffer: int,
                sampling_correction: bool) -> Any:
        """One epoch of shuffled batches with the features of :func:`tfrec.retrieval.train.training_pairs` (and negatives)."""
        id_table, title_table = tf.constant(np.asarray(ids).astype(str)), tf.constant(np.asarray(titles).astype(str))
        probability = tf.constant((self.counts / self.pairs).astype(np.float32))
        # Products that are never a positive still need a non-zero probability for the logQ correction.
        negative_probability = tf.constant((np.maximum(self.counts, 1.0) / self.pairs).astype(np.float32))
        mean = float(self.label_mean)
        spec = {"query": tf.io.FixedLenFeature([], tf.string), "product": tf.io.FixedLenFeature([], tf.int64),
                "label": tf.io.FixedLenFeature([], tf.float32), "negative": tf.io.FixedLenFeature([], tf.int64)}

        def features(serialized: Any) -> dict:
            r = tf.io.parse_example(serialized, spec)
            out = {"query": r["query"], "product_id": tf.gather(id_table, r["product"]), "title": tf.gather(title_table, r["product"]),
                   "weight": r["label"] / mean,
                   "query_group": tf.cast(tf.strings.to_hash_bucket_fast(r["query"], GROUP_BUCKETS), tf.int32)}
            if sampling_correction:
                out["sampling_probability"] = tf.gather(probability, r["product"])
            if self.negatives:
                out["negative_id"] = tf.gather(id_table, r["negative"])
                out["negative_title"] = tf.gather(title_table, r["negative"])
                if sampling_correction:
                    out["negative_sampling_probability"] = tf.gather(negative_probability, r["negative"])
            return out

        names = tf.data.Dataset.from_tensor_slices(self.files)
        if len(self.files) > 1:
            names = names.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=False)
        records = names.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"), cycle_length=min(4, len(self.files)),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        pairs = records.batch(1024).map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
        options = tf.data.Options()
        options.deterministic = True
        return (pairs.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False).batch(batch_size, drop_remainder=True)
                .with_options(options).prefetch(tf.data.AUTOTUNE))


def write_pair_shards(train: Any, n_items: int, folder: Path, *, min_relevance: float, lexical: Any = None, depth: int = 50,
                      seed: int = 0, progress: bool = False) -> PairShards:
    """Stream ``train`` (a ShardedJudgments) into pair shards under ``folder``, each pair with a mined negative when ``lexical`` is given."""
    if lexical is not None and depth < 1:
        raise ValueError("hard negative depth must be >= 1, got %d" % depth)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tfrecord.gz"):
        old.unlink()  # a pass interrupted before: its pairs are written again
    retrieve = (tf.function(lambda q: lexical.retrieve(q, k=min(depth, n_items)), reduce_retracing=True)
                if lexical is not None else None)
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_items, np.float64)
    label_sum, written, files = 0.0, 0, []
    writer: Optional[ShardWriter] = None
    bar = Progress("two-tower pairs", train.towers_queries(), unit="query", show=progress)
    try:
        for batch in train.records().batch(QUERIES_PER_PASS):
            queries = [q.decode("utf-8") for q in batch["query"].numpy()]
            products = np.split(batch["products"].flat_values.numpy(), np.cumsum(batch["products"].row_lengths().numpy())[:-1])
            labels = np.split(batch["labels"].flat_values.numpy(), np.cumsum(batch["labels"].row_lengths().numpy())[:-1])
            top = _lexical_top(retrieve, queries) if retrieve is not None else None
            for i, query in enumerate(queries):
                keep = labels[i] >= min_relevance
                if not keep.any():
                    continue
                pool = top[i][~np.isin(top[i], products[i])] if top is not None else None
                for product, label in zip(products[i][keep].tolist(), labels[i][keep].tolist()):
                    negative = -1
                    if pool is not None:
                        negative = int(rng.choice(pool)) if len(pool) else int(rng.integers(n_items))
                    if writer is None:
                        writer = ShardWriter(folder / ("pairs-%05d.tfrecord.gz" % len(files)), compressed=True)
                    writer.write(encode_example({"query": query, "product": product, "label": label, "negative": negative}))
                    counts[product] += 1
                    label_sum += label
                    written += 1
                    if written % PAIRS_PER_SHARD == 0:
                        files.append(str(folder / writer.close()["file"]))
                        writer = None
            bar.update(len(queries))
        if writer is not None:
            files.append(str(folder / writer.close()["file"]))
            writer = None
    finally:
        if writer is not None:
            writer.abort()
        bar.close()
    if written == 0:
        raise ValueError("no training judgment has relevance >= %g (retrieval.min_relevance)" % min_relevance)
    log.info("two-tower pairs: %d from %d queries, in %d shard(s)", written, train.towers_queries(), len(files))
    return PairShards(files, written, counts, label_sum / written, negatives=lexical is not None)


def _lexical_top(retrieve: Any, queries: list[str], batch_size: int = 64) -> np.ndarray:
    return np.concatenate([retrieve(tf.constant(queries[i:i + batch_size]))[1].numpy() for i in range(0, len(queries), batch_size)])
