"""SavedModels of a trained search run: ``search_retrieval``, ``search_ranker`` and the one-call ``search``.

All take raw strings and need only TensorFlow and tensorflow-text to load (tokenizer, BERT,
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
* ``search/<version>/`` ``serving_default``: ``query`` string [None] -> ``product_ids``, ``titles``
  string [None, K], ``scores`` float32 [None, K] (the ranker's score, or the hybrid score when the
  run serves retrieval order), ``retrieval_scores`` float32 [None, K] and ``candidates`` int32
  [None] (retrieved products the ranker re-ordered; 0 in retrieval order): retrieval and ranking in
  one call, the numbers of the two models above (K: ``export.search_k``).

``export.catalog_dtype: float16`` stores ``search_retrieval``'s catalog matrices as float16 (half the
size; the hybrid scores stay float32). Each carries TF Serving warm-up records built from real catalog titles. Versions and the
temporary-folder-and-rename publication come from :mod:`tfrec.serving.savedmodel`. An optional
ScaNN export (dense two-tower scores only, approximate) goes to ``<export_dir>/scann/``, outside
the folders a stock server is pointed at, because it needs a ScaNN-enabled server.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from tfrec import compat
from tfrec.search.features import RankerFeatures
from tfrec.search.hybrid import HybridScorer, HybridWeights
from tfrec.search.models import build_retrieval, catalog_features, ranker_head, retrieval_model
from tfrec.serving.service import CATALOG_FILE, RANKER_MODEL as RANKER_NAME, RETRIEVAL_MODEL as RETRIEVAL_NAME, SEARCH_MODEL as SEARCH_NAME
from tfrec.serving.bounded import DEFAULT_CHUNK_ROWS, map_row_chunks
from tfrec.serving.catalog_file import catalog_json
from tfrec.serving.publish import ExportSet
from tfrec.serving.savedmodel import REGRESS_METHOD, predict_log, regress_log
from tfrec.config.loader import load_config
from tfrec.data.datasets import load_data
from tfrec.data.slices import slice_for_config
from tfrec.data.tables import Catalog
from tfrec.evaluation.chunks import SCORE_CELLS, row_chunk
from tfrec.lexical import LexicalScorer
from tfrec.lexical.scorer import CatalogPairFeatures
from tfrec.lexical.index import LexicalIndex
from tfrec.ranking.model import LEXICAL_FEATURES
from tfrec.retrieval.index import build_index
from tfrec.runs import RunFolder, SEARCH
from tfrec.text.catalog import catalog_text_features, frozen_encoder
from tfrec.text.fusion import CatalogFeatureLookup

tf = compat.tensorflow()

RANKER_FEATURES = ("query", "product_id", "title")
# Ranker rows per pass: each new title is a BERT pass and lexical work over up to 8 KiB of text.
RANKER_CHUNK_ROWS = 64
# (query, candidate) pairs the one-call search scores per pass: lexical features only (its candidates'
# vectors are catalog rows), each pair bounded by the query's scored bytes and the catalog's text.
SEARCH_PAIRS = 256
SCANN_DIR = "scann"
SCANN_NAME = SCANN_DIR + "/" + RETRIEVAL_NAME  # its model folder, relative to the export folder
# Warm-up queries: typical, empty, and a long one (the tokenizer truncates it).
WARMUP_QUERIES = ("cordless drill", "", "1/2 in. x 10 ft. copper pipe " * 20)


class RetrievalExport(tf.Module):
    """query strings -> top-K product ids and hybrid scores over the whole catalog (:class:`HybridScorer`)."""

    def __init__(self, retrieval: Any, zero_encoder: Any, lexical: Any, catalog_dense: np.ndarray,
                 catalog_zero: np.ndarray, ids: np.ndarray, weights: HybridWeights, k: int,
                 chunk_rows: Optional[int] = None, catalog_dtype: str = "float32") -> None:
        super().__init__()
        self.query_encoder = retrieval.query_encoder
        self.zero_encoder = zero_encoder if weights.zero_shot else None
        # Only the components the weights use are saved; catalog_dtype float16 halves their matrices.
        self.hybrid = HybridScorer(catalog_dense, catalog_zero if weights.zero_shot else None, lexical if weights.lexical else None,
                                   dtype=catalog_dtype)
        self.ids = tf.Variable(np.asarray(ids).astype(str).astype(object), trainable=False, dtype=tf.string, name="product_ids")
        self.weights = weights
        self.k = int(min(k, len(ids)))
        # A few [chunk_rows, N] score matrices are alive at once, whatever the request's batch size:
        # DEFAULT_CHUNK_ROWS, fewer on catalogs over 524,288 products (each matrix within 64 MB).
        self.chunk_rows = chunk_rows or row_chunk(len(ids), SCORE_CELLS // 4, most=DEFAULT_CHUNK_ROWS)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
    def serve(self, query: Any) -> dict:
        """The serving signature."""
        ids, scores = map_row_chunks(self._top_k, [query], self.chunk_rows, [(tf.string, [self.k]), (tf.float32, [self.k])])
        return {"product_ids": ids, "scores": scores}

    def _top_k(self, query: Any) -> tuple[Any, Any]:
        q_zero = self.zero_encoder(query, training=False) if self.zero_encoder is not None else None
        rows, scores = self.hybrid.top_k(self.query_encoder(query, training=False), q_zero, query, self.weights, self.k)
        return tf.gather(self.ids, rows), scores


class RankerExport(tf.Module):
    """(query, product_id, title) strings -> the ranker's score of each pair.

    The head scores what :class:`RankerFeatures` computes, as in training. Given the catalog, a
    catalog product sent with its catalog title takes its product vectors from the exported catalog
    matrices (the numbers the evaluation used) instead of running both BERT towers on its title;
    other pairs (new ids, changed titles) are encoded. A re-rank request repeats one query ~100
    times: each distinct query is encoded once. A head that fuses catalog columns needs
    ``catalog_columns`` (the run's :class:`~tfrec.text.fusion.CatalogFeatureLookup`): they are looked
    up by product id in the graph, an id outside the catalog getting the missing values.
    """

    def __init__(self, retrieval: Any, zero_encoder: Any, lexical: Any, head: Any, catalog_dense: Optional[np.ndarray] = None,
                 catalog_zero: Optional[np.ndarray] = None, ids: Optional[np.ndarray] = None, titles: Optional[np.ndarray] = None,
                 chunk_rows: int = RANKER_CHUNK_ROWS, catalog_columns: Optional[CatalogFeatureLookup] = None) -> None:
        super().__init__()
        if head.column_inputs and catalog_columns is None:
            raise ValueError("the ranker head fuses catalog columns (%s): give RankerExport the run's catalog_columns to look "
                             "them up" % ", ".join(head.column_inputs))
        if catalog_columns is not None and not head.column_inputs:
            raise ValueError("RankerExport was given catalog_columns but the ranker head fuses none")
        self.retrieval, self.zero_encoder, self.lexical, self.head = retrieval, zero_encoder, lexical, head
        self.chunk_rows = chunk_rows
        self.features = RankerFeatures(lexical.pair_features, catalog_dense, catalog_zero, ids, titles,
                                       retrieval=retrieval, zero_encoder=zero_encoder, catalog_columns=catalog_columns,
                                       name="ranker_features")

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="query"),
        tf.TensorSpec([None], tf.string, name="product_id"),
        tf.TensorSpec([None], tf.string, name="title"),
    ])
    def serve(self, query: Any, product_id: Any, title: Any) -> dict:
        """The serving signature."""
        # The work of a row grows with its texts (BERT over new titles, lexical features): score a
        # bounded number of rows at a time, so a request's peak memory does not grow with its batch.
        vectors = self.features.encode_queries(query, self.chunk_rows)
        inputs = [query, product_id, title, vectors["query_vector"], vectors["query_zero"]]
        return {"score": map_row_chunks(self._score, inputs, self.chunk_rows, [(tf.float32, [])])[0]}

    def pair_inputs(self, query: Any, product_id: Any, title: Any, query_vector: Any, query_zero: Any) -> dict:
        """The head's inputs of aligned (query, product_id, title) rows [B]: lists of one item."""
        return self.features({"query": query, "query_vector": query_vector, "query_zero": query_zero,
                              "product_id": product_id[:, None], "title": title[:, None]})

    def _score(self, query: Any, product_id: Any, title: Any, query_vector: Any, query_zero: Any) -> list:
        return [self.head(self.pair_inputs(query, product_id, title, query_vector, query_zero), training=False)[:, 0]]

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
    catalog_columns: Optional[CatalogFeatureLookup] = None  # the catalog columns the ranker head fuses
    rerank: bool = True  # whether the run kept its ranker (else the service keeps retrieval order)
    catalog_dtype: str = "float32"  # export.catalog_dtype: how search_retrieval stores its catalog matrices
    search_k: int = 10  # export.search_k: results per query of the one-call search model


class SearchExport(tf.Module):
    """query strings -> the final top-K in one call: hybrid retrieval of the run's top_k, re-ranked by its ranker.

    Computes what ``search_retrieval`` then ``search_ranker`` compute for the same query (the
    service's two calls): each query is encoded once and its vectors serve both stages; the
    candidates are catalog rows, so the ranker reads their vectors by row from the matrices the
    :class:`HybridScorer` scores with (one copy of each in the SavedModel) instead of encoding
    titles, and their lexical features from the titles' terms and 3-grams precomputed at export
    (:class:`~tfrec.lexical.scorer.CatalogPairFeatures`, the same numbers), each query tokenized once. Equal ranker scores keep the retrieval order. A run that did not keep its ranker
    (``models.rerank`` false) serves the retrieval order and scores. Queries go through in chunks
    of at most :data:`SEARCH_PAIRS` (query, candidate) pairs, so a request's memory stays bounded.
    """

    def __init__(self, models: SearchModels, k: Optional[int] = None, chunk_rows: Optional[int] = None) -> None:
        super().__init__()
        size = len(models.ids)
        self.candidates = int(min(models.top_k, size))
        self.k = int(min(models.search_k if k is None else k, self.candidates))
        if self.k < 1:
            raise ValueError("the search model needs k >= 1 results per query, got %r" % (k if k is not None else models.search_k,))
        self.weights = models.weights
        self.rerank = bool(models.rerank)
        head = models.head if self.rerank else None
        if head is not None and head.column_inputs and models.catalog_columns is None:
            raise ValueError("the ranker head fuses catalog columns (%s): SearchModels.catalog_columns must hold them"
                             % ", ".join(head.column_inputs))
        # The ranker reads zero-shot vectors even when the hybrid score gives them weight 0.
        needs_zero = bool(self.weights.zero_shot) or self.rerank
        self.query_encoder = models.retrieval.query_encoder
        self.zero_encoder = models.zero_encoder if needs_zero else None
        self.lexical = models.lexical
        self.hybrid = HybridScorer(models.catalog_dense, models.catalog_zero if needs_zero else None,
                                   models.lexical if self.weights.lexical else None, dtype=models.catalog_dtype)
        self.ids = tf.Variable(np.asarray(models.ids).astype(str).astype(object), trainable=False, dtype=tf.string, name="product_ids")
        titles = np.asarray(models.titles).astype(str).astype(object)
        self.titles = tf.Variable(titles, trainable=False, dtype=tf.string, name="titles")
        self.head = head
        self.features = self.catalog_lexical = None
        if head is not None:
            # The candidates are catalog rows: their titles' lexical side is computed here, once, not per request.
            self.catalog_lexical = CatalogPairFeatures(models.lexical, titles, name="catalog_lexical")
            self.features = RankerFeatures(models.lexical.pair_features, self.hybrid.catalog_dense, self.hybrid.catalog_zero,
                                           catalog_columns=models.catalog_columns if head.column_inputs else None,
                                           catalog_pair_features=self.catalog_lexical.pair_features, name="ranker_features")
        retrieval_rows = row_chunk(size, SCORE_CELLS // 4, most=DEFAULT_CHUNK_ROWS)
        pair_rows = max(1, SEARCH_PAIRS // self.candidates) if self.rerank else retrieval_rows
        self.chunk_rows = chunk_rows or min(retrieval_rows, pair_rows)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
    def serve(self, query: Any) -> dict:
        """The serving signature."""
        k = [self.k]
        ids, titles, scores, first = map_row_chunks(self._search, [query], self.chunk_rows,
                                                    [(tf.string, k), (tf.string, k), (tf.float32, k), (tf.float32, k)])
        reordered = tf.fill(tf.shape(query), tf.constant(self.candidates if self.rerank else 0, tf.int32))
        return {"product_ids": ids, "titles": titles, "scores": scores, "retrieval_scores": first, "candidates": reordered}

    def _search(self, query: Any) -> list:
        q_dense = self.query_encoder(query, training=False)
        q_zero = self.zero_encoder(query, training=False) if self.zero_encoder is not None else None
        rows, first = self.hybrid.top_k(q_dense, q_zero, query, self.weights, self.candidates)
        if self.head is None:
            rows, first = rows[:, : self.k], first[:, : self.k]
            return [tf.gather(self.ids, rows), tf.gather(self.titles, rows), first, first]
        ids, titles = tf.gather(self.ids, rows), tf.gather(self.titles, rows)
        inputs = self.features({"query": query, "query_vector": q_dense, "query_zero": q_zero,
                                "product_id": ids, "title": titles, "product_row": rows})
        # top_k puts the lower index first among equal scores: ties keep the retrieval order.
        top = tf.math.top_k(self.head(inputs, training=False), k=self.k)
        order = top.indices
        return [tf.gather(ids, order, batch_dims=1), tf.gather(titles, order, batch_dims=1), top.values,
                tf.gather(first, order, batch_dims=1)]


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
    """Write the three SavedModels (and the ScaNN one with ``scann``) as one version, published together.

    Each carries warm-up records (retrieval and search also the catalog file) and a marker naming
    ``run``; returns {name: {"path", "mb"}}.
    """
    retrieval = RetrievalExport(
        models.retrieval, models.zero_encoder, models.lexical, models.catalog_dense, models.catalog_zero,
        models.ids, models.weights, models.top_k, catalog_dtype=models.catalog_dtype,
    )
    ranker = RankerExport(models.retrieval, models.zero_encoder, models.lexical, models.head,
                          models.catalog_dense, models.catalog_zero, models.ids, models.titles,
                          catalog_columns=models.catalog_columns)
    pairs = _warmup_pairs(models)
    examples = [dict(zip(RANKER_FEATURES, values)) for values in zip(*(pairs[f] for f in RANKER_FEATURES))]
    catalog = catalog_json(models.ids, models.titles, rerank=models.rerank)
    names = [RETRIEVAL_NAME, RANKER_NAME, SEARCH_NAME] + ([SCANN_NAME] if scann else [])
    with ExportSet(export_dir, names, run=run, version=version) as export:
        export.save(
            RETRIEVAL_NAME, retrieval, {"serving_default": retrieval.serve},
            warmup=[predict_log(RETRIEVAL_NAME, {"query": list(WARMUP_QUERIES)}), predict_log(RETRIEVAL_NAME, {"query": [WARMUP_QUERIES[0]]})],
            extra_files={CATALOG_FILE: catalog},
        )
        export.save(
            RANKER_NAME, ranker, {"serving_default": ranker.serve, "regress": ranker.regress},
            warmup=[predict_log(RANKER_NAME, pairs), predict_log(RANKER_NAME, {k: v[:1] for k, v in pairs.items()}),
                    regress_log(RANKER_NAME, examples)],
            methods={"regress": REGRESS_METHOD},
        )
        _save_search(export, models, catalog)
        if scann:
            _save_scann(export, models)
    if scann:
        _write_scann_readme(Path(export_dir))
    return export.published


def _save_search(export: ExportSet, models: SearchModels, catalog: Optional[bytes] = None) -> None:
    """Add the one-call ``search`` model (:class:`SearchExport`) to ``export``, with its warm-up records and catalog file."""
    module = SearchExport(models)
    export.save(
        SEARCH_NAME, module, {"serving_default": module.serve},
        warmup=[predict_log(SEARCH_NAME, {"query": list(WARMUP_QUERIES)}), predict_log(SEARCH_NAME, {"query": [WARMUP_QUERIES[0]]})],
        extra_files={CATALOG_FILE: catalog if catalog is not None else catalog_json(models.ids, models.titles, rerank=models.rerank)},
    )


class ScannRetrievalExport(tf.Module):
    """query strings -> approximate top-K by the two-tower score alone, through a ScaNN index."""

    def __init__(self, retrieval: Any, catalog_dense: np.ndarray, ids: np.ndarray, k: int) -> None:
        super().__init__()

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
        extra_files={CATALOG_FILE: catalog_json(models.ids, models.titles, rerank=models.rerank)},
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


@dataclass(frozen=True)
class ServedCatalog:
    """A catalog served in place of the run's own (``tfrec catalog update``): its products, BM25 index and vectors."""

    catalog: Catalog  # every product served: ids, its text (the title) and the catalog columns
    lexical: LexicalIndex  # BM25 over its titles
    # (retrieval model, zero-shot encoder) -> (product vectors [N, dim], zero-shot vectors [N, zdim]) of its products
    vectors: Callable[[Any, Any], tuple[np.ndarray, np.ndarray]]


def load_search_models(run_dir: Path, served: Optional[ServedCatalog] = None) -> SearchModels:
    """Rebuild a run's trained search models from its folder (config, weights, index, vectors).

    ``served`` replaces the run's catalog (products, catalog columns, BM25 index and vectors); the models stay the run's.
    """
    folder = RunFolder(run_dir)
    if folder.record() is not None and folder.kind() != SEARCH:
        raise ValueError("%s is a %s run, not a search run: it has no search models" % (folder.root, folder.kind()))
    folder.require(folder.config, folder.search_settings, folder.retrieval_weights, folder.ranker_weights,
                   folder.catalog_vectors, what="trained search run")
    loaded = load_config(folder.config, [])
    cfg = loaded.config
    data = load_data(loaded)
    data = slice_for_config(data, cfg)
    search = json.loads(folder.search_settings.read_text(encoding="utf-8"))
    catalog = data.catalog if served is None else served.catalog
    titles, ids = catalog.text().astype(str), catalog.ids.astype(str)
    columns = catalog_features(cfg, catalog)

    # The towers and the head are built on the run's catalog: its column statistics are part of the trained models.
    retrieval = retrieval_model(cfg, _read_lines(folder.retrieval_vocabulary), catalog=data.catalog)
    if served is not None and columns is not None:
        retrieval.catalog_features = columns  # products the run never saw get their own columns, not missing ones
    build_retrieval(retrieval)
    retrieval.load_weights(str(folder.retrieval_weights)).expect_partial()

    zero_encoder = frozen_encoder(cfg.text)
    if served is None:
        catalog_dense = np.load(folder.catalog_vectors)
        if catalog_dense.shape[0] != len(ids):
            raise ValueError("%s has %d vectors but the run's catalog has %d products" % (folder.root, catalog_dense.shape[0], len(ids)))
        catalog_zero, _ = catalog_text_features(list(titles), cfg.text, progress=True, encoder=zero_encoder)
    else:
        catalog_dense, catalog_zero = served.vectors(retrieval, zero_encoder)
        if catalog_dense.shape[0] != len(ids) or catalog_zero.shape[0] != len(ids):
            raise ValueError("%d and %d vectors for a served catalog of %d products" % (catalog_dense.shape[0], catalog_zero.shape[0], len(ids)))

    head = ranker_head(cfg, _read_lines(folder.ranker_vocabulary) or None, data.catalog)
    dim, zdim = retrieval.dim, zero_encoder.output_dim
    head({"query_vector": tf.zeros([1, dim]), "product_vector": tf.zeros([1, 1, dim]), "query_zero": tf.zeros([1, zdim]),
          "product_zero": tf.zeros([1, 1, zdim]), "lexical": tf.zeros([1, 1, len(LEXICAL_FEATURES)]),
          "product_id": tf.constant([[""]]), **head.missing_columns([1, 1])})
    head.load_weights(str(folder.ranker_weights)).expect_partial()
    head.lexical_norm.finalize_state()  # Normalization reads its adapted statistics only here

    return SearchModels(
        retrieval=retrieval, zero_encoder=zero_encoder, head=head,
        lexical=LexicalScorer(folder.lexical if served is None else served.lexical, max_query_terms=cfg.retrieval.query_max_terms),
        catalog_dense=catalog_dense, catalog_zero=catalog_zero, ids=ids, titles=titles,
        weights=HybridWeights(**search["hybrid_weights"]), top_k=int(search["top_k"]),
        catalog_columns=columns,
        rerank=bool(search.get("rerank", True)),  # runs before the choice existed always re-ranked
        catalog_dtype=cfg.export.catalog_dtype,
        search_k=cfg.export.search_k,
    )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]
