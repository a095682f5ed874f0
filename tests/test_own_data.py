"""Own data beside CSV: Parquet files and pandas DataFrames go through the same checks and messages."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tfrec
from conftest import write_homedepot_slice
from tfrec.config import ConfigError, load_config
from tfrec.data import DataError, RecommendationData, SearchData, load_data
from tfrec.data.frames import data_frames, keep_frames
from tfrec.data.stats import dataset_stats, format_stats
from tfrec.runs import RunFolder

SEARCH = ["data.dataset=search-csv", "evaluation.ks=[5]", "retrieval.top_k=5"]
RECOMMEND = ["data.dataset=interactions-csv", "evaluation.ks=[5]", "retrieval.top_k=5"]


def shop(n_products: int = 60, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A small generated shop: catalog (with a price and a brand), train/valid judgments and an interaction log."""
    rng = np.random.default_rng(seed)
    words = ["steel", "oak", "brass", "cordless", "drill", "hammer", "lamp", "shelf", "saw", "paint"]
    ids = np.arange(1000, 1000 + n_products)  # integer ids: Parquet keeps them typed, the CSV as text
    catalog = pd.DataFrame({
        "product_id": ids,
        "title": [" ".join(rng.choice(words, 3)) for _ in ids],
        "price": np.where(rng.random(n_products) < 0.1, np.nan, rng.uniform(1, 100, n_products).round(2)),
        "brand": rng.choice(["acme", "bolt", ""], n_products),
    })

    def judged(queries: list[str]) -> pd.DataFrame:
        rows = [(q, int(p), float(rng.integers(1, 4))) for q in queries for p in rng.choice(ids, 4, replace=False)]
        return pd.DataFrame(rows, columns=["query", "product_id", "relevance"])

    users = np.repeat(["u%d" % u for u in range(12)], 5)
    interactions = pd.DataFrame({
        "user_id": users,
        "item_id": rng.choice(ids, len(users)),
        "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(users)) * 3600, unit="s"),
    })
    return {"catalog": catalog, "train": judged(["q%d" % i for i in range(15)]), "valid": judged(["v%d" % i for i in range(6)]),
            "interactions": interactions}


FILES = {"catalog": "products", "train": "train", "valid": "valid", "interactions": "interactions"}
CATALOG_KEYS = ["data.catalog.numeric_columns=[price]", "data.catalog.categorical_columns=[brand]"]


def write_shop(folder: Path, frames: dict[str, pd.DataFrame], suffix: str) -> Path:
    """The shop as CSV files (as a spreadsheet export writes them) or typed Parquet files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        path = folder / (FILES[name] + suffix)
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return folder


def file_keys(folder: Path, suffix: str) -> list[str]:
    return ["data.dir=%s" % folder, *["data.%s=%s%s" % (key, FILES[name], suffix) for name, key in
            (("catalog", "catalog.path"), ("train", "judgments.train"), ("valid", "judgments.valid"),
             ("interactions", "interactions.path"))]]


def without_sources(stats):
    """Statistics with the file names taken out (they differ between CSV, Parquet and DataFrames)."""
    if isinstance(stats, dict):
        return {k: without_sources(v) for k, v in stats.items() if k not in ("source", "load_seconds")}
    return stats


# ----------------------------------------------------------------------------- Parquet files


@pytest.mark.parametrize("settings", [SEARCH, RECOMMEND], ids=["search", "recommendation"])
def test_parquet_files_read_like_the_same_csv_files(tmp_path, settings):
    """Catalog, judgments and interactions as Parquet give the same data and statistics as the CSV export."""
    frames = shop()
    loaded = {}
    data = {}
    for suffix in (".csv", ".parquet"):
        folder = write_shop(tmp_path / suffix[1:], frames, suffix)
        loaded[suffix] = load_config(None, [*settings, *CATALOG_KEYS, *file_keys(folder, suffix)])
        data[suffix] = load_data(loaded[suffix])
    csv_data, parquet_data = data[".csv"], data[".parquet"]
    assert parquet_data.catalog.source.endswith("products.parquet")
    assert parquet_data.catalog.ids.tolist() == csv_data.catalog.ids.tolist() == [str(i) for i in frames["catalog"].product_id]
    np.testing.assert_array_equal(parquet_data.catalog.numeric["price"], csv_data.catalog.numeric["price"])
    assert parquet_data.catalog.categorical["brand"].tolist() == csv_data.catalog.categorical["brand"].tolist()
    if isinstance(csv_data, SearchData):
        for split in ("train", "valid"):
            a, b = getattr(csv_data, split), getattr(parquet_data, split)
            assert a.queries.tolist() == b.queries.tolist() and a.products.tolist() == b.products.tolist()
            np.testing.assert_array_equal(a.labels, b.labels)
    else:
        assert isinstance(parquet_data, RecommendationData)
        np.testing.assert_array_equal(csv_data.interactions.timestamps, parquet_data.interactions.timestamps)
        assert parquet_data.interactions.timestamps[0] == 1704067200  # 2024-01-01T00:00:00Z, typed in the Parquet file
    stats = [without_sources(dataset_stats(d, loaded[s].config)) for s, d in data.items()]
    assert stats[0] == stats[1]


def test_parquet_missing_column_names_the_column_and_file(tmp_path):
    frames = shop()
    folder = write_shop(tmp_path, frames, ".parquet")
    pq.write_table(pa.Table.from_pandas(frames["catalog"].drop(columns=["price"]), preserve_index=False), folder / "products.parquet")
    with pytest.raises(DataError) as err:
        load_data(load_config(None, [*SEARCH, *CATALOG_KEYS, *file_keys(folder, ".parquet")]))
    message = str(err.value)
    assert message.startswith(str(folder / "products.parquet") + ": missing column(s) 'price'")
    assert "(the file has: product_id, title, brand)" in message


def test_parquet_bad_values_name_row_and_column_and_lenient_mode_counts_them_as_csv_does(tmp_path):
    """A bad price or label names the Parquet row (from 0) and column; strict: false drops what the CSV drops."""
    frames = shop()
    # prices kept as text (as some exports do): one of them is not a number
    frames["catalog"]["price"] = [("" if np.isnan(v) else str(v)) if i != 3 else "cheap" for i, v in enumerate(frames["catalog"].price)]
    frames["train"].loc[[5, 9], "relevance"] = 7.0
    frames["train"].loc[11, "product_id"] = 99
    for suffix in (".parquet", ".csv"):
        write_shop(tmp_path / suffix[1:], frames, suffix)
    keys = {s: [*SEARCH, *CATALOG_KEYS, *file_keys(tmp_path / s[1:], s)] for s in (".parquet", ".csv")}
    with pytest.raises(DataError) as err:
        load_data(load_config(None, keys[".parquet"]))
    assert str(err.value) == "%s, row 3, column 'price': expected a number or an empty field, got 'cheap'" % (
        tmp_path / "parquet" / "products.parquet")
    assert (err.value.line, err.value.field_name, err.value.unit) == (3, "price", "row")

    drops = {}
    for suffix in (".parquet", ".csv"):
        data = load_data(load_config(None, [*keys[suffix], "data.strict=false"]))
        catalog_file = data.catalog.source
        drops[suffix] = sorted((r["field"], r["reason"].replace(catalog_file, "the catalog file"), r["rows"])
                               for r in data.drops.as_dict()["reasons"])
        assert len(data.catalog) == len(frames["catalog"]) - 1 and len(data.train) == len(frames["train"]) - 3
    assert drops[".parquet"] == drops[".csv"] == [
        ("price", "expected a number or an empty field", 1), ("product_id", "product id '99' is not in the catalog (the catalog file)", 1),
        ("relevance", "expected a number in [1, 3]", 2)]
    table = load_data(load_config(None, [*keys[".parquet"], "data.strict=false"])).drops.lines()
    assert table[0].split()[:3] == ["file", "field", "rows"]
    relevance = next(line for line in table if " relevance " in line)
    assert relevance.startswith("train.parquet") and relevance.endswith("rows 5, 9")


def test_an_unreadable_parquet_file_is_an_error_naming_it(tmp_path):
    frames = shop()
    folder = write_shop(tmp_path, frames, ".parquet")
    (folder / "train.parquet").write_text("query,product_id,relevance\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.parquet: not a readable Parquet file"):
        load_data(load_config(None, [*SEARCH, *file_keys(folder, ".parquet")]))


# ----------------------------------------------------------------------------- DataFrames


def test_dataframes_replace_the_files_with_the_same_data(tmp_path):
    """tfrec.load_data(config, catalog=df, judgments={...}) reads what the CSV files hold; no data.dir needed."""
    frames = shop()
    folder = write_shop(tmp_path / "csv", frames, ".csv")
    from_files, file_stats = tfrec.load_data(load_config(None, [*SEARCH, *CATALOG_KEYS, *file_keys(folder, ".csv")]))
    config = tmp_path / "shop.yaml"  # an own-data config without data.dir: the frames are the data
    config.write_text("data:\n  dataset: search-csv\n  catalog:\n    numeric_columns: [price]\n    categorical_columns: [brand]\n"
                      "evaluation:\n  ks: [5]\nretrieval:\n  top_k: 5\n", encoding="utf-8")
    data, stats = tfrec.load_data(config, catalog=frames["catalog"], judgments={"train": frames["train"], "valid": frames["valid"]})
    assert data.catalog.ids.tolist() == from_files.catalog.ids.tolist()
    assert data.train.products.tolist() == from_files.train.products.tolist()
    assert without_sources(stats) == without_sources(file_stats)
    assert (stats["catalog"]["source"], stats["train"]["source"], stats["valid"]["source"]) == (
        "catalog DataFrame", "train judgments DataFrame", "valid judgments DataFrame")

    log, log_stats = tfrec.load_data(load_config(None, [*RECOMMEND, *file_keys(folder, ".csv")]), catalog=frames["catalog"],
                                     interactions=frames["interactions"])
    assert log_stats["interactions"]["source"] == "interactions DataFrame" and len(log.interactions) == len(frames["interactions"])


@pytest.mark.parametrize(
    "which, change, message",
    [
        ("catalog", lambda f: f.astype({"price": object}).assign(price=lambda d: d.price.where(d.index != 12, "abc")),
         "catalog DataFrame, row 12, column 'price': expected a number or an empty field, got 'abc'"),
        ("catalog", lambda f: f.drop(columns=["title"]),
         "catalog DataFrame: missing column(s) 'title' (the frame has: product_id, price, brand)"),
        ("train", lambda f: f.assign(relevance=lambda d: d.relevance.where(d.index != 3, 9.0)),
         "train judgments DataFrame, row 3, column 'relevance': expected a number in [1, 3], got '9'"),
        ("valid", lambda f: f.set_index(pd.Index(["r%d" % i for i in range(len(f))])).assign(
            product_id=lambda d: d.product_id.where(d.index != "r2", 5)),
         "valid judgments DataFrame, row r2, column 'product_id': product id '5' is not in the catalog (catalog DataFrame)"),
    ],
)
def test_dataframe_errors_name_the_frame_row_and_column(which, change, message):
    frames = shop()
    frames[which] = change(frames[which])
    with pytest.raises(DataError) as err:
        tfrec.load_data(load_config(None, [*SEARCH, *CATALOG_KEYS, "data.dir=."]), catalog=frames["catalog"],
                        judgments={"train": frames["train"], "valid": frames["valid"]})
    assert str(err.value) == message


def test_dataframe_arguments_are_checked():
    frames = shop()
    with pytest.raises(TypeError, match=r"judgments=\{'train': df, 'valid': df\}"):
        data_frames(judgments=frames["train"])
    with pytest.raises(TypeError, match="catalog must be a pandas DataFrame, got str"):
        data_frames(catalog="products.csv")
    with pytest.raises(ValueError, match="not both"):
        data_frames(judgments={"train": frames["train"]}, interactions=frames["interactions"])
    with pytest.raises(ConfigError, match="interactions-csv, which has no file for train judgments DataFrame"):
        tfrec.load_data(load_config(None, [*RECOMMEND, "data.dir=."]), catalog=frames["catalog"],
                        judgments={"train": frames["train"], "valid": frames["valid"]})


def test_a_run_keeps_the_frames_as_parquet_and_its_config_reads_them_back(tmp_path):
    """keep_frames points the config at Parquet copies; loading that saved config gives the same data."""
    frames = shop()
    loaded = load_config(None, [*SEARCH, *CATALOG_KEYS, "data.dir=."])
    given = data_frames(catalog=frames["catalog"], judgments={"train": frames["train"], "valid": frames["valid"]})
    before = load_data(loaded, given)
    copies = keep_frames(loaded, given, tmp_path / "run")
    assert sorted(p.name for p in copies.values()) == ["catalog.parquet", "train.parquet", "valid.parquet"]
    assert loaded.config.data.dir == str((tmp_path / "run" / "data").resolve()) and loaded.config.data.catalog.path == "catalog.parquet"
    assert "catalog DataFrame given to tfrec.train" in loaded.sources["data.catalog.path"]
    after = load_data(loaded)
    assert after.catalog.ids.tolist() == before.catalog.ids.tolist()
    assert np.array_equal(after.catalog.numeric["price"], before.catalog.numeric["price"], equal_nan=True)
    assert after.valid.queries.tolist() == before.valid.queries.tolist() and after.valid.labels.tolist() == before.valid.labels.tolist()


# ----------------------------------------------------------------------------- CSV details


def test_an_unclosed_quote_is_reported_where_it_opened(tmp_path):
    """A quote opened on line 6 and closed by accident on line 20 is reported at line 6, not 20."""
    lines = ["product_id,title"] + ["A%d,Item %d" % (i, i) for i in range(2, 6)]
    lines += ['A6,"Drill bit 16 in']  # line 6: the quote never closes on its line
    lines += ["A%d,Item %d" % (i, i) for i in range(7, 20)]
    lines += ['A20,"Hammer" claw']  # line 20: where the parser gives up
    lines += ["A%d,Item %d" % (i, i) for i in range(21, 26)]
    for split in ("train", "valid"):
        (tmp_path / ("%s.csv" % split)).write_text("query,product_id,relevance\nhammer,A2,3\n", encoding="utf-8")
    (tmp_path / "products.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_data(load_config(None, [*SEARCH, "data.dir=%s" % tmp_path]))
    assert err.value.line == 6
    assert str(err.value).startswith("%s line 6: malformed CSV: the quoted field that opens on line 6 runs on to line 20, "
                                     "where the parser stopped" % (tmp_path / "products.csv"))

    (tmp_path / "products.csv").write_text("\n".join(lines[:6]) + "\n" + "\n".join(lines[6:19]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:  # never closed at all: the end of the file
        load_data(load_config(None, [*SEARCH, "data.dir=%s" % tmp_path]))
    assert err.value.line == 6 and "opens on line 6" in str(err.value)


def test_lenient_drops_print_as_a_table_in_the_statistics(tmp_path):
    """format_stats shows dropped rows as an aligned table by file and reason, never as Python dicts."""
    frames = shop()
    frames["train"].loc[[2, 4, 6, 8], "relevance"] = 0.0
    folder = write_shop(tmp_path, frames, ".csv")
    loaded = load_config(None, [*SEARCH, *file_keys(folder, ".csv"), "data.strict=false"])
    data = load_data(loaded)
    lines = format_stats(dataset_stats(data, loaded.config))
    start = lines.index("dropped_rows: 4")
    header, row = lines[start + 1], lines[start + 2]
    assert header.split() == ["file", "field", "rows", "reason", "first", "at"]
    assert row.split()[:3] == ["train.csv", "relevance", "4"] and row.endswith("lines 4, 6, 8, ...")
    assert header.index("reason") == row.index("expected")  # aligned columns
    assert not any("{" in line for line in lines)


# ----------------------------------------------------------------------------- end to end


def test_train_records_the_frames_and_keeps_them_beside_the_run(tmp_path, monkeypatch):
    """tfrec.train with DataFrames: config.yaml names them and points at the run's Parquet copies (training itself skipped)."""
    from tfrec import api

    trained = {}
    monkeypatch.setattr(api, "_train_pipeline",
                        lambda kind, loaded, data, folder, warm_start, strategy=None: trained.update(data=data, loaded=loaded))
    monkeypatch.setattr(api, "_render_report", lambda folder: None)
    frames = shop()
    config = tmp_path / "shop.yaml"  # no data.dir: the frames are the data
    config.write_text("data:\n  dataset: search-csv\nevaluation:\n  ks: [5]\nretrieval:\n  top_k: 5\n", encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        run = tfrec.train(config, ["run.output_dir=%s" % (tmp_path / "runs")], catalog=frames["catalog"],
                          judgments={"train": frames["train"], "valid": frames["valid"]})
    assert out.getvalue().splitlines()[-1] == "run_dir: %s" % run
    assert "train judgments DataFrame" in out.getvalue()  # the printed statistics name the frames
    folder = RunFolder(run)
    header = folder.config.read_text(encoding="utf-8").splitlines()[1]
    assert "catalog DataFrame given to tfrec.train" in header and "valid judgments DataFrame" in header
    saved = load_config(folder.config, [])
    assert saved.config.data.dir == str(run / "data") and saved.config.data.judgments.train == "train.parquet"
    assert trained["data"].catalog.source == "catalog DataFrame"
    again = load_data(saved)  # what export and evaluation read: the run's own copies
    assert again.catalog.ids.tolist() == trained["data"].catalog.ids.tolist()
    assert again.train.labels.tolist() == trained["data"].train.labels.tolist()
    with contextlib.redirect_stdout(io.StringIO()):  # resuming the run with the same frames finds the same config
        assert tfrec.train(config, ["run.output_dir=%s" % (tmp_path / "runs")], run_dir=run, catalog=frames["catalog"],
                           judgments={"train": frames["train"], "valid": frames["valid"]}) == run


@pytest.mark.slow
def test_train_on_dataframes_end_to_end(tmp_path, shared_datasets):
    """tfrec.train(config, catalog=df, judgments={...}) trains, records the frames and keeps them for export."""
    folder = write_homedepot_slice(shared_datasets, tmp_path / "homedepot", n_queries=20)
    catalog = pd.read_csv(folder / "products.csv")
    train, valid = pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "valid.csv")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run = tfrec.train("default", ["data.dataset=search-csv", "evaluation.ks=[10]", "retrieval.top_k=10",
                                      "run.output_dir=%s" % (tmp_path / "runs"), "retrieval.epochs=0", "ranking.epochs=0",
                                      "evaluation.baselines=false"],
                          catalog=catalog, judgments={"train": train, "valid": valid})
    assert stdout.getvalue().splitlines()[-1] == "run_dir: %s" % run
    folder = RunFolder(run)
    config = folder.config.read_text(encoding="utf-8")
    assert "catalog DataFrame given to tfrec.train" in config.splitlines()[1]
    assert sorted(p.name for p in (run / "data").iterdir()) == ["catalog.parquet", "train.parquet", "valid.parquet"]
    stats = json.loads(folder.stats.read_text(encoding="utf-8"))
    assert stats["catalog"]["source"] == "catalog DataFrame" and stats["catalog"]["items"] == len(catalog)
    again, _ = tfrec.load_data(folder.config)  # what export reads: the run's own copies
    assert len(again.catalog) == len(catalog) and len(again.train) == len(train)
