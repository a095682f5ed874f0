"""A BM25 index over a product catalog, in numpy: the data behind :class:`tfrec.lexical.scorer.LexicalScorer`.

Scoring is bm25s's "lucene" variant, score for score (checked against ``bm25s.BM25`` in the tests)::

    idf(t)      = ln(1 + (N - df + 0.5) / (df + 0.5))
    w(t, d)     = idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))
    score(q, d) = sum of w(t, d) over the query's terms t

Like Lucene since 8.0 and bm25s, ``w`` has no ``(k1 + 1)`` factor in the numerator: a constant
factor that changes no ranking, left out so that scores equal the bm25s baselines' exactly.

``dl`` is a document's number of terms (stopwords dropped, repeats counted). A term repeated in
the query is summed once per occurrence, as bm25s does (``get_scores`` looks every query token
up and adds its column again: ``["a", "a"]`` scores twice ``["a"]``).

Vocabulary. Snowball stemming cannot run in a TensorFlow graph, so :meth:`LexicalIndex.build`
stems, once, every raw token of the catalog texts and of ``extra_texts`` (give it the training
queries) and stores a lookup ``raw token -> term id``. Each stem is also a key (when it is not a
raw token itself) and stopwords map to :data:`STOPWORD`. A raw token that is no key at all is
tried again after the cheap suffix rules of :data:`tfrec.lexical.tokens.SUFFIX_RULES`
("drills" -> "drill", "shelves" -> "shelv") and dropped if none hits. So a word seen in neither the
catalog nor ``extra_texts`` cannot be stemmed exactly: "sanders" finds "sander" if either word was
seen, an irregular or unseen form ("knives" with only "knife" seen) finds nothing.
:meth:`LexicalIndex.term_ids` is this lookup in Python; the in-graph one gives the same ids.

Storage. Postings are CSR over terms (``term_offsets``, ``term_docs``, ``term_weights``) holding
the precomputed ``w(t, d)``; nothing is ever a dense ``V x N`` matrix.
"""
from __future__ import annotations

import json
import math
import os
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from tfrec.files import file_sha256, write_bytes_atomic
from tfrec.lexical.tokens import BYTES_PER_QUERY_WORD, MAX_TEXT_BYTES, STOPWORDS, make_stemmer, raw_tokens, suffix_candidates

UNKNOWN = -1  # a raw token the vocabulary does not know (the in-graph table's default value)
STOPWORD = -2  # a known raw token that gives no term
FORMAT_VERSION = 1
MANIFEST_NAME = "lexical_index.json"
_ARRAYS_PREFIX = "lexical_index-"
_ARRAY_DTYPES = {
    "raw_to_term": np.int32,
    "idf": np.float32,
    "doc_len": np.float32,
    "term_offsets": np.int64,
    "term_docs": np.int32,
    "term_weights": np.float32,
}


class LexicalIndexError(ValueError):
    """A saved lexical index is corrupt or inconsistent; the message names the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class LexicalIndex:
    """Vocabulary lookup, idf, document lengths and BM25 postings (CSR over terms) of one catalog."""

    raw_tokens: tuple[str, ...]  # lookup keys: raw tokens seen at build time, stems, stopwords
    raw_to_term: np.ndarray  # int32 [K]: term id of each key, STOPWORD for stopwords
    terms: tuple[str, ...]  # [V] the stems (the raw tokens when stem=False)
    idf: np.ndarray  # float32 [V]
    doc_len: np.ndarray  # float32 [N]
    avgdl: float
    term_offsets: np.ndarray  # int64 [V + 1]
    term_docs: np.ndarray  # int32 [nnz], ascending within a term
    term_weights: np.ndarray  # float32 [nnz]: w(t, d)
    k1: float = 1.5
    b: float = 0.75
    stem: bool = True
    _lookup: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw_tokens", tuple(self.raw_tokens))
        object.__setattr__(self, "terms", tuple(self.terms))
        for name, dtype in _ARRAY_DTYPES.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != 1:
                raise ValueError(
                    "%s must be a 1-d numpy array of %s, got %r" % (name, np.dtype(dtype), getattr(value, "dtype", value))
                )
        self._check_consistent()
        object.__setattr__(self, "_lookup", dict(zip(self.raw_tokens, self.raw_to_term.tolist())))

    def _check_consistent(self) -> None:
        n_keys, n_terms, n_docs, nnz = len(self.raw_tokens), len(self.terms), len(self.doc_len), len(self.term_docs)
        checks = [
            (len(self.raw_to_term) == n_keys, "raw_to_term has %d entries for %d raw_tokens" % (len(self.raw_to_term), n_keys)),
            (len(set(self.raw_tokens)) == n_keys, "raw_tokens has duplicates"),
            (all(isinstance(t, str) for t in self.raw_tokens + self.terms), "raw_tokens and terms must be strings"),
            (len(self.idf) == n_terms, "idf has %d entries for %d terms" % (len(self.idf), n_terms)),
            (len(self.term_offsets) == n_terms + 1, "term_offsets has %d entries for %d terms" % (len(self.term_offsets), n_terms)),
            (len(self.term_weights) == nnz, "term_weights has %d entries, term_docs %d" % (len(self.term_weights), nnz)),
            (n_docs > 0, "the index has no documents"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError("inconsistent LexicalIndex: " + message)
        if n_keys and (self.raw_to_term.min() < STOPWORD or self.raw_to_term.max() >= n_terms):
            raise ValueError("inconsistent LexicalIndex: raw_to_term values outside [%d, %d)" % (STOPWORD, n_terms))
        offsets = self.term_offsets
        if offsets[0] != 0 or offsets[-1] != nnz or np.any(np.diff(offsets) < 0):
            raise ValueError("inconsistent LexicalIndex: term_offsets must rise from 0 to nnz=%d" % nnz)
        if nnz and (self.term_docs.min() < 0 or self.term_docs.max() >= n_docs):
            raise ValueError("inconsistent LexicalIndex: term_docs values outside [0, %d)" % n_docs)
        finite = all(np.all(np.isfinite(a)) for a in (self.idf, self.doc_len, self.term_weights))
        if not finite or not (math.isfinite(self.avgdl) and self.avgdl > 0):
            raise ValueError("inconsistent LexicalIndex: non-finite values or avgdl=%r <= 0" % self.avgdl)
        _check_params(self.k1, self.b)

    @property
    def num_docs(self) -> int:
        """N, the number of catalog documents."""
        return len(self.doc_len)

    @property
    def num_terms(self) -> int:
        """V, the number of terms (stems)."""
        return len(self.terms)

    @property
    def nnz(self) -> int:
        """The number of (term, document) postings."""
        return len(self.term_docs)

    @classmethod
    def build(
        cls,
        catalog_texts: Sequence[str],
        extra_texts: Sequence[str] = (),
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stem: bool = True,
    ) -> "LexicalIndex":
        """Index ``catalog_texts`` (row i = document i); ``extra_texts`` only add vocabulary (e.g. training queries)."""
        _check_params(k1, b)
        if len(catalog_texts) == 0:
            raise ValueError("catalog_texts is empty: a BM25 index needs at least one document")
        doc_tokens = [
            [t for t in _raw_tokens_of(text, "catalog_texts", i) if t not in STOPWORDS] for i, text in enumerate(catalog_texts)
        ]
        seen = {t for tokens in doc_tokens for t in tokens}
        for i, text in enumerate(extra_texts):
            seen.update(t for t in _raw_tokens_of(text, "extra_texts", i) if t not in STOPWORDS)
        raw_sorted = sorted(seen)
        stemmer = make_stemmer()
        stems = [stemmer(t) for t in raw_sorted] if stem else raw_sorted
        terms = sorted(set(stems))
        term_of = {t: i for i, t in enumerate(terms)}
        lookup = {raw: term_of[s] for raw, s in zip(raw_sorted, stems)}
        for s in terms:
            lookup.setdefault(s, term_of[s])  # lets suffix stripping land on a stem ("shelves" -> "shelv")
        lookup.update((w, STOPWORD) for w in STOPWORDS)  # dropped before stemming, as in analyze()
        keys = sorted(lookup)

        n_docs, n_terms = len(doc_tokens), len(terms)
        doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), [len(tokens) for tokens in doc_tokens])
        term_of_token = np.fromiter((lookup[t] for tokens in doc_tokens for t in tokens), np.int64, len(doc_of_token))
        doc_len = np.bincount(doc_of_token, minlength=n_docs).astype(np.float64)
        avgdl = float(doc_len.mean())
        if avgdl == 0:
            raise ValueError("catalog_texts hold no terms at all (every text is empty or stopwords)")
        # One key per (term, doc): sorted by term then doc, the counts are the term frequencies.
        pair, tf = np.unique(term_of_token * n_docs + doc_of_token, return_counts=True)
        pair_term, pair_doc = pair // n_docs, pair % n_docs
        df = np.bincount(pair_term, minlength=n_terms)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        norm = k1 * (1.0 - b + b * doc_len[pair_doc] / avgdl)
        weights = idf[pair_term] * tf / (tf + norm)
        return cls(
            raw_tokens=tuple(keys),
            raw_to_term=np.array([lookup[k] for k in keys], np.int32),
            terms=tuple(terms),
            idf=idf.astype(np.float32),
            doc_len=doc_len.astype(np.float32),
            avgdl=avgdl,
            term_offsets=np.concatenate([[0], np.cumsum(df)]).astype(np.int64),
            term_docs=pair_doc.astype(np.int32),
            term_weights=weights.astype(np.float32),
            k1=float(k1),
            b=float(b),
            stem=bool(stem),
        )

    def term_id(self, token: str) -> int:
        """The term id of one raw token, :data:`STOPWORD` or :data:`UNKNOWN` (after the suffix rules)."""
        found = self._lookup.get(token, UNKNOWN)
        if found == UNKNOWN and self.stem:
            for candidate in suffix_candidates(token):
                hit = self._lookup.get(candidate, UNKNOWN)
                if hit >= 0:
                    return hit
        return found

    def term_ids(self, text: Union[str, bytes], max_words: Optional[int] = None, max_bytes: Optional[int] = MAX_TEXT_BYTES) -> list[int]:
        """The term ids of ``text`` (its first ``max_bytes`` bytes and ``max_words`` raw words) in order, repeats kept, stopwords and unknown tokens dropped."""
        ids = [self.term_id(token) for token in raw_tokens(text, max_bytes)[:max_words]]
        return [i for i in ids if i >= 0]

    def scores(self, queries: Sequence[Union[str, bytes]], max_query_terms: Optional[int] = None) -> np.ndarray:
        """BM25 of every query (its first ``max_query_terms`` words) against every catalog document, float32 ``[Q, N]`` (reference)."""
        out = np.zeros((len(queries), self.num_docs), np.float32)
        for row, query in enumerate(queries):
            limit = None if max_query_terms is None else BYTES_PER_QUERY_WORD * max_query_terms
            for term in self.term_ids(query, max_query_terms, limit):  # a repeated query term adds again, as in bm25s
                start, end = self.term_offsets[term], self.term_offsets[term + 1]
                out[row, self.term_docs[start:end]] += self.term_weights[start:end]  # docs unique per term
        return out

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write the index into ``directory`` (created if needed); readers never see a half-written index."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (".tmp-%s.npz" % uuid.uuid4().hex)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **{name: getattr(self, name) for name in _ARRAY_DTYPES})
                f.flush()
                os.fsync(f.fileno())
            digest = file_sha256(tmp)
            arrays_name = "%s%s.npz" % (_ARRAYS_PREFIX, digest[:16])
            os.replace(tmp, folder / arrays_name)
        finally:
            tmp.unlink(missing_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "arrays_file": arrays_name,
            "arrays_sha256": digest,
            "k1": self.k1,
            "b": self.b,
            "stem": self.stem,
            "avgdl": self.avgdl,
            "num_docs": self.num_docs,
            "num_terms": self.num_terms,
            "nnz": self.nnz,
            "terms": list(self.terms),
            "raw_tokens": list(self.raw_tokens),
        }
        write_bytes_atomic(folder / MANIFEST_NAME, json.dumps(manifest).encode("utf-8"))
        # The manifest is the commit point: only now may an older arrays file go.
        for old in folder.glob(_ARRAYS_PREFIX + "*.npz"):
            if old.name != arrays_name:
                old.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "LexicalIndex":
        """Read an index written by :meth:`save`; :class:`LexicalIndexError` names what is corrupt."""
        folder = Path(directory)
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError("no lexical index in %s: %s is missing" % (folder, MANIFEST_NAME))
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LexicalIndexError("%s is not valid JSON (%s)" % (manifest_path, exc)) from exc
        required = ("format_version", "arrays_file", "arrays_sha256", "k1", "b", "stem", "avgdl", "terms", "raw_tokens")
        missing = [key for key in required if not isinstance(manifest, dict) or key not in manifest]
        if missing:
            raise LexicalIndexError("%s lacks the fields %s" % (manifest_path, ", ".join(missing)))
        if manifest["format_version"] != FORMAT_VERSION:
            raise LexicalIndexError(
                "%s has format_version %r; this tfrec reads %d" % (manifest_path, manifest["format_version"], FORMAT_VERSION)
            )
        arrays_path = folder / str(manifest["arrays_file"])
        if not arrays_path.is_file():
            raise LexicalIndexError("%s names %s, which is missing" % (manifest_path, arrays_path.name))
        if file_sha256(arrays_path) != manifest["arrays_sha256"]:
            raise LexicalIndexError("%s is corrupt: its sha256 differs from the one in %s" % (arrays_path, MANIFEST_NAME))
        try:
            with np.load(arrays_path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in _ARRAY_DTYPES}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise LexicalIndexError("%s cannot be read (%s)" % (arrays_path, exc)) from exc
        try:
            return cls(
                raw_tokens=manifest["raw_tokens"],
                terms=manifest["terms"],
                avgdl=float(manifest["avgdl"]),
                k1=float(manifest["k1"]),
                b=float(manifest["b"]),
                stem=bool(manifest["stem"]),
                **arrays,
            )
        except (TypeError, ValueError) as exc:
            raise LexicalIndexError("%s does not hold a valid index: %s" % (folder, exc)) from exc


def _check_params(k1: float, b: float) -> None:
    if not (isinstance(k1, (int, float)) and math.isfinite(k1) and k1 >= 0):
        raise ValueError("k1 must be a finite number >= 0, got %r" % (k1,))
    if not (isinstance(b, (int, float)) and 0 <= b <= 1):
        raise ValueError("b must be a number in [0, 1], got %r" % (b,))


def vocabulary_terms(texts: Sequence[str]) -> set[str]:
    """The terms ``texts`` add to an index's vocabulary as ``extra_texts`` (each term, given back as a text, adds itself)."""
    return {t for i, text in enumerate(texts) for t in _raw_tokens_of(text, "texts", i) if t not in STOPWORDS}


def _raw_tokens_of(text: object, argument: str, row: int) -> list[str]:
    if not isinstance(text, (str, bytes)):
        raise ValueError("%s[%d] must be a string, got %s: %r" % (argument, row, type(text).__name__, text))
    return raw_tokens(text, MAX_TEXT_BYTES)
