"""MovieLens 100K as in the TFRS tutorials: their 80,000/20,000 split and tfrec's multi-task model on it.

The split. The tutorials shuffle TFDS's ``movielens/100k-ratings`` with ``tf.random.set_seed(42)``
and ``shuffle(100_000, seed=42, reshuffle_each_iteration=False)`` and take 80,000 then 20,000.
:func:`tutorial_split` applies that exact shuffle to the rows of ``u.data`` in file order (the
order of ``data.interactions``): the same permutation, the same sizes, but TFDS stores the ratings
in another order, so the pairs in each part are not the tutorial's ones. The model-selection
holdout is a seeded share of the 80,000 training pairs (:func:`holdout_split`); the 20,000 test
pairs are only ever used for the reported numbers.

Movies are titles. The tutorials identify a movie by its title (1,664 titles for 1,682 movie
ids; the 18 repeats are one film under two ids, with the same genres), so tfrec does too
(:class:`MovieTitles`), and top-K accuracy is computed as ``tfrs.metrics.FactorizedTopK`` does with
the tutorial's candidates ``movies.batch(128).map(movie_model)``: each of the 1,682 catalog rows
is a candidate scored through its title, and a test pair is a hit at k when fewer than k
candidates score strictly higher than its movie (:func:`top_k_accuracy`).

The model (the TFRS multitask pattern, ``tfrs.models.Model`` with a weighted sum of a rating
loss and a retrieval loss). The movie bottom fuses the frozen MiniLM vector of "title | genres"
with a title-id embedding (:class:`~tfrec.text.fusion.FeatureFusion`; titles outside the training
pairs get a zero id embedding, so they are scored from their text alone). The user bottom is a
user-id embedding beside the mean text vector of the user's training movies; for a training pair
that mean leaves the pair's own movie out, so the feature never contains the target it is
trained to predict. Each bottom feeds a :class:`TaskMixture`: ``shared_bottom`` gives both tasks
one vector, ``mmoe`` mixes shared experts with one softmax gate per task (gated per tower, so the
retrieval score stays a dot product of a user vector and a movie vector). Retrieval: dot product
(plus a learned per-title bias, as one more coordinate of both vectors) with a softmax over every
title (``full``) or over the batch (``in_batch``, tfrs Retrieval); rating: an MLP on the two
rating vectors, squared error. Both losses are per-example means, so weights of 1 and 1 add one
cross-entropy and one squared error per pair.

The run (:func:`train_movielens`): :func:`prepare_inputs` (split, titles, text vectors, pairs) ->
:func:`train_variant` for the configured settings and each swept (mixture, weighting) -> a typed
:class:`MovieLensMetrics` whose ``to_json()`` is metrics.json. The report is rendered from that
file afterwards (:mod:`tfrec.reports.movielens`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.config.schema import Config
from tfrec.data.tables import Catalog, RecommendationData
from tfrec.evaluation.chunks import row_chunk
from tfrec.runs import MOVIELENS, RunFolder, write_json
from tfrec.text.fusion import FeatureFusion
from tfrec.training.trainer import Trainer, TrainResult, epoch_seed
from tfrec.text.catalog import catalog_text_features

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402  (after compat: Keras 2 mode)

log = logging.getLogger(__name__)

TASKS = ("retrieval", "rating")
MIXTURES = ("shared_bottom", "mmoe")
SOFTMAX_KINDS = ("full", "in_batch")
TOP_KS = (1, 5, 10, 50, 100)
TUTORIAL_SEED = 42
TUTORIAL_TRAIN = 80_000
TUTORIAL_TEST = 20_000
TEXT_SEPARATOR = " | "
EVAL_BATCH = 4096


# ----------------------------------------------------------------------------- split and data


@dataclass(frozen=True)
class TutorialSplit:
    """Row positions in ``data.interactions`` (u.data order) of the train and test pairs."""

    train: np.ndarray  # int64
    test: np.ndarray  # int64


def tutorial_split(n_rows: int, *, seed: int = TUTORIAL_SEED, train_size: int = TUTORIAL_TRAIN,
                   test_size: int = TUTORIAL_TEST, buffer_size: int = 100_000) -> TutorialSplit:
    """The TFRS tutorials' shuffle-take-skip split of ``n_rows`` ratings, as row positions."""
    if n_rows < 1 or train_size < 1 or test_size < 0 or train_size + test_size > n_rows:
        raise ValueError("tutorial_split: need 1 <= train_size (%d), 0 <= test_size (%d) and their sum <= n_rows (%d)"
                         % (train_size, test_size, n_rows))
    graph = tf.Graph()
    with graph.as_default():
        # The tutorial sets the global seed; here it seeds this private graph only, which gives the
        # shuffle the same (graph seed, op seed) pair without touching the process's global seed.
        tf.random.set_seed(seed)
        shuffled = tf.data.Dataset.range(n_rows).shuffle(buffer_size, seed=seed, reshuffle_each_iteration=False)
        everything = shuffled.batch(n_rows).get_single_element()
        with tf.compat.v1.Session(graph=graph) as session:
            order = np.asarray(session.run(everything), dtype=np.int64)
    return TutorialSplit(train=order[:train_size], test=order[train_size:train_size + test_size])


def tutorial_sizes(n_rows: int) -> tuple[int, int]:
    """(train, test) sizes: the tutorial's 80,000/20,000 for the full 100,000 ratings, else 80%/20% (a slice)."""
    if n_rows >= TUTORIAL_TRAIN + TUTORIAL_TEST:
        return TUTORIAL_TRAIN, TUTORIAL_TEST
    train = int(n_rows * 0.8)
    return train, n_rows - train


def holdout_split(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, holdout): a seeded random ``fraction`` of ``rows`` held out for choosing epochs and settings."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("holdout fraction must be in (0, 1), got %r" % (fraction,))
    rows = np.asarray(rows)
    n_holdout = int(round(len(rows) * fraction))
    if n_holdout < 1 or n_holdout >= len(rows):
        raise ValueError("holdout fraction %r of %d rows leaves an empty part" % (fraction, len(rows)))
    order = np.random.default_rng(seed).permutation(len(rows))
    return rows[order[n_holdout:]], rows[order[:n_holdout]]


@dataclass(frozen=True)
class MovieTitles:
    """Movies as the tutorials see them: one entry per distinct title, sorted like ``np.unique``."""

    titles: np.ndarray  # object [n_titles]
    of_row: np.ndarray  # int32 [n_catalog_rows]: the title index of each catalog row
    texts: np.ndarray  # object [n_titles]: "title | genres" of the title's first catalog row

    def __len__(self) -> int:
        return len(self.titles)


def movie_titles(catalog: Catalog) -> MovieTitles:
    """Group a MovieLens catalog (text fields ``title`` and ``genres``) by title."""
    absent = [name for name in ("title", "genres") if name not in catalog.texts]
    if absent:
        raise ValueError("the catalog (%s) has no %s text field: is it MovieLens?" % (catalog.source, " or ".join(absent)))
    titles = catalog.texts["title"].astype(str)
    unique, first, of_row = np.unique(titles, return_index=True, return_inverse=True)
    texts = catalog.text(["title", "genres"], separator=TEXT_SEPARATOR)[first]
    return MovieTitles(titles=unique.astype(object), of_row=of_row.astype(np.int32), texts=np.asarray(texts, dtype=object))


@dataclass(frozen=True)
class Pairs:
    """(user, movie) rating pairs: the user id, the rated catalog row, its title index and the rating."""

    users: np.ndarray  # object str
    rows: np.ndarray  # int32 catalog rows
    titles: np.ndarray  # int32 title indices
    ratings: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.users)


def pairs_of(data: RecommendationData, positions: np.ndarray, titles: MovieTitles) -> Pairs:
    """The interaction-log rows at ``positions`` as :class:`Pairs`."""
    ratings = data.interactions
    if ratings is None or ratings.ratings is None:
        raise ValueError("dataset %r has no rated interaction log (MovieLens u.data)" % data.name)
    positions = np.asarray(positions, dtype=np.int64)
    rows = ratings.items[positions].astype(np.int32)
    return Pairs(users=ratings.users[positions].astype(str).astype(object), rows=rows, titles=titles.of_row[rows],
                 ratings=ratings.ratings[positions].astype(np.float32))


def title_text_vectors(titles: MovieTitles, text_cfg: Any, progress: bool = False) -> np.ndarray:
    """Frozen MiniLM vectors [n_titles, 384] of "title | genres" (cached on disk by the text cache)."""
    vectors, _ = catalog_text_features(titles.texts.tolist(), text_cfg, progress=progress)
    return np.asarray(vectors, dtype=np.float32)


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MovieLensSettings:
    """Everything that shapes one MovieLens model and its training (from ``recommendation`` in a config).

    The defaults are those of configs/movielens.yaml, chosen on the holdout (never on the test pairs).
    """

    mixture: str = "shared_bottom"
    rating_weight: float = 1.0
    retrieval_weight: float = 1.0
    experts: int = 4
    expert_units: int = 64
    dim: int = 64
    rating_units: tuple[int, ...] = (256, 128)
    softmax: str = "full"
    temperature: float = 0.1
    sampling_correction: bool = True  # in_batch only: measured on the holdout, top-100 0.20 without, 0.41 with
    item_text: bool = True
    item_id: bool = True
    user_history: bool = True
    item_bias: bool = True
    dropout: float = 0.2
    id_dropout: float = 0.2
    batch_size: int = 512
    learning_rate: float = 2e-3
    epochs: int = 20
    patience: int = 2

    def __post_init__(self) -> None:
        if self.mixture not in MIXTURES:
            raise ValueError("mixture must be one of %s, got %r" % (", ".join(MIXTURES), self.mixture))
        if self.softmax not in SOFTMAX_KINDS:
            raise ValueError("softmax must be one of %s, got %r" % (", ".join(SOFTMAX_KINDS), self.softmax))
        if self.rating_weight < 0 or self.retrieval_weight < 0 or self.rating_weight + self.retrieval_weight == 0:
            raise ValueError("loss weights must be >= 0 and not both 0, got rating %r, retrieval %r"
                             % (self.rating_weight, self.retrieval_weight))
        if not (self.item_text or self.item_id):
            raise ValueError("a movie needs its text, its id or both (item_text and item_id are both off)")

    @property
    def weighting(self) -> tuple[float, float]:
        """(rating_weight, retrieval_weight)."""
        return (self.rating_weight, self.retrieval_weight)


def settings_from_config(config: Config) -> MovieLensSettings:
    """The configured model: ``recommendation`` fields and its ``multitask`` section."""
    rec, multi = config.recommendation, config.recommendation.multitask
    return MovieLensSettings(
        mixture=multi.mixture, rating_weight=multi.rating_weight, retrieval_weight=multi.retrieval_weight,
        experts=multi.experts, expert_units=multi.expert_units, dim=rec.dim, rating_units=tuple(multi.rating_units),
        softmax=rec.softmax, temperature=rec.temperature, sampling_correction=rec.sampling_correction,
        item_text=rec.item_text, item_id=rec.item_id, user_history=multi.user_history, item_bias=multi.item_bias,
        dropout=rec.dropout, id_dropout=rec.id_dropout, batch_size=rec.batch_size, learning_rate=rec.learning_rate,
        epochs=rec.epochs, patience=multi.patience,
    )


# ----------------------------------------------------------------------------- model


class TaskMixture(tf.keras.layers.Layer):
    """One input -> one vector per task: a shared bottom (the same vector for all) or an MMoE mixture."""

    def __init__(self, output_dim: int, *, mixture: str = "shared_bottom", tasks: Sequence[str] = TASKS,
                 experts: int = 4, units: int = 64, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mixture not in MIXTURES:
            raise ValueError("TaskMixture: mixture must be one of %s, got %r" % (", ".join(MIXTURES), mixture))
        if output_dim < 1 or experts < 1 or units < 1 or not tasks:
            raise ValueError("TaskMixture: output_dim, experts and units must be >= 1 and tasks non-empty")
        self.mixture, self.tasks, self.output_dim = mixture, tuple(tasks), int(output_dim)
        self.dropout = tf.keras.layers.Dropout(dropout) if dropout > 0 else None
        if mixture == "shared_bottom":
            self.bottom = tf.keras.layers.Dense(units, activation="relu", name="bottom")
            self.output_layer = tf.keras.layers.Dense(self.output_dim, name="output")
        else:
            self.experts = [tf.keras.layers.Dense(units, activation="relu", name="expert_%d" % i) for i in range(experts)]
            self.gate_layers = {task: tf.keras.layers.Dense(experts, name="gate_%s" % task) for task in self.tasks}
            self.task_outputs = {task: tf.keras.layers.Dense(self.output_dim, name="output_%s" % task) for task in self.tasks}

    def gates(self, inputs: Any) -> dict[str, Any]:
        """MMoE only: each task's softmax weights over the experts, [B, experts] per task."""
        if self.mixture != "mmoe":
            raise ValueError("TaskMixture(%s) has no gates: only the mmoe mixture has" % self.mixture)
        return {task: tf.nn.softmax(layer(inputs), axis=-1) for task, layer in self.gate_layers.items()}

    def _drop(self, x: Any, training: bool) -> Any:
        return self.dropout(x, training=training) if self.dropout is not None else x

    def call(self, inputs: Any, training: bool = False) -> dict[str, Any]:
        """{task: [B, output_dim]}."""
        if self.mixture == "shared_bottom":
            shared = self.output_layer(self._drop(self.bottom(inputs), training))
            return {task: shared for task in self.tasks}
        experts = tf.stack([self._drop(expert(inputs), training) for expert in self.experts], axis=1)  # [B, E, units]
        return {task: self.task_outputs[task](tf.einsum("be,beu->bu", gate, experts))
                for task, gate in self.gates(inputs).items()}


def _lookup_table(values: Sequence[str], name: str) -> Any:
    """A StringLookup whose index 0 is out-of-vocabulary (the recipe's layout: known values from 1)."""
    return tf.keras.layers.StringLookup(vocabulary=list(values), mask_token=None, num_oov_indices=1, name=name)


class MovieLensModel(tfrs.models.Model):
    """The multi-task MovieLens model: rating regression + retrieval over text-fused movie titles.

    Features of a batch: ``user`` (string [B]), ``title`` (int32 title index [B]), ``rating``
    (float32 [B]) and ``own`` (float32 [B]: 1 when the pair is one of the training pairs the
    user-history table was built from, so its own movie is taken out of the history mean).
    """

    def __init__(self, settings: MovieLensSettings, titles: MovieTitles, text_vectors: Optional[np.ndarray], fit: Pairs,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(fit) == 0:
            raise ValueError("MovieLensModel needs training pairs (got none)")
        self.settings, self.n_titles = settings, len(titles)
        if text_vectors is None:
            if settings.item_text or settings.user_history:
                raise ValueError("item_text / user_history need the titles' text vectors (got None)")
            text_vectors = np.zeros((len(titles), 0), np.float32)
        text_vectors = np.asarray(text_vectors, np.float32)
        if text_vectors.shape[0] != len(titles):
            raise ValueError("text_vectors has %d rows for %d titles" % (text_vectors.shape[0], len(titles)))
        # Data, not weights: constants stay out of checkpoints and optimizers.
        self.title_texts = tf.constant(text_vectors)
        self.title_names = tf.constant(titles.titles.astype(str))
        users = np.unique(fit.users.astype(str))
        self.user_lookup = _lookup_table(users, "user_lookup")
        self.user_embedding = tf.keras.layers.Embedding(len(users) + 1, settings.dim, name="user_embedding")
        sums, counts = _history_table(fit, users, text_vectors)
        self.history_sums, self.history_counts = tf.constant(sums), tf.constant(counts)
        self.movie_fusion = FeatureFusion(
            settings.expert_units,
            id_vocabulary=list(titles.titles[np.unique(fit.titles)].astype(str)) if settings.item_id else None,
            id_embedding_dim=settings.dim, id_dropout=settings.id_dropout, hidden_units=(), normalize_output=False,
            name="movie_fusion",
        )
        mixture = dict(mixture=settings.mixture, experts=settings.experts, units=settings.expert_units, dropout=settings.dropout)
        self.user_mixture = TaskMixture(settings.dim, name="user_mixture", **mixture)
        self.movie_mixture = TaskMixture(settings.dim, name="movie_mixture", **mixture)
        self.title_bias = tf.keras.layers.Embedding(len(titles), 1, embeddings_initializer="zeros", name="title_bias")
        self.rating_head = tf.keras.Sequential(
            [tf.keras.layers.Dense(units, activation="relu") for units in settings.rating_units]
            + [tf.keras.layers.Dense(1, bias_initializer=tf.keras.initializers.Constant(float(np.mean(fit.ratings))))],
            name="rating_head",
        )
        self.rating_task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(),
                                              metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])
        counts_per_title = np.bincount(fit.titles, minlength=len(titles)).astype(np.float32)
        self.title_probability = tf.constant(np.maximum(counts_per_title / counts_per_title.sum(), 1e-8))
        self.retrieval_task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
            temperature=settings.temperature, remove_accidental_hits=True)

    # -- towers --------------------------------------------------------------------------------

    def user_inputs(self, users: Any, titles: Any, own: Any) -> Any:
        """The user bottom's input [B, dim (+ text dim)]: id embedding and the history's mean text vector."""
        index = self.user_lookup(users)
        parts = [self.user_embedding(index)]
        if self.settings.user_history:
            own = tf.cast(own, tf.float32)
            total = tf.gather(self.history_sums, index) - own[:, None] * tf.gather(self.title_texts, titles)
            count = tf.gather(self.history_counts, index) - own
            parts.append(total / tf.maximum(count, 1.0)[:, None])
        return tf.concat(parts, axis=-1)

    def user_vectors(self, users: Any, titles: Any, own: Any, training: bool = False) -> dict[str, Any]:
        """{task: [B, dim]} for users (``titles``/``own`` say which movie to leave out of the history)."""
        return self.user_mixture(self.user_inputs(users, titles, own), training=training)

    def movie_vectors(self, titles: Any, training: bool = False) -> dict[str, Any]:
        """{task: [B, dim]} for title indices."""
        titles = tf.convert_to_tensor(titles, tf.int32)
        inputs = {"text_embedding": tf.gather(self.title_texts, titles) if self.settings.item_text
                  else tf.zeros([tf.shape(titles)[0], 0], tf.float32)}
        if self.settings.item_id:
            inputs["id"] = tf.gather(self.title_names, titles)
        return self.movie_mixture(self.movie_fusion(inputs, training=training), training=training)

    def query_vectors(self, users: Any, titles: Any, own: Any, training: bool = False) -> Any:
        """Retrieval query vectors [B, dim (+1)] (a trailing 1 meets the candidates' title bias)."""
        vectors = self.user_vectors(users, titles, own, training=training)["retrieval"]
        if self.settings.item_bias:
            vectors = tf.concat([vectors, tf.ones_like(vectors[:, :1])], axis=-1)
        return vectors

    def candidate_vectors(self, titles: Any = None, training: bool = False) -> Any:
        """Retrieval candidate vectors [n, dim (+1)] of title indices (default: every title)."""
        titles = tf.range(self.n_titles, dtype=tf.int32) if titles is None else tf.convert_to_tensor(titles, tf.int32)
        vectors = self.movie_vectors(titles, training=training)["retrieval"]
        if self.settings.item_bias:
            vectors = tf.concat([vectors, self.title_bias(titles)], axis=-1)
        return vectors

    def predict_ratings(self, user_vectors: Any, movie_vectors: Any, training: bool = False) -> Any:
        """Rating predictions [B] from the two rating vectors."""
        return tf.squeeze(self.rating_head(tf.concat([user_vectors, movie_vectors], axis=-1), training=training), -1)

    def call(self, features: Mapping[str, Any], training: bool = False) -> tuple[Any, Any]:
        """(retrieval query vectors [B, d], predicted ratings [B]) of a batch of pairs."""
        users = self.user_vectors(features["user"], features["title"], features["own"], training=training)
        movies = self.movie_vectors(features["title"], training=training)
        return users["retrieval"], self.predict_ratings(users["rating"], movies["rating"], training=training)

    # -- losses --------------------------------------------------------------------------------

    def task_losses(self, features: Mapping[str, Any], training: bool = False) -> dict[str, Any]:
        """Each task's per-example mean loss on a batch: {"retrieval": cross-entropy, "rating": squared error}."""
        titles = tf.cast(features["title"], tf.int32)
        users = self.user_vectors(features["user"], titles, features["own"], training=training)
        query = users["retrieval"]
        if self.settings.item_bias:
            query = tf.concat([query, tf.ones_like(query[:, :1])], axis=-1)
        batch = tf.cast(tf.shape(titles)[0], tf.float32)
        if self.settings.softmax == "full":
            # Every title is a candidate of every pair (1,664 of them: cheap); tfrs's task puts the
            # positive on the batch diagonal, so the exact softmax is written out.
            every = self.movie_vectors(tf.range(self.n_titles, dtype=tf.int32), training=training)
            candidates = every["retrieval"]
            if self.settings.item_bias:
                candidates = tf.concat([candidates, self.title_bias(tf.range(self.n_titles))], axis=-1)
            logits = tf.matmul(query, candidates, transpose_b=True) / self.settings.temperature
            retrieval = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=titles, logits=logits))
            movie_rating = tf.gather(every["rating"], titles)
        else:
            movies = self.movie_vectors(titles, training=training)
            candidates = movies["retrieval"]
            if self.settings.item_bias:
                candidates = tf.concat([candidates, self.title_bias(titles)], axis=-1)
            probability = tf.gather(self.title_probability, titles) if self.settings.sampling_correction else None
            retrieval = self.retrieval_task(query, candidates, candidate_sampling_probability=probability,
                                            candidate_ids=titles, compute_metrics=False) / batch
            movie_rating = movies["rating"]
        predicted = self.predict_ratings(users["rating"], movie_rating, training=training)
        # RMSE costs nothing beside the loss, so training logs show it too (unlike top-K accuracy).
        rating = self.rating_task(labels=features["rating"], predictions=predicted)
        return {"retrieval": retrieval, "rating": rating}

    def compute_loss(self, features: Mapping[str, Any], training: bool = False) -> Any:
        """The weighted sum ``rating_weight * rating + retrieval_weight * retrieval`` (per-example means)."""
        losses = self.task_losses(features, training=training)
        return self.settings.rating_weight * losses["rating"] + self.settings.retrieval_weight * losses["retrieval"]


def _history_table(fit: Pairs, users: np.ndarray, text_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user (row 0: unknown users) the sum of their training titles' text vectors and their count."""
    index = np.searchsorted(users, fit.users.astype(str)) + 1
    sums = np.zeros((len(users) + 1, text_vectors.shape[1]), np.float32)
    np.add.at(sums, index, text_vectors[fit.titles])
    counts = np.bincount(index, minlength=len(users) + 1).astype(np.float32)
    return sums, counts


def build_model(settings: MovieLensSettings, titles: MovieTitles, text_vectors: Optional[np.ndarray], fit: Pairs) -> MovieLensModel:
    """A compiled :class:`MovieLensModel` (Adam at the settings' learning rate)."""
    model = MovieLensModel(settings, titles, text_vectors, fit)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=settings.learning_rate))
    return model


# ----------------------------------------------------------------------------- evaluation


def _features(pairs: Pairs, own: float) -> dict[str, np.ndarray]:
    return {"user": pairs.users.astype(str), "title": pairs.titles.astype(np.int32), "rating": pairs.ratings.astype(np.float32),
            "own": np.full(len(pairs), own, np.float32)}


def top_k_accuracy(query_vectors: np.ndarray, candidate_vectors: np.ndarray, positive_columns: np.ndarray,
                   ks: Sequence[int] = TOP_KS) -> dict[str, float]:
    """FactorizedTopK's score-based top-K accuracy: a hit at k when fewer than k candidates score above the positive.

    ``positive_columns`` names, per query, the candidate row that is its positive; ties with the
    positive count for it (``tf.math.in_top_k``, as in the metric), so candidates sharing the
    positive's vector (a repeated title) never push it out.
    """
    query_vectors, candidate_vectors = np.asarray(query_vectors, np.float32), np.asarray(candidate_vectors, np.float32)
    positive_columns = np.asarray(positive_columns, np.int64)
    if query_vectors.ndim != 2 or candidate_vectors.ndim != 2 or query_vectors.shape[1] != candidate_vectors.shape[1]:
        raise ValueError("top_k_accuracy: need [n, d] queries and [m, d] candidates, got %s and %s"
                         % (query_vectors.shape, candidate_vectors.shape))
    if positive_columns.shape != (len(query_vectors),) or (len(positive_columns) and (
            positive_columns.min() < 0 or positive_columns.max() >= len(candidate_vectors))):
        raise ValueError("top_k_accuracy: need one positive candidate row in [0, %d) per query" % len(candidate_vectors))
    if not len(query_vectors):
        raise ValueError("top_k_accuracy: no queries")
    above = np.empty(len(query_vectors), np.int64)
    step = row_chunk(len(candidate_vectors), most=EVAL_BATCH)
    for start in range(0, len(query_vectors), step):
        scores = query_vectors[start:start + step] @ candidate_vectors.T
        positive = scores[np.arange(len(scores)), positive_columns[start:start + step]]
        above[start:start + step] = np.sum(scores > positive[:, None], axis=1)
    return {"top_%d_accuracy" % k: float(np.mean(above < k)) for k in ks}


def _batched(function: Any, features: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    outputs = [function({k: v[s:s + EVAL_BATCH] for k, v in features.items()}) for s in range(0, n, EVAL_BATCH)]
    return np.concatenate([np.asarray(o) for o in outputs], axis=0)


@dataclass(frozen=True)
class PairMetrics:
    """A model's numbers on a set of pairs: top-K accuracy per k, rating RMSE, each task's loss and their weighted sum."""

    top_k_accuracy: dict[int, float]
    rating_rmse: float
    rating_loss: float
    retrieval_loss: float
    objective: float  # rating_weight * rating_loss + retrieval_weight * retrieval_loss

    def to_json(self) -> dict[str, float]:
        """``{"top_<k>_accuracy": ..., "rating_rmse", "rating_loss", "retrieval_loss", "objective"}`` (metrics.json's ``test``)."""
        return {**{"top_%d_accuracy" % k: v for k, v in self.top_k_accuracy.items()}, "rating_rmse": self.rating_rmse,
                "rating_loss": self.rating_loss, "retrieval_loss": self.retrieval_loss, "objective": self.objective}


def evaluate_pairs(model: MovieLensModel, pairs: Pairs, titles: MovieTitles, *, own: float = 0.0,
                   ks: Sequence[int] = TOP_KS) -> PairMetrics:
    """Top-K accuracy over the 1,682 catalog rows (as the tutorial's FactorizedTopK), rating RMSE and losses."""
    features = _features(pairs, own)
    queries = _batched(lambda f: model.query_vectors(f["user"], f["title"], f["own"]), features, len(pairs))
    candidates = model.candidate_vectors().numpy()[titles.of_row]
    accuracy = top_k_accuracy(queries, candidates, pairs.rows, ks)
    predicted = _batched(lambda f: model(f)[1], features, len(pairs))
    losses = _batched(lambda f: tf.stack([v for _, v in sorted(model.task_losses(f).items())])[None, :], features, len(pairs))
    sizes = np.array([min(EVAL_BATCH, len(pairs) - s) for s in range(0, len(pairs), EVAL_BATCH)], np.float64)
    means = dict(zip(sorted(TASKS), (sizes @ losses) / sizes.sum()))
    rating_loss, retrieval_loss = float(means["rating"]), float(means["retrieval"])
    return PairMetrics(
        top_k_accuracy={k: accuracy["top_%d_accuracy" % k] for k in ks},
        rating_rmse=float(np.sqrt(np.mean((predicted - pairs.ratings) ** 2))), rating_loss=rating_loss,
        retrieval_loss=retrieval_loss,
        objective=model.settings.rating_weight * rating_loss + model.settings.retrieval_weight * retrieval_loss,
    )


def evaluate(model: MovieLensModel, pairs: Pairs, titles: MovieTitles, *, own: float = 0.0,
             ks: Sequence[int] = TOP_KS) -> dict[str, float]:
    """:func:`evaluate_pairs` as a flat dict (what the Trainer's validation and the benchmark read)."""
    return evaluate_pairs(model, pairs, titles, own=own, ks=ks).to_json()


# ----------------------------------------------------------------------------- training


def pairs_dataset(pairs: Pairs, batch_size: int, seed: int, epoch: int) -> Any:
    """One epoch of training pairs (``own`` = 1), shuffled by a seed derived from the epoch."""
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(pairs))
    features = {k: v[order] for k, v in _features(pairs, own=1.0).items()}
    return tf.data.Dataset.from_tensor_slices(features).batch(batch_size).prefetch(2)


def fit(settings: MovieLensSettings, titles: MovieTitles, text_vectors: Optional[np.ndarray], train: Pairs, *,
        holdout: Optional[Pairs] = None, epochs: Optional[int] = None, seed: int = 0,
        progress: bool = False) -> tuple[MovieLensModel, TrainResult]:
    """Train on ``train`` with tfrec's Trainer; with a holdout, stop early on its objective and keep the best epoch."""
    epochs = settings.epochs if epochs is None else epochs
    validate = None
    if holdout is not None:
        def validate(model: Any) -> dict[str, float]:
            return evaluate(model, holdout, titles, ks=(10, 100))

    trainer = Trainer(seed=seed, progress=progress, early_stopping_metric="objective" if holdout is not None else None,
                      early_stopping_patience=settings.patience if holdout is not None else 0, early_stopping_mode="min")
    return trainer.fit(lambda: build_model(settings, titles, text_vectors, train),
                       lambda epoch: pairs_dataset(train, settings.batch_size, seed, epoch), epochs, validate=validate)


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True, eq=False)
class MovieLensInputs:
    """What every trained variant shares: the split, the titles, their text vectors and the three sets of pairs."""

    split: TutorialSplit
    titles: MovieTitles
    text_vectors: Optional[np.ndarray]
    fit: Pairs  # the training pairs minus the holdout
    holdout: Pairs  # chooses the epochs
    test: Pairs  # only ever used for the reported numbers


@dataclass(frozen=True)
class VariantRun:
    """One trained (mixture, weighting): its training, its holdout-best epoch's numbers and its test metrics."""

    mixture: str
    rating_weight: float
    retrieval_weight: float
    configured: bool  # the config's own settings (the others are the sweep)
    epochs_run: int
    best_epoch: Optional[int]  # 1-based
    train_seconds: float
    train_examples_per_s: float
    holdout: dict[str, float]
    test: PairMetrics

    def to_json(self) -> dict[str, Any]:
        """One entry of metrics.json's ``runs``."""
        return {**{name: getattr(self, name) for name in self.__dataclass_fields__}, "test": self.test.to_json()}


@dataclass(frozen=True)
class MovieLensMetrics:
    """A MovieLens multi-task run's results; ``to_json()`` is its metrics.json."""

    dataset: str
    split: dict[str, Any]
    settings: MovieLensSettings
    text_features: str
    runs: list[VariantRun]
    seconds: float

    @property
    def configured(self) -> VariantRun:
        """The run of the config's own settings."""
        return next(r for r in self.runs if r.configured)

    def to_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        return {
            "task": MOVIELENS,
            "dataset": self.dataset,
            "split": self.split,
            "evaluation": "test pairs; top-K accuracy over the 1,682 catalog rows scored through their titles "
                          "(tfrs FactorizedTopK semantics, nothing excluded); rating RMSE on the same pairs",
            "selection": "epochs chosen by early stopping on the holdout's weighted loss (patience %d); the holdout-best "
                         "model is evaluated on test once" % self.settings.patience,
            "settings": asdict(self.settings),
            "text_features": self.text_features,
            "runs": [r.to_json() for r in self.runs],
            "seconds": self.seconds,
            "configured": self.configured.to_json(),
        }


def _require_rated_log(loaded: Any, data: RecommendationData) -> None:
    if data.interactions is None or data.interactions.ratings is None or len(data.interactions) < 100:
        raise loaded.error("data.dataset", "the MovieLens multi-task run needs a rated interaction log (u.data); %r has %s"
                           % (data.name, "none" if data.interactions is None else "%d rows" % len(data.interactions)))


def prepare_inputs(config: Config, data: RecommendationData, settings: MovieLensSettings, progress: bool = False) -> MovieLensInputs:
    """The tutorial split, the holdout of its training part, the movie titles and (when used) their text vectors."""
    train_size, test_size = tutorial_sizes(len(data.interactions))
    split = tutorial_split(len(data.interactions), train_size=train_size, test_size=test_size)
    titles = movie_titles(data.catalog)
    vectors = title_text_vectors(titles, config.text, progress=progress) if (settings.item_text or settings.user_history) else None
    fit_rows, holdout_rows = holdout_split(split.train, config.recommendation.multitask.holdout_fraction, config.run.seed)
    return MovieLensInputs(split, titles, vectors, pairs_of(data, fit_rows, titles), pairs_of(data, holdout_rows, titles),
                           pairs_of(data, split.test, titles))


def _unique_weightings(first: tuple[float, float], more: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for pair in [first, *[tuple(w) for w in more]]:
        pair = (float(pair[0]), float(pair[1]))
        if pair not in out:
            out.append(pair)
    return out


def sweep(settings: MovieLensSettings, multi: Any) -> list[MovieLensSettings]:
    """The configured settings first, then every other (mixture, weighting) of ``recommendation.multitask``, once each."""
    mixtures = list(dict.fromkeys([settings.mixture, *multi.sweep_mixtures]))
    return [replace(settings, mixture=mixture, rating_weight=weighting[0], retrieval_weight=weighting[1])
            for mixture in mixtures for weighting in _unique_weightings(settings.weighting, multi.weightings)]


def train_variant(variant: MovieLensSettings, inputs: MovieLensInputs, *, configured: bool, seed: int,
                  progress: bool = False) -> VariantRun:
    """Train one variant early-stopped on the holdout, then evaluate its holdout-best model on the test pairs once."""
    log.info("%s, rating_weight=%g, retrieval_weight=%g", variant.mixture, variant.rating_weight, variant.retrieval_weight)
    tf.keras.utils.set_random_seed(seed)  # each variant starts from the same draws
    model, result = fit(variant, inputs.titles, inputs.text_vectors, inputs.fit, holdout=inputs.holdout, seed=seed, progress=progress)
    test = evaluate_pairs(model, inputs.test, inputs.titles)
    best = result.history[result.best_epoch] if result.best_epoch is not None else result.history[-1]
    return VariantRun(
        mixture=variant.mixture, rating_weight=variant.rating_weight, retrieval_weight=variant.retrieval_weight,
        configured=configured, epochs_run=result.epochs_run,
        best_epoch=None if result.best_epoch is None else result.best_epoch + 1,
        train_seconds=round(result.seconds, 1), train_examples_per_s=round(result.examples_per_second, 1),
        holdout={k[4:]: v for k, v in best.items() if k.startswith("val_")}, test=test,
    )


def split_summary(inputs: MovieLensInputs, seed: int) -> dict[str, Any]:
    """metrics.json's ``split``: how the pairs were split and the size of each part."""
    train, test = len(inputs.split.train), len(inputs.split.test)
    return {"procedure": "the TFRS tutorials' shuffle (seed 42, buffer 100,000) of the u.data rows in file order, "
                         "take %s then the next %s: the recipe's procedure, not TFDS's row order"
                         % ("{:,}".format(train), "{:,}".format(test)),
            "train": train, "test": test, "fit": len(inputs.fit), "holdout": len(inputs.holdout), "holdout_seed": seed}


def train_movielens(loaded: Any, data: RecommendationData, run_dir: Path, progress: bool = True) -> dict:
    """Train the configured multi-task model and the weighting sweep, evaluate each on the test pairs; write metrics.json."""
    started = time.perf_counter()
    config: Config = loaded.config
    _require_rated_log(loaded, data)
    settings = settings_from_config(config)
    inputs = prepare_inputs(config, data, settings, progress)
    runs = [train_variant(variant, inputs, configured=variant == settings, seed=config.run.seed, progress=progress)
            for variant in sweep(settings, config.recommendation.multitask)]
    metrics = MovieLensMetrics(
        dataset=data.name, split=split_summary(inputs, config.run.seed), settings=settings,
        text_features="frozen MiniLM of 'title | genres' (cached)" if inputs.text_vectors is not None else "none",
        runs=runs, seconds=round(time.perf_counter() - started, 1),
    )
    write_json(RunFolder(run_dir).metrics, metrics.to_json())
    return metrics.to_json()


__all__ = [
    "MIXTURES", "MovieLensInputs", "MovieLensMetrics", "MovieLensModel", "MovieLensSettings", "MovieTitles",
    "PairMetrics", "Pairs", "TaskMixture", "TutorialSplit", "VariantRun", "build_model", "evaluate", "evaluate_pairs",
    "fit", "holdout_split", "movie_titles", "pairs_dataset", "pairs_of", "prepare_inputs", "settings_from_config",
    "split_summary", "sweep", "title_text_vectors", "top_k_accuracy", "train_movielens", "train_variant",
    "tutorial_sizes", "tutorial_split",
]
