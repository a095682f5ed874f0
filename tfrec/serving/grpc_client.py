"""A gRPC client for TensorFlow Serving's PredictionService and ModelService.

One channel per client, reused by every call and thread (gRPC multiplexes calls over one
HTTP/2 connection). ``timeout`` is the deadline of a whole call, retries included: each attempt
gets what is left of it. Only ``UNAVAILABLE`` is retried (the server is starting, restarting or
unreachable; Predict, Regress and the status calls are idempotent); ``RESOURCE_EXHAUSTED`` means
the server is overloaded, and retrying would add to that load, so it is raised at once.

The retry policy and :class:`ServingError` live here and are shared by the REST client.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar

import numpy as np

from tfrec.serving.tensors import decode, from_tensor_proto, make_example, to_tensor_proto
from tfrec import compat

T = TypeVar("T")

UNAVAILABLE = "UNAVAILABLE"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
RETRYABLE_GRPC_CODES = frozenset({UNAVAILABLE})


class ServingError(RuntimeError):
    """A serving call that failed (after its retries): ``code`` is a gRPC status name or an HTTP status."""

    def __init__(self, code: Any, message: str, model: str = "", method: str = "", attempts: int = 1) -> None:
        super().__init__(code, message)
        self.code, self.message, self.model, self.method, self.attempts = code, message, model, method, attempts

    def __str__(self) -> str:
        tries = " after %d attempts" % self.attempts if self.attempts > 1 else ""
        return "%s on model %r failed with %s%s: %s" % (self.method or "call", self.model, self.code, tries, self.message)


class RetryPolicy:
    """Retries with exponential backoff and full jitter, never sleeping past a call's deadline.

    The delay before retry ``k`` (0-based) is uniform in ``[0, min(max_backoff, backoff * 2**k)]``
    ("full jitter", so many clients retrying at once spread out instead of hitting the server in
    waves). ``sleep`` is injectable so callers can record the delays.
    """

    def __init__(self, retries: int = 3, backoff: float = 0.1, max_backoff: float = 2.0, seed: Optional[int] = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0, got %r" % (retries,))
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0, got %r and %r" % (backoff, max_backoff))
        self.retries, self.backoff, self.max_backoff = int(retries), float(backoff), float(max_backoff)
        self.rng = random.Random(seed)
        self.sleep = sleep

    def delay(self, retry: int) -> float:
        """The jittered delay before retry number ``retry`` (0-based)."""
        return self.rng.uniform(0.0, min(self.max_backoff, self.backoff * (2.0 ** min(retry, 60))))  # 2.0**1024 overflows

    def call(self, attempt: Callable[[float], T], retryable: Callable[[ServingError], bool], timeout: float) -> T:
        """Run ``attempt(seconds_left)`` until it returns, fails for good, or the deadline passes."""
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds, got %r" % (timeout,))
        deadline = time.monotonic() + timeout
        for retry in range(self.retries + 1):
            try:
                return attempt(max(deadline - time.monotonic(), 1e-3))
            except ServingError as error:
                error.attempts = retry + 1
                left = deadline - time.monotonic()
                if not retryable(error) or retry == self.retries or left <= 0:
                    raise
                self.sleep(min(self.delay(retry), left))
                if deadline - time.monotonic() <= 0:
                    error.message += "; the %.3g s deadline passed while backing off" % timeout
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises


def check_version_label(version: Optional[int], label: Optional[str]) -> None:
    """Raise ValueError unless at most one of version and label is given (TF Serving's ModelSpec rule)."""
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both (got version=%r, label=%r)" % (version, label))
    if version is not None and (isinstance(version, bool) or int(version) != version or int(version) < 1):
        raise ValueError("version must be a positive integer, got %r" % (version,))


def as_input_arrays(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{name: numpy array} of a predict request's inputs (str lists stay strings)."""
    if not inputs:
        raise ValueError("predict needs at least one input, got %r" % (inputs,))
    return {str(name): value if isinstance(value, np.ndarray) else np.asarray(value) for name, value in inputs.items()}


def batch_length(arrays: Mapping[str, np.ndarray]) -> int:
    """The shared axis-0 length of the inputs (ValueError naming them if they differ or are scalars)."""
    lengths = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise ValueError("batched inputs must all have the same axis-0 length; got %s"
                         % ", ".join("%s: %s" % (n, "scalar" if l is None else l) for n, l in lengths.items()))
    return next(iter(lengths.values()))


def split_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """The inputs cut along axis 0 into consecutive batches of at most ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, got %r" % (batch_size,))
    n = batch_length(arrays)
    if n == 0:
        raise ValueError("no rows to predict: every input is empty")
    return [{name: a[start:start + batch_size] for name, a in arrays.items()} for start in range(0, n, batch_size)]


def concat_outputs(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of consecutive batches joined along axis 0."""
    out = {}
    for name in parts[0]:
        pieces = [np.asarray(p[name]) for p in parts]
        if any(p.ndim == 0 for p in pieces):
            raise ValueError("output %r is a scalar per request, so batches cannot be joined; use predict()" % name)
        out[name] = np.concatenate(pieces, axis=0)
    return out


def run_batches(predict_one: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], inputs: Mapping[str, Any],
                batch_size: int, workers: int) -> dict[str, np.ndarray]:
    """Predict consecutive batches (``workers`` at a time) and join the outputs in order."""
    batches = split_batches(as_input_arrays(inputs), batch_size)
    if workers < 1:
        raise ValueError("workers must be >= 1, got %r" % (workers,))
    if workers == 1 or len(batches) == 1:
        return concat_outputs([predict_one(b) for b in batches])
    with ThreadPoolExecutor(max_workers=min(workers, len(batches))) as pool:
        return concat_outputs(list(pool.map(predict_one, batches)))


def signature_summary(signature_def: Any) -> dict:
    """{"inputs": {name: {"dtype", "shape"}}, "outputs": ..., "method_name"} of a SignatureDef proto."""
    tf = compat.tensorflow()

    def tensors(infos: Mapping[str, Any]) -> dict:
        out = {}
        for name, info in sorted(infos.items()):
            shape = None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
            out[name] = {"dtype": tf.dtypes.as_dtype(info.dtype).name if info.dtype else "invalid", "shape": shape}
        return out

    return {"inputs": tensors(signature_def.inputs), "outputs": tensors(signature_def.outputs),
            "method_name": signature_def.method_name}


def metadata_summary(model_spec: Any, signature_def_map: Any) -> dict:
    """The metadata dict both clients return, from a ModelSpec and a SignatureDefMap proto."""
    version = model_spec.version.value if model_spec.HasField("version") else None
    return {
        "model_spec": {"name": model_spec.name, "version": version, "label": model_spec.version_label or None},
        "signatures": {key: signature_summary(sig) for key, sig in sorted(signature_def_map.signature_def.items())},
    }


def status_summary(response: Any) -> list[dict]:
    """[{"version", "state", "error"}] of a GetModelStatusResponse, oldest version first."""
    from tensorflow_serving.apis import get_model_status_pb2

    states = get_model_status_pb2.ModelVersionStatus.State
    rows = [{"version": int(s.version), "state": states.Name(s.state), "error": s.status.error_message}
            for s in response.model_version_status]
    return sorted(rows, key=lambda r: r["version"])


def wait_available(status: Callable[[float], list[dict]], model: str, timeout: float, tolerated: Iterable[Any],
                   poll: float = 0.05) -> None:
    """Poll ``status(seconds_left)`` until a version is AVAILABLE; ServingError DEADLINE_EXCEEDED otherwise."""
    deadline = time.monotonic() + timeout
    tolerated = set(tolerated)
    last = "no answer yet"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServingError(DEADLINE_EXCEEDED, "no AVAILABLE version within %.3g s (last: %s)" % (timeout, last),
                               model, "wait_until_available")
        try:
            versions = status(left)
            if any(v["state"] == "AVAILABLE" for v in versions):
                return
            last = ", ".join("%d %s%s" % (v["version"], v["state"], " (%s)" % v["error"] if v["error"] else "")
                             for v in versions) or "no versions"
        except ServingError as error:
            if error.code not in tolerated:
                raise
            last = "%s: %s" % (error.code, error.message)
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
        poll = min(poll * 2, 0.5)


class BatchedPredict:
    """Client-side batching shared by both clients: needs ``predict()`` and ``max_batch_size``."""

    max_batch_size: int

    def predict_batched(self, model: str, inputs: Mapping[str, Any], batch_size: Optional[int] = None, workers: int = 1,
                        **kw: Any) -> dict[str, np.ndarray]:
        """Predict many rows as consecutive batches (``workers`` in flight) and join the outputs along axis 0."""
        size = self.max_batch_size if batch_size is None else int(batch_size)
        return run_batches(lambda batch: self.predict(model, batch, **kw), inputs, size, workers)


class GrpcClient(BatchedPredict):
    """TF Serving's gRPC API: Predict, Regress, GetModelMetadata, GetModelStatus, over one reused channel.

    ``timeout`` bounds each call, retries included; ``retries`` UNAVAILABLE answers are retried after
    jittered exponential backoff (``backoff`` doubling up to ``max_backoff``, drawn from a
    ``random.Random(seed)`` of this client); ``predict_batched`` cuts inputs into ``max_batch_size``
    rows. ``sleep`` is the backoff's sleep (tests record it). Proxies from the environment are
    ignored unless ``use_proxy``.
    """

    def __init__(self, target: str = "127.0.0.1:8500", timeout: float = 10.0, retries: int = 3, backoff: float = 0.1,
                 max_backoff: float = 2.0, max_batch_size: int = 256, max_message_bytes: int = 64 << 20,
                 seed: Optional[int] = None, sleep: Callable[[float], None] = time.sleep, use_proxy: bool = False) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds, got %r" % (timeout,))
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1, got %r" % (max_batch_size,))
        self.target, self.timeout, self.max_batch_size = target, float(timeout), int(max_batch_size)
        self.policy = RetryPolicy(retries, backoff, max_backoff, seed, sleep)
        self._grpc = grpc
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", int(max_message_bytes)),
            ("grpc.max_receive_message_length", int(max_message_bytes)),
            # Model servers sit on the local network; an http_proxy set for the internet must not capture them.
            ("grpc.enable_http_proxy", int(bool(use_proxy))),
        ])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "GrpcClient(%r)" % self.target

    def _spec(self, spec: Any, model: str, version: Optional[int], label: Optional[str], signature: Optional[str]) -> None:
        check_version_label(version, label)
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = label
        if signature is not None:
            spec.signature_name = signature

    def _call(self, rpc: Callable[..., Any], request: Any, model: str, method: str, timeout: Optional[float]) -> Any:
        def attempt(seconds: float) -> Any:
            try:
                return rpc(request, timeout=seconds)
            except self._grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                raise ServingError(code.name if code is not None else "UNKNOWN",
                                   error.details() if hasattr(error, "details") else str(error), model, method) from None

        return self.policy.call(attempt, lambda e: e.code in RETRYABLE_GRPC_CODES, self.timeout if timeout is None else timeout)

    def predict(self, model: str, inputs: Mapping[str, Any], signature: str = "serving_default", version: Optional[int] = None,
                label: Optional[str] = None, output_filter: Optional[Sequence[str]] = None,
                timeout: Optional[float] = None) -> dict[str, np.ndarray]:
        """One Predict call: {input name: array-like} -> {output name: numpy array} (strings as str)."""
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature)
        for name, value in as_input_arrays(inputs).items():
            request.inputs[name].CopyFrom(to_tensor_proto(value))
        if output_filter:
            request.output_filter.extend(output_filter)
        response = self._call(self._predictions.Predict, request, model, "Predict", timeout)
        return {name: decode(from_tensor_proto(proto)) for name, proto in response.outputs.items()}

    def regress(self, model: str, examples: Sequence[Mapping[str, Any]], signature: str = "regress",
                version: Optional[int] = None, label: Optional[str] = None, timeout: Optional[float] = None) -> np.ndarray:
        """One Regress call over tf.Examples built from feature dicts -> float32 [len(examples)]."""
        from tensorflow_serving.apis import regression_pb2

        if not examples:
            raise ValueError("regress needs at least one example, got %r" % (examples,))
        request = regression_pb2.RegressionRequest()
        self._spec(request.model_spec, model, version, label, signature)
        for features in examples:
            request.input.example_list.examples.add().CopyFrom(make_example(features))
        response = self._call(self._predictions.Regress, request, model, "Regress", timeout)
        return np.asarray([r.value for r in response.result.regressions], dtype=np.float32)

    def metadata(self, model: str, version: Optional[int] = None, label: Optional[str] = None,
                 timeout: Optional[float] = None) -> dict:
        """The model's signatures: {"model_spec": ..., "signatures": {key: {"inputs", "outputs", "method_name"}}}."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label, None)
        response = self._call(self._predictions.GetModelMetadata, request, model, "GetModelMetadata", timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" in response.metadata and not response.metadata["signature_def"].Unpack(signatures):
            raise ServingError("UNKNOWN", "metadata 'signature_def' is a %s, not a SignatureDefMap"
                               % response.metadata["signature_def"].TypeName(), model, "GetModelMetadata")
        return metadata_summary(response.model_spec, signatures)

    def status(self, model: str, version: Optional[int] = None, label: Optional[str] = None,
               timeout: Optional[float] = None) -> list[dict]:
        """[{"version": int, "state": "AVAILABLE", "error": ""}] for the model's versions (or the one asked for)."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label, None)
        return status_summary(self._call(self._models.GetModelStatus, request, model, "GetModelStatus", timeout))

    def wait_until_available(self, model: str, timeout: float = 60.0) -> None:
        """Block until some version of the model is AVAILABLE (ServingError DEADLINE_EXCEEDED after ``timeout``)."""
        wait_available(lambda left: self.status(model, timeout=min(left, self.timeout)), model, timeout,
                       tolerated={UNAVAILABLE, "NOT_FOUND", DEADLINE_EXCEEDED})
