"""A development model server for machines without TF Serving: gRPC + REST over the same export folders.

It is explicitly a stand-in for ``tensorflow_model_server`` during development: the gRPC
PredictionService / ModelService and the REST API speak TF Serving's official protos and JSON, load
the same ``<model>/<version>/`` folders (or a ``models.config``), poll for new versions and swap them
without a gap (load and warm up the new version, then unload the old; a failing version never
takes down the one serving). It binds 127.0.0.1 by default and bounds request size, batch size,
string length and the strings of a request after decoding; malformed requests get INVALID_ARGUMENT
naming the problem, and nothing a request does stops the server. Overload is shed: each model runs
a few requests at a time and queues a bounded number more (see :mod:`tfrec.serving.admission`);
beyond that requests get RESOURCE_EXHAUSTED at once, and a request whose deadline passed before it
could run gets DEADLINE_EXCEEDED without running.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tfrec.serving.admission import Admission
from tfrec.serving.models import Limits, ModelManager, RequestError
from tfrec.serving.rest import RestServer
from tfrec.serving.unexpected import UnexpectedErrors

log = logging.getLogger(__name__)


def host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _answer(context: Any, handler: Callable[[Any], Any], request: Any, errors: UnexpectedErrors) -> Any:
    """Run a handler; RequestErrors become their gRPC status, anything else INTERNAL (the server stays up)."""
    import grpc

    try:
        return handler(request)
    except RequestError as exc:
        context.abort(grpc.StatusCode[exc.code], exc.message)
    except Exception as exc:  # a bug or a model failure must not take the server down
        errors.report(exc, "gRPC %s" % type(request).__name__)
        context.abort(grpc.StatusCode.INTERNAL, "internal error: %s: %s" % (type(exc).__name__, exc))


def _deadline(context: Any) -> Optional[float]:
    """The call's deadline as a time.monotonic() value (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _unimplemented(context: Any, what: str) -> None:
    import grpc

    context.abort(grpc.StatusCode.UNIMPLEMENTED, "%s is not implemented by the tfrec development server" % what)


def _servicers(manager: ModelManager, admission: Admission, errors: UnexpectedErrors) -> tuple[Any, Any]:
    """The PredictionService and ModelService implementations over a manager (model runs admitted by ``admission``)."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            gate = admission.gate(request.model_spec.name, _deadline(context))
            return _answer(context, lambda r: manager.predict(r, gate), request, errors)

        def Regress(self, request, context):
            gate = admission.gate(request.model_spec.name, _deadline(context))
            return _answer(context, lambda r: manager.regress(r, gate), request, errors)

        def GetModelMetadata(self, request, context):
            return _answer(context, manager.metadata, request, errors)

        def Classify(self, request, context):
            _unimplemented(context, "Classify (the exports have no classification signatures)")

        def MultiInference(self, request, context):
            _unimplemented(context, "MultiInference")

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            return _answer(context, manager.model_status, request, errors)

        def HandleReloadConfigRequest(self, request, context):
            _unimplemented(context, "HandleReloadConfigRequest (restart the server with another --model-config-file)")

    return PredictionService(), ModelService()


class DevServer:
    """gRPC + REST development server over a TF Serving export folder (see the module docstring).

    ``grpc_port``/``rest_port`` 0 pick free ports (``grpc_address``/``rest_address`` report them);
    ``rest_port=None`` serves gRPC only. ``models`` restricts serving to those model names.
    ``workers`` gRPC threads are also the most gRPC calls in progress (more get RESOURCE_EXHAUSTED);
    each model runs ``max_concurrent_executions`` requests at a time and queues ``max_queued_requests``
    more; ``rest_workers`` threads serve REST connections, which are closed after
    ``rest_timeout_seconds`` idle or when a request takes longer than that to arrive.
    """

    def __init__(self, export_dir: Optional[Path], host: str = "127.0.0.1", grpc_port: int = 8500,
                 rest_port: Optional[int] = 8501, model_config_file: Optional[Path] = None, poll_seconds: float = 2.0,
                 max_request_bytes: int = 4 << 20, max_batch_size: int = 1024, max_string_bytes: int = 64 << 10,
                 workers: int = 64, models: Optional[Sequence[str]] = None, max_concurrent_executions: int = 4,
                 max_queued_requests: int = 32, rest_workers: int = 32, rest_timeout_seconds: float = 10.0) -> None:
        for name, value in (("grpc_port", grpc_port), ("rest_port", rest_port)):
            if value is not None and not 0 <= int(value) <= 65535:
                raise ValueError("%s must be in [0, 65535], got %r" % (name, value))
        if not poll_seconds > 0:
            raise ValueError("poll_seconds must be > 0, got %r" % poll_seconds)
        if int(max_request_bytes) < 1024:
            raise ValueError("max_request_bytes must be >= 1024, got %r" % max_request_bytes)
        for name, value in (("workers", workers), ("rest_workers", rest_workers),
                            ("max_concurrent_executions", max_concurrent_executions)):
            if int(value) < 1:
                raise ValueError("%s must be >= 1, got %r" % (name, value))
        if int(max_queued_requests) < 0:
            raise ValueError("max_queued_requests must be >= 0, got %r" % max_queued_requests)
        if not 0 < float(rest_timeout_seconds) <= 3600:
            raise ValueError("rest_timeout_seconds must be in (0, 3600], got %r" % rest_timeout_seconds)
        self.host = host
        self.poll_seconds = float(poll_seconds)
        self.max_request_bytes = int(max_request_bytes)
        self.workers = int(workers)
        self.rest_workers = int(rest_workers)
        self.rest_timeout_seconds = float(rest_timeout_seconds)
        self.admission = Admission(int(max_concurrent_executions), int(max_queued_requests))
        self.errors = UnexpectedErrors(log)  # one traceback per kind of unexpected error, for gRPC and REST
        self._ports = (int(grpc_port), None if rest_port is None else int(rest_port))
        self.manager = ModelManager(export_dir, model_config_file, models,
                                    Limits(max_batch_size=int(max_batch_size), max_string_bytes=int(max_string_bytes),
                                           max_elements=max(int(max_request_bytes), int(max_batch_size)),
                                           # decoded strings are bounded like the wire bytes: work, not only traffic
                                           max_total_string_bytes=int(max_request_bytes)))
        self.grpc_address = ""
        self.rest_address = ""
        self._grpc: Any = None
        self._rest: Optional[RestServer] = None
        self._poller: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._first_poll = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 600.0) -> "DevServer":
        """Load every model (waiting up to ``timeout`` s), then open the gRPC and REST ports; returns self."""
        if self._poller is not None:
            raise RuntimeError("this DevServer was already started")
        self._poller = threading.Thread(target=self._poll_loop, name="tfrec-serving-poller", daemon=True)
        self._poller.start()
        try:
            if not self._first_poll.wait(timeout):
                raise TimeoutError("models still loading after %.0f s: %s" % (timeout, self.manager.status()))
            missing = self.manager.missing()
            if missing:
                why = "; ".join("model %s (%s)" % kv for kv in sorted(missing.items()))
                raise RuntimeError("no loadable version for %s" % why)
            if not self.manager.sources():
                raise RuntimeError("no models to serve: expected <model>/<integer version>/saved_model.pb under %s"
                                   % (self.manager.export_dir or "the model config"))
            self._start_grpc()
            if self._ports[1] is not None:
                self._rest = RestServer(self.manager, self.host, self._ports[1], self.max_request_bytes, self.rest_workers,
                                        self.rest_timeout_seconds, self.admission, self.errors).start()
                self.rest_address = host_port(self.host, self._rest.port)
        except BaseException:
            self.stop(grace=0)
            raise
        log.info(self.banner)
        return self

    @property
    def banner(self) -> str:
        """The line ``tfrec serve`` prints once every model is loaded."""
        return "serving: grpc=%s rest=%s" % (self.grpc_address or "-", self.rest_address or "-")

    @property
    def export_dir(self) -> Optional[Path]:
        """The export folder served (None when a model config file names the models)."""
        return self.manager.export_dir

    @property
    def grpc_port(self) -> int:
        """The gRPC port: once started the bound one (a free one when 0 was asked for), before that the one asked for."""
        return int(self.grpc_address.rpartition(":")[2]) if self.grpc_address else self._ports[0]

    @property
    def rest_port(self) -> Optional[int]:
        """The REST port (None: gRPC only): once started the bound one, before that the one asked for."""
        return int(self.rest_address.rpartition(":")[2]) if self.rest_address else self._ports[1]

    @property
    def state(self) -> str:
        """not started, serving or stopped."""
        if self._stopped.is_set():
            return "stopped"
        return "serving" if self._grpc is not None else "not started"

    def __repr__(self) -> str:
        return "DevServer(export_dir=%r, host=%r, grpc_port=%s, rest_port=%s, %s)" % (
            str(self.export_dir) if self.export_dir is not None else None, self.host, self.grpc_port, self.rest_port, self.state)

    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        options = [("grpc.max_receive_message_length", self.max_request_bytes),
                   ("grpc.so_reuseport", 0)]  # a port already taken must fail here, not be shared silently
        # one thread per call in progress: calls beyond that get RESOURCE_EXHAUSTED at once instead of
        # waiting in the executor's unbounded queue, where no deadline is looked at
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tfrec-grpc"),
                             options=options, maximum_concurrent_rpcs=self.workers)
        prediction, model = _servicers(self.manager, self.admission, self.errors)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, server)
        address = host_port(self.host, self._ports[0])
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError("cannot bind the gRPC port %s: %s" % (address, exc)) from exc
        if not port:
            raise OSError("cannot bind the gRPC port %s (in use?)" % address)
        server.start()
        self._grpc = server
        self.grpc_address = host_port(self.host, port)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.manager.poll()
            except Exception:  # keep polling; the next pass may succeed
                log.exception("polling %s failed", self.manager.export_dir)
            self._first_poll.set()
            self._stop.wait(self.poll_seconds)

    def serve_forever(self) -> None:
        """Block until stop() is called or the process gets SIGINT/SIGTERM (then stop)."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._stop.set())
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving (in-flight gRPC calls get ``grace`` seconds), stop polling and release the ports."""
        self._stop.set()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=max(grace, 1.0) + 60.0)  # a load in progress finishes first
        self.manager.close()
        if not self._stopped.is_set():
            self._stopped.set()
            log.info("stopped serving %s", self.grpc_address or self.rest_address or "")

    def status(self) -> dict:
        """{model: {version: {"state": ..., "error": ...}}} ("error" only where a load failed)."""
        return self.manager.status()

    def __enter__(self) -> "DevServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
