"""Reading a prepared dataset: the catalog and small splits as tables, the training examples as a stream.

``tfrec train --set data.prepared=DIR`` comes here instead of reading files. The manifest is
checked first (every shard present, with its size and SHA-256, and the config's ``data`` section
the one the folder was prepared with). The catalog and the valid split (search judgments, or one
example per user with histories cut to ``max_history``) are read into the usual tables; training
data is not. :class:`ShardedSequences` streams a recommendation dataset's examples from the shards
with ``tf.data`` (files interleaved, records parsed in parallel, each user's record expanded into
its (history -> next item) examples in the graph, a bounded shuffle buffer), so memory does not
grow with the number of events. :class:`ShardedJudgments` does the same for the search towers'
per-query records (:mod:`tfrec.retrieval.pair_stream` turns them into training pairs); only the
ranker's held-out share of the training queries is read into memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec.config.loader import ConfigError
from tfrec.data.errors import DataError, DropReport
from tfrec.data.prepared import manifest as mf
from tfrec.data.tables import Catalog, Judgments, RecommendationData, SearchData, Sequences

READ_BATCH = 1024
# The data.* keys that slice files for smoke runs, by dataset kind: a prepared dataset is always used whole.
SLICING = {"search": ("max_train_queries", "max_valid_queries", "max_products"), "recommendation": ("max_users",)}


@dataclass
class Prepared:
    """An opened, checked prepared-dataset folder."""

    folder: Path
    manifest: dict

    def files(self, part: str) -> list[str]:
        """The shard paths of ``part`` (catalog, train, valid, test), in manifest order."""
        if part in ("catalog", "text_vectors"):
            shards = self.manifest[part]["shards"]
        else:
            shards = self.manifest["splits"][part]["shards"]
        return [str(self.folder / part / s["file"]) for s in shards]

    def counts(self) -> dict[str, np.ndarray]:
        """The per-item arrays of item_counts.npz."""
        with np.load(self.folder / self.manifest["item_counts"]) as f:
            return {k: f[k] for k in f.files}

    def drops(self) -> DropReport:
        """The rows prepare dropped in lenient mode, as a DropReport."""
        return DropReport.from_dict(self.manifest["stats"].get("dropped_rows", {}))


def open_prepared(folder: Path | str, data_config: Any = None, checksums: bool = True) -> Prepared:
    """Open a prepared dataset, checking its shards against the manifest and (when given) the data config."""
    folder = mf.local_folder(folder)
    if not folder.is_dir():
        raise DataError(str(folder), "no such folder (make it with `tfrec data prepare --config CONFIG --out %s`)" % folder)
    manifest = mf.read_manifest(folder)
    if data_config is not None:
        mf.check_config(folder, manifest, data_config)
    mf.verify_shards(folder, manifest, checksums=checksums)
    return Prepared(folder, manifest)


def _records(tf: Any, files: list[str]) -> Any:
    return tf.data.TFRecordDataset(files, compression_type="GZIP")


def _read_error(path: str, err: Exception) -> DataError:
    return DataError(path, "cannot read the shards (%s); prepare the dataset again" % str(err).splitlines()[0])


def _columns(tf: Any, prepared: Prepared, part: str, spec: dict) -> dict[str, np.ndarray]:
    """Every record of ``part`` parsed with ``spec`` (fixed-length features), as one array per feature, in file order."""
    parts: dict[str, list] = {k: [] for k in spec}
    try:
        for batch in _records(tf, prepared.files(part)).batch(READ_BATCH * 16).map(lambda r: tf.io.parse_example(r, spec)):
            for k in spec:
                parts[k].append(batch[k].numpy())
    except tf.errors.OpError as err:
        raise _read_error(str(prepared.folder / part), err) from None
    return {k: np.concatenate(v) if v else np.zeros((0, *spec[k].shape), spec[k].dtype.as_numpy_dtype) for k, v in parts.items()}


def read_catalog(prepared: Prepared) -> Catalog:
    """The catalog, in row order."""
    from tfrec import compat

    tf = compat.tensorflow()
    entry = prepared.manifest["catalog"]
    spec = {"row": tf.io.FixedLenFeature([], tf.int64), "product_id": tf.io.FixedLenFeature([], tf.string)}
    spec.update({"text:" + k: tf.io.FixedLenFeature([], tf.string) for k in entry["text_fields"]})
    spec.update({"numeric:" + k: tf.io.FixedLenFeature([], tf.float32) for k in entry["numeric"]})
    spec.update({"categorical:" + k: tf.io.FixedLenFeature([], tf.string) for k in entry["categorical"]})
    arrays = _columns(tf, prepared, "catalog", spec)
    if len(arrays["row"]) != entry["items"] or not np.array_equal(arrays["row"], np.arange(entry["items"])):
        raise DataError(str(prepared.folder / "catalog"), "holds %d rows out of order or missing; the manifest says %d"
                        % (len(arrays["row"]), entry["items"]))

    def text(values: np.ndarray) -> np.ndarray:
        return np.asarray([v.decode("utf-8") for v in values], dtype=object)

    return Catalog(
        ids=text(arrays["product_id"]),
        texts={k: text(arrays["text:" + k]) for k in entry["text_fields"]},
        numeric={k: arrays["numeric:" + k].astype(np.float32) for k in entry["numeric"]},
        categorical={k: text(arrays["categorical:" + k]) for k in entry["categorical"]},
        source=entry["source"],
    )


def read_text_vectors(prepared: Prepared, model_key: str) -> Optional[np.ndarray]:
    """The catalog's frozen text vectors [n_items, dim] in row order, or None when the folder has none for ``model_key``."""
    entry = prepared.manifest.get("text_vectors")
    if not entry or entry.get("model_key") != model_key:
        return None
    from tfrec import compat

    tf = compat.tensorflow()
    n, dim = prepared.manifest["catalog"]["items"], entry["dim"]
    spec = {"row": tf.io.FixedLenFeature([], tf.int64), "vector": tf.io.FixedLenFeature([dim], tf.float32)}
    arrays = _columns(tf, prepared, "text_vectors", spec)
    # Range-partitioned by row and written in row order: the vectors are the catalog's rows as read.
    if not np.array_equal(arrays["row"], np.arange(n)):
        raise DataError(str(prepared.folder / "text_vectors"), "holds %d vectors out of row order or missing; the catalog has "
                        "%d products (prepare it again)" % (len(arrays["row"]), n))
    return arrays["vector"]


def read_judgments(prepared: Prepared, split: str) -> Judgments:
    """A search split's judgments in memory, in the order they were read (valid; the ranker's share; checks)."""
    from tfrec import compat

    tf = compat.tensorflow()
    entry = prepared.manifest["splits"][split]
    source = entry.get("source", split)
    if entry.get("kind") != "queries":
        spec = {"query": tf.io.FixedLenFeature([], tf.string), "product": tf.io.FixedLenFeature([], tf.int64),
                "label": tf.io.FixedLenFeature([], tf.float32)}
        arrays = _columns(tf, prepared, split, spec)
        return Judgments(np.asarray([q.decode("utf-8") for q in arrays["query"]], dtype=object),
                         arrays["product"].astype(np.int32), arrays["label"].astype(np.float32), source)
    queries, products, labels, positions = [], [], [], []
    try:
        for record in query_records(prepared, split).batch(READ_BATCH):
            sizes = record["products"].row_lengths().numpy()
            queries.append(np.repeat(np.asarray([q.decode("utf-8") for q in record["query"].numpy()], dtype=object), sizes))
            products.append(record["products"].flat_values.numpy())
            labels.append(record["labels"].flat_values.numpy())
            positions.append(record["positions"].flat_values.numpy())
    except tf.errors.OpError as err:
        raise _read_error(str(prepared.folder / split), err) from None
    if not queries:
        return Judgments(np.zeros(0, object), np.zeros(0, np.int32), np.zeros(0, np.float32), source)
    order = np.argsort(np.concatenate(positions), kind="stable")
    return Judgments(np.concatenate(queries)[order], np.concatenate(products)[order].astype(np.int32),
                     np.concatenate(labels)[order].astype(np.float32), source)


def query_records(prepared: Prepared, split: str, *, shuffle_files_seed: Optional[int] = None) -> Any:
    """The per-query records of a search split as a tf.data stream of {query, products, labels, positions} (ragged lists)."""
    from tfrec import compat

    tf = compat.tensorflow()
    spec = {"query": tf.io.FixedLenFeature([], tf.string), "products": tf.io.RaggedFeature(tf.int64),
            "labels": tf.io.RaggedFeature(tf.float32), "positions": tf.io.RaggedFeature(tf.int64)}
    files = prepared.files(split)
    names = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files_seed is not None and len(files) > 1:
        names = names.shuffle(len(files), seed=shuffle_files_seed, reshuffle_each_iteration=False)
    records = names.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"), cycle_length=min(4, len(files)),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records.batch(256).map(lambda r: tf.io.parse_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True).unbatch()


@dataclass
class ShardedJudgments:
    """Search training judgments that stay in their shards (the two towers' queries); the ranker's share loads on demand."""

    prepared: Prepared
    source: str = ""

    def __len__(self) -> int:
        splits = self.prepared.manifest["splits"]
        return int(splits["train"]["examples"] + splits["ranker"]["examples"])

    @property
    def label_range(self) -> tuple[float, float]:
        """The lowest and highest training label."""
        ranges = [self.prepared.manifest["splits"][s]["labels"] for s in ("train", "ranker")]
        ranges = [r for r in ranges if r]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def check_split(self, config: Any) -> None:
        """ConfigError-style DataError when the config would hold out other ranker queries than the folder was split with."""
        then, now = self.prepared.manifest.get("query_split"), mf.query_split_of(config)
        if then != now:
            keys = ", ".join("%s (prepared with %s, this config has %s)" % (k, then.get(k) if then else None, v)
                             for k, v in now.items() if not then or then.get(k) != v)
            raise DataError(str(self.prepared.folder), "its search training queries were split for the ranker with other "
                            "settings: %s; prepare it again with this config, or set them back" % keys)

    def towers_queries(self) -> int:
        """How many training queries the two towers stream."""
        return int(self.prepared.manifest["splits"]["train"]["queries"])

    def ranker_judgments(self) -> Judgments:
        """The ranker's held-out training queries, in memory (a ``ranking.holdout_fraction`` share)."""
        return read_judgments(self.prepared, "ranker")

    def records(self, shuffle_files_seed: Optional[int] = None) -> Any:
        """The two towers' per-query records as a tf.data stream."""
        return query_records(self.prepared, "train", shuffle_files_seed=shuffle_files_seed)

    def query_terms(self) -> list[str]:
        """The terms of every training query (what they add to the lexical index's vocabulary)."""
        path = self.prepared.folder / self.prepared.manifest["query_terms"]
        return [t for t in path.read_text(encoding="utf-8").split("\n") if t]

    def judged(self) -> dict[str, np.ndarray]:
        """bool [n_items] arrays: "seen" (judged for some training query), "towers" (for one of the two towers' queries)."""
        with np.load(self.prepared.folder / self.prepared.manifest["judged_products"]) as f:
            return {k: f[k] for k in f.files}


def _sequence_spec(tf: Any) -> dict:
    return {"user": tf.io.FixedLenFeature([], tf.string), "items": tf.io.RaggedFeature(tf.int64),
            "first": tf.io.FixedLenFeature([], tf.int64), "last": tf.io.FixedLenFeature([], tf.int64),
            "newest": tf.io.FixedLenFeature([], tf.int64)}


def read_sequences(prepared: Prepared, split: str, max_history: Optional[int] = None) -> Sequences:
    """A split's examples as in-memory Sequences (histories cut to their newest ``max_history`` items when given).

    For the valid and test splits (one example per user) and for checks; training streams instead.
    """
    from tfrec import compat

    tf = compat.tensorflow()
    spec = _sequence_spec(tf)
    flat: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    users: list[np.ndarray] = []
    offset = 0
    try:
        for batch in _records(tf, prepared.files(split)).batch(READ_BATCH).map(lambda r: tf.io.parse_example(r, spec)):
            values, splits = batch["items"].values.numpy(), batch["items"].row_splits.numpy()
            first, last, names = batch["first"].numpy(), batch["last"].numpy(), batch["user"].numpy()
            for r in range(len(first)):
                items = values[splits[r] : splits[r + 1]]
                lo = 0 if max_history is None else max(0, int(first[r]) - max_history)
                kept = items[lo : int(last[r])]  # histories plus the targets
                t = np.arange(first[r], last[r])
                flat.append(kept)
                hist_lo = np.zeros_like(t) if max_history is None else np.maximum(t - max_history, 0)
                starts.append(offset + hist_lo - lo)
                ends.append(offset + t - lo)
                targets.append(items[t])
                users.append(np.repeat(names[r].decode("utf-8"), len(t)))
                offset += len(kept)
    except tf.errors.OpError as err:
        raise _read_error(str(prepared.folder / split), err) from None
    cat = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
    return Sequences(items=cat(flat, np.int32), starts=cat(starts, np.int64), ends=cat(ends, np.int64), targets=cat(targets, np.int32),
                     users=cat(users, object), source=prepared.manifest["splits"][split].get("source", split))


@dataclass
class ShardedSequences:
    """Training examples that stay in their shards: what the recommender's training needs, without the examples in memory.

    ``part`` is "all", or "rest" (every example but each user's newest, which model selection holds out).
    """

    prepared: Prepared
    split: str = "train"
    part: str = "all"
    source: str = ""
    _counts: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        entry = self.prepared.manifest["splits"][self.split]
        return int(entry["examples"] if self.part == "all" else entry["examples_rest"])

    @property
    def users(self) -> int:
        """How many users have training examples."""
        return int(self.prepared.manifest["splits"][self.split]["users"])

    def counts(self) -> dict[str, np.ndarray]:
        """item_counts.npz, read once."""
        if not self._counts:
            self._counts.update(self.prepared.counts())
        return self._counts

    def target_counts(self) -> np.ndarray:
        """How often each catalog item is a training target of this part."""
        return self.counts()["targets_%s" % self.part]

    def vocabulary_mask(self) -> np.ndarray:
        """bool [n_items]: the items the id vocabulary of a model trained on this part holds."""
        return self.counts()["vocab_%s" % self.part]

    def item_counts(self) -> np.ndarray:
        """Each user's training interactions counted once (the popularity baseline's counts)."""
        return self.counts()["train"]

    def seen(self) -> np.ndarray:
        """bool [n_items]: items in some training history or target."""
        return self.counts()["seen"]

    def rest(self) -> "ShardedSequences":
        """Every example but each user's newest."""
        return ShardedSequences(self.prepared, self.split, "rest", self.source, self._counts)

    def newest(self, max_history: int) -> Sequences:
        """Each user's newest training example, in memory (one per user)."""
        return _newest_sequences(self.prepared, self.split, max_history)

    def shard_policy(self, workers: int) -> str:
        """How ``workers`` training workers split the stream: "FILE" (each its own shard files), or "DATA" with fewer files than workers."""
        return "FILE" if len(self.prepared.files(self.split)) >= workers else "DATA"

    def sharding_note(self, workers: int) -> Optional[str]:
        """What to tell the user when ``workers`` cannot each read their own shard files (None when they can)."""
        if self.shard_policy(workers) == "FILE":
            return None
        files = len(self.prepared.files(self.split))
        engine = self.prepared.manifest.get("engine", {}).get("name")
        fix = ("prepare it with `tfrec data prepare --shards %d` or more to give each worker its own files" % workers
               if engine == "spark" else "its %s split is prepared as one shard file" % self.split)
        return ("%s has %d %s shard file(s) for %d workers: every worker reads all of them and keeps its share of the "
                "examples (%s)" % (self.prepared.folder, files, self.split, workers, fix))

    def dataset(self, max_history: int, batch_size: int, seed: int, shuffle_buffer: int = 100_000, workers: int = 1) -> Any:
        """One epoch of shuffled batches {history_index [b, max_history], target_index [b]} streamed from the shards.

        ``workers``: how many multi-worker processes will split it (see :meth:`shard_policy`).
        """
        return example_stream(self.prepared.files(self.split), max_history, part=self.part, batch_size=batch_size, seed=seed,
                              shuffle_buffer=shuffle_buffer, shard_policy=self.shard_policy(workers))


def _newest_sequences(prepared: Prepared, split: str, max_history: int) -> Sequences:
    ds = example_stream(prepared.files(split), max_history, part="newest", batch_size=READ_BATCH * 8, seed=0, shuffle_buffer=0,
                        with_users=True)
    histories, targets, users = [], [], []
    for batch in ds:
        histories.append(batch["history_index"].numpy())
        targets.append(batch["target_index"].numpy())
        users.append(batch["user"].numpy())
    history = np.concatenate(histories) if histories else np.zeros((0, max_history), np.int32)
    lengths = (history >= 0).sum(axis=1)
    flat = history[history >= 0]
    ends = np.cumsum(lengths)
    return Sequences(items=flat.astype(np.int32), starts=(ends - lengths).astype(np.int64), ends=ends.astype(np.int64),
                     targets=(np.concatenate(targets) if targets else np.zeros(0)).astype(np.int32),
                     users=np.asarray([u.decode("utf-8") for u in (np.concatenate(users) if users else [])], dtype=object),
                     source=prepared.manifest["splits"][split].get("source", split))


def example_stream(files: list[str], max_history: int, *, part: str, batch_size: int, seed: int, shuffle_buffer: int,
                   with_users: bool = False, shard_policy: str = "FILE") -> Any:
    """Batches of (history -> next item) examples expanded in the graph from per-user (or per-example) records.

    ``part``: "all" examples, "rest" (all but each record's newest) or "newest". Files are shuffled and
    interleaved, records parsed in parallel; ``shuffle_buffer`` 0 keeps the file order (evaluation).
    ``shard_policy`` is how ``tf.data`` auto-shards the stream over multi-worker training: "FILE" gives
    each worker its own files (it needs at least as many files as workers); "DATA" has every worker
    read every file and keep its share of the batches, which are the same on every worker (fixed seeds,
    deterministic order).
    """
    from tfrec import compat

    tf = compat.tensorflow()
    spec = _sequence_spec(tf)
    history_offsets = tf.range(max_history, dtype=tf.int64) - max_history  # -H .. -1, relative to each target

    def expand(record: dict) -> Any:
        items, first, last, newest = record["items"], record["first"], record["last"], record["newest"]
        t = tf.range(first, last, dtype=tf.int64)
        if part == "rest":
            t = tf.boolean_mask(t, tf.not_equal(t, newest))
        elif part == "newest":
            t = tf.boolean_mask(t, tf.equal(t, newest))
        index = t[:, None] + history_offsets[None, :]
        history = tf.where(index >= 0, tf.gather(items, tf.maximum(index, 0)), tf.constant(-1, tf.int64))
        out = {"history_index": tf.cast(history, tf.int32), "target_index": tf.cast(tf.gather(items, t), tf.int32)}
        if with_users:
            out["user"] = tf.fill(tf.shape(t), record["user"])
        return tf.data.Dataset.from_tensor_slices(out)

    shuffle = shuffle_buffer > 0
    names = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and len(files) > 1:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    records = names.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"), cycle_length=min(4, len(files)),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    parsed = records.batch(256).map(lambda r: tf.io.parse_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True).unbatch()
    examples = parsed.flat_map(expand)
    if shuffle:
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    ds = examples.batch(batch_size)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = getattr(tf.data.experimental.AutoShardPolicy, shard_policy)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def load_prepared(loaded: Any) -> Any:
    """The dataset of a config whose ``data.prepared`` names a prepared folder: SearchData or RecommendationData."""
    cfg = loaded.config
    kind = "search" if cfg.data.dataset in ("homedepot", "search-csv") else "recommendation"
    sliced = [k for k in SLICING[kind] if getattr(cfg.data, k)] + (["periods"] if cfg.data.periods > 1 else [])
    if sliced:
        raise ConfigError.of([loaded.problem("data.%s" % k, "slices files read in memory; a prepared dataset (data.prepared) is "
                                             "used whole (set it back to its default)") for k in sliced])
    prepared = open_prepared(cfg.data.prepared, cfg.data)
    catalog = read_catalog(prepared)
    if prepared.manifest["kind"] == "search":
        train = ShardedJudgments(prepared, source=prepared.manifest["splits"]["train"].get("source", "train"))
        train.check_split(cfg)
        return SearchData(catalog, train, read_judgments(prepared, "valid"), drops=prepared.drops(),  # type: ignore[arg-type]
                          name=prepared.manifest["dataset"])
    train = ShardedSequences(prepared, "train", "all", source=prepared.manifest["splits"]["train"].get("source", "train"))
    valid = read_sequences(prepared, "valid", cfg.recommendation.max_history)
    return RecommendationData(catalog, train, valid, drops=prepared.drops(), name=prepared.manifest["dataset"])  # type: ignore[arg-type]
