"""Training data, the training loop and batch encoding for the search two-tower model."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from tfrec import compat
from tfrec.data.tables import Catalog, Judgments
from tfrec.evaluation.chunks import row_chunk
from tfrec.log import Progress
from tfrec.retrieval.model import SearchRetrievalModel
from tfrec.schedules import WarmupLinearDecay
from tfrec.training.augment import augment_dataset, is_identity
from tfrec.training.trainer import Trainer, epoch_seed

tf = compat.tensorflow()

log = logging.getLogger(__name__)


def training_pairs(
    train: Judgments, catalog: Catalog, *, min_relevance: float, max_pairs: int = 0, seed: int = 0
) -> dict[str, np.ndarray]:
    """(query, positive product) pairs from judgments >= min_relevance, weighted by relevance.

    ``weight`` is the relevance scaled to mean 1; ``sampling_probability`` is each product's share of
    the pairs (the chance it shows up as an in-batch negative, for the logQ correction);
    ``query_group`` numbers the queries so other positives of the same query are masked.
    """
    keep = np.flatnonzero(train.labels >= min_relevance)
    if keep.size == 0:
        raise ValueError("no training judgment has relevance >= %g (retrieval.min_relevance)" % min_relevance)
    rng = np.random.default_rng(seed)
    if max_pairs and keep.size > max_pairs:
        keep = np.sort(rng.choice(keep, size=max_pairs, replace=False))
    products = train.products[keep]
    counts = np.bincount(products, minlength=len(catalog)).astype(np.float64)
    labels = train.labels[keep].astype(np.float64)
    _, group = np.unique(train.queries[keep].astype(str), return_inverse=True)
    titles = catalog.text()
    return {
        "query": train.queries[keep].astype(str),
        "product_id": catalog.ids[products].astype(str),
        "title": titles[products].astype(str),
        "weight": (labels / labels.mean()).astype(np.float32),
        "sampling_probability": (counts[products] / keep.size).astype(np.float32),
        "query_group": group.astype(np.int32),
    }


def add_mined_negatives(
    pairs: dict[str, np.ndarray], train: Judgments, catalog: Catalog, lexical: Any, *, depth: int = 50, seed: int = 0, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Give each pair one hard negative: a product in its query's lexical top ``depth`` that no judgment names for it.

    ``lexical`` is a tfrec.lexical.LexicalScorer. Judged products (any label) are never mined, so a
    product a rater called relevant cannot become a negative for that query. The negatives join the
    batch's candidates (extra columns of the in-batch softmax) for every query of the batch.
    """
    retrieve = tf.function(lambda q: lexical.retrieve(q, k=min(depth, len(catalog))), reduce_retracing=True)

    def top_rows(queries: np.ndarray) -> np.ndarray:
        return np.concatenate([retrieve(tf.constant(queries[i : i + batch_size]))[1].numpy() for i in range(0, len(queries), batch_size)])

    return mine_negatives(pairs, train, catalog, top_rows, depth=depth, seed=seed)


def model_top_rows(model: SearchRetrievalModel, catalog: Catalog, depth: int) -> Callable[[np.ndarray], np.ndarray]:
    """top_rows(queries) of the towers as they are now: each query's ``depth`` best catalog rows by the dense score."""
    vectors = encode_catalog(model, catalog.ids.astype(str), catalog.text().astype(str))
    k = min(depth, len(vectors))

    def top_rows(queries: np.ndarray) -> np.ndarray:
        q = encode_queries(model, list(queries))
        # The pool is a set: argpartition (unordered top-k) is enough and ~10x cheaper than a sort.
        step = row_chunk(len(vectors), most=256)  # one chunk's scores stay ~256 MB whatever the catalog size
        return np.concatenate([np.argpartition(-(q[i : i + step] @ vectors.T), k - 1, axis=1)[:, :k] for i in range(0, len(q), step)])

    return top_rows


def mine_negatives(
    pairs: dict[str, np.ndarray], train: Judgments, catalog: Catalog, top_rows: Callable[[np.ndarray], np.ndarray], *, depth: int, seed: int
) -> dict[str, np.ndarray]:
    """One hard negative per pair from ``top_rows(queries)`` (rows [Q, depth]), never a product judged for the query."""
    if depth < 1:
        raise ValueError("hard negative depth must be >= 1, got %d" % depth)
    rng = np.random.default_rng(seed)
    judged: dict[str, set] = {}
    for q, p in zip(train.queries.astype(str), train.products):
        judged.setdefault(q, set()).add(int(p))
    queries = np.unique(pairs["query"])
    pool = {q: np.array([x for x in r if x not in judged.get(q, ())], np.int64) for q, r in zip(queries, top_rows(queries))}
    fallback = np.arange(len(catalog))
    chosen = np.array([rng.choice(pool[q]) if len(pool[q]) else rng.choice(fallback) for q in pairs["query"]])
    counts = np.bincount(catalog.index_of(pairs["product_id"]), minlength=len(catalog)).astype(np.float64)
    titles = catalog.text()
    out = dict(pairs)
    out["negative_id"] = catalog.ids[chosen].astype(str)
    out["negative_title"] = titles[chosen].astype(str)
    # Products that are never a positive still need a non-zero probability for the logQ correction.
    out["negative_sampling_probability"] = (np.maximum(counts[chosen], 1.0) / len(pairs["query"])).astype(np.float32)
    return out


def compile_for_training(
    model: SearchRetrievalModel, *, steps: int, learning_rate: float, head_learning_rate: float, warmup_fraction: float = 0.1
) -> None:
    """Adam with warm-up and linear decay for BERT; a separate, larger learning rate for the fusion head."""
    warmup = max(1, int(steps * warmup_fraction))
    model.compile(optimizer=tf.keras.optimizers.Adam(WarmupLinearDecay(learning_rate, steps, warmup)))
    model.head_optimizer = tf.keras.optimizers.Adam(WarmupLinearDecay(head_learning_rate, steps, warmup))


def train_retrieval(
    build: Union[SearchRetrievalModel, Callable[[], SearchRetrievalModel]],
    pairs: Union[dict[str, np.ndarray], int],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    head_learning_rate: float,
    seed: int = 0,
    verbose: Optional[int] = None,
    trainer: Any = None,
    augmentation: Any = None,
    validate: Optional[Callable[[Any], dict]] = None,
    on_step_end: Optional[Callable[[int, dict], None]] = None,
    epoch_pairs: Optional[Callable[[Any, int], dict[str, np.ndarray]]] = None,
    stream: Optional[Callable[[int, int], Any]] = None,
) -> tuple[SearchRetrievalModel, dict[str, Any]]:
    """Fit on the pairs with tfrec's trainer (shuffled per epoch, last partial batch dropped); returns the model, loss and speed.

    ``build`` is the model or a function making it (called in the trainer's strategy scope);
    ``trainer`` (default: a plain :class:`~tfrec.training.trainer.Trainer`) brings the strategy,
    checkpoints and logs; ``augmentation`` (an AugmentationConfig) rewrites queries in the batches;
    ``validate(model)`` scores each epoch (early stopping, when the trainer is set up for it);
    ``on_step_end(step, logs)`` is called after every step; ``epoch_pairs(model, epoch)`` (if given)
    supplies each epoch's pairs from the model as it is then (e.g. negatives mined by the current towers).
    ``stream(seed, batch_size)`` (if given) supplies each epoch's shuffled batches instead, streamed from
    shards (:mod:`tfrec.retrieval.pair_stream`); ``pairs`` is then how many pairs it holds.
    """
    if stream is not None and epoch_pairs is not None:
        raise ValueError("pairs streamed from shards cannot be replaced per epoch (epoch_pairs)")
    n = int(pairs) if stream is not None else len(pairs["query"])
    if n < 2:
        raise ValueError("retrieval training needs at least 2 pairs (in-batch negatives), got %d" % n)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    trainer = trainer if trainer is not None else Trainer(seed=seed, progress=verbose != 0, checkpoint_dir=None)

    built: dict[str, Any] = {}

    def compiled() -> SearchRetrievalModel:
        model = build() if callable(build) and not isinstance(build, tf.keras.Model) else build
        built["model"] = model
        compile_for_training(
            model, steps=steps_per_epoch * max(epochs, 1), learning_rate=learning_rate, head_learning_rate=head_learning_rate
        )
        return model

    augment = augmentation is not None and not is_identity(augmentation)

    def dataset(epoch: int) -> Any:
        # A pure function of the epoch: a resumed run rebuilds exactly the batches it was on.
        if stream is not None:
            ds = stream(epoch_seed(seed, epoch), batch_size)
        else:
            current = epoch_pairs(built["model"], epoch) if epoch_pairs is not None else pairs
            ds = (
                tf.data.Dataset.from_tensor_slices(current)
                .shuffle(n, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
                .batch(batch_size, drop_remainder=True)
            )
        if augment:
            ds = augment_dataset(ds, augmentation, seed=seed, epoch=epoch)
        return ds.prefetch(2)

    start = time.perf_counter()
    model, result = trainer.fit(compiled, dataset, epochs, steps_per_epoch=steps_per_epoch, validate=validate, on_step_end=on_step_end)
    seconds = time.perf_counter() - start
    return model, {
        "pairs": n,
        "epochs": epochs,
        "batch_size": batch_size,
        "steps": steps_per_epoch * epochs,
        "loss_per_epoch": [float(x) for x in result.loss_per_epoch],
        "seconds": round(seconds, 1),
        "pairs_per_second": round(n * epochs / seconds, 1) if seconds > 0 and epochs else None,
        "resumed_from_step": result.resumed_from,
        "augmentation": augment,
        "stopped_early": result.stopped_early,
        "validation": [{k: v for k, v in h.items() if k.startswith("val_")} for h in result.history if any(k.startswith("val_") for k in h)],
    }


def _length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """Row batches of similar text length, so batch padding stays short."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def encode_texts(encoder: Any, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False, desc: str = "encode") -> np.ndarray:
    """Run a text encoder over many strings in length-sorted batches; rows keep the input order."""
    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), encoder.output_dim), np.float32)
    run = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)
    batches = _length_sorted_batches(texts, batch_size)
    with Progress(desc, len(batches), logger=log, unit="batch", show=progress, leave=False) as bar:
        for rows in batches:
            out[rows] = run(tf.constant([texts[i] for i in rows])).numpy()
            bar.update(1)
    return out


def encode_catalog(
    model: SearchRetrievalModel, ids: Sequence[str], titles: Sequence[str], *, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Product vectors [N, dim] of a whole catalog (title through the fine-tuned encoder, then the id fusion)."""
    text = encode_texts(model.title_encoder, titles, batch_size=batch_size, progress=progress, desc="encode catalog")
    fuse = tf.function(lambda v, i: model.fuse(v, i, training=False), reduce_retracing=True)
    out = np.zeros_like(text)
    ids = np.asarray(ids).astype(str)
    for start in range(0, len(ids), 4096):
        stop = start + 4096
        out[start:stop] = fuse(tf.constant(text[start:stop]), tf.constant(ids[start:stop])).numpy()
    return out


def encode_queries(model: SearchRetrievalModel, queries: Sequence[str], *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Query vectors [Q, dim]."""
    return encode_texts(model.query_encoder, queries, batch_size=batch_size, progress=progress, desc="encode queries")


__all__ = [
    "training_pairs",
    "add_mined_negatives",
    "compile_for_training",
    "train_retrieval",
    "encode_texts",
    "encode_catalog",
    "encode_queries",
]
