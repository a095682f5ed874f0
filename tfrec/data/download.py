"""Fetch the public datasets from their official sources, checksummed, into ``<dest>/<name>/``.

``download`` installs a dataset that can be fetched without a login (MovieLens 100K); the others
raise :class:`DownloadUnavailable` with step-by-step instructions. ``prepare_homedepot`` turns
Kaggle's Home Depot ``train.csv`` into the layout the loaders read. Every install is written to a
temporary folder inside ``dest`` and renamed into place, so a half-finished one never looks
complete. This module must not import TensorFlow: the CLI imports it to answer quickly.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Literal

from tfrec.data.errors import DataError
from tfrec.log import Progress
from tfrec.version import __version__

ArchiveKind = Literal["zip-flat", "manual"]

TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20
USER_AGENT = f"tfrec/{__version__} (dataset download; Python urllib)"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A dataset could not be fetched or installed."""


class ChecksumError(DownloadError):
    """The fetched file's size or SHA-256 differs from the expected one."""


class DownloadUnavailable(DownloadError):
    """The dataset cannot be fetched automatically; the message says how to get it."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the extraction folder."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and how it is installed under ``<dest>/<name>/``."""

    name: str
    url: str | None
    sha256: str | None
    size: int | None
    kind: ArchiveKind
    instructions: str


_HOMEDEPOT_INSTRUCTIONS = """\
Home Depot Product Search Relevance is a Kaggle competition dataset: its terms need a Kaggle \
login, so tfrec cannot download it for you.
  1. Sign in at https://www.kaggle.com and accept the competition rules at
     https://www.kaggle.com/competitions/home-depot-product-search-relevance/rules
  2. Set up the Kaggle command line tool and its API token (https://www.kaggle.com/docs/api).
  3. kaggle competitions download -c home-depot-product-search-relevance
     (this saves home-depot-product-search-relevance.zip, which holds train.csv.zip)
  4. tfrec data prepare homedepot --raw <path to train.csv or train.csv.zip> --dest {dest}
     This writes {dest}/homedepot/ (products.csv, train.csv, valid.csv, test.csv)."""

_AMAZON_SCIENTIFIC_INSTRUCTIONS = """\
The Amazon "Industrial and Scientific" reviews in the UniSRec preprocessing are shared through \
Google Drive, which tfrec cannot download automatically.
  1. Open https://github.com/RUCAIBox/UniSRec and follow the Google Drive link in its README
     (section "Download Datasets and Pre-trained Model"):
     https://drive.google.com/drive/folders/1Uik0fMk4oquV_bS9lXTZuExAYbIDkEMW
     (the README also gives a Baidu mirror).
  2. Download and unzip the processed downstream datasets; the files are in downstream/Scientific/.
  3. Copy these files into {dest}/amazon-scientific/:
     Scientific.text, Scientific.item2index, Scientific.user2index,
     Scientific.train.inter, Scientific.valid.inter, Scientific.test.inter
  The data is for research use; cite UniSRec (Hou et al., KDD 2022) and the Amazon review data."""

SOURCES: dict[str, DatasetSource] = {
    "movielens-100k": DatasetSource(
        name="movielens-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        # Size and SHA-256 as listed in TensorFlow Datasets'
        # tensorflow_datasets/url_checksums/movielens.txt ("url size sha256" lines); several
        # independent projects pin the same digest. GroupLens itself publishes only an MD5
        # (0e33842e24a9c977be4e0107933c0723, ml-100k.zip.md5).
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        size=4_924_029,
        kind="zip-flat",
        instructions="GroupLens MovieLens 100K: research use only, no redistribution "
        "(see the README inside the archive).",
    ),
    "homedepot": DatasetSource(
        name="homedepot",
        url=None,
        sha256=None,
        size=None,
        kind="manual",
        instructions=_HOMEDEPOT_INSTRUCTIONS,
    ),
    "amazon-scientific": DatasetSource(
        name="amazon-scientific",
        url=None,
        sha256=None,
        size=None,
        kind="manual",
        instructions=_AMAZON_SCIENTIFIC_INSTRUCTIONS,
    ),
}


def available() -> list[str]:
    """Return the names of the datasets ``download`` knows, sorted."""
    return sorted(SOURCES)


def download(
    name: str,
    dest: str | Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Fetch, verify and install dataset ``name`` into ``<dest>/<name>/`` and return that folder."""
    source = _source(name)
    dest = Path(dest)
    if source.kind == "manual" or source.url is None:
        raise DownloadUnavailable(
            f"{name} cannot be downloaded automatically.\n"
            + source.instructions.format(dest=dest)
        )
    target = dest / name
    if target.exists() and not force:
        return target

    fetch_url = url if url is not None else source.url
    expected_sha = _expected_sha256(source, sha256)
    # The registry size describes the official file; a different digest means a different file.
    expected_size = source.size if expected_sha == source.sha256 else None

    dest.mkdir(parents=True, exist_ok=True)
    fd, archive_name = tempfile.mkstemp(dir=dest, prefix=f".{name}-", suffix=".download")
    os.close(fd)
    archive = Path(archive_name)
    staging: Path | None = None
    try:
        size, actual_sha = _fetch(fetch_url, archive, expected_size, progress, desc=name)
        _verify(fetch_url, expected_size, size, expected_sha, actual_sha)
        staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{name}-", suffix=".partial"))
        _extract_zip_flat(archive, staging, fetch_url)
        try:
            _install(staging, target, replace=force)
        except FileExistsError:
            pass  # another process installed it meanwhile; its copy passed the same checks
    finally:
        archive.unlink(missing_ok=True)
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _source(name: str) -> DatasetSource:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(available())}")
    return SOURCES[name]


def _expected_sha256(source: DatasetSource, override: str | None) -> str:
    if override is None:
        if source.sha256 is None:
            # Installing unverified bytes would defeat the point of a reproducible dataset.
            raise DownloadError(
                f"no SHA-256 is known for {source.name}; refusing to install it unverified. "
                "Pass the expected digest explicitly (sha256=...) if you trust the file."
            )
        return source.sha256
    digest = override.strip().lower()
    if not _SHA256_RE.match(digest):
        raise ValueError(f"sha256 must be 64 hexadecimal characters, got {override!r}")
    return digest


def _fetch(
    url: str, path: Path, expected_size: int | None, progress: bool, desc: str
) -> tuple[int, str]:
    """Stream ``url`` into ``path``; return its size and SHA-256 hex digest."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"could not download {url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"could not download {url}: {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"could not download {url}: {err}") from err

    digest = hashlib.sha256()
    size = 0
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else expected_size
    # KiB steps: off a terminal the progress line reads "movielens-100k: 2048/4809 KiB (42%), 512 KiB/s, ETA 5 s".
    with response, open(path, "wb") as out, Progress(
        desc, total // 1024 if total else None, logger=log, unit="KiB", show=progress
    ) as bar:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"download of {url} failed after {size} bytes: {err}"
                ) from err
            if not chunk:
                break
            size += len(chunk)
            # Stop early rather than fill the disk when a server sends more than the known size.
            if expected_size is not None and size > expected_size:
                raise ChecksumError(
                    f"{url}: received more than the expected {expected_size} bytes; "
                    "the download was deleted"
                )
            out.write(chunk)
            digest.update(chunk)
            bar.update(size // 1024 - bar.done)
    return size, digest.hexdigest()


def _verify(
    url: str, expected_size: int | None, size: int, expected_sha: str, actual_sha: str
) -> None:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or url
    if expected_size is not None and size != expected_size:
        raise ChecksumError(
            f"{name} (from {url}): size mismatch: expected {expected_size} bytes, got {size}; "
            "the download was deleted"
        )
    if actual_sha != expected_sha:
        raise ChecksumError(
            f"{name} (from {url}): SHA-256 mismatch: expected {expected_sha}, got {actual_sha}; "
            "the download was deleted. Retry, or pass sha256= if the file changed upstream "
            "and you trust the new one."
        )


def _extract_zip_flat(archive: Path, folder: Path, url: str) -> None:
    """Extract every plain file of ``archive`` directly into ``folder``, dropping its folders."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            # Check every member before writing anything, so a bad archive leaves nothing behind.
            names: dict[str, str] = {}
            for info in members:
                _check_member(info, url)
                flat = PurePosixPath(info.filename).name
                if flat in names:
                    raise UnsafeArchiveError(
                        f"{url}: members {names[flat]!r} and {info.filename!r} would both be "
                        f"installed as {flat!r}; expected unique file names"
                    )
                names[flat] = info.filename
            for flat, member in names.items():
                with zf.open(member) as src, open(folder / flat, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{url} is not a valid zip archive: {err}") from err


def _check_member(info: zipfile.ZipInfo, url: str) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise UnsafeArchiveError(
            f"{url}: refusing archive member {name!r}: expected a relative path without '..'"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchiveError(
            f"{url}: refusing archive member {name!r}: it is a symbolic link, expected a plain file"
        )


def _install(staging: Path, target: Path, *, replace: bool) -> None:
    """Rename finished ``staging`` to ``target``; with ``replace``, swap out an old one."""
    old: Path | None = None
    if target.exists():
        if not replace:
            raise FileExistsError(
                f"{target} already exists; remove it or pass force=True to replace it"
            )
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-", suffix=".old"))
        os.rename(target, old / target.name)
    try:
        os.rename(staging, target)
    except OSError:
        if old is not None:
            os.rename(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --- Home Depot (Kaggle) -------------------------------------------------------------------

HOMEDEPOT_RAW_COLUMNS = ("product_uid", "product_title", "search_term", "relevance")
HOMEDEPOT_SPLITS = ("train", "valid", "test")
_RELEVANCE_RANGE = (1.0, 3.0)


def normalize_query(query: str) -> str:
    """Return ``query`` lowercased with runs of whitespace collapsed and ends stripped."""
    return " ".join(query.lower().split())


def query_split(
    query: str, *, valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: str = "tfrec"
) -> str:
    """Return the split ("train", "valid" or "test") a query belongs to, by a stable hash."""
    key = (seed + normalize_query(query)).encode("utf-8")
    position = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + valid_fraction:
        return "valid"
    return "train"


def prepare_homedepot(
    raw: str | Path,
    dest: str | Path,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: str = "tfrec",
    force: bool = False,
) -> Path:
    """Convert Kaggle's Home Depot train.csv (or a zip holding it) into ``<dest>/homedepot/``."""
    if not (0.0 <= valid_fraction and 0.0 <= test_fraction
            and valid_fraction + test_fraction < 1.0):
        raise ValueError(
            "valid_fraction and test_fraction must be >= 0 with a sum below 1, got "
            f"{valid_fraction} and {test_fraction}"
        )
    raw = Path(raw)
    dest = Path(dest)
    target = dest / "homedepot"
    if target.exists() and not force:
        raise FileExistsError(
            f"{target} already exists; remove it or pass force=True to replace it"
        )

    label, text = _read_raw_text(raw)
    products, splits = _parse_homedepot(label, text, valid_fraction, test_fraction, seed)

    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".homedepot-", suffix=".partial"))
    try:
        _write_csv(staging / "products.csv", ("product_id", "title"), products.items())
        for split in HOMEDEPOT_SPLITS:
            _write_csv(
                staging / f"{split}.csv", ("query", "product_id", "relevance"), splits[split]
            )
        _install(staging, target, replace=force)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _read_raw_text(raw: Path) -> tuple[str, str]:
    """Return a label naming the CSV (for errors) and its decoded text."""
    if not raw.is_file():
        raise FileNotFoundError(
            f"{raw}: no such file; expected Kaggle's train.csv or train.csv.zip"
        )
    if zipfile.is_zipfile(raw):
        label, data = _train_csv_from_zip(raw)
    else:
        label, data = str(raw), raw.read_bytes()
    try:
        return label, data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Kaggle's file is Latin-1 (it holds bytes such as 0x90 that cp1252 leaves undefined).
        return label, data.decode("latin-1")


def _train_csv_from_zip(path: Path) -> tuple[str, bytes]:
    # Accept train.csv.zip, and also the whole competition zip, which nests train.csv.zip.
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for name in names:
            if PurePosixPath(name).name == "train.csv":
                return f"{path}!{name}", zf.read(name)
        for name in names:
            if PurePosixPath(name).name == "train.csv.zip":
                with zipfile.ZipFile(io.BytesIO(zf.read(name))) as inner:
                    for inner_name in inner.namelist():
                        if PurePosixPath(inner_name).name == "train.csv":
                            return f"{path}!{name}!{inner_name}", inner.read(inner_name)
    raise DataError(str(path), f"no train.csv inside the zip; found {names}")


def _parse_homedepot(
    label: str, text: str, valid_fraction: float, test_fraction: float, seed: str
) -> tuple[dict[str, str], dict[str, list[tuple[str, str, str]]]]:
    """Return products (id -> first title) and the judgments of each split, in file order."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [column.strip() for column in next(reader, [])]
        index = _raw_column_index(label, header)
        products: dict[str, str] = {}
        splits: dict[str, list[tuple[str, str, str]]] = {split: [] for split in HOMEDEPOT_SPLITS}
        for row in reader:
            line = reader.line_num
            if not row:
                continue  # a blank line holds no judgment
            if len(row) != len(header):
                raise DataError(
                    label, f"{len(row)} fields, expected {len(header)} as in the header", line=line
                )
            product_id = row[index["product_uid"]].strip()
            query = row[index["search_term"]]
            relevance = row[index["relevance"]].strip()
            if not product_id:
                raise DataError(label, "empty, expected a product id", line=line,
                                field_name="product_uid")
            if not query.strip():
                raise DataError(label, "empty, expected a query", line=line,
                                field_name="search_term")
            _check_relevance(label, line, relevance)
            products.setdefault(product_id, row[index["product_title"]])
            split = query_split(
                query, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed
            )
            splits[split].append((query, product_id, relevance))
    except csv.Error as err:
        raise DataError(label, f"not readable as CSV: {err}", line=reader.line_num) from err
    return products, splits


def _raw_column_index(label: str, header: list[str]) -> dict[str, int]:
    expected = ", ".join(HOMEDEPOT_RAW_COLUMNS)
    if not header:
        raise DataError(label, f"the file is empty; expected a header with {expected}", line=1)
    for column in HOMEDEPOT_RAW_COLUMNS:
        if column not in header:
            raise DataError(
                label,
                f"missing column {column!r}; expected the columns {expected} "
                f"(Kaggle's train.csv), found {', '.join(header)}",
                line=1,
                field_name=column,
            )
    return {column: header.index(column) for column in HOMEDEPOT_RAW_COLUMNS}


def _check_relevance(label: str, line: int, value: str) -> None:
    low, high = _RELEVANCE_RANGE
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        raise DataError(
            label,
            f"{value!r} is not a number in [{low:g}, {high:g}] (the mean of the raters' scores)",
            line=line,
            field_name="relevance",
        )


def _write_csv(path: Path, header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def describe_split(folder: str | Path) -> dict[str, dict[str, int]]:
    """Count products, and each split's rows and distinct normalized queries, in a folder."""
    folder = Path(folder)
    summary: dict[str, dict[str, int]] = {}
    with open(folder / "products.csv", encoding="utf-8", newline="") as handle:
        summary["products"] = {"rows": sum(1 for _ in csv.DictReader(handle))}
    for split in HOMEDEPOT_SPLITS:
        path = folder / f"{split}.csv"
        if not path.exists():
            continue
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        queries = {normalize_query(row["query"]) for row in rows}
        summary[split] = {"rows": len(rows), "queries": len(queries)}
    return summary
