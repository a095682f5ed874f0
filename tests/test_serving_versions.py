"""The development server's version loading when versions are copied in (not renamed) into the export folder.

Drives ``ModelManager.poll()`` in-process: the time between two polls is the poll interval.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from tensorflow_serving.apis import predict_pb2

import serving_toys as toys
from tfrec.serving.models import ModelManager
from tfrec.serving.tensors import from_tensor_proto, to_tensor_proto

QUERIES = ["LED ceiling light", "white paint"]
POLL = 0.05


def predict(manager: ModelManager) -> tuple[int, np.ndarray]:
    """(served version, scores) of the newest AVAILABLE search_retrieval version."""
    request = predict_pb2.PredictRequest(model_spec={"name": "search_retrieval"})
    request.inputs["query"].CopyFrom(to_tensor_proto(QUERIES))
    response = manager.predict(request)
    return response.model_spec.version.value, from_tensor_proto(response.outputs["scores"])


def copy_with_partial_data(source: Path, dest: Path) -> tuple[Path, bytes]:
    """Copy a version folder the way ``cp -r`` would be caught mid-way: the variables data file half written."""
    shutil.copytree(source, dest)
    data = next((dest / "variables").glob("variables.data-*"))
    full = data.read_bytes()
    data.write_bytes(full[: len(full) // 2])
    return data, full[len(full) // 2:]


def poll_until(manager: ModelManager, predicate, timeout: float = 30.0) -> dict:
    """Poll every POLL seconds until ``predicate(status)`` holds; returns that status."""
    deadline = time.monotonic() + timeout
    while True:
        manager.poll()
        status = manager.status()["search_retrieval"]
        if predicate(status):
            return status
        assert time.monotonic() < deadline, "still %s after %g s" % (status, timeout)
        time.sleep(POLL)


def test_version_half_copied_at_start_is_retried_once_complete(tmp_path):
    export = tmp_path / "export"
    toys.write_toy_retrieval(export)
    good = toys.write_toy_retrieval(tmp_path / "staging", bias=2.0)
    data, rest = copy_with_partial_data(good, export / "search_retrieval" / "2")
    manager = ModelManager(export)
    manager.poll()
    status = manager.status()["search_retrieval"]
    assert status[1] == {"state": "AVAILABLE"}
    assert status[2]["state"] == "END" and status[2]["retry"] == "retrying"
    assert "Read less bytes" in status[2]["error"] and "retrying" in status[2]["error"]
    assert predict(manager)[0] == 1
    with data.open("ab") as f:  # the copy completes: only the data file changes (folder and pb stay the same)
        f.write(rest)
    poll_until(manager, lambda s: s[2] == {"state": "AVAILABLE"})
    version, scores = predict(manager)
    assert version == 2
    np.testing.assert_allclose(scores, toys.retrieval_reference(QUERIES, bias=2.0)[1], atol=1e-6)


def test_version_copied_while_serving_waits_for_quiet_files(tmp_path):
    export = tmp_path / "export"
    toys.write_toy_retrieval(export)
    good = toys.write_toy_retrieval(tmp_path / "staging", bias=3.0)
    manager = ModelManager(export)
    manager.poll()
    data, rest = copy_with_partial_data(good, export / "search_retrieval" / "2")
    chunks = np.array_split(np.frombuffer(rest, np.uint8), 4)
    for chunk in chunks:  # the data file grows between polls: the version is not tried yet
        manager.poll()
        assert manager.status()["search_retrieval"][2] == {"state": "START"}
        assert predict(manager)[0] == 1
        with data.open("ab") as f:
            f.write(chunk.tobytes())
        time.sleep(POLL)
    manager.poll()  # the copy just completed: its files must stay quiet for one poll first
    assert manager.status()["search_retrieval"][2] == {"state": "START"}
    time.sleep(POLL)
    manager.poll()
    assert manager.status()["search_retrieval"] == {1: {"state": "END"}, 2: {"state": "AVAILABLE"}}
    version, scores = predict(manager)
    assert version == 2
    np.testing.assert_allclose(scores, toys.retrieval_reference(QUERIES, bias=3.0)[1], atol=1e-6)


def test_broken_version_ends_failed_after_the_retry_window_and_the_old_one_serves(tmp_path):
    toys.write_toy_retrieval(tmp_path)
    manager = ModelManager(tmp_path, retry_seconds=3.0)
    manager.poll()
    broken = toys.write_broken_version(tmp_path, "search_retrieval", 2)
    status = poll_until(manager, lambda s: s[2]["state"] == "END")
    assert status[2]["retry"] == "retrying"
    status = poll_until(manager, lambda s: s[2].get("retry") == "failed")
    assert status[1] == {"state": "AVAILABLE"} and status[2]["state"] == "END"
    assert "failed: its files have not changed for 3 s" in status[2]["error"]
    version, scores = predict(manager)
    assert version == 1
    np.testing.assert_allclose(scores, toys.retrieval_reference(QUERIES)[1], atol=1e-6)
    # failed is not for good: good files copied over it are loaded once quiet
    good = toys.write_toy_retrieval(tmp_path / "staging", bias=4.0)
    for path in sorted(good.rglob("*")):
        target = broken / path.relative_to(good)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            shutil.copyfile(path, target)
    manager.poll()
    assert manager.status()["search_retrieval"][2]["retry"] == "retrying"
    poll_until(manager, lambda s: s[2] == {"state": "AVAILABLE"})
    assert predict(manager)[0] == 2
