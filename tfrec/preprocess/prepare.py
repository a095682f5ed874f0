"""``tfrec data prepare --config X --out DIR``: a config's data, validated and split, as TFRecord shards.

What runs where: the catalog (bounded by the number of products) and search judgments (bounded by
what people labelled) are read and validated in this process with :mod:`tfrec.data.readers`, the
same code as the in-memory path. The interaction log, which grows with traffic, goes through the
Spark job of :mod:`tfrec.preprocess.spark_job`. Amazon Scientific comes already split, so its
examples are written as given, row for row.

The folder is built in a staging folder beside ``DIR`` and renamed into place once every shard and
the manifest are written: an interrupted run leaves no folder a reader could take for complete. A
rerun with the same inputs (name, size, modification time) and the same ``data`` config finds the
shards intact and does nothing.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec.config.loader import ConfigError, LoadedConfig
from tfrec.data.datasets import _load_search_csv, load_amazon_scientific, required_files
from tfrec.data.errors import DataError, DropReport, RowChecker
from tfrec.data.locations import location
from tfrec.data.prepared import manifest as mf
from tfrec.data.prepared.reader import SLICING
from tfrec.data.prepared.records import ShardWriter, encode_example, shard_name
from tfrec.data.readers import read_catalog
from tfrec.data.stats import _catalog_stats, search_stats
from tfrec.data.tables import Catalog, Judgments, Sequences
from tfrec.version import __version__

log = logging.getLogger(__name__)

SEARCH_DATASETS = ("homedepot", "search-csv")
PREPARABLE = (*SEARCH_DATASETS, "interactions-csv", "amazon-scientific")
CATALOG_SHARD_ROWS = 250_000
QUERY_SHARD_QUERIES = 50_000


@dataclass(frozen=True)
class PrepareResult:
    """Where the prepared dataset is, and whether this call wrote it or found it up to date."""

    folder: Path
    manifest: dict
    up_to_date: bool
    seconds: float


def prepare(loaded: LoadedConfig, out: Path | str, *, master: Optional[str] = None, workers: Optional[int] = None,
            shards: int = 16, driver_memory: str = "1g", force: bool = False, text_vectors: bool = False) -> PrepareResult:
    """Validate, split and write the data a config names to ``out`` as TFRecord shards plus manifest.json."""
    from tfrec.preprocess.spark_job import EngineOptions, expand_inputs

    started = time.perf_counter()
    cfg = loaded.config
    data = cfg.data
    _check_preparable(loaded)
    out = mf.local_folder(out)
    inputs = required_files(loaded)
    if data.dataset == "interactions-csv":
        log_files = expand_inputs(inputs.pop("data.interactions.path"))
        inputs.update({"data.interactions.path[%d]" % i: f for i, f in enumerate(log_files)})
    for key, path in inputs.items():
        if not path.is_file():
            raise loaded.error(key.split("[")[0], "data file %s not found" % path)
    fingerprint = mf.input_fingerprint(inputs)
    config_hash = mf.data_config_hash(data)
    query_split = mf.query_split_of(cfg) if data.dataset in SEARCH_DATASETS else None
    if (out / mf.MANIFEST).is_file():
        existing = mf.read_manifest(out)
        wanted = _vector_key(cfg.text) if text_vectors else None
        has = (existing.get("text_vectors") or {}).get("model_key")
        same = (existing.get("config_hash") == config_hash and existing.get("inputs") == fingerprint
                and existing.get("query_split") == query_split)
        if same and (wanted is None or wanted == has):
            mf.verify_shards(out, existing)
            return PrepareResult(out, existing, up_to_date=True, seconds=time.perf_counter() - started)
        if not force:
            why = ("was prepared without text vectors of this text model" if same else
                   "holds a dataset prepared from other inputs, another data config or another split of the search "
                   "training queries (ranking.holdout_fraction, run.seed)")
            raise DataError(str(out), "%s; pass --force to replace it, or choose another --out" % why)
    elif out.exists() and any(out.iterdir()):
        # Never deleted, --force or not: it is not something tfrec data prepare wrote.
        raise DataError(str(out), "exists and is not a prepared dataset (no %s); choose an empty or new folder" % mf.MANIFEST)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / (".%s.partial-%d" % (out.name, os.getpid()))
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        checker = RowChecker(strict=data.strict)
        folder = location(data.dir or ".")
        engine: dict[str, Any] = {"name": "in-process"}
        if data.dataset in SEARCH_DATASETS:
            search = _load_search_csv(loaded, folder, checker, {})
            search.name = data.dataset
            catalog = search.catalog
            # The ranker's held-out training queries are chosen here, as the in-memory run chooses them, so the
            # two towers can stream theirs; training checks that its config asks for the same split.
            held = search.train.held_out_queries(cfg.ranking.holdout_fraction, cfg.run.seed)
            splits = {"train": _write_query_records(staging / "train", search.train, ~held),
                      "ranker": _write_query_records(staging / "ranker", search.train, held),
                      "valid": _write_judgments(staging / "valid", search.valid)}
            stats = search_stats(search, cfg)
            extra: dict[str, Any] = {"query_split": query_split, **_search_vocabulary(staging, search.train, held, len(catalog))}
        elif data.dataset == "amazon-scientific":
            rec = load_amazon_scientific(folder, checker)
            catalog = rec.catalog
            splits = {name: _write_sequences(staging / name, getattr(rec, name)) for name in ("train", "valid")}
            counts = _example_counts(rec.train, rec.valid, len(catalog))
            extra = _count_files(staging, catalog, counts)
            hist = {s: np.bincount(getattr(rec, s).history_lengths()) for s in ("train", "valid")}
            stats = _recommendation_stats(data.dataset, catalog, splits, hist, counts["seen"], counts["valid_targets"],
                                          checker.report, cfg.recommendation.max_history, None)
        else:
            from tfrec.preprocess.spark_job import LogSpec, run_log_job, spark_session

            catalog = read_catalog(data.catalog, folder, checker)
            spec = data.interactions
            options = EngineOptions(master=master, workers=workers, driver_memory=driver_memory, shards=shards,
                                    local_dir=str(staging / "_spark"))
            spark = spark_session(options, staging / "spark.log")
            engine = {"name": "spark", "version": spark.version, "master": options.resolved_master(), "shards": shards}
            try:
                result = run_log_job(spark, log_files, LogSpec(spec.user_column, spec.item_column, spec.timestamp_column,
                                                               spec.rating_column, spec.encoding),
                                     catalog.ids.astype(str), str(catalog.source), strict=data.strict, out=staging, shards=shards,
                                     dead_letter=staging / "dead_letter")
            finally:
                spark.stop()
            shutil.rmtree(staging / "_spark", ignore_errors=True)
            source = ", ".join(str(f) for f in log_files)
            splits = {s: {"kind": "sequences", "shards": result.shards[s], "source": source, **result.counts[s]}
                      for s in ("train", "valid", "test")}
            splits["train"]["examples_rest"] = splits["train"]["examples"] - splits["train"]["users"]
            report = checker.report
            report.merge(DropReport.from_dict({"reasons": result.drops}))
            c = result.item_counts
            counts = {"train": c["train"], "targets_all": c["targets_all"], "targets_rest": c["targets_rest"],
                      "vocab_all": c["log_items"] > 0, "vocab_rest": c["log_items"] > 0, "seen": c["train"] > 0,
                      "valid_targets": c["valid_targets"]}
            extra = _count_files(staging, catalog, counts)
            stats = _recommendation_stats(data.dataset, catalog, splits, result.history_hist, counts["seen"], counts["valid_targets"],
                                          report, cfg.recommendation.max_history,
                                          {"events": result.events, "users": result.users, "source": source})
            stats["interactions"]["users_with_fewer_than_3_events"] = result.short_users
            extra["dead_letter"] = "dead_letter" if result.drops else None
        catalog_entry = _write_catalog(staging / "catalog", catalog)
        if text_vectors:
            extra["text_vectors"] = _text_vector_step(catalog, cfg.text, staging, master, workers, driver_memory, engine)
        (staging / "vocab").mkdir(exist_ok=True)
        (staging / "vocab" / "items.txt").write_text("".join(i + "\n" for i in catalog.ids.astype(str)), encoding="utf-8")
        manifest = {
            "format": mf.FORMAT, "version": mf.FORMAT_VERSION, "tfrec_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dataset": data.dataset, "kind": "search" if data.dataset in SEARCH_DATASETS else "recommendation",
            "config_hash": config_hash, "data_config": mf.hashed_values(data),
            "inputs": fingerprint, "engine": engine, "compression": "GZIP",
            "catalog": catalog_entry, "splits": splits, "stats": stats, **extra,
            "schema": {"catalog": mf.CATALOG_FEATURES,
                       "splits": ({"train": mf.QUERY_FEATURES, "ranker": mf.QUERY_FEATURES, "valid": mf.JUDGMENT_FEATURES}
                                  if data.dataset in SEARCH_DATASETS else mf.SEQUENCE_FEATURES)},
        }
        mf.write_manifest(staging, manifest)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareResult(out, manifest, up_to_date=False, seconds=time.perf_counter() - started)


def _vector_key(text_cfg: Any) -> str:
    from tfrec.text.catalog import catalog_vector_key  # lazy: imports TensorFlow

    return catalog_vector_key(text_cfg)


def _text_vector_step(catalog: Catalog, text_cfg: Any, staging: Path, master: Optional[str], workers: Optional[int],
                      driver_memory: str, engine: dict) -> dict[str, Any]:
    """Frozen text vectors of every product, encoded on Spark's workers (a session of its own)."""
    from tfrec.preprocess.spark_job import EngineOptions, spark_session
    from tfrec.preprocess.text_vectors import write_text_vectors

    options = EngineOptions(master=master, workers=workers, driver_memory=driver_memory, local_dir=str(staging / "_spark"))
    spark = spark_session(options, staging / "spark.log")
    try:
        # One partition per worker slot: each loads the encoder once.
        partitions = spark.sparkContext.defaultParallelism
        entry = write_text_vectors(spark, catalog, text_cfg, staging, partitions)
    finally:
        spark.stop()
    shutil.rmtree(staging / "_spark", ignore_errors=True)
    engine.setdefault("text_vectors", {"name": "spark", "master": options.resolved_master(), "partitions": partitions})
    log.info("text vectors: %d products, %d encoded, %d from the embedding cache", entry["items"], entry["encoded"], entry["from_cache"])
    return entry


def _check_preparable(loaded: LoadedConfig) -> None:
    data = loaded.config.data
    if data.dataset not in PREPARABLE:
        raise loaded.error("data.dataset", "%s is read whole in memory (it is small); tfrec data prepare handles %s"
                           % (data.dataset, ", ".join(PREPARABLE)))
    kind = "search" if data.dataset in SEARCH_DATASETS else "recommendation"
    problems = [loaded.problem("data.%s" % k, "slices the files for smoke runs; a prepared dataset is always whole (set it to 0)")
                for k in SLICING[kind] if getattr(data, k)]
    if data.periods > 1:
        problems.append(loaded.problem("data.periods", "periods apply to files read in memory; prepare each period's files instead"))
    if problems:
        raise ConfigError.of(problems)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out``; a replaced folder is renamed aside first and deleted after."""
    old = None
    if out.exists():
        old = out.parent / (".%s.replaced-%d" % (out.name, os.getpid()))
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_catalog(folder: Path, catalog: Catalog) -> dict[str, Any]:
    """The catalog as shards of one Example per product, in row order."""
    folder.mkdir(parents=True)
    n = len(catalog)
    count = max(1, -(-n // CATALOG_SHARD_ROWS))
    shards = []
    texts = {k: v.astype(str) for k, v in catalog.texts.items()}
    for s in range(count):
        with ShardWriter(folder / shard_name(s, count), compressed=True) as writer:
            for row in range(s * CATALOG_SHARD_ROWS, min(n, (s + 1) * CATALOG_SHARD_ROWS)):
                features: dict[str, Any] = {"row": int(row), "product_id": str(catalog.ids[row])}
                features.update({"text:" + k: v[row] for k, v in texts.items()})
                features.update({"numeric:" + k: float(v[row]) for k, v in catalog.numeric.items()})
                features.update({"categorical:" + k: str(v[row]) for k, v in catalog.categorical.items()})
                writer.write(encode_example(features))
            shards.append(writer.close())
    return {"items": n, "source": str(catalog.source), "text_fields": list(catalog.texts), "numeric": list(catalog.numeric),
            "categorical": list(catalog.categorical), "shards": shards}


def _write_judgments(folder: Path, judgments: Judgments) -> dict[str, Any]:
    folder.mkdir(parents=True)
    with ShardWriter(folder / shard_name(0, 1), compressed=True) as writer:
        for q, p, label in zip(judgments.queries.astype(str), judgments.products.tolist(), judgments.labels.tolist()):
            writer.write(encode_example({"query": q, "product": int(p), "label": float(label)}))
        entry = writer.close()
    return {"kind": "judgments", "shards": [entry], "records": len(judgments), "examples": len(judgments),
            "source": str(judgments.source)}


def _write_query_records(folder: Path, judgments: Judgments, keep: np.ndarray) -> dict[str, Any]:
    """The judgments at ``keep`` as one record per query (first-appearance order), QUERY_SHARD_QUERIES queries per shard."""
    folder.mkdir(parents=True)
    queries = judgments.queries.astype(str)
    groups: dict[str, list[int]] = {}
    for row in np.flatnonzero(keep).tolist():
        groups.setdefault(queries[row], []).append(row)
    items = list(groups.items())
    count = max(1, -(-len(items) // QUERY_SHARD_QUERIES))
    shards = []
    for s in range(count):
        with ShardWriter(folder / shard_name(s, count), compressed=True) as writer:
            for query, rows in items[s * QUERY_SHARD_QUERIES:(s + 1) * QUERY_SHARD_QUERIES]:
                writer.write(encode_example({"query": query, "products": judgments.products[rows].astype(np.int64),
                                             "labels": judgments.labels[rows].astype(np.float32), "positions": np.asarray(rows, np.int64)}))
            shards.append(writer.close())
    labels = judgments.labels[keep]
    return {"kind": "queries", "shards": shards, "records": len(items), "examples": int(keep.sum()), "queries": len(items),
            "labels": [float(labels.min()), float(labels.max())] if len(labels) else None, "source": str(judgments.source)}


def _search_vocabulary(folder: Path, train: Judgments, held: np.ndarray, n_items: int) -> dict[str, Any]:
    """What search training needs of all its judgments without reading them: query terms and judged products."""
    from tfrec.lexical.index import vocabulary_terms  # lazy: only search datasets need the tokenizer

    (folder / "vocab").mkdir(exist_ok=True)
    terms = sorted(vocabulary_terms(np.unique(train.queries.astype(str)).tolist()))
    (folder / "vocab" / "query_terms.txt").write_text("".join(t + "\n" for t in terms), encoding="utf-8")
    seen = np.zeros(n_items, bool)
    seen[train.products] = True
    towers = np.zeros(n_items, bool)
    towers[train.products[~held]] = True
    np.savez(folder / "judged_products.npz", seen=seen, towers=towers)
    return {"query_terms": "vocab/query_terms.txt", "judged_products": "judged_products.npz"}


def _write_sequences(folder: Path, sequences: Sequences) -> dict[str, Any]:
    """Given (history -> target) examples, one record each, in their order; ``newest`` marks each user's longest history."""
    folder.mkdir(parents=True)
    newest = np.zeros(len(sequences), bool)
    if len(sequences):
        newest[sequences.newest_split()[1]] = True
    with ShardWriter(folder / shard_name(0, 1), compressed=True) as writer:
        for user, start, end, target, last in zip(sequences.users.astype(str), sequences.starts, sequences.ends, sequences.targets, newest):
            items = np.append(sequences.items[start:end], target)
            n = int(end - start)
            writer.write(encode_example({"user": user, "items": items.astype(np.int64), "first": n, "last": n + 1,
                                         "newest": n if last else -1}))
        entry = writer.close()
    users = len(set(sequences.users.tolist()))
    return {"kind": "sequences", "shards": [entry], "records": len(sequences), "examples": len(sequences),
            "examples_rest": len(sequences) - users, "users": users, "source": str(sequences.source)}


def _example_counts(train: Sequences, valid: Sequences, n_items: int) -> dict[str, np.ndarray]:
    """The per-item arrays of :func:`_count_files` for examples given as (history, target) rows."""
    rest_rows, newest = train.newest_split()
    # Each user's interactions once: their longest history plus its target (tfrec.evaluation.recommend.item_counts).
    once = np.concatenate([train.items[train.starts[i] : train.ends[i]] for i in newest] + [train.targets[newest]]).astype(np.int64)
    histories = np.zeros(n_items, bool)
    cover = np.zeros(len(train.items) + 1, np.int64)  # positions of the flat item array inside some history
    np.add.at(cover, train.starts, 1)
    np.add.at(cover, train.ends, -1)
    histories[train.items[np.cumsum(cover)[:-1] > 0]] = True
    flat = np.zeros(n_items, bool)
    flat[train.items] = True  # what tfrec.recommend.train.training_items sees: the shared flat item array
    vocab_all, vocab_rest = flat.copy(), flat.copy()
    vocab_all[train.targets] = True
    vocab_rest[train.targets[rest_rows]] = True
    seen = histories.copy()
    seen[train.targets] = True
    return {"train": np.bincount(once, minlength=n_items), "targets_all": np.bincount(train.targets, minlength=n_items),
            "targets_rest": np.bincount(train.targets[rest_rows], minlength=n_items), "vocab_all": vocab_all,
            "vocab_rest": vocab_rest, "seen": seen, "valid_targets": np.bincount(valid.targets, minlength=n_items)}


def _count_files(folder: Path, catalog: Catalog, counts: dict[str, np.ndarray]) -> dict[str, Any]:
    """item_counts.npz (popularity, sampling correction, vocabularies, cold targets) and the id vocabulary files."""
    (folder / "vocab").mkdir(exist_ok=True)
    for name in ("all", "rest"):
        (folder / "vocab" / ("train_items_%s.txt" % name)).write_text(
            "".join(i + "\n" for i in catalog.ids[counts["vocab_%s" % name]].astype(str)), encoding="utf-8")
    np.savez(folder / "item_counts.npz", **{k: np.asarray(v) for k, v in counts.items()})
    return {"vocabularies": {"items": "vocab/items.txt", "train_items_all": "vocab/train_items_all.txt",
                             "train_items_rest": "vocab/train_items_rest.txt"}, "item_counts": "item_counts.npz"}


def _histogram_summary(hist: np.ndarray) -> dict[str, float]:
    """mean / median / max of values given as a histogram (index = value), as tfrec.data.stats summarises arrays."""
    hist = np.asarray(hist, np.int64)
    n = int(hist.sum())
    if n == 0:
        return {"mean": 0.0, "median": 0.0, "max": 0.0}
    values = np.arange(len(hist))
    cum = np.cumsum(hist)
    lo, hi = int(np.searchsorted(cum, (n - 1) // 2 + 1)), int(np.searchsorted(cum, n // 2 + 1))
    return {"mean": round(float((values * hist).sum() / n), 2), "median": round((lo + hi) / 2, 2),
            "max": round(float(values[hist > 0].max()), 2)}


def _recommendation_stats(name: str, catalog: Catalog, splits: dict, hist: dict, seen: np.ndarray, valid_targets: np.ndarray,
                          drops: DropReport, max_history: int, interactions: Optional[dict]) -> dict[str, Any]:
    """The fields of tfrec.data.stats.recommendation_stats, from counts instead of in-memory sequences."""
    out: dict[str, Any] = {"dataset": name, "catalog": _catalog_stats(catalog)}
    for split in ("train", "valid"):
        h = np.asarray(hist[split], np.int64)
        out[split] = {"examples": int(h.sum()), "users": int(splits[split].get("users", 0)), "history_length": _histogram_summary(h),
                      "histories_cut_to_max_history": int(h[max_history + 1:].sum()), "source": splits[split].get("source", name)}
    out["overlap"] = {"catalog_items_seen_in_train": int(seen.sum()),
                      "valid_targets_never_seen_in_train": int(valid_targets[~seen].sum())}
    out["dropped_rows"] = drops.as_dict()
    if interactions is not None:
        out["interactions"] = dict(interactions)
    return out
