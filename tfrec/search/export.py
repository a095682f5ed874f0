"""SavedModels of a trained search run: ``search_retrieval`` and ``search_ranker``.

Both take raw strings and need only TensorFlow and tensorflow-text to load (tokenizer, BERT,
lexical index and catalog vectors are all in the graph; no ScaNN ops, so stock TF Serving loads
them):

* ``search_retrieval/<version>/`` ``serving_default``: ``query`` string [None] ->
  ``product_ids`` string [None, K], ``scores`` float32 [None, K] (the hybrid score). Its
  ``assets.extra/catalog.json`` holds the catalog ids and titles the service pipeline looks up.
* ``search_ranker/<version>/`` ``serving_default``: ``query``, ``product_id``, ``title`` string
  [None] -> ``score`` float32 [None], the ranker's per-item score (any candidate list can be
  scored; catalog products sent with their catalog title use the exported catalog vectors, other
  pairs are encoded, and ids outside the training vocabulary take the text-only path); ``regress`` (method
  ``tensorflow/serving/regress``): ``inputs`` serialized ``tf.Example``s with bytes features
  ``query``, ``product_id``, ``title`` -> ``outputs`` float32 [None] (TF Serving's Regress API).

Each carries TF Serving warm-up records built from real catalog titles. Versions and the
temporary-folder-and-rename publication come from :mod:`tfrec.serving.savedmodel`. An optional
ScaNN export (dense two-tower scores only, approximate) goes to ``<export_dir>/scann/``, outside
the folders a stock server is pointed at, because it needs a ScaNN-enabled server.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec import compat
from tfrec.search.hybrid import HybridWeights, hybrid_scores
from tfrec.search.models import build_retrieval, ranker_head, retrieval_model
from tfrec.serving.service import CATALOG_FILE, RANKER_MODEL as RANKER_NAME, RETRIEVAL_MODEL as RETRIEVAL_NAME
from tfrec.serving.bounded import DEFAULT_CHUNK_ROWS, map_row_chunks
from tfrec.serving.publish import ExportSet
from tfrec.serving.savedmodel import REGRESS_METHOD, predict_log, regress_log

tf = compat.tensorflow()

RANKER_FEATURES = ("query", "product_id", "title")
# Ranker rows per pass: each new title is a BERT pass and lexical work over up to 8 KiB of text.
RANKER_CHUNK_ROWS = 64
SCANN_DIR = "scann"
SCANN_NAME = SCANN_DIR + "/" + RETRIEVAL_NAME  # its model folder, relative to the export folder
# Warm-up queries: typical, empty, and a long one (the tokenizer truncates it).
WARMUP_QUERIES = ("cordless drill", "", "1/2 in. x 10 ft. copper pipe " * 20)


class RetrievalExport(tf.Module):
    """query strings -> top-K product ids and hybrid scores over the whole catalog."""

    def __init__(self, retrieval: Any, zero_encoder: Any, lexical: Any, catalog_dense: np.ndarray,
                 catalog_zero: np.ndarray, ids: np.ndarray, weights: HybridWeights, k: int,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        self.query_encoder = retrieval.query_encoder
        self.zero_encoder = zero_encoder if weights.zero_shot else None
        self.lexical = lexical if weights.lexical else None
        self.catalog_dense = tf.Variable(catalog_dense, trainable=False, name="catalog_dense")
        self.catalog_zero = tf.Variable(catalog_zero, trainable=False, name="catalog_zero") if weights.zero_shot else None
        self.ids = tf.Variable(np.asarray(ids).astype(str).astype(object), trainable=False, dtype=tf.string, name="product_ids")
        self.weights = weights
        self.k = int(min(k, len(ids)))
        # A few [chunk_rows, N] score matrices are alive at once, whatever the request's batch size.
        self.chunk_rows = chunk_rows

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
    def serve(self, query: Any) -> dict:
        """The serving signature."""
        ids, scores = map_row_chunks(self._top_k, [query], self.chunk_rows, [(tf.string, [self.k]), (tf.float32, [self.k])])
        return {"product_ids": ids, "scores": scores}

    def _top_k(self, query: Any) -> tuple[Any, Any]:
        dense = tf.matmul(self.query_encoder(query, training=False), self.catalog_dense, transpose_b=True)
        lexical = self.lexical.catalog_scores(query) if self.lexical is not None else dense
        zero = (
            tf.matmul(self.zero_encoder(query, training=False), self.catalog_zero, transpose_b=True)
            if self.zero_encoder is not None else dense
        )
        top = tf.math.top_k(hybrid_scores(dense, lexical, zero, self.weights), k=self.k)
        return tf.gather(self.ids, top.indices), top.values


class RankerExport(tf.Module):
    """(query, product_id, title) strings -> the ranker's score of each pair.

    Given the catalog, a catalog product sent with its catalog title takes its product vectors from
    the exported catalog matrices (the numbers the evaluation used) instead of running both BERT
    towers on its title; other pairs (new ids, changed titles) are encoded. A re-rank request
    repeats one query ~100 times: each distinct query is encoded once.
    """

    def __init__(self, retrieval: Any, zero_encoder: Any, lexical: Any, head: Any, catalog_dense: Optional[np.ndarray] = None,
                 catalog_zero: Optional[np.ndarray] = None, ids: Optional[np.ndarray] = None, titles: Optional[np.ndarray] = None,
                 chunk_rows: int = RANKER_CHUNK_ROWS) -> None:
        super().__init__()
        self.retrieval, self.zero_encoder, self.lexical, self.head = retrieval, zero_encoder, lexical, head
        self.chunk_rows = chunk_rows
        self.cached = ids is not None
        if self.cached:
            keys = np.asarray(ids).astype(str).astype(object)
            self.rows = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int64)), default_value=-1)
            self.catalog_titles = tf.Variable(np.asarray(titles).astype(str).astype(object), trainable=False, dtype=tf.string)
            self.catalog_dense = tf.Variable(catalog_dense, trainable=False, name="ranker_catalog_dense")
            self.catalog_zero = tf.Variable(catalog_zero, trainable=False, name="ranker_catalog_zero")

    def _per_query(self, query: Any) -> tuple[Any, Any]:
        # Each distinct query is encoded once for the whole request, before the per-row chunks.
        unique, index = tf.unique(query)
        encoders = (self.retrieval.query_encoder, self.zero_encoder)
        vectors = map_row_chunks(lambda q: [e(q, training=False) for e in encoders], [unique], self.chunk_rows,
                                 [(tf.float32, [e.output_dim]) for e in encoders])
        return tuple(tf.gather(v, index) for v in vectors)

    def _products(self, product_id: Any, title: Any) -> tuple[Any, Any]:
        if not self.cached:
            return self.retrieval.product_vectors(product_id, title), self.zero_encoder(title, training=False)
        rows = self.rows.lookup(product_id)
        known = (rows >= 0) & tf.equal(tf.gather(self.catalog_titles, tf.maximum(rows, 0)), title)
        known_at = tf.cast(tf.where(known)[:, 0], tf.int32)
        new_at = tf.cast(tf.where(~known)[:, 0], tf.int32)
        known_rows = tf.gather(rows, known_at)
        new_ids, new_titles = tf.gather(product_id, new_at), tf.gather(title, new_at)
        dim, zdim = self.catalog_dense.shape[1], self.catalog_zero.shape[1]
        new_dense, new_zero = tf.cond(
            tf.size(new_at) > 0,
            lambda: (self.retrieval.product_vectors(new_ids, new_titles), self.zero_encoder(new_titles, training=False)),
            lambda: (tf.zeros([0, dim]), tf.zeros([0, zdim])),
        )
        dense = tf.dynamic_stitch([known_at, new_at], [tf.gather(self.catalog_dense, known_rows), new_dense])
        zero = tf.dynamic_stitch([known_at, new_at], [tf.gather(self.catalog_zero, known_rows), new_zero])
        return tf.ensure_shape(dense, [None, dim]), tf.ensure_shape(zero, [None, zdim])

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="query"),
        tf.TensorSpec([None], tf.string, name="product_id"),
        tf.TensorSpec([None], tf.string, name="title"),
    ])
    def serve(self, query: Any, product_id: Any, title: Any) -> dict:
        """The serving signature."""
        # The work of a row grows with its texts (BERT over new titles, lexical features): score a
        # bounded number of rows at a time, so a request's peak memory does not grow with its batch.
        query_vector, query_zero = self._per_query(query)
        inputs = [query, product_id, title, query_vector, query_zero]
        return {"score": map_row_chunks(self._score, inputs, self.chunk_rows, [(tf.float32, [])])[0]}

    def _score(self, query: Any, product_id: Any, title: Any, query_vector: Any, query_zero: Any) -> list:
        from tfrec.ranking.model import LEXICAL_FEATURES

        p, p_zero = self._products(product_id, title)
        lexical = self.lexical.pair_features(query, title)
        inputs = {
            "query_vector": query_vector,
            "product_vector": p[:, None, :],
            "query_zero": query_zero,
            "product_zero": p_zero[:, None, :],
            "lexical": tf.stack([lexical[name] for name in LEXICAL_FEATURES], axis=-1)[:, None, :],
            "product_id": product_id[:, None],
        }
        return [self.head(inputs, training=False)[:, 0]]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs: Any) -> dict:
        """TF Serving's Regress API: serialized tf.Examples with query/product_id/title -> score."""
        spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in RANKER_FEATURES}
        features = tf.io.parse_example(inputs, spec)
        return {"outputs": self.serve(features["query"], features["product_id"], features["title"])["score"]}


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
    titles: np.ndarray
    weights: HybridWeights
    top_k: int


def catalog_json(ids: np.ndarray, titles: np.ndarray) -> bytes:
    """The catalog lookup file shipped with the retrieval export: {"ids": [...], "titles": [...]}."""
    return json.dumps({"ids": [str(i) for i in ids], "titles": [str(t) for t in titles]}, ensure_ascii=False).encode("utf-8")


def _warmup_pairs(models: SearchModels) -> dict[str, list[str]]:
    # Real catalog rows, an unknown id and an empty title: the paths a live request can take.
    rows = [0, len(models.ids) // 2]
    return {
        "query": [WARMUP_QUERIES[0]] * 2 + [WARMUP_QUERIES[1], WARMUP_QUERIES[2]],
        "product_id": [str(models.ids[r]) for r in rows] + ["unknown-product", str(models.ids[-1])],
        "title": [str(models.titles[r]) for r in rows] + ["a new product without an id", ""],
    }


def export_search(models: SearchModels, export_dir: Path, version: Optional[int] = None, run: str = "",
                  scann: bool = False) -> dict[str, dict]:
    """Write both SavedModels (and the ScaNN one with ``scann``) as one version, published together.

    Each carries warm-up records (retrieval also the catalog file) and a marker naming ``run``;
    returns {name: {"path", "mb"}}.
    """
    retrieval = RetrievalExport(
        models.retrieval, models.zero_encoder, models.lexical, models.catalog_dense, models.catalog_zero,
        models.ids, models.weights, models.top_k,
    )
    ranker = RankerExport(models.retrieval, models.zero_encoder, models.lexical, models.head,
                          models.catalog_dense, models.catalog_zero, models.ids, models.titles)
    pairs = _warmup_pairs(models)
    examples = [dict(zip(RANKER_FEATURES, values)) for values in zip(*(pairs[f] for f in RANKER_FEATURES))]
    names = [RETRIEVAL_NAME, RANKER_NAME] + ([SCANN_NAME] if scann else [])
    with ExportSet(export_dir, names, run=run, version=version) as export:
        export.save(
            RETRIEVAL_NAME, retrieval, {"serving_default": retrieval.serve},
            warmup=[predict_log(RETRIEVAL_NAME, {"query": list(WARMUP_QUERIES)}), predict_log(RETRIEVAL_NAME, {"query": [WARMUP_QUERIES[0]]})],
            extra_files={CATALOG_FILE: catalog_json(models.ids, models.titles)},
        )
        export.save(
            RANKER_NAME, ranker, {"serving_default": ranker.serve, "regress": ranker.regress},
            warmup=[predict_log(RANKER_NAME, pairs), predict_log(RANKER_NAME, {k: v[:1] for k, v in pairs.items()}),
                    regress_log(RANKER_NAME, examples)],
            methods={"regress": REGRESS_METHOD},
        )
        if scann:
            _save_scann(export, models)
    if scann:
        _write_scann_readme(Path(export_dir))
    return export.published


class ScannRetrievalExport(tf.Module):
    """query strings -> approximate top-K by the two-tower score alone, through a ScaNN index."""

    def __init__(self, retrieval: Any, catalog_dense: np.ndarray, ids: np.ndarray, k: int) -> None:
        super().__init__()
        from tfrec.retrieval.index import build_index

        self.query_encoder = retrieval.query_encoder
        self.index = build_index("scann", catalog_dense, k=k, identifiers=np.asarray(ids).astype(str).astype(object))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
    def serve(self, query: Any) -> dict:
        """The serving signature."""
        scores, product_ids = self.index(self.query_encoder(query, training=False))
        return {"product_ids": product_ids, "scores": scores}


def _save_scann(export: ExportSet, models: SearchModels) -> None:
    module = ScannRetrievalExport(models.retrieval, models.catalog_dense, models.ids, models.top_k)
    export.save(
        SCANN_NAME, module, {"serving_default": module.serve},
        warmup=[predict_log(RETRIEVAL_NAME, {"query": list(WARMUP_QUERIES)})],
        extra_files={CATALOG_FILE: catalog_json(models.ids, models.titles)},
        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]),
    )


def _write_scann_readme(export_dir: Path) -> None:
    (export_dir / SCANN_DIR / "README.txt").write_text(
        "These exports use ScaNN ops (Scann>...). Stock TensorFlow Serving cannot load them; serve them with a\n"
        "TF Serving build that links ScaNN's ops, or in Python after `import scann`. Scores are the two-tower\n"
        "score alone (no lexical or zero-shot part), approximate.\n", encoding="utf-8")


def export_scann(models: SearchModels, export_dir: Path, version: Optional[int] = None, run: str = "") -> dict[str, dict]:
    """Write only the ScaNN retrieval export under ``<export_dir>/scann/`` (needs a ScaNN-enabled server)."""
    with ExportSet(export_dir, [SCANN_NAME], run=run, version=version) as export:
        _save_scann(export, models)
    _write_scann_readme(Path(export_dir))
    return export.published


def load_search_models(run_dir: Path) -> SearchModels:
    """Rebuild a run's trained search models from its folder (config, weights, index, vectors)."""
    from tfrec.config.loader import load_config
    from tfrec.data.datasets import load_data
    from tfrec.data.slices import slice_for_config
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
    data = slice_for_config(data, cfg)
    search = json.loads((run_dir / "search_config.json").read_text(encoding="utf-8"))
    titles, ids = data.catalog.text().astype(str), data.catalog.ids.astype(str)
    catalog_dense = np.load(run_dir / "retrieval" / "catalog_vectors.npy")
    if catalog_dense.shape[0] != len(ids):
        raise ValueError("%s has %d vectors but the run's catalog has %d products" % (run_dir, catalog_dense.shape[0], len(ids)))

    retrieval = retrieval_model(cfg, _read_lines(run_dir / "retrieval" / "product_vocabulary.txt"))
    build_retrieval(retrieval)
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
        retrieval=retrieval, zero_encoder=zero_encoder, lexical=LexicalScorer(run_dir / "lexical", max_query_terms=cfg.retrieval.query_max_terms), head=head,
        catalog_dense=catalog_dense, catalog_zero=catalog_zero, ids=ids, titles=titles,
        weights=HybridWeights(**search["hybrid_weights"]), top_k=int(search["top_k"]),
    )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]
