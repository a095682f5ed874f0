"""Frozen catalog features: float32 bucketed == fixed padding, int8 engine close to float32, cache reuse."""
from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from tfrec import compat
from tfrec.config.schema import TextConfig
from tfrec.text.catalog import catalog_text_features, float32_encode_fn, frozen_encoder
from tfrec.text.encoder import TextEncoder
from tfrec.text.quantized import Int8CatalogEncoder, bucket_lengths

tf = compat.tensorflow()
MAX_LENGTH = 16  # one int8 bucket: one TFLite conversion for the whole module


@pytest.fixture(scope="module")
def titles(shared_datasets) -> list[str]:
    with open(shared_datasets / "homedepot" / "products.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r[1] for r in rows[:60]] + ["", "🔨 電動ドリル", "x" * 5000]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return frozen_encoder(TextConfig(max_length=MAX_LENGTH))


@pytest.fixture(scope="module")
def int8(encoder) -> Int8CatalogEncoder:
    return Int8CatalogEncoder(encoder, batch_size=32)


def test_bucket_lengths():
    """Buckets are multiples of the step up to max_length, which is always included."""
    assert bucket_lengths(32, 16) == [16, 32]
    assert bucket_lengths(40, 16) == [16, 32, 40]
    assert bucket_lengths(16, 16) == [16]


def test_bucketed_float32_equals_fixed_padding(encoder, titles):
    """Padding each batch only to its longest text changes no vector (masked mean pooling)."""
    fixed = TextEncoder(encoder.files, max_length=MAX_LENGTH, bert=encoder.bert)
    expected = fixed(tf.constant(titles)).numpy()
    got = float32_encode_fn(encoder)(titles)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_int8_engine_is_close_to_float32_and_keeps_order(int8, encoder, titles):
    """int8 vectors keep cosine >= 0.99 to float32, in input order, for odd texts too."""
    reference = float32_encode_fn(encoder)(titles)
    shuffled = np.random.default_rng(0).permutation(len(titles))
    got = int8([titles[i] for i in shuffled])
    cosine = (got * reference[shuffled]).sum(1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference[shuffled], axis=1), 1e-12
    )
    assert got.dtype == np.float32 and got.shape == (len(titles), encoder.output_dim)
    assert cosine.min() >= 0.99, cosine.min()
    assert int8([]).shape == (0, encoder.output_dim)


def test_int8_engine_refuses_trainable_parts(encoder):
    """The int8 engine only computes frozen features: a projection or a trainable BERT is refused."""
    projected = TextEncoder(encoder.files, max_length=MAX_LENGTH, projection_dim=8, bert=encoder.bert)
    with pytest.raises(ValueError, match="frozen features"):
        Int8CatalogEncoder(projected)


def test_catalog_features_are_cached(encoder, titles, tmp_path):
    """A second call encodes nothing and returns the same vectors; another engine has its own shard."""
    cfg = TextConfig(max_length=MAX_LENGTH, cache_dir=str(tmp_path / "cache"))
    texts = titles[:20] + titles[:5]  # duplicates are encoded once
    first, stats = catalog_text_features(texts, cfg, progress=False, encoder=encoder)
    assert stats.encoded == 20 and first.shape == (25, encoder.output_dim)
    np.testing.assert_allclose(first[20:], first[:5])
    again, stats = catalog_text_features(texts, cfg, progress=False, encoder=encoder)
    assert stats.encoded == 0 and stats.hits == 25
    np.testing.assert_array_equal(again, first)
    other = dataclasses.replace(cfg, pooling="cls")
    _, stats = catalog_text_features(texts[:3], other, progress=False, encoder=frozen_encoder(other, bert=encoder.bert))
    assert stats.encoded == 3  # a different tokenizer/pooling setting never reuses stale vectors
