"""pandas DataFrames in place of a config's data files: ``tfrec.train(config, catalog=df, judgments=...)``.

Each frame replaces the file one config key names, and is read with the same checks and
messages as that file (``catalog DataFrame, row 12, column 'price': expected a number ...``):

- ``catalog``: ``data.catalog.path``, the columns ``data.catalog.*_column(s)`` name;
- ``judgments={"train": df, "valid": df}``: ``data.judgments.train`` / ``data.judgments.valid``
  (search data comes as separate train and valid judgments, as with the files; either may be
  left out to read its file);
- ``interactions``: ``data.interactions.path`` (split per user by time, as the file is).

A run keeps what it read of the frames as Parquet files in its ``data/`` folder and its
config.yaml points there, so export, evaluation and resuming need no frames; rerunning the
original config with the frames needs the frames again.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from tfrec.config.loader import LoadedConfig
from tfrec.data.sources import cell_text

CATALOG, TRAIN, VALID, INTERACTIONS = "data.catalog.path", "data.judgments.train", "data.judgments.valid", "data.interactions.path"

# How messages and statistics name each frame, and the file a run keeps it in.
FRAME_NAMES = {CATALOG: "catalog DataFrame", TRAIN: "train judgments DataFrame", VALID: "valid judgments DataFrame",
               INTERACTIONS: "interactions DataFrame"}
COPY_NAMES = {CATALOG: "catalog.parquet", TRAIN: "train.parquet", VALID: "valid.parquet", INTERACTIONS: "interactions.parquet"}

SEARCH_FILES = (CATALOG, TRAIN, VALID)
INTERACTION_FILES = (CATALOG, INTERACTIONS)
# The datasets whose files frames replace, and which files those are.
DATASET_FILES = {"homedepot": SEARCH_FILES, "search-csv": SEARCH_FILES, "interactions-csv": INTERACTION_FILES}


def data_frames(catalog: Any = None, judgments: Optional[Mapping[str, Any]] = None, interactions: Any = None) -> dict[str, Any]:
    """The DataFrames given in place of data files, keyed by the config key of the file each replaces."""
    frames: dict[str, Any] = {}
    if catalog is not None:
        frames[CATALOG] = _frame("catalog", catalog)
    if judgments is not None:
        if not isinstance(judgments, Mapping):
            raise TypeError("judgments takes the train and valid judgments as two DataFrames, judgments={'train': df, "
                            "'valid': df} (as data.judgments.train and data.judgments.valid name two files), got %s"
                            % type(judgments).__name__)
        unknown = sorted(set(map(str, judgments)) - {"train", "valid"})
        if unknown:
            raise ValueError("judgments has the keys 'train' and 'valid', got %s" % ", ".join(repr(k) for k in unknown))
        for split, key in (("train", TRAIN), ("valid", VALID)):
            if judgments.get(split) is not None:
                frames[key] = _frame("judgments[%r]" % split, judgments[split])
    if interactions is not None:
        if judgments is not None:
            raise ValueError("give judgments (search data) or interactions (recommendation data), not both")
        frames[INTERACTIONS] = _frame("interactions", interactions)
    return frames


def _frame(argument: str, value: Any) -> Any:
    # lazy: pandas is needed only by callers who pass DataFrames (and they have it loaded already)
    import pandas as pd

    if not isinstance(value, pd.DataFrame):
        raise TypeError("%s must be a pandas DataFrame, got %s" % (argument, type(value).__name__))
    return value


def covers_every_file(frames: Mapping[str, Any]) -> bool:
    """Whether the frames replace all files of a search or a recommendation dataset (no data folder is read)."""
    return set(SEARCH_FILES) <= set(frames) or set(INTERACTION_FILES) <= set(frames)


def check_frames(loaded: LoadedConfig, frames: Mapping[str, Any]) -> None:
    """Refuse frames for files the config's dataset does not have (e.g. judgments for interactions-csv)."""
    if not frames:
        return
    dataset = loaded.config.data.dataset
    files = DATASET_FILES.get(dataset, ())
    extra = [key for key in frames if key not in files]
    if extra:
        takes = ("it takes %s" % ", ".join(_argument(k) for k in files)) if files else (
            "DataFrames replace the files of search-csv, interactions-csv and homedepot data")
        raise loaded.error("data.dataset", "is %s, which has no file for %s: %s"
                           % (dataset, " or ".join(FRAME_NAMES[k] for k in extra), takes))


def _argument(key: str) -> str:
    return {CATALOG: "catalog=", TRAIN: "judgments={'train': ...}", VALID: "judgments={'valid': ...}",
            INTERACTIONS: "interactions="}[key]


def keep_frames(loaded: LoadedConfig, frames: Mapping[str, Any], run_folder: Path, *, write: bool = True) -> dict[str, Path]:
    """Point the config's data keys at Parquet copies in ``run_folder/data`` and (``write``) write them.

    The copies hold the columns the config reads, as the text a CSV would hold, so reading them
    back gives the same data (export and resuming read them). Returns {config key: copy}.
    """
    check_frames(loaded, frames)
    folder = Path(run_folder).resolve() / "data"
    data = loaded.config.data
    copies = {key: folder / COPY_NAMES[key] for key in frames}
    every = covers_every_file(frames)
    for key, path in copies.items():
        _set_path(loaded, key, path.name if every else str(path))
        loaded.sources[key] = "%s given to tfrec.train (kept as %s)" % (FRAME_NAMES[key], path)
    if every:
        data.dir = str(folder)
        loaded.sources["data.dir"] = "DataFrames given to tfrec.train (kept in %s)" % folder
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        for key, path in copies.items():
            _write_copy(frames[key], _columns(loaded, key), path)
    return copies


def _set_path(loaded: LoadedConfig, key: str, value: str) -> None:
    data = loaded.config.data
    if key == CATALOG:
        data.catalog.path = value
    elif key == TRAIN:
        data.judgments.train = value
    elif key == VALID:
        data.judgments.valid = value
    else:
        data.interactions.path = value


def _columns(loaded: LoadedConfig, key: str) -> list[str]:
    """The columns the config reads from the file ``key`` names."""
    data = loaded.config.data
    if key == CATALOG:
        c = data.catalog
        return [c.id_column, *c.text_columns, *c.numeric_columns, *c.categorical_columns]
    if key in (TRAIN, VALID):
        j = data.judgments
        return [j.query_column, j.product_column, j.label_column]
    i = data.interactions
    return [i.user_column, i.item_column, i.timestamp_column] + ([i.rating_column] if i.rating_column else [])


def _write_copy(frame: Any, columns: list[str], path: Path) -> None:
    """Write a frame's columns (those it has) as text to a Parquet file, rows in the frame's order."""
    # lazy: pyarrow is only needed when DataFrames are given
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [str(c) for c in frame.columns]
    kept = [c for c in dict.fromkeys(columns) if names.count(c) == 1]
    arrays = [pa.array([cell_text(v) for v in frame.iloc[:, names.index(c)].tolist()], pa.string()) for c in kept]
    pq.write_table(pa.Table.from_arrays(arrays, names=kept) if kept else pa.table({}), path)
