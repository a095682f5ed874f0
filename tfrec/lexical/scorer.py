"""BM25 in the TensorFlow graph, from raw query strings: :class:`LexicalScorer` over a :class:`LexicalIndex`.

Everything here is core TensorFlow ops (string regex, hash table lookup, gathers, segment sums,
set operations): a SavedModel holding the layer loads in stock TF Serving and in a process that
imports only ``tensorflow``, with no ``py_function``. The layer tracks its lookup table and its
postings (as non-trainable variables), so ``tf.saved_model.save`` keeps them.

Scores equal :meth:`LexicalIndex.scores` (the tests check it, and that both equal bm25s's
``get_scores`` for the same terms). The raw-token -> term lookup is the one described in
:mod:`tfrec.lexical.index`: exact for every word seen when the index was built, cheap suffix
stripping for the others.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from tfrec import compat
from tfrec.lexical.index import UNKNOWN, LexicalIndex
from tfrec.lexical.tokens import MIN_CANDIDATE_LENGTH, SUFFIX_RULES

tf = compat.tensorflow()

PAIR_FEATURES = ("bm25", "matched_fraction", "idf_matched_fraction", "query_terms", "title_terms", "char_trigram_jaccard")


def graph_raw_tokens(texts: Any) -> "tf.RaggedTensor":
    """In-graph :func:`tfrec.lexical.tokens.raw_tokens`: string ``[B]`` -> ragged ``[B, None]`` tokens."""
    texts = tf.ensure_shape(tf.convert_to_tensor(texts, tf.string), [None])
    # Invalid UTF-8 bytes would otherwise survive the regex below glued to their neighbours.
    valid = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")
    lowered = tf.strings.lower(valid)  # ASCII only, as in tokens.raw_tokens
    spaced = tf.strings.regex_replace(lowered, "[^a-z0-9]+", " ")
    spaced = tf.strings.regex_replace(spaced, "([a-z]+|[0-9]+)", r"\1 ")  # "18in" -> "18 in "
    return tf.strings.split(spaced)


def char_trigram_jaccard(a: Any, b: Any) -> "tf.Tensor":
    """Jaccard similarity of the character 3-gram sets of two lowercased string batches, float32 ``[B]``.

    0 where both sets are empty (texts under 3 characters); invalid UTF-8 counts as U+FFFD.
    """
    def trigrams(texts: Any) -> "tf.SparseTensor":
        lowered = tf.strings.lower(tf.ensure_shape(tf.convert_to_tensor(texts, tf.string), [None]), encoding="utf-8")
        chars = tf.strings.unicode_split(lowered, "UTF-8", errors="replace")
        return tf.strings.ngrams(chars, 3, separator="").to_sparse()

    grams_a, grams_b = trigrams(a), trigrams(b)
    common = tf.cast(tf.sets.size(tf.sets.intersection(grams_a, grams_b)), tf.float32)
    union = tf.cast(tf.sets.size(grams_a) + tf.sets.size(grams_b), tf.float32) - common
    return tf.math.divide_no_nan(common, union)


class LexicalScorer(tf.keras.layers.Layer):
    """BM25 of raw query strings against the catalog (``call``) and query-title pair features, in-graph.

    Wrap calls in ``tf.function`` for speed; eager calls work but are slow. Not trainable.
    """

    def __init__(self, index: Union[LexicalIndex, str, os.PathLike], **kwargs: Any) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self._index_dir: Optional[str] = None
        if not isinstance(index, LexicalIndex):
            self._index_dir = os.fspath(index)
            index = LexicalIndex.load(index)
        self.index = index
        self.num_docs = index.num_docs
        self._k1, self._b, self._avgdl, self._stem = index.k1, index.b, index.avgdl, index.stem
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(index.raw_tokens, tf.string), tf.constant(index.raw_to_term, tf.int32)
            ),
            default_value=UNKNOWN,
        )
        # Variables, not constants: every traced function shares one copy, saved once.
        # int64 postings keep clear of int32's host-memory special case on GPUs.
        self._idf = tf.Variable(index.idf, trainable=False, name="idf")
        self._term_offsets = tf.Variable(index.term_offsets, trainable=False, name="term_offsets")
        self._term_docs = tf.Variable(index.term_docs.astype(np.int64), trainable=False, name="term_docs")
        self._term_weights = tf.Variable(index.term_weights, trainable=False, name="term_weights")
        self.built = True  # nothing depends on input shapes; unbuilt layers are only half-exported

    def term_ids(self, texts: Any) -> "tf.RaggedTensor":
        """Raw strings ``[B]`` -> ragged ``[B, None]`` int32 term ids, stopwords and unknown words dropped."""
        tokens = graph_raw_tokens(texts)
        ids = self._table.lookup(tokens.flat_values)
        if self._stem:
            ids = self._suffix_fallback(tokens.flat_values, ids)
        keep = ids >= 0
        return tf.RaggedTensor.from_value_rowids(
            tf.boolean_mask(ids, keep), tf.boolean_mask(tokens.value_rowids(), keep), nrows=tokens.nrows()
        )

    def _suffix_fallback(self, tokens: "tf.Tensor", ids: "tf.Tensor") -> "tf.Tensor":
        lengths = tf.strings.length(tokens)
        found = tf.fill(tf.shape(ids), tf.constant(UNKNOWN, tf.int32))
        # Backwards, so that the first rule whose candidate is in the vocabulary wins (as in Python).
        for suffix, replacement in reversed(SUFFIX_RULES):
            kept = lengths - len(suffix)
            applies = tf.strings.regex_full_match(tokens, ".*" + suffix) & (kept + len(replacement) >= MIN_CANDIDATE_LENGTH)
            candidate = tf.strings.substr(tokens, tf.zeros_like(kept), tf.maximum(kept, 0)) + replacement
            hit = self._table.lookup(candidate)
            found = tf.where(applies & (hit >= 0), hit, found)
        return tf.where(ids == UNKNOWN, found, ids)

    def catalog_scores(self, queries: Any) -> "tf.Tensor":
        """BM25 of each query ``[B]`` against every catalog document: float32 ``[B, N]``."""
        ids = self.term_ids(queries)
        n_rows = ids.nrows(out_type=tf.int64)
        terms = tf.cast(ids.flat_values, tf.int64)  # a repeated query term adds again, as in bm25s
        starts = tf.gather(self._term_offsets, terms)
        postings = tf.ragged.range(starts, tf.gather(self._term_offsets, terms + 1))
        positions = postings.flat_values
        rows = tf.gather(ids.value_rowids(), postings.value_rowids())
        segments = rows * self.num_docs + tf.gather(self._term_docs, positions)
        flat = tf.math.unsorted_segment_sum(
            tf.gather(self._term_weights, positions), segments, n_rows * self.num_docs
        )
        return tf.reshape(flat, [-1, self.num_docs])

    def call(self, queries: Any) -> "tf.Tensor":
        """:meth:`catalog_scores`."""
        return self.catalog_scores(queries)

    def retrieve(self, queries: Any, k: int = 100) -> tuple["tf.Tensor", "tf.Tensor"]:
        """The top ``k`` catalog rows per query: (scores float32 ``[B, k']``, rows int32 ``[B, k']``), k' = min(k, N)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError("k must be a positive int, got %r" % (k,))
        top = tf.math.top_k(self.catalog_scores(queries), k=min(k, self.num_docs))
        return top.values, top.indices

    def pair_features(self, queries: Any, titles: Any) -> dict[str, "tf.Tensor"]:
        """Lexical features of aligned (query, title) pairs, each float32 ``[B]`` and finite; see :data:`PAIR_FEATURES`.

        ``bm25``: the title scored as a document of its own with the index's idf and avgdl (any
        candidate gets one; for a catalog title it equals :meth:`catalog_scores`). ``matched_fraction``
        and ``idf_matched_fraction``: the (idf-weighted) share of distinct query terms in the title.
        ``query_terms``: distinct known query terms; ``title_terms``: the title's length in terms
        (BM25's dl). ``char_trigram_jaccard``: see :func:`char_trigram_jaccard`.
        """
        queries = tf.convert_to_tensor(queries, tf.string)
        titles = tf.convert_to_tensor(titles, tf.string)
        tf.debugging.assert_equal(tf.shape(queries), tf.shape(titles), message="queries and titles must align")
        query_ids, title_ids = self.term_ids(queries), self.term_ids(titles)
        q = query_ids.to_tensor(default_value=-1)  # [B, Lq]
        t = title_ids.to_tensor(default_value=-2)  # [B, Lt]; pads never equal a query id or pad
        in_query = q >= 0
        counts = tf.reduce_sum(tf.cast(q[:, :, None] == t[:, None, :], tf.float32), axis=2)  # tf per query term
        title_len = tf.cast(title_ids.row_lengths(), tf.float32)
        idf = tf.where(in_query, tf.gather(self._idf, tf.maximum(q, 0)), 0.0)
        norm = self._k1 * (1.0 - self._b + self._b * title_len / self._avgdl)
        bm25 = tf.reduce_sum(idf * tf.math.divide_no_nan(counts, counts + norm[:, None]), axis=1)

        width = tf.shape(q)[1]
        earlier = tf.sequence_mask(tf.range(width), width)  # [i, j]: j < i
        repeated = tf.reduce_any((q[:, :, None] == q[:, None, :]) & earlier[None], axis=2)
        distinct = tf.cast(in_query & ~repeated, tf.float32)
        matched = distinct * tf.cast(counts > 0, tf.float32)
        n_distinct = tf.reduce_sum(distinct, axis=1)
        return {
            "bm25": bm25,
            "matched_fraction": tf.math.divide_no_nan(tf.reduce_sum(matched, axis=1), n_distinct),
            "idf_matched_fraction": tf.math.divide_no_nan(
                tf.reduce_sum(idf * matched, axis=1), tf.reduce_sum(idf * distinct, axis=1)
            ),
            "query_terms": n_distinct,
            "title_terms": title_len,
            "char_trigram_jaccard": char_trigram_jaccard(queries, titles),
        }

    def get_config(self) -> dict:
        """Config naming the index folder; only a scorer built from a folder path can be re-created from it."""
        if self._index_dir is None:
            raise NotImplementedError(
                "LexicalScorer built from an in-memory LexicalIndex has no config: save the index "
                "(LexicalIndex.save) and build the scorer from that folder to get one"
            )
        config = super().get_config()
        config["index"] = self._index_dir
        return config
