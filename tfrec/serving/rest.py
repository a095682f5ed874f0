"""TF Serving's REST API (v1) for the development server, on a ThreadingHTTPServer.

JSON requests are turned into the same protos the gRPC API takes (as TF Serving itself does), so
both APIs share one validation and execution path:

* ``GET /v1/models/NAME[/versions/N|/labels/L]`` -> GetModelStatusResponse as JSON;
  ``.../metadata`` -> GetModelMetadataResponse (``metadata.signature_def`` unpacked).
* ``POST ...:predict`` with ``instances`` (row format -> ``predictions``) or ``inputs``
  (columnar -> ``outputs``), optional ``signature_name``; strings may be ``{"b64": ...}``.
* ``POST ...:regress`` with ``examples`` (and optional ``context``) -> ``results``.
* Errors are ``{"error": message}``: 400 (malformed), 404 (unknown model, version or path), 405 (a
  method other than GET/POST, with ``Allow``), 408 (a client too slow to send its request), 411,
  413 (body over the limit), 415 (a compressed body), 429 (the model's queue is full), 501
  (classify), 503 (every connection slot busy), 504 (the request's deadline passed before it ran).
  An optional ``X-Request-Timeout: SECONDS`` header gives a request a deadline.

Connections are served by a fixed pool of worker threads from a bounded queue of accepted
connections (listen backlog 1024). A connection that sends nothing for ``timeout`` seconds, or
takes longer than that to send a request, is closed; an idle keep-alive connection gives its
worker up after a second when other connections wait, and responses say ``Connection: close``
while others wait, so no client is starved by idle ones.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import queue
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ContextManager, Optional

import numpy as np

from tfrec import compat
from tfrec.serving.admission import Admission
from tfrec.serving.models import DEFAULT_SIGNATURE, ModelManager, RequestError, dtype_name, invalid, run_predict, run_regress
from tfrec.serving.tensors import make_example, to_tensor_proto
from tfrec.serving.unexpected import UnexpectedErrors

tf = compat.tensorflow()

log = logging.getLogger(__name__)

_ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
                    r"(?P<verb>/metadata|:predict|:regress|:classify)?$")
# TF Serving's mapping of status codes to HTTP (model_servers/http_rest_api_handler)
_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
                "DEADLINE_EXCEEDED": 504, "RESOURCE_EXHAUSTED": 429, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503}
_DRAIN_LIMIT = 64 << 20  # bodies larger than this are not even read before answering 413
_MAX_JSON_DEPTH = 64  # deeper bodies are refused before anything recurses over them
_MAX_INT64 = (1 << 63) - 1
_TIMEOUT_HEADER = "X-Request-Timeout"
_ALLOWED = "GET, POST"
_YIELD_AFTER = 1.0  # an idle connection gives its worker up after this long when others wait
_MAX_PENDING = 1024


# ---------------------------------------------------------------------------------------------
# JSON <-> arrays


def _flatten(value: Any, alias: str) -> tuple[tuple[int, ...], list]:
    """(shape, leaves) of a nested JSON list; ragged lists are INVALID_ARGUMENT."""
    if not isinstance(value, list):
        return (), [value]
    if not value:
        return (0,), []
    parts = [_flatten(v, alias) for v in value]
    shapes = {shape for shape, _ in parts}
    if len(shapes) != 1:
        raise invalid("input '%s' is not a rectangular array (its rows have shapes %s)" % (alias, sorted(shapes)))
    return (len(value),) + parts[0][0], [leaf for _, leaves in parts for leaf in leaves]


def _json_depth_ok(value: Any, limit: int = _MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests at most ``limit`` deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" is valid JSON but not text
        raise invalid("%s is not valid Unicode text (it holds a lone surrogate); send bytes as {\"b64\": ...}" % what)


def _string_leaf(value: Any, alias: str) -> bytes:
    if isinstance(value, str):
        return _utf8(value, "a string of input '%s'" % alias)
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise invalid("input '%s': %r is not valid base64" % (alias, value["b64"][:40]))
    raise invalid("input '%s' expects DT_STRING, got %s %s" % (alias, _json_type(value), _short(value)))


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", dict: "an object",
            type(None): "null", list: "a list"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value)[:200]
    return text if len(text) <= 60 else text[:57] + "..."


def json_to_array(value: Any, dtype: int, alias: str) -> np.ndarray:
    """A numpy array of the signature's dtype from a (nested) JSON value."""
    shape, leaves = _flatten(value, alias)
    tf_dtype = tf.dtypes.as_dtype(dtype)
    name = dtype_name(dtype)
    if tf_dtype == tf.string:
        out = np.empty(len(leaves), dtype=object)
        out[:] = [_string_leaf(v, alias) for v in leaves]
        return out.reshape(shape)
    if tf_dtype == tf.bool:
        bad = [v for v in leaves if not isinstance(v, bool)]
    elif tf_dtype.is_integer:
        bad = [v for v in leaves if isinstance(v, bool) or not isinstance(v, int)]
    elif tf_dtype.is_floating:
        bad = [v for v in leaves if isinstance(v, bool) or not isinstance(v, (int, float))]
    else:
        raise RequestError("UNIMPLEMENTED", "input '%s' has dtype %s, which the REST API does not convert" % (alias, name))
    if bad:
        raise invalid("input '%s' expects %s, got %s %s" % (alias, name, _json_type(bad[0]), _short(bad[0])))
    try:
        return np.array(leaves, dtype=tf_dtype.as_numpy_dtype).reshape(shape)
    except OverflowError:
        raise invalid("input '%s': a value does not fit %s" % (alias, name))


def array_to_json(array: np.ndarray) -> Any:
    """JSON of an output array: bytes as UTF-8 strings ({"b64": ...} if not UTF-8), float32 at float32 precision."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(_bytes_json, otypes=[object])(array).tolist()
    if array.dtype == np.float32:
        # the shortest repr of each float32, so 0.1 stays 0.1 rather than 0.10000000149011612
        return array.astype(str).astype(np.float64).tolist()
    return array.tolist()


def _bytes_json(value: Any) -> Any:
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def _feature_value(value: Any, name: str) -> Any:
    """A tf.Example feature value from JSON (b64 objects decoded to bytes, strings checked to be text)."""
    if isinstance(value, list):
        return [_feature_value(v, name) for v in value]
    if isinstance(value, dict):
        return _string_leaf(value, "feature %s" % name)
    if isinstance(value, str):
        return _utf8(value, "a value of feature '%s'" % name)
    if value is None:
        raise invalid("feature '%s' is null" % name)
    return value


def _examples(items: Any, where: str) -> list:
    if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
        raise invalid("'%s' must be a list of objects {feature: value}" % where)
    try:
        return [make_example({_utf8(k, "a feature name").decode("utf-8"): _feature_value(v, k) for k, v in e.items()})
                for e in items]
    except (ValueError, TypeError, AttributeError) as exc:
        raise invalid("%s: %s" % (where, exc))


# ---------------------------------------------------------------------------------------------
# Requests


def _model_spec(name: str, version: Optional[str], label: Optional[str], signature: str = "") -> Any:
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        number = int(version) if len(version.lstrip("0")) <= 19 else _MAX_INT64 + 1  # int() of 5,000 digits raises
        if number > _MAX_INT64:
            raise invalid("version %s... does not fit a 64-bit integer" % version[:25])
        spec.version.value = number
    elif label is not None:
        spec.version_label = label
    return spec


def _message_json(message: Any) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _signature_name(body: dict) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid("'signature_name' must be a string, got %s" % _short(name))
    _utf8(name, "'signature_name'")
    return name


def predict_json(manager: ModelManager, spec: Any, body: dict, gate: Optional[ContextManager[Any]] = None) -> dict:
    """Answer a REST predict body (row or columnar format); the model runs inside ``gate``."""
    from tensorflow_serving.apis import predict_pb2

    if ("instances" in body) == ("inputs" in body):
        raise invalid("a predict request needs exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    spec.signature_name = _signature_name(body)
    version = manager.resolve(spec)  # one version for the conversion and the run, even if a new one swaps in
    signature = version.signature(spec.signature_name or DEFAULT_SIGNATURE)
    aliases = sorted(signature.inputs)
    row = "instances" in body
    values = _row_inputs(body["instances"], aliases) if row else _columnar_inputs(body["inputs"], aliases)
    request = predict_pb2.PredictRequest(model_spec=spec)
    for alias, value in values.items():
        info = signature.inputs.get(alias)
        if info is None:
            raise invalid("unexpected input '%s' (the signature expects %s)" % (alias, ", ".join(aliases)))
        request.inputs[alias].CopyFrom(to_tensor_proto(json_to_array(value, info.dtype, alias)))
    request.model_spec.version.value = version.version
    response = run_predict(version, request, manager.limits, *(() if gate is None else (gate,)))
    outputs = {k: _array(v) for k, v in response.outputs.items()}
    if not row:
        return {"outputs": array_to_json(outputs[next(iter(outputs))]) if len(outputs) == 1
                else {k: array_to_json(v) for k, v in outputs.items()}}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) > 1:
        raise invalid("outputs %s do not share a batch dimension; use the columnar 'inputs' format" % sizes)
    columns = {k: array_to_json(v) for k, v in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    n = next(iter(sizes.values()))
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(n)]}


def _array(proto: Any) -> np.ndarray:
    return tf.make_ndarray(proto)


def _row_inputs(instances: Any, aliases: list[str]) -> dict[str, Any]:
    if not isinstance(instances, list):
        raise invalid("'instances' must be a list (one entry per example)")
    if not instances:
        return {alias: [] for alias in aliases}  # batch of 0: reported by the shared checks
    named = [isinstance(row, dict) and "b64" not in row for row in instances]
    if all(named):
        for i, row in enumerate(instances):
            if set(row) != set(instances[0]):
                raise invalid("instance %d has inputs %s, instance 0 has %s" % (i, sorted(row), sorted(instances[0])))
        return {alias: [row[alias] for row in instances] for alias in instances[0]}
    if any(named):
        raise invalid("'instances' mixes objects {input: value} with bare values")
    if len(aliases) != 1:
        raise invalid("bare 'instances' values need a single-input signature; this one expects %s: send objects "
                      "{input: value}" % ", ".join(aliases))
    return {aliases[0]: instances}


def _columnar_inputs(inputs: Any, aliases: list[str]) -> dict[str, Any]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        for alias in inputs:
            _utf8(alias, "an input name")
        return dict(inputs)
    if len(aliases) != 1:
        raise invalid("a bare 'inputs' value needs a single-input signature; this one expects %s" % ", ".join(aliases))
    return {aliases[0]: inputs}


def regress_json(manager: ModelManager, spec: Any, body: dict, gate: Optional[ContextManager[Any]] = None) -> dict:
    """Answer a REST regress body ({"examples": [...], "context": {...}, "signature_name": ...}) inside ``gate``."""
    from tensorflow_serving.apis import regression_pb2

    if "examples" not in body:
        raise invalid("a regress request needs 'examples' (a list of objects {feature: value})")
    spec.signature_name = _signature_name(body)
    request = regression_pb2.RegressionRequest(model_spec=spec)
    examples = _examples(body["examples"], "examples")
    if "context" in body:
        if not isinstance(body["context"], dict):
            raise invalid("'context' must be an object {feature: value}")
        request.input.example_list_with_context.context.CopyFrom(_examples([body["context"]], "context")[0])
        request.input.example_list_with_context.examples.extend(examples)
    else:
        request.input.example_list.examples.extend(examples)
    version = manager.resolve(spec)
    response = run_regress(version, request, manager.limits, *(() if gate is None else (gate,)))
    return {"results": [float(str(np.float32(r.value))) for r in response.result.regressions]}


def status_json(manager: ModelManager, spec: Any) -> dict:
    """GetModelStatusResponse as JSON."""
    from tensorflow_serving.apis import get_model_status_pb2

    return _message_json(manager.model_status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec)))


def metadata_json(manager: ModelManager, spec: Any) -> dict:
    """GetModelMetadataResponse as JSON, with the signature_def Any unpacked (as TF Serving's REST API)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
    response = manager.metadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return {"model_spec": _message_json(response.model_spec), "metadata": {"signature_def": _message_json(signature_map)}}


# ---------------------------------------------------------------------------------------------
# HTTP


class _DeadlineReader(io.RawIOBase):
    """The connection's socket as a raw stream that fails with TimeoutError once the request's deadline passes.

    A per-read socket timeout alone lets a client that sends a byte every few seconds hold a
    worker forever; here the whole request (and the idle wait before it) has one deadline.
    """

    def __init__(self, sock: socket.socket, server: "_HTTPServer") -> None:
        super().__init__()
        self._sock = sock
        self._server = server
        self.deadline = time.monotonic() + server.timeout_seconds
        self.idle_since: Optional[float] = time.monotonic()  # None once a byte of the next request arrived

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                raise TimeoutError("the client sent no complete request within %.0f s" % self._server.timeout_seconds)
            # idle connections wake up every 0.1 s to see whether others wait for a worker
            self._sock.settimeout(min(self.deadline - now, 0.1) if self.idle_since is not None else self.deadline - now)
            try:
                count = self._sock.recv_into(buffer)
            except TimeoutError:
                if self.idle_since is None:
                    raise
                if time.monotonic() - self.idle_since >= _YIELD_AFTER and self._server.waiting():
                    raise TimeoutError("an idle connection gave its worker to a waiting one") from None
                continue
            self.idle_since = None
            return count


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfrec-dev-server"
    server: "_HTTPServer"

    def __init__(self, request: Any, client_address: Any, server: "_HTTPServer", accepted_at: float) -> None:
        self._accepted_at: Optional[float] = accepted_at
        self.received_at = accepted_at
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.timeout = self.server.timeout_seconds
        super().setup()
        self._reader = _DeadlineReader(self.connection, self.server)
        self.rfile = io.BufferedReader(self._reader)
        # Headers and body go out as two writes; without TCP_NODELAY the client's delayed ACK holds
        # every response ~40 ms (Nagle's algorithm).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        super().handle_one_request()
        # the next request on this connection: a fresh deadline, and it may be idle for a while
        now = time.monotonic()
        self._reader.deadline = now + self.server.timeout_seconds
        self._reader.idle_since = now

    def parse_request(self) -> bool:
        # a request's own deadline counts from when it arrived (the first one: from the connection's accept)
        self.received_at = self._accepted_at if self._accepted_at is not None else time.monotonic()
        self._accepted_at = None
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (BaseHTTPRequestHandler's name)
        log.debug("rest %s: " + format, self.address_string(), *args)

    def end_headers(self) -> None:
        # writes get the whole timeout (the reader shortens the socket's timeout to what is left of a read)
        self.connection.settimeout(self.server.timeout_seconds)
        super().end_headers()

    def _send(self, status: int, payload: Any, headers: Optional[dict] = None) -> None:
        body = json.dumps(payload).encode("utf-8")  # ensure_ascii: lone surrogates come out as \\ud800 escapes
        if self.server.waiting():
            self.close_connection = True  # hand this worker to a connection that waits for one
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, headers: Optional[dict] = None) -> None:
        self._send(status, {"error": message}, headers)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (bad request line, unknown method, ...) as TF Serving's JSON errors."""
        self.close_connection = True
        if code == 501 and self.command not in (None, "GET", "POST"):
            self._error(405, "method %s is not allowed; use GET or POST" % self.command[:20], {"Allow": _ALLOWED})
            return
        reason = self.responses.get(code, ("error",))[0]
        self._error(code, "%s: %s" % (reason, message) if message and message != reason else reason)

    def _route(self) -> Optional[re.Match]:
        match = _ROUTE.match(self.path.split("?", 1)[0])
        if match is None:
            self._error(404, "unknown path %s (expected /v1/models/NAME[/versions/N|/labels/L][/metadata|:predict|:regress])"
                        % self.path[:200])
        return match

    def _guarded(self, fn: Any, match: re.Match, *args: Any) -> None:
        """Answer with ``fn(manager, spec, *args)``: RequestErrors as their HTTP status, anything else 500 (logged once per kind)."""
        try:
            spec = _model_spec(match["name"], match["version"], match["label"])
            self._send(200, fn(self.server.manager, spec, *args))
        except RequestError as exc:
            self._error(_HTTP_STATUS.get(exc.code, 500), exc.message)
        except Exception as exc:  # the server answers, whatever went wrong
            self.server.errors.report(exc, "REST %s %s" % (self.command, self.path[:100]))
            self._error(500, "internal error: %s: %s" % (type(exc).__name__, exc))

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        match = self._route()
        if match is None:
            return
        if match["verb"] in (":predict", ":regress", ":classify"):
            self._error(405, "%s needs POST" % match["verb"], {"Allow": "POST"})
        elif match["verb"] == "/metadata":
            self._guarded(metadata_json, match)
        else:
            self._guarded(status_json, match)

    def do_POST(self) -> None:  # noqa: N802
        body = self._read_body()
        if body is None:
            return
        match = self._route()
        if match is None:
            return
        verb = match["verb"]
        if verb == ":classify":
            self._error(501, "classify is not implemented by the tfrec development server")
            return
        if verb not in (":predict", ":regress"):
            self._error(405, "POST %s: only :predict and :regress accept POST" % self.path[:200], {"Allow": "GET"})
            return
        payload = self._json(body)
        if payload is None:
            return
        deadline = self._deadline()
        if deadline is False:
            return
        gate = self.server.admission.gate(match["name"], deadline) if self.server.admission else None
        self._guarded(predict_json if verb == ":predict" else regress_json, match, payload, gate)

    def _json(self, body: bytes) -> Optional[dict]:
        """The body as a JSON object, or None after answering 400."""
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self._error(400, "malformed JSON body: %s" % str(exc)[:200])
            return None
        if not _json_depth_ok(payload):
            self._error(400, "the JSON body nests deeper than %d levels" % _MAX_JSON_DEPTH)
            return None
        if not isinstance(payload, dict):
            self._error(400, "the JSON body must be an object, got %s" % _json_type(payload))
            return None
        return payload

    def _deadline(self) -> Any:
        """The request's deadline (time.monotonic()) from X-Request-Timeout, None without one, False after answering 400."""
        text = self.headers.get(_TIMEOUT_HEADER)
        if text is None:
            return None
        try:
            seconds = float(text)
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds < 1e9:  # also refuses nan and inf
            self._error(400, "%s must be a number of seconds > 0, got %r" % (_TIMEOUT_HEADER, text[:40]))
            return False
        return self.received_at + seconds

    def _read_body(self) -> Optional[bytes]:
        """The request body, or None after answering 408/411/413/415 (bodies over the limit are drained, not kept)."""
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.strip().isdigit() or not length_header.strip().isascii():
            self.close_connection = True
            self._error(411, "a POST needs a Content-Length header")
            return None
        length = int(length_header) if len(length_header.strip()) <= 18 else _DRAIN_LIMIT + 1
        limit = self.server.max_request_bytes
        try:
            if length > limit or encoding not in ("", "identity"):
                self.close_connection = True
                self._drain(length)
                if length > limit:
                    self._error(413, "request body of %d bytes exceeds max_request_bytes=%d" % (length, limit))
                else:
                    self._error(415, "Content-Encoding %r is not supported: send the JSON body uncompressed" % encoding[:40])
                return None
            body = self.rfile.read(length)
        except TimeoutError as exc:
            self.close_connection = True
            self._error(408, "request timed out: %s" % exc)
            return None
        if len(body) < length:
            self.close_connection = True  # the client closed its side before sending the whole body
            return None
        return body

    def _drain(self, length: int) -> None:
        """Read and drop a body the server refuses, so the client reads the answer rather than a reset connection."""
        if length > _DRAIN_LIMIT:
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)


class _HTTPServer(HTTPServer):
    """An HTTPServer whose connections wait in a bounded queue for a fixed pool of worker threads."""

    allow_reuse_address = True  # SO_REUSEADDR: restart right after stop; Linux still refuses a port in use
    request_queue_size = 1024  # the listen backlog (the kernel caps it at net.core.somaxconn)

    def __init__(self, address: tuple[str, int], manager: ModelManager, max_request_bytes: int, workers: int,
                 timeout_seconds: float, admission: Optional[Admission], errors: UnexpectedErrors) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.manager = manager
        self.max_request_bytes = max_request_bytes
        self.timeout_seconds = timeout_seconds
        self.admission = admission
        self.errors = errors
        # accepted connections waiting for a worker (an open socket each); beyond this many they are told 503 at once
        self._pending: queue.Queue = queue.Queue(maxsize=max(_MAX_PENDING, 8 * workers))
        super().__init__(address, _Handler)
        self._workers = [threading.Thread(target=self._work, name="tfrec-rest-%d" % i, daemon=True) for i in range(workers)]
        for thread in self._workers:
            thread.start()

    def waiting(self) -> bool:
        """Whether accepted connections wait for a worker."""
        return not self._pending.empty()

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        try:
            self._pending.put_nowait((request, client_address, time.monotonic()))
        except queue.Full:
            _refuse(request, "every connection slot of the server is busy; retry later")

    def _work(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            request, client_address, accepted_at = item
            try:
                self.RequestHandlerClass(request, client_address, self, accepted_at)
            except Exception as exc:  # a broken connection must not end the worker
                if not isinstance(exc, (ConnectionError, TimeoutError)):
                    self.errors.report(exc, "REST connection from %s" % (client_address,))
            finally:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("REST connection from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:  # workers finish their connection (at most timeout_seconds), then stop
            self._pending.put(None)
        while True:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])


def _refuse(sock: socket.socket, message: str) -> None:
    """Answer 503 on a connection no worker can take, without blocking the accepting thread."""
    body = json.dumps({"error": message}).encode("utf-8")
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n" % len(body)).encode("ascii")
    try:
        sock.settimeout(0.5)
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        # closing with unread request bytes makes the kernel reset the connection, which can discard
        # the answer before the client reads it: read what has arrived first
        sock.setblocking(False)
        for _ in range(16):
            if not sock.recv(1 << 16):
                break
    except OSError:
        pass
    finally:
        sock.close()


class RestServer:
    """TF Serving's REST API over a ModelManager, served from a background thread."""

    def __init__(self, manager: ModelManager, host: str, port: int, max_request_bytes: int, workers: int = 32,
                 timeout_seconds: float = 10.0, admission: Optional[Admission] = None,
                 errors: Optional[UnexpectedErrors] = None) -> None:
        if int(workers) < 1 or not float(timeout_seconds) > 0:
            raise ValueError("workers must be >= 1 and timeout_seconds > 0, got %r and %r" % (workers, timeout_seconds))
        try:
            self._httpd = _HTTPServer((host, port), manager, max_request_bytes, int(workers), float(timeout_seconds), admission,
                                      errors or UnexpectedErrors(log))
        except OSError as exc:
            raise OSError("cannot bind the REST port %s:%d: %s" % (host, port, exc)) from exc
        self.port = self._httpd.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "RestServer":
        """Accept connections from a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tfrec-rest", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
