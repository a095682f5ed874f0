"""A changed catalog served by a search run's trained models, without retraining (``tfrec catalog update``).

A changes file (CSV, header ``action,product_id,title``, optionally followed by the run's catalog
columns) adds, retitles or removes products: ``action`` is ``add``, ``change`` or ``remove``;
``title`` is the product's text (with several text columns, what the run's models read: their values
joined by a space), empty for ``remove``. The whole file is checked before any work starts, and an
error names the file, the line and the field.

The update starts from the catalog the export serves now (its newest version, so updates
accumulate) and writes a new version of every search model through
:func:`tfrec.search.export.export_search`: one version number, published all or nothing, so a
server polling the folder swaps to it. In it:

* added and changed products are encoded by the trained product tower (an id outside the
  training vocabulary takes its text-only path) and by the zero-shot encoder;
* every other product keeps its vectors, never re-encoded: the run's ``catalog_vectors.npy``, the
  vectors an earlier update stored, and zero-shot vectors from the embedding cache
  (``text.cache_dir``);
* the BM25 index is rebuilt over the new titles with the run's vocabulary kept (the words of its
  training queries included);
* catalog columns of an added product come from the changes file (missing values where a cell is
  empty); a changed product keeps its values where its cells are empty.

What the next update needs (the products updates encoded: their vectors and catalog columns) is
stored beside the versions, in ``<export_dir>/.tfrec-catalog/<key>/``, where ``key`` is a digest of
the ids and titles a version serves. It is committed before the version is published, so a
published version always finds its state; states that no version serves any more are removed.
Two catalog updates of one export folder run one after the other (a lock file there).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from tfrec.config.loader import load_config
from tfrec.data.datasets import load_data
from tfrec.data.errors import DataError, RowChecker
from tfrec.data.slices import slice_for_config
from tfrec.data.sources import read_csv
from tfrec.data.tables import Catalog
from tfrec.files import file_sha256, write_bytes_atomic
from tfrec.lexical.index import LexicalIndex
from tfrec.lexical.tokens import MAX_TEXT_BYTES, make_stemmer
from tfrec.log import as_stage, duration
from tfrec.retrieval.train import encode_catalog
from tfrec.runs import SEARCH, RunFolder
from tfrec.search.export import ServedCatalog, export_search, load_search_models
from tfrec.serving.publish import read_marker
from tfrec.serving.savedmodel import version_folders
from tfrec.serving.service import CATALOG_FILE, RETRIEVAL_MODEL
from tfrec.text.catalog import catalog_text_features

try:
    import fcntl
except ImportError:  # Windows: updates of one folder are then not serialized
    fcntl = None  # type: ignore[assignment]

log = as_stage(logging.getLogger(__name__), "catalog")

ADD, CHANGE, REMOVE = "add", "change", "remove"
ACTIONS = (ADD, CHANGE, REMOVE)
CHANGE_COLUMNS = ("action", "product_id", "title")
STATE_DIR = ".tfrec-catalog"  # hidden: servers and tfrec's export scans skip dot folders
STATE_FILE = "state.json"  # the commit point of a state folder, written last
PRODUCTS_FILE = "products.json"
VECTORS_FILE = "vectors.npz"
STATE_FORMAT = 1
LOCK_FILE = "lock"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600.0  # a temporary state folder this old belongs to an update that was killed


class CatalogUpdateError(ValueError):
    """A catalog update that cannot be applied (export folder, stored state, run); the message says why."""


@dataclass(frozen=True)
class Change:
    """One row of a changes file."""

    action: str
    product_id: str
    title: str  # "" for remove
    line: int
    numeric: dict[str, float] = field(default_factory=dict)  # the catalog columns the row gives (non-empty cells)
    categorical: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedState:
    """The catalog an export's newest version serves, and what earlier updates stored for it."""

    version: int
    run: str  # the run its marker names ("" when none)
    ids: list[str]
    titles: list[str]
    overlay: Optional["Overlay"]  # None: the run's own catalog (nothing encoded by an update yet)


@dataclass
class Overlay:
    """Products an update encoded (their vectors are not the run's): rows aligned across fields."""

    ids: list[str]
    titles: list[str]
    dense: np.ndarray  # float32 [M, dim], the product tower's vectors
    zero: np.ndarray  # float32 [M, zdim], the zero-shot vectors
    numeric: dict[str, np.ndarray]  # float32 [M] per catalog column (NaN: missing)
    categorical: dict[str, list[str]]  # "" : missing
    history: list[dict] = field(default_factory=list)  # what each update did, oldest first


@dataclass(frozen=True)
class CatalogUpdate:
    """What one catalog update did."""

    version: int
    products: int
    added: int
    changed: int
    removed: int
    encoded: int  # products run through the product tower (added and changed ones)
    reused: int  # products whose vectors were kept
    zero_shot_encoded: int  # texts the zero-shot encoder ran on (the others came from the embedding cache)
    seconds: dict[str, float]  # load, encode, lexical, save, total
    published: dict[str, dict]  # export_search's {model: {"path", "mb"}}

    def lines(self) -> list[str]:
        """The summary as printed by ``tfrec catalog update``."""
        phases = ", ".join("%s %.1f s" % (name, self.seconds[name]) for name in ("load", "encode", "lexical", "save"))
        return [
            "catalog: %s products (%s added, %s changed, %s removed)"
            % tuple("{:,}".format(n) for n in (self.products, self.added, self.changed, self.removed)),
            "vectors: %s encoded, %s reused (zero-shot: %s texts encoded, the rest from the embedding cache)"
            % tuple("{:,}".format(n) for n in (self.encoded, self.reused, self.zero_shot_encoded)),
            "version: %d published in %s (%s)" % (self.version, duration(self.seconds["total"]), phases),
        ]


# ----------------------------------------------------------------------------- the changes file


def read_changes(path: Path, served_ids: Sequence[str], numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> list[Change]:
    """Parse and check a changes file against the served product ids; a DataError names file, line and field."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        raise DataError(str(path), "a changes file is CSV text (header %s)" % ",".join(CHANGE_COLUMNS))
    table = read_csv(path, list(CHANGE_COLUMNS), RowChecker(strict=True))
    allowed = set(CHANGE_COLUMNS) | set(numeric) | set(categorical)
    unknown = [h for h in table.header if h not in allowed]
    if unknown:
        extra = ", ".join(list(numeric) + list(categorical)) or "none in this run"
        raise table.error("unknown column(s) %s: a changes file holds %s and the run's catalog columns (%s)"
                          % (", ".join(repr(c) for c in unknown), ",".join(CHANGE_COLUMNS), extra), 1)
    if not table.rows:
        raise table.error("no changes: the file holds only its header")
    where = {name: table.column(name) for name in table.header}
    served = set(served_ids)
    first: dict[str, int] = {}
    changes = []
    for row, line in zip(table.rows, table.lines):
        cell = {name: row[i] for name, i in where.items()}
        action = cell["action"].strip().lower()
        if action not in ACTIONS:
            raise table.error("unknown action %r (expected add, change or remove)" % cell["action"], line, "action")
        pid = cell["product_id"].strip()
        if not pid:
            raise table.error("expected a non-empty product id", line, "product_id")
        if pid in first:
            raise table.error("product %r appears again (first on line %d): give each product one row" % (pid, first[pid]),
                              line, "product_id")
        first[pid] = line
        if action == ADD and pid in served:
            raise table.error("product %r is already in the served catalog: use change to give it a new title" % pid,
                              line, "product_id")
        if action != ADD and pid not in served:
            raise table.error("product %r is not in the served catalog (use add for a new product)" % pid, line, "product_id")
        title = cell["title"].strip()
        if action == REMOVE:
            given = [name for name, value in cell.items() if name not in ("action", "product_id") and value.strip()]
            if given:
                raise table.error("a remove row takes only action and product_id: leave it empty", line, given[0])
            changes.append(Change(action, pid, "", line))
            continue
        if not title:
            raise table.error("expected a non-empty title for %s" % action, line, "title")
        size = len(title.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            raise table.error("the title is {:,} bytes long; a product text may hold at most {:,} bytes".format(size, MAX_TEXT_BYTES),
                              line, "title")
        values: dict[str, float] = {}
        for name in numeric:
            text = cell.get(name, "").strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise table.error("expected a number or an empty field, got %r" % cell[name], line, name)
            values[name] = value
        labels = {name: cell[name].strip() for name in categorical if cell.get(name, "").strip()}
        changes.append(Change(action, pid, title, line, values, labels))
    return changes


# ----------------------------------------------------------------------------- the served state


def catalog_key(ids: Sequence[str], titles: Sequence[str]) -> str:
    """The digest naming a served catalog's state folder (its ids and titles, in order)."""
    return hashlib.sha256(json.dumps([list(ids), list(titles)], ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


def _read_catalog_file(version_dir: Path) -> tuple[list[str], list[str]]:
    path = version_dir / "assets.extra" / CATALOG_FILE
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        ids, titles = [str(i) for i in content["ids"]], [str(t) for t in content["titles"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatalogUpdateError("%s cannot be read (%s): the version it belongs to is not a tfrec search export" % (path, exc)) from exc
    if len(ids) != len(titles):
        raise CatalogUpdateError("%s lists %d ids for %d titles" % (path, len(ids), len(titles)))
    return ids, titles


def read_served_state(export_dir: Path) -> ServedState:
    """The newest version of an export folder's search models: its catalog, run, and the state an update stored."""
    export_dir = Path(export_dir)
    versions = version_folders(export_dir / RETRIEVAL_MODEL)
    if not versions:
        raise CatalogUpdateError("%s holds no %s version: export the run first (tfrec export RUN --export-dir %s)"
                                 % (export_dir, RETRIEVAL_MODEL, export_dir))
    version = max(versions)
    ids, titles = _read_catalog_file(versions[version])
    overlay = _read_overlay(export_dir / STATE_DIR / catalog_key(ids, titles))
    return ServedState(version, str(read_marker(versions[version]).get("run", "")), ids, titles, overlay)


def _read_overlay(folder: Path) -> Optional[Overlay]:
    if not (folder / STATE_FILE).is_file():
        return None
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("format") != STATE_FORMAT:
            raise ValueError("format %r, this tfrec reads %d" % (state.get("format"), STATE_FORMAT))
        if file_sha256(folder / VECTORS_FILE) != state["vectors_sha256"] or file_sha256(folder / PRODUCTS_FILE) != state["products_sha256"]:
            raise ValueError("its files do not match the checksums in %s" % STATE_FILE)
        products = json.loads((folder / PRODUCTS_FILE).read_text(encoding="utf-8"))
        with np.load(folder / VECTORS_FILE, allow_pickle=False) as arrays:
            dense, zero = arrays["dense"].astype(np.float32), arrays["zero"].astype(np.float32)
            numeric = {name: arrays["numeric_" + name].astype(np.float32) for name in state["numeric"]}
        overlay = Overlay([str(i) for i in products["ids"]], [str(t) for t in products["titles"]], dense, zero, numeric,
                          {name: [str(v) for v in products["categorical"][name]] for name in state["categorical"]},
                          list(state.get("history", [])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatalogUpdateError("the stored catalog state %s is unreadable (%s): delete that folder and update from a "
                                 "fresh export (tfrec export)" % (folder, exc)) from exc
    sizes = {len(overlay.ids), len(overlay.titles), len(overlay.dense), len(overlay.zero),
             *(len(v) for v in overlay.numeric.values()), *(len(v) for v in overlay.categorical.values())}
    if len(sizes) != 1:
        raise CatalogUpdateError("the stored catalog state %s is inconsistent (its fields have %s rows)" % (folder, sorted(sizes)))
    return overlay


def _write_overlay(folder: Path, overlay: Overlay, run: str) -> None:
    """Write a state folder under a temporary name and rename it into place (an existing one is replaced)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / ("%s%d-%s" % (_TMP_PREFIX, os.getpid(), uuid.uuid4().hex))
    tmp.mkdir()
    try:
        products = {"ids": overlay.ids, "titles": overlay.titles, "categorical": overlay.categorical}
        write_bytes_atomic(tmp / PRODUCTS_FILE, json.dumps(products, ensure_ascii=False).encode("utf-8"))
        with open(tmp / VECTORS_FILE, "wb") as f:
            np.savez(f, dense=overlay.dense, zero=overlay.zero, **{"numeric_" + n: v for n, v in overlay.numeric.items()})
        state = {"format": STATE_FORMAT, "run": run, "products": len(overlay.ids), "numeric": list(overlay.numeric),
                 "categorical": list(overlay.categorical), "vectors_sha256": file_sha256(tmp / VECTORS_FILE),
                 "products_sha256": file_sha256(tmp / PRODUCTS_FILE), "history": overlay.history}
        write_bytes_atomic(tmp / STATE_FILE, json.dumps(state, indent=1).encode("utf-8"))
        if folder.exists():  # the same ids and titles served before: this state is the newer one
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prune_states(export_dir: Path) -> list[Path]:
    """Remove stored states that no version of the export serves any more (and temporary ones of killed updates)."""
    root = Path(export_dir) / STATE_DIR
    if not root.is_dir():
        return []
    served = set()
    for version_dir in version_folders(Path(export_dir) / RETRIEVAL_MODEL).values():
        try:
            served.add(catalog_key(*_read_catalog_file(version_dir)))
        except CatalogUpdateError:
            continue
    removed = []
    for entry in root.iterdir():
        if not entry.is_dir():
            continue
        stale_tmp = entry.name.startswith(_TMP_PREFIX) and time.time() - entry.stat().st_mtime > _STALE_TMP_SECONDS
        if stale_tmp or (not entry.name.startswith(".") and entry.name not in served):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class _UpdateLock:
    """Serializes catalog updates of one export folder (a plain export takes the export's own lock)."""

    def __init__(self, export_dir: Path) -> None:
        self.path = Path(export_dir) / STATE_DIR / LOCK_FILE
        self.file: Any = None

    def __enter__(self) -> "_UpdateLock":
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another catalog update of %s is running; waiting for it to finish", self.path.parent.parent)
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.file is not None:
            self.file.close()  # closing the file drops the lock
            self.file = None


# ----------------------------------------------------------------------------- the update


@dataclass
class _Plan:
    """The new catalog, row by row: where each product's vectors come from."""

    ids: list[str]
    titles: list[str]
    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    run_rows: np.ndarray  # rows reusing the run's vectors ...
    run_source: np.ndarray  # ... its catalog rows
    overlay_rows: np.ndarray  # rows reusing an earlier update's vectors ...
    overlay_source: np.ndarray  # ... its overlay rows
    encode_rows: np.ndarray  # rows to encode (added and changed products)


def _plan(served: ServedState, changes: Sequence[Change], run_catalog: Catalog, run_titles: np.ndarray,
          numeric: Sequence[str], categorical: Sequence[str]) -> _Plan:
    """Apply the changes to the served catalog and say where every product's vectors and columns come from."""
    by_id = {c.product_id: c for c in changes}
    overlay = served.overlay
    overlay_row = {pid: i for i, pid in enumerate(overlay.ids)} if overlay is not None else {}
    run_row = {pid: i for i, pid in enumerate(run_catalog.ids.tolist())}
    ids: list[str] = []
    titles: list[str] = []
    sources: list[tuple[str, int]] = []
    columns_num: dict[str, list[float]] = {n: [] for n in numeric}
    columns_cat: dict[str, list[str]] = {n: [] for n in categorical}

    def old_columns(pid: str) -> tuple[dict[str, float], dict[str, str]]:
        if pid in overlay_row:
            i = overlay_row[pid]
            return ({n: float(overlay.numeric[n][i]) for n in numeric}, {n: overlay.categorical[n][i] for n in categorical})
        r = run_row[pid]
        return ({n: float(run_catalog.numeric[n][r]) for n in numeric}, {n: str(run_catalog.categorical[n][r]) for n in categorical})

    def append(pid: str, title: str, source: tuple[str, int], nums: dict[str, float], cats: dict[str, str]) -> None:
        ids.append(pid)
        titles.append(title)
        sources.append(source)
        for n in numeric:
            columns_num[n].append(nums.get(n, math.nan))
        for n in categorical:
            columns_cat[n].append(cats.get(n, ""))

    for pid, title in zip(served.ids, served.titles):
        change = by_id.get(pid)
        if change is not None and change.action == REMOVE:
            continue
        if pid in overlay_row:
            if overlay.titles[overlay_row[pid]] != title:
                raise CatalogUpdateError("the stored catalog state has another title for product %r than the served catalog" % pid)
            source = ("overlay", overlay_row[pid])
        elif pid in run_row and run_titles[run_row[pid]] == title:
            source = ("run", run_row[pid])
        else:
            raise CatalogUpdateError(
                "product %r of the served catalog has no stored vectors (it is not the run's product with the run's title, and no "
                "stored catalog update state covers it): was the newest version exported from another run?" % pid)
        nums, cats = old_columns(pid)
        if change is not None:  # CHANGE: new title, re-encoded; given cells replace the old values
            title, source = change.title, ("encode", 0)
            nums, cats = {**nums, **change.numeric}, {**cats, **change.categorical}
        append(pid, title, source, nums, cats)
    for change in changes:
        if change.action == ADD:
            append(change.product_id, change.title, ("encode", 0), dict(change.numeric), dict(change.categorical))

    kinds = np.array([s[0] for s in sources])
    where = {k: np.flatnonzero(kinds == k) for k in ("run", "overlay", "encode")}
    source_rows = np.array([s[1] for s in sources], np.int64)
    return _Plan(
        ids, titles,
        {n: np.asarray(v, np.float32) for n, v in columns_num.items()},
        {n: np.asarray(v, object) for n, v in columns_cat.items()},
        where["run"], source_rows[where["run"]], where["overlay"], source_rows[where["overlay"]], where["encode"],
    )


def run_vocabulary(index: LexicalIndex) -> list[str]:
    """The raw tokens a run's BM25 index was built from (catalog and training-query words), to build a new one with."""
    if not index.stem:
        return [k for k, term in zip(index.raw_tokens, index.raw_to_term.tolist()) if term >= 0]
    stem = make_stemmer()
    # Keys that are only stems (an index adds them for its suffix rules) are no raw tokens: a stem that
    # stems to itself is both, the others the new index adds again from its own raw tokens.
    return [k for k, term in zip(index.raw_tokens, index.raw_to_term.tolist()) if term >= 0 and stem(k) == index.terms[term]]


def _catalog_dtype(version_dir: Path, default: str) -> str:
    """How a published search_retrieval version stores its catalog matrix (float32 or float16)."""
    from tfrec import compat  # lazy: only an update reads a checkpoint

    tf = compat.tensorflow()
    try:
        dtypes = tf.train.load_checkpoint(str(version_dir / "variables" / "variables")).get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError):
        return default
    found = [d.name for name, d in dtypes.items() if "catalog_dense" in name]
    return found[0] if found and found[0] in ("float32", "float16") else default


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the time of a ``with`` block to ``seconds[name]``."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.monotonic() - started


def _checked_changes(folder: RunFolder, export_dir: Path, changes_file: Path, numeric: Sequence[str],
                     categorical: Sequence[str]) -> tuple[ServedState, list[Change]]:
    """The served state and the changes file, checked against each other and the run (nothing is written)."""
    served = read_served_state(export_dir)
    if served.run and served.run != folder.root.name:
        raise CatalogUpdateError("the newest version of %s (%d) comes from run %s, not %s: update it with that run"
                                 % (export_dir, served.version, served.run, folder.root.name))
    changes = read_changes(changes_file, served.ids, numeric, categorical)
    added, removed = sum(c.action == ADD for c in changes), sum(c.action == REMOVE for c in changes)
    if len(served.ids) + added - removed < 1:
        raise DataError(str(changes_file), "the changes remove every product: a catalog needs at least one")
    return served, changes


def update_catalog(run_dir: Path, export_dir: Path, changes_file: Path, version: Optional[int] = None,
                   progress: bool = True) -> CatalogUpdate:
    """Apply a changes file to the catalog an export serves and publish the result as a new version of every search model."""
    started = time.monotonic()
    seconds: dict[str, float] = {}
    folder = RunFolder(Path(run_dir))
    if not folder.root.is_dir():
        raise FileNotFoundError("run folder %s not found" % folder.root)
    if folder.record() is not None and folder.kind() != SEARCH:
        raise CatalogUpdateError("%s is a %s run, not a search run: it serves no catalog" % (folder.root, folder.kind()))
    folder.require(folder.config, folder.search_settings, folder.retrieval_weights, folder.ranker_weights,
                   folder.catalog_vectors, folder.lexical / "lexical_index.json", what="trained search run")
    export_dir, changes_file = Path(export_dir), Path(changes_file)
    with _timed(seconds, "load"):
        loaded = load_config(folder.config, [])
        cfg = loaded.config
        numeric, categorical = list(cfg.data.catalog.numeric_columns), list(cfg.data.catalog.categorical_columns)
        # Checked before anything is written (the lock file included); again under the lock if another update came first.
        served, changes = _checked_changes(folder, export_dir, changes_file, numeric, categorical)
        data = slice_for_config(load_data(loaded), cfg)
        run_titles = data.catalog.text().astype(str)
        plan = _plan(served, changes, data.catalog, run_titles, numeric, categorical)
    with _UpdateLock(export_dir):
        with _timed(seconds, "load"):
            if max(version_folders(export_dir / RETRIEVAL_MODEL), default=0) != served.version:
                served, changes = _checked_changes(folder, export_dir, changes_file, numeric, categorical)
                plan = _plan(served, changes, data.catalog, run_titles, numeric, categorical)
            counts = {a: sum(c.action == a for c in changes) for a in ACTIONS}
            log.info("%s: %s added, %s changed, %s removed; serving version %d of %s (%s products)", changes_file,
                     *("{:,}".format(counts[a]) for a in ACTIONS), served.version, export_dir, "{:,}".format(len(served.ids)))
        new_catalog = Catalog(ids=np.asarray(plan.ids, object), texts={"title": np.asarray(plan.titles, object)},
                              numeric=plan.numeric, categorical=plan.categorical, source=str(changes_file))
        with _timed(seconds, "lexical"):
            log.info("rebuilding the BM25 index over %s titles ...", "{:,}".format(len(plan.ids)))
            run_index = LexicalIndex.load(folder.lexical)
            index = LexicalIndex.build(plan.titles, run_vocabulary(run_index), k1=run_index.k1, b=run_index.b, stem=run_index.stem)
        zero_stats: dict[str, int] = {}
        vectors: dict[str, np.ndarray] = {}

        def fill_vectors(retrieval: Any, zero_encoder: Any) -> tuple[np.ndarray, np.ndarray]:
            with _timed(seconds, "encode"):
                vectors["dense"], vectors["zero"], zero_stats["encoded"] = _vectors(
                    plan, folder, served.overlay, retrieval, zero_encoder, cfg.text, progress)
            return vectors["dense"], vectors["zero"]

        with _timed(seconds, "load"):
            log.info("rebuilding the trained models of %s ...", folder.root)
            models = load_search_models(folder.root, ServedCatalog(new_catalog, index, fill_vectors))
            current = version_folders(export_dir / RETRIEVAL_MODEL)[served.version]
            models = dataclasses.replace(models, catalog_dtype=_catalog_dtype(current, models.catalog_dtype))
        seconds["load"] -= seconds.get("encode", 0.0)  # the encoding ran inside the model load

        encoded = plan.encode_rows
        history = (served.overlay.history if served.overlay is not None else []) + [
            {"added": counts[ADD], "changed": counts[CHANGE], "removed": counts[REMOVE], "changes_file": str(changes_file),
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
        keep = np.concatenate([plan.overlay_rows, encoded]).astype(np.int64)
        keep.sort()
        overlay = Overlay([plan.ids[i] for i in keep], [plan.titles[i] for i in keep], vectors["dense"][keep], vectors["zero"][keep],
                          {n: plan.numeric[n][keep] for n in numeric}, {n: [str(v) for v in plan.categorical[n][keep]] for n in categorical},
                          history)
        state_dir = export_dir / STATE_DIR / catalog_key(plan.ids, plan.titles)
        with _timed(seconds, "save"):
            # The state goes first: a published version must always find it (an unpublished one's is pruned).
            _write_overlay(state_dir, overlay, folder.root.name)
            try:
                published = export_search(models, export_dir, version=version, run=folder.root.name,
                                          scann=(export_dir / "scann" / RETRIEVAL_MODEL).is_dir())
            finally:
                prune_states(export_dir)
    new_version = int(Path(next(iter(published.values()))["path"]).name)
    seconds["total"] = time.monotonic() - started
    result = CatalogUpdate(
        version=new_version, products=len(plan.ids), added=counts[ADD], changed=counts[CHANGE], removed=counts[REMOVE],
        encoded=len(encoded), reused=len(plan.ids) - len(encoded), zero_shot_encoded=zero_stats.get("encoded", 0),
        seconds=seconds, published=published,
    )
    log.info("version %d published in %s", new_version, duration(seconds["total"]))
    return result


def _vectors(plan: _Plan, folder: RunFolder, overlay: Optional[Overlay], retrieval: Any, zero_encoder: Any, text_cfg: Any,
             progress: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Product and zero-shot vectors of the new catalog: reused where the title is unchanged, encoded otherwise."""
    n = len(plan.ids)
    dense = np.zeros((n, retrieval.dim), np.float32)
    zero = np.zeros((n, zero_encoder.output_dim), np.float32)
    if len(plan.run_rows):
        run_vectors = np.load(folder.catalog_vectors, mmap_mode="r")
        if run_vectors.shape[1] != retrieval.dim:
            raise CatalogUpdateError("%s holds %d-d vectors; the run's product tower gives %d-d ones"
                                     % (folder.catalog_vectors, run_vectors.shape[1], retrieval.dim))
        dense[plan.run_rows] = run_vectors[plan.run_source]
    if len(plan.overlay_rows):
        if overlay.dense.shape[1] != dense.shape[1] or overlay.zero.shape[1] != zero.shape[1]:
            raise CatalogUpdateError("the stored catalog state holds vectors of another size than the run's models give")
        dense[plan.overlay_rows] = overlay.dense[plan.overlay_source]
        zero[plan.overlay_rows] = overlay.zero[plan.overlay_source]
    ids, titles = np.asarray(plan.ids, object), np.asarray(plan.titles, object)
    new_rows = plan.encode_rows
    # The run's products read their zero-shot vectors from the embedding cache; new titles are encoded (and cached).
    zero_rows = np.sort(np.concatenate([plan.run_rows, new_rows])).astype(np.int64)
    if len(new_rows):
        log.info("encoding %s added or changed products (product tower and zero-shot encoder) ...", "{:,}".format(len(new_rows)))
    # Two BERTs over the same titles: run side by side, they keep both cores busier than one after the other.
    with ThreadPoolExecutor(max_workers=2) as pool:
        towers = (pool.submit(encode_catalog, retrieval, ids[new_rows].astype(str), list(titles[new_rows].astype(str)), progress=progress)
                  if len(new_rows) else None)
        zeros = (pool.submit(catalog_text_features, list(titles[zero_rows].astype(str)), text_cfg, progress=progress, encoder=zero_encoder)
                 if len(zero_rows) else None)
        if towers is not None:
            dense[new_rows] = towers.result()
        encoded = 0
        if zeros is not None:
            zero[zero_rows], stats = zeros.result()
            encoded = stats.encoded
            log.info("zero-shot vectors: %s", stats.summary())
    return dense, zero, encoded
