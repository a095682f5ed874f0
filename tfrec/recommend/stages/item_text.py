"""Stage 1: frozen BERT vectors of every catalog item's text (through the embedding cache)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from tfrec.config.schema import Config
from tfrec.data.prepared.reader import open_prepared, read_text_vectors
from tfrec.data.tables import Catalog
from tfrec.text.catalog import catalog_text_features, catalog_vector_key

log = logging.getLogger(__name__)


def item_text_vectors(config: Config, catalog: Catalog) -> Optional[np.ndarray]:
    """Vectors [n_items, dim] of the items' text, or None when ``recommendation.item_text`` is off."""
    if not config.recommendation.item_text:
        return None
    if config.data.prepared:
        # Vectors encoded by `tfrec data prepare --text-vectors` with this model and these settings: read, not encoded.
        prepared = open_prepared(Path(config.data.prepared), checksums=False)  # the shards were checked when the data loaded
        vectors = read_text_vectors(prepared, catalog_vector_key(config.text))
        if vectors is not None:
            log.info("item text vectors: %d items, read from %s", len(vectors), prepared.folder)
            return vectors
    vectors, stats = catalog_text_features(catalog.text().astype(str), config.text, progress=config.train.progress)
    log.info("item text vectors: %d items (%s)", len(vectors), stats.summary())
    return vectors
