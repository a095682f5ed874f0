"""File helpers shared by everything that persists state: checksums and atomic replacement."""
from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable

# scheme://rest: a location on a filesystem named by URI (gs://, s3://, hdfs://, file://), not a local path.
URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+)://(?P<rest>.*)$")


def is_uri(text: Any) -> bool:
    """Whether ``text`` names a location by URI (``scheme://...``) rather than a local path."""
    return isinstance(text, str) and URI.match(text) is not None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def replace_atomic(path: Path, write: Callable[[io.BufferedWriter], Any]) -> None:
    """Write through ``write`` into a temp file beside ``path``, fsync it, then os.replace it into place."""
    temp = path.with_name(".%s.%s.tmp" % (path.name, uuid.uuid4().hex[:8]))
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (readers see the old or the new file, never half)."""
    replace_atomic(path, lambda handle: handle.write(data))
