"""Stage 1: frozen BERT vectors of every catalog item's text (through the embedding cache)."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from tfrec.config.schema import Config
from tfrec.data.tables import Catalog
from tfrec.text.catalog import catalog_text_features, prepared_catalog_vectors

log = logging.getLogger(__name__)


def item_text_vectors(config: Config, catalog: Catalog) -> Optional[np.ndarray]:
    """Vectors [n_items, dim] of the items' text, or None when ``recommendation.item_text`` is off."""
    if not config.recommendation.item_text:
        return None
    vectors = prepared_catalog_vectors(config)
    if vectors is not None:
        return vectors
    vectors, stats = catalog_text_features(catalog.text().astype(str), config.text, progress=config.train.progress)
    log.info("item text vectors: %d items (%s)", len(vectors), stats.summary())
    return vectors
