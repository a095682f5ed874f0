"""EmbeddingCache and encoder_fingerprint against real files, a deterministic numpy encoder and a small tf.keras model."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before TensorFlow is imported)

import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tfrec.data.synthetic import synthetic_catalog
from tfrec.text.cache import (
    MANIFEST_NAME,
    CacheStats,
    EmbeddingCache,
    EmbeddingCacheWarning,
    encoder_fingerprint,
    text_key,
)

DIM = 16


def char_vectors(texts: list[str], salt: int = 0) -> np.ndarray:
    """A deterministic text vector: characters hashed by (code point, position) into DIM bins, unit length."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for position, char in enumerate(text):
            out[row, (ord(char) * 31 + position * 7 + salt) % DIM] += 1.0
        out[row, len(text) % DIM] += 0.5  # the empty string still gets a non-zero vector
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class CountingEncoder:
    """A real encode function that records every batch it is given."""

    def __init__(self, salt: int = 0) -> None:
        self.salt = salt
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        self.batches.append(list(texts))
        return char_vectors(texts, self.salt)

    @property
    def encoded(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


TEXTS = ["cordless drill 18v", "oak stain", "deck screws 3 in.", "oak stain", "led bulb", "cordless drill 18v", ""]


def test_first_call_encodes_each_distinct_text_once_in_input_order(tmp_path):
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    vectors = cache.encode_catalog(TEXTS, encoder, "enc-a", batch_size=2, progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), DIM) and vectors.flags.c_contiguous
    assert sorted(encoder.encoded) == sorted(set(TEXTS))  # duplicates encoded once
    np.testing.assert_array_equal(vectors, char_vectors(TEXTS))  # row i belongs to TEXTS[i]
    assert cache.stats == CacheStats(texts=7, hits=0, misses=7, encoded=5)
    # Batches follow a length-sorted plan and respect batch_size.
    assert all(len(batch) <= 2 for batch in encoder.batches)
    lengths = [len(t) for t in encoder.encoded]
    assert lengths == sorted(lengths)


def test_second_instance_reads_the_cache_and_encodes_nothing(tmp_path):
    first = EmbeddingCache(tmp_path).encode_catalog(TEXTS, CountingEncoder(), "enc-a", progress=False)
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    again = cache.encode_catalog(TEXTS, encoder, "enc-a", progress=False)
    assert encoder.batches == []
    np.testing.assert_array_equal(again, first)
    assert cache.stats == CacheStats(texts=7, hits=7, misses=0, encoded=0)
    assert cache.stats.summary() == "encoded 0 new texts, 7 from cache"


def test_changed_encoder_key_uses_its_own_shard_and_reencodes_all(tmp_path):
    cache = EmbeddingCache(tmp_path)
    old = cache.encode_catalog(TEXTS, CountingEncoder(), "model-1/max_length=32", progress=False)
    encoder = CountingEncoder(salt=5)  # the "new model" gives different vectors
    new = cache.encode_catalog(TEXTS, encoder, "model-1/max_length=64", progress=False)
    assert sorted(encoder.encoded) == sorted(set(TEXTS))
    np.testing.assert_array_equal(new, char_vectors(TEXTS, salt=5))
    assert cache.shard_dir("model-1/max_length=32") != cache.shard_dir("model-1/max_length=64")
    # The old shard is untouched and still served for the old key.
    unused = CountingEncoder()
    np.testing.assert_array_equal(EmbeddingCache(tmp_path).encode_catalog(TEXTS, unused, "model-1/max_length=32", progress=False), old)
    assert unused.batches == []


def test_only_changed_texts_are_reencoded(tmp_path):
    catalog = [t for t in synthetic_catalog(60, seed=1).text().tolist()]
    EmbeddingCache(tmp_path).encode_catalog(catalog, CountingEncoder(), "enc", batch_size=16, progress=False)
    edited = list(catalog)
    edited[3] += " (new)"
    edited[40] = "a brand new title"
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    vectors = cache.encode_catalog(edited, encoder, "enc", batch_size=16, progress=False)
    assert sorted(encoder.encoded) == sorted([edited[3], edited[40]])
    np.testing.assert_array_equal(vectors, char_vectors(edited))
    assert cache.stats.summary() == "encoded 2 new texts, 58 from cache"


def test_duplicates_and_order_with_a_partly_cached_catalog(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.encode_catalog(["b", "a"], CountingEncoder(), "enc", progress=False)
    encoder = CountingEncoder()
    texts = ["c", "a", "c", "b", "a", "dd", "c"]
    vectors = cache.encode_catalog(texts, encoder, "enc", progress=False)
    assert sorted(encoder.encoded) == ["c", "dd"]
    np.testing.assert_array_equal(vectors, char_vectors(texts))
    assert cache.stats == CacheStats(texts=7, hits=3, misses=4, encoded=2)


def test_numpy_object_array_input(tmp_path):
    titles = synthetic_catalog(20).text()  # an object ndarray, as Catalog.text() returns
    vectors = EmbeddingCache(tmp_path).encode_catalog(titles, CountingEncoder(), "enc", progress=False)
    np.testing.assert_array_equal(vectors, char_vectors(titles.tolist()))


def test_empty_text_list(tmp_path):
    encoder = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    empty = cache.encode_catalog([], encoder, "enc", progress=False)
    assert empty.shape == (0, 0) and empty.dtype == np.float32  # dim unknown: nothing cached yet
    assert encoder.batches == [] and not tmp_path.joinpath(cache.shard_dir("enc").name).exists()
    cache.encode_catalog(["x"], encoder, "enc", progress=False)
    assert EmbeddingCache(tmp_path).encode_catalog([], encoder, "enc", progress=False).shape == (0, DIM)
    assert cache.stats == CacheStats(texts=1, hits=0, misses=1, encoded=1)


def _shard_files(cache: EmbeddingCache, key: str) -> tuple[Path, dict]:
    directory = cache.shard_dir(key)
    return directory, json.loads((directory / MANIFEST_NAME).read_text())


def test_truncated_vectors_file_is_detected_and_rebuilt(tmp_path):
    EmbeddingCache(tmp_path).encode_catalog(TEXTS, CountingEncoder(), "enc", progress=False)
    directory, manifest = _shard_files(EmbeddingCache(tmp_path), "enc")
    path = directory / manifest["vectors"]["file"]
    path.write_bytes(path.read_bytes()[:-40])  # a run killed mid-write without the atomic replace
    encoder = CountingEncoder()
    with pytest.warns(EmbeddingCacheWarning, match="truncated"):
        vectors = EmbeddingCache(tmp_path).encode_catalog(TEXTS, encoder, "enc", progress=False)
    np.testing.assert_array_equal(vectors, char_vectors(TEXTS))
    assert sorted(encoder.encoded) == sorted(set(TEXTS))
    assert not path.exists()  # the bad generation was cleaned up
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt shard reads back without a warning
        unused = CountingEncoder()
        np.testing.assert_array_equal(EmbeddingCache(tmp_path).encode_catalog(TEXTS, unused, "enc", progress=False), vectors)
        assert unused.batches == []


@pytest.mark.parametrize(
    "damage",
    ["garbled manifest", "flipped vector byte", "wrong count", "missing keys file"],
)
def test_damaged_shard_is_rebuilt_with_a_warning(tmp_path, damage):
    EmbeddingCache(tmp_path).encode_catalog(TEXTS, CountingEncoder(), "enc", progress=False)
    directory, manifest = _shard_files(EmbeddingCache(tmp_path), "enc")
    if damage == "garbled manifest":
        (directory / MANIFEST_NAME).write_text('{"format": 1, "generation": ')
    elif damage == "flipped vector byte":
        path = directory / manifest["vectors"]["file"]
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF  # same size, different content: only the checksum catches it
        path.write_bytes(bytes(data))
    elif damage == "wrong count":
        manifest["count"] = 99
        (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    else:
        (directory / manifest["keys"]["file"]).unlink()
    encoder = CountingEncoder()
    with pytest.warns(EmbeddingCacheWarning, match="rebuilding"):
        vectors = EmbeddingCache(tmp_path).encode_catalog(TEXTS, encoder, "enc", progress=False)
    np.testing.assert_array_equal(vectors, char_vectors(TEXTS))
    assert len(encoder.encoded) == len(set(TEXTS))


def test_killed_writer_leaves_the_committed_generation_readable(tmp_path):
    """Data files are written under temp names and moved; the manifest is replaced last (the commit)."""
    cache = EmbeddingCache(tmp_path)
    committed = cache.encode_catalog(TEXTS, CountingEncoder(), "enc", progress=False)
    directory = cache.shard_dir("enc")
    # What a run killed before its manifest replace leaves: a half temp file and an uncommitted generation.
    (directory / ".vectors-deadbeef.npy.1234.tmp").write_bytes(b"\x93NUMPY partial")
    (directory / "vectors-deadbeef00000000.npy").write_bytes(b"garbage")
    encoder = CountingEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = EmbeddingCache(tmp_path).encode_catalog(TEXTS, encoder, "enc", progress=False)
    np.testing.assert_array_equal(again, committed)
    assert encoder.batches == []
    names = {p.name for p in directory.iterdir() if not p.name.startswith(".")}
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    assert {manifest["vectors"]["file"], manifest["keys"]["file"], MANIFEST_NAME} <= names


def test_two_writers_on_one_shard_keep_each_others_vectors(tmp_path):
    """Each commit is one os.replace of the manifest; a writer merges a commit it did not see."""
    first, second = EmbeddingCache(tmp_path), EmbeddingCache(tmp_path)
    first.encode_catalog(["a"], CountingEncoder(), "enc", progress=False)
    second.encode_catalog(["a"], CountingEncoder(), "enc", progress=False)  # both hold generation 1
    first.encode_catalog(["a", "b"], CountingEncoder(), "enc", progress=False)
    second.encode_catalog(["a", "c"], CountingEncoder(), "enc", progress=False)
    encoder = CountingEncoder()
    vectors = EmbeddingCache(tmp_path).encode_catalog(["c", "b", "a"], encoder, "enc", progress=False)
    assert encoder.batches == []
    np.testing.assert_array_equal(vectors, char_vectors(["c", "b", "a"]))
    directory = first.shard_dir("enc")
    assert len(list(directory.glob("vectors-*.npy"))) == 1  # superseded generations removed


def test_progress_bar_shows_only_when_asked(tmp_path, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:  # the bar draws on terminals only (elsewhere: a log line every ~30 s)
            return True

    EmbeddingCache(tmp_path / "quiet").encode_catalog(TEXTS, CountingEncoder(), "enc", progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    EmbeddingCache(tmp_path / "loud").encode_catalog(TEXTS, CountingEncoder(), "enc", progress=True)
    monkeypatch.undo()
    assert "encoding texts" in terminal.getvalue()


def test_bad_inputs_and_encoder_outputs_are_named(tmp_path):
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(TypeError, match=r"texts\[1\] is None"):
        cache.encode_catalog(["ok", None], CountingEncoder(), "enc", progress=False)
    with pytest.raises(ValueError, match="encoder_key"):
        cache.encode_catalog(["ok"], CountingEncoder(), "", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        cache.encode_catalog(["ok"], CountingEncoder(), "enc", batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"shape \(1,\) for a batch of 2"):
        cache.encode_catalog(["a", "b"], lambda texts: np.zeros(1), "enc", progress=False)
    with pytest.raises(ValueError, match="NaN"):
        cache.encode_catalog(["a"], lambda texts: np.full((1, 4), np.nan), "enc", progress=False)
    assert not cache.shard_dir("enc").exists()  # nothing was cached from a failed encode
    cache.encode_catalog(["a"], CountingEncoder(), "enc", progress=False)
    with pytest.raises(ValueError, match="does not identify the model"):
        cache.encode_catalog(["b"], lambda texts: np.zeros((len(texts), 3)), "enc", progress=False)


def test_text_key_depends_on_encoder_key_and_text():
    assert text_key("k", "oak") != text_key("k2", "oak") != text_key("k", "oak ")
    assert len(text_key("k", "oak")) == 32
    with pytest.raises(ValueError, match="NUL"):  # it would make "a\0b"+"c" and "a"+"b\0c" collide
        text_key("a\0b", "c")


def test_encoder_fingerprint_tracks_files_and_settings(tmp_path):
    model = tmp_path / "minilm"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 16}')
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\noak\n")
    weights = model / "model.safetensors"
    weights.write_bytes(b"\0" * (2 << 20))  # "large": counted by size + mtime
    settings = dict(max_length=32, lowercase=True, pooling="mean", normalize=True)
    key = encoder_fingerprint(model, **settings)
    assert key.startswith("minilm@") and key == encoder_fingerprint(str(model), **settings)
    assert encoder_fingerprint(model, **{**settings, "max_length": 64}) != key
    assert encoder_fingerprint(model, **{**settings, "pooling": "cls"}) != key
    assert encoder_fingerprint(model, **settings, extra={"projection": 0}) != key
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\noak\nelm\n")
    assert encoder_fingerprint(model, **settings) != key
    key = encoder_fingerprint(model, **settings)
    # Fine-tuned weights have the original size: the mtime (or hash_weights) must notice them.
    weights.write_bytes(b"\1" * (2 << 20))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert encoder_fingerprint(model, **settings) != key
    hashed = encoder_fingerprint(model, **settings, hash_weights=True)
    os.utime(weights, ns=(0, 0))  # a copy with another mtime: content hashing still agrees
    assert encoder_fingerprint(model, **settings, hash_weights=True) == hashed
    with pytest.raises(TypeError, match="JSON"):
        encoder_fingerprint(model, **settings, extra={"bad": object()})
    with pytest.raises(FileNotFoundError, match="not a folder"):
        encoder_fingerprint(tmp_path / "absent", **settings)


def test_a_tf_keras_model_as_the_encoder(tmp_path):
    """A real (small) tf.keras text model over synthetic catalog titles, TF tensors as encoder output."""
    from tfrec import compat

    tf = compat.tensorflow()
    titles = synthetic_catalog(120, seed=3).text().tolist()
    titles += titles[:10]  # shared titles, as in the Home Depot catalog
    vectorize = tf.keras.layers.TextVectorization(max_tokens=200, output_sequence_length=12)
    vectorize.adapt(titles)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [vectorize, tf.keras.layers.Embedding(200, 24, mask_zero=True), tf.keras.layers.GlobalAveragePooling1D()]
    )
    calls = []

    def encode(batch: list[str]):
        calls.append(len(batch))
        return model(tf.constant(batch))  # a tf.Tensor: the cache converts it

    key = "textvectorization-embedding-mean/v1"
    vectors = EmbeddingCache(tmp_path).encode_catalog(titles, encode, key, batch_size=32, progress=False)
    assert vectors.shape == (130, 24) and vectors.dtype == np.float32
    assert sum(calls) == 120 and max(calls) <= 32
    np.testing.assert_allclose(vectors, model(tf.constant(titles)).numpy(), rtol=1e-5, atol=1e-6)
    calls.clear()
    cache = EmbeddingCache(tmp_path)
    np.testing.assert_array_equal(cache.encode_catalog(titles, encode, key, progress=False), vectors)
    assert calls == [] and cache.stats.summary() == "encoded 0 new texts, 130 from cache"


def test_default_cache_folder_is_the_users_cache_never_the_working_directory(tmp_path, monkeypatch):
    from tfrec.config import Config
    from tfrec.text.cache import CACHE_ENV, default_cache_dir, resolve_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tfrec" / "embeddings"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid per the XDG spec: ignored
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tfrec" / "embeddings"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tfrec" / "embeddings"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "tfrec-cache"))
    assert default_cache_dir() == tmp_path / "tfrec-cache" / "embeddings"

    assert Config().text.cache_dir is None
    assert resolve_cache_dir(None) == resolve_cache_dir("") == EmbeddingCache().cache_dir == default_cache_dir()
    assert resolve_cache_dir("my/cache") == Path("my/cache")  # a configured folder is used as given
