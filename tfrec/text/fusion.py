"""FeatureFusion: one Keras layer that joins a text embedding with id, categorical and numeric features.

Retrieval towers and the ranker use it to turn a product (or query) into one vector::

    {"text_embedding": float [B, d_text], "id": string [B],
     "<categorical name>": string [B], "<numeric name>": float [B]}  ->  float [B, output_dim]

Cold start (the leakage trap of ../shared/datasets/README.md): with ``id_vocabulary`` every id
outside the vocabulary gets an id embedding of exactly zero. There is no out-of-vocabulary row
in the table at all, so nothing can learn an "unseen product" bias; build the vocabulary from
the *training* ids only. ``id_dropout`` zeroes the id embedding of random training examples so
the layer also learns to work from text and catalog features alone, and seen products with a
dropped id look exactly like unseen ones. ``id_hash_buckets`` has no notion of out-of-vocabulary:
every id, seen or not, lands in some bucket, and unseen ids share (collide with) the buckets of
seen ones, so hashing does not give unseen products the cold-start path.

Categorical features do keep a trainable out-of-vocabulary embedding: build their vocabularies
from the whole catalog (catalog features are known for every product), not from training rows.

``CatalogFeatureLookup`` holds a catalog's numeric and categorical columns by product id, in-graph:
a model that is given only product ids (training pairs, catalog encoding, exports) looks its
catalog features up itself, and ``fusion_arguments()`` gives FeatureFusion the matching numeric
statistics and categorical vocabularies of that catalog.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from tfrec import compat

tf = compat.tensorflow()

TEXT_KEY = "text_embedding"
ID_KEY = "id"


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError("FeatureFusion: %s must be a positive integer, got %r" % (what, value))
    return int(value)


def _rate(value: Any, what: str, allow_one: bool = False) -> float:
    rate = float(value)
    if not (0.0 <= rate < 1.0 or (allow_one and rate == 1.0)):
        raise ValueError("FeatureFusion: %s must be in %s, got %r" % (what, "[0, 1]" if allow_one else "[0, 1)", value))
    return rate


def _vocabulary(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError("FeatureFusion: %s must be a sequence of strings, not one string" % what)
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    vocabulary = [v.decode("utf-8") if isinstance(v, bytes) else v for v in items]
    if not vocabulary:
        raise ValueError("FeatureFusion: %s is empty" % what)
    bad = [v for v in vocabulary if not isinstance(v, str) or v == ""]
    if bad:
        raise ValueError("FeatureFusion: %s holds %d values that are not non-empty strings, e.g. %r" % (what, len(bad), bad[0]))
    if len(set(vocabulary)) != len(vocabulary):
        seen: set[str] = set()
        dup = next(v for v in vocabulary if v in seen or seen.add(v))
        raise ValueError("FeatureFusion: %s holds duplicates, e.g. %r" % (what, dup))
    return vocabulary


def numeric_statistics(data: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-feature (mean, variance) over finite values, ignoring NaN and infinities."""
    means, variances = {}, {}
    for name, values in data.items():
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = array[np.isfinite(array)]
        # A feature with no finite value normalizes to 0 everywhere; its missing indicator carries it.
        means[name] = float(finite.mean()) if finite.size else 0.0
        variances[name] = float(finite.var()) if finite.size else 1.0
    return means, variances


@tf.keras.utils.register_keras_serializable(package="tfrec")
class FeatureFusion(tf.keras.layers.Layer):
    """Text embedding + id embedding + categorical and numeric features -> one (optionally unit) vector."""

    def __init__(
        self,
        output_dim: int = 64,
        *,
        id_vocabulary: Optional[Sequence[str]] = None,
        id_hash_buckets: Optional[int] = None,
        id_num_oov_indices: int = 1,
        id_embedding_dim: int = 32,
        id_dropout: float = 0.0,
        categorical: Optional[Mapping[str, Union[Sequence[str], int]]] = None,
        categorical_embedding_dim: Union[int, Mapping[str, int]] = 8,
        categorical_num_oov_indices: int = 1,
        numeric: Optional[Sequence[str]] = None,
        numeric_mean: Optional[Mapping[str, float]] = None,
        numeric_variance: Optional[Mapping[str, float]] = None,
        hidden_units: Sequence[int] = (128,),
        activation: str = "relu",
        dropout: float = 0.0,
        layer_norm: bool = False,
        normalize_output: bool = True,
        residual: bool = False,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_dim = _positive_int(output_dim, "output_dim")
        if id_vocabulary is not None and id_hash_buckets is not None:
            raise ValueError("FeatureFusion: give id_vocabulary or id_hash_buckets, not both")
        self.id_vocabulary = None if id_vocabulary is None else _vocabulary(id_vocabulary, "id_vocabulary")
        self.id_hash_buckets = None if id_hash_buckets is None else _positive_int(id_hash_buckets, "id_hash_buckets")
        self.id_num_oov_indices = _positive_int(id_num_oov_indices, "id_num_oov_indices")
        self.id_embedding_dim = _positive_int(id_embedding_dim, "id_embedding_dim")
        self.id_dropout = _rate(id_dropout, "id_dropout", allow_one=True)
        self.seed = seed

        self.categorical: dict[str, Union[list[str], int]] = {}
        for name, spec in (categorical or {}).items():
            if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
                self.categorical[name] = _positive_int(spec, "hash buckets of categorical feature %r" % name)
            else:
                self.categorical[name] = _vocabulary(spec, "vocabulary of categorical feature %r" % name)
        if isinstance(categorical_embedding_dim, Mapping):
            absent = sorted(set(self.categorical) - set(categorical_embedding_dim))
            if absent:
                raise ValueError("FeatureFusion: categorical_embedding_dim has no entry for %s" % ", ".join(absent))
            dims = {n: categorical_embedding_dim[n] for n in self.categorical}
        else:
            dims = {n: categorical_embedding_dim for n in self.categorical}
        self.categorical_embedding_dim = {n: _positive_int(d, "embedding dim of categorical %r" % n) for n, d in dims.items()}
        self.categorical_num_oov_indices = _positive_int(categorical_num_oov_indices, "categorical_num_oov_indices")

        self.numeric = [str(n) for n in (numeric or [])]
        if len(set(self.numeric)) != len(self.numeric):
            raise ValueError("FeatureFusion: numeric names repeat: %s" % self.numeric)
        self.numeric_mean: Optional[dict[str, float]] = None
        self.numeric_variance: Optional[dict[str, float]] = None
        if (numeric_mean is None) != (numeric_variance is None):
            raise ValueError("FeatureFusion: give numeric_mean and numeric_variance together (or call adapt())")
        if numeric_mean is not None:
            self._set_numeric_statistics(numeric_mean, numeric_variance)

        names = [TEXT_KEY, ID_KEY, *self.categorical, *self.numeric]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ValueError(
                "FeatureFusion: feature names used twice (or clashing with %r/%r): %s" % (TEXT_KEY, ID_KEY, ", ".join(clashes))
            )

        self.hidden_units = [_positive_int(u, "hidden_units entry") for u in hidden_units]
        self.activation = tf.keras.activations.serialize(tf.keras.activations.get(activation))
        self.dropout = _rate(dropout, "dropout")
        self.layer_norm = bool(layer_norm)
        self.normalize_output = bool(normalize_output)
        # residual: output = text_embedding + MLP(all features), the MLP's last layer starting at zero, so
        # the layer starts as the pretrained text embedding and fine-tuning moves away from it only as far
        # as the other features earn (a random MLP would throw away the zero-shot geometry at step 0).
        self.residual = bool(residual)
        self._build_sublayers()

    # -- construction ----------------------------------------------------------------------

    def _build_sublayers(self) -> None:
        self._id_lookup = None
        self._id_table = None
        if self.id_vocabulary is not None:
            self._id_lookup = tf.keras.layers.StringLookup(
                vocabulary=self.id_vocabulary, num_oov_indices=self.id_num_oov_indices, name="id_lookup"
            )
            # Exactly one row per known id: out-of-vocabulary ids have no row that could learn.
            self._id_table = tf.keras.layers.Embedding(len(self.id_vocabulary), self.id_embedding_dim, name="id_embedding")
        elif self.id_hash_buckets is not None:
            self._id_lookup = tf.keras.layers.Hashing(num_bins=self.id_hash_buckets, name="id_hashing")
            self._id_table = tf.keras.layers.Embedding(self.id_hash_buckets, self.id_embedding_dim, name="id_embedding")

        self._categorical_lookups = {}
        self._categorical_tables = {}
        for name, spec in self.categorical.items():
            if isinstance(spec, int):
                lookup = tf.keras.layers.Hashing(num_bins=spec, name="%s_hashing" % name)
                rows = spec
            else:
                lookup = tf.keras.layers.StringLookup(
                    vocabulary=spec, num_oov_indices=self.categorical_num_oov_indices, name="%s_lookup" % name
                )
                rows = len(spec) + self.categorical_num_oov_indices
            self._categorical_lookups[name] = lookup
            self._categorical_tables[name] = tf.keras.layers.Embedding(
                rows, self.categorical_embedding_dim[name], name="%s_embedding" % name
            )

        self._hidden = []
        for i, units in enumerate(self.hidden_units):
            block = [tf.keras.layers.Dense(units, activation=self.activation, name="hidden_%d" % i)]
            if self.layer_norm:
                block.append(tf.keras.layers.LayerNormalization(name="hidden_%d_norm" % i))
            if self.dropout:
                block.append(tf.keras.layers.Dropout(self.dropout, seed=self.seed, name="hidden_%d_dropout" % i))
            self._hidden.append(block)
        self._output = tf.keras.layers.Dense(
            self.output_dim, kernel_initializer="zeros" if self.residual else "glorot_uniform", name="output"
        )
        self._numeric_norm = None  # created in build(), once the statistics are known

    def adapt(self, numeric_data: Mapping[str, Any]) -> None:
        """Set the numeric normalization from data (NaN/inf ignored); call before the layer is first used."""
        if self.built:
            raise RuntimeError("FeatureFusion.adapt() must be called before the layer is first called or built")
        absent = sorted(set(self.numeric) - set(numeric_data))
        if absent:
            raise ValueError("FeatureFusion.adapt: numeric_data has no column for %s" % ", ".join(absent))
        means, variances = numeric_statistics({n: numeric_data[n] for n in self.numeric})
        self._set_numeric_statistics(means, variances)

    def _set_numeric_statistics(self, means: Mapping[str, float], variances: Mapping[str, float]) -> None:
        for label, values in (("numeric_mean", means), ("numeric_variance", variances)):
            absent = sorted(set(self.numeric) - set(values))
            if absent:
                raise ValueError("FeatureFusion: %s has no entry for %s" % (label, ", ".join(absent)))
        bad = [
            n for n in self.numeric
            if not (math.isfinite(float(means[n])) and math.isfinite(float(variances[n])) and float(variances[n]) >= 0.0)
        ]
        if bad:
            raise ValueError("FeatureFusion: numeric mean/variance must be finite and variance >= 0; bad for %s" % ", ".join(bad))
        self.numeric_mean = {n: float(means[n]) for n in self.numeric}
        self.numeric_variance = {n: float(variances[n]) for n in self.numeric}

    def build(self, input_shape: Any) -> None:
        """Create the numeric normalization (its statistics are known only now) and check the input keys."""
        if isinstance(input_shape, Mapping):
            self._check_keys(input_shape)
        if self.numeric:
            if self.numeric_mean is None:
                raise ValueError(
                    "FeatureFusion: numeric features %s have no mean/variance: pass numeric_mean and numeric_variance "
                    "or call adapt(data) before using the layer" % ", ".join(self.numeric)
                )
            self._numeric_norm = tf.keras.layers.Normalization(
                axis=-1,
                mean=[self.numeric_mean[n] for n in self.numeric],
                variance=[self.numeric_variance[n] for n in self.numeric],
                name="numeric_normalization",
            )
        super().build(input_shape)

    # -- forward ---------------------------------------------------------------------------

    def _check_keys(self, inputs: Mapping[str, Any]) -> None:
        needed = [TEXT_KEY, *([ID_KEY] if self._id_table is not None else []), *self.categorical, *self.numeric]
        absent = [k for k in needed if k not in inputs]
        if absent:
            raise ValueError("FeatureFusion inputs lack %s (got %s; expected %s)" % (", ".join(absent), sorted(inputs), needed))

    @staticmethod
    def _flat(values: Any, name: str) -> Any:
        """Accept [B] or [B, 1] features; return [B]."""
        tensor = tf.convert_to_tensor(values)
        if tensor.shape.rank == 2 and tensor.shape[-1] == 1:
            return tf.squeeze(tensor, axis=-1)
        if tensor.shape.rank != 1:
            raise ValueError("FeatureFusion input %r must have shape [B] or [B, 1], got %s" % (name, tensor.shape))
        return tensor

    def id_embedding(self, ids: Any, training: Optional[bool] = None) -> Any:
        """The id part of the fused input, [B, id_embedding_dim]: zero for out-of-vocabulary ids."""
        if self._id_table is None:
            raise ValueError("FeatureFusion has no id feature (neither id_vocabulary nor id_hash_buckets was given)")
        ids = self._flat(ids, ID_KEY)
        if ids.dtype != tf.string:
            raise ValueError("FeatureFusion input %r must be strings, got %s" % (ID_KEY, ids.dtype.name))
        indices = self._id_lookup(ids)
        if self.id_vocabulary is not None:
            # StringLookup puts the OOV indices first; known ids start at num_oov_indices.
            known = indices >= self.id_num_oov_indices
            rows = tf.maximum(indices - self.id_num_oov_indices, 0)
            vectors = tf.where(known[:, None], self._id_table(rows), tf.zeros([], self.compute_dtype))
        else:
            vectors = self._id_table(indices)
        if self.id_dropout > 0.0:
            vectors = self._drop_ids(vectors, training)
        return vectors

    def _drop_ids(self, vectors: Any, training: Optional[bool]) -> Any:
        """Zero whole id embeddings at random in training; no 1/(1-p) rescaling, so kept ones look as at inference."""
        if training is None:
            training = tf.keras.backend.learning_phase()

        def dropped() -> Any:
            keep = tf.random.uniform(tf.shape(vectors)[:1], seed=self.seed) >= self.id_dropout
            return tf.where(keep[:, None], vectors, tf.zeros([], vectors.dtype))

        if isinstance(training, (bool, int)):
            return dropped() if training else vectors
        return tf.cond(tf.cast(training, tf.bool), dropped, lambda: tf.identity(vectors))

    def call(self, inputs: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        """Fuse the features of one batch into [B, output_dim]."""
        if not isinstance(inputs, Mapping):
            raise ValueError("FeatureFusion expects a dict of features, got %s" % type(inputs).__name__)
        self._check_keys(inputs)
        text = tf.cast(inputs[TEXT_KEY], self.compute_dtype)
        if text.shape.rank != 2:
            raise ValueError("FeatureFusion input %r must have shape [B, d_text], got %s" % (TEXT_KEY, text.shape))
        parts = [text]
        if self._id_table is not None:
            parts.append(self.id_embedding(inputs[ID_KEY], training=training))
        for name in self.categorical:
            values = self._flat(inputs[name], name)
            if values.dtype != tf.string:
                raise ValueError("FeatureFusion categorical input %r must be strings, got %s" % (name, values.dtype.name))
            parts.append(self._categorical_tables[name](self._categorical_lookups[name](values)))
        if self.numeric:
            raw = tf.stack([tf.cast(self._flat(inputs[n], n), self.compute_dtype) for n in self.numeric], axis=-1)
            missing = tf.logical_not(tf.math.is_finite(raw))
            # Fill before normalizing so no NaN enters the graph; a missing value becomes 0 (the mean).
            normalized = self._numeric_norm(tf.where(missing, tf.zeros_like(raw), raw))
            parts.append(tf.where(missing, tf.zeros_like(normalized), normalized))
            parts.append(tf.cast(missing, self.compute_dtype))
        x = tf.concat(parts, axis=-1)
        for block in self._hidden:
            for layer in block:
                x = layer(x, training=training) if isinstance(layer, tf.keras.layers.Dropout) else layer(x)
        x = self._output(x)
        if self.residual:
            if text.shape[-1] is not None and text.shape[-1] != self.output_dim:
                raise ValueError(
                    "FeatureFusion(residual=True) needs output_dim == the text embedding size (%d), got %d"
                    % (text.shape[-1], self.output_dim)
                )
            x = text + x
        if self.normalize_output:
            x = tf.math.l2_normalize(x, axis=-1)
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        """[B, output_dim]."""
        text_shape = tf.TensorShape(input_shape[TEXT_KEY])
        return tf.TensorShape([text_shape[0], self.output_dim])

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument, vocabularies and numeric statistics included."""
        config = super().get_config()
        config.update(
            output_dim=self.output_dim,
            id_vocabulary=None if self.id_vocabulary is None else list(self.id_vocabulary),
            id_hash_buckets=self.id_hash_buckets,
            id_num_oov_indices=self.id_num_oov_indices,
            id_embedding_dim=self.id_embedding_dim,
            id_dropout=self.id_dropout,
            # Attribute lists and dicts come back wrapped by Keras tracking: unwrap them for JSON.
            categorical={n: v if isinstance(v, int) else list(v) for n, v in self.categorical.items()},
            categorical_embedding_dim=dict(self.categorical_embedding_dim),
            categorical_num_oov_indices=self.categorical_num_oov_indices,
            numeric=list(self.numeric),
            numeric_mean=None if self.numeric_mean is None else dict(self.numeric_mean),
            numeric_variance=None if self.numeric_variance is None else dict(self.numeric_variance),
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            dropout=self.dropout,
            layer_norm=self.layer_norm,
            normalize_output=self.normalize_output,
            residual=self.residual,
            seed=self.seed,
        )
        return config


class CatalogFeatureLookup(tf.keras.layers.Layer):
    """Product ids [B] -> ``{column: [B]}`` of a catalog's numeric (float32) and categorical (string) columns.

    The catalog's rows live in in-graph hash tables (one per column; resources, not weights, so
    they are exported with the model and never checkpointed). An id outside the catalog gets the
    missing values, as a missing cell does: NaN for a numeric column (FeatureFusion standardizes it
    to 0, the mean, and sets its missing flag) and "" for a categorical one (out of vocabulary).
    """

    def __init__(
        self,
        ids: Sequence[str],
        *,
        numeric: Optional[Mapping[str, Any]] = None,
        categorical: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        keys = _vocabulary(ids, "ids")
        numeric_values = {str(n): np.asarray(v, np.float32).reshape(-1) for n, v in (numeric or {}).items()}
        categorical_values = {str(n): np.asarray(v, object).reshape(-1).astype(str) for n, v in (categorical or {}).items()}
        if not numeric_values and not categorical_values:
            raise ValueError("CatalogFeatureLookup: give at least one numeric or categorical column")
        for name, values in {**numeric_values, **categorical_values}.items():
            if len(values) != len(keys):
                raise ValueError("CatalogFeatureLookup: column %r has %d values for %d ids" % (name, len(values), len(keys)))
        self.numeric_mean, self.numeric_variance = numeric_statistics(numeric_values)
        self.categorical_vocabularies: dict[str, list[str]] = {}
        for name, values in categorical_values.items():
            vocabulary = sorted(set(values.tolist()) - {""})
            if not vocabulary:
                raise ValueError("CatalogFeatureLookup: categorical column %r is empty for every product" % name)
            self.categorical_vocabularies[name] = vocabulary
        key_tensor = tf.constant(keys, tf.string)

        def table(values: np.ndarray, dtype: Any, default: Any) -> Any:
            initializer = tf.lookup.KeyValueTensorInitializer(key_tensor, tf.constant(values, dtype))
            return tf.lookup.StaticHashTable(initializer, default_value=tf.constant(default, dtype))

        self.numeric = list(numeric_values)
        self.categorical = list(categorical_values)
        self._tables = {name: table(v, tf.float32, float("nan")) for name, v in numeric_values.items()}
        self._tables.update({name: table(v.astype(object), tf.string, "") for name, v in categorical_values.items()})
        self.built = True  # nothing depends on input shapes

    def fusion_arguments(self) -> dict[str, Any]:
        """FeatureFusion's ``numeric``, ``numeric_mean``, ``numeric_variance`` and ``categorical`` for these columns."""
        if not self.numeric:
            return {"categorical": dict(self.categorical_vocabularies)}
        return {
            "numeric": list(self.numeric),
            "numeric_mean": dict(self.numeric_mean),
            "numeric_variance": dict(self.numeric_variance),
            "categorical": dict(self.categorical_vocabularies),
        }

    def call(self, ids: Any) -> dict[str, Any]:
        """The columns of the products with these ids (any shape; missing values for unknown ids)."""
        ids = tf.convert_to_tensor(ids)
        if ids.dtype != tf.string:
            raise ValueError("CatalogFeatureLookup input must be string product ids, got %s" % ids.dtype.name)
        return {name: self._tables[name].lookup(ids) for name in (*self.numeric, *self.categorical)}
