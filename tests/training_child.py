"""Tiny models for the trainer tests, and a scripted training run they start by path in a fresh Python.

    python tests/training_child.py --dir RUN [--epochs 3] [--every 4] [--pause-at 14]
        [--strategy default|mirrored] [--compare]

``train`` (the default) trains the tiny two-tower with checkpoints in RUN/checkpoints, prints
``step N`` after every step and writes RUN/result.json and RUN/weights.npz at the end. With
``--pause-at N`` it prints ``PAUSED`` after step N and sleeps (for the parent to SIGKILL it) unless
RUN/paused exists, which it creates first: the same command run again goes through. ``--compare``
also trains the same model with ``model.fit`` on the same batches and writes both runs' step
losses and weights. ``--strategy mirrored`` splits the CPU into two logical devices first.
"""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode)

import argparse
import json
import os
import sys
import time

import numpy as np

from tfrec import compat

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402

from tfrec.log import configure  # noqa: E402
from tfrec.training.trainer import Trainer, epoch_seed, precision_policy  # noqa: E402

N_QUERIES, N_PRODUCTS, N_PAIRS = 40, 60, 480


def generated_pairs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(query id, product id) pairs where each query prefers a few products (learnable structure)."""
    rng = np.random.default_rng(seed)
    queries = rng.integers(0, N_QUERIES, N_PAIRS).astype("int32")
    products = ((queries * 3 + rng.integers(0, 4, N_PAIRS)) % N_PRODUCTS).astype("int32")
    return queries, products


def pair_dataset(epoch: int, *, batch_size: int = 48, seed: int = 0) -> tf.data.Dataset:
    """That epoch's batches: a shuffle seeded by the epoch, so every request for an epoch gives the same ones."""
    queries, products = generated_pairs(seed)
    data = tf.data.Dataset.from_tensor_slices({"query": queries, "product": products})
    data = data.shuffle(N_PAIRS, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    return data.batch(batch_size, drop_remainder=True)


def _dense(units: int, seed: int, **kwargs) -> tf.keras.layers.Dense:
    return tf.keras.layers.Dense(units, kernel_initializer=tf.keras.initializers.GlorotUniform(seed), **kwargs)


class TinyTwoTower(tfrs.Model):
    """A two-tower over ids shaped like SearchRetrievalModel: in-batch softmax, a head with its own optimizer."""

    def __init__(self, *, seed: int = 0, dropout: float = 0.2, dim: int = 8) -> None:
        super().__init__()
        init = tf.keras.initializers.RandomNormal(stddev=0.1, seed=seed)
        self.query_tower = tf.keras.Sequential(
            [tf.keras.layers.Embedding(N_QUERIES, 16, embeddings_initializer=init), _dense(dim, seed + 1)]
        )
        self.product_tower = tf.keras.layers.Embedding(
            N_PRODUCTS, 16, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.1, seed=seed + 2)
        )
        # force_generator: the dropout masks come from a tf.random.Generator, which checkpoints.
        self.head_dropout = tf.keras.layers.Dropout(dropout, seed=seed + 3, force_generator=True)
        self.head = _dense(dim, seed + 4, dtype="float32")  # outputs float32 under mixed precision
        with precision_policy("float32"):  # the softmax loss stays float32 under mixed precision
            self.task = tfrs.tasks.Retrieval()
        self.head_optimizer = None

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        """In-batch softmax loss of the batch's (query, product) pairs."""
        queries = tf.cast(self.query_tower(features["query"]), tf.float32)
        products = self.head(self.head_dropout(self.product_tower(features["product"]), training=training))
        return self.task(queries, products, compute_metrics=False)

    def train_step(self, features: dict) -> dict:
        """As SearchRetrievalModel: the head's variables take head_optimizer's steps."""
        with tf.GradientTape() as tape:
            loss = self.compute_loss(features, training=True)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        head_ids = {id(v) for v in self.head.trainable_variables}
        body = [(g, v) for g, v in zip(gradients, variables) if id(v) not in head_ids]
        head = [(g, v) for g, v in zip(gradients, variables) if id(v) in head_ids]
        self.optimizer.apply_gradients(body)
        (self.head_optimizer or self.optimizer).apply_gradients(head)
        return {"loss": loss}


def build_two_tower(*, seed: int = 0, dropout: float = 0.2) -> TinyTwoTower:
    """A compiled TinyTwoTower: Adam with a decaying rate for the body, a separate Adam for the head."""
    model = TinyTwoTower(seed=seed, dropout=dropout)
    model.compile(optimizer=tf.keras.optimizers.Adam(tf.keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.9)))
    model.head_optimizer = tf.keras.optimizers.Adam(0.02)
    return model


def build_ranker(*, seed: int = 0, features: int = 6) -> tf.keras.Model:
    """A compiled ranker-like Keras model: per-item features -> score, MSE on graded labels."""
    model = tf.keras.Sequential(
        [tf.keras.Input((features,)), _dense(16, seed, activation="relu"), _dense(1, seed + 1, dtype="float32")]
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="mse")
    return model


def ranker_data(n: int = 224, features: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated item features and labels in [1, 3] with a known linear-plus-noise structure."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = np.clip(2.0 + x @ rng.normal(scale=0.4, size=features) + rng.normal(scale=0.1, size=n), 1.0, 3.0)
    return x, y.astype("float32")[:, None]


def weights_of(model: tf.keras.Model) -> dict[str, np.ndarray]:
    """The model's weights in their (stable) order, as ``w000``, ``w001``, ... ."""
    return {"w%03d" % i: v.numpy() for i, v in enumerate(model.weights)}


def _strategy(name: str):
    if name == "default":
        return tf.distribute.get_strategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def main(argv: list[str]) -> int:
    """The scripted run (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--pause-at", type=int, default=0)
    parser.add_argument("--strategy", choices=("default", "mirrored"), default="default")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args(argv)
    configure()  # the trainer's log ("resumed from step ...") on stderr, as `tfrec train` shows it
    os.makedirs(args.dir, exist_ok=True)
    strategy = _strategy(args.strategy)
    marker = os.path.join(args.dir, "paused")
    step_losses: list[float] = []

    def on_step_end(step: int, logs: dict) -> None:
        step_losses.append(logs["loss"])
        print("step %d loss %.6f" % (step, logs["loss"]), flush=True)
        if step == args.pause_at and not os.path.exists(marker):
            open(marker, "w").close()
            print("PAUSED", flush=True)
            time.sleep(600)  # the parent SIGKILLs the process here

    def build() -> TinyTwoTower:
        return build_two_tower(dropout=args.dropout)

    trainer = Trainer(
        strategy, checkpoint_dir=os.path.join(args.dir, "checkpoints"), checkpoint_every_steps=args.every,
        tensorboard_dir=os.path.join(args.dir, "tensorboard"), progress=True,
    )
    model, result = trainer.fit(build, pair_dataset, args.epochs, on_step_end=on_step_end)
    out = {
        "loss_per_epoch": result.loss_per_epoch, "steps": result.steps, "resumed_from": result.resumed_from,
        "step_losses": step_losses, "replicas": strategy.num_replicas_in_sync,
    }
    weights = weights_of(model)
    if args.compare:
        fit_losses: list[float] = []
        logger = tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: fit_losses.append(float(logs["loss"])))
        with strategy.scope():
            reference = build()
        all_epochs = pair_dataset(0)
        for epoch in range(1, args.epochs):
            all_epochs = all_epochs.concatenate(pair_dataset(epoch))
        reference.fit(all_epochs, epochs=args.epochs, steps_per_epoch=N_PAIRS // 48, verbose=0, callbacks=[logger])
        out["fit_step_losses"] = fit_losses
        out["max_weight_difference"] = max(
            float(np.abs(a - b).max()) for a, b in zip(weights.values(), weights_of(reference).values())
        )
    np.savez(os.path.join(args.dir, "weights.npz"), **weights)
    with open(os.path.join(args.dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(out, f)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
