"""The memory that reading a dataset into this process needs, checked before any row is read.

``load_data`` reads every row of every file into Python lists and numpy arrays; a log larger than
the machine's memory would be killed by the operating system part way through, without a word.
:func:`check_memory` estimates the peak memory of that read from what is cheap to know (the size
of each CSV file, the row count and uncompressed size in each Parquet file's footer, the
``memory_usage(deep=True)`` of each DataFrame) and stops with a :class:`DataTooLarge` error when
the estimate does not fit in the memory this process can still use (the system's available
memory, capped by a cgroup v2 or v1 memory limit). ``data.memory_check: false`` skips it.

Small data costs one ``stat`` per CSV file: a quick bound that assumes the narrowest rows has to
exceed the available memory before the first 64 KiB of each CSV file are read to count its rows.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tfrec.config.loader import LoadedConfig
from tfrec.data.errors import DataError
from tfrec.data.frames import CATALOG, FRAME_NAMES, INTERACTIONS, TRAIN, VALID, _columns, covers_every_file
from tfrec.data.locations import Location, parquet_source
from tfrec.data.sources import is_parquet

CATALOG_KIND, JUDGMENTS_KIND, INTERACTIONS_KIND = "catalog", "judgments", "interactions"
KIND_OF_KEY = {CATALOG: CATALOG_KIND, TRAIN: JUDGMENTS_KIND, VALID: JUDGMENTS_KIND, INTERACTIONS: INTERACTIONS_KIND}

# Peak resident memory of `tfrec data validate` (which reads like `tfrec train`), measured with
# `/usr/bin/time -v` on Python 3.11 / pandas 3.1 / pyarrow 26, minus the ~60 MB (CSV) or ~190 MB
# (Parquet: pyarrow) of the process itself, fitted by least squares as bytes per row plus bytes per
# byte of text. Data: logs of 0.2M-2M events (3, 4 and 6 columns, 25-94 bytes a row), catalogs of
# 0.1M-1M products (70-byte titles; 580-byte title + description rows), judgments of 0.2M-2M rows
# (38- and 107-byte rows) and the Home Depot data; 35 runs, all within 14% of the fit, most within 5%.
# CSV: (bytes per row, bytes per byte of the file).
CSV_COST = {CATALOG_KIND: (256, 6.2), JUDGMENTS_KIND: (490, 6.0), INTERACTIONS_KIND: (260, 8.1)}
# Parquet: (bytes per row, bytes per uncompressed byte of the columns read), both from the footer:
# the file size says little, compression ratios vary tenfold.
PARQUET_COST = {CATALOG_KIND: (359, 3.9), JUDGMENTS_KIND: (355, 6.4), INTERACTIONS_KIND: (352, 7.9)}
# DataFrames (memory beyond the frame itself, sampled every 5 ms around load_data; 20 runs, within
# 5%): bytes per row, plus FRAME_NEW_TEXT per byte of the cells that become new Python strings
# (columns not of object dtype: their deep size plus a str header each), plus for the catalog
# FRAME_CATALOG_TEXT per byte of its text (the joined product texts). Object columns holding str
# are read without copies, so their Python object overhead does not count twice.
FRAME_ROW_COST = {CATALOG_KIND: 266, JUDGMENTS_KIND: 311, INTERACTIONS_KIND: 276}
FRAME_NEW_TEXT = 0.91
FRAME_CATALOG_TEXT = 0.37
STR_HEADER = 57  # sys.getsizeof("") plus the list slot that holds it

# Headroom on top of the fitted estimate: the fit's own error (up to 14%), run-to-run variation of
# the allocator (up to 12% between identical Parquet runs) and what else the process holds.
MARGIN = 1.25
# The quick stat-only bound counts a CSV row per this many bytes (few logs have shorter rows:
# "123,P000456,1700000000" is 22); only a bound above the available memory reads CSV heads.
MIN_ROW_BYTES = 16
SAMPLE_BYTES = 64 * 1024
# cgroup "no limit" values (v1 writes the largest page-aligned int64).
_UNLIMITED = 1 << 60


class DataTooLarge(DataError):
    """Reading the data into memory would need more memory than this process can use."""


@dataclass(frozen=True)
class Part:
    """One file or DataFrame of a dataset and the memory reading it is estimated to take."""

    name: str  # a file's path, or a DataFrame's name ("catalog DataFrame")
    kind: str  # catalog, judgments or interactions
    size: int  # bytes on disk (0 for a DataFrame: it is in memory already)
    rows: int  # counted (Parquet, DataFrames) or estimated (CSV)
    need: int  # bytes of memory
    rows_estimated: bool = False


@dataclass(frozen=True)
class Estimate:
    """The memory a dataset needs, part by part; ``total`` includes the safety margin."""

    parts: tuple[Part, ...]

    @property
    def fitted(self) -> int:
        """Bytes the measured factors give, before the margin."""
        return sum(p.need for p in self.parts)

    @property
    def total(self) -> int:
        """Bytes to have available: the fitted estimate times MARGIN."""
        return int(self.fitted * MARGIN)


@dataclass(frozen=True)
class Available:
    """Memory this process can still use, and where the number comes from."""

    bytes: int
    source: str


def estimate_memory(loaded: LoadedConfig, files: Mapping[str, Location], frames: Optional[Mapping[str, Any]] = None, *,
                    sample: bool = True) -> Estimate:
    """Estimate the memory reading ``files`` (config key -> path) and ``frames`` (config key -> DataFrame) takes.

    ``sample=False`` reads no CSV text: rows count as one per MIN_ROW_BYTES, an upper bound.
    Keys of files that are not user tables (the built-in fixed-format datasets) are not counted.
    """
    return Estimate((*frame_parts(loaded, frames or {}), *file_parts(loaded, files, frames or {}, sample=sample)))


def frame_parts(loaded: LoadedConfig, frames: Mapping[str, Any]) -> list[Part]:
    """The parts of the DataFrames given in place of files, counted by their memory usage."""
    return [_frame_part(FRAME_NAMES[key], KIND_OF_KEY[key], frame, _columns(loaded, key))
            for key, frame in frames.items() if key in KIND_OF_KEY]


def file_parts(loaded: LoadedConfig, files: Mapping[str, Location], frames: Mapping[str, Any], *, sample: bool) -> list[Part]:
    """The parts of the files not replaced by a DataFrame (missing or unreadable ones are the readers' to report)."""
    parts = []
    for key, path in files.items():
        if key in frames or key not in KIND_OF_KEY or not path.is_file():
            continue
        kind = KIND_OF_KEY[key]
        part = _parquet_part(path, kind, _columns(loaded, key)) if is_parquet(path) else _csv_part(path, kind, sample=sample)
        if part is not None:
            parts.append(part)
    return parts


def _csv_part(path: Location, kind: str, *, sample: bool) -> Part:
    size = path.stat().st_size
    rows = csv_rows(path, size) if sample else size // MIN_ROW_BYTES
    per_row, per_byte = CSV_COST[kind]
    return Part(str(path), kind, size, rows, int(rows * per_row + size * per_byte), rows_estimated=True)


def csv_rows(path: Location, size: int) -> int:
    """The rows of a CSV file estimated from the lines in its first SAMPLE_BYTES (exact for smaller files)."""
    with path.open("rb") as handle:
        head = handle.read(SAMPLE_BYTES)
    header_end = head.find(b"\n") + 1
    if header_end == 0:  # the header alone, or a header longer than the sample: assume the narrowest rows
        return 0 if size <= len(head) else size // MIN_ROW_BYTES
    body = head[header_end:]
    if len(head) >= size:
        return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
    lines = body.count(b"\n")
    if lines == 0:
        return max(1, (size - header_end) // max(len(body), 1))
    # Average over whole lines only: the cut at SAMPLE_BYTES ends in the middle of one.
    whole = body[: body.rfind(b"\n") + 1]
    return max(1, round((size - header_end) * lines / len(whole)))


def _parquet_part(path: Location, kind: str, columns: list[str]) -> Optional[Part]:
    # lazy: only Parquet users need pyarrow, and reading their files imports it anyway
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(parquet_source(path))
        meta, top = parquet.metadata, parquet.schema_arrow.names
    except (pa.ArrowException, OSError):
        return None  # the reader names the broken file
    wanted = set(columns)
    # A flat table has one leaf per column (names may hold dots); a nested column's leaves share its top name.
    names = top if len(top) == meta.num_columns else [meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)]
    text = sum(meta.row_group(g).column(c).total_uncompressed_size
               for g in range(meta.num_row_groups) for c in range(meta.num_columns) if names[c] in wanted)
    per_row, per_byte = PARQUET_COST[kind]
    return Part(str(path), kind, path.stat().st_size, meta.num_rows, int(meta.num_rows * per_row + text * per_byte))


def _frame_part(name: str, kind: str, frame: Any, columns: list[str]) -> Part:
    rows = len(frame)
    names = [str(c) for c in frame.columns]
    new_text = text = 0
    for column in dict.fromkeys(columns):
        if names.count(column) != 1:
            continue  # missing or doubled: the reader names it
        series = frame.iloc[:, names.index(column)]
        deep = int(series.memory_usage(deep=True, index=False))
        if series.dtype == object:
            text += max(0, deep - STR_HEADER * rows)  # the reader keeps these str objects as they are
        else:
            new_text += deep + STR_HEADER * rows  # every cell becomes a new str
            text += deep
    need = rows * FRAME_ROW_COST[kind] + new_text * FRAME_NEW_TEXT
    if kind == CATALOG_KIND:
        need += text * FRAME_CATALOG_TEXT
    return Part(name, kind, 0, rows, int(need))


def available_memory(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> Optional[Available]:
    """What this process can still allocate: the system's available memory, capped by a cgroup limit; None if unknown."""
    found = []
    system = _system_available()
    if system is not None:
        found.append(Available(system, "the system's available memory"))
    room = cgroup_room(cgroup_root, proc_cgroup)
    if room is not None:
        found.append(room)
    return min(found, key=lambda a: a.bytes) if found else None


def _system_available() -> Optional[int]:
    try:
        import psutil  # optional: tfrec does not depend on it; /proc/meminfo says the same on Linux
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_room(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> Optional[Available]:
    """Memory left under this process's cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); None without a limit.

    Used memory leaves out the inactive page cache, which the kernel reclaims before it kills.
    """
    rooms = []
    for folder in _cgroup_folders(root, proc_cgroup):
        v2 = _read_int(folder / "memory.max")
        if v2 is not None:
            used = _read_int(folder / "memory.current")
            stat_key = "inactive_file"
            limit = v2
        else:
            limit = _read_int(folder / "memory.limit_in_bytes")
            used = _read_int(folder / "memory.usage_in_bytes")
            stat_key = "total_inactive_file"
        if limit is None or limit >= _UNLIMITED or used is None:
            continue
        used -= _stat(folder / "memory.stat", stat_key)
        rooms.append(Available(max(0, limit - used), "the cgroup memory limit of %s less %s in use" % (human(limit), human(used))))
    return min(rooms, key=lambda a: a.bytes) if rooms else None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The cgroup folders whose limits bind this process: its own and every parent, v2 and v1."""
    paths = {}
    try:
        for line in proc_cgroup.read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            if number == "0" and controllers == "":
                paths["v2"] = root, path
            elif "memory" in controllers.split(","):
                paths["v1"] = root / "memory", path
    except (OSError, ValueError):
        pass
    folders = []
    for base, path in paths.values():
        # In a container the path names the host's tree while base is the container's own cgroup:
        # walk up from the deepest folder that exists here.
        parts = [p for p in path.split("/") if p]
        while parts and not (base.joinpath(*parts)).is_dir():
            parts.pop(0)
        for depth in range(len(parts), -1, -1):
            folders.append(base.joinpath(*parts[:depth]))
    return list(dict.fromkeys(folders))


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def check_memory(loaded: LoadedConfig, files: Mapping[str, Location], frames: Optional[Mapping[str, Any]] = None, *,
                 available: Optional[Available] = None) -> Optional[Estimate]:
    """Raise DataTooLarge when reading the data needs more memory than ``available`` (default: :func:`available_memory`).

    Returns the estimate it judged by, or None when ``data.memory_check`` is false or the available
    memory is unknown.
    """
    if not loaded.config.data.memory_check:
        return None
    room = available if available is not None else available_memory()
    if room is None:
        return None
    frames = frames or {}
    in_memory = frame_parts(loaded, frames)
    quick = Estimate((*in_memory, *file_parts(loaded, files, frames, sample=False)))
    if quick.total <= room.bytes:
        return quick
    estimate = Estimate((*in_memory, *file_parts(loaded, files, frames, sample=True)))
    if estimate.total > room.bytes:
        where = "DataFrames" if covers_every_file(frames) else str(loaded.config.data.dir or ".")
        raise DataTooLarge(where, too_large_message(loaded, estimate, room))
    return estimate


def too_large_message(loaded: LoadedConfig, estimate: Estimate, room: Available) -> str:
    """What does not fit, what makes it up and the way out, as one line."""
    config = shlex.quote(loaded.path) if loaded.path else "CONFIG"
    parts = sorted(estimate.parts, key=lambda p: -p.need)
    made_of = ", ".join(
        "%s (%s%s rows) ~%s" % (_short(p.name), "%s, " % human(p.size) if p.size else "", _count(p.rows, p.rows_estimated), human(p.need))
        for p in parts)
    return ("reading this data into memory needs about %s (%s estimated, plus %d%% margin), more than the %s this process "
            "can use (%s); it is made up of %s. Prepare it once with `tfrec data prepare --config %s --out DIR`, then "
            "train from it with `tfrec train --config %s --set data.prepared=DIR`; or, if you know it fits, set "
            "data.memory_check: false (--set data.memory_check=false)"
            % (human(estimate.total), human(estimate.fitted), round((MARGIN - 1) * 100), human(room.bytes), room.source,
               made_of, config, config))


def _short(name: str) -> str:
    return os.path.basename(name) if os.sep in name else name


def _count(rows: int, estimated: bool) -> str:
    text = "%.1fM" % (rows / 1e6) if rows >= 1e6 else ("%.0fk" % (rows / 1e3) if rows >= 1e4 else str(rows))
    return "~" + text if estimated else text


def human(n: int) -> str:
    """Bytes as a person reads them: 3.1 GB, 640 MB, 12 kB (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return ("%.1f %s" if abs(n) < 10 * size else "%.0f %s") % (n / size, unit)
    return "%d B" % n


__all__ = ["Available", "DataTooLarge", "Estimate", "Part", "available_memory", "cgroup_room", "check_memory", "csv_rows",
           "estimate_memory", "file_parts", "frame_parts", "human", "too_large_message"]
