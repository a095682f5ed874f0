"""The search and recommend pipelines over served models (TF Serving or ``tfrec serve``).

Search: the query goes to ``search_retrieval`` (hybrid top-K over the whole catalog), the
candidates' titles are looked up in the catalog shipped with that export, and
``search_ranker`` scores every (query, candidate) pair; the final list is ordered by the ranker.
Recommend: a history goes to ``recommender``, an item to ``similar_items``.

Any client with ``predict_batched(model, inputs, label=..., version=...)`` works: the gRPC and
REST clients of this package, against any server that speaks TF Serving's API.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

RETRIEVAL_MODEL = "search_retrieval"
RANKER_MODEL = "search_ranker"
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
    """Raw query -> retrieved, titled and re-ranked products, over served models."""

    def __init__(self, client: Any, catalog: Optional[ProductCatalog] = None, *, candidates: int = 100,
                 rerank: Optional[bool] = None, retrieval_model: str = RETRIEVAL_MODEL, ranker_model: str = RANKER_MODEL,
                 label: Optional[str] = None) -> None:
        if candidates < 1:
            raise ValueError("candidates must be >= 1, got %d" % candidates)
        if rerank is None:  # as the export says: a run whose ranker did not beat retrieval serves retrieval order
            rerank = catalog.rerank if catalog is not None else True
        if rerank and catalog is None:
            raise ValueError("re-ranking needs the catalog (the ranker scores titles): pass a ProductCatalog or rerank=False")
        self.client, self.catalog, self.candidates, self.rerank = client, catalog, int(candidates), bool(rerank)
        self.retrieval_model, self.ranker_model, self.label = retrieval_model, ranker_model, label

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The top-k products for one query."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The top-k products for each query (retrieval and ranking each batched across queries)."""
        if isinstance(queries, str):
            raise TypeError("search_many takes a list of queries; use search() for one")
        queries = [str(q) for q in queries]
        if k < 1:
            raise ValueError("k must be >= 1, got %d" % k)
        if not queries:
            return []
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

    def _title(self, product_id: str) -> str:
        return self.catalog.title(product_id) if self.catalog is not None else ""

    @staticmethod
    def _hits(ids: np.ndarray, titles: np.ndarray, scores: np.ndarray, first: np.ndarray, k: int) -> list[Hit]:
        return [Hit(r + 1, str(ids[r]), str(titles[r]), float(scores[r]), float(first[r])) for r in range(min(k, len(ids)))]


class RecommendService:
    """A shopper's history -> recommended items, and item -> similar items, over served models."""

    def __init__(self, client: Any, catalog: Optional[ProductCatalog] = None, *, recommender_model: str = RECOMMENDER_MODEL,
                 similar_model: str = SIMILAR_MODEL, label: Optional[str] = None) -> None:
        self.client, self.catalog, self.label = client, catalog, label
        self.recommender_model, self.similar_model = recommender_model, similar_model

    def recommend(self, history: Sequence[str], k: int = 10) -> list[Hit]:
        """Items for one history (oldest first)."""
        return self.recommend_many([history], k)[0]

    def recommend_many(self, histories: Sequence[Sequence[str]], k: int = 10) -> list[list[Hit]]:
        """Items for each history; histories are padded with "" (the export's padding value)."""
        if not histories:
            return []
        width = max(1, max(len(h) for h in histories))
        padded = np.asarray([[str(i) for i in h] + [""] * (width - len(h)) for h in histories], dtype=object)
        out = self.client.predict_batched(self.recommender_model, {"history": padded}, label=self.label)
        return self._lists(out, k)

    def similar(self, item_id: str, k: int = 10) -> list[Hit]:
        """Items similar to one item."""
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
