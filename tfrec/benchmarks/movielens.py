"""TFRS side by side on MovieLens 100K: the basic-retrieval tutorial's recipe and tfrec's model, in one run.

(a) The recipe, as the TFRS basic-retrieval tutorial writes it: implicit (user id, movie title)
pairs, 32-d ``StringLookup`` + ``Embedding`` towers, ``tfrs.tasks.Retrieval`` with
``FactorizedTopK`` over ``movies.batch(128).map(movie_model)``, Adagrad 0.1, batch 8192
(``train.shuffle(100_000).batch(8192).cache()``), 3 epochs of plain ``model.fit`` (the top-K
metrics are computed on every training batch, as in the tutorial).

(b) tfrec's configured MovieLens model (:mod:`tfrec.recommend.movielens`; ``configs/movielens.yaml``)
on the same split, trained by tfrec's Trainer without top-K metrics on training batches. Its epochs
are chosen without the test pairs: early stopping on a seeded 10% holdout of the 80,000 training
pairs, then a fresh model is trained on all 80,000 for that many epochs and evaluated on the
20,000 test pairs once.

Both are evaluated by the same function (:func:`tfrec.recommend.movielens.top_k_accuracy`), with
the recipe's own ``model.evaluate`` numbers kept beside it as a check: every one of the 1,682
catalog rows is a candidate, scored through its title (titles are the recipe's movie identity;
tfrec's movie tower takes the title too, plus its text), and a test pair counts at k when fewer
than k candidates score strictly above its movie. Training examples/s = training examples /
wall seconds of the training epochs (tracing included, evaluation and data preparation excluded).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tfrec import compat
from tfrec.recommend import movielens as ml
from tfrec.config.loader import load_config
from tfrec.data.datasets import load_data

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402  (after compat: Keras 2 mode)

RECIPE = {"embedding_dimension": 32, "optimizer": "Adagrad", "learning_rate": 0.1, "batch_size": 8192, "epochs": 3,
          "shuffle_buffer": 100_000, "eval_batch_size": 4096}

log = logging.getLogger(__name__)


class BasicRetrieval(tfrs.Model):
    """The tutorial's MovielensModel: user and movie towers, one Retrieval task."""

    def __init__(self, user_model: Any, movie_model: Any, task: Any) -> None:
        super().__init__()
        self.movie_model = movie_model
        self.user_model = user_model
        self.task = task

    def compute_loss(self, features: dict, training: bool = False) -> Any:
        """The task's loss (and, as in the tutorial, its FactorizedTopK metrics)."""
        user_embeddings = self.user_model(features["user_id"])
        positive_movie_embeddings = self.movie_model(features["movie_title"])
        return self.task(user_embeddings, positive_movie_embeddings)


def recipe_model(unique_user_ids: np.ndarray, unique_movie_titles: np.ndarray, candidate_titles: np.ndarray,
                 embedding_dimension: int = RECIPE["embedding_dimension"]) -> BasicRetrieval:
    """The tutorial's model, compiled with Adagrad(0.1); candidates = the catalog's titles, one per movie."""
    user_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=unique_user_ids, mask_token=None),
        tf.keras.layers.Embedding(len(unique_user_ids) + 1, embedding_dimension),
    ])
    movie_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=unique_movie_titles, mask_token=None),
        tf.keras.layers.Embedding(len(unique_movie_titles) + 1, embedding_dimension),
    ])
    movies = tf.data.Dataset.from_tensor_slices(candidate_titles)
    task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(candidates=movies.batch(128).map(movie_model)))
    model = BasicRetrieval(user_model, movie_model, task)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=RECIPE["learning_rate"]))
    return model


class EpochTimer(tf.keras.callbacks.Callback):
    """Wall seconds of each training epoch of ``model.fit``."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def recipe_pairs(data: Any, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The recipe's features of the ratings at ``positions``: user_id and movie_title strings."""
    log, titles = data.interactions, data.catalog.texts["title"].astype(str)
    return {"movie_title": titles[log.items[positions]], "user_id": log.users[positions].astype(str)}


def run_recipe(data: Any, split: ml.TutorialSplit, *, epochs: int = RECIPE["epochs"]) -> dict[str, Any]:
    """Train the tutorial's recipe on ``split.train`` and evaluate it on ``split.test``."""
    tf.random.set_seed(ml.TUTORIAL_SEED)  # the tutorial's first step; the split itself is computed separately
    train_rows = split.train
    train = tf.data.Dataset.from_tensor_slices(recipe_pairs(data, train_rows))
    test = tf.data.Dataset.from_tensor_slices(recipe_pairs(data, split.test))
    catalog_titles = data.catalog.texts["title"].astype(str)
    model = recipe_model(np.unique(data.interactions.users.astype(str)), np.unique(catalog_titles), catalog_titles)
    cached_train = train.shuffle(RECIPE["shuffle_buffer"]).batch(RECIPE["batch_size"]).cache()
    cached_test = test.batch(RECIPE["eval_batch_size"]).cache()
    timer = EpochTimer()
    model.fit(cached_train, epochs=epochs, callbacks=[timer], verbose=0)
    evaluated = model.evaluate(cached_test, return_dict=True, verbose=0)
    test_features = recipe_pairs(data, split.test)
    queries = model.user_model(tf.constant(test_features["user_id"])).numpy()
    candidates = model.movie_model(tf.constant(catalog_titles)).numpy()
    metrics = ml.top_k_accuracy(queries, candidates, data.interactions.items[split.test])
    seconds = float(sum(timer.seconds))
    return {
        **metrics,
        "train_examples_per_s": round(len(train_rows) * epochs / seconds, 1),
        "train_seconds": round(seconds, 1),
        "epochs": epochs,
        "train_pairs": int(len(train_rows)),
        "train_batch_top_k_metrics": True,
        "factorized_top_k_evaluate": {k.replace("factorized_top_k/", ""): float(v) for k, v in evaluated.items()
                                      if k.startswith("factorized_top_k/")},
        "recipe": dict(RECIPE, epochs=epochs),
    }


def popularity(data: Any, split: ml.TutorialSplit, titles: ml.MovieTitles) -> dict[str, float]:
    """Context: every user gets the titles ranked by their training-pair count (ties broken by title order)."""
    train = ml.pairs_of(data, split.train, titles)
    counts = np.bincount(train.titles, minlength=len(titles)).astype(np.float64)
    score = counts - np.arange(len(titles)) / (2.0 * len(titles))  # integer counts: the tie-break never reorders them
    test_rows = data.interactions.items[split.test]
    return ml.top_k_accuracy(np.ones((len(split.test), 1), np.float32), score[titles.of_row][:, None], test_rows)


def run_tfrec(loaded: Any, data: Any, split: ml.TutorialSplit, *, progress: bool = False) -> dict[str, Any]:
    """tfrec's configured model: epochs by early stopping on the holdout, refit on all 80,000, test once."""
    config = loaded.config
    settings = ml.settings_from_config(config)
    titles = ml.movie_titles(data.catalog)
    vectors = ml.title_text_vectors(titles, config.text, progress=progress) if (settings.item_text or settings.user_history) else None
    fit_rows, holdout_rows = ml.holdout_split(split.train, config.recommendation.multitask.holdout_fraction, config.run.seed)
    tf.keras.utils.set_random_seed(config.run.seed)
    _, selection = ml.fit(settings, titles, vectors, ml.pairs_of(data, fit_rows, titles),
                          holdout=ml.pairs_of(data, holdout_rows, titles), seed=config.run.seed, progress=progress)
    best = selection.history[selection.best_epoch]
    epochs = selection.best_epoch + 1
    tf.keras.utils.set_random_seed(config.run.seed)
    model, result = ml.fit(settings, titles, vectors, ml.pairs_of(data, split.train, titles), epochs=epochs,
                           seed=config.run.seed, progress=progress)
    test = ml.evaluate(model, ml.pairs_of(data, split.test, titles), titles)
    return {
        **{k: v for k, v in test.items() if k.startswith("top_")},
        "rating_rmse": test["rating_rmse"],
        "train_examples_per_s": round(result.examples_per_second, 1),
        # The recipe's definition: wall seconds of the training epochs (the trainer's loop time).
        "train_seconds": round(epochs * len(split.train) / result.examples_per_second, 1),
        "epochs": epochs,
        "train_pairs": int(len(split.train)),
        "train_batch_top_k_metrics": False,
        "selection": {"fit_pairs": int(len(fit_rows)), "holdout_pairs": int(len(holdout_rows)), "seed": config.run.seed,
                      "early_stopping": "holdout weighted loss, patience %d" % settings.patience,
                      "epochs_run": selection.epochs_run, "seconds": round(selection.seconds, 1),
                      "holdout": {k[4:]: round(v, 4) for k, v in best.items() if k.startswith("val_")}},
        "settings": asdict(settings),
    }


def _markdown(results: dict[str, Any]) -> str:
    ks = ml.TOP_KS
    lines = ["# MovieLens 100K: TFRS basic-retrieval recipe vs tfrec", "",
             "%(cpus)s CPUs, Python %(python)s, TensorFlow %(tensorflow)s, %(when)s; config %(config)s." % results["meta"], "",
             "| system | " + " | ".join("top-%d acc." % k for k in ks) + " | train examples/s | train s | epochs | top-K on train batches |",
             "| --- | " + " | ".join("---:" for _ in ks) + " | ---: | ---: | ---: | --- |"]
    for name, label in (("tfrs_recipe", "TFRS recipe"), ("tfrec", "tfrec (configured)")):
        r = results[name]
        lines.append("| %s | %s | %.0f | %.1f | %d | %s |" % (
            label, " | ".join("%.3f" % r["top_%d_accuracy" % k] for k in ks), r["train_examples_per_s"], r["train_seconds"],
            r["epochs"], "yes" if r["train_batch_top_k_metrics"] else "no"))
    pop = results["popularity"]
    lines.append("| popularity (context) | %s | - | - | - | - |" % " | ".join("%.3f" % pop["top_%d_accuracy" % k] for k in ks))
    lines += ["", "tfrec / recipe top-100 accuracy: **%.2fx** on the same test pairs." % results["top_100_ratio"], "",
        "Split: %s. Evaluation: %s." % (results["split"]["procedure"], results["evaluation"]), "",
        "tfrec's epochs (%d) were chosen by early stopping on a %s-pair holdout of the training pairs, "
        "then it was trained on all %s and evaluated on the test pairs once." % (
            results["tfrec"]["epochs"], "{:,}".format(results["tfrec"]["selection"]["holdout_pairs"]),
            "{:,}".format(results["tfrec"]["train_pairs"]))]
    return "\n".join(lines) + "\n"


def run(out_dir: Path, data_config: str = "configs/movielens.yaml") -> list[Path]:
    """Run the recipe and tfrec on the same split in this process; write movielens.json and movielens.md."""
    loaded = load_config(data_config)
    data = load_data(loaded)
    split = ml.tutorial_split(len(data.interactions))
    titles = ml.movie_titles(data.catalog)
    recipe = run_recipe(data, split)
    log.info("movielens: TFRS recipe top-100 %.3f, %.0f examples/s", recipe["top_100_accuracy"], recipe["train_examples_per_s"])
    ours = run_tfrec(loaded, data, split)
    log.info("movielens: tfrec top-100 %.3f, %.0f examples/s", ours["top_100_accuracy"], ours["train_examples_per_s"])
    ratio = ours["top_100_accuracy"] / recipe["top_100_accuracy"]
    results = {
        "tfrs_recipe": recipe,
        "tfrec": ours,
        "popularity": popularity(data, split, titles),
        "top_100_ratio": round(ratio, 3),
        "split": {"procedure": "the TFRS tutorial's shuffle (tf.random.set_seed(42), shuffle(100_000, seed=42, "
                               "reshuffle_each_iteration=False), take 80,000, skip 80,000 take 20,000) applied to u.data "
                               "rows in file order: the recipe's procedure, not TFDS's row order",
                  "train": int(len(split.train)), "test": int(len(split.test))},
        "evaluation": "top-K accuracy over the 1,682 catalog rows scored through their titles (1,664 distinct), "
                      "FactorizedTopK semantics (a hit at k when fewer than k candidates score above the positive), "
                      "nothing excluded",
        "meta": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "tensorflow": tf.__version__, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "config": data_config},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "movielens.json", out_dir / "movielens.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(_markdown(results), encoding="utf-8")
    return [json_path, md_path]


if __name__ == "__main__":
    from tfrec.log import configure

    configure()  # an entry point: show the progress lines on stderr; the result paths go to stdout
    print("\n".join(str(p) for p in run(Path("bench_results"))))
