"""The search and recommend pipelines over served models (TF Serving or ``tfrec serve``).

Search: the query goes to ``search_retrieval`` (hybrid top-K over the whole catalog), the
candidates' titles are looked up in the catalog shipped with that export, and
``search_ranker`` scores every (query, candidate) pair; the final list is ordered by the ranker.
Where the server also serves ``search`` (both steps in one graph, same numbers), one call does it.
Recommend: a history goes to ``recommender``, an item to ``similar_items``; given an event store
(:mod:`tfrec.online.events`), a shopper's id stands for the freshest history Redis holds.
Both services take a :class:`~tfrec.serving.cache.ResultCache` keyed by the served versions.

Any client with ``predict_batched(model, inputs, label=..., version=...)`` works: the gRPC and
REST clients of this package, against any server that speaks TF Serving's API.
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

RETRIEVAL_MODEL = "search_retrieval"
RANKER_MODEL = "search_ranker"
SEARCH_MODEL = "search"  # retrieval and re-ranking in one call
RECOMMENDER_MODEL = "recommender"
SIMILAR_MODEL = "similar_items"
CATALOG_FILE = "catalog.json"


class ProductCatalog:
    """Product id -> title, from the ``catalog.json`` an export ships in ``assets.extra/``."""

    def __init__(self, ids: Sequence[str], titles: Sequence[str], source: str = "", rerank: bool = True) -> None:
        if len(ids) != len(titles):
            raise ValueError("catalog %s: %d ids but %d titles" % (source or "(in memory)", len(ids), len(titles)))
        self.source = source
        self.rerank = bool(rerank)  # False: the search run did not keep its ranker (retrieval order is served)
        self._titles = dict(zip((str(i) for i in ids), (str(t) for t in titles)))

    def __len__(self) -> int:
        return len(self._titles)

    def __contains__(self, product_id: object) -> bool:
        return str(product_id) in self._titles

    def ids(self) -> list[str]:
        """Every product id, in the catalog's order."""
        return list(self._titles)

    def title(self, product_id: str) -> str:
        """The title of a product ("" for an id the catalog does not hold)."""
        return self._titles.get(str(product_id), "")

    @classmethod
    def from_file(cls, path: Path) -> "ProductCatalog":
        """Read a ``catalog.json`` ({"ids": [...], "titles": [...]}, optionally "rerank")."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["ids"], data["titles"], source=str(path), rerank=bool(data.get("rerank", True)))
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError("%s is not a tfrec catalog file (expected {\"ids\": [...], \"titles\": [...]}): %s" % (path, err)) from err

    @classmethod
    def from_export(cls, export_dir: Path, model: str = RETRIEVAL_MODEL, version: Optional[int] = None) -> "ProductCatalog":
        """The catalog of an export's newest (or given) version of ``model``."""
        # lazy: the service client works without TensorFlow
        from tfrec.serving.savedmodel import version_folders

        model_dir = Path(export_dir) / model
        versions = sorted(version_folders(model_dir))
        if not versions:
            raise FileNotFoundError("no exported versions of %s under %s (run `make export` first)" % (model, export_dir))
        chosen = versions[-1] if version is None else int(version)
        if chosen not in versions:
            raise FileNotFoundError("%s has no version %d (has %s)" % (model_dir, chosen, versions))
        return cls.from_file(model_dir / str(chosen) / "assets.extra" / CATALOG_FILE)


@dataclass
class Hit:
    """One result: its rank (1-based), id, title, final score and first-stage score."""

    rank: int
    item_id: str
    title: str
    score: float
    retrieval_score: float

    def as_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


class SearchService:
    """Raw query -> retrieved, titled and re-ranked products, over served models.

    ``one_call``: True asks ``search_model`` alone (one request for retrieval and ranking), False
    the two models; None (auto) uses ``search_model`` when the client serves it (asked once) and it
    answers what the two calls would: it re-ranks the same candidates (no more than
    ``candidates``), keeps the same ``rerank`` choice and returns at least ``k`` results.
    """

    def __init__(self, client: Any, catalog: Optional[ProductCatalog] = None, *, candidates: int = 100,
                 rerank: Optional[bool] = None, retrieval_model: str = RETRIEVAL_MODEL, ranker_model: str = RANKER_MODEL,
                 label: Optional[str] = None, search_model: str = SEARCH_MODEL, one_call: Optional[bool] = None,
                 cache: Any = None) -> None:
        if candidates < 1:
            raise ValueError("candidates must be >= 1, got %d" % candidates)
        if rerank is None:  # as the export says: a run whose ranker did not beat retrieval serves retrieval order
            rerank = catalog.rerank if catalog is not None else True
        if rerank and catalog is None:
            raise ValueError("re-ranking needs the catalog (the ranker scores titles): pass a ProductCatalog or rerank=False")
        self.client, self.catalog, self.candidates, self.rerank = client, catalog, int(candidates), bool(rerank)
        self.retrieval_model, self.ranker_model, self.label = retrieval_model, ranker_model, label
        self.search_model, self.one_call = search_model, one_call
        self._serves_search: Optional[bool] = None  # the client's answer, once asked
        self._search_shape: Optional[tuple[int, int]] = None  # (results, candidates re-ranked) per query, once seen
        self.cache = cache  # a tfrec.serving.cache.ResultCache (keyed by the served versions of every search model), or None
        self._cached = None if cache is None else cache.bind(client, {"search": [retrieval_model, ranker_model, search_model]}, label)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The top-k products for one query."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The top-k products for each query: cached ones from the cache, the others as :meth:`_search_many` finds them."""
        if self._cached is None or isinstance(queries, str) or k < 1:
            return self._search_many(queries, k)
        return self._cached.search([str(q) for q in queries], k, (self.candidates, self.rerank),
                                   lambda todo: self._search_many(todo, k))

    def _search_many(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The top-k products for each query (retrieval and ranking each batched across queries)."""
        if isinstance(queries, str):
            raise TypeError("search_many takes a list of queries; use search() for one")
        queries = [str(q) for q in queries]
        if k < 1:
            raise ValueError("k must be >= 1, got %d" % k)
        if not queries:
            return []
        if self._use_one_call(k):
            found = self._search_one_call(queries, k)
            if found is not None:
                return found
        out = self.client.predict_batched(self.retrieval_model, {"query": queries}, label=self.label)
        ids = np.asarray(out["product_ids"], dtype=object)[:, : self.candidates]
        first = np.asarray(out["scores"], dtype=np.float32)[:, : self.candidates]
        titles = np.vectorize(self._title, otypes=[object])(ids) if ids.size else ids
        if not self.rerank:
            return [self._hits(ids[q], titles[q], first[q], first[q], k) for q in range(len(queries))]
        n = ids.shape[1]
        pairs = {
            "query": np.repeat(np.asarray(queries, dtype=object), n),
            "product_id": ids.reshape(-1),
            "title": titles.reshape(-1),
        }
        scores = np.asarray(self.client.predict_batched(self.ranker_model, pairs, label=self.label)["score"], np.float32)
        scores = scores.reshape(len(queries), n)
        results = []
        for q in range(len(queries)):
            # Stable sort: ties keep the retrieval order.
            order = np.argsort(-scores[q], kind="stable")
            results.append(self._hits(ids[q][order], titles[q][order], scores[q][order], first[q][order], k))
        return results

    def _use_one_call(self, k: int) -> bool:
        """Whether to ask the one-call model (auto: it is served and, once seen, answers this request as the two calls)."""
        if self.one_call is not None:
            return self.one_call
        if self._serves_search is None:
            self._serves_search = self._client_serves(self.search_model)
        return bool(self._serves_search) and (self._search_shape is None or self._one_call_fits(k))

    def _client_serves(self, model: str) -> Optional[bool]:
        """Whether the client serves ``model``: LocalClient lists its models, servers answer a status request."""
        models = getattr(self.client, "models", None)
        if isinstance(models, (list, tuple, set, frozenset)):
            return model in models
        if not callable(getattr(self.client, "status", None)):
            return False
        from tfrec.serving.grpc_client import ServingError  # lazy: the service imports no TensorFlow

        try:
            versions = self.client.status(model, label=self.label) if self.label else self.client.status(model)
        except ServingError as err:
            if err.code in ("NOT_FOUND", 404):
                return False
            return None  # no answer (server down, deadline): two calls now, ask again next time
        return any(v.get("state") == "AVAILABLE" for v in versions)

    def _same_pipeline(self) -> bool:
        """Whether the one-call model (its answer seen once) re-ranks as this service does, from the same candidates."""
        reranked = self._search_shape[1]
        return (reranked > 0) == self.rerank and not (self.rerank and self.candidates < reranked)

    def _one_call_fits(self, k: int) -> bool:
        """Whether the one-call model's answers equal the two calls' for this service's top-``k``."""
        width, reranked = self._search_shape
        return self._same_pipeline() and (min(k, self.candidates) <= width or (self.rerank and width >= reranked))

    def _search_one_call(self, queries: list[str], k: int) -> Optional[list[list[Hit]]]:
        """The hits from the one-call model; None when (auto mode) its answers differ from the two calls' (never asked again)."""
        out = self.client.predict_batched(self.search_model, {"query": queries}, label=self.label)
        ids = np.asarray(out["product_ids"], dtype=object)
        self._search_shape = (ids.shape[1], int(np.max(out["candidates"])))
        if not self._one_call_fits(k):
            why = ("%s returns %d results re-ranked from %d candidates; this service asks top-%d, %s, from %d candidates"
                   % (self.search_model, self._search_shape[0], self._search_shape[1], k,
                      "re-ranked" if self.rerank else "in retrieval order", self.candidates))
            if self.one_call:
                raise ValueError("one_call=True but %s: use one_call=None or False" % why)
            if not self._same_pipeline():
                self._serves_search = False  # a different pipeline, whatever k is asked: not asked again
            return None
        titles = np.asarray(out["titles"], dtype=object)
        scores = np.asarray(out["scores"], dtype=np.float32)
        first = np.asarray(out["retrieval_scores"], dtype=np.float32)
        return [self._hits(ids[q], titles[q], scores[q], first[q], min(k, self.candidates)) for q in range(len(queries))]

    def _title(self, product_id: str) -> str:
        return self.catalog.title(product_id) if self.catalog is not None else ""

    @staticmethod
    def _hits(ids: np.ndarray, titles: np.ndarray, scores: np.ndarray, first: np.ndarray, k: int) -> list[Hit]:
        return [Hit(r + 1, str(ids[r]), str(titles[r]), float(scores[r]), float(first[r])) for r in range(min(k, len(ids)))]


class RecommendService:
    """A shopper's history -> recommended items, and item -> similar items, over served models."""

    def __init__(self, client: Any, catalog: Optional[ProductCatalog] = None, *, recommender_model: str = RECOMMENDER_MODEL,
                 similar_model: str = SIMILAR_MODEL, label: Optional[str] = None, events: Any = None,
                 kinds: Optional[Sequence[str]] = None, cache: Any = None) -> None:
        self.client, self.catalog, self.label = client, catalog, label
        self.cache = cache  # a tfrec.serving.cache.ResultCache, or None
        self._cached = None if cache is None else cache.bind(client, {"recommend": [recommender_model], "similar": [similar_model]}, label)
        self.recommender_model, self.similar_model = recommender_model, similar_model
        # events: a tfrec.online.events.EventStore (or anything with history(user_id)); kinds: the event kinds read (None: all)
        self.events, self.kinds = events, (tuple(kinds) if kinds is not None else None)
        self._lock = threading.Lock()
        self._counts = {"from_store": 0, "no_events": 0, "fallbacks": 0}

    def recommend(self, history: Optional[Sequence[str]] = None, k: int = 10, *, user_id: Optional[str] = None) -> list[Hit]:
        """Items for one shopper: ``user_id``'s recent events from the store, else ``history`` (oldest first).

        Which history is used follows :meth:`recommend_many`.
        """
        return self.recommend_many(None if history is None else [history], k,
                                   user_ids=None if user_id is None else [user_id])[0]

    def recommend_many(self, histories: Optional[Sequence[Sequence[str]]] = None, k: int = 10, *,
                       user_ids: Optional[Sequence[str]] = None) -> list[list[Hit]]:
        """Items for each shopper; histories are padded with "" (the export's padding value).

        Without ``user_ids`` (or without an event store) the ``histories`` given are used. With them,
        each shopper's history is, in this order:

        1. the store's newest events for that user (of ``kinds``), when it holds any: the request's history is then ignored;
        2. the request's history (``histories[i]``, empty when none was sent) when the store holds no events for that
           user (counted as ``no_events``) or cannot answer: Redis down, or slower than its timeout (counted as
           ``fallbacks``; the store's link logs the outage once, not per request).
        """
        if user_ids is not None and isinstance(user_ids, str):
            raise TypeError("user_ids takes a list of ids; use recommend(user_id=...) for one")
        if histories is None and user_ids is None:
            raise ValueError("give the shoppers' histories or their user_ids")
        if histories is not None and user_ids is not None and len(histories) != len(user_ids):
            raise ValueError("%d histories for %d user_ids" % (len(histories), len(user_ids)))
        if user_ids is not None:
            histories = self._fresh_histories(list(user_ids), histories)
        if not histories:
            return []
        if self._cached is not None:  # keyed by the history chosen above (sent, or the user's stored events)
            return self._cached.recommend(histories, k, lambda todo: self._recommend(todo, k))
        return self._recommend(histories, k)

    def _recommend(self, histories: Sequence[Sequence[str]], k: int) -> list[list[Hit]]:
        width = max(1, max(len(h) for h in histories))
        padded = np.asarray([[str(i) for i in h] + [""] * (width - len(h)) for h in histories], dtype=object)
        out = self.client.predict_batched(self.recommender_model, {"history": padded}, label=self.label)
        return self._lists(out, k)

    def _fresh_histories(self, user_ids: list[str], sent: Optional[Sequence[Sequence[str]]]) -> list[Sequence[str]]:
        """Each user's history as :meth:`recommend_many` chooses it."""
        fallback = list(sent) if sent is not None else [[] for _ in user_ids]
        if self.events is None:
            return fallback
        if hasattr(self.events, "histories"):
            stored = self.events.histories(user_ids, kinds=self.kinds) if self.kinds else self.events.histories(user_ids)
        else:
            stored = [self.events.history(u, kinds=self.kinds) if self.kinds else self.events.history(u) for u in user_ids]
        chosen, counts = [], {"from_store": 0, "no_events": 0, "fallbacks": 0}
        for found, request in zip(stored, fallback):
            outcome = "fallbacks" if found is None else "no_events" if not found else "from_store"
            counts[outcome] += 1
            chosen.append(found if outcome == "from_store" else request)
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n
        return chosen

    def stats(self) -> dict[str, int]:
        """Shoppers answered from the event store, from the request because the store held no events, or because it failed."""
        with self._lock:
            return dict(self._counts)

    def similar(self, item_id: str, k: int = 10) -> list[Hit]:
        """Items similar to one item."""
        if self._cached is not None:
            return self._cached.similar(item_id, k, lambda: self._similar(item_id, k))
        return self._similar(item_id, k)

    def _similar(self, item_id: str, k: int) -> list[Hit]:
        out = self.client.predict_batched(self.similar_model, {"item_id": [str(item_id)]}, label=self.label)
        return self._lists(out, k)[0]

    def _lists(self, out: dict, k: int) -> list[list[Hit]]:
        ids = np.asarray(out["item_ids"], dtype=object)
        scores = np.asarray(out["scores"], dtype=np.float32)
        title = self.catalog.title if self.catalog is not None else (lambda _: "")
        return [
            [Hit(r + 1, str(ids[q, r]), title(ids[q, r]), float(scores[q, r]), float(scores[q, r])) for r in range(min(k, ids.shape[1]))]
            for q in range(ids.shape[0])
        ]


def format_hits(hits: Sequence[Hit], header: str = "") -> str:
    """A plain-text table of results for the command line."""
    lines = [header] if header else []
    if not hits:
        lines.append("  (no results)")
    for hit in hits:
        title = hit.title if len(hit.title) <= 80 else hit.title[:77] + "..."
        lines.append("  %3d. %-12s %8.4f  %s" % (hit.rank, hit.item_id, hit.score, title))
    return "\n".join(lines)
