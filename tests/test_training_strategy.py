"""tfrec.training.strategy: strategies from config, TF_CONFIG checks, batch and learning-rate scaling.

Runs that need a fresh TensorFlow runtime (logical CPUs, multi-worker collectives) happen in child
processes (tests/distributed_child.py) bounded by timeouts; their numbers are checked against a
numpy re-implementation of the same training (Embedding + Dense(relu) + Dense, MSE, SGD).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfrec.config.schema import DistributeConfig
from tfrec.training import strategy as st

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().parent / "distributed_child.py"
sys.path.insert(0, str(CHILD.parent))
import distributed_child as child  # noqa: E402, I001  (after sys.path: data and constants shared with the children)

# Same math, float32: the default and mirrored runs differ only in summation order (two half-batch sums
# vs one sum; gradients all-reduced), a few ulps per step (seen: <= 2.4e-7 absolute over 12 steps). 1e-5
# leaves ~40x headroom, while real mistakes (per-replica instead of global mean, unsynced replicas) move
# the second step's loss by > 1e-2.
SAME_MATH_RTOL = 1e-5
# numpy runs in float64 and TF in float32: float32 rounding, compounded over 12 SGD steps.
NUMPY_RTOL = 1e-4


def numpy_reference(initial: list) -> tuple[list[float], list[np.ndarray]]:
    """The child's training, step by step in float64 numpy: per-step global mean losses, final weights."""
    emb, w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in initial]
    data = child.make_data()
    losses = []
    for k in range(child.STEPS):
        part = slice(k * child.GLOBAL_BATCH, (k + 1) * child.GLOBAL_BATCH)
        x, item, y = data["x"][part].astype(np.float64), data["item"][part], data["y"][part].astype(np.float64)
        inputs = np.concatenate([x, emb[item]], axis=1)
        z = inputs @ w1 + b1
        h = np.maximum(z, 0.0)
        pred = h @ w2 + b2
        losses.append(float(np.mean((pred - y) ** 2)))
        d_pred = 2.0 * (pred - y) / len(y)
        d_z = (d_pred @ w2.T) * (z > 0)
        d_inputs = d_z @ w1.T
        d_emb = np.zeros_like(emb)
        np.add.at(d_emb, item, d_inputs[:, child.N_FEATURES:])
        grads = [d_emb, inputs.T @ d_z, d_z.sum(0), h.T @ d_pred, d_pred.sum(0)]
        emb, w1, b1, w2, b2 = [w - child.LEARNING_RATE * g for w, g in zip((emb, w1, b1, w2, b2), grads)]
    return losses, [emb, w1, b1, w2, b2]


def run_child(args: list[str], out: Path, timeout: int, prefix: list[str] = (), env: dict | None = None, child: Path = CHILD) -> dict:
    """Run a child script (``child ARGS... OUT``; own process group, killed whole on timeout); return its JSON output."""
    log = out.with_suffix(".log")
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full_env.pop("TF_CONFIG", None)
    with open(log, "w") as log_file:
        proc = subprocess.Popen([*prefix, sys.executable, str(child), *args, str(out)], cwd=ROOT, env=full_env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("child %s ran over %d s:\n%s" % (args, timeout, log.read_text()[-3000:]))
    assert code == 0 and out.exists(), "child %s failed (%s):\n%s" % (args, code, log.read_text()[-3000:])
    return json.loads(out.read_text())


def max_diff(a: list, b: list) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def test_mirrored_over_two_logical_cpus_matches_default_and_numpy(tmp_path):
    result = run_child(["mirrored"], tmp_path / "mirrored.json", timeout=120)
    default, mirrored = result["default"], result["mirrored"]
    assert default["describe"]["kind"] == "default" and default["describe"]["replicas"] == 1
    assert mirrored["describe"]["kind"] == "mirrored" and mirrored["describe"]["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in mirrored["describe"]["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert "logical CPU" in mirrored["describe"]["note"]

    ref_losses, ref_weights = numpy_reference(result["initial"])
    np.testing.assert_allclose(default["losses"], ref_losses, rtol=NUMPY_RTOL)
    np.testing.assert_allclose(mirrored["losses"], default["losses"], rtol=SAME_MATH_RTOL)
    assert max_diff(mirrored["weights"], default["weights"]) < 1e-5
    assert max_diff(default["weights"], ref_weights) < 1e-4
    # compile/fit in the scope splits the same global batch and lands on the same weights.
    assert max_diff(mirrored["fit_weights"], default["fit_weights"]) < 1e-5
    assert max_diff(default["fit_weights"], default["weights"]) < 1e-5
    assert ref_losses[-1] < 0.5 * ref_losses[0]


def _netns_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _netns_available(), reason="needs `unshare -rn` (a private network namespace): "
                    "TensorFlow's gRPC server listens on all interfaces, so workers run where only loopback exists")
def test_multi_worker_two_processes_agree(tmp_path):
    result = run_child(["launch"], tmp_path / "launch.json", timeout=180, prefix=["unshare", "-rn"],
                       env={"CHILD_IN_NETNS": "1"})
    assert result["codes"] == [0, 0], result
    assert all(a.startswith("127.0.0.1:") for a in result["cluster"]["worker"])
    first, second = result["workers"]
    assert [first["task"]["index"], second["task"]["index"]] == [0, 1]
    for worker in (first, second):
        assert worker["describe"]["kind"] == "multi_worker"
        assert worker["describe"]["replicas"] == 2 and worker["describe"]["workers"] == 2
    assert max_diff(first["weights"], second["weights"]) <= 1e-6
    assert max_diff(first["weights"], first["initial"]) > 1e-2  # they trained, not just agreed
    np.testing.assert_allclose(first["losses"], second["losses"], rtol=1e-6)
    # Each global step's all-reduced mean is the single-process mean of the same 32 examples.
    ref_losses, ref_weights = numpy_reference(first["initial"])
    np.testing.assert_allclose(first["losses"], ref_losses, rtol=NUMPY_RTOL)
    assert max_diff(first["weights"], ref_weights) < 1e-4
    assert first["losses"][-1] < 0.5 * first["losses"][0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


@pytest.fixture()
def no_tpu_env(monkeypatch):
    for name in st.TPU_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    if st._tpu_plausible(DistributeConfig(), {}):
        pytest.skip("this machine has TPU device files")


def test_tpu_without_a_tpu_fails_fast_and_clearly(no_tpu_env):
    start = time.monotonic()
    with pytest.raises(st.StrategyError, match="no TPU found at") as err:
        st.make_strategy(DistributeConfig(strategy="tpu"))
    message = str(err.value)
    assert "TPU_NAME" in message and "/dev/accel*" in message and "auto/default" in message
    address = "grpc://127.0.0.1:%d" % _closed_port()
    with pytest.raises(st.StrategyError, match="no TPU found at train.distribute.tpu='%s'" % address):
        st.make_strategy(DistributeConfig(strategy="tpu", tpu=address))
    assert time.monotonic() - start < 30


def test_auto_falls_back_to_default_without_tpu_or_gpu(no_tpu_env, monkeypatch):
    tf = st.compat.tensorflow()
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: auto picks mirrored")
    # A plausible-looking TPU that is not there must cost a quick probe, not a hang.
    monkeypatch.setenv("COLAB_TPU_ADDR", "127.0.0.1:%d" % _closed_port())
    start = time.monotonic()
    info = st.describe(st.make_strategy(DistributeConfig(strategy="auto")))
    assert time.monotonic() - start < 30
    assert info["kind"] == "default" and info["replicas"] == 1 and info["workers"] == 1
    assert info["devices"][0].endswith("CPU:0")


def test_mirrored_devices_and_describe_in_process():
    strategy = st.make_strategy(DistributeConfig(strategy="mirrored", devices=["/cpu:0"]))
    info = st.describe(strategy)
    assert (info["kind"], info["replicas"], info["workers"]) == ("mirrored", 1, 1)
    assert len(info["devices"]) == 1 and info["devices"][0].endswith("/device:CPU:0")
    assert "one replica" in info["note"]
    with pytest.raises(st.StrategyError, match=r"unknown device '/gpu:7'"):
        st.make_strategy(DistributeConfig(strategy="mirrored", devices=["/gpu:7"]))
    with pytest.raises(st.StrategyError, match="named twice"):
        st.make_strategy(DistributeConfig(strategy="mirrored", devices=["/cpu:0", "/device:CPU:0"]))
    with strategy.scope():
        with pytest.raises(st.StrategyError, match="inside another strategy's scope"):
            st.make_strategy(DistributeConfig())
    with pytest.raises(ValueError, match="'gpu'"):
        st.make_strategy(DistributeConfig(strategy="gpu"))


def test_split_logical_cpus_after_runtime_start_is_a_clear_error():
    tf = st.compat.tensorflow()
    tf.constant(1.0) + 1.0  # the runtime is certainly up now
    if len(tf.config.list_logical_devices("CPU")) == 3:
        pytest.skip("this process already has 3 logical CPUs")
    with pytest.raises(st.StrategyError, match=r"split_logical_cpus\(3\) must run before"):
        st.split_logical_cpus(3)
    with pytest.raises(ValueError, match="got 0"):
        st.split_logical_cpus(0)


def test_multi_worker_checks_tf_config_before_touching_tensorflow(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(st.StrategyError, match=r"needs \$TF_CONFIG"):
        st.make_strategy(DistributeConfig(strategy="multi_worker"))


GOOD = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("raw, expected", [
    ("", r"needs \$TF_CONFIG"),
    ("{cluster: 1}", "not valid JSON .*'{cluster: 1}'"),
    (json.dumps({"task": GOOD["task"]}), "needs a \"cluster\" object"),
    (json.dumps({**GOOD, "cluster": {"worker": ["a:1"], "ps": ["b:2"]}}), r"jobs \['ps'\]"),
    (json.dumps({**GOOD, "cluster": {"worker": []}}), "names no workers"),
    (json.dumps({**GOOD, "cluster": {"worker": ["localhost"]}}), "'localhost' of job 'worker' is not"),
    (json.dumps({**GOOD, "cluster": {"worker": ["h:99999"]}}), "'h:99999'"),
    (json.dumps({**GOOD, "cluster": {"worker": ["h:1", "h:1"]}}), "'h:1' appears twice"),
    (json.dumps({**GOOD, "cluster": {"chief": ["a:1", "b:1"], "worker": ["c:1"]}}), "2 chiefs"),
    (json.dumps({"cluster": GOOD["cluster"]}), "needs a \"task\" object"),
    (json.dumps({**GOOD, "task": {"type": "chief", "index": 0}}), "task type 'chief' is not a job"),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": 2}}), r"task index 2 is not in 0..1"),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": True}}), "task index True"),
])
def test_parse_tf_config_rejects_bad_input_and_shows_it(raw, expected):
    with pytest.raises(st.StrategyError, match=expected) as err:
        st.parse_tf_config({"TF_CONFIG": raw} if raw else {})
    if raw:
        assert repr(raw) in str(err.value)  # the offending TF_CONFIG is shown as given


def test_parse_tf_config_returns_the_validated_cluster_and_task():
    assert st.parse_tf_config({"TF_CONFIG": json.dumps(GOOD)}) == GOOD
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["w:1"]}, "task": {"type": "chief", "index": 0}}
    assert st.parse_tf_config({"TF_CONFIG": json.dumps(with_chief)}) == with_chief


def test_scaled_learning_rate_and_per_replica_batch():
    assert st.scaled_learning_rate(1e-3, 8, "none") == 1e-3
    assert st.scaled_learning_rate(1e-3, 8, "linear") == pytest.approx(8e-3)
    assert st.scaled_learning_rate(1e-3, 8, "sqrt") == pytest.approx(1e-3 * math.sqrt(8))
    assert st.scaled_learning_rate(0.5, 1, "linear") == 0.5
    with pytest.raises(ValueError, match="'cubic'"):
        st.scaled_learning_rate(1e-3, 2, "cubic")
    with pytest.raises(ValueError, match="got 0"):
        st.scaled_learning_rate(1e-3, 0, "linear")
    with pytest.raises(ValueError, match="got -0.1"):
        st.scaled_learning_rate(-0.1, 2, "none")
    assert st.per_replica_batch(256, 8) == 32
    assert st.per_replica_batch(7, 1) == 7
    with pytest.raises(ValueError, match="global batch size 100 does not split evenly over 8 replicas"):
        st.per_replica_batch(100, 8)
    with pytest.raises(ValueError, match="got 0"):
        st.per_replica_batch(0, 2)
