"""Lexical retrieval: one tokenization, a BM25 index (numpy) and its in-graph scorer (TensorFlow).

* :mod:`tfrec.lexical.tokens`: the tokenization shared with the bm25s baselines;
* :mod:`tfrec.lexical.index`: :class:`LexicalIndex`, built and saved in numpy;
* :mod:`tfrec.lexical.scorer`: :class:`LexicalScorer`, a Keras layer computing BM25 from raw
  strings with TensorFlow ops only (exportable to TF Serving).

Importing this package does not import TensorFlow; ``LexicalScorer`` does, on first access.
"""
from __future__ import annotations

from typing import Any

from tfrec.lexical.index import LexicalIndex, LexicalIndexError
from tfrec.lexical.tokens import STOPWORDS, analyze, raw_tokens

__all__ = ["LexicalIndex", "LexicalIndexError", "LexicalScorer", "STOPWORDS", "analyze", "raw_tokens"]


def __getattr__(name: str) -> Any:
    # LexicalScorer imports TensorFlow; resolve it only when asked for.
    if name == "LexicalScorer":
        from tfrec.lexical.scorer import LexicalScorer

        return LexicalScorer
    raise AttributeError("module 'tfrec.lexical' has no attribute %r" % name)
