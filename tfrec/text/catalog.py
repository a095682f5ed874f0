"""Frozen text features of a catalog, computed once and reused through the embedding cache.

Frozen-encoder training reads these vectors instead of running BERT over every product each
epoch; the trainable parts (projection, fusion, towers) run on top of them.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from tfrec import compat
from tfrec.config.schema import Config, TextConfig
from tfrec.text.cache import CacheStats, EmbeddingCache, encoder_fingerprint
from tfrec.text.encoder import TextEncoder
from tfrec.text.model_files import ModelFiles, resolve_model_files
from tfrec.text.quantized import Int8CatalogEncoder

log = logging.getLogger(__name__)

tf = compat.tensorflow()


def frozen_encoder(text_cfg: TextConfig, **kwargs: Any) -> TextEncoder:
    """The frozen feature extractor of a config: no projection, BERT frozen, batch-length padding."""
    return TextEncoder(
        resolve_model_files(text_cfg.model_dir),
        max_length=text_cfg.max_length,
        pooling=text_cfg.pooling,
        normalize=text_cfg.normalize,
        projection_dim=0,
        training_mode="frozen",
        pad_to="batch",  # the cache sends length-sorted batches: pad each only to its longest text
        **kwargs,
    )


def float32_encode_fn(encoder: TextEncoder) -> Callable[[Sequence[str]], np.ndarray]:
    """A batch function texts -> [n, dim] float32 running the in-graph encoder."""
    # Bucketed padding gives a few distinct lengths (multiples of 8): one trace each.
    run = tf.function(lambda texts: encoder(texts), reduce_retracing=True)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return run(tf.constant(list(texts))).numpy()

    return encode


def catalog_vector_key(text_cfg: TextConfig, files: ModelFiles | None = None) -> str:
    """The embedding cache's key for frozen catalog vectors of a text config: model files, settings and engine."""
    files = files or resolve_model_files(text_cfg.model_dir)
    return encoder_fingerprint(files.dir, max_length=text_cfg.max_length, lowercase=files.lowercase, pooling=text_cfg.pooling,
                               normalize=text_cfg.normalize, extra={"engine": text_cfg.catalog_engine})


def catalog_text_features(
    texts: Sequence[str], text_cfg: TextConfig, *, progress: bool = True, encoder: TextEncoder | None = None
) -> tuple[np.ndarray, CacheStats]:
    """Return frozen vectors [n, dim] for ``texts`` (cached by model, settings, engine and text)."""
    encoder = encoder or frozen_encoder(text_cfg)
    key = catalog_vector_key(text_cfg, encoder.files)
    if text_cfg.catalog_engine == "int8":
        encode = Int8CatalogEncoder(encoder)
    else:
        encode = float32_encode_fn(encoder)
    cache = EmbeddingCache(text_cfg.cache_dir)
    vectors = cache.encode_catalog(list(texts), encode, key, batch_size=text_cfg.encode_batch_size, progress=progress)
    return vectors, cache.stats


def prepared_catalog_vectors(config: Config) -> np.ndarray | None:
    """The frozen catalog vectors `tfrec data prepare --text-vectors` wrote for this text model, or None (then encode)."""
    if not config.data.prepared:
        return None
    from tfrec.data.prepared.reader import open_prepared, read_text_vectors  # lazy: only prepared runs read shards

    prepared = open_prepared(config.data.prepared, checksums=False)  # the shards were checked when the data loaded
    vectors = read_text_vectors(prepared, catalog_vector_key(config.text))
    if vectors is not None:
        log.info("catalog text vectors: %d products, read from %s", len(vectors), prepared.folder)
    return vectors
