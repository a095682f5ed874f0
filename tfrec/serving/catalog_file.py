"""The ``catalog.json`` an export ships in ``assets.extra/``: the ids and titles the service pipeline looks up.

:class:`tfrec.serving.service.ProductCatalog` reads it back.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np


def catalog_json(ids: np.ndarray | Sequence[str], titles: np.ndarray | Sequence[str]) -> bytes:
    """The catalog lookup file's content: {"ids": [...], "titles": [...]} as UTF-8 JSON."""
    return json.dumps({"ids": [str(i) for i in ids], "titles": [str(t) for t in titles]}, ensure_ascii=False).encode("utf-8")
