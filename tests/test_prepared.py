"""tfrec data prepare (Spark for interaction logs) and training input streamed from its shards.

The prepared splits must equal the in-memory ones row for row (a synthetic log, Amazon Scientific
and Home Depot), bad rows must fail strictly or land in the dead-letter output counted per reason,
reruns must be no-ops, and damaged folders must be refused with the file named.
"""
from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import sequence_rows
from tfrec.api import load_config
from tfrec.cli.main import main
from tfrec.config.loader import ConfigError
from tfrec.data.datasets import load_data
from tfrec.data.errors import DataError
from tfrec.data.prepared import manifest as mf
from tfrec.data.prepared.reader import ShardedJudgments, ShardedSequences, open_prepared, read_catalog, read_judgments, read_sequences
from tfrec.data.prepared.records import ShardWriter, encode_example, read_records
from tfrec.data.synthetic import write_interactions_csv
from tfrec.preprocess import prepare

pytest.importorskip("pyspark")
CONFIGS = Path(__file__).parents[1] / "tfrec" / "configs"

LOG_CONFIG = """\
data:
  dataset: interactions-csv
  dir: {dir}
  strict: {strict}
  catalog: {{path: products.csv, id_column: product_id, text_columns: [title], numeric_columns: [price], categorical_columns: [category]}}
  interactions: {{path: {log}, user_column: user_id, item_column: item_id, timestamp_column: timestamp, rating_column: rating}}
recommendation: {{max_history: 6}}
evaluation: {{ks: [5, 10]}}
"""


def _log_config(folder: Path, strict: bool = True, log: str = "interactions.csv") -> Path:
    path = folder / ("strict.yaml" if strict else "lenient.yaml")
    path.write_text(LOG_CONFIG.format(dir=folder, strict=str(strict).lower(), log=log), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """A small synthetic shop (300 products, 150 users) prepared once, strictly, in 3 shards."""
    folder = write_interactions_csv(tmp_path_factory.mktemp("shop"), n_items=300, n_users=150, seed=3)
    config = _log_config(folder)
    prepare(load_config(config), folder / "prepared", workers=2, shards=3)
    return folder


def test_records_read_back_with_tensorflow(tmp_path) -> None:
    """Examples encoded without TensorFlow parse with tf.io and the framing passes TFRecordDataset's CRC checks."""
    from tfrec import compat

    tf = compat.tensorflow()
    values = {"user": "U1 é", "items": np.array([3, 0, 2 ** 40, -1]), "first": 1, "w": [0.5, 2.0], "empty": []}
    with ShardWriter(tmp_path / "a.tfrecord.gz", compressed=True) as writer:
        writer.write(encode_example(values))
        writer.write(encode_example(values))
        entry = writer.close()
    assert entry["records"] == 2 and entry["file"] == "a.tfrecord.gz" and not (tmp_path / "a.tfrecord.gz.partial").exists()
    records = list(tf.data.TFRecordDataset([str(tmp_path / "a.tfrecord.gz")], compression_type="GZIP"))
    assert len(records) == 2 and list(read_records(tmp_path / "a.tfrecord.gz")) == [r.numpy() for r in records]
    example = tf.train.Example.FromString(records[0].numpy()).features.feature
    assert example["user"].bytes_list.value == ["U1 é".encode("utf-8")]
    assert list(example["items"].int64_list.value) == [3, 0, 2 ** 40, -1]
    assert list(example["w"].float_list.value) == [0.5, 2.0]
    assert list(example["empty"].int64_list.value) == []


def test_prepared_log_equals_the_in_memory_split(shop) -> None:
    """Train and valid examples, catalog, item counts and vocabularies match tfrec.load_data row for row."""
    loaded = load_config(shop / "strict.yaml")
    memory = load_data(loaded)
    prepared = open_prepared(shop / "prepared", loaded.config.data)
    catalog = read_catalog(prepared)
    assert catalog.ids.tolist() == memory.catalog.ids.tolist()
    assert catalog.texts["title"].tolist() == memory.catalog.texts["title"].tolist()
    np.testing.assert_array_equal(catalog.numeric["price"], memory.catalog.numeric["price"])
    for split in ("train", "valid"):
        assert sequence_rows(read_sequences(prepared, split)) == sequence_rows(getattr(memory, split))
    assert sequence_rows(read_sequences(prepared, "valid", 6), 6) == sequence_rows(memory.valid, 6)
    manifest = prepared.manifest
    assert manifest["splits"]["train"]["examples"] == len(memory.train) and len(manifest["splits"]["train"]["shards"]) == 3
    assert manifest["engine"]["name"] == "spark" and manifest["stats"]["interactions"]["events"] == len(memory.interactions)

    from tfrec.evaluation.recommend import item_counts
    from tfrec.recommend.train import sampling_probability, training_items

    streamed = ShardedSequences(prepared)
    rest_rows, newest_rows = memory.train.newest_split()
    rest = memory.train.take(rest_rows)
    np.testing.assert_array_equal(streamed.item_counts(), item_counts(memory.train, len(catalog)))
    np.testing.assert_allclose(sampling_probability(streamed.rest(), len(catalog)), sampling_probability(rest, len(catalog)))
    assert set(training_items(streamed.rest(), catalog)) == set(training_items(rest, memory.catalog))
    assert set(training_items(streamed, catalog)) == set(training_items(memory.train, memory.catalog))
    assert sequence_rows(streamed.newest(6), 6) == sequence_rows(memory.train.take(newest_rows), 6)


def test_streamed_examples_are_the_in_memory_examples(shop) -> None:
    """One streamed epoch yields each (history, target) exactly once, shuffled, the same for the same seed."""
    loaded = load_config(shop / "strict.yaml")
    memory = load_data(loaded)
    streamed = ShardedSequences(open_prepared(shop / "prepared", loaded.config.data))

    def epoch(part, seed):
        out = []
        for batch in part.dataset(6, 32, seed, shuffle_buffer=100):
            assert batch["history_index"].shape[1] == 6
            out += list(zip(map(tuple, batch["history_index"].numpy().tolist()), batch["target_index"].numpy().tolist()))
        return out

    for part, sequences in ((streamed, memory.train), (streamed.rest(), memory.train.take(memory.train.newest_split()[0]))):
        history, _ = sequences.padded_histories(6)
        first = epoch(part, 1)
        assert sorted(first) == sorted(zip(map(tuple, history.tolist()), sequences.targets.tolist()))
        assert len(first) == len(part)
        assert first == epoch(part, 1) and first != epoch(part, 2)


def test_rerun_is_a_no_op_and_a_changed_config_is_refused(shop, capsys) -> None:
    """Same inputs and data config: nothing is rewritten; another data config needs --force."""
    before = {p: p.stat().st_mtime_ns for p in (shop / "prepared").rglob("*.gz")}
    result = prepare(load_config(shop / "strict.yaml"), shop / "prepared", workers=2, shards=3)
    assert result.up_to_date
    assert before == {p: p.stat().st_mtime_ns for p in (shop / "prepared").rglob("*.gz")}
    with pytest.raises(DataError, match="--force"):
        prepare(load_config(shop / "strict.yaml", ["data.catalog.numeric_columns=[]"]), shop / "prepared")
    # Training with a config the folder was not prepared with names the differing key.
    with pytest.raises(DataError, match=r"data\.catalog"):
        load_data(load_config(shop / "strict.yaml", ["data.catalog.numeric_columns=[]", "data.prepared=%s" % (shop / "prepared")]))
    assert main(["data", "prepare", "--config", str(shop / "strict.yaml"), "--out", str(shop / "prepared"), "--quiet"]) == 0
    assert "up to date" in capsys.readouterr().out
    # A folder tfrec did not write is never replaced, even with --force.
    (shop / "mine").mkdir()
    (shop / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare(load_config(shop / "strict.yaml"), shop / "mine", force=True)
    assert (shop / "mine" / "notes.txt").read_text() == "keep me"


def test_damaged_folders_are_refused_naming_the_file(shop, tmp_path) -> None:
    """A truncated or corrupt shard, a missing manifest and a foreign manifest each fail with the path named."""
    copy = tmp_path / "copy"
    shutil.copytree(shop / "prepared", copy)
    loaded = load_config(shop / "strict.yaml", ["data.prepared=%s" % copy])
    shard = sorted((copy / "train").glob("*.gz"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"%s.*truncated" % shard.name):
        load_data(loaded)
    shard.write_bytes(data[:-8] + bytes(8))
    with pytest.raises(DataError, match=r"%s.*SHA-256" % shard.name):
        load_data(loaded)
    shard.write_bytes(data)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["valid"]["shards"].pop()
    manifest["splits"]["valid"]["shards"].append({"file": "part-00009-of-00009.tfrecord.gz", "bytes": 1, "sha256": "0", "records": 1})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="part-00009-of-00009.*missing"):
        load_data(loaded)
    (copy / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match="not a tfrec prepared-dataset manifest"):
        load_data(loaded)
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_data(loaded)
    with pytest.raises(ConfigError, match="max_users"):
        load_data(load_config(shop / "strict.yaml", ["data.prepared=%s" % (shop / "prepared"), "data.max_users=5"]))


BAD_ROWS = [
    # (row to write, the field it breaks): the first bad row is the timestamp, so strict messages match the in-memory reader.
    (["U0001", "P00001", "yesterday", "3"], "timestamp"),
    (["", "P00002", "1600000000", "3"], "user_id"),
    (["U0002", "NOPE", "1600000001", "3"], "item_id"),
    (["U0003", "P00003", "1600000002", "x"], "rating"),
    (["U0004", "P00004", "1600000003"], None),
]


def _with_bad_rows(folder: Path) -> list[int]:
    """Insert BAD_ROWS into interactions.csv at fixed places; returns their line numbers."""
    path = folder / "interactions.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    at = [5, 40, 41, 200, 333]
    for offset, ((row, _), index) in enumerate(zip(BAD_ROWS, at)):
        lines.insert(index - 1, ",".join(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return at


def test_bad_rows_fail_strictly_and_go_to_the_dead_letter_output_leniently(tmp_path) -> None:
    """Strict: the in-memory reader's error (file, line, field). Lenient: every bad row kept with its line and reason."""
    folder = write_interactions_csv(tmp_path / "bad", n_items=120, n_users=60, seed=5)
    lines = _with_bad_rows(folder)
    strict = load_config(_log_config(folder, strict=True))
    with pytest.raises(DataError) as prepared_error:
        prepare(strict, tmp_path / "strict_out", workers=2, shards=2)
    # The first bad row of the file, in the in-memory reader's words.
    assert str(prepared_error.value) == ("%s line %d, field 'timestamp': expected an integer timestamp or an ISO 8601 date, "
                                         "got 'yesterday'" % (folder / "interactions.csv", lines[0]))
    assert not (tmp_path / "strict_out").exists() and not list(tmp_path.glob(".strict_out*"))

    lenient = load_config(_log_config(folder, strict=False))
    memory = load_data(lenient)
    result = prepare(lenient, tmp_path / "lenient_out", workers=2, shards=2)
    prepared = open_prepared(result.folder, lenient.config.data)
    for split in ("train", "valid"):
        assert sequence_rows(read_sequences(prepared, split)) == sequence_rows(getattr(memory, split))
    dropped = result.manifest["stats"]["dropped_rows"]
    assert dropped["total"] == len(BAD_ROWS) == memory.drops.total
    assert sorted(r["field"] for r in dropped["reasons"]) == sorted(f or "" for _, f in BAD_ROWS)
    dead = []
    for part in sorted((result.folder / "dead_letter").glob("*.csv")):
        with open(part, newline="", encoding="utf-8") as f:
            dead += list(csv.DictReader(f))
    assert sorted(int(r["line"]) for r in dead) == lines
    assert {r["raw"] for r in dead} == {",".join(row) for row, _ in BAD_ROWS}


def test_mixed_log_files_are_refused(tmp_path) -> None:
    """A glob over CSV and Parquet log files is one error naming both."""
    folder = write_interactions_csv(tmp_path / "mixed", n_items=50, n_users=10, seed=1)
    import pandas as pd

    pd.read_csv(folder / "interactions.csv").to_parquet(folder / "interactions.parquet")
    config = _log_config(folder, log="interactions.*")
    with pytest.raises(DataError, match="mixes CSV and Parquet"):
        prepare(load_config(config), tmp_path / "out")


def test_amazon_scientific_prepares_row_for_row(shared_datasets, tmp_path) -> None:
    """The given train/valid files become records one for one; streamed examples equal them."""
    loaded = load_config(str(CONFIGS / "amazon_scientific.yaml"), ["data.dir=%s" % (shared_datasets / "amazon-scientific"), "data.max_users=0"])
    memory = load_data(loaded)
    result = prepare(loaded, tmp_path / "amazon")
    assert result.manifest["engine"]["name"] == "in-process"
    prepared = open_prepared(result.folder, loaded.config.data)
    assert sequence_rows(read_sequences(prepared, "train")) == sequence_rows(memory.train)
    assert sequence_rows(read_sequences(prepared, "valid")) == sequence_rows(memory.valid)
    streamed = ShardedSequences(prepared)
    rest_rows, newest_rows = memory.train.newest_split()
    assert len(streamed.rest()) == len(rest_rows)
    assert sequence_rows(streamed.newest(50), 50) == sequence_rows(memory.train.take(newest_rows), 50)


def test_home_depot_prepares_row_for_row(homedepot_slice, tmp_path) -> None:
    """Search judgments and the catalog come back from the shards as they were read."""
    small = ["evaluation.ks=[10]", "retrieval.top_k=100", "retrieval.hard_negative_depth=100"]
    loaded = load_config(str(CONFIGS / "default.yaml"), ["data.dir=%s" % homedepot_slice, *small])
    memory = load_data(loaded)
    result = prepare(loaded, tmp_path / "hd")
    prepared = open_prepared(result.folder, loaded.config.data)
    assert read_catalog(prepared).ids.tolist() == memory.catalog.ids.tolist()
    # Training queries are split for the ranker when prepared, exactly as an in-memory run splits them.
    held = memory.train.held_out_queries(loaded.config.ranking.holdout_fraction, loaded.config.run.seed)
    assert 0 < held.sum() < len(held)
    for split, want in (("train", memory.train.take(~held)), ("ranker", memory.train.take(held)), ("valid", memory.valid)):
        got = read_judgments(prepared, split)
        assert got.queries.tolist() == want.queries.tolist()
        np.testing.assert_array_equal(got.products, want.products)
        np.testing.assert_array_equal(got.labels, want.labels)
    data = load_data(load_config(str(CONFIGS / "default.yaml"),
                                 ["data.dir=%s" % homedepot_slice, "data.prepared=%s" % result.folder, *small]))
    assert isinstance(data.train, ShardedJudgments) and len(data.train) == len(memory.train)
    from tfrec.evaluation.search import seen_products
    from tfrec.lexical.index import vocabulary_terms

    assert data.train.query_terms() == sorted(vocabulary_terms(np.unique(memory.train.queries.astype(str)).tolist()))
    np.testing.assert_array_equal(seen_products(data.train, len(memory.catalog)), seen_products(memory.train, len(memory.catalog)))
    towers = np.zeros(len(memory.catalog), bool)
    towers[memory.train.products[~held]] = True
    np.testing.assert_array_equal(data.train.judged()["towers"], towers)
    assert data.train.label_range == (float(memory.train.labels.min()), float(memory.train.labels.max()))
    # Another split of the training queries is not what the folder holds.
    with pytest.raises(DataError, match=r"ranking.holdout_fraction \(prepared with 0.25, this config has 0.5\)"):
        load_data(load_config(str(CONFIGS / "default.yaml"), ["data.dir=%s" % homedepot_slice, "data.prepared=%s" % result.folder,
                                                              "ranking.holdout_fraction=0.5", *small]))
    with pytest.raises(ConfigError, match="train.distribute.strategy: multi_worker: a search run from a prepared dataset"):
        load_data(load_config(str(CONFIGS / "default.yaml"), ["data.dir=%s" % homedepot_slice, "data.prepared=%s" % result.folder,
                                                              "train.distribute.strategy=multi_worker", *small]))
    with pytest.raises(DataError, match="another split of the search training queries"):
        prepare(load_config(str(CONFIGS / "default.yaml"), ["data.dir=%s" % homedepot_slice, "run.seed=7", *small]), tmp_path / "hd")


def test_two_tower_pairs_stream_from_the_shards_as_in_memory(homedepot_slice, tmp_path) -> None:
    """The streamed pairs are the in-memory pairs (query, product, title, weight, sampling probability); negatives are never judged."""
    from tfrec import compat
    from tfrec.lexical.index import LexicalIndex
    from tfrec.lexical.scorer import LexicalScorer
    from tfrec.retrieval.pair_stream import write_pair_shards
    from tfrec.retrieval.train import training_pairs

    tf = compat.tensorflow()
    loaded = load_config(str(CONFIGS / "default.yaml"), ["data.dir=%s" % homedepot_slice, "evaluation.ks=[10]"])
    memory = load_data(loaded)
    result = prepare(loaded, tmp_path / "hd")
    data = load_data(load_config(str(CONFIGS / "default.yaml"), ["data.dir=%s" % homedepot_slice, "evaluation.ks=[10]",
                                                                 "data.prepared=%s" % result.folder]))
    held = memory.train.held_out_queries(loaded.config.ranking.holdout_fraction, loaded.config.run.seed)
    towers = memory.train.take(~held)
    want = training_pairs(towers, memory.catalog, min_relevance=2.0)
    catalog = memory.catalog
    lexical = LexicalScorer(LexicalIndex.build(list(catalog.text().astype(str)), data.train.query_terms()))
    shards = write_pair_shards(data.train, len(catalog), tmp_path / "pairs", min_relevance=2.0, lexical=lexical, depth=20, seed=0)
    assert shards.pairs == len(want["query"]) and shards.vocabulary(catalog.ids) == sorted(set(want["product_id"]))
    got: dict = {}
    for batch in shards.batches(catalog.ids, catalog.text(), batch_size=7, seed=3, shuffle_buffer=1000, sampling_correction=True):
        for k, v in batch.items():
            got.setdefault(k, []).extend(v.numpy().tolist())
    assert len(got["query"]) == shards.pairs // 7 * 7  # whole batches, the last partial one dropped

    def rows(features: dict) -> list:
        return sorted(zip(*(np.asarray(features[k]).astype(str).tolist() for k in ("query", "product_id", "title")),
                          np.round(np.asarray(features["weight"], np.float64), 5).tolist(),
                          np.round(np.asarray(features["sampling_probability"], np.float64), 7).tolist()))

    every = {k: [] for k in ("query", "product_id", "title", "weight", "sampling_probability")}
    for batch in shards.batches(catalog.ids, catalog.text(), batch_size=1, seed=3, shuffle_buffer=1000, sampling_correction=True):
        for k in every:
            every[k].extend(batch[k].numpy().tolist())
    every["query"] = [q.decode("utf-8") for q in every["query"]]
    every["product_id"] = [q.decode("utf-8") for q in every["product_id"]]
    every["title"] = [q.decode("utf-8") for q in every["title"]]
    assert rows(every) == rows(want)
    judged: dict = {}
    for q, p in zip(towers.queries.astype(str), towers.products):
        judged.setdefault(q, set()).add(str(catalog.ids[p]))
    queries = [q.decode("utf-8") for q in got["query"]]
    negatives = [n.decode("utf-8") for n in got["negative_id"]]
    assert not any(n in judged[q] for q, n in zip(queries, negatives))
    groups = dict(zip(queries, got["query_group"]))
    assert len(set(groups.values())) == len(groups)  # one group per query
    assert tf.reduce_all(tf.math.is_finite(tf.constant(got["negative_sampling_probability"])))


def test_interrupted_shard_is_never_complete(tmp_path) -> None:
    """A shard whose writer fails leaves no file under its final name."""
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s.tfrecord.gz", compressed=True) as writer:
            writer.write(b"x")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with gzip.open(tmp_path / "t.tfrecord.gz", "wb") as f:
        f.write(b"\x05\x00")
    with pytest.raises(ValueError, match="truncated"):
        list(read_records(tmp_path / "t.tfrecord.gz"))
    assert mf.data_config_hash(load_config(None).config.data) == mf.data_config_hash(load_config(None, ["data.prepared=x"]).config.data)


def test_prepare_command_line_forms(capsys) -> None:
    """--config with --out prepares; homedepot --raw converts; anything in between says which form it needs."""
    assert main(["data", "prepare", "--out", "x"]) == 2
    assert "--config CONFIG --out DIR" in capsys.readouterr().err
    assert main(["data", "prepare", "homedepot"]) == 2
    assert "homedepot --raw FILE" in capsys.readouterr().err
    assert main(["data", "prepare", "--config", "quick", "--out", "x", "--shards", "0"]) == 2
    assert "--shards must be at least 1" in capsys.readouterr().err


def test_growth_benchmark_measures_the_whole_process_tree(tmp_path) -> None:
    """The benchmark's sampler adds up a child's own children (as Spark's JVM and workers are)."""
    import sys

    from tfrec.benchmarks.scale import SIZES, measure, parse_sizes

    code = ("import subprocess, sys, time; x = bytearray(150 << 20); "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; y = bytearray(150 << 20); y[::4096] = b\\'x\\' * len(y[::4096]); "
            "time.sleep(2)']); x[::4096] = b'x' * len(x[::4096]); p.wait()")
    result = measure([sys.executable, "-c", code], tmp_path / "log.txt")
    assert result["exit_code"] == 0 and result["processes_at_peak"] >= 2
    assert result["peak_rss_gb"] >= 0.28  # both 150 MB buffers, touched, at once
    assert parse_sizes("1M,5M") == [1_000_000, 5_000_000] and set(parse_sizes("1M,5M,20M,50M")) == set(SIZES)
    with pytest.raises(ValueError, match="scale sizes are"):
        parse_sizes("3M")


def test_a_recommender_trains_from_the_shards(shop, tmp_path) -> None:
    """tfrec train with data.prepared runs the whole sequential pipeline on streamed examples and evaluates every valid user."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cli_runs import train_run

    run = train_run(tmp_path / "runs", str(shop / "strict.yaml"),
                    ["data.prepared=%s" % (shop / "prepared"), "text.max_length=32", "recommendation.epochs=1",
                     "recommendation.encoder=mean", "train.progress=false", "evaluation.bootstrap_resamples=100", "run.name=shop"], "shop")
    metrics = json.loads((run / "metrics.json").read_text())
    memory = load_data(load_config(shop / "strict.yaml"))
    assert metrics["n_items"] == 300 and metrics["n_users"] == len(memory.valid)
    assert (run / "recommender" / "weights.index").is_file()
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["prepared"] == str(shop / "prepared") and stats["train"]["examples"] == len(memory.train)


@pytest.mark.slow  # about 2.5 minutes: a whole search run (BERT fine-tuning, baselines, ranker)
def test_a_search_run_trains_its_towers_from_the_shards(homedepot_slice, tmp_path) -> None:
    """tfrec train on a prepared search dataset: the two towers stream their pairs, the run finishes and evaluates valid."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cli_runs import train_run

    settings = ["data.dir=%s" % homedepot_slice, "data.max_train_queries=0", "data.max_valid_queries=0", "data.max_products=0",
                "text.max_length=32", "evaluation.bootstrap_resamples=100", "retrieval.batch_size=16", "retrieval.top_k=20",
                "evaluation.ks=[10, 20]", "ranking.epochs=2"]
    loaded = load_config(str(CONFIGS / "quick.yaml"), settings)
    memory = load_data(loaded)
    prepare(loaded, tmp_path / "prepared")
    run = train_run(tmp_path / "runs", str(CONFIGS / "quick.yaml"), [*settings, "data.prepared=%s" % (tmp_path / "prepared"),
                                                                     "train.progress=false", "run.name=hd"], "hd")
    metrics = json.loads((run / "metrics.json").read_text())
    held = memory.train.held_out_queries(loaded.config.ranking.holdout_fraction, loaded.config.run.seed)
    pairs = int((memory.train.labels[~held] >= loaded.config.retrieval.min_relevance).sum())
    assert metrics["training"]["retrieval"]["pairs"] == pairs
    assert 0 <= metrics["systems"]["tfrec_search"]["e2e"]["ndcg@10"] <= 1
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").rglob("pairs-*.tfrecord.gz"))
    from tfrec import api

    with pytest.raises(ConfigError, match="retrieval.max_pairs"):
        api.train(str(CONFIGS / "quick.yaml"), [*settings, "data.prepared=%s" % (tmp_path / "prepared"), "retrieval.max_pairs=10",
                                                "run.output_dir=%s" % (tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_catalog_text_vectors_are_encoded_on_the_workers_through_the_embedding_cache(shop, tmp_path) -> None:
    """--text-vectors: every product's vector, keyed by row and id, equal to the in-process encoder's; a rerun encodes nothing."""
    from tfrec.data.prepared.reader import read_text_vectors
    from tfrec.text.catalog import catalog_text_features, catalog_vector_key

    loaded = load_config(shop / "strict.yaml", ["text.max_length=32"])
    first = prepare(loaded, tmp_path / "with_vectors", workers=2, shards=2, text_vectors=True)
    entry = first.manifest["text_vectors"]
    assert entry["items"] == 300 and entry["encoded"] + entry["from_cache"] == 300 and entry["dim"] == 384
    prepared = open_prepared(first.folder, loaded.config.data)
    key = catalog_vector_key(loaded.config.text)
    vectors = read_text_vectors(prepared, key)
    catalog = read_catalog(prepared)
    expected, stats = catalog_text_features(catalog.text().astype(str), loaded.config.text, progress=False)
    assert stats.encoded == 0  # the workers filled the embedding cache
    np.testing.assert_array_equal(vectors, expected)
    assert read_text_vectors(prepared, key + "-other-model") is None
    from tfrec.recommend.stages.item_text import item_text_vectors

    training = load_config(shop / "strict.yaml", ["text.max_length=32", "data.prepared=%s" % first.folder])
    np.testing.assert_array_equal(item_text_vectors(training.config, catalog), vectors)
    # Search's frozen MiniLM baseline takes the same read (prepared_catalog_vectors) instead of encoding.
    from tfrec.baselines.search import MiniLMBaseline
    from tfrec.text.catalog import prepared_catalog_vectors

    zero = MiniLMBaseline(list(catalog.text().astype(str)), training.config.text, catalog_vectors=prepared_catalog_vectors(training.config))
    np.testing.assert_array_equal(zero.catalog_vectors, vectors)
    with pytest.raises(ValueError, match="rows for"):
        MiniLMBaseline(["a", "b"], training.config.text, catalog_vectors=vectors)
    again = prepare(loaded, tmp_path / "again", workers=2, shards=2, text_vectors=True)
    assert again.manifest["text_vectors"]["encoded"] == 0 and again.manifest["text_vectors"]["from_cache"] == 300


@pytest.mark.slow  # a Spark session and BERT on the workers for a second folder: about 1-2 minutes
def test_search_reads_prepared_text_vectors(homedepot_slice, tmp_path) -> None:
    """A search run from a folder prepared with --text-vectors takes its zero-shot catalog vectors from it, not the encoder."""
    from tfrec.baselines.search import MiniLMBaseline
    from tfrec.text.catalog import catalog_text_features, prepared_catalog_vectors

    settings = ["data.dir=%s" % homedepot_slice, "text.max_length=32"]
    loaded = load_config(str(CONFIGS / "default.yaml"), settings)
    result = prepare(loaded, tmp_path / "hd", text_vectors=True)
    training = load_config(str(CONFIGS / "default.yaml"), [*settings, "data.prepared=%s" % result.folder])
    catalog = read_catalog(open_prepared(result.folder))
    vectors = prepared_catalog_vectors(training.config)
    expected, _ = catalog_text_features(catalog.text().astype(str), loaded.config.text, progress=False)
    np.testing.assert_array_equal(vectors, expected)
    assert prepared_catalog_vectors(load_config(str(CONFIGS / "default.yaml"), [*settings, "text.max_length=48",
                                                                                "data.prepared=%s" % result.folder]).config) is None
    zero = MiniLMBaseline(list(catalog.text().astype(str)), training.config.text, catalog_vectors=vectors)
    assert zero.catalog_vectors is not expected and zero.search(zero.encode(["cordless drill"]), 5)[0].shape == (1, 5)
    with pytest.raises(ValueError, match="rows for"):
        MiniLMBaseline(["a", "b"], training.config.text, catalog_vectors=vectors)
