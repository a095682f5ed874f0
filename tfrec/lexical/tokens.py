"""The one lexical tokenization of tfrec, shared by the in-graph BM25 index and the bm25s baselines.

A text becomes terms in four steps:

1. invalid UTF-8 is replaced by U+FFFD (only bytes can be invalid; Python ``str`` input already is text);
2. ASCII letters are lowercased; nothing else is case-folded. ASCII-only on purpose: TensorFlow's
   default ``tf.strings.lower`` is ASCII-only too, and the few non-ASCII characters whose
   Unicode lowercase is ASCII (the Kelvin sign, dotted capital I) would otherwise split the two
   tokenizers;
3. tokens are the matches of :data:`TOKEN_PATTERN`, runs of letters or of digits, so
   ``"18in."`` gives ``"18", "in"`` and ``"café"`` gives ``"caf"``;
4. :data:`STOPWORDS` (bm25s's English list) are dropped and the rest stemmed with PyStemmer's
   Snowball English stemmer (:func:`make_stemmer`).

:func:`raw_tokens` does steps 1-3, :func:`analyze` all four. The in-graph version of steps 1-3 is
:func:`tfrec.lexical.scorer.graph_raw_tokens`; the index maps raw tokens to stems with a lookup
table built at index time, because Snowball cannot run in a TensorFlow graph.
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Sequence, Union

from bm25s.stopwords import STOPWORDS_EN

TOKEN_PATTERN = r"[a-z]+|[0-9]+"
# The same tokens as TOKEN_PATTERN after ASCII lowercasing; matched before lowercasing because
# str.lower() is Unicode-aware (see step 2 of the module docstring).
_CASED_PATTERN = re.compile(r"[A-Za-z]+|[0-9]+")
STOPWORDS: frozenset[str] = frozenset(STOPWORDS_EN)
STEMMER_LANGUAGE = "english"

# Cheap in-graph stand-in for Snowball on raw tokens missing from an index's vocabulary, tried in
# this order; the first candidate found in the vocabulary wins. "s" before "es": "glues" must find
# "glue" before "glu" (a token of its own in Home Depot), while "boxes" -> "boxe" rarely exists and
# falls through to "box".
SUFFIX_RULES: tuple[tuple[str, str], ...] = (("ies", "y"), ("s", ""), ("es", ""), ("ing", ""), ("ed", ""))
# A candidate shorter than this is not tried ("ties" -> "ty" or "ti" would mostly hit noise).
MIN_CANDIDATE_LENGTH = 3

Stem = Callable[[str], str]

# Bytes of a product text that lexical scoring reads, in the index and in the graph: far above real
# titles, and a bound on the work a served candidate can cause. A query reads
# BYTES_PER_QUERY_WORD x its word limit (see tfrec.lexical.scorer.DEFAULT_MAX_QUERY_TERMS).
MAX_TEXT_BYTES = 8192
BYTES_PER_QUERY_WORD = 64


def raw_tokens(text: Union[str, bytes], max_bytes: Optional[int] = None) -> list[str]:
    """Lowercased letter and digit runs of ``text`` (its first ``max_bytes`` UTF-8 bytes), stopwords kept (steps 1-3)."""
    if not isinstance(text, (str, bytes)):
        raise TypeError("text must be str or bytes, got %s: %r" % (type(text).__name__, text))
    if max_bytes is not None and len(text) > max_bytes // 4:
        raw = text.encode("utf-8", errors="replace") if isinstance(text, str) else text
        text = raw[:max_bytes]  # a character cut in two becomes U+FFFD below, a separator, as in the graph
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [token.lower() for token in _CASED_PATTERN.findall(text)]


def make_stemmer(language: str = STEMMER_LANGUAGE) -> Stem:
    """PyStemmer's Snowball stemmer for ``language`` as a ``word -> stem`` function."""
    import Stemmer

    return Stemmer.Stemmer(language).stemWord


def analyze(text: Union[str, bytes], stem: Optional[Stem] = None) -> list[str]:
    """The terms of ``text``: raw tokens without stopwords, each passed through ``stem`` if given."""
    kept = [token for token in raw_tokens(text) if token not in STOPWORDS]
    return [stem(token) for token in kept] if stem is not None else kept


def analyze_all(texts: Sequence[Union[str, bytes]], stemmed: bool = True) -> list[list[str]]:
    """:func:`analyze` for many texts with one stemmer (e.g. pre-tokenized input for ``bm25s.BM25.index``)."""
    stem = make_stemmer() if stemmed else None
    return [analyze(text, stem) for text in texts]


def suffix_candidates(token: str) -> list[str]:
    """The words :data:`SUFFIX_RULES` derive from ``token``, in the order they are tried."""
    found = []
    for suffix, replacement in SUFFIX_RULES:
        if token.endswith(suffix):
            candidate = token[: len(token) - len(suffix)] + replacement
            if len(candidate) >= MIN_CANDIDATE_LENGTH:
                found.append(candidate)
    return found
