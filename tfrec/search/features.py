"""The feature ranker's inputs, computed in the graph: one definition for training and the export.

As in TF-Ranking's Keras model builder (create inputs -> preprocess -> score), the
:class:`~tfrec.ranking.model.RankerHead` scores what :class:`RankerFeatures` makes of raw
(query, product) lists. Training calls the layer on catalog rows with the query vectors it has
already encoded (:func:`tfrec.search.ranker_data.head_inputs`, once per list set); the
``search_ranker`` SavedModel (:class:`tfrec.search.export.RankerExport`) calls it on request
strings, a bounded chunk of rows at a time, after encoding each distinct query once; the one-call
``search`` SavedModel (:class:`tfrec.search.export.SearchExport`) on the catalog rows retrieval
returned (``product_row``), with the query vectors retrieval used. The numbers the evaluation
scores are therefore the numbers the export computes.

Per item the layer reads a product's vectors from the catalog matrices when it is a catalog
product (training always; the export when a request sends a catalog id with its catalog title)
and encodes the others with the two towers' product side and the zero-shot encoder. Per-item
catalog features live in one dict of row-aligned matrices (:data:`ITEM_VECTORS`). The catalog's
numeric and categorical columns (``data.catalog.numeric_columns`` / ``categorical_columns``), when
the run names any, are looked up by product id in the same graph (a
:class:`~tfrec.text.fusion.CatalogFeatureLookup`), as the product tower looks them up.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from tfrec import compat
from tfrec.ranking.model import LEXICAL_FEATURES, catalog_input
from tfrec.serving.bounded import map_row_chunks
from tfrec.text.fusion import CatalogFeatureLookup

tf = compat.tensorflow()

# The head's per-item inputs read from the catalog by row (or encoded for other products), in this order.
ITEM_VECTORS = ("product_vector", "product_zero")


class RankerFeatures(tf.keras.layers.Layer):
    """Raw (query, product list) inputs -> the RankerHead's inputs.

    ``call`` takes ``query`` [B] (string), ``query_vector`` [B, D] and ``query_zero`` [B, Dz] (see
    :meth:`encode_queries`), ``product_id`` and ``title`` [B, L] (string), and optionally
    ``product_row`` [B, L] (each item's catalog row, -1 for a product outside the catalog; when
    absent, looked up from the id and title) and ``mask`` [B, L] (False for padding; all True
    when absent). It returns ``query_vector``, ``query_zero``, ``product_vector`` [B, L, D],
    ``product_zero`` [B, L, Dz], ``lexical`` [B, L, F] (:data:`LEXICAL_FEATURES` order) and
    ``product_id`` [B, L]; padding items get zeros and an empty id. With ``catalog_columns`` it also
    returns each column's values [B, L] under :func:`~tfrec.ranking.model.catalog_input` names,
    looked up by product id (whatever the title): an id outside the catalog, and padding, get the
    missing values (NaN, "").

    ``pair_features`` is a :class:`~tfrec.lexical.LexicalScorer`'s ``pair_features`` (or a traced
    copy of it). ``catalog_pair_features``, when given, is a
    :class:`~tfrec.lexical.scorer.CatalogPairFeatures`' ``pair_features`` over the same catalog rows
    (the same numbers, the titles' side precomputed): the items with a catalog row take it, each
    query tokenized once (with ``product_row``, an item's title is its row's catalog title); the
    others keep ``pair_features``. Catalog lookups need ``ids`` and ``titles``; products outside
    the catalog, and :meth:`encode_queries`, need ``retrieval`` (the two towers) and ``zero_encoder``. The catalog
    matrices may be existing variables (a :class:`~tfrec.search.hybrid.HybridScorer`'s, float32 or
    float16): the layer then reads those, so a module holding both saves each matrix once, and
    casts the rows it gathers to float32.
    """

    def __init__(self, pair_features: Callable[[Any, Any], dict], catalog_dense: Optional[Any] = None,
                 catalog_zero: Optional[Any] = None, ids: Optional[np.ndarray] = None, titles: Optional[np.ndarray] = None,
                 *, retrieval: Any = None, zero_encoder: Any = None, catalog_columns: Optional[CatalogFeatureLookup] = None,
                 catalog_pair_features: Optional[Callable[[Any, Any, Any], dict]] = None, **kwargs: Any) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if (catalog_dense is None) != (catalog_zero is None):
            raise ValueError("RankerFeatures needs both catalog matrices (catalog_dense and catalog_zero) or neither")
        if (ids is None) != (titles is None) or (ids is not None and catalog_dense is None):
            raise ValueError("RankerFeatures looks products up by id and title: give ids, titles and the catalog matrices together")
        if (retrieval is None) != (zero_encoder is None):
            raise ValueError("RankerFeatures encodes with both the two towers (retrieval) and zero_encoder, or with neither")
        if catalog_dense is None and retrieval is None:
            raise ValueError("RankerFeatures needs the catalog matrices, the encoders (retrieval, zero_encoder), or both")
        self.pair_features = pair_features
        self.catalog_pair_features = catalog_pair_features
        self.retrieval, self.zero_encoder = retrieval, zero_encoder
        self.columns = catalog_columns
        self.catalog: dict[str, Any] = {}
        if catalog_dense is not None:
            matrices = dict(zip(ITEM_VECTORS, (catalog_dense, catalog_zero)))
            sizes = {int(m.shape[0]) for m in matrices.values()} | ({len(ids), len(titles)} if ids is not None else set())
            if len(sizes) != 1:
                raise ValueError("catalog_dense, catalog_zero, ids and titles must have one row per product; got %d, %d, %s, %s rows"
                                 % (catalog_dense.shape[0], catalog_zero.shape[0], None if ids is None else len(ids),
                                    None if titles is None else len(titles)))
            # Variables, not constants: every traced function shares one copy, and an export saves it once.
            self.catalog = {name: m if isinstance(m, tf.Variable) else
                            tf.Variable(np.asarray(m, np.float32), trainable=False, name="catalog_" + name)
                            for name, m in matrices.items()}
        self.item_dims = (
            {name: int(v.shape[1]) for name, v in self.catalog.items()} if self.catalog
            else {"product_vector": int(retrieval.dim), "product_zero": int(zero_encoder.output_dim)}
        )
        self.row_of = self.catalog_titles = None
        if ids is not None:
            keys = np.asarray(ids).astype(str).astype(object)
            self.row_of = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int64)), default_value=-1)
            self.catalog_titles = tf.Variable(np.asarray(titles).astype(str).astype(object), trainable=False, dtype=tf.string,
                                              name="catalog_titles")
        self.built = True  # nothing depends on input shapes; unbuilt layers are only half-exported

    def encode_queries(self, query: Any, chunk_rows: int) -> dict[str, Any]:
        """``query_vector`` and ``query_zero`` of query strings [B], each distinct query encoded once, ``chunk_rows`` at a time."""
        self._needs_encoders("encode queries")
        unique, index = tf.unique(query)
        encoders = (self.retrieval.query_encoder, self.zero_encoder)
        vectors = map_row_chunks(lambda q: [e(q, training=False) for e in encoders], [unique], chunk_rows,
                                 [(tf.float32, [e.output_dim]) for e in encoders])
        return {name: tf.gather(v, index) for name, v in zip(("query_vector", "query_zero"), vectors)}

    def catalog_rows(self, product_id: Any, title: Any) -> Any:
        """int64 catalog row of each (id, title) whose title is the catalog's title for that id; -1 for any other pair."""
        if self.row_of is None:
            return tf.fill(tf.shape(product_id), tf.constant(-1, tf.int64))
        rows = self.row_of.lookup(product_id)
        known = (rows >= 0) & tf.equal(tf.gather(self.catalog_titles, tf.maximum(rows, 0)), title)
        return tf.where(known, rows, -1)

    def call(self, inputs: dict) -> dict:
        """The RankerHead's inputs of the lists in ``inputs`` (see the class docstring)."""
        query = tf.convert_to_tensor(inputs["query"], tf.string)
        product_id = tf.convert_to_tensor(inputs["product_id"], tf.string)
        title = tf.convert_to_tensor(inputs["title"], tf.string)
        shape = tf.shape(product_id)
        flat_ids, flat_titles = tf.reshape(product_id, [-1]), tf.reshape(title, [-1])
        mask = tf.reshape(inputs["mask"], [-1]) if "mask" in inputs else tf.ones_like(flat_ids, tf.bool)
        if "product_row" in inputs:
            rows = tf.reshape(tf.cast(inputs["product_row"], tf.int64), [-1])
        else:
            rows = self.catalog_rows(flat_ids, flat_titles)

        features = {
            "query_vector": tf.convert_to_tensor(inputs["query_vector"], tf.float32),
            "query_zero": tf.convert_to_tensor(inputs["query_zero"], tf.float32),
        }
        for name, values in self._items(rows, mask, flat_ids, flat_titles).items():
            features[name] = _unflatten(values, shape, self.item_dims[name])
        lexical = self._lexical(query, shape[1], flat_titles, rows, mask)
        features["lexical"] = _unflatten(lexical, shape, len(LEXICAL_FEATURES))
        real_ids = tf.where(mask, flat_ids, "")
        features["product_id"] = tf.reshape(real_ids, shape)
        if self.columns is not None:
            # "" is never a catalog id: padding gets the missing values.
            for name, values in self.columns(real_ids).items():
                features[catalog_input(name)] = tf.reshape(values, shape)
        return features

    @property
    def column_dtypes(self) -> dict[str, Any]:
        """The catalog-column outputs and their dtypes (float32 numeric, string categorical); empty without columns."""
        if self.columns is None:
            return {}
        return {**{catalog_input(n): tf.float32 for n in self.columns.numeric},
                **{catalog_input(n): tf.string for n in self.columns.categorical}}

    def _items(self, rows: Any, mask: Any, product_id: Any, title: Any) -> dict[str, Any]:
        """Flat per-item vectors: catalog rows gathered, other products encoded, padding zeros."""
        known = mask & (rows >= 0)
        new = mask & (rows < 0)
        known_at, new_at, pad_at = (tf.cast(tf.where(c)[:, 0], tf.int32) for c in (known, new, ~mask))
        if not self.catalog:
            # Built without a catalog, every item is a product to encode.
            tf.debugging.assert_equal(tf.size(known_at), 0, message="RankerFeatures has no catalog to read product_row from")
        new_ids, new_titles = tf.gather(product_id, new_at), tf.gather(title, new_at)
        empty = {name: tf.zeros([0, dim]) for name, dim in self.item_dims.items()}
        if self.retrieval is None:
            tf.debugging.assert_equal(tf.size(new_at), 0, message="RankerFeatures without encoders got products outside the catalog")
            encoded = empty
        else:
            encoded = tf.cond(tf.size(new_at) > 0, lambda: self._encode_products(new_ids, new_titles), lambda: empty)
        known_rows = tf.gather(rows, known_at)
        out = {}
        for name, dim in self.item_dims.items():
            # Gather from the variable's value, not the variable: a ResourceGather puts a variable in
            # copy-on-read mode for good, and every full read of a shared matrix (the HybridScorer's
            # matmul in the one-call search) would then copy all of it, on every request.
            from_catalog = (tf.cast(tf.gather(tf.convert_to_tensor(self.catalog[name]), known_rows), tf.float32) if self.catalog
                            else tf.zeros([0, dim]))
            padding = tf.zeros([tf.size(pad_at), dim])
            out[name] = tf.ensure_shape(tf.dynamic_stitch([known_at, new_at, pad_at], [from_catalog, encoded[name], padding]), [None, dim])
        return out

    def _encode_products(self, product_id: Any, title: Any) -> dict[str, Any]:
        return {"product_vector": self.retrieval.product_vectors(product_id, title),
                "product_zero": self.zero_encoder(title, training=False)}

    def _lexical(self, query: Any, length: Any, title: Any, rows: Any, mask: Any) -> Any:
        """Flat [B * length, F] lexical features of the real (query [B], title) pairs; zeros at padding."""
        length = tf.maximum(tf.cast(length, tf.int64), 1)  # lists of no items have no pairs to place
        shape = tf.stack([tf.size(mask, out_type=tf.int64), len(LEXICAL_FEATURES)])

        def by_title(at: Any) -> Any:
            pairs = self.pair_features(tf.gather(query, at[:, 0] // length), tf.gather_nd(title, at))
            return tf.stack([pairs[name] for name in LEXICAL_FEATURES], axis=-1)

        if self.catalog_pair_features is None:
            real_at = tf.where(mask)
            return tf.scatter_nd(real_at, by_title(real_at), shape)
        by_row_at, other_at = tf.where(mask & (rows >= 0)), tf.where(mask & (rows < 0))
        pairs = self.catalog_pair_features(query, by_row_at[:, 0] // length, tf.gather_nd(rows, by_row_at))
        by_row = tf.stack([pairs[name] for name in LEXICAL_FEATURES], axis=-1)
        others = tf.cond(tf.size(other_at) > 0, lambda: by_title(other_at), lambda: tf.zeros([0, len(LEXICAL_FEATURES)]))
        return tf.scatter_nd(tf.concat([by_row_at, other_at], 0), tf.concat([by_row, others], 0), shape)

    def _needs_encoders(self, what: str) -> None:
        if self.retrieval is None:
            raise ValueError("RankerFeatures was built without encoders (retrieval, zero_encoder): it cannot %s" % what)


def _unflatten(values: Any, shape: Any, dim: int) -> Any:
    """Flat [B * L, dim] -> [B, L, dim], the last dimension static (the head's layers need it)."""
    return tf.ensure_shape(tf.reshape(values, tf.concat([shape, [dim]], 0)), [None, None, dim])
