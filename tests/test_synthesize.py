"""`tfrec data synthesize`: a synthetic shop of any size, with the shapes real shop data has, written reproducibly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from tfrec.cli.main import main
from tfrec.data import synthesize as synth
from tfrec.data.synthesize import ShopSize, SynthesizeError, parse_count

SMALL = ShopSize(products=2000, users=400, events=30000, judgments=3000, seed=7)


def read(path: Path) -> dict[str, np.ndarray]:
    """A written CSV or Parquet file as numpy columns, ids kept as text."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        strings = {name: pa.string() for name in ("product_id", "user_id", "item_id", "query", "title", "category")}
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=strings))
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shop")
    synth.synthesize(folder, SMALL, progress=False)
    return folder


def per_user(log: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The log ordered by user, keeping each user's rows in file order: (users, items, timestamps)."""
    order = np.argsort(log["user_id"], kind="stable")
    return log["user_id"][order], log["item_id"][order], log["timestamp"][order]


def test_files_and_columns(shop):
    """The catalog, the log, the judgments and both configs are there, with the documented columns."""
    assert sorted(p.name for p in shop.iterdir()) == ["interactions.csv", "products.csv", "search.yaml", "tfrec.yaml",
                                                      "train.csv", "valid.csv"]
    headers = {name: (shop / name).read_text(encoding="utf-8").split("\n", 1)[0] for name in ("products.csv", "interactions.csv", "train.csv", "valid.csv")}
    assert headers == {"products.csv": "product_id,title,price,category", "interactions.csv": "user_id,item_id,timestamp,rating",
                       "train.csv": "query,product_id,relevance", "valid.csv": "query,product_id,relevance"}
    products = read(shop / "products.csv")
    assert len(products["product_id"]) == SMALL.products
    assert len(set(products["product_id"])) == SMALL.products
    assert len(set(products["title"])) == SMALL.products  # the model code keeps titles apart
    assert (products["price"] > 0).all()
    assert 1 < len(set(products["category"])) <= 120


def test_exact_event_count_every_user_and_every_item_in_the_catalog(shop):
    """E rows, U users each with one event or more (heavy-tailed), and every item id a product of the catalog."""
    log = read(shop / "interactions.csv")
    assert len(log["user_id"]) == SMALL.events
    users, counts = np.unique(log["user_id"], return_counts=True)
    assert len(users) == SMALL.users and counts.min() >= 1
    assert counts.max() > 5 * np.median(counts)  # a heavy tail of very active users
    assert set(log["item_id"]) <= set(read(shop / "products.csv")["product_id"])
    assert set(np.unique(log["rating"])) <= {1, 2, 3, 4, 5}


def test_same_arguments_and_seed_give_identical_files(tmp_path, shop):
    """Determinism: another folder, the same bytes; another seed, other data."""
    synth.synthesize(tmp_path / "again", SMALL, progress=False)
    for name in ("products.csv", "interactions.csv", "train.csv", "valid.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (shop / name).read_bytes(), name
    other = ShopSize(SMALL.products, SMALL.users, SMALL.events, seed=SMALL.seed + 1)
    synth.synthesize(tmp_path / "other", other, progress=False)
    assert (tmp_path / "other" / "interactions.csv").read_bytes() != (shop / "interactions.csv").read_bytes()


def test_popularity_is_zipf_and_not_ordered_by_id(shop):
    """The top 1% of items take a large share of events, and the popular items are spread over the ids."""
    log = read(shop / "interactions.csv")
    items, counts = np.unique(log["item_id"], return_counts=True)
    top = np.sort(counts)[::-1][: SMALL.products // 100]
    assert top.sum() / counts.sum() > 0.15  # 20 of 2000 items; uniform popularity would give 1%
    ids = read(shop / "products.csv")["product_id"]
    by_id = np.zeros(len(ids))
    by_id[np.searchsorted(ids, items)] = counts
    # Rank correlation between id and popularity is near zero: ids were shuffled against popularity.
    rank_of = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert abs(np.corrcoef(rank_of(by_id), np.arange(len(ids)))[0, 1]) < 0.1


def test_sessions_repeats_neighbours_and_increasing_times(shop):
    """Per user: strictly increasing times with session gaps of minutes and breaks of hours, re-views, same-category runs."""
    log = read(shop / "interactions.csv")
    users, items, stamps = per_user(log)
    same_user = users[1:] == users[:-1]
    gaps = np.diff(stamps)[same_user]
    assert (gaps > 0).all()
    assert 0.5 < (gaps < 1800).mean() < 0.95 and (gaps >= 3600).mean() > 0.05
    # Re-views: a user's item seen before (in the user's history).
    pairs = np.char.add(users.astype(str), np.char.add("|", items.astype(str)))
    _, first = np.unique(pairs, return_index=True)
    assert 1 - len(first) / len(pairs) > 0.1
    # Co-occurrence: consecutive items share a category far more often than chance.
    products = read(shop / "products.csv")
    category = dict(zip(products["product_id"], products["category"]))
    cats = np.array([category[i] for i in items])
    assert (cats[1:] == cats[:-1])[same_user].mean() > 0.5
    # The file reads like a log: not grouped by user (each block of users is in time order).
    assert (log["user_id"][1:] != log["user_id"][:-1]).sum() > 10 * SMALL.users
    assert (np.diff(log["timestamp"]) >= 0).all()  # this small shop is one block


def test_many_chunks_keep_every_property(tmp_path, monkeypatch):
    """With chunks of a few hundred events the count is still exact and each user's times still increase."""
    monkeypatch.setattr(synth, "CHUNK_EVENTS", 300)
    monkeypatch.setattr(synth, "CHUNK_PRODUCTS", 128)
    size = ShopSize(products=500, users=300, events=6000, seed=3)
    synth.synthesize(tmp_path, size, progress=False)
    log = read(tmp_path / "interactions.csv")
    assert len(log["user_id"]) == 6000 and len(np.unique(log["user_id"])) == 300
    users, _, stamps = per_user(log)
    assert (np.diff(stamps)[users[1:] == users[:-1]] > 0).all()
    assert len(read(tmp_path / "products.csv")["product_id"]) == 500
    assert (np.diff(log["timestamp"]) < 0).sum() >= 5  # blocks, each in time order


def test_judgments_are_graded_distinct_and_split_by_query(shop):
    """J judgments in [1, 3], no (query, product) twice, no query in both files, about a tenth of the queries in valid."""
    train, valid = read(shop / "train.csv"), read(shop / "valid.csv")
    assert len(train["query"]) + len(valid["query"]) == SMALL.judgments
    for part in (train, valid):
        assert set(np.unique(part["relevance"])) == {1, 2, 3}
        pairs = np.char.add(part["query"].astype(str), np.char.add("|", part["product_id"].astype(str)))
        assert len(np.unique(pairs)) == len(pairs)
    train_queries, valid_queries = set(train["query"]), set(valid["query"])
    assert not train_queries & valid_queries
    assert 0.03 < len(valid_queries) / (len(train_queries) + len(valid_queries)) < 0.2
    assert set(train["product_id"]) <= set(read(shop / "products.csv")["product_id"])


def test_validate_accepts_both_configs_from_any_folder(shop, tmp_path, monkeypatch, capsys):
    """`tfrec data validate` reads the written configs, whatever folder it runs in (data.dir is absolute)."""
    monkeypatch.chdir(tmp_path)
    for config, line in (("tfrec.yaml", "events: %d" % SMALL.events), ("search.yaml", "items: %d" % SMALL.products)):
        assert main(["data", "validate", "--quiet", "--config", str(shop / config)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "data ok: no rows dropped" in out and line in out


def test_cli_parquet_is_readable_and_validates(tmp_path, capsys):
    """--format parquet writes .parquet files with the same columns, and their configs validate."""
    out = tmp_path / "pq"
    argv = ["data", "synthesize", "--quiet", "--out", str(out), "--products", "1k", "--users", "200", "--events", "5_000",
            "--judgments", "2000", "--format", "parquet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed] == [str(out / n) for n in ("products.parquet", "interactions.parquet", "train.parquet",
                                                                            "valid.parquet", "tfrec.yaml", "search.yaml")]
    assert "(5,000 events," in printed[1]
    assert pq.read_schema(out / "interactions.parquet").names == ["user_id", "item_id", "timestamp", "rating"]
    assert pq.read_table(out / "products.parquet").num_rows == 1000
    assert pq.read_table(out / "interactions.parquet").num_rows == 5000
    for config in ("tfrec.yaml", "search.yaml"):
        assert main(["data", "validate", "--quiet", "--config", str(out / config)]) == 0
        assert "data ok" in capsys.readouterr().out
    assert main([*argv[:4], str(tmp_path / "again"), *argv[5:]]) == 0
    for name in ("products.parquet", "interactions.parquet", "train.parquet", "valid.parquet"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_existing_files_need_force_and_an_interrupted_run_leaves_none(tmp_path, capsys, monkeypatch):
    """A second run refuses to replace the shop without --force; a run that fails midway leaves no file that looks complete."""
    argv = ["data", "synthesize", "--quiet", "--out", str(tmp_path), "--products", "300", "--users", "50", "--events", "600"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 1
    assert "already holds products.csv, interactions.csv, tfrec.yaml; pass --force" in capsys.readouterr().err
    assert main(argv + ["--force", "--seed", "1"]) == 0

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth, "write_judgments", broken)
    fresh = tmp_path / "fresh"
    assert main(["data", "synthesize", "--quiet", "--out", str(fresh), "--products", "300", "--users", "50", "--events", "600",
                 "--judgments", "100"]) == 1
    assert "disk full" in capsys.readouterr().err
    assert list(fresh.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--products", "0", "--users", "5", "--events", "10"], "--products must be at least 1"),
    (["--products", "10", "--users", "0", "--events", "10"], "--users must be at least 1"),
    (["--products", "10", "--users", "50", "--events", "10"], "--events (10) must be at least --users (50)"),
    (["--products", "10", "--users", "5", "--events", "10", "--judgments", "-1"], "--judgments must be 0"),
    (["--products", "10", "--users", "5", "--events", "10", "--seed", "-3"], "--seed must be"),
])
def test_argument_errors_are_usage_errors(tmp_path, capsys, args, message):
    """Counts that describe no shop exit 2 with one line naming the argument, and write nothing."""
    assert main(["data", "synthesize", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_counts_parse_with_suffixes_and_reject_nonsense(capsys):
    """5M, 250k, 5_000_000 and 1e6 are counts; 2.5 and 5x are not."""
    assert [parse_count(t) for t in ("5M", "250k", "5_000_000", "1e6", "1.5k", "42")] == [5_000_000, 250_000, 5_000_000, 1_000_000, 1500, 42]
    assert parse_count("-3") == -3  # the range is checked with the other arguments, naming the argument
    for bad in ("2.5", "5x", "", "3-"):
        with pytest.raises(ValueError, match="expected a whole number"):
            parse_count(bad)
    with pytest.raises(SystemExit) as done:
        main(["data", "synthesize", "--out", "x", "--products", "5x", "--users", "1", "--events", "1"])
    assert done.value.code == 2 and "expected a whole number" in capsys.readouterr().err


def test_too_many_judgments_for_a_tiny_catalog_is_an_error(tmp_path):
    """More distinct (query, product) pairs than the catalog can give is said, not looped on forever."""
    with pytest.raises(SynthesizeError, match="--judgments 5000 is more distinct"):
        synth.synthesize(tmp_path, ShopSize(products=3, users=2, events=4, judgments=5000), progress=False)
    assert list(tmp_path.iterdir()) == []
