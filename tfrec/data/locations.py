"""Where a data file is: a local path, or a URI on a remote filesystem (``gs://``, ``s3://``, ``hdfs://``, ``file://``).

Local files stay :class:`pathlib.Path`. A URI becomes a :class:`RemotePath`, which offers the
part of the ``Path`` interface the readers use (join, ``is_file``, ``stat``, ``read_bytes``,
``open``, ``suffix``, ``name``) over pyarrow's filesystems, so the catalog, judgments and log
headers are read and validated by the same code wherever they live. pyarrow resolves the
filesystem from the scheme and its usual credentials (``AWS_*`` variables or instance roles for
S3, application-default credentials for Google Cloud Storage, ``HADOOP_HOME`` for HDFS);
Hadoop's ``s3a://`` and ``s3n://`` names are read as ``s3://``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union
from urllib.parse import quote

from tfrec import files
from tfrec.data.errors import DataError

# Hadoop's names for S3 (what Spark clusters use) are the same objects as pyarrow's s3://.
_ARROW_SCHEME = {"s3a": "s3", "s3n": "s3"}
_WILDCARDS = "*?["


def is_uri(text: Union[str, Path, "RemotePath"]) -> bool:
    """Whether ``text`` names a location by URI (``scheme://...``) rather than a local path."""
    return isinstance(text, RemotePath) or files.is_uri(text)


@dataclass(frozen=True)
class FileStat:
    """The two facts of a file a rerun compares: its size and modification time (None where a store has none)."""

    st_size: int
    st_mtime_ns: Optional[int]


class RemotePath:
    """A file or folder named by URI, read through pyarrow.fs (the subset of ``pathlib.Path`` the readers use)."""

    def __init__(self, uri: str) -> None:
        match = files.URI.match(uri)
        if match is None:
            raise ValueError("not a URI: %r" % uri)
        self.scheme = match.group("scheme").lower()
        rest = match.group("rest")
        self.uri = "%s://%s" % (self.scheme, rest.rstrip("/") if rest.strip("/") else rest)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return "RemotePath(%r)" % self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other: "RemotePath") -> bool:
        return self.uri < other.uri

    def __truediv__(self, name: Union[str, Path]) -> "RemotePath":
        text = str(name)
        if is_uri(text):
            return RemotePath(text)
        return RemotePath(self.uri.rstrip("/") + "/" + text.lstrip("/"))

    @property
    def name(self) -> str:
        """The last part of the path."""
        return PurePosixPath(self._rest()).name

    @property
    def suffix(self) -> str:
        """The file extension, with its dot."""
        return PurePosixPath(self._rest()).suffix

    @property
    def parent(self) -> "RemotePath":
        """The folder holding this location."""
        return RemotePath("%s://%s" % (self.scheme, str(PurePosixPath(self._rest()).parent)))

    def resolve(self) -> "RemotePath":
        """A URI is already absolute."""
        return self

    def expanduser(self) -> "RemotePath":
        """A URI has no home folder to expand."""
        return self

    def as_uri(self) -> str:
        """The URI, as Spark names the files it reads (local ``file://`` paths percent-encoded like Path.as_uri)."""
        if self.scheme == "file":
            return Path(self._rest()).as_uri()
        return "%s://%s" % (self.scheme, quote(self._rest(), safe="/:@!$&'()*+,;=~"))

    def is_file(self) -> bool:
        """Whether a file is at this location (False when nothing is; an unreachable store raises DataError)."""
        return self._info().type.name == "File"

    def is_dir(self) -> bool:
        """Whether a folder (or, on an object store, a prefix holding objects) is at this location."""
        return self._info().type.name == "Directory"

    def stat(self) -> FileStat:
        """Size and modification time of the file."""
        info = self._info()
        if info.type.name != "File":
            raise DataError(self.uri, "file not found")
        return FileStat(int(info.size), info.mtime_ns)

    def read_bytes(self) -> bytes:
        """The whole file."""
        with self.open() as handle:
            return handle.read()

    def open(self, mode: str = "rb") -> Any:
        """A seekable binary reader (pyarrow NativeFile, a context manager with read/seek)."""
        if mode != "rb":
            raise ValueError("remote data files are read only (mode 'rb'), got %r" % mode)
        fs, path = self._filesystem()
        try:
            return fs.open_input_file(path)
        except FileNotFoundError:
            raise DataError(self.uri, "file not found") from None
        except OSError as err:
            raise DataError(self.uri, "could not be opened (%s)" % err) from None

    def _rest(self) -> str:
        return self.uri.split("://", 1)[1]

    def _filesystem(self) -> tuple[Any, str]:
        # lazy: only users with remote data need pyarrow's filesystems
        import pyarrow.fs as pafs

        arrow_uri = "%s://%s" % (_ARROW_SCHEME.get(self.scheme, self.scheme), self._rest())
        try:
            return pafs.FileSystem.from_uri(arrow_uri)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError or ValueError for unknown or unreachable stores
            raise DataError(self.uri, "cannot read this location: %s (pyarrow.fs knows file://, s3://, gs://, hdfs:// "
                                      "and abfs://; check the scheme and the store's credentials)" % err) from None

    def _info(self) -> Any:
        fs, path = self._filesystem()
        try:
            return fs.get_file_info(path)
        except OSError as err:
            raise DataError(self.uri, "could not be reached (%s)" % err) from None


Location = Union[Path, RemotePath]


def location(text: Union[str, Path, RemotePath]) -> Location:
    """A local Path or a RemotePath, by whether ``text`` is a URI."""
    if isinstance(text, RemotePath):
        return text
    return RemotePath(text) if is_uri(text) else Path(text)


def locate(folder: Union[str, Path, RemotePath, None], name: Union[str, Path]) -> Location:
    """``name`` under ``folder`` (a URI ``name`` stands on its own; a URI folder keeps its scheme)."""
    if is_uri(str(name)):
        return RemotePath(str(name))
    base = location(folder if folder not in (None, "") else ".")
    return base / name


def expand(pattern: Location) -> list[Location]:
    """The files a path names: the file itself, or every file a glob pattern matches, sorted."""
    if not isinstance(pattern, RemotePath):
        import glob

        text = str(pattern)
        if any(c in text for c in _WILDCARDS):
            return sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        return [pattern] if pattern.is_file() else []
    rest = pattern._rest()
    parts = rest.split("/")
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in _WILDCARDS)), None)
    if fixed is None:
        return [pattern] if pattern.is_file() else []
    import pyarrow.fs as pafs

    base = RemotePath("%s://%s" % (pattern.scheme, "/".join(parts[:fixed])))
    fs, base_path = base._filesystem()
    try:
        infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=len(parts) - fixed > 1, allow_not_found=True))
    except OSError as err:
        raise DataError(str(base), "could not be listed (%s)" % err) from None
    prefix = "/".join(parts[:fixed])
    found = []
    for info in infos:
        if info.type.name != "File":
            continue
        relative = info.path[len(base_path):].lstrip("/").split("/")
        # A wildcard matches within one path part, as the shell's and Python's glob do.
        if len(relative) == len(parts) - fixed and all(fnmatch.fnmatchcase(r, p) for r, p in zip(relative, parts[fixed:])):
            found.append(RemotePath("%s://%s/%s" % (pattern.scheme, prefix, "/".join(relative))))
    return sorted(found)


def first_line(path: Location, limit: int = 1 << 20) -> bytes:
    """The first line of a file (without its line break), reading at most ``limit`` bytes."""
    with path.open("rb") as handle:
        head = b""
        while len(head) < limit:
            chunk = handle.read(1 << 16)
            if not chunk:
                break
            head += chunk
            if b"\n" in chunk:
                break
    return head.split(b"\n", 1)[0].rstrip(b"\r")[:limit]


def parquet_source(path: Location) -> Any:
    """What pyarrow.parquet reads: the local path, or an open remote file."""
    return path if isinstance(path, Path) else path.open()
