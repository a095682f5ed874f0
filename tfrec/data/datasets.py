"""Adapters for the built-in datasets and the generic own-data formats, behind one ``load_data``.

- ``homedepot`` and ``search-csv``: a catalog plus train/valid judgments.
- ``amazon-scientific``: the UniSRec preprocessing (leave-one-out history -> next item files).
- ``movielens-100k``: GroupLens ``u.item`` / ``u.data``, split leave-one-out per user by time.
- ``interactions-csv``: a catalog plus one interaction log, split like MovieLens.

The catalog, judgments and interaction files are CSV, or Parquet when their name ends in
``.parquet``; pandas DataFrames may replace them (:mod:`tfrec.data.frames`).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Optional

import numpy as np

from tfrec.config.loader import LoadedConfig
from tfrec.data.budget import check_memory
from tfrec.data.errors import DataError, DropReport, RowChecker
from tfrec.data.preflight import preflight
from tfrec.data.frames import CATALOG, FRAME_NAMES, INTERACTIONS, TRAIN, VALID, check_frames
from tfrec.data.locations import Location, locate, location
from tfrec.data.readers import leave_one_out, read_catalog, read_interactions, read_judgments
from tfrec.data.sources import decode_text
from tfrec.data.tables import Catalog, Dataset, Interactions, RecommendationData, SearchData, Sequences

AMAZON_FILES = {
    "text": "Scientific.text",
    "items": "Scientific.item2index",
    "users": "Scientific.user2index",
    "train": "Scientific.train.inter",
    "valid": "Scientific.valid.inter",
}
MOVIELENS_FILES = {"items": "u.item", "ratings": "u.data", "genres": "u.genre"}
# GroupLens ships u.item in Latin-1 (accented titles such as "Misérables").
MOVIELENS_ENCODING = "latin-1"


def required_files(loaded: LoadedConfig) -> dict[str, Location]:
    """The files a config's dataset needs (local paths or URIs), keyed by the config key that names them."""
    data = loaded.config.data
    folder = location(data.dir or ".")
    if data.dataset in ("homedepot", "search-csv"):
        return {
            "data.catalog.path": locate(folder, data.catalog.path),
            "data.judgments.train": locate(folder, data.judgments.train),
            "data.judgments.valid": locate(folder, data.judgments.valid),
        }
    if data.dataset == "interactions-csv":
        return {"data.catalog.path": locate(folder, data.catalog.path), "data.interactions.path": locate(folder, data.interactions.path)}
    fixed = AMAZON_FILES if data.dataset == "amazon-scientific" else MOVIELENS_FILES
    return {"data.dir": folder / name for name in fixed.values()}


def check_files(loaded: LoadedConfig, given: Collection[str] = ()) -> None:
    """Raise a ConfigError naming the key and config file when a needed data file (not ``given`` as a DataFrame) is missing."""
    for key, path in required_files(loaded).items():
        if key not in given and not path.is_file():
            raise loaded.error(key, "data file %s not found" % path)


def load_data(loaded: LoadedConfig, frames: Optional[Mapping[str, Any]] = None) -> Dataset:
    """Read, validate and return the dataset a config names; checks config values against it.

    ``frames`` maps config keys (``data.catalog.path``, ...) to pandas DataFrames read in place of
    the files they name (:func:`tfrec.data.frames.data_frames` builds it).
    """
    frames = dict(frames or {})
    if loaded.config.data.prepared:
        from tfrec.data.prepared.reader import load_prepared  # lazy: reading shards imports TensorFlow

        if frames:
            raise loaded.error("data.prepared", "is set, so the data comes from its shards: pass no DataFrames")
        prepared = load_prepared(loaded)
        preflight(loaded, prepared)
        return prepared
    check_frames(loaded, frames)
    check_files(loaded, given=frames)
    check_memory(loaded, required_files(loaded), frames)  # stop before reading what would not fit in memory
    data = loaded.config.data
    folder = location(data.dir or ".")
    checker = RowChecker(strict=data.strict)
    if data.dataset in ("homedepot", "search-csv"):
        result: Dataset = _load_search_csv(loaded, folder, checker, frames)
    elif data.dataset == "amazon-scientific":
        result = load_amazon_scientific(folder, checker)
    elif data.dataset == "movielens-100k":
        result = load_movielens_100k(folder, checker)
    else:
        catalog = read_catalog(data.catalog, folder, checker, frames.get(CATALOG))
        log = read_interactions(data.interactions, folder, catalog, checker, frames.get(INTERACTIONS))
        result = _recommendation_from_log(log, catalog, checker, data.dataset)
    result.name = data.dataset
    preflight(loaded, result)  # on the whole data; tfrec train checks its slice again
    return result


def _load_search_csv(loaded: LoadedConfig, folder: Location, checker: RowChecker, frames: Mapping[str, Any]) -> SearchData:
    data = loaded.config.data
    catalog = read_catalog(data.catalog, folder, checker, frames.get(CATALOG))
    train = read_judgments(data.judgments, frames.get(TRAIN, locate(folder, data.judgments.train)), catalog, checker, name=FRAME_NAMES[TRAIN])
    valid = read_judgments(data.judgments, frames.get(VALID, locate(folder, data.judgments.valid)), catalog, checker, name=FRAME_NAMES[VALID])
    return SearchData(catalog, train, valid, drops=checker.report)


def _read_tsv_lines(path: Location, n_fields: int, checker: RowChecker, *, header: bool, encoding: str = "utf-8") -> list[tuple[int, list[str]]]:
    """Split a tab-separated file into (line number, fields), rejecting rows of the wrong width."""
    out = []
    for number, line in enumerate(decode_text(path, encoding).splitlines(), start=1):
        if (header and number == 1) or not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            checker.reject(DataError(str(path), "expected %d tab-separated fields, got %d" % (n_fields, len(fields)), line=number))
            continue
        out.append((number, fields))
    return out


def load_amazon_scientific(folder: Location, checker: RowChecker) -> RecommendationData:
    """Read the UniSRec 'Scientific' files; catalog row i is item index i of item2index."""
    paths = {k: folder / v for k, v in AMAZON_FILES.items()}
    index_of_raw: dict[str, int] = {}
    for line, (raw, index) in _read_tsv_lines(paths["items"], 2, checker, header=False):
        if not index.strip().isdigit():
            checker.reject(DataError(str(paths["items"]), "expected an integer index, got %r" % index, line=line))
            continue
        index_of_raw[raw.strip()] = int(index)
    n_items = len(index_of_raw)
    if sorted(index_of_raw.values()) != list(range(n_items)):
        raise DataError(str(paths["items"]), "item indices must be 0..%d, each once" % (n_items - 1))
    texts = [""] * n_items
    for line, (raw, text) in _read_tsv_lines(paths["text"], 2, checker, header=True):
        if raw.strip() in index_of_raw:
            texts[index_of_raw[raw.strip()]] = text.strip()
    ids = [""] * n_items
    for raw, index in index_of_raw.items():
        ids[index] = raw
    missing = [ids[i] for i, t in enumerate(texts) if not t]
    if missing:
        # Items stay (they are referenced by index); the text path sees an empty string for them.
        for raw in missing:
            checker.reject(DataError(str(paths["text"]), "expected a text for item %r" % raw, field_name="text"))
    catalog = Catalog(ids=np.asarray(ids, dtype=object), texts={"text": np.asarray(texts, dtype=object)}, source=str(paths["text"]))
    user_of_index = {}
    for line, (raw, index) in _read_tsv_lines(paths["users"], 2, checker, header=False):
        user_of_index[index.strip()] = raw.strip()
    train = _read_inter(paths["train"], n_items, user_of_index, checker)
    valid = _read_inter(paths["valid"], n_items, user_of_index, checker)
    return RecommendationData(catalog, train, valid, drops=checker.report)


def _read_inter(path: Location, n_items: int, user_of_index: dict[str, str], checker: RowChecker) -> Sequences:
    """Read a UniSRec ``.inter`` file: user index, space-separated history indices, target index."""
    flat: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    targets: list[int] = []
    users: list[str] = []
    for line, (user, history, target) in _read_tsv_lines(path, 3, checker, header=True):
        try:
            hist = [int(x) for x in history.split()]
            tgt = int(target)
        except ValueError:
            checker.reject(DataError(str(path), "expected integer item indices", line=line, field_name="item_id_list"))
            continue
        if not hist or any(not 0 <= i < n_items for i in (*hist, tgt)):
            checker.reject(DataError(str(path), "expected a non-empty history of item indices in [0, %d)" % n_items, line=line, field_name="item_id_list"))
            continue
        starts.append(len(flat))
        flat.extend(hist)
        ends.append(len(flat))
        targets.append(tgt)
        users.append(user_of_index.get(user.strip(), user.strip()))
    return Sequences(
        items=np.asarray(flat, dtype=np.int32),
        starts=np.asarray(starts, dtype=np.int64),
        ends=np.asarray(ends, dtype=np.int64),
        targets=np.asarray(targets, dtype=np.int32),
        users=np.asarray(users, dtype=object),
        source=str(path),
    )


def load_movielens_100k(folder: Location, checker: RowChecker) -> RecommendationData:
    """Read MovieLens 100K: movies with title and genres, ratings as an interaction log."""
    genre_names = {}
    for line in decode_text(folder / MOVIELENS_FILES["genres"], MOVIELENS_ENCODING).splitlines():
        if line.strip():
            name, _, index = line.partition("|")
            genre_names[int(index)] = name
    ids, titles, genres, years = [], [], [], []
    item_path = folder / MOVIELENS_FILES["items"]
    for number, line in enumerate(decode_text(item_path, MOVIELENS_ENCODING).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + len(genre_names):
            checker.reject(DataError(str(item_path), "expected %d '|'-separated fields, got %d" % (5 + len(genre_names), len(fields)), line=number))
            continue
        ids.append(fields[0])
        titles.append(fields[1].strip())
        genres.append(", ".join(genre_names[i] for i, flag in enumerate(fields[5:]) if flag == "1"))
        date = fields[2].strip()
        years.append(float(date[-4:]) if date[-4:].isdigit() else np.nan)
    catalog = Catalog(
        ids=np.asarray(ids, dtype=object),
        texts={"title": np.asarray(titles, dtype=object), "genres": np.asarray(genres, dtype=object)},
        numeric={"year": np.asarray(years, dtype=np.float32)},
        source=str(item_path),
    )
    rating_path = folder / MOVIELENS_FILES["ratings"]
    users, items, stamps, ratings = [], [], [], []
    for line, (user, item, rating, stamp) in _read_tsv_lines(rating_path, 4, checker, header=False):
        if not (user.strip() and stamp.strip().isdigit() and _is_number(rating)):
            checker.reject(DataError(str(rating_path), "expected user, item, numeric rating, integer timestamp", line=line))
            continue
        index = int(catalog.index_of([item])[0])
        if index < 0:
            checker.reject(DataError(str(rating_path), "item id %r is not in u.item" % item, line=line, field_name="item"))
            continue
        users.append(user)
        items.append(index)
        stamps.append(int(stamp))
        ratings.append(float(rating))
    log = Interactions(
        users=np.asarray(users, dtype=object),
        items=np.asarray(items, dtype=np.int32),
        timestamps=np.asarray(stamps, dtype=np.int64),
        ratings=np.asarray(ratings, dtype=np.float32),
        source=str(rating_path),
    )
    return _recommendation_from_log(log, catalog, checker, "movielens-100k")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _recommendation_from_log(log: Interactions, catalog: Catalog, checker: RowChecker, name: str) -> RecommendationData:
    split = leave_one_out(log)
    return RecommendationData(catalog, split.train, split.valid, interactions=log, drops=checker.report, name=name)


__all__ = [
    "Dataset",
    "DropReport",
    "check_files",
    "load_amazon_scientific",
    "load_data",
    "load_movielens_100k",
    "required_files",
]
