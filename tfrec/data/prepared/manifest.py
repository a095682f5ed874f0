"""The manifest of a prepared dataset: what the shards hold, how they were made, and how to check them.

``manifest.json`` is written last, after every shard is complete, so a folder without one is not
a prepared dataset. It records the schema, the example counts per split, each shard's size and
SHA-256, the input files and the hash of the config's ``data`` section, so a reader can tell a
truncated shard, a manifest that does not match its shards, or a config that no longer matches
the data, and say which.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional

from tfrec.data.errors import DataError
from tfrec.data.locations import Location
from tfrec.files import file_sha256, is_uri

FORMAT = "tfrec-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# data.* keys that do not change what prepare writes: how prepared data is read, and the slicing and
# period keys, which apply to files read in memory (prepare and training from shards refuse them).
_NOT_HASHED = ("prepared", "shuffle_buffer", "memory_check", "max_train_queries", "max_valid_queries", "max_products", "max_users", "periods", "period")

# Record schemas, by split kind. Sequences: one record per user (or per given example), holding
# examples "history items[:t] -> target items[t]" for t in [first, last).
SEQUENCE_FEATURES = {"user": "bytes", "items": "int64 list", "first": "int64", "last": "int64"}
JUDGMENT_FEATURES = {"query": "bytes", "product": "int64 (catalog row)", "label": "float"}
# Search training judgments, one record per query: its judged catalog rows and labels, and each one's line
# position in the judgments as read (to give back the file order).
QUERY_FEATURES = {"query": "bytes", "products": "int64 list (catalog rows)", "labels": "float list", "positions": "int64 list"}
CATALOG_FEATURES = {"row": "int64", "product_id": "bytes", "<text column>": "bytes", "<numeric column>": "float",
                    "<categorical column>": "bytes"}


def hashed_values(data_config: Any) -> dict[str, Any]:
    """The ``data`` config values that decide what prepare writes (what the manifest keeps and hashes)."""
    values = asdict(data_config) if not isinstance(data_config, Mapping) else dict(data_config)
    return {k: v for k, v in values.items() if k not in _NOT_HASHED}


def data_config_hash(data_config: Any) -> str:
    """SHA-256 of :func:`hashed_values` of a ``data`` config section."""
    return hashlib.sha256(json.dumps(hashed_values(data_config), sort_keys=True, default=str).encode("utf-8")).hexdigest()


def input_fingerprint(paths: Mapping[str, Location]) -> list[dict[str, Any]]:
    """Name, size and modification time of each input file, local or remote (what a rerun compares to decide it has nothing to do)."""
    out = []
    for key, path in sorted(paths.items()):
        stat = path.stat()
        out.append({"key": key, "path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return out


def local_folder(folder: Any) -> Path:
    """A prepared folder as a local Path; a URI is refused (shards are written and read through a mounted path)."""
    if is_uri(str(folder)):
        raise DataError(str(folder), "a prepared dataset lives in a folder on a local or mounted filesystem (NFS, or a bucket "
                                     "mounted with gcsfuse or mountpoint-s3, under the same path on every machine); "
                                     "input files may be URIs, the prepared folder may not")
    return Path(folder)


def query_split_of(config: Any) -> dict[str, Any]:
    """The config keys that choose the ranker's held-out search queries (a prepared search dataset is split by them)."""
    return {"ranking.holdout_fraction": config.ranking.holdout_fraction, "run.seed": config.run.seed}


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``folder/manifest.json`` (the last file of a prepared dataset)."""
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a prepared dataset folder; a clear DataError when it is missing or not one of ours."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(str(folder), "not a prepared dataset: %s is missing (an interrupted `tfrec data prepare` leaves "
                                     "none; run it again)" % MANIFEST)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(str(path), "not valid JSON (%s)" % err) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(str(path), "not a tfrec prepared-dataset manifest (no \"format\": %r)" % FORMAT)
    if manifest.get("version") != FORMAT_VERSION:
        raise DataError(str(path), "prepared-dataset format version %r; this tfrec reads version %d (prepare it again)"
                        % (manifest.get("version"), FORMAT_VERSION))
    return manifest


def shard_entries(manifest: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(part, shard entry) for every shard the manifest lists: the catalog's and each split's."""
    out = [("catalog", s) for s in manifest["catalog"]["shards"]]
    out += [("text_vectors", s) for s in (manifest.get("text_vectors") or {}).get("shards", [])]
    for split, entry in manifest["splits"].items():
        out += [(split, s) for s in entry["shards"]]
    return out


def verify_shards(folder: Path, manifest: Mapping[str, Any], checksums: bool = True) -> None:
    """Check that every shard the manifest lists exists with its size (and SHA-256); DataError naming the first that differs."""
    folder = Path(folder)
    for part, shard in shard_entries(manifest):
        path = folder / part / shard["file"]
        if not path.is_file():
            raise DataError(str(path), "missing: the manifest lists this shard (the folder is incomplete; prepare it again)")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise DataError(str(path), "%d bytes, but the manifest says %d: the shard is truncated or was replaced "
                                       "(prepare the dataset again)" % (size, shard["bytes"]))
        if checksums and file_sha256(path) != shard["sha256"]:
            raise DataError(str(path), "SHA-256 differs from the manifest: the shard is corrupt or was replaced "
                                       "(prepare the dataset again)")


def check_config(folder: Path, manifest: Mapping[str, Any], data_config: Any, where: Optional[str] = None) -> None:
    """DataError when ``data_config`` is not the config the folder was prepared with (the differing keys named)."""
    if manifest.get("config_hash") == data_config_hash(data_config):
        return
    then = manifest.get("data_config", {})
    now = hashed_values(data_config)
    differing = sorted(k for k in set(then) | set(now) if json.dumps(then.get(k), sort_keys=True, default=str)
                       != json.dumps(now.get(k), sort_keys=True, default=str))
    raise DataError(str(Path(folder) / MANIFEST), "prepared with a different data config%s (differs in: %s); run "
                    "`tfrec data prepare` again with this config" % (" than %s" % where if where else "",
                                                                     ", ".join("data.%s" % k for k in differing) or "?"))
