"""The catalog's frozen text vectors, computed on Spark's workers and written as shards keyed by product.

Each worker loads the in-graph text encoder once (TensorFlow, the BERT weights, the tokenizer) and
encodes its part of the catalog through the embedding cache, so products whose text was already
encoded with the same model and settings are read, not encoded again, and the int8 engine is used
when ``text.catalog_engine`` says so. The vectors go to ``text_vectors/`` as one Example per
product (row, product id, vector); training from the prepared folder reads them instead of
running BERT over the catalog, when the model key in the manifest is its own.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tfrec.config.schema import TextConfig
from tfrec.data.prepared.records import ShardWriter, encode_example, shard_name
from tfrec.data.tables import Catalog

TEXT_VECTORS = "text_vectors"
# Products encoded per call on a worker: their vectors (ENCODE_ROWS x 384 floats, ~30 MB) are all it holds at once.
ENCODE_ROWS = 20_000


def write_text_vectors(spark: Any, catalog: Catalog, text_cfg: TextConfig, out: Path, partitions: int) -> dict[str, Any]:
    """Encode every product's text (all text columns joined, as recommendation does) on the workers; the manifest entry."""
    import pandas as pd

    from tfrec.text.catalog import catalog_vector_key  # lazy: imports TensorFlow in the driver only for this step

    key = catalog_vector_key(text_cfg)
    frame = pd.DataFrame({"row": np.arange(len(catalog), dtype=np.int64), "product_id": catalog.ids.astype(str).astype(object),
                          "text": catalog.text().astype(str).astype(object)})
    rows = spark.createDataFrame(frame).repartitionByRange(max(1, partitions), "row").sortWithinPartitions("row")
    job = _EncodePartition(asdict(text_cfg), str(out / TEXT_VECTORS), max(1, partitions))
    results = sorted((json.loads(r["summary"]) for r in rows.mapInPandas(job, "summary string").collect()), key=lambda r: r["part"])
    shards = [r["shard"] for r in results if r["shard"]["records"]]
    return {"model_key": key, "dim": max((r["dim"] for r in results), default=0), "texts": list(catalog.texts),
            "engine": text_cfg.catalog_engine, "items": len(catalog), "encoded": sum(r["encoded"] for r in results),
            "from_cache": sum(r["from_cache"] for r in results), "shards": shards}


class _EncodePartition:
    """Runs on the workers: (row, product_id, text) rows -> one shard of vectors, through the embedding cache."""

    def __init__(self, text_cfg: dict, out: str, partitions: int) -> None:
        self.text_cfg, self.out, self.partitions = text_cfg, out, partitions

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        name = shard_name(part, self.partitions)
        cfg = TextConfig(**self.text_cfg)
        encoder = None
        dim = encoded = cached = 0
        with ShardWriter(Path(self.out) / name, compressed=True) as writer:
            for frame in _chunks(batches, ENCODE_ROWS):
                if encoder is None:
                    from tfrec.text.catalog import catalog_text_features, frozen_encoder  # TensorFlow and BERT, once per task

                    encoder = frozen_encoder(cfg)
                vectors, stats = catalog_text_features(frame["text"].tolist(), cfg, progress=False, encoder=encoder)
                dim, encoded, cached = vectors.shape[1], encoded + stats.encoded, cached + stats.hits
                for row, pid, vector in zip(frame["row"].tolist(), frame["product_id"].tolist(), vectors):
                    writer.write(encode_example({"row": int(row), "product_id": pid, "vector": vector.astype(np.float32)}))
            entry = writer.close()
        yield pd.DataFrame({"summary": [json.dumps({"part": part, "shard": entry, "dim": int(dim), "encoded": int(encoded),
                                                    "from_cache": int(cached)})]})


def _chunks(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """Arrow batches regrouped into frames of about ``rows`` rows."""
    import pandas as pd

    pending, count = [], 0
    for batch in batches:
        pending.append(batch)
        count += len(batch)
        if count >= rows:
            yield pd.concat(pending)
            pending, count = [], 0
    if count:
        yield pd.concat(pending)
