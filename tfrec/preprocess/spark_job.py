"""The interaction-log part of ``tfrec data prepare``, on Apache Spark.

The log is the part of a shop's data that grows with traffic, so it never enters one Python
process: Spark reads it as text lines (exact line numbers, split across workers), the workers
parse and validate each line with the same rules and messages as :mod:`tfrec.data.readers`,
a broadcast join maps item ids to catalog rows, and a shuffle by user groups each user's events,
sorted by (timestamp, position in the file) as the in-memory split sorts them. Each shuffle
partition then writes one TFRecord shard per split (one record per user) and a small summary
(counts per item, history-length histograms) that the driver adds up. Spark spills to disk, so
memory stays flat as the log grows.

Embedded, the session is ``local[N]`` on this machine; ``master`` points the same job at a
cluster (the output folder must then be on storage every worker can write).
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import unquote

import numpy as np

from tfrec.compat import CompatibilityError
from tfrec.data.errors import DataError, _reason
from tfrec.data.locations import Location, expand, first_line, parquet_source
from tfrec.data.prepared.records import ShardWriter, encode_example, shard_name
from tfrec.data.readers import _parse_float, _parse_timestamp
from tfrec.data.sources import is_parquet

_LOCAL_INDEX_MASK = (1 << 33) - 1  # monotonically_increasing_id: partition << 33 | row within the partition
_SPLITS = ("train", "valid", "test")
# Per-item counts a prepared recommendation dataset keeps (item_counts.npz): "train" each user's train
# interactions once (the popularity baseline), "targets_all"/"targets_rest" the train targets with and
# without each user's newest example (sampling correction), "log_items" every logged interaction (the id
# vocabulary), "valid_targets" the valid targets (cold-target statistics).
COUNT_ARRAYS = ("train", "targets_all", "targets_rest", "log_items", "valid_targets")


@dataclass(frozen=True)
class EngineOptions:
    """How the Spark session runs: ``master`` (``local[N]`` embedded, or a cluster URL) and its memory."""

    master: Optional[str] = None  # None: local[workers]
    workers: Optional[int] = None  # None: every core
    driver_memory: str = "1g"
    shards: int = 16
    local_dir: Optional[str] = None

    def resolved_master(self) -> str:
        """The Spark master URL this job uses."""
        return self.master or "local[%s]" % (self.workers or "*")


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` during the block: the JVM started inside keeps it as its stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log_file:
            os.dup2(log_file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def spark_session(options: EngineOptions, log_path: Path) -> Any:
    """A Spark session bound to 127.0.0.1, without a web UI, using this Python for its workers.

    The JVM's own output (startup notices, its log) goes to ``log_path``; failures still surface
    here as exceptions.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise CompatibilityError("interaction logs are prepared with Apache Spark, which is not installed: pip install "
                                 "'tfrec-shop[scale]' (it also needs a Java 17+ runtime from a package, e.g. Debian's "
                                 "openjdk-17-jre-headless)") from None
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise CompatibilityError("Apache Spark needs a Java 17+ runtime and none was found (no java on PATH, no JAVA_HOME): "
                                 "install one from a package, e.g. Debian's openjdk-17-jre-headless")
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    log_config = Path(__file__).with_name("log4j2.properties").resolve()
    local_dir = options.local_dir or tempfile.gettempdir()
    builder = (
        SparkSession.builder.master(options.resolved_master()).appName("tfrec data prepare")
        .config("spark.driver.memory", options.driver_memory)
        .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", "-Dlog4j2.configurationFile=file:%s" % log_config)
        .config("spark.executor.extraJavaOptions", "-Dlog4j2.configurationFile=file:%s" % log_config)
        .config("spark.sql.shuffle.partitions", str(options.shards))
        # Input splits of 16 MB instead of 128 MB: more, smaller read tasks keep every core busy (measured:
        # 5M events 137 s -> 95 s on 2 cores); line numbers stay exact (they come from each split's offset).
        .config("spark.sql.files.maxPartitionBytes", str(16 << 20))
        # A fixed partition count: each shuffle partition is one shard, the same on every rerun.
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.local.dir", local_dir)
        .config("spark.python.worker.reuse", "true")
    )
    if options.resolved_master().startswith("local"):
        # Embedded: the driver's ports listen on the loopback interface only.
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
    with _stderr_to(log_path):
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def expand_inputs(path: Location) -> list[Location]:
    """The files a log path (local or a URI) names: the file, or every file a glob pattern matches (sorted)."""
    files = expand(path)
    if not files:
        raise DataError(str(path), "no file matches this pattern" if any(c in str(path) for c in "*?[") else "file not found")
    return files


@dataclass
class LogSpec:
    """The interaction columns and the rules that apply to them (from ``data.interactions``)."""

    user: str
    item: str
    timestamp: str
    rating: Optional[str]
    encoding: str
    delimiter: str = ","


def _csv_header(path: Location, spec: LogSpec, required: list[str]) -> list[str]:
    try:
        first = first_line(path).decode(spec.encoding)
    except UnicodeDecodeError as err:
        raise DataError(str(path), "the header is not valid %s text (%s)" % (spec.encoding, err), line=1) from None
    if not first.strip():
        raise DataError(str(path), "empty file: expected a header row with columns %s" % ", ".join(required))
    header = [h.strip() for h in next(csv.reader([first.rstrip("\r\n")], delimiter=spec.delimiter))]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(str(path), "the header has no column %s (it has: %s)" % (", ".join(repr(m) for m in missing), ", ".join(header)),
                        line=1)
    return header


def _parquet_header(path: Location, required: list[str]) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        header = list(pq.read_schema(parquet_source(path)).names)
    except (pa.ArrowException, OSError) as err:
        raise DataError(str(path), "not a readable Parquet file (%s)" % err) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(str(path), "the file has no column %s (it has: %s)" % (", ".join(repr(m) for m in missing), ", ".join(header)))
    return header


def _check_same_format(files: list[Location]) -> None:
    kinds = {is_parquet(f) for f in files}
    if len(kinds) > 1:
        raise DataError(str(files[0].parent), "the log mixes CSV and Parquet files (%s); use one format" % ", ".join(f.name for f in files))


@dataclass
class LogResult:
    """What the log job wrote and counted."""

    shards: dict  # split -> [shard entry]
    counts: dict  # split -> {"records", "examples", "users"}
    events: int
    users: int
    short_users: int
    item_counts: dict  # COUNT_ARRAYS name -> int64 [n_items]
    history_hist: dict  # split -> int64 histogram of history lengths
    drops: list  # [{file, field, reason, rows, first_lines, examples}]


def run_log_job(spark: Any, files: list[Location], spec: LogSpec, catalog_ids: np.ndarray, catalog_source: str, *, strict: bool,
                out: Path, shards: int, dead_letter: Path) -> LogResult:
    """Validate, split and write the interaction log ``files`` (CSV or Parquet) as per-user sequence shards under ``out``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    _check_same_format(files)
    required = [spec.user, spec.item, spec.timestamp] + ([spec.rating] if spec.rating else [])
    parquet = is_parquet(files[0])
    headers = [_parquet_header(f, required) if parquet else _csv_header(f, spec, required) for f in files]
    if parquet and len({tuple(h) for h in headers}) > 1:
        # Parquet columns are read by name; differing schemas are refused rather than merged.
        raise DataError(str(files[1]), "its columns (%s) differ from %s's (%s)" % (", ".join(headers[1]), files[0].name, ", ".join(headers[0])))
    file_index = {_uri_key(f.resolve().as_uri()): i for i, f in enumerate(files)}
    names = [str(f) for f in files]
    if parquet:
        raw = spark.read.parquet(*[str(f) for f in files]).select(*[F.col(c).cast("string").alias(c) for c in required])
    else:
        raw = spark.read.text([str(f) for f in files], wholetext=False)
    located = raw.select("*", F.input_file_name().alias("_file"), F.input_file_block_start().alias("_block"),
                         F.monotonically_increasing_id().alias("_mid"))
    # Line numbers: rows of one file split are in file order; the splits' row counts give each one's first line.
    blocks = located.groupBy("_file", "_block").agg(F.count(F.lit(1)).alias("n"), F.min(F.col("_mid").bitwiseAND(_LOCAL_INDEX_MASK)).alias("lo")).collect()
    base: dict = {}
    for uri in {b["_file"] for b in blocks}:
        rows_before = 0
        for b in sorted((b for b in blocks if b["_file"] == uri), key=lambda b: b["_block"]):
            base[(uri, b["_block"])] = rows_before - b["lo"] + (0 if parquet else 1)
            rows_before += b["n"]
    known = {uri: file_index.get(_uri_key(uri)) for uri in {b["_file"] for b in blocks}}
    unknown = [u for u, i in known.items() if i is None]
    if unknown:
        raise DataError(unknown[0], "Spark read a file tfrec did not list (%s)" % ", ".join(sorted(file_index)))

    parse = _Parser(spec, headers, names, base, known, parquet, required)
    schema = ("user string, item_id string, ts long, rating double, fileidx int, line long, reason string, field string, "
              "message string, raw string")
    parsed = located.mapInPandas(parse, schema)
    import pandas as pd

    # Through Arrow, not a Python list of rows: a million catalog ids cross to the JVM in about a second.
    ids = spark.createDataFrame(pd.DataFrame({"item_id": np.asarray(catalog_ids, dtype=str).astype(object),
                                              "row": np.arange(len(catalog_ids), dtype=np.int32)}))
    joined = parsed.join(F.broadcast(ids), on="item_id", how="left")
    missing = F.col("reason").isNull() & F.col("row").isNull() & F.col("user").isNotNull()
    not_in_catalog = F.format_string("item id '%s' is not in the catalog (%s)", F.col("item_id"), F.lit(catalog_source))
    validated = joined.select(
        "user", "ts", "row", "fileidx", "line", "raw", "item_id",
        F.when(missing, F.lit("item id is not in the catalog (%s)" % catalog_source)).otherwise(F.col("reason")).alias("reason"),
        F.when(missing, F.lit(spec.item)).otherwise(F.col("field")).alias("field"),
        F.when(missing, not_in_catalog).otherwise(F.col("message")).alias("message"),
    ).persist(StorageLevel.DISK_ONLY)
    try:
        bad = validated.filter(F.col("reason").isNotNull())
        counts = bad.groupBy("fileidx", "field", "reason").agg(F.count(F.lit(1)).alias("rows")).collect()
        drops = []
        if counts:
            first = bad.orderBy("fileidx", "line").limit(max(5 * len(counts), 50)).collect()
            if strict:
                row = first[0]
                raise DataError(names[row["fileidx"]], row["message"], line=row["line"], field_name=row["field"],
                                unit="row" if parquet else "line")
            for c in sorted(counts, key=lambda c: -c["rows"]):
                mine = [r for r in first if (r["fileidx"], r["field"], r["reason"]) == (c["fileidx"], c["field"], c["reason"])][:5]
                drops.append({"file": names[c["fileidx"]], "field": c["field"] or "", "reason": c["reason"], "rows": int(c["rows"]),
                              "unit": "row" if parquet else "line", "first_lines": [int(r["line"]) for r in mine],
                              "examples": [r["message"] for r in mine]})
            # Nothing is lost in lenient mode: every dropped row, its place and why, for fixing and replaying.
            bad.select(F.element_at(F.array(*[F.lit(n) for n in names]), F.col("fileidx") + 1).alias("file"), "line", "field",
                       "message", "raw").orderBy("file", "line").write.mode("overwrite").option("header", True).csv(str(dead_letter))
        good = validated.filter(F.col("reason").isNull()).select("user", "ts", (F.col("fileidx").cast("long") * (1 << 40) + F.col("line")).alias("pos"), "row")
        grouped = (good.groupBy("user").agg(F.sort_array(F.collect_list(F.struct("ts", "pos", "row"))).alias("ev"))
                   .select("user", F.col("ev.row").alias("items")).sortWithinPartitions("user"))
        writer = _ShardJob(str(out), shards, len(catalog_ids))
        summaries = grouped.mapInPandas(writer, "summary string").collect()
    finally:
        validated.unpersist()
    return _combine(out, [json.loads(s["summary"]) for s in summaries], len(catalog_ids), drops)


def _uri_key(uri: str) -> str:
    """A file URI as tfrec lists it and as Spark names it, made comparable (percent-encoding, ``file:/`` vs ``file:///``)."""
    text = unquote(uri)
    if text.startswith("file:"):
        return "file:///" + text[len("file:"):].lstrip("/")
    return text


class _Parser:
    """Runs on the workers: text lines (or Parquet cells) -> parsed, validated rows (pickled to them by Spark)."""

    def __init__(self, spec: LogSpec, headers: list, names: list, base: dict, known: dict, parquet: bool, required: list) -> None:
        self.spec, self.headers, self.names, self.base, self.known, self.parquet = spec, headers, names, base, known, parquet
        self.positions = [{c: h.index(c) for c in required} for h in headers]

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        spec = self.spec
        for pdf in batches:
            out: dict = {k: [] for k in ("user", "item_id", "ts", "rating", "fileidx", "line", "reason", "field", "message", "raw")}
            files, blocks, mids = pdf["_file"].tolist(), pdf["_block"].tolist(), pdf["_mid"].tolist()
            values = None if self.parquet else pdf["value"].tolist()
            for i in range(len(pdf)):
                index = self.known[files[i]]
                line = self.base[(files[i], blocks[i])] + (mids[i] & _LOCAL_INDEX_MASK)
                if self.parquet:
                    cells = {c: ("" if pdf[c].iat[i] is None else pdf[c].iat[i]) for c in self.positions[index]}
                    raw = ",".join(cells.values())
                else:
                    raw = values[i]
                    if line == 1 or not raw.strip():
                        continue  # the header; blank lines hold no data
                    header = self.headers[index]
                    try:
                        fields = raw.split(spec.delimiter) if '"' not in raw else next(csv.reader([raw], delimiter=spec.delimiter, strict=True))
                    except csv.Error as err:
                        self._bad(out, index, line, None, "broken quoting in this line (%s)" % err, raw)
                        continue
                    if len(fields) != len(header):
                        self._bad(out, index, line, None, "expected %d fields (%s), got %d" % (len(header), ",".join(header), len(fields)), raw)
                        continue
                    cells = {c: fields[p] for c, p in self.positions[index].items()}
                user = cells[spec.user].strip()
                if not user:
                    self._bad(out, index, line, spec.user, "expected a non-empty user id", raw)
                    continue
                item = cells[spec.item].strip()
                stamp = _parse_timestamp(cells[spec.timestamp])
                reason = field = message = None
                rating = None
                if stamp is None:
                    field, message = spec.timestamp, "expected an integer timestamp or an ISO 8601 date, got %r" % cells[spec.timestamp]
                elif spec.rating:
                    rating = _parse_float(cells[spec.rating])
                    if rating is None or rating != rating:
                        field, message, rating = spec.rating, "expected a number, got %r" % cells[spec.rating], None
                if message is not None:
                    # The catalog check comes first in the in-memory reader: a row with an unknown item reports that.
                    reason = _reason(DataError(self.names[index], message))
                for key, value in (("user", user), ("item_id", item), ("ts", stamp), ("rating", rating), ("fileidx", index),
                                   ("line", line), ("reason", reason), ("field", field), ("message", message),
                                   ("raw", raw)):
                    out[key].append(value)
            frame = pd.DataFrame(out)
            frame["ts"] = frame["ts"].astype("Int64")
            frame["rating"] = frame["rating"].astype("Float64")
            frame["fileidx"] = frame["fileidx"].astype("int32")
            frame["line"] = frame["line"].astype("int64")
            yield frame

    def _bad(self, out: dict, index: int, line: int, field: Optional[str], message: str, raw: str) -> None:
        error = DataError(self.names[index], message, line=line, field_name=field)
        for key, value in (("user", None), ("item_id", None), ("ts", None), ("rating", None), ("fileidx", index), ("line", line),
                           ("reason", _reason(error)), ("field", field), ("message", message), ("raw", raw)):
            out[key].append(value)


class _ShardJob:
    """Runs on the workers: one shuffle partition of (user, time-ordered item rows) -> one shard per split + a summary."""

    def __init__(self, out: str, shards: int, n_items: int) -> None:
        self.out, self.shards, self.n_items = out, shards, n_items

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        name = shard_name(part, self.shards)
        writers = {s: ShardWriter(Path(self.out) / s / name, compressed=True) for s in _SPLITS}
        counts = {k: np.zeros(self.n_items, np.int64) for k in COUNT_ARRAYS}
        hist = {s: np.zeros(1, np.int64) for s in _SPLITS}
        examples = dict.fromkeys(_SPLITS, 0)
        users = dict.fromkeys(_SPLITS, 0)
        events = all_users = short = 0
        try:
            for pdf in batches:
                for user, items in zip(pdf["user"].tolist(), pdf["items"].tolist()):
                    items = np.asarray(items, np.int64)
                    n = len(items)
                    events += n
                    all_users += 1
                    # The in-memory split keeps the whole log as its train item array: every logged item is in the id vocabulary.
                    counts["log_items"][items] += 1
                    if n < 3:
                        short += 1
                        continue
                    # Leave-one-out, as tfrec.data.readers.leave_one_out: the last item tests, the one before validates,
                    # every earlier position (from the second) is a train target; the user's newest train example is the
                    # model-selection holdout (tfrec.recommend.train.split_newest).
                    spans = {"valid": (items[: n - 1], n - 2, n - 1), "test": (items, n - 1, n)}
                    if n >= 4:
                        spans["train"] = (items[: n - 2], 1, n - 2)
                        np.add.at(counts["train"], items[: n - 2], 1)
                        np.add.at(counts["targets_all"], items[1 : n - 2], 1)
                        np.add.at(counts["targets_rest"], items[1 : n - 3], 1)
                    counts["valid_targets"][items[n - 2]] += 1
                    for split, (kept, first, last) in spans.items():
                        writers[split].write(encode_example({"user": user, "items": kept, "first": first, "last": last,
                                                             "newest": last - 1}))
                        examples[split] += last - first
                        users[split] += 1
                        lengths = np.arange(first, last)
                        if lengths[-1] >= len(hist[split]):
                            hist[split] = np.concatenate([hist[split], np.zeros(lengths[-1] + 1 - len(hist[split]), np.int64)])
                        hist[split][lengths] += 1
            entries = {s: w.close() for s, w in writers.items()}
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        summary_path = Path(self.out) / "_parts" / ("part-%05d.npz" % part)
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(summary_path, **counts, **{"hist_%s" % s: h for s, h in hist.items()})
        yield pd.DataFrame({"summary": [json.dumps({"part": part, "shards": entries, "examples": examples, "users": users,
                                                    "events": events, "all_users": all_users, "short": short})]})


def _combine(out: Path, summaries: list[dict], n_items: int, drops: list) -> LogResult:
    """Add up the partitions' summaries (and delete their scratch files)."""
    counts = {k: np.zeros(n_items, np.int64) for k in COUNT_ARRAYS}
    hist = {s: np.zeros(1, np.int64) for s in _SPLITS}
    for s in summaries:
        path = out / "_parts" / ("part-%05d.npz" % s["part"])
        with np.load(path) as parts:
            for k in COUNT_ARRAYS:
                counts[k] += parts[k]
            for split in _SPLITS:
                h = parts["hist_%s" % split]
                if len(h) > len(hist[split]):
                    hist[split] = np.concatenate([hist[split], np.zeros(len(h) - len(hist[split]), np.int64)])
                hist[split][: len(h)] += h
        path.unlink()
    shutil.rmtree(out / "_parts", ignore_errors=True)
    summaries.sort(key=lambda s: s["part"])
    return LogResult(
        shards={split: [s["shards"][split] for s in summaries] for split in _SPLITS},
        counts={split: {"records": sum(s["users"][split] for s in summaries), "examples": sum(s["examples"][split] for s in summaries),
                        "users": sum(s["users"][split] for s in summaries)} for split in _SPLITS},
        events=sum(s["events"] for s in summaries), users=sum(s["all_users"] for s in summaries),
        short_users=sum(s["short"] for s in summaries), item_counts=counts, history_hist=hist, drops=drops,
    )
