"""The development model server: gRPC and REST against small real toy SavedModels (tests/serving_toys.py)."""
from __future__ import annotations

import base64
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

import serving_toys as toys
from tfrec import compat
from tfrec.serving.models import Limits, ModelManager, RequestError, read_model_config, run_predict
from tfrec.serving.rest import array_to_json, json_to_array
from tfrec.serving.savedmodel import REGRESS_METHOD
from tfrec.serving.server import DevServer
from tfrec.serving.tensors import decode, from_tensor_proto, make_example, to_tensor_proto

tf = compat.tensorflow()

QUERIES = ["LED ceiling light", "white paint", "cordless drill bits", "nothing matches here"]
RANKED = [("led light", "100003", "outdoor led light bulb"), ("white paint", "100008", "exterior wood paint"),
          ("drill", "7", "drill bit set")]
LIMITS = dict(max_request_bytes=1 << 20, max_batch_size=16, max_string_bytes=1024)

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------------
# helpers


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


class Client:
    """Raw gRPC stubs plus the REST base URL of a running server."""

    def __init__(self, server: DevServer) -> None:
        self.channel = grpc.insecure_channel(server.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)])
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.url = "http://%s/v1/models/" % server.rest_address

    def predict(self, name: str, inputs: dict, **spec):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        for key, value in spec.items():
            if key == "version":
                request.model_spec.version.value = value
            elif key == "output_filter":
                request.output_filter.extend(value)
            else:
                setattr(request.model_spec, key, value)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else to_tensor_proto(value))
        return self.predict_stub.Predict(request, timeout=20)

    def close(self) -> None:
        self.channel.close()


def retrieval_ok(client: Client, bias: float = 0.0, version: int | None = None) -> None:
    """A good retrieval request returns the reference answer (and the expected version)."""
    response = client.predict("search_retrieval", {"query": QUERIES})
    ids, scores = toys.retrieval_reference(QUERIES, bias=bias)
    assert decode(from_tensor_proto(response.outputs["product_ids"])).tolist() == ids.tolist()
    np.testing.assert_allclose(from_tensor_proto(response.outputs["scores"]), scores, rtol=1e-6, atol=1e-6)
    if version is not None:
        assert response.model_spec.version.value == version


def grpc_code(call) -> tuple:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def regression_request(rows, name="search_ranker", signature="", context=None):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if context is None:
        for query, pid, title in rows:
            request.input.example_list.examples.add().CopyFrom(make_example({"query": query, "product_id": pid, "title": title}))
    else:
        request.input.example_list_with_context.context.CopyFrom(make_example(context))
        for features in rows:
            request.input.example_list_with_context.examples.add().CopyFrom(make_example(features))
    return request


# 127.0.0.1 in /proc/net/tcp's little-endian hex, and as the IPv4-mapped IPv6 address gRPC listens on
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the LISTEN sockets on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A toy retrieval model and a toy ranker, version 1 each."""
    root = tmp_path_factory.mktemp("exports")
    toys.write_toy_retrieval(root)
    toys.write_toy_ranker(root)
    return root


@pytest.fixture(scope="module")
def server(exports):
    with DevServer(exports, grpc_port=0, rest_port=0, poll_seconds=0.2, workers=4, **LIMITS) as running:
        yield running


@pytest.fixture()
def client(server):
    c = Client(server)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------------
# gRPC


def test_grpc_predict_matches_the_savedmodel_and_the_reference(server, client, exports):
    response = client.predict("search_retrieval", {"query": QUERIES})
    serve = tf.saved_model.load(str(exports / "search_retrieval" / "1")).signatures["serving_default"]
    direct = serve(query=tf.constant(QUERIES))
    ids = decode(from_tensor_proto(response.outputs["product_ids"]))
    scores = from_tensor_proto(response.outputs["scores"])
    assert ids.tolist() == decode(direct["product_ids"].numpy()).tolist()
    np.testing.assert_allclose(scores, direct["scores"].numpy(), rtol=0, atol=0)
    ref_ids, ref_scores = toys.retrieval_reference(QUERIES)
    assert ids.tolist() == ref_ids.tolist() and ids.shape == (len(QUERIES), 3)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    assert response.model_spec.name == "search_retrieval"
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"


def test_grpc_predict_output_filter_and_explicit_version(client):
    response = client.predict("search_retrieval", {"query": QUERIES[:1]}, version=1, output_filter=["scores"])
    assert list(response.outputs) == ["scores"]
    np.testing.assert_allclose(from_tensor_proto(response.outputs["scores"]), toys.retrieval_reference(QUERIES[:1])[1], atol=1e-6)


def test_grpc_ranker_predict_and_regress_agree_with_the_reference(client):
    expected = np.array([toys.ranker_reference(*row) for row in RANKED], np.float32)
    columns = {"query": [r[0] for r in RANKED], "product_id": [r[1] for r in RANKED], "title": [r[2] for r in RANKED]}
    predicted = from_tensor_proto(client.predict("search_ranker", columns).outputs["score"])
    np.testing.assert_allclose(predicted, expected, rtol=1e-6)

    response = client.predict_stub.Regress(regression_request(RANKED), timeout=20)
    assert response.model_spec.signature_name == "regress" and response.model_spec.version.value == 1
    np.testing.assert_allclose([r.value for r in response.result.regressions], expected, rtol=1e-6)

    # context features are merged into every example
    with_context = regression_request([{"product_id": pid, "title": title} for _, pid, title in RANKED[:2]],
                                      context={"query": "led light"})
    values = [r.value for r in client.predict_stub.Regress(with_context, timeout=20).result.regressions]
    expected_context = [toys.ranker_reference("led light", pid, title) for _, pid, title in RANKED[:2]]
    np.testing.assert_allclose(values, expected_context, rtol=1e-6)


def test_grpc_metadata_and_status(client):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "search_ranker"
    response = client.predict_stub.GetModelMetadata(request, timeout=20)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert response.model_spec.version.value == 1
    assert signatures.signature_def["regress"].method_name == REGRESS_METHOD
    assert sorted(signatures.signature_def["serving_default"].inputs) == ["product_id", "query", "title"]
    assert signatures.signature_def["serving_default"].outputs["score"].dtype == tf.float32.as_datatype_enum

    status = client.model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "search_retrieval"}), timeout=20)
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    one = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "search_retrieval"})
    one.model_spec.version.value = 7
    assert grpc_code(lambda: client.model_stub.GetModelStatus(one, timeout=20))[0] == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------------------------
# REST


def test_rest_predict_row_and_columnar_formats(client):
    ids, scores = toys.retrieval_reference(QUERIES)
    rows = requests.post(client.url + "search_retrieval:predict", json={"instances": QUERIES}, timeout=20)
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert [p["product_ids"] for p in predictions] == ids.tolist()
    np.testing.assert_allclose([p["scores"] for p in predictions], scores, atol=1e-6)

    b64 = {"b64": base64.b64encode(QUERIES[0].encode()).decode()}
    columns = requests.post(client.url + "search_retrieval/versions/1:predict",
                            json={"inputs": {"query": [b64]}, "signature_name": "serving_default"}, timeout=20)
    assert columns.status_code == 200, columns.text
    assert columns.json()["outputs"]["product_ids"] == ids[:1].tolist()

    ranker_rows = [{"query": q, "product_id": p, "title": t} for q, p, t in RANKED]
    ranked = requests.post(client.url + "search_ranker:predict", json={"instances": ranker_rows}, timeout=20).json()
    np.testing.assert_allclose(ranked["predictions"], [toys.ranker_reference(*r) for r in RANKED], rtol=1e-6)


def test_rest_regress_metadata_and_status(client):
    examples = [{"query": q, "product_id": p, "title": t} for q, p, t in RANKED]
    results = requests.post(client.url + "search_ranker:regress", json={"examples": examples}, timeout=20)
    assert results.status_code == 200, results.text
    np.testing.assert_allclose(results.json()["results"], [toys.ranker_reference(*r) for r in RANKED], rtol=1e-6)

    status = requests.get(client.url + "search_ranker", timeout=20).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(client.url + "search_ranker/versions/1", timeout=20).json() == status

    metadata = requests.get(client.url + "search_ranker/metadata", timeout=20).json()
    assert metadata["model_spec"]["name"] == "search_ranker" and metadata["model_spec"]["version"] == "1"
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert signatures["regress"]["method_name"] == REGRESS_METHOD
    assert signatures["serving_default"]["inputs"]["query"]["dtype"] == "DT_STRING"


def test_rest_json_conversions():
    assert array_to_json(np.array([[b"ok", b"\xff\xfe"]], dtype=object)) == [["ok", {"b64": "//4="}]]
    assert array_to_json(np.array([0.1, 2.5], np.float32)) == [0.1, 2.5]  # float32 values at float32 precision
    assert json_to_array([[1, 2]], tf.int64.as_datatype_enum, "x").tolist() == [[1, 2]]
    assert json_to_array([{"b64": "//4="}], tf.string.as_datatype_enum, "x").tolist() == [b"\xff\xfe"]
    with pytest.raises(RequestError, match="input 'x' expects DT_INT64, got a number 1.5"):
        json_to_array([1.5], tf.int64.as_datatype_enum, "x")


# ---------------------------------------------------------------------------------------------
# malformed requests: proper status codes, and the server keeps answering


def _tensor(dtype, shape, **values):
    """A TensorProto built field by field (to send what a well-behaved client would not)."""
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    for name, value in values.items():
        getattr(proto, name).extend(value)
    return proto


GRPC_MALFORMED = {
    "wrong dtype": (lambda c: c.predict("search_retrieval", {"query": np.array([1.5], np.float32)}),
                    "INVALID_ARGUMENT", "input 'query' expects DT_STRING, got DT_FLOAT"),
    "missing input": (lambda c: c.predict("search_ranker", {"query": ["a"], "title": ["b"]}),
                      "INVALID_ARGUMENT", "missing input 'product_id'"),
    "unexpected input": (lambda c: c.predict("search_retrieval", {"query": ["a"], "x": ["b"]}),
                         "INVALID_ARGUMENT", "unexpected input 'x'"),
    "empty batch": (lambda c: c.predict("search_retrieval", {"query": np.array([], dtype=object)}),
                    "INVALID_ARGUMENT", "batch of 0"),
    "batch over the limit": (lambda c: c.predict("search_retrieval", {"query": ["led"] * 17}),
                             "INVALID_ARGUMENT", "batch of 17 in input 'query' exceeds max_batch_size=16"),
    "different batch sizes": (lambda c: c.predict("search_ranker", {"query": ["a", "b"], "product_id": ["1"], "title": ["t"]}),
                              "INVALID_ARGUMENT", "different batch sizes"),
    "rank mismatch": (lambda c: c.predict("search_retrieval", {"query": [["led light"]]}),
                      "INVALID_ARGUMENT", "input 'query' expects rank 1"),
    "long string": (lambda c: c.predict("search_retrieval", {"query": ["x" * 2000]}),
                    "INVALID_ARGUMENT", "string of 2000 bytes in input 'query' exceeds max_string_bytes=1024"),
    "10 MB string": (lambda c: c.predict("search_retrieval", {"query": ["x" * (10 << 20)]}), "RESOURCE_EXHAUSTED", ""),
    "shape far larger than its values": (
        lambda c: c.predict("search_retrieval", {"query": _tensor(tf.string, [1 << 40], string_val=[b"a"])}),
        "INVALID_ARGUMENT", "1099511627776 elements"),
    "values that do not fit the shape": (
        lambda c: c.predict("search_retrieval", {"query": _tensor(tf.string, [2], string_val=[b"a", b"b", b"c"])}),
        "INVALID_ARGUMENT", "declares shape [2] (2 elements) but carries 3 values"),
    "unknown model": (lambda c: c.predict("nope", {"query": ["a"]}), "NOT_FOUND", "model 'nope' is not served"),
    "unknown version": (lambda c: c.predict("search_retrieval", {"query": ["a"]}, version=9), "NOT_FOUND", "version 9"),
    "unknown label": (lambda c: c.predict("search_retrieval", {"query": ["a"]}, version_label="stable"), "NOT_FOUND",
                      "no version label 'stable'"),
    "unknown signature": (lambda c: c.predict("search_retrieval", {"query": ["a"]}, signature_name="nope"),
                          "FAILED_PRECONDITION", 'Serving signature key "nope" not found'),
    "regress on a predict signature": (lambda c: c.predict_stub.Regress(regression_request(RANKED, signature="serving_default"),
                                                                        timeout=20),
                                       "INVALID_ARGUMENT", "Expected regression signature method_name"),
    "regress without examples": (lambda c: c.predict_stub.Regress(regression_request([]), timeout=20),
                                 "INVALID_ARGUMENT", "no input examples"),
    "classify": (lambda c: c.predict_stub.Classify(classification_pb2.ClassificationRequest(model_spec={"name": "search_ranker"}),
                                                   timeout=20), "UNIMPLEMENTED", "Classify"),
    "unsupported metadata field": (lambda c: c.predict_stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "search_ranker"}, metadata_field=["graph"]), timeout=20), "INVALID_ARGUMENT", "graph"),
}


@pytest.mark.parametrize("case", sorted(GRPC_MALFORMED))
def test_grpc_malformed_request_gets_its_status_and_the_server_stays_up(client, case):
    call, code, fragment = GRPC_MALFORMED[case]
    got, details = grpc_code(lambda: call(client))
    assert got == getattr(grpc.StatusCode, code), details
    assert fragment in (details or ""), details
    retrieval_ok(client)


REST_MALFORMED = {
    "malformed JSON": ("search_retrieval:predict", b"{not json", 400, "malformed JSON"),
    "number for a string": ("search_retrieval:predict", {"instances": [1.5]}, 400, "expects DT_STRING, got a number"),
    "missing input": ("search_ranker:predict", {"instances": [{"query": "a", "title": "b"}]}, 400, "missing input 'product_id'"),
    "empty batch": ("search_retrieval:predict", {"instances": []}, 400, "batch of 0"),
    "ragged": ("search_retrieval:predict", {"inputs": {"query": [["a"], ["b", "c"]]}}, 400, "not a rectangular array"),
    "both formats": ("search_retrieval:predict", {"instances": ["a"], "inputs": ["a"]}, 400, "exactly one of"),
    "10 MB body": ("search_retrieval:predict", {"instances": ["x" * (10 << 20)]}, 413, "exceeds max_request_bytes"),
    "long string": ("search_retrieval:predict", {"instances": ["x" * 2000]}, 400, "exceeds max_string_bytes=1024"),
    "unknown model": ("nope:predict", {"instances": ["a"]}, 404, "nope"),
    "unknown version": ("search_retrieval/versions/5:predict", {"instances": ["a"]}, 404, "version 5"),
    "unknown path": ("search_retrieval:explain", {"instances": ["a"]}, 404, "unknown path"),
    "classify": ("search_ranker:classify", {"examples": [{"query": "a"}]}, 501, "classify"),
    "regress without examples": ("search_ranker:regress", {"instances": []}, 400, "needs 'examples'"),
    "regress with an empty feature": ("search_ranker:regress", {"examples": [{"query": []}]}, 400, "at least one value"),
}


@pytest.mark.parametrize("case", sorted(REST_MALFORMED))
def test_rest_malformed_request_gets_its_status_and_the_server_stays_up(client, case):
    path, body, status, fragment = REST_MALFORMED[case]
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = requests.post(client.url + path, timeout=20, **kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    after = requests.post(client.url + "search_retrieval:predict", json={"instances": QUERIES[:1]}, timeout=20)
    assert after.status_code == 200
    assert after.json()["predictions"][0]["product_ids"] == toys.retrieval_reference(QUERIES[:1])[0][0].tolist()


# ---------------------------------------------------------------------------------------------
# versions: polling, swaps, failures, labels


def test_new_version_is_served_after_a_poll_and_the_old_one_unloaded(tmp_path):
    toys.write_toy_retrieval(tmp_path)
    with DevServer(tmp_path, grpc_port=0, rest_port=0, poll_seconds=0.2, workers=4) as server:
        client = Client(server)
        try:
            retrieval_ok(client, version=1)
            toys.write_toy_retrieval(tmp_path, bias=10.0)
            wait_for(lambda: server.status()["search_retrieval"].get(1, {}).get("state") == "END", what="version 1 unloaded")
            assert server.status()["search_retrieval"][2] == {"state": "AVAILABLE"}
            retrieval_ok(client, bias=10.0, version=2)
            answer = requests.post(client.url + "search_retrieval:predict", json={"instances": QUERIES[:1]}, timeout=20)
            expected = toys.retrieval_reference(QUERIES[:1], bias=10.0)[1][0, 0]
            assert answer.json()["predictions"][0]["scores"][0] == pytest.approx(expected)
        finally:
            client.close()


def test_broken_or_failing_warmup_version_leaves_the_old_one_serving(tmp_path):
    toys.write_toy_retrieval(tmp_path)
    with DevServer(tmp_path, grpc_port=0, rest_port=0, poll_seconds=0.2, workers=4) as server:
        client = Client(server)
        try:
            toys.write_broken_version(tmp_path, "search_retrieval", 2)
            failed = wait_for(lambda: server.status()["search_retrieval"].get(2, {}).get("error"), what="version 2 failure")
            assert "SavedModel" in failed or "parsing" in failed.lower()
            retrieval_ok(client, version=1)
            toys.write_failing_warmup_version(tmp_path, "search_retrieval", 3)
            failed = wait_for(lambda: server.status()["search_retrieval"].get(3, {}).get("error"), what="version 3 failure")
            assert "warm-up record 0" in failed and "missing input 'query'" in failed
            retrieval_ok(client, version=1)
            status = requests.get(client.url + "search_retrieval", timeout=20).json()["model_version_status"]
            by_version = {s["version"]: s for s in status}
            assert by_version["1"]["state"] == "AVAILABLE"
            assert by_version["3"]["state"] == "END" and by_version["3"]["status"]["error_code"] == "UNKNOWN"
            # a good newer version still takes over: the broken ones do not block the policy
            toys.write_toy_retrieval(tmp_path, bias=5.0, version=4)
            wait_for(lambda: server.status()["search_retrieval"].get(4, {}).get("state") == "AVAILABLE", what="version 4")
            retrieval_ok(client, bias=5.0, version=4)
        finally:
            client.close()


def test_start_falls_back_to_an_older_version_and_fails_clearly_without_one(tmp_path):
    toys.write_toy_retrieval(tmp_path)
    toys.write_broken_version(tmp_path, "search_retrieval", 2)
    with DevServer(tmp_path, grpc_port=0, rest_port=None) as server:
        assert server.status()["search_retrieval"][1] == {"state": "AVAILABLE"}
        assert server.rest_address == "" and server.banner.startswith("serving: grpc=127.0.0.1:")
    only_broken = tmp_path / "other"
    toys.write_broken_version(only_broken, "search_ranker", 1)
    with pytest.raises(RuntimeError, match="no loadable version for model search_ranker"):
        DevServer(only_broken, grpc_port=0, rest_port=0).start()


def test_model_config_labels_policies_and_docker_paths(tmp_path):
    exports = tmp_path / "exports"
    toys.write_toy_retrieval(exports)
    toys.write_toy_retrieval(exports, bias=100.0)
    toys.write_toy_ranker(exports)
    config = exports / "models.config"
    config.write_text("""model_config_list {
  config { name: "search_retrieval" base_path: "/models/search_retrieval" model_platform: "tensorflow"
           model_version_policy { specific { versions: 1 versions: 2 } }
           version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }
  config { name: "search_ranker" base_path: "search_ranker" model_platform: "tensorflow" }
}
""")
    sources = {s.name: s for s in read_model_config(config, exports)}
    assert sources["search_retrieval"].base_path == exports / "search_retrieval"  # /models/... remapped
    assert sources["search_ranker"].base_path == exports / "search_ranker"  # relative to the config's folder
    assert sources["search_retrieval"].wanted([1, 2, 3]) == [2, 1]
    with DevServer(exports, model_config_file=config, grpc_port=0, rest_port=0, poll_seconds=0.2, workers=4) as server:
        client = Client(server)
        try:
            assert {v: s["state"] for v, s in server.status()["search_retrieval"].items()} == {1: "AVAILABLE", 2: "AVAILABLE"}
            retrieval_ok(client, bias=100.0, version=2)  # no version named: the latest
            stable = client.predict("search_retrieval", {"query": QUERIES}, version_label="stable")
            assert stable.model_spec.version.value == 1
            np.testing.assert_allclose(from_tensor_proto(stable.outputs["scores"]), toys.retrieval_reference(QUERIES)[1],
                                       atol=1e-6)
            canary = requests.post(client.url + "search_retrieval/labels/canary:predict", json={"instances": QUERIES[:1]},
                                   timeout=20)
            assert canary.json()["predictions"][0]["scores"] == pytest.approx(
                toys.retrieval_reference(QUERIES[:1], bias=100.0)[1][0].tolist())
            labelled = requests.get(client.url + "search_retrieval/labels/stable", timeout=20).json()
            assert [s["version"] for s in labelled["model_version_status"]] == ["1"]
            assert requests.get(client.url + "search_retrieval/labels/nope", timeout=20).status_code == 404
        finally:
            client.close()
    config.write_text("model_config_list { config { name: 'x' base_path: 'missing' } }")
    with pytest.raises(ValueError, match="base_path missing is not a folder"):
        read_model_config(config, exports)
    config.write_text("this is not a proto")
    with pytest.raises(ValueError, match="not a ModelServerConfig"):
        read_model_config(config)


def test_no_failed_request_while_a_new_version_swaps_in(tmp_path):
    toys.write_toy_retrieval(tmp_path)
    failures: list[str] = []
    served: list[int] = []
    stop = threading.Event()
    with DevServer(tmp_path, grpc_port=0, rest_port=0, poll_seconds=0.2, workers=8) as server:
        def hammer(use_rest: bool) -> None:
            client = Client(server)
            try:
                while not stop.is_set():
                    try:
                        if use_rest:
                            r = requests.post(client.url + "search_retrieval:predict", json={"instances": QUERIES[:2]},
                                              timeout=20)
                            if r.status_code != 200:
                                failures.append(r.text)
                        else:
                            served.append(client.predict("search_retrieval", {"query": QUERIES[:2]}).model_spec.version.value)
                    except Exception as exc:  # any failure counts
                        failures.append(repr(exc))
            finally:
                client.close()

        threads = [threading.Thread(target=hammer, args=(i % 2 == 1,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(served) > 5, what="first answers")
            toys.write_toy_retrieval(tmp_path, bias=1.0)
            wait_for(lambda: served and served[-1] == 2, what="version 2 serving")
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    assert failures == []
    assert served[0] == 1 and served[-1] == 2


def test_failed_version_is_not_retried_at_once_while_its_files_stay_the_same(tmp_path, caplog):
    toys.write_toy_retrieval(tmp_path)
    broken = toys.write_broken_version(tmp_path, "search_retrieval", 2)
    manager = ModelManager(tmp_path)
    with caplog.at_level("ERROR", logger="tfrec.serving"):
        for _ in range(3):
            manager.poll()
    assert [r.getMessage().split(" failed")[0] for r in caplog.records] == ["search_retrieval version 2"]
    assert manager.status()["search_retrieval"][1] == {"state": "AVAILABLE"}
    # the version folder is replaced by a good export: once quiet for a poll it is loaded and the policy moves on
    fixed = toys.write_toy_retrieval(tmp_path / "staging", bias=2.0, version=2)
    shutil.rmtree(broken)
    os.replace(fixed, broken)
    manager.poll()
    manager.poll()
    assert manager.status()["search_retrieval"] == {1: {"state": "END"}, 2: {"state": "AVAILABLE"}}


def test_inflight_requests_keep_their_version_after_an_unload(tmp_path):
    toys.write_toy_retrieval(tmp_path)
    manager = ModelManager(tmp_path, limits=Limits())
    manager.poll()
    request = predict_pb2.PredictRequest(model_spec={"name": "search_retrieval"})
    request.inputs["query"].CopyFrom(to_tensor_proto(QUERIES))
    held = manager.resolve(request.model_spec)  # what a request in flight holds
    toys.write_toy_retrieval(tmp_path, bias=3.0)
    manager.poll()  # a new version is loaded once its files were quiet for one poll
    manager.poll()
    assert manager.status()["search_retrieval"] == {1: {"state": "END"}, 2: {"state": "AVAILABLE"}}
    old = run_predict(held, request, manager.limits)
    assert old.model_spec.version.value == 1
    np.testing.assert_allclose(from_tensor_proto(old.outputs["scores"]), toys.retrieval_reference(QUERIES)[1], atol=1e-6)
    assert manager.predict(request).model_spec.version.value == 2


# ---------------------------------------------------------------------------------------------
# sockets


def test_binds_loopback_only_and_stop_releases_the_ports(exports):
    server = DevServer(exports, grpc_port=0, rest_port=0, workers=2, models=["search_ranker"]).start()
    try:
        grpc_port = int(server.grpc_address.rsplit(":", 1)[1])
        rest_port = int(server.rest_address.rsplit(":", 1)[1])
        assert server.grpc_address == "127.0.0.1:%d" % grpc_port and server.rest_address == "127.0.0.1:%d" % rest_port
        assert list(server.status()) == ["search_ranker"]
        if Path("/proc/net/tcp").is_file():
            for port in (grpc_port, rest_port):
                found = listening_addresses(port)
                assert found and found <= LOOPBACK, found
        serving = threading.Thread(target=server.serve_forever)
        serving.start()
        assert requests.get("http://%s/v1/models/search_ranker" % server.rest_address, timeout=20).status_code == 200
    finally:
        server.stop()
    serving.join(timeout=10)
    assert not serving.is_alive()
    for port in (grpc_port, rest_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # fails while anything still listens there
            probe.listen()


def test_bad_arguments_are_clear(tmp_path, exports):
    with pytest.raises(ValueError, match="export_dir .* is not a folder"):
        DevServer(tmp_path / "missing")
    with pytest.raises(ValueError, match="grpc_port must be in"):
        DevServer(exports, grpc_port=70000)
    with pytest.raises(RuntimeError, match="no models to serve"):
        DevServer(tmp_path, grpc_port=0, rest_port=0).start()
    with pytest.raises(RuntimeError, match="model nope \\(no such model"):
        DevServer(exports, grpc_port=0, rest_port=0, models=["search_ranker", "nope"]).start()
    with DevServer(exports, grpc_port=0, rest_port=0, models=["search_ranker"]) as first:
        taken = int(first.grpc_address.rsplit(":", 1)[1])
        with pytest.raises(OSError, match="cannot bind the gRPC port"):
            DevServer(exports, grpc_port=taken, rest_port=0, models=["search_ranker"]).start()
