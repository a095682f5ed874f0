"""Data files named by URI (gs://, s3://, hdfs://, file://) read like local ones, in memory and by `tfrec data prepare`.

The stores themselves cannot be reached from the test machines, so the tests name local files by
``file://`` URIs: the same code path (pyarrow.fs for the driver's reads, Spark's filesystem for the
log) that a ``gs://`` or ``s3://`` location takes, with real files behind it.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import sequence_rows
from tfrec.api import load_config
from tfrec.config.loader import ConfigError
from tfrec.data.datasets import load_data, required_files
from tfrec.data.errors import DataError
from tfrec.data.locations import RemotePath, expand, first_line, locate, location
from tfrec.data.synthetic import write_interactions_csv

CONFIG = """\
data:
  dataset: interactions-csv
  dir: {dir}
  catalog: {{path: products.csv, id_column: product_id, text_columns: [title], numeric_columns: [price], categorical_columns: [category]}}
  interactions: {{path: {log}, user_column: user_id, item_column: item_id, timestamp_column: timestamp, rating_column: rating}}
recommendation: {{max_history: 6}}
evaluation: {{ks: [5, 10]}}
"""


def _config(folder: Path, name: str, data_dir: str, log: str) -> Path:
    path = folder / name
    path.write_text(CONFIG.format(dir=data_dir, log=log), encoding="utf-8")
    return path


def _split_log(folder: Path, parts: int) -> None:
    """interactions.csv as ``parts`` files logs/part-N.csv, each with the header (how engines write logs)."""
    with open(folder / "interactions.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    (folder / "logs").mkdir()
    for p in range(parts):
        with open(folder / "logs" / ("part-%d.csv" % p), "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows[p::parts]])


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """A small synthetic shop whose log is split over 3 files."""
    folder = write_interactions_csv(tmp_path_factory.mktemp("remote"), n_items=200, n_users=90, seed=4)
    _split_log(folder, 3)
    return folder


def test_locations_join_glob_and_read_like_paths(shop) -> None:
    """A URI keeps its scheme through joins, globs match one path part per wildcard, a URI file name stands alone."""
    root = location(shop.as_uri())
    assert isinstance(root, RemotePath) and root.is_dir() and not root.is_file()
    assert isinstance(location(str(shop)), Path)
    catalog = locate(root, "products.csv")
    assert str(catalog) == shop.as_uri() + "/products.csv" and catalog.suffix == ".csv" and catalog.name == "products.csv"
    assert catalog.read_bytes() == (shop / "products.csv").read_bytes()
    assert catalog.stat().st_size == (shop / "products.csv").stat().st_size
    assert first_line(catalog) == (shop / "products.csv").read_bytes().split(b"\n")[0].rstrip(b"\r")
    assert locate(shop, "gs://bucket/products.csv") == RemotePath("gs://bucket/products.csv")
    parts = expand(locate(root, "logs/part-*.csv"))
    assert [p.name for p in parts] == ["part-0.csv", "part-1.csv", "part-2.csv"]
    assert expand(locate(root, "*/part-1.csv")) == [locate(root, "logs/part-1.csv")]
    assert expand(locate(root, "logs/*.parquet")) == [] and expand(locate(root, "no-such.csv")) == []


def test_in_memory_reads_from_uris_equal_local_reads(shop) -> None:
    """data.dir as a file:// URI: the catalog and the split log equal those read from the local folder."""
    local = load_data(load_config(_config(shop, "local.yaml", str(shop), "interactions.csv")))
    remote_config = load_config(_config(shop, "remote.yaml", shop.as_uri(), "interactions.csv"))
    assert all(isinstance(p, RemotePath) for p in required_files(remote_config).values())
    remote = load_data(remote_config)
    assert remote.catalog.ids.tolist() == local.catalog.ids.tolist()
    np.testing.assert_array_equal(remote.catalog.numeric["price"], local.catalog.numeric["price"])
    for split in ("train", "valid"):
        assert sequence_rows(getattr(remote, split)) == sequence_rows(getattr(local, split))
    assert remote.catalog.source == shop.as_uri() + "/products.csv"


def test_prepare_reads_a_log_glob_by_uri(shop, tmp_path) -> None:
    """`tfrec data prepare` on a file:// glob over 3 log files writes the split of the same rows read locally."""
    pytest.importorskip("pyspark")
    from tfrec.data.prepared.reader import open_prepared, read_sequences
    from tfrec.preprocess import prepare

    remote = load_config(_config(shop, "remote-glob.yaml", shop.as_uri(), "logs/part-*.csv"))
    result = prepare(remote, tmp_path / "prepared", workers=2, shards=2)
    inputs = {entry["key"]: entry for entry in result.manifest["inputs"]}
    assert inputs["data.interactions.path[2]"]["path"] == shop.as_uri() + "/logs/part-2.csv"
    assert inputs["data.catalog.path"]["bytes"] == (shop / "products.csv").stat().st_size
    whole = load_data(load_config(_config(shop, "whole.yaml", str(shop), "interactions.csv")))
    # Splitting the log changes only the file order, which decides nothing unless a user has two events at one time.
    log = whole.interactions
    assert len({(u, t) for u, t in zip(log.users.tolist(), log.timestamps.tolist())}) == len(log)
    prepared = open_prepared(result.folder, remote.config.data)
    for split in ("train", "valid"):
        assert sequence_rows(read_sequences(prepared, split)) == sequence_rows(getattr(whole, split))
    assert prepare(remote, tmp_path / "prepared", workers=2, shards=2).up_to_date


def test_unreachable_locations_are_clear_errors(shop, tmp_path) -> None:
    """A missing remote file names its URI; an unknown scheme says which stores can be read."""
    with pytest.raises(DataError, match="file not found"):
        locate(location(shop.as_uri()), "missing.csv").read_bytes()
    with pytest.raises(DataError, match=r"nosuchstore://bucket/products.csv: cannot read this location"):
        RemotePath("nosuchstore://bucket/products.csv").is_file()
    loaded = load_config(_config(shop, "missing.yaml", shop.as_uri() + "/nowhere", "interactions.csv"))
    with pytest.raises(ConfigError, match=r"data.catalog.path: data file file://.*/nowhere/products.csv not found"):
        load_data(loaded)


def test_prepared_folders_are_local_or_mounted(shop) -> None:
    """A prepared folder named by URI is refused before any work, both when writing and when training from it."""
    from tfrec.data.prepared.reader import open_prepared
    from tfrec.preprocess import prepare

    loaded = load_config(_config(shop, "out.yaml", str(shop), "interactions.csv"))
    with pytest.raises(DataError, match=r"gs://bucket/prepared: a prepared dataset lives in a folder on a local or mounted"):
        prepare(loaded, "gs://bucket/prepared")
    with pytest.raises(DataError, match=r"s3://bucket/prepared: .*input files may be URIs"):
        open_prepared("s3://bucket/prepared")
