"""Limits that bound work, slow and idle clients, and overload, against `tfrec serve` in a child process.

Loopback only, bounded in count and time (the file takes ~1 min): declared tensor shapes larger than
their payload, decoded string bytes, 200 concurrent REST clients beside idle and trickling
connections, a full model queue (RESOURCE_EXHAUSTED / 429 at once) and expired deadlines (dropped
before they run). A toy model that sleeps (tests/serving_slow_toy.py) keeps the model busy on demand.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc, regression_pb2

from serving_slow_toy import write_slow_model
from serving_toys import retrieval_reference, write_toy_ranker, write_toy_retrieval
from tfrec.serving.process import start_server
from tfrec.serving.tensors import make_example, to_tensor_proto

pytestmark = pytest.mark.timeout(180)

REST_TIMEOUT_S = 2.0
ARGS = ["--rest-workers", "8", "--rest-timeout-seconds", str(REST_TIMEOUT_S), "--max-concurrent-executions", "1",
        "--max-queued-requests", "8", "--max-request-bytes", str(1 << 20), "--poll-seconds", "5"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    export = tmp_path_factory.mktemp("export")
    write_toy_retrieval(export)
    write_toy_ranker(export)
    write_slow_model(export)
    with start_server(export, ARGS, timeout=150) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def slow_request(pause_ms: int, query: str = "a") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["query"].CopyFrom(to_tensor_proto([query]))
    request.inputs["pause_ms"].CopyFrom(to_tensor_proto(np.array([pause_ms], np.int64)))
    return request


def code_of(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def rest(server, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 20.0):
    """(status, JSON body) of one request on a fresh connection (status None: no response)."""
    host, port = server.rest_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    except (OSError, http.client.HTTPException) as exc:
        return None, repr(exc)
    finally:
        connection.close()


def retrieval_ok(stub) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "search_retrieval"
    request.inputs["query"].CopyFrom(to_tensor_proto(["led light"]))
    response = stub.Predict(request, timeout=20)
    ids = [v.decode() for v in response.outputs["product_ids"].string_val]
    assert ids == retrieval_reference(["led light"])[0][0].tolist()


# ---------------------------------------------------------------------------------------------
# limits on what a request makes the server hold


def _declared(alias: str, dtype: int, shape: list[int], **fields) -> predict_pb2.PredictRequest:
    request = slow_request(0)
    tensor = request.inputs[alias]
    tensor.Clear()
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    for name, value in fields.items():
        if name == "tensor_content":
            tensor.tensor_content = value
        else:
            getattr(tensor, name).extend(value)
    return request


DECLARED = {
    # 65 KB on the wire that TensorFlow would repeat into 64 MiB of strings
    "one string for 1,024": ("query", _declared("query", types_pb2.DT_STRING, [1024], string_val=[b"x" * 60_000])),
    "one int64 for 4": ("pause_ms", _declared("pause_ms", types_pb2.DT_INT64, [4], int64_val=[5])),
    "no values for 8": ("pause_ms", _declared("pause_ms", types_pb2.DT_INT64, [8])),
    "tensor_content short of the shape": ("pause_ms", _declared("pause_ms", types_pb2.DT_INT64, [1000],
                                                                tensor_content=np.zeros(1, np.int64).tobytes())),
    "more values than the shape": ("query", _declared("query", types_pb2.DT_STRING, [1], string_val=[b"a", b"b"])),
}


@pytest.mark.parametrize("case", sorted(DECLARED))
def test_a_declared_shape_the_payload_does_not_fill_is_refused(server, stub, case):
    alias, request = DECLARED[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=20)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "input '%s' declares shape" % alias in raised.value.details(), raised.value.details()
    assert server.alive()
    retrieval_ok(stub)


def test_strings_are_bounded_after_decoding(server, stub):
    # 60 KB of context (under max-string-bytes) is merged into each of 20 examples: 1.2 MB for the model
    # from a 60 KB request, over --max-request-bytes (1 MiB).
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "search_ranker"
    request.input.example_list_with_context.context.CopyFrom(make_example({"query": "x" * 60_000}))
    for i in range(20):
        request.input.example_list_with_context.examples.add().CopyFrom(make_example({"product_id": str(i), "title": "t"}))
    assert request.ByteSize() < 70_000
    with pytest.raises(grpc.RpcError) as raised:
        stub.Regress(request, timeout=20)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes of strings" in raised.value.details() and str(1 << 20) in raised.value.details()
    del request.input.example_list_with_context.examples[10:]  # 600 KB after decoding: under the limit
    assert len(stub.Regress(request, timeout=20).result.regressions) == 10


# ---------------------------------------------------------------------------------------------
# REST connections: backlog, bounded workers, idle and slow clients


def test_200_concurrent_rest_clients_are_answered_beside_idle_and_trickling_connections(server):
    host, port = server.rest_address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(30)]
    trickling = [socket.create_connection((host, int(port)), timeout=10) for _ in range(10)]
    stop = threading.Event()

    def trickle() -> None:  # one byte of a request line every 0.4 s: never a whole request
        for i in range(100):
            if stop.wait(0.4):
                return
            for sock in trickling:
                try:
                    sock.send(b"POST /v1/models/search_retrieval:predict HTTP/1.1\r\n"[i % 50:i % 50 + 1])
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    body = json.dumps({"instances": ["led light"]}).encode()

    def call(_: int):
        began = time.monotonic()
        status, payload = rest(server, "POST", "/v1/models/search_retrieval:predict", body, timeout=30)
        return status, payload, time.monotonic() - began

    began = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(call, range(200)))
    wall = time.monotonic() - began
    stop.set()
    statuses = {}
    for status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    print("200 REST clients: %s in %.1f s (slowest %.2f s)" % (statuses, wall, max(r[2] for r in results)))
    assert set(statuses) <= {200, 429, 503}, (statuses, [p for s, p, _ in results if s is None][:3])  # each answered
    assert statuses.get(200, 0) >= 150, statuses
    expected = retrieval_reference(["led light"])[0][0].tolist()
    assert all(p["predictions"][0]["product_ids"] == expected for s, p, _ in results if s == 200)
    assert max(r[2] for r in results) < 20 and wall < 30

    # Idle and trickling connections are closed by the server after --rest-timeout-seconds (2 s here).
    for sock in idle + trickling:
        sock.settimeout(10)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:80]
        sock.close()


def test_rest_client_errors_are_4xx_json(server):
    deep = b'{"instances": ' + b"[" * 900 + b"]" * 900 + b"}"
    cases = [
        ("POST", "/v1/models/search_retrieval:predict", deep, {}, 400),
        ("POST", "/v1/models/search_retrieval:predict", b'{"instances": ["\\ud800"]}', {}, 400),
        ("GET", "/v1/models/search_retrieval/versions/99999999999999999999999", b"", {}, 400),
        ("PUT", "/v1/models/search_retrieval:predict", b"{}", {}, 405),
        ("DELETE", "/v1/models/search_retrieval", b"", {}, 405),
        ("POST", "/v1/models/search_retrieval:predict", b"\x1f\x8b\x08\x00", {"Content-Encoding": "gzip"}, 415),
        ("POST", "/v1/models/search_retrieval:predict", b"instances=a", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
        ("POST", "/v1/models/search_retrieval:predict", b'{"instances": ["a"]}', {"X-Request-Timeout": "soon"}, 400),
    ]
    for method, path, body, headers, want in cases:
        status, payload = rest(server, method, path, body, headers)
        assert status == want and isinstance(payload, dict) and payload.get("error"), (method, path, body[:40], status, payload)
    status, payload = rest(server, "PUT", "/v1/models/search_retrieval", b"")
    assert status == 405
    assert "error" in payload


# ---------------------------------------------------------------------------------------------
# overload: a bounded queue per model, deadlines


def test_a_full_model_queue_answers_resource_exhausted_at_once_and_other_models_serve(server, stub):
    timings = []

    def call(_: int) -> tuple[str, float]:
        began = time.monotonic()
        code = code_of(lambda: stub.Predict(slow_request(600), timeout=30))
        return code, time.monotonic() - began

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(call, i) for i in range(20)]
        time.sleep(0.5)  # the queue is full by now: 1 running, 8 queued
        began = time.monotonic()
        rest_status, rest_body = rest(server, "POST", "/v1/models/slow:predict",
                                      json.dumps({"instances": [{"query": "a", "pause_ms": 0}]}).encode())
        timings.append(time.monotonic() - began)
        retrieval_ok(stub)  # another model's queue is its own
        results = [f.result() for f in futures]
    shed = [t for code, t in results if code == "RESOURCE_EXHAUSTED"]
    served = [t for code, t in results if code == "OK"]
    print("20 slow calls: %d served, %d shed (slowest refusal %.3f s)" % (len(served), len(shed), max(shed, default=0)))
    assert len(served) + len(shed) == 20, results
    assert len(served) <= 9 + 1 and len(shed) >= 10, results  # +1: one may finish before the last arrive
    assert max(shed) < 1.0, shed  # refused at once, not after waiting
    assert rest_status == 429 and "overloaded" in rest_body["error"], rest_body
    assert timings[0] < 1.0


def test_requests_whose_deadline_passed_are_dropped_before_they_run(server, stub):
    first = threading.Thread(target=lambda: stub.Predict(slow_request(1000), timeout=30))
    began = time.monotonic()
    first.start()
    time.sleep(0.2)
    # Five requests that would each hold the model for 1 s, with 0.3 s deadlines: they wait behind the first.
    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(lambda _: code_of(lambda: stub.Predict(slow_request(1000), timeout=0.3)), range(5)))
    assert codes == ["DEADLINE_EXCEEDED"] * 5, codes
    status, payload = rest(server, "POST", "/v1/models/slow:predict",
                           json.dumps({"instances": [{"query": "a", "pause_ms": 1000}]}).encode(), {"X-Request-Timeout": "0.2"})
    assert status == 504 and "deadline" in payload["error"], payload
    # Had the expired ones run, this would wait 6 s more; dropped, it runs right after the first.
    assert code_of(lambda: stub.Predict(slow_request(0), timeout=30)) == "OK"
    elapsed = time.monotonic() - began
    first.join(30)
    print("after 1 s of work and 6 expired requests, the next one finished at %.2f s" % elapsed)
    assert elapsed < 4.0, elapsed


# ---------------------------------------------------------------------------------------------
# the pieces, in process


def test_model_queue_runs_in_order_sheds_beyond_its_bound_and_drops_expired_requests():
    from tfrec.serving.admission import ModelQueue
    from tfrec.serving.models import RequestError

    queue = ModelQueue("m", concurrency=1, max_queued=2)
    order: list[int] = []
    arrived = threading.Barrier(3)

    def wait_then_run(i: int) -> None:
        arrived.wait()
        time.sleep(0.05 * i)  # queue in a known order
        with queue.slot():
            order.append(i)

    with queue.slot():
        threads = [threading.Thread(target=wait_then_run, args=(i,)) for i in (1, 2)]
        for thread in threads:
            thread.start()
        arrived.wait()
        deadline = time.monotonic() + 5
        while queue.load() != (1, 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.load() == (1, 2)
        began = time.monotonic()
        with pytest.raises(RequestError) as full:
            with queue.slot():
                pass
        assert full.value.code == "RESOURCE_EXHAUSTED" and time.monotonic() - began < 0.1
        with pytest.raises(RequestError) as expired:
            with queue.slot(deadline=time.monotonic() - 1):
                pass
        assert expired.value.code == "DEADLINE_EXCEEDED"
    for thread in threads:
        thread.join(5)
    assert order == [1, 2] and queue.load() == (0, 0)
    assert (queue.shed, queue.expired) == (1, 1)

    # a request that waits past its deadline leaves the queue without running, and the slot passes on
    with queue.slot():
        with pytest.raises(RequestError) as waited:
            with queue.slot(deadline=time.monotonic() + 0.1):
                order.append(99)
        assert waited.value.code == "DEADLINE_EXCEEDED" and queue.load() == (1, 0)
    assert 99 not in order and queue.load() == (0, 0)


def test_unexpected_errors_are_logged_with_a_traceback_once_per_kind(caplog):
    import logging

    from tfrec.serving.unexpected import UnexpectedErrors

    logger = logging.getLogger("tfrec.serving.test-once")
    errors = UnexpectedErrors(logger)

    def fail(value: str) -> None:
        raise KeyError(value)

    with caplog.at_level(logging.DEBUG, logger="tfrec.serving.test-once"):
        for i in range(50):
            try:
                fail("request %d" % i)
            except KeyError as exc:
                errors.report(exc, "a request")
        try:
            {}["elsewhere"]
        except KeyError as exc:
            errors.report(exc, "a request")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info for r in errors)  # one per (type, line), with the traceback
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 49
