"""Child processes for tests/test_training_strategy.py, run by path with a fresh TensorFlow runtime.

    python tests/distributed_child.py mirrored OUT.json   default vs mirrored over 2 logical CPUs
    python tests/distributed_child.py launch OUT.json     2 multi_worker processes on 127.0.0.1
    python tests/distributed_child.py worker OUT.json     one of them ($TF_CONFIG names which)

Every run trains the same small model (Embedding + two Dense layers, MSE, SGD) from the same
initial weights on the same generated data, with the same GLOBAL batch per step, and writes JSON.
"""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode)

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GLOBAL_BATCH = 32
STEPS = 12
LEARNING_RATE = 0.1
N_ITEMS = 20
N_FEATURES = 4
WORKERS = 2
WORKER_TIMEOUT_S = 120


def make_data() -> dict[str, np.ndarray]:
    """GLOBAL_BATCH * STEPS examples: y = x.w + item bias + small noise (seeded)."""
    rng = np.random.RandomState(7)
    n = GLOBAL_BATCH * STEPS
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    item = rng.randint(0, N_ITEMS, size=n).astype(np.int32)
    bias = rng.normal(size=N_ITEMS).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 0.0], np.float32) + bias[item] + 0.05 * rng.normal(size=n).astype(np.float32)
    return {"x": x, "item": item, "y": y.astype(np.float32)[:, None]}


def build_model(tf):
    """The small model, with seeded initialisers (weights are copied from one reference anyway)."""
    init = tf.keras.initializers.GlorotUniform(seed=1)
    x = tf.keras.Input(shape=(N_FEATURES,), name="x")
    item = tf.keras.Input(shape=(), dtype=tf.int32, name="item")
    emb = tf.keras.layers.Embedding(N_ITEMS, 4, embeddings_initializer=init)(item)
    h = tf.keras.layers.Dense(16, activation="relu", kernel_initializer=init)(tf.keras.layers.Concatenate()([x, emb]))
    return tf.keras.Model({"x": x, "item": item}, tf.keras.layers.Dense(1, kernel_initializer=init)(h))


def custom_loop(tf, strategy, dataset, initial: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
    """Train STEPS steps with strategy.run; return the global mean loss of each step and final weights."""
    with strategy.scope():
        model = build_model(tf)
        model.set_weights(initial)
        optimizer = tf.keras.optimizers.SGD(LEARNING_RATE)

    @tf.function
    def step(batch):
        def replica_step(b):
            with tf.GradientTape() as tape:
                pred = model({"x": b["x"], "item": b["item"]}, training=True)
                per_example = tf.reduce_mean(tf.square(pred - b["y"]), axis=-1)
                # Divide by the GLOBAL batch: the all-reduced sum of gradients is then the global mean's.
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    losses = [float(step(batch)) for batch in dataset]
    return losses, [w.copy() for w in model.get_weights()]


def keras_fit(tf, strategy, data, initial: list[np.ndarray]) -> list[np.ndarray]:
    """Train one epoch with compile/fit (model and optimizer built in the scope); return final weights."""
    with strategy.scope():
        model = build_model(tf)
        model.set_weights(initial)
        model.compile(optimizer=tf.keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    features = {"x": data["x"], "item": data["item"]}
    dataset = tf.data.Dataset.from_tensor_slices((features, data["y"])).batch(GLOBAL_BATCH)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return model.get_weights()


def run_mirrored(out: Path) -> None:
    """Default vs mirrored (2 logical CPUs), same global batch: custom loop losses and fit weights."""
    from tfrec.config.schema import DistributeConfig
    from tfrec.training import strategy as st

    st.split_logical_cpus(2)
    from tfrec import compat

    tf = compat.tensorflow()
    data = make_data()
    initial = build_model(tf).get_weights()
    batches = tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH)
    result = {"initial": [w.tolist() for w in initial]}
    for name in ("default", "mirrored"):
        strategy = st.make_strategy(DistributeConfig(strategy=name))
        t0 = time.perf_counter()
        losses, weights = custom_loop(tf, strategy, strategy.experimental_distribute_dataset(batches), initial)
        result[name] = {
            "describe": st.describe(strategy),
            "losses": losses,
            "weights": [w.tolist() for w in weights],
            "fit_weights": [w.tolist() for w in keras_fit(tf, strategy, data, initial)],
            "seconds": time.perf_counter() - t0,
        }
    out.write_text(json.dumps(result))


def run_worker(out: Path) -> None:
    """One multi_worker process: its shard of the data, the same global batch, all-reduced gradients."""
    from tfrec.config.schema import DistributeConfig
    from tfrec.training import strategy as st

    strategy = st.make_strategy(DistributeConfig(strategy="multi_worker"))  # first: before any TF op
    from tfrec import compat

    tf = compat.tensorflow()
    data = make_data()
    initial = build_model(tf).get_weights()  # seeded: the same numbers as run_mirrored's reference

    def dataset_fn(ctx):
        # Worker w takes examples w, w+2, ...: each global step covers exactly the default run's batch.
        per_replica = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        shards = tf.data.Dataset.from_tensor_slices(data).shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return shards.batch(per_replica)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    dataset = strategy.distribute_datasets_from_function(dataset_fn, options)
    losses, weights = custom_loop(tf, strategy, dataset, initial)
    out.write_text(json.dumps({
        "initial": [w.tolist() for w in initial],
        "describe": st.describe(strategy),
        "task": st.parse_tf_config()["task"],
        "losses": losses,
        "weights": [w.tolist() for w in weights],
    }))


def _loopback_up() -> None:
    # In a fresh network namespace (unshare -n) the loopback interface starts down.
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, struct.pack("16sh", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    # A launcher killed by the test's timeout must not leave workers behind.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_workers(procs: list, deadline: float) -> list:
    """Exit codes of (process, log file) pairs waited on until ``deadline`` ("timeout" for the first still running); all are killed and their logs closed."""
    codes: list = []
    try:
        for proc, _ in procs:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        codes.append("timeout")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return codes


def run_launch(out: Path) -> None:
    """Start WORKERS worker processes on 127.0.0.1 ports, wait (bounded), collect their results."""
    if os.environ.get("CHILD_IN_NETNS") == "1":
        _loopback_up()
    ports = _free_ports(WORKERS)
    cluster = {"worker": ["127.0.0.1:%d" % p for p in ports]}
    procs = []
    for index in range(WORKERS):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(out.with_suffix(".worker%d.log" % index), "w")
        procs.append((subprocess.Popen(
            [sys.executable, __file__, "worker", str(out.with_suffix(".worker%d.json" % index))],
            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        ), log))
    codes = wait_workers(procs, time.monotonic() + WORKER_TIMEOUT_S)
    result = {"cluster": cluster, "codes": codes, "workers": []}
    for index in range(WORKERS):
        path = out.with_suffix(".worker%d.json" % index)
        log = out.with_suffix(".worker%d.log" % index).read_text()[-3000:]
        result["workers"].append(json.loads(path.read_text()) if path.exists() else {"log": log})
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    mode, target = sys.argv[1], Path(sys.argv[2])
    {"mirrored": run_mirrored, "launch": run_launch, "worker": run_worker}[mode](target)
