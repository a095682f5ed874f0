"""The search baselines every report compares against, scored with :mod:`tfrec.evaluation.search`.

1. BM25 over titles (``bm25s``, Lucene variant, k1=1.5, b=0.75), plain and stemmed (PyStemmer).
2. Zero-shot MiniLM: cosine of frozen query and title vectors.
3. A hybrid: per query, z-scores of stemmed BM25 and of MiniLM over the whole catalog, summed.
4. Stemmed BM25's top 100 re-ranked by MiniLM cosine (whole-catalog view only).

Tokenization, chosen by measuring on Home Depot valid: lowercase, letter runs and digit runs as
separate tokens ("18in" -> "18", "in"), bm25s's English stopwords. tfrec's own lexical index
shares these settings through the module constants. Importing this module does not import
TensorFlow; :class:`MiniLMBaseline` does when built.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence

import numpy as np

from tfrec.config.schema import TextConfig
from tfrec.data.tables import Judgments
from tfrec.evaluation.chunks import SCORE_CELLS, row_chunk
from tfrec.evaluation.search import (
    SearchEvalSet,
    end_to_end_ndcg,
    perfect_rerank_ndcg,
    random_rerank_ndcg_per_query,
    recall_at_k_per_query,
    rerank_ndcg,
    retrieval_report,
    seen_products,
    split_by_seen,
    top_k,
)
from tfrec.evaluation.zscore import zscore
from tfrec import compat
from tfrec.text.cache import resolve_cache_dir

TOKEN_PATTERN = r"[a-z]+|\d+"
STOPWORDS = "en"
STEMMER_LANGUAGE = "english"
BM25_METHOD = "lucene"
BM25_K1 = 1.5
BM25_B = 0.75
QUERY_CHUNK = 128  # queries per dense [chunk, catalog] float32 score matrix (28 MB for 54,667 products)
# Scores per [chunk, catalog] matrix: five are alive at once in _score_all (four systems and the
# hybrid's z-scores), so larger catalogs take fewer queries per chunk (16 at 1M products).
CHUNK_CELLS = SCORE_CELLS // 4
RERANK_DEPTH = 100
BASELINES = ("bm25", "bm25_stemmed", "minilm_zero_shot", "hybrid_bm25_minilm", "bm25_rerank_minilm")

log = logging.getLogger(__name__)


def bm25_tokenize(texts: Sequence[str], stem: bool, *, return_ids: bool = False) -> Any:
    """Tokenize with the shared settings via ``bm25s.tokenize`` (token lists, or bm25s ids when ``return_ids``)."""
    import bm25s

    return bm25s.tokenize(
        [str(t) for t in texts],
        lower=True,
        token_pattern=TOKEN_PATTERN,
        stopwords=STOPWORDS,
        stemmer=_stemmer() if stem else None,
        return_ids=return_ids,
        show_progress=False,
    )


def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer(STEMMER_LANGUAGE)


def _check_k(k: int, n_catalog: int) -> None:
    if not 1 <= k <= n_catalog:
        raise ValueError("k must be in [1, %d] (the catalog size), got %d" % (n_catalog, k))


class Bm25Baseline:
    """BM25 over product titles with bm25s; ``stem`` adds the English Snowball stemmer."""

    def __init__(self, titles: Sequence[str], stem: bool):
        import bm25s

        self.stem = bool(stem)
        self.n_catalog = len(titles)
        if self.n_catalog == 0:
            raise ValueError("Bm25Baseline needs at least one title")
        self.retriever = bm25s.BM25(method=BM25_METHOD, k1=BM25_K1, b=BM25_B)
        self.retriever.index(bm25_tokenize(titles, self.stem, return_ids=True), show_progress=False)

    def _query_scores(self, tokens: list[str]) -> np.ndarray:
        known = [t for t in tokens if t and t in self.retriever.vocab_dict]
        if not known:  # get_scores rejects an empty token list; such a query matches nothing
            return np.zeros(self.n_catalog, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(known), dtype=np.float32)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """Dense BM25 scores float32 [Q, n_catalog] (callers chunk the queries: 4 bytes per product each)."""
        tokens = bm25_tokenize(queries, self.stem)
        out = np.empty((len(tokens), self.n_catalog), dtype=np.float32)
        for i, query_tokens in enumerate(tokens):
            out[i] = self._query_scores(query_tokens)
        return out

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows int32 [Q, k] and their scores float32 [Q, k] (ties as :func:`top_k`)."""
        _check_k(k, self.n_catalog)
        return _chunked_top_k(lambda s, e: self.scores(queries[s:e]), len(queries), k, self.n_catalog)

    def score_pairs(self, queries_per_pair: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """BM25 score float32 of each (query, catalog row) pair."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(queries_per_pair):
            raise ValueError("got %d queries but %d rows" % (len(queries_per_pair), len(rows)))
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_catalog):
            raise ValueError("rows must be in [0, %d), got range [%d, %d]" % (self.n_catalog, rows.min(), rows.max()))
        unique, of_pair = np.unique(np.asarray(queries_per_pair).astype(str), return_inverse=True)
        out = np.empty(len(rows), dtype=np.float32)
        for i, tokens in enumerate(bm25_tokenize(list(unique), self.stem)):
            pairs = np.flatnonzero(of_pair == i)
            out[pairs] = self._query_scores(tokens)[rows[pairs]]
        return out


class MiniLMBaseline:
    """Zero-shot cosine between frozen MiniLM vectors of queries and of titles (catalog vectors cached)."""

    def __init__(self, titles: Sequence[str], text_cfg: TextConfig, *, progress: bool = False, encoder: Any = None,
                 catalog_vectors: Optional[np.ndarray] = None):
        """``catalog_vectors`` (frozen vectors of ``titles`` already encoded, e.g. prepared ones) skip the encoding."""
        # lazy: the BM25 baselines run without the BERT stack
        from tfrec.text.catalog import catalog_text_features, frozen_encoder

        self.encoder = encoder or frozen_encoder(text_cfg)
        if catalog_vectors is not None:
            if len(catalog_vectors) != len(titles):
                raise ValueError("catalog_vectors has %d rows for %d titles" % (len(catalog_vectors), len(titles)))
            self.catalog_vectors = np.asarray(catalog_vectors, np.float32)
        else:
            self.catalog_vectors, _ = catalog_text_features(list(titles), text_cfg, progress=progress, encoder=self.encoder)
        self.batch_size = text_cfg.encode_batch_size

    @property
    def n_catalog(self) -> int:
        """Number of catalog products."""
        return len(self.catalog_vectors)

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors float32 [Q, dim] (L2-normalised like the catalog's)."""
        tf = compat.tensorflow()
        queries = [str(q) for q in queries]
        # Eager calls: a query set is encoded once, and tracing the BERT graph for each padded
        # length costs more (seconds per length) than running a thousand queries eagerly.
        parts = [
            self.encoder(tf.constant(queries[s : s + self.batch_size]), training=False).numpy()
            for s in range(0, len(queries), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.catalog_vectors.shape[1]), np.float32)

    def scores(self, query_vectors: np.ndarray) -> np.ndarray:
        """Cosine scores float32 [Q, n_catalog] of encoded queries (chunk the queries)."""
        return np.asarray(query_vectors, dtype=np.float32) @ self.catalog_vectors.T

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows int32 [Q, k] and cosines float32 [Q, k] of encoded queries."""
        _check_k(k, self.n_catalog)
        return _chunked_top_k(lambda s, e: self.scores(query_vectors[s:e]), len(query_vectors), k, self.n_catalog)

    def score_pairs(self, query_vectors_per_pair: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine float32 of each (encoded query, catalog row) pair."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.einsum("nd,nd->n", np.asarray(query_vectors_per_pair, np.float32), self.catalog_vectors[rows])


def hybrid_scores(lexical: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    """Equal-weight sum of per-query z-scores of two [Q, n_catalog] score matrices."""
    if np.shape(lexical) != np.shape(semantic):
        raise ValueError("score matrices differ in shape: %s vs %s" % (np.shape(lexical), np.shape(semantic)))
    # epsilon 0: the baseline's published numbers divide by the exact standard deviation.
    return zscore(np.asarray(lexical, np.float32), epsilon=0.0) + zscore(np.asarray(semantic, np.float32), epsilon=0.0)


def rerank_candidates(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Reorder each row of candidate rows [Q, K] by descending ``scores`` [Q, K]; ties keep their order."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    return np.take_along_axis(np.asarray(candidates), order, axis=1)


def query_chunk(n_catalog: int) -> int:
    """Queries per dense score matrix: :data:`QUERY_CHUNK`, fewer on catalogs over 131,072 products."""
    return row_chunk(n_catalog, CHUNK_CELLS, most=QUERY_CHUNK)


def _chunked_top_k(score_chunk, n_queries: int, k: int, n_catalog: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.empty((n_queries, k), dtype=np.int32)
    values = np.empty((n_queries, k), dtype=np.float32)
    step = query_chunk(n_catalog)
    for start in range(0, n_queries, step):
        stop = min(start + step, n_queries)
        rows[start:stop], values[start:stop] = top_k(score_chunk(start, stop), k)
    return rows, values


def _log(progress: bool, message: str) -> None:
    log.log(logging.INFO if progress else logging.DEBUG, message)


def evaluate_search_baselines(
    catalog_titles: Sequence[str],
    train: Judgments,
    valid: Judgments,
    text_cfg: TextConfig,
    ks: Sequence[int] = (10, 100, 1000),
    positive_relevance: float = 2.5,
    progress: bool = True,
    *,
    minilm: Optional["MiniLMBaseline"] = None,
) -> dict:
    """Score every baseline on ``valid``: retrieval report, re-rank NDCG@10, random/perfect, per-query arrays.

    Returns ``{name: report}`` for each of :data:`BASELINES` (``recall@k``, ``mrr``, ``ndcg@10_e2e``,
    ``ndcg@10_rerank`` where defined, ``seen``/``cold`` splits), ``"random"`` and ``"perfect"``
    re-rank values, ``"per_query"`` ({name: {metric: float64 [Q]}}, 0 where a query's ideal DCG
    is 0, as in the means; for :func:`~tfrec.evaluation.search.paired_bootstrap` against another
    model, in the query order of ``"eval_set"``), ``"eval_set"`` and ``"timings_s"``. The re-ranked
    baseline only reports cut-offs up to its depth (100, or the catalog size if smaller). ``minilm``
    reuses a :class:`MiniLMBaseline` already built over ``catalog_titles`` (else one is built from
    ``text_cfg``).
    """
    titles = [str(t) for t in catalog_titles]
    n_catalog = len(titles)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n_catalog:
        raise ValueError("ks must be cut-offs in [1, %d] (the catalog size), got %r" % (n_catalog, ks))
    es = SearchEvalSet.from_judgments(valid, positive_relevance, seen_products(train, n_catalog))
    if len(es.products) and es.products.max() >= n_catalog:
        raise ValueError("valid judges catalog row %d but there are %d titles" % (es.products.max(), n_catalog))
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    _log(progress, "indexing %d titles with BM25 (plain and stemmed)" % n_catalog)
    bm25 = {"bm25": Bm25Baseline(titles, stem=False), "bm25_stemmed": Bm25Baseline(titles, stem=True)}
    timings["bm25_index"] = time.perf_counter() - clock
    clock = time.perf_counter()

    _log(progress, "MiniLM catalog vectors (cache: %s) and %d query vectors" % (resolve_cache_dir(text_cfg.cache_dir), es.n_queries))
    if minilm is None:
        minilm = MiniLMBaseline(titles, text_cfg, progress=progress)
    elif minilm.n_catalog != n_catalog:
        raise ValueError("minilm holds %d catalog vectors but there are %d titles" % (minilm.n_catalog, n_catalog))
    query_vectors = minilm.encode(list(es.queries))
    timings["minilm_encode"] = time.perf_counter() - clock
    clock = time.perf_counter()

    _log(progress, "scoring the catalog for %d queries" % es.n_queries)
    depth = min(RERANK_DEPTH, n_catalog)
    tops, pair_scores = _score_all(es, bm25, minilm, query_vectors, max(ks[-1], depth), depth)
    timings["score_and_rank"] = time.perf_counter() - clock
    clock = time.perf_counter()

    results: dict = {}
    per_query: dict = {}
    for name in BASELINES:
        depth = tops[name].shape[1]
        cutoffs = [k for k in ks if k <= depth] or [depth]
        report = retrieval_report(es, tops[name], cutoffs)
        per_query[name] = {"ndcg@10_e2e": end_to_end_ndcg(es, tops[name], 10)[1],
                           **{"recall@%d" % k: v for k, v in recall_at_k_per_query(es, tops[name], cutoffs).items()}}
        if name in pair_scores:
            mean, values = rerank_ndcg(es, pair_scores[name], 10)
            report["ndcg@10_rerank"] = mean
            for group, stats in split_by_seen(es, values).items():
                report[group]["ndcg@10_rerank"] = stats["mean"]
            per_query[name]["ndcg@10_rerank"] = values
        results[name] = report
    random_mean, random_values = random_rerank_ndcg_per_query(es, 10)
    results["random"] = {"ndcg@10_rerank": random_mean}
    results["perfect"] = {"ndcg@10_rerank": perfect_rerank_ndcg(es, 10)}
    per_query["random"] = {"ndcg@10_rerank": random_values}
    timings["metrics"] = time.perf_counter() - clock
    results.update(per_query=per_query, eval_set=es, timings_s=timings)
    return results


def _score_all(
    es: SearchEvalSet, bm25: dict, minilm: MiniLMBaseline, query_vectors: np.ndarray, k: int, depth: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Whole-catalog top-k rows of every baseline and its scores of the judged pairs, one chunk of queries at a time."""
    queries = list(es.queries)
    dense_names = ("bm25", "bm25_stemmed", "minilm_zero_shot", "hybrid_bm25_minilm")
    tops = {name: np.empty((es.n_queries, k), dtype=np.int32) for name in dense_names}
    tops["bm25_rerank_minilm"] = np.empty((es.n_queries, depth), dtype=np.int32)
    pair_scores = {name: np.empty(len(es.products), dtype=np.float32) for name in dense_names}
    query_of_pair = es.query_of_judgment()
    step = query_chunk(minilm.n_catalog)
    for start in range(0, es.n_queries, step):
        stop = min(start + step, es.n_queries)
        dense = {name: bm25[name].scores(queries[start:stop]) for name in ("bm25", "bm25_stemmed")}
        dense["minilm_zero_shot"] = minilm.scores(query_vectors[start:stop])
        dense["hybrid_bm25_minilm"] = hybrid_scores(dense["bm25_stemmed"], dense["minilm_zero_shot"])
        pairs = slice(es.offsets[start], es.offsets[stop])
        local_query = query_of_pair[pairs] - start
        for name, scores in dense.items():
            tops[name][start:stop] = top_k(scores, k)[0]
            pair_scores[name][pairs] = scores[local_query, es.products[pairs]]
        candidates = tops["bm25_stemmed"][start:stop, :depth]
        cosines = np.take_along_axis(dense["minilm_zero_shot"], candidates, axis=1)
        tops["bm25_rerank_minilm"][start:stop] = rerank_candidates(candidates, cosines)
    return tops, pair_scores
