"""SavedModels of a trained search run: ``search_retrieval`` and ``search_ranker``.

Both take raw strings and need only TensorFlow to load (tokenizer, BERT, lexical index and
catalog vectors are all in the graph; no ScaNN ops, so stock TF Serving loads them):

* ``search_retrieval/<version>/`` ``serving_default``: ``query`` string [None] ->
  ``product_ids`` string [None, K], ``scores`` float32 [None, K] (the hybrid score).
* ``search_ranker/<version>/`` ``serving_default``: ``query``, ``product_id``, ``title`` string
  [None] -> ``score`` float32 [None], the ranker's per-item score (any candidate list can be
  scored; ids outside the training vocabulary take the text-only path).

Versions are integers (TF Serving's folder convention): one more than the largest present. Each
is written to a hidden temporary folder and renamed into place, so a server polling the folder
never sees half a model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec import compat
from tfrec.search.hybrid import HybridWeights, hybrid_scores
from tfrec.search.models import ranker_head, retrieval_model

tf = compat.tensorflow()

RETRIEVAL_NAME = "search_retrieval"
RANKER_NAME = "search_ranker"


class RetrievalExport(tf.Module):
    """query strings -> top-K product ids and hybrid scores over the whole catalog."""

    def __init__(self, retrieval: Any, zero_encoder: Any, lexical: Any, catalog_dense: np.ndarray,
                 catalog_zero: np.ndarray, ids: np.ndarray, weights: HybridWeights, k: int) -> None:
        super().__init__()
        self.query_encoder = retrieval.query_encoder
        self.zero_encoder = zero_encoder if weights.zero_shot else None
        self.lexical = lexical if weights.lexical else None
        self.catalog_dense = tf.Variable(catalog_dense, trainable=False, name="catalog_dense")
        self.catalog_zero = tf.Variable(catalog_zero, trainable=False, name="catalog_zero") if weights.zero_shot else None
        self.ids = tf.Variable(np.asarray(ids).astype(str).astype(object), trainable=False, dtype=tf.string, name="product_ids")
        self.weights = weights
        self.k = int(min(k, len(ids)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
    def serve(self, query: Any) -> dict:
        """The serving signature."""
        dense = tf.matmul(self.query_encoder(query, training=False), self.catalog_dense, transpose_b=True)
        lexical = self.lexical.catalog_scores(query) if self.lexical is not None else dense
        zero = (
            tf.matmul(self.zero_encoder(query, training=False), self.catalog_zero, transpose_b=True)
            if self.zero_encoder is not None else dense
        )
        top = tf.math.top_k(hybrid_scores(dense, lexical, zero, self.weights), k=self.k)
        return {"product_ids": tf.gather(self.ids, top.indices), "scores": top.values}


class RankerExport(tf.Module):
    """(query, product_id, title) strings -> the ranker's score of each pair."""

    def __init__(self, retrieval: Any, zero_encoder: Any, lexical: Any, head: Any) -> None:
        super().__init__()
        self.retrieval, self.zero_encoder, self.lexical, self.head = retrieval, zero_encoder, lexical, head

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="query"),
        tf.TensorSpec([None], tf.string, name="product_id"),
        tf.TensorSpec([None], tf.string, name="title"),
    ])
    def serve(self, query: Any, product_id: Any, title: Any) -> dict:
        """The serving signature."""
        from tfrec.ranking.model import LEXICAL_FEATURES

        q = self.retrieval.query_vectors(query)
        p = self.retrieval.product_vectors(product_id, title)
        lexical = self.lexical.pair_features(query, title)
        inputs = {
            "query_vector": q,
            "product_vector": p[:, None, :],
            "query_zero": self.zero_encoder(query, training=False),
            "product_zero": self.zero_encoder(title, training=False)[:, None, :],
            "lexical": tf.stack([lexical[name] for name in LEXICAL_FEATURES], axis=-1)[:, None, :],
            "product_id": product_id[:, None],
        }
        return {"score": self.head(inputs, training=False)[:, 0]}


def next_version(model_dir: Path) -> int:
    """One more than the largest integer version folder (1 for a new model)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def save_versioned(module: tf.Module, export_dir: Path, name: str, version: Optional[int] = None) -> Path:
    """Write a SavedModel to export_dir/name/<version>/ through a temporary folder and a rename."""
    model_dir = Path(export_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError("%s already exists: versions are never overwritten (pick another version)" % final)
    tmp = Path(tempfile.mkdtemp(prefix=".%d.tmp-" % version, dir=model_dir))
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def folder_mb(path: Path) -> float:
    """Size of a folder in MB."""
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 1)


@dataclass
class SearchModels:
    """Everything the exports need from a trained search run."""

    retrieval: Any
    zero_encoder: Any
    lexical: Any
    head: Any
    catalog_dense: np.ndarray
    catalog_zero: np.ndarray
    ids: np.ndarray
    weights: HybridWeights
    top_k: int


def export_search(models: SearchModels, export_dir: Path, version: Optional[int] = None) -> dict[str, dict]:
    """Write both SavedModels; returns {name: {"path", "mb"}}."""
    retrieval = RetrievalExport(
        models.retrieval, models.zero_encoder, models.lexical, models.catalog_dense, models.catalog_zero,
        models.ids, models.weights, models.top_k,
    )
    ranker = RankerExport(models.retrieval, models.zero_encoder, models.lexical, models.head)
    out = {}
    for name, module in ((RETRIEVAL_NAME, retrieval), (RANKER_NAME, ranker)):
        path = save_versioned(module, export_dir, name, version)
        out[name] = {"path": str(path), "mb": folder_mb(path)}
    return out


def load_search_models(run_dir: Path) -> SearchModels:
    """Rebuild a run's trained search models from its folder (config, weights, index, vectors)."""
    from tfrec.config.loader import load_config
    from tfrec.data.datasets import load_data
    from tfrec.data.slices import slice_search_data
    from tfrec.lexical import LexicalScorer
    from tfrec.ranking.model import LEXICAL_FEATURES
    from tfrec.runs import CONFIG_FILE
    from tfrec.text.catalog import catalog_text_features, frozen_encoder

    run_dir = Path(run_dir)
    needed = [run_dir / CONFIG_FILE, run_dir / "search_config.json", run_dir / "retrieval" / "weights.index",
              run_dir / "ranker" / "weights.index", run_dir / "retrieval" / "catalog_vectors.npy"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError("%s holds no complete trained search run; missing: %s" % (run_dir, ", ".join(missing)))
    loaded = load_config(run_dir / CONFIG_FILE, [])
    cfg = loaded.config
    data = load_data(loaded)
    dc = cfg.data
    data = slice_search_data(data, max_train_queries=dc.max_train_queries, max_valid_queries=dc.max_valid_queries,
                             max_products=dc.max_products, seed=cfg.run.seed)
    search = json.loads((run_dir / "search_config.json").read_text(encoding="utf-8"))
    titles, ids = data.catalog.text().astype(str), data.catalog.ids.astype(str)
    catalog_dense = np.load(run_dir / "retrieval" / "catalog_vectors.npy")
    if catalog_dense.shape[0] != len(ids):
        raise ValueError("%s has %d vectors but the run's catalog has %d products" % (run_dir, catalog_dense.shape[0], len(ids)))

    retrieval = retrieval_model(cfg, _read_lines(run_dir / "retrieval" / "product_vocabulary.txt"))
    retrieval({"query": tf.constant(["a"]), "product_id": tf.constant(["a"]), "title": tf.constant(["a"])})
    retrieval.load_weights(str(run_dir / "retrieval" / "weights")).expect_partial()

    zero_encoder = frozen_encoder(cfg.text)
    catalog_zero, _ = catalog_text_features(list(titles), cfg.text, progress=True, encoder=zero_encoder)

    head = ranker_head(cfg, _read_lines(run_dir / "ranker" / "product_vocabulary.txt") or None)
    dim, zdim = retrieval.dim, zero_encoder.output_dim
    head({"query_vector": tf.zeros([1, dim]), "product_vector": tf.zeros([1, 1, dim]), "query_zero": tf.zeros([1, zdim]),
          "product_zero": tf.zeros([1, 1, zdim]), "lexical": tf.zeros([1, 1, len(LEXICAL_FEATURES)]),
          "product_id": tf.constant([[""]])})
    head.load_weights(str(run_dir / "ranker" / "weights")).expect_partial()
    head.lexical_norm.finalize_state()  # Normalization reads its adapted statistics only here

    return SearchModels(
        retrieval=retrieval, zero_encoder=zero_encoder, lexical=LexicalScorer(run_dir / "lexical"), head=head,
        catalog_dense=catalog_dense, catalog_zero=catalog_zero, ids=ids,
        weights=HybridWeights(**search["hybrid_weights"]), top_k=int(search["top_k"]),
    )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]
