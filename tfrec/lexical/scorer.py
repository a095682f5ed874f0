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
from typing import Any, Optional, Sequence, Union

import numpy as np

from tfrec import compat
from tfrec.lexical.index import UNKNOWN, LexicalIndex
from tfrec.lexical.tokens import BYTES_PER_QUERY_WORD, MAX_TEXT_BYTES, MIN_CANDIDATE_LENGTH, SUFFIX_RULES

tf = compat.tensorflow()

# Words of a query that lexical scoring reads (stopwords included); later words are ignored, which
# bounds the work of one query whatever its length. Far above real search queries (a few words).
DEFAULT_MAX_QUERY_TERMS = 32
PAIR_FEATURES = ("bm25", "matched_fraction", "idf_matched_fraction", "query_terms", "title_terms", "char_trigram_jaccard")


def graph_raw_tokens(texts: Any, max_bytes: Optional[int] = None) -> "tf.RaggedTensor":
    """In-graph :func:`tfrec.lexical.tokens.raw_tokens`: string ``[B]`` -> ragged ``[B, None]`` tokens."""
    texts = tf.ensure_shape(tf.convert_to_tensor(texts, tf.string), [None])
    if max_bytes is not None:
        texts = tf.strings.substr(texts, 0, max_bytes)  # a cut character becomes U+FFFD below, a separator
    # Invalid UTF-8 bytes would otherwise survive the regex below glued to their neighbours.
    valid = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")
    lowered = tf.strings.lower(valid)  # ASCII only, as in tokens.raw_tokens
    spaced = tf.strings.regex_replace(lowered, "[^a-z0-9]+", " ")
    spaced = tf.strings.regex_replace(spaced, "([a-z]+|[0-9]+)", r"\1 ")  # "18in" -> "18 in "
    return tf.strings.split(spaced)


def char_trigrams(texts: Any) -> "tf.SparseTensor":
    """The character 3-grams of lowercased strings ``[B]`` (invalid UTF-8 as U+FFFD), a string SparseTensor ``[B, None]``."""
    lowered = tf.strings.lower(tf.ensure_shape(tf.convert_to_tensor(texts, tf.string), [None]), encoding="utf-8")
    chars = tf.strings.unicode_split(lowered, "UTF-8", errors="replace")
    return tf.strings.ngrams(chars, 3, separator="").to_sparse()


def char_trigram_jaccard(a: Any, b: Any) -> "tf.Tensor":
    """Jaccard similarity of the character 3-gram sets of two lowercased string batches, float32 ``[B]``.

    0 where both sets are empty (texts under 3 characters); invalid UTF-8 counts as U+FFFD.
    """
    grams_a, grams_b = char_trigrams(a), char_trigrams(b)
    return _jaccard(tf.sets.size(tf.sets.intersection(grams_a, grams_b)), tf.sets.size(grams_a), tf.sets.size(grams_b))


def _jaccard(common: Any, size_a: Any, size_b: Any) -> "tf.Tensor":
    """|A & B| / |A | B| from int32 set sizes, 0 where both sets are empty."""
    common = tf.cast(common, tf.float32)
    union = tf.cast(size_a + size_b, tf.float32) - common
    return tf.math.divide_no_nan(common, union)


class LexicalScorer(tf.keras.layers.Layer):
    """BM25 of raw query strings against the catalog (``call``) and query-title pair features, in-graph.

    Wrap calls in ``tf.function`` for speed; eager calls work but are slow. Not trainable.
    """

    def __init__(self, index: Union[LexicalIndex, str, os.PathLike], max_query_terms: int = DEFAULT_MAX_QUERY_TERMS,
                 **kwargs: Any) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if not isinstance(max_query_terms, int) or isinstance(max_query_terms, bool) or max_query_terms < 1:
            raise ValueError("max_query_terms must be a positive int, got %r" % (max_query_terms,))
        self.max_query_terms = max_query_terms
        self.max_query_bytes = BYTES_PER_QUERY_WORD * max_query_terms
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
        self._vocabulary_size = int(len(index.idf))
        self.built = True  # nothing depends on input shapes; unbuilt layers are only half-exported

    def term_ids(self, texts: Any, max_words: Optional[int] = None, max_bytes: Optional[int] = MAX_TEXT_BYTES) -> "tf.RaggedTensor":
        """Raw strings ``[B]`` -> ragged ``[B, None]`` int32 term ids, stopwords and unknown words dropped.

        Only the first ``max_bytes`` bytes and ``max_words`` raw words (stopwords included) of each text are read.
        """
        tokens = graph_raw_tokens(texts, max_bytes)
        if max_words is not None:
            tokens = tokens[:, :max_words]
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

    def query_term_ids(self, queries: Any) -> "tf.RaggedTensor":
        """:meth:`term_ids` of the first :attr:`max_query_terms` words of each query (the words a query is scored by)."""
        return self.term_ids(queries, max_words=self.max_query_terms, max_bytes=self.max_query_bytes)

    def catalog_scores(self, queries: Any) -> "tf.Tensor":
        """BM25 of each query ``[B]`` against every catalog document: float32 ``[B, N]``."""
        ids = self.query_term_ids(queries)
        n_rows = ids.nrows(out_type=tf.int64)
        # One posting-list gather per distinct (query, term), weighted by the term's repeats: a
        # repeated query term adds again, as in bm25s, without gathering its postings again.
        rows, terms, repeats = _distinct_terms(ids, self._vocabulary_size)
        starts = tf.gather(self._term_offsets, terms)
        postings = tf.ragged.range(starts, tf.gather(self._term_offsets, terms + 1))
        positions = postings.flat_values
        owner = postings.value_rowids()
        segments = tf.gather(rows, owner) * self.num_docs + tf.gather(self._term_docs, positions)
        weights = tf.gather(self._term_weights, positions) * tf.gather(tf.cast(repeats, tf.float32), owner)
        flat = tf.math.unsorted_segment_sum(weights, segments, n_rows * self.num_docs)
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
        query_ids, title_ids = self.query_term_ids(queries), self.term_ids(titles)
        n_rows = tf.shape(queries, out_type=tf.int64)[0]
        vocabulary = self._vocabulary_size
        # Sparse (row, term) keys instead of dense [B, query, title] comparisons: the work is
        # linear in the lengths of both texts, whatever a request sends.
        rows, terms, repeats = _distinct_terms(query_ids, vocabulary)
        title_keys = tf.sort(tf.cast(title_ids.value_rowids(), tf.int64) * vocabulary + tf.cast(title_ids.flat_values, tf.int64))
        features = self._term_features(rows, terms, repeats, title_keys, title_ids.row_lengths(), n_rows)
        features["char_trigram_jaccard"] = char_trigram_jaccard(
            tf.strings.substr(queries, 0, self.max_query_bytes), tf.strings.substr(titles, 0, MAX_TEXT_BYTES))
        return features

    def _term_features(self, rows: Any, terms: Any, repeats: Any, title_keys: Any, title_lengths: Any, n_rows: Any) -> dict:
        """The term features of :meth:`pair_features` (all but the trigram Jaccard) from each pair's distinct query terms.

        ``rows``, ``terms``, ``repeats``: the pairs' distinct query terms as :func:`_distinct_terms` gives them;
        ``title_keys``: sorted ``row * V + term`` of every title term (repeats kept); ``title_lengths``: terms per title.
        One definition for the string path and :class:`CatalogPairFeatures`, so both compute the same numbers.
        """
        vocabulary = self._vocabulary_size
        keys = rows * vocabulary + terms
        counts = tf.cast(
            tf.searchsorted(title_keys, keys, side="right") - tf.searchsorted(title_keys, keys, side="left"), tf.float32
        )  # each distinct query term's frequency in its title
        title_len = tf.cast(title_lengths, tf.float32)
        idf = tf.gather(self._idf, terms)
        norm = self._k1 * (1.0 - self._b + self._b * title_len / self._avgdl)
        saturation = tf.math.divide_no_nan(counts, counts + tf.gather(norm, rows))

        def per_row(values: Any) -> Any:
            return tf.math.unsorted_segment_sum(values, rows, n_rows)

        matched = tf.cast(counts > 0, tf.float32)
        n_distinct = per_row(tf.ones_like(idf))
        return {
            "bm25": per_row(tf.cast(repeats, tf.float32) * idf * saturation),  # repeats add again, as in catalog_scores
            "matched_fraction": tf.math.divide_no_nan(per_row(matched), n_distinct),
            "idf_matched_fraction": tf.math.divide_no_nan(per_row(idf * matched), per_row(idf)),
            "query_terms": n_distinct,
            "title_terms": title_len,
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
        config["max_query_terms"] = self.max_query_terms
        return config


class CatalogPairFeatures(tf.Module):
    """:meth:`LexicalScorer.pair_features` of (query, catalog title) pairs named by catalog row, the title side precomputed.

    Built once from the catalog titles (row i = title i): each title's term ids (sorted, repeats
    kept) and its distinct character 3-grams, as ids into the catalog's own 3-gram vocabulary (exact
    strings, so no two 3-grams share an id). A request then tokenizes each query once, not once per
    candidate, and reads the titles' sides by row. The numbers are those of ``pair_features`` on the
    same titles: the term features go through the same code, and the Jaccard's set sizes are the
    same integers (a query 3-gram no catalog title has can only add to the union).
    """

    def __init__(self, scorer: LexicalScorer, titles: Sequence[Union[str, bytes]], chunk_rows: int = 4096,
                 name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.scorer = scorer
        terms, term_lengths, grams, gram_lengths, vocabulary = [], [], [], [], {}
        for start in range(0, len(titles), chunk_rows):
            chunk = tf.constant(np.asarray(titles[start : start + chunk_rows], dtype=object))
            ids = scorer.term_ids(chunk)
            rows, values = ids.value_rowids().numpy(), ids.flat_values.numpy()
            terms.append(values[np.lexsort((values, rows))])
            term_lengths.append(ids.row_lengths().numpy())
            sparse = char_trigrams(tf.strings.substr(chunk, 0, MAX_TEXT_BYTES))
            distinct, position = tf.unique(sparse.values)
            known = np.array([vocabulary.setdefault(g, len(vocabulary)) for g in distinct.numpy()], np.int64)
            # Each title's distinct 3-gram ids, sorted: one (row, id) key each.
            keys = np.unique((sparse.indices[:, 0].numpy() << 32) | known[position.numpy()])
            grams.append((keys & 0xFFFFFFFF).astype(np.int32))
            gram_lengths.append(np.bincount(keys >> 32, minlength=len(chunk)))
        if len(vocabulary) >= 2 ** 31:
            raise ValueError("the catalog titles hold %d distinct character 3-grams, over int32's range" % len(vocabulary))
        self.size = int(len(titles))
        self._gram_vocabulary = int(len(vocabulary))
        self._gram_ids = None
        if vocabulary:
            self._gram_ids = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(list(vocabulary), tf.string), tf.range(len(vocabulary), dtype=tf.int64)),
                default_value=-1,
            )
        # Variables, not constants: every traced function shares one copy, saved once.
        self._terms = tf.Variable(_concat(terms, np.int32), trainable=False, name="title_terms")
        self._term_splits = tf.Variable(_splits(term_lengths), trainable=False, name="title_term_splits")
        self._grams = tf.Variable(_concat(grams, np.int32), trainable=False, name="title_trigrams")
        self._gram_splits = tf.Variable(_splits(gram_lengths), trainable=False, name="title_trigram_splits")

    @property
    def nbytes(self) -> int:
        """Bytes of the precomputed arrays (the lookup table of 3-gram strings aside)."""
        return sum(int(v.shape[0]) * v.dtype.size for v in (self._terms, self._term_splits, self._grams, self._gram_splits))

    def pair_features(self, queries: Any, query_of: Any, rows: Any) -> dict[str, "tf.Tensor"]:
        """:meth:`LexicalScorer.pair_features` of the pairs (``queries[query_of[i]]``, catalog title ``rows[i]``), each float32 ``[n]``.

        ``queries`` string ``[B]``: each is tokenized once however many pairs name it; ``query_of``
        and ``rows`` integer ``[n]``, every row in ``[0, size)``.
        """
        queries = tf.ensure_shape(tf.convert_to_tensor(queries, tf.string), [None])
        query_of = tf.cast(tf.convert_to_tensor(query_of), tf.int64)
        rows = tf.cast(tf.convert_to_tensor(rows), tf.int64)
        tf.debugging.assert_equal(tf.shape(query_of), tf.shape(rows), message="query_of and rows must align")
        n_pairs = tf.size(rows, out_type=tf.int64)
        scorer = self.scorer
        vocabulary = scorer._vocabulary_size

        # Each query's distinct terms, once; then those of each pair's query, in the same order.
        q_rows, q_terms, q_repeats = _distinct_terms(scorer.query_term_ids(queries), vocabulary)
        q_splits = tf.ragged.segment_ids_to_row_splits(q_rows, num_segments=tf.size(queries, out_type=tf.int64))
        picked = _ragged_positions(q_splits, query_of)
        pair_rows, at = picked.value_rowids(), picked.flat_values
        terms, repeats = tf.gather(q_terms, at), tf.gather(q_repeats, at)
        titles = _ragged_positions(self._term_splits, rows)
        # Each title's ids are sorted and pairs come in order: the keys are sorted already.
        title_keys = titles.value_rowids() * vocabulary + tf.cast(tf.gather(self._terms, titles.flat_values), tf.int64)
        features = scorer._term_features(pair_rows, terms, repeats, title_keys, titles.row_lengths(), n_pairs)

        grams = char_trigrams(tf.strings.substr(queries, 0, scorer.max_query_bytes))
        query_sizes = tf.gather(tf.sets.size(grams), query_of)
        title_grams = _ragged_positions(self._gram_splits, rows)
        title_sizes = tf.cast(title_grams.row_lengths(), tf.int32)
        if self._gram_ids is None:  # no catalog title has a 3-gram: nothing is common
            common = tf.zeros_like(title_sizes)
        else:
            span = self._gram_vocabulary
            ids = self._gram_ids.lookup(grams.values)
            known = ids >= 0
            query_keys = tf.sort(tf.unique(tf.boolean_mask(grams.indices[:, 0] * span + ids, known)).y)
            owner = title_grams.value_rowids()
            keys = tf.gather(query_of, owner) * span + tf.cast(tf.gather(self._grams, title_grams.flat_values), tf.int64)
            hits = tf.searchsorted(query_keys, keys, side="right") - tf.searchsorted(query_keys, keys, side="left")
            common = tf.math.unsorted_segment_sum(hits, owner, n_pairs)
        features["char_trigram_jaccard"] = _jaccard(common, query_sizes, title_sizes)
        return features


def _ragged_positions(splits: Any, rows: Any) -> "tf.RaggedTensor":
    """Ragged ``[n, None]`` positions into CSR values (row_splits ``splits``) of each of ``rows``."""
    return tf.ragged.range(tf.gather(splits, rows), tf.gather(splits, rows + 1))


def _concat(parts: list, dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros([0], dtype)


def _splits(lengths: list) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else [])]).astype(np.int64)


def _distinct_terms(ids: "tf.RaggedTensor", vocabulary: int) -> tuple["tf.Tensor", "tf.Tensor", "tf.Tensor"]:
    """The distinct (row, term) pairs of ragged term ids: (rows int64, terms int64, repeats int32), first occurrence order."""
    keys = tf.cast(ids.value_rowids(), tf.int64) * vocabulary + tf.cast(ids.flat_values, tf.int64)
    distinct, _, repeats = tf.unique_with_counts(keys)
    return distinct // vocabulary, distinct % vocabulary, repeats
