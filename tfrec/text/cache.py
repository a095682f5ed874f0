"""An on-disk cache of catalog text embeddings, one shard per encoder, so a frozen encoder runs once per text.

The cache knows nothing about BERT: it takes an ``encode`` function (a batch of texts ->
``[n, dim]`` float32) and an ``encoder_key`` string that names the model and its tokenizer
settings (see :func:`encoder_fingerprint`). Vectors are keyed per text by
``sha256(encoder_key + "\\0" + text)``; a different ``encoder_key`` lands in a different shard,
so changing the model or a tokenizer setting never reuses stale vectors.

Where: ``text.cache_dir`` when a config sets it, else :func:`default_cache_dir` (the user's cache
folder, never the working directory). A shard is a folder ``<cache_dir>/<sha256(encoder_key)[:24]>/``
holding::

    manifest.json          the commit point: generation, count, dim, dtype, sha256 and size of both files
    vectors-<gen>.npy      float32 [count, dim]
    keys-<gen>.npy         uint8 [count, 32], the raw sha256 key of each row

Every file is written under a temporary name and moved into place with ``os.replace``; data
files of a new generation get fresh names and the manifest is replaced last, so a run killed
at any point leaves the previous generation readable. A shard whose manifest or files do not
check out (size, sha256, shape, dtype) is rebuilt with an :class:`EmbeddingCacheWarning`.

Concurrency: two processes writing one shard never corrupt it (each commit is one
``os.replace`` of the manifest). A writer that finds the manifest changed since it read the
shard merges the other writer's vectors before committing; a commit landing inside that
millisecond window can still be lost, which costs only re-encoding those texts later. One
EmbeddingCache instance is not meant to be shared between threads.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from tfrec.files import file_sha256, replace_atomic, write_bytes_atomic
from tfrec.log import Progress

log = logging.getLogger(__name__)

Encode = Callable[[list[str]], np.ndarray]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_KEY_BYTES = 32  # a raw sha256 digest
# Files this small are hashed by content in encoder_fingerprint; bigger ones (weights) by identity.
_SMALL_FILE_BYTES = 1 << 20
# Unreferenced shard files older than this are leftovers of killed runs; younger ones may belong
# to a concurrent writer that has not committed its manifest yet.
_STALE_SECONDS = 3600.0
# Names tfrec's cache root (embeddings go in its `embeddings` folder), in place of $XDG_CACHE_HOME/tfrec.
CACHE_ENV = "TFREC_CACHE_DIR"


def default_cache_dir() -> Path:
    """The embedding cache when no folder is configured: $TFREC_CACHE_DIR/embeddings, else $XDG_CACHE_HOME/tfrec/embeddings, else ~/.cache/tfrec/embeddings."""
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return Path(root).expanduser() / "embeddings"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "tfrec" / "embeddings"


def resolve_cache_dir(cache_dir: Union[str, os.PathLike, None]) -> Path:
    """The folder an EmbeddingCache uses: ``cache_dir`` as given (``~`` expanded), or the default when it is None or empty."""
    if cache_dir is None or not str(cache_dir).strip():
        return default_cache_dir()
    return Path(cache_dir).expanduser()


class EmbeddingCacheWarning(UserWarning):
    """A cache shard could not be read or failed its checks and is being rebuilt."""


@dataclass(frozen=True)
class CacheStats:
    """What one ``encode_catalog`` call did, counted over its input texts."""

    texts: int = 0  # input texts (positions, duplicates included)
    hits: int = 0  # input texts whose vector came from the cache
    misses: int = 0  # input texts whose vector was not cached (texts - hits)
    encoded: int = 0  # distinct texts sent to the encoder

    def summary(self) -> str:
        """A line for logs, e.g. ``encoded 3 new texts, 54,664 from cache``."""
        return "encoded {:,} new texts, {:,} from cache".format(self.encoded, self.hits)


def text_key(encoder_key: str, text: str) -> bytes:
    """The 32-byte cache key of ``text`` under ``encoder_key``."""
    if "\0" in encoder_key:
        raise ValueError("encoder_key must not contain NUL characters (NUL separates it from the text), got %r" % encoder_key)
    return hashlib.sha256((encoder_key + "\0" + text).encode("utf-8")).digest()


def encoder_fingerprint(
    model_dir: Union[str, os.PathLike],
    *,
    max_length: int,
    lowercase: bool,
    pooling: str,
    normalize: bool,
    extra: Optional[Mapping[str, Any]] = None,
    hash_weights: bool = False,
) -> str:
    """An ``encoder_key`` naming a model folder's files and the settings that change its vectors.

    Small files (config.json, vocab.txt, tokenizer files: up to 1 MiB) count by content; larger
    ones (weights) by relative path, size and mtime, or by content with ``hash_weights=True``
    (slower, but stable when the folder is copied to another machine). Size alone would not do:
    fine-tuned weights of one architecture have exactly the size of the originals.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError("encoder model_dir %s is not a folder" % root)
    digest = hashlib.sha256()
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError("encoder model_dir %s holds no files (expected config.json, vocab.txt and weights)" % root)
    for path in files:
        relative = path.relative_to(root).as_posix()
        info = path.stat()
        digest.update(("file\0%s\0%d\0" % (relative, info.st_size)).encode("utf-8"))
        if info.st_size <= _SMALL_FILE_BYTES or hash_weights:
            digest.update(file_sha256(path).encode("ascii"))
        else:
            digest.update(("mtime_ns\0%d" % info.st_mtime_ns).encode("ascii"))
    settings = {
        "max_length": int(max_length),
        "lowercase": bool(lowercase),
        "pooling": str(pooling),
        "normalize": bool(normalize),
        "extra": dict(extra or {}),
    }
    try:
        settings_text = json.dumps(settings, sort_keys=True)
    except TypeError as error:
        raise TypeError("encoder_fingerprint: extra settings must be JSON-serializable (%s)" % error) from None
    digest.update(("settings\0" + settings_text).encode("utf-8"))
    return "%s@%s" % (root.resolve().name or "model", digest.hexdigest()[:32])


@dataclass
class _Shard:
    """The in-memory copy of one shard generation."""

    directory: Path
    generation: Optional[str] = None  # None: nothing committed on disk yet
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0, _KEY_BYTES), np.uint8))
    vectors: Optional[np.ndarray] = None  # float32 [count, dim]; None while empty
    index: dict[bytes, int] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    @property
    def dim(self) -> Optional[int]:
        return None if self.vectors is None else int(self.vectors.shape[1])


class _CorruptShard(Exception):
    """Internal: the committed shard failed a check (the message says which)."""


class EmbeddingCache:
    """Catalog text embeddings cached on disk under ``cache_dir`` (None: :func:`default_cache_dir`), one shard per encoder_key."""

    def __init__(self, cache_dir: Union[str, os.PathLike, None] = None) -> None:
        self.cache_dir = resolve_cache_dir(cache_dir)
        # Counts of the latest encode_catalog call; CacheStats() before the first one.
        self.stats = CacheStats()
        self._shards: dict[str, _Shard] = {}

    def shard_dir(self, encoder_key: str) -> Path:
        """The folder holding the vectors of ``encoder_key``."""
        return self.cache_dir / hashlib.sha256(encoder_key.encode("utf-8")).hexdigest()[:24]

    def encode_catalog(
        self,
        texts: Sequence[str],
        encode: Encode,
        encoder_key: str,
        batch_size: int = 256,
        progress: bool = True,
    ) -> np.ndarray:
        """Return float32 ``[len(texts), dim]`` vectors in input order, encoding only uncached distinct texts."""
        if not isinstance(encoder_key, str) or not encoder_key:
            raise ValueError("encoder_key must be a non-empty string naming the model and its settings, got %r" % (encoder_key,))
        if "\0" in encoder_key:
            raise ValueError("encoder_key must not contain NUL characters, got %r" % encoder_key)
        if not callable(encode):
            raise TypeError("encode must be a function list[str] -> [n, dim] array, got %r" % (encode,))
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError("batch_size must be a positive integer, got %r" % (batch_size,))
        text_list = _as_text_list(texts)
        keys = [text_key(encoder_key, t) for t in text_list]
        shard = self._current_shard(encoder_key)

        cached = np.fromiter((k in shard.index for k in keys), dtype=bool, count=len(keys))
        missing: dict[bytes, str] = {}  # distinct uncached texts, first-seen order
        for k, t, hit in zip(keys, text_list, cached):
            if not hit and k not in missing:
                missing[k] = t
        if missing:
            new_vectors = _encode_in_batches(list(missing.values()), encode, batch_size, progress, shard.dim)
            shard = self._commit(encoder_key, shard, list(missing), new_vectors)
        self.stats = CacheStats(
            texts=len(text_list), hits=int(cached.sum()), misses=int((~cached).sum()), encoded=len(missing)
        )
        if not text_list:
            return np.zeros((0, shard.dim or 0), dtype=np.float32)
        rows = np.fromiter((shard.index[k] for k in keys), dtype=np.int64, count=len(keys))
        return np.ascontiguousarray(shard.vectors[rows], dtype=np.float32)

    # -- reading ---------------------------------------------------------------------------

    def _current_shard(self, encoder_key: str) -> _Shard:
        """The committed shard, reusing the in-memory copy while its generation is current."""
        directory = self.shard_dir(encoder_key)
        known = self._shards.get(encoder_key)
        try:
            manifest = _read_manifest(directory)
            if known is not None and manifest is not None and manifest.get("generation") == known.generation:
                return known
            shard = _load_shard(directory, encoder_key, manifest)
        except _CorruptShard as problem:
            warnings.warn(
                "embedding cache shard %s is unusable (%s); rebuilding it from the encoder" % (directory, problem),
                EmbeddingCacheWarning,
                stacklevel=3,
            )
            shard = _Shard(directory=directory, generation="corrupt")
        self._shards[encoder_key] = shard
        return shard

    # -- writing ---------------------------------------------------------------------------

    def _commit(self, encoder_key: str, base: _Shard, new_keys: list[bytes], new_vectors: np.ndarray) -> _Shard:
        """Write base + new rows as a new generation and return it."""
        directory = base.directory
        directory.mkdir(parents=True, exist_ok=True)
        was_corrupt = base.generation == "corrupt"
        superseded = base.files
        base = self._merge_concurrent(encoder_key, base)
        superseded = superseded + base.files
        fresh = [i for i, k in enumerate(new_keys) if k not in base.index]
        new_keys = [new_keys[i] for i in fresh]
        new_vectors = new_vectors[fresh]
        if base.dim is not None and new_vectors.shape[1] != base.dim:
            raise ValueError(
                "encoder returned %d-dim vectors but the cache shard %s for this encoder_key holds %d-dim vectors: "
                "the encoder_key does not identify the model" % (new_vectors.shape[1], directory, base.dim)
            )
        key_rows = np.frombuffer(b"".join(new_keys), dtype=np.uint8).reshape(len(new_keys), _KEY_BYTES)
        keys = np.concatenate([base.keys, key_rows]) if len(base.keys) else key_rows
        vectors = np.concatenate([base.vectors, new_vectors]) if base.vectors is not None else new_vectors

        generation = uuid.uuid4().hex[:16]
        vectors_name, keys_name = "vectors-%s.npy" % generation, "keys-%s.npy" % generation
        vectors_sha, vectors_bytes = _write_npy_atomic(directory / vectors_name, vectors)
        keys_sha, keys_bytes = _write_npy_atomic(directory / keys_name, keys)
        manifest = {
            "format": FORMAT_VERSION,
            "encoder_key": encoder_key,
            "generation": generation,
            "count": int(vectors.shape[0]),
            "dim": int(vectors.shape[1]),
            "dtype": "float32",
            "vectors": {"file": vectors_name, "sha256": vectors_sha, "bytes": vectors_bytes},
            "keys": {"file": keys_name, "sha256": keys_sha, "bytes": keys_bytes},
            "written_at": time.time(),
        }
        write_bytes_atomic(directory / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        _fsync_dir(directory)

        index = dict(base.index)
        start = len(base.keys)
        index.update((k, start + i) for i, k in enumerate(new_keys))
        shard = _Shard(directory, generation, keys, vectors, index, (vectors_name, keys_name))
        _remove_superseded(directory, keep=shard.files, superseded=superseded, after_corruption=was_corrupt)
        self._shards[encoder_key] = shard
        return shard

    def _merge_concurrent(self, encoder_key: str, base: _Shard) -> _Shard:
        """If another writer committed since ``base`` was read, add its rows to ``base``."""
        try:
            manifest = _read_manifest(base.directory)
            if manifest is None or manifest.get("generation") == base.generation:
                return base
            theirs = _load_shard(base.directory, encoder_key, manifest)
        except _CorruptShard:
            return base  # their commit is unreadable: ours replaces it
        if base.vectors is None or base.generation == "corrupt":
            return theirs
        extra = [row for key, row in theirs.index.items() if key not in base.index]
        if not extra or theirs.dim != base.dim:
            return _Shard(base.directory, theirs.generation, base.keys, base.vectors, base.index, theirs.files)
        keys = np.concatenate([base.keys, theirs.keys[extra]])
        vectors = np.concatenate([base.vectors, theirs.vectors[extra]])
        index = {keys[i].tobytes(): i for i in range(len(keys))}
        return _Shard(base.directory, theirs.generation, keys, vectors, index, theirs.files)


def _as_text_list(texts: Sequence[str]) -> list[str]:
    """The texts as a list of str, or a TypeError naming the first position that is not one."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    values = texts.tolist() if isinstance(texts, np.ndarray) else list(texts)
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError("texts[%d] is %r (%s), expected str" % (position, value, type(value).__name__))
    return values


def _encode_in_batches(texts: list[str], encode: Encode, batch_size: int, progress: bool, cached_dim: Optional[int]) -> np.ndarray:
    """Encode ``texts`` in length-sorted batches (similar lengths pad less) and return rows in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: Optional[np.ndarray] = None
    with Progress("encoding texts", len(texts), logger=log, unit="text", show=progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            vectors = _checked_batch(encode([texts[i] for i in rows]), len(rows))
            if out is None:
                if cached_dim is not None and vectors.shape[1] != cached_dim:
                    raise ValueError(
                        "encode returned %d-dim vectors but the cache shard for this encoder_key holds %d-dim ones: "
                        "the encoder_key does not identify the model" % (vectors.shape[1], cached_dim)
                    )
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            elif vectors.shape[1] != out.shape[1]:
                raise ValueError("encode returned %d-dim vectors after %d-dim ones in earlier batches" % (vectors.shape[1], out.shape[1]))
            out[rows] = vectors
            bar.update(len(rows))
    assert out is not None
    return out


def _checked_batch(result: Any, n: int) -> np.ndarray:
    """The encoder's output as float32 [n, dim], or a ValueError saying what was wrong with it."""
    if hasattr(result, "numpy") and not isinstance(result, np.ndarray):
        result = result.numpy()  # a tf.Tensor
    vectors = np.asarray(result)
    if vectors.ndim != 2 or vectors.shape[0] != n or vectors.shape[1] < 1:
        raise ValueError("encode returned shape %s for a batch of %d texts, expected [%d, dim]" % (vectors.shape, n, n))
    if not np.issubdtype(vectors.dtype, np.number):
        raise ValueError("encode returned dtype %s, expected float vectors" % vectors.dtype)
    vectors = vectors.astype(np.float32, copy=False)
    if not np.isfinite(vectors).all():
        raise ValueError("encode returned NaN or infinite values; nothing was cached")
    return vectors


def _read_manifest(directory: Path) -> Optional[dict]:
    """The shard's manifest, None when none was committed; _CorruptShard when unreadable."""
    path = directory / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise _CorruptShard("%s is not valid JSON: %s" % (MANIFEST_NAME, error)) from None
    if not isinstance(manifest, dict):
        raise _CorruptShard("%s is not a JSON object" % MANIFEST_NAME)
    return manifest


def _load_shard(directory: Path, encoder_key: str, manifest: Optional[dict]) -> _Shard:
    """Read and verify the generation named by ``manifest``; an empty shard when there is none."""
    if manifest is None:
        return _Shard(directory=directory)
    for attempt in range(2):
        try:
            return _verified_shard(directory, encoder_key, manifest)
        except FileNotFoundError as missing:
            # A concurrent writer may have committed and removed this generation just now.
            newer = _read_manifest(directory)
            if attempt or newer is None or newer.get("generation") == manifest.get("generation"):
                raise _CorruptShard("file named in the manifest is missing: %s" % missing.filename) from None
            manifest = newer
    raise AssertionError("unreachable")


def _verified_shard(directory: Path, encoder_key: str, manifest: dict) -> _Shard:
    try:
        if manifest["format"] != FORMAT_VERSION:
            raise _CorruptShard("format %r, this tfrec reads format %d" % (manifest["format"], FORMAT_VERSION))
        if manifest["encoder_key"] != encoder_key:
            raise _CorruptShard("manifest is for encoder_key %r" % manifest["encoder_key"])
        count, dim, generation = int(manifest["count"]), int(manifest["dim"]), str(manifest["generation"])
        entries = {"vectors": manifest["vectors"], "keys": manifest["keys"]}
        names = {role: str(entry["file"]) for role, entry in entries.items()}
    except (KeyError, TypeError, ValueError) as error:
        raise _CorruptShard("manifest field missing or malformed: %r" % (error,)) from None
    if manifest.get("dtype") != "float32" or count < 1 or dim < 1:
        raise _CorruptShard("manifest says dtype %r, count %d, dim %d" % (manifest.get("dtype"), count, dim))
    arrays = {}
    for role, entry in entries.items():
        name = names[role]
        if Path(name).name != name:
            raise _CorruptShard("manifest names a file outside the shard: %r" % name)
        path = directory / name
        data = path.read_bytes()  # FileNotFoundError is handled by the caller
        if len(data) != entry.get("bytes"):
            raise _CorruptShard("%s has %d bytes, the manifest says %s (truncated?)" % (name, len(data), entry.get("bytes")))
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise _CorruptShard("%s does not match its sha256 in the manifest" % name)
        try:
            arrays[role] = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise _CorruptShard("%s is not a readable .npy file: %s" % (name, error)) from None
    vectors, keys = arrays["vectors"], arrays["keys"]
    if vectors.dtype != np.float32 or vectors.shape != (count, dim):
        raise _CorruptShard("vectors are %s %s, expected float32 (%d, %d)" % (vectors.dtype, vectors.shape, count, dim))
    if keys.dtype != np.uint8 or keys.shape != (count, _KEY_BYTES):
        raise _CorruptShard("keys are %s %s, expected uint8 (%d, %d)" % (keys.dtype, keys.shape, count, _KEY_BYTES))
    raw = keys.tobytes()
    index = {raw[i * _KEY_BYTES:(i + 1) * _KEY_BYTES]: i for i in range(count)}
    if len(index) != count:
        raise _CorruptShard("keys file holds duplicate keys")
    return _Shard(directory, generation, keys, vectors, index, (names["vectors"], names["keys"]))


class _HashingWriter:
    """A write-only file wrapper that counts and sha256-hashes what passes through it."""

    def __init__(self, handle: io.BufferedWriter) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        return self._handle.write(view)


def _write_npy_atomic(path: Path, array: np.ndarray) -> tuple[str, int]:
    """Write ``array`` as .npy at ``path`` (temp file + os.replace); return (sha256 hex, size)."""
    holder: dict[str, _HashingWriter] = {}

    def write(handle: io.BufferedWriter) -> None:
        holder["writer"] = _HashingWriter(handle)
        np.save(holder["writer"], np.ascontiguousarray(array), allow_pickle=False)

    replace_atomic(path, write)
    return holder["writer"].sha256.hexdigest(), holder["writer"].size


def _fsync_dir(directory: Path) -> None:
    """Make the renames durable where the platform allows opening a folder."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_superseded(directory: Path, keep: tuple[str, ...], superseded: tuple[str, ...], after_corruption: bool) -> None:
    """Delete the replaced generation and leftovers of killed runs; after a corrupt shard, all unreferenced data."""
    now = time.time()
    for path in directory.iterdir():
        name = path.name
        if name in keep or name == MANIFEST_NAME:
            continue
        ours = name.startswith(("vectors-", "keys-", ".vectors-", ".keys-", ".manifest.json.")) or name in superseded
        if not ours:
            continue
        try:
            old = now - path.stat().st_mtime > _STALE_SECONDS
            # Fresh temp files may be a concurrent writer's commit in progress: leave those be.
            corrupt_data = after_corruption and not name.startswith(".")
            if name in superseded or old or corrupt_data:
                path.unlink()
        except FileNotFoundError:
            pass  # a concurrent writer cleaned it first
