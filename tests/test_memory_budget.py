"""The memory check before loading: estimates from file sizes, Parquet footers and DataFrame sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfrec.cli.main import main
from tfrec.config import load_config
from tfrec.data import DataError, budget, load_data
from tfrec.data.budget import (MIN_ROW_BYTES, PARQUET_COST, Available, DataTooLarge, check_memory, csv_rows, estimate_memory,
                               human)
from tfrec.data.datasets import required_files
from tfrec.data.frames import data_frames


def _write_log(folder: Path, n_events: int = 3000, n_items: int = 300, suffix: str = "csv") -> Path:
    """A catalog and an interaction log like a shop's (ids U000123 / P000456); returns the config file."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({"item_id": ["P%06d" % i for i in range(n_items)],
                          "title": ["cordless drill %d with two batteries and a case" % i for i in range(n_items)]})
    events = pd.DataFrame({"user_id": ["U%06d" % u for u in rng.integers(n_events // 20, size=n_events)],
                           "item_id": ["P%06d" % i for i in rng.integers(n_items, size=n_events)],
                           "timestamp": rng.integers(1_600_000_000, 1_700_000_000, size=n_events),
                           "rating": rng.integers(1, 6, size=n_events)})
    if suffix == "csv":
        items.to_csv(folder / "items.csv", index=False)
        events.to_csv(folder / "interactions.csv", index=False)
    else:
        items.to_parquet(folder / "items.parquet", index=False)
        events.to_parquet(folder / "interactions.parquet", index=False)
    config = folder / "tfrec.yaml"
    config.write_text("data:\n  dataset: interactions-csv\n  dir: %s\n  catalog:\n    path: items.%s\n    id_column: item_id\n"
                      "  interactions:\n    path: interactions.%s\n    rating_column: rating\nevaluation:\n  ks: [10]\n"
                      % (folder, suffix, suffix), encoding="utf-8")
    return config


def _frames(n_events: int = 3000, n_items: int = 300, dtype=None) -> dict:
    rng = np.random.default_rng(1)
    items = pd.DataFrame({"item_id": ["P%06d" % i for i in range(n_items)], "title": ["lamp %d" % i for i in range(n_items)]},
                         dtype=dtype)
    events = pd.DataFrame({"user_id": ["U%06d" % u for u in rng.integers(n_events // 20, size=n_events)],
                           "item_id": ["P%06d" % i for i in rng.integers(n_items, size=n_events)],
                           "timestamp": rng.integers(1_600_000_000, 1_700_000_000, size=n_events).astype(str),
                           "rating": rng.integers(1, 6, size=n_events).astype(str)}, dtype=dtype)
    return data_frames(catalog=items, interactions=events)


def test_the_check_refuses_data_larger_than_the_available_memory_and_says_what_to_do(tmp_path):
    config = _write_log(tmp_path / "shop")
    loaded = load_config(config)
    files = required_files(loaded)
    estimate = estimate_memory(loaded, files)
    assert [Path(p.name).name for p in estimate.parts] == ["items.csv", "interactions.csv"]
    assert estimate.total > estimate.fitted > 0

    with pytest.raises(DataTooLarge) as caught:
        check_memory(loaded, files, available=Available(estimate.total // 2, "the memory left in this test"))
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "shop") + ": ")
    assert "needs about %s" % human(estimate.total) in message
    assert "more than the %s this process can use (the memory left in this test)" % human(estimate.total // 2) in message
    assert "interactions.csv" in message and "items.csv" in message and "~3000 rows" in message
    assert "`tfrec data prepare --config %s --out DIR`" % config in message
    assert "`tfrec train --config %s --set data.prepared=DIR`" % config in message
    assert "data.memory_check: false" in message

    assert check_memory(loaded, files, available=Available(estimate.total + 1, "plenty")) is not None


def test_small_data_costs_a_stat_per_file_and_the_quick_bound_is_above_the_sampled_estimate(tmp_path):
    loaded = load_config(_write_log(tmp_path / "shop"))
    files = required_files(loaded)
    quick = check_memory(loaded, files, available=Available(10**12, "plenty"))
    log = next(p for p in quick.parts if p.kind == "interactions")
    # No CSV text was read: the rows are the stat-only bound, one per MIN_ROW_BYTES.
    assert log.rows == files["data.interactions.path"].stat().st_size // MIN_ROW_BYTES
    sampled = estimate_memory(loaded, files, sample=True)
    assert quick.total > sampled.total
    # Between the bound and the estimate, the check samples the files and lets the data through.
    judged = check_memory(loaded, files, available=Available((quick.total + sampled.total) // 2, "some"))
    assert judged.total == sampled.total


def test_csv_rows_are_counted_exactly_when_small_and_estimated_from_the_head_when_large(tmp_path):
    small = tmp_path / "small.csv"
    small.write_text("a,b\n1,2\n3,4\n5,6", encoding="utf-8")  # no newline after the last row
    assert csv_rows(small, small.stat().st_size) == 3
    large = tmp_path / "large.csv"
    rows = ["U%06d,P%06d,%d" % (i, i * 7 % 100_000, 1_600_000_000 + i) for i in range(200_000)]
    large.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert large.stat().st_size > budget.SAMPLE_BYTES * 10
    assert csv_rows(large, large.stat().st_size) == pytest.approx(200_000, rel=0.01)


def test_parquet_files_count_by_the_rows_in_their_footer_not_their_compressed_size(tmp_path):
    config = _write_log(tmp_path / "shop", n_events=500, suffix="parquet")
    # 200,000 identical events compress to a few kB; reading them still makes 200,000 rows.
    same = pa.table({"user_id": ["U000001"] * 200_000, "item_id": ["P000001"] * 200_000,
                     "timestamp": [1_600_000_000] * 200_000, "rating": [5] * 200_000})
    pq.write_table(same, tmp_path / "shop" / "interactions.parquet")
    loaded = load_config(config)
    estimate = estimate_memory(loaded, required_files(loaded))
    log = next(p for p in estimate.parts if p.kind == "interactions")
    assert log.rows == 200_000 and not log.rows_estimated
    assert log.size < 100_000
    assert log.need >= 200_000 * PARQUET_COST["interactions"][0] > 100 * log.size


def test_dataframes_count_by_their_rows_and_memory_usage(tmp_path):
    loaded = load_config(_write_log(tmp_path / "shop"), ["data.dir=."])
    as_text = _frames(dtype="str")
    as_objects = _frames(dtype=object)
    text_estimate = estimate_memory(loaded, {}, as_text)
    object_estimate = estimate_memory(loaded, {}, as_objects)
    assert [(p.name, p.rows, p.size) for p in text_estimate.parts] == [("catalog DataFrame", 300, 0), ("interactions DataFrame", 3000, 0)]
    # Cells of object columns are kept as the str objects they are; other dtypes become new strings.
    assert text_estimate.fitted > object_estimate.fitted
    bigger = estimate_memory(loaded, {}, _frames(n_events=30_000, dtype="str"))
    assert bigger.parts[1].need > 9 * text_estimate.parts[1].need

    with pytest.raises(DataTooLarge) as caught:
        check_memory(loaded, {}, as_text, available=Available(text_estimate.total - 1, "little"))
    assert str(caught.value).startswith("DataFrames: ")
    assert "interactions DataFrame (3000 rows)" in str(caught.value)


def test_a_file_beside_a_dataframe_counts_as_a_file(tmp_path):
    loaded = load_config(_write_log(tmp_path / "shop"))
    frames = _frames()
    del frames["data.catalog.path"]
    estimate = estimate_memory(loaded, required_files(loaded), frames)
    assert sorted(Path(p.name).name for p in estimate.parts) == ["interactions DataFrame", "items.csv"]


def test_memory_check_false_skips_the_check(tmp_path):
    config = _write_log(tmp_path / "shop")
    loaded = load_config(config, ["data.memory_check=false"])
    assert check_memory(loaded, required_files(loaded), available=Available(1, "one byte")) is None
    assert load_config(config).config.data.memory_check is True


def test_load_data_checks_before_reading_and_the_key_turns_it_off(tmp_path, monkeypatch):
    config = _write_log(tmp_path / "shop")
    monkeypatch.setattr(budget, "available_memory", lambda: Available(1000, "the memory left in this test"))
    # A broken row after the header: reading would fail on it, so an error about memory shows nothing was read.
    with (tmp_path / "shop" / "interactions.csv").open("a", encoding="utf-8") as handle:
        handle.write("U000001,P000009,not-a-time,3\n")
    with pytest.raises(DataTooLarge, match="needs about"):
        load_data(load_config(config))
    with pytest.raises(DataError, match="not-a-time") as caught:
        load_data(load_config(config, ["data.memory_check=false"]))
    assert not isinstance(caught.value, DataTooLarge)


def test_the_command_line_prints_the_refusal_as_one_line(tmp_path, monkeypatch, capsys):
    config = _write_log(tmp_path / "shop")
    monkeypatch.setattr(budget, "available_memory", lambda: Available(1000, "the memory left in this test"))
    assert main(["data", "validate", "--config", str(config)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("tfrec data: error: ")]
    assert errors == lines[-1:]  # one line, the last (a progress line may come before it)
    assert errors[0].startswith("tfrec data: error: %s: reading this data into memory needs about" % (tmp_path / "shop"))
    assert "tfrec data prepare --config" in errors[0]


def test_small_real_data_passes_with_the_memory_this_machine_has(shared_datasets, tmp_path):
    config = tmp_path / "tfrec.yaml"
    config.write_text("data:\n  dataset: search-csv\n  dir: %s\n" % (shared_datasets / "homedepot"), encoding="utf-8")
    loaded = load_config(config)
    files = required_files(loaded)
    estimate = estimate_memory(loaded, files)
    # Measured: 89 MB above the interpreter's own for `tfrec data validate` on these files.
    assert 60e6 < estimate.fitted < 130e6
    assert sorted(Path(p.name).name for p in estimate.parts) == ["products.csv", "train.csv", "valid.csv"]
    products = next(p for p in estimate.parts if p.name.endswith("products.csv"))
    assert products.rows == pytest.approx(54_667, rel=0.1)
    if budget.available_memory() is None:
        pytest.skip("this platform does not say how much memory is available")
    assert check_memory(loaded, files) is not None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_a_cgroup_v2_limit_caps_the_available_memory(tmp_path):
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/user.slice/job\n")
    root = tmp_path / "cgroup"
    _write(root / "user.slice" / "job" / "memory.max", "2000000000\n")
    _write(root / "user.slice" / "job" / "memory.current", "500000000\n")
    _write(root / "user.slice" / "job" / "memory.stat", "anon 300000000\ninactive_file 100000000\nactive_file 10\n")
    _write(root / "user.slice" / "memory.max", "max\n")
    room = budget.cgroup_room(root, proc)
    assert room.bytes == 2_000_000_000 - 400_000_000
    assert "cgroup memory limit of 2.0 GB less 400 MB in use" in room.source
    # A parent's lower limit binds too.
    _write(root / "user.slice" / "memory.max", "1000000000\n")
    _write(root / "user.slice" / "memory.current", "600000000\n")
    assert budget.cgroup_room(root, proc).bytes == 400_000_000
    assert budget.available_memory(root, proc).bytes <= 400_000_000


def test_a_cgroup_v1_limit_seen_from_inside_a_container_and_no_limit(tmp_path):
    proc = tmp_path / "proc-cgroup"
    _write(proc, "4:memory:/docker/abc123\n0::/\n")
    root = tmp_path / "cgroup"
    # Inside the container the host's path /docker/abc123 does not exist: its limit sits at the mount's root.
    _write(root / "memory" / "memory.limit_in_bytes", "3000000000\n")
    _write(root / "memory" / "memory.usage_in_bytes", "1200000000\n")
    _write(root / "memory" / "memory.stat", "cache 5\ntotal_inactive_file 200000000\n")
    assert budget.cgroup_room(root, proc).bytes == 2_000_000_000
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert budget.cgroup_room(root, proc) is None


def test_sizes_read_as_people_write_them():
    assert [human(n) for n in (512, 12_300, 640_000_000, 3_140_000_000, 25_000_000_000)] == [
        "512 B", "12 kB", "640 MB", "3.1 GB", "25 GB"]
