"""The ``catalog.json`` an export ships in ``assets.extra/``: the ids and titles the service pipeline looks up.

:class:`tfrec.serving.service.ProductCatalog` reads it back.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np


def catalog_json(ids: np.ndarray | Sequence[str], titles: np.ndarray | Sequence[str], rerank: Optional[bool] = None) -> bytes:
    """The catalog lookup file's content: {"ids": [...], "titles": [...]} (+ "rerank" for search) as UTF-8 JSON.

    ``rerank`` says whether the search run kept its ranker: the service pipeline re-ranks retrieved
    products only then. It travels with the retrieval version, so a version swap swaps it too.
    """
    content: dict = {"ids": [str(i) for i in ids], "titles": [str(t) for t in titles]}
    if rerank is not None:
        content["rerank"] = bool(rerank)
    return json.dumps(content, ensure_ascii=False).encode("utf-8")
