"""Serving benchmark: served latency, throughput and reliability of a search export.

Through the development server (``tfrec serve`` in a child process, loopback gRPC) on whatever
machine runs it:
- batch-1 latency p50/p99 of ``search_retrieval`` alone and of the whole search pipeline
  (retrieve top-100, look up titles, re-rank the 100 with ``search_ranker``), on real valid
  queries, one client, requests back to back;
- QPS and latency of ``search_retrieval`` at batch 1 with 8 and 32 concurrent clients;
- reliability: 32 clients for 30 s while a new version of ``search_retrieval`` is published
  (written to a hidden folder, renamed into place): failed requests, and which version serves after;
- overload: the saturating QPS of ``search_retrieval`` (closed-loop clients), then twice that offered
  open-loop for a bounded time: p99 of the admitted requests against the unloaded p99, how many were
  shed (RESOURCE_EXHAUSTED) or dropped at their deadline, and that every request got an answer.
The server works on a copy of the newest version of each model, so the user's export is untouched.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfrec.config import load_config
from tfrec.data import load_data
from tfrec.serving.loadtest import run_load
from tfrec.serving.process import start_server
from tfrec.serving.service import RANKER_MODEL, RETRIEVAL_MODEL
from tfrec.serving.service import ProductCatalog, SearchService

OVERLOAD_FACTOR = 2.0
# Admission settings the overload scenario runs under (label -> extra `tfrec serve` flags).
OVERLOAD_SETTINGS = {
    "defaults": [],
    "latency_first": ["--max-concurrent-executions", "1", "--max-queued-requests", "1"],
}


def _newest(model_dir: Path) -> Path:
    # lazy: the benchmark driver itself does not load TensorFlow
    from tfrec.serving.savedmodel import version_folders

    versions = sorted(version_folders(model_dir), reverse=True)
    if not versions:
        raise FileNotFoundError("no exported versions under %s: run `make train && make export` first" % model_dir)
    return model_dir / str(versions[0])


def copy_newest(export_dir: Path, dest: Path, models: tuple[str, ...] = (RETRIEVAL_MODEL, RANKER_MODEL)) -> dict[str, int]:
    """Copy the newest version of each model into ``dest`` (same layout); returns {model: version}."""
    versions = {}
    for model in models:
        src = _newest(Path(export_dir) / model)
        shutil.copytree(src, dest / model / src.name)
        versions[model] = int(src.name)
    return versions


def publish_copy(model_dir: Path, version: int, new_version: int) -> Path:
    """Publish a copy of ``version`` as ``new_version`` the way an export does (hidden folder, then rename)."""
    tmp = model_dir / (".%d.tmp-bench" % new_version)
    shutil.copytree(model_dir / str(version), tmp)
    final = model_dir / str(new_version)
    os.replace(tmp, final)
    return final


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def _sequential(call, items: list) -> dict:
    ms = []
    for item in items:
        started = time.perf_counter()
        call(item)
        ms.append((time.perf_counter() - started) * 1000.0)
    return _percentiles(ms)


def open_loop(send: Callable[[int], Any], rate: float, seconds: float, grace: float = 30.0) -> dict:
    """Offer ``rate`` calls per second for ``seconds`` whatever the answers (open loop) and count the outcomes.

    ``send(i)`` starts call ``i`` and returns a gRPC future (``Stub.Method.future``): asynchronous calls
    keep the load generator's own queueing out of the numbers, and a call's latency counts from when
    it was due. Outcomes: "OK" or the gRPC status name. Calls without an outcome ``grace`` s after the
    last was due are reported as ``unanswered``.
    """
    if not rate > 0 or not seconds > 0:
        raise ValueError("rate and seconds must be > 0, got %r and %r" % (rate, seconds))
    total = max(1, int(rate * seconds))
    outcomes: list[tuple[str, float]] = []
    messages: dict[str, str] = {}  # the first message of each error code
    lock = threading.Lock()
    finished = threading.Semaphore(0)

    def record(due: float, future: Any) -> None:
        error = future.exception()
        code = "OK" if error is None else (error.code().name if hasattr(error, "code") else type(error).__name__)
        with lock:
            outcomes.append((code, (time.perf_counter() - due) * 1000.0))
            if error is not None and code not in messages:
                messages[code] = str(error.details() if hasattr(error, "details") else error)[:200]
        finished.release()

    start = time.perf_counter() + 0.05
    late = 0
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.01:
            late += 1  # the generator itself fell behind (reported: the offered rate is then lower)
        send(i).add_done_callback(lambda future, due=due: record(due, future))
    offered_s = time.perf_counter() - start
    stop = time.perf_counter() + grace
    for _ in range(total):
        if not finished.acquire(timeout=max(0.0, stop - time.perf_counter())):
            break
    with lock:
        done = list(outcomes)
    codes: dict[str, int] = {}
    for code, _ in done:
        codes[code] = codes.get(code, 0) + 1
    admitted = [ms for code, ms in done if code == "OK"]
    return {"offered": total, "offered_qps": round(total / max(offered_s, 1e-9), 1), "sent_late": late, "seconds": seconds,
            "answered": len(done), "unanswered": total - len(done), "outcomes": codes, "messages": messages, "admitted": len(admitted),
            "shed": codes.get("RESOURCE_EXHAUSTED", 0), "deadline_exceeded": codes.get("DEADLINE_EXCEEDED", 0),
            **({"admitted_" + k: v for k, v in _percentiles(admitted).items() if k != "n"} if admitted else {})}


def overload(address: str, model: str, inputs: list[dict], unloaded_p99_ms: float, clients: int = 2,
             seconds: float = 15.0, factor: float = OVERLOAD_FACTOR, deadline_s: float = 5.0) -> dict:
    """The saturating QPS of ``model`` (``clients`` closed-loop threads), then ``factor`` times it offered open-loop.

    Keep ``clients`` within what the server admits (running + queued): a closed-loop client that is
    shed asks again at once, and measures the cost of refusals instead of the model's throughput.

    Every call carries a ``deadline_s`` deadline and is not retried: a shed request is an answer to count.
    """
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    # lazy: the benchmark driver itself does not load TensorFlow
    from tfrec.serving.tensors import to_tensor_proto

    requests = []
    for row in inputs:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        for alias, value in row.items():
            request.inputs[alias].CopyFrom(to_tensor_proto(value))
        requests.append(request)
    channel = grpc.insecure_channel(address)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        saturation = run_load(lambda i: stub.Predict(requests[i % len(requests)], timeout=deadline_s),
                              clients=clients, seconds=seconds, warmup_seconds=2.0)
        if not saturation["qps"]:
            raise RuntimeError("no request succeeded while measuring the saturating QPS: %s" % saturation["errors"])
        offered = open_loop(lambda i: stub.Predict.future(requests[i % len(requests)], timeout=deadline_s),
                            rate=factor * saturation["qps"], seconds=seconds)
    finally:
        channel.close()
    return {"saturation": saturation, "factor": factor, "deadline_s": deadline_s, "open_loop": offered,
            "unloaded_p99_ms": unloaded_p99_ms, "every_request_answered": offered["unanswered"] == 0}


def valid_queries(data_config: str, n: int) -> list[str]:
    """The first ``n`` distinct valid queries of the config's dataset."""
    data = load_data(load_config(data_config))
    seen: dict[str, None] = {}
    for query in data.valid.queries:
        seen.setdefault(str(query), None)
        if len(seen) == n:
            break
    return list(seen)


def run(out_dir: Path, data_config: str, export_dir: Path = Path("export"), load_seconds: float = 20.0,
        reliability_seconds: float = 30.0, n_queries: int = 200) -> list[Path]:
    """Measure the served search models of ``export_dir``; write serving.json and serving.md."""
    # lazy: the benchmark driver itself does not load TensorFlow
    from tfrec.serving.grpc_client import GrpcClient

    queries = valid_queries(data_config, n_queries)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-serving-") as tmp:
        served = Path(tmp)
        versions = copy_newest(Path(export_dir), served)
        catalog = ProductCatalog.from_export(served)
        started = time.perf_counter()
        with start_server(served, ["--poll-seconds", "1"]) as server:
            results["server_start_s"] = round(time.perf_counter() - started, 1)
            with GrpcClient(server.grpc_address, timeout=30.0) as client:
                retrieve = lambda q: client.predict(RETRIEVAL_MODEL, {"query": [q]})  # noqa: E731
                for q in queries[:10]:
                    retrieve(q)
                results["retrieval_batch1"] = _sequential(retrieve, queries)
                service = SearchService(client, catalog, candidates=100)
                for q in queries[:5]:
                    service.search(q)
                results["retrieve_and_rank_batch1"] = _sequential(service.search, queries[:100])
                for clients in (8, 32):
                    results["retrieval_load_%d_clients" % clients] = run_load(
                        lambda i: retrieve(queries[i % len(queries)]), clients=clients, seconds=load_seconds, warmup_seconds=2.0)

                model_dir = served / RETRIEVAL_MODEL
                old, new = versions[RETRIEVAL_MODEL], versions[RETRIEVAL_MODEL] + 1
                timer = _publish_later(model_dir, old, new, delay=reliability_seconds / 3)
                load = run_load(lambda i: retrieve(queries[i % len(queries)]), clients=32, seconds=reliability_seconds, warmup_seconds=1.0)
                timer.join()
                status = _wait_for_version(client, RETRIEVAL_MODEL, new, timeout=120.0)
                results["reliability_32_clients_with_new_version"] = {
                    **load, "published_version": new, "previous_version": old,
                    "status_after": status, "new_version_serving": any(s["version"] == new and s["state"] == "AVAILABLE" for s in status),
                    "old_version_unloaded": not any(s["version"] == old and s["state"] == "AVAILABLE" for s in status),
                }
        # Overload, on a fresh server per admission setting: the server's defaults, and a latency-first
        # queue (one request running and one waiting per model).
        results["overload_2x_saturation"] = {}
        for label, flags in OVERLOAD_SETTINGS.items():
            with start_server(served, ["--poll-seconds", "5", *flags]) as server:
                with GrpcClient(server.grpc_address, timeout=30.0) as client:
                    retrieve = lambda q: client.predict(RETRIEVAL_MODEL, {"query": [q]})  # noqa: E731
                    for q in queries[:10]:
                        retrieve(q)
                    unloaded = _sequential(retrieve, queries[:100])
                results["overload_2x_saturation"][label] = {"server_flags": flags, **overload(
                    server.grpc_address, RETRIEVAL_MODEL, [{"query": [q]} for q in queries],
                    unloaded_p99_ms=unloaded["p99_ms"], seconds=load_seconds)}
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "export_dir": str(export_dir), "versions": versions,
            "n_queries": len(queries), "queries": "first %d distinct valid queries of %s" % (len(queries), data_config)}
    json_path = out_dir / "serving.json"
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    md_path = out_dir / "serving.md"
    md_path.write_text(_markdown(meta, results), encoding="utf-8")
    return [json_path, md_path]


def _publish_later(model_dir: Path, old: int, new: int, delay: float):
    import threading

    thread = threading.Thread(target=lambda: (time.sleep(delay), publish_copy(model_dir, old, new)), name="publish", daemon=True)
    thread.start()
    return thread


def _wait_for_version(client, model: str, version: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        status = client.status(model)
        done = any(s["version"] == version and s["state"] == "AVAILABLE" for s in status)
        if done or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _markdown(meta: dict, r: dict) -> str:
    rows = [
        ("search_retrieval, batch 1, 1 client", r["retrieval_batch1"], None),
        ("retrieve top-100 + re-rank, batch 1, 1 client", r["retrieve_and_rank_batch1"], None),
        ("search_retrieval, batch 1, 8 clients", r["retrieval_load_8_clients"], r["retrieval_load_8_clients"]),
        ("search_retrieval, batch 1, 32 clients", r["retrieval_load_32_clients"], r["retrieval_load_32_clients"]),
        ("32 clients while a new version is published", r["reliability_32_clients_with_new_version"], r["reliability_32_clients_with_new_version"]),
    ]
    lines = [
        "# Serving benchmark", "",
        "%(cpus)s CPUs, Python %(python)s, %(when)s; development server (`tfrec serve`, a child process) over loopback gRPC; "
        "%(queries)s." % meta, "",
        "| what | requests | failed | QPS | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, lat, load in rows:
        n = lat.get("n", lat.get("requests"))
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            label, n, load["failures"] if load else 0, load["qps"] if load else "-", lat["p50_ms"], lat["p99_ms"]))
    rel = r["reliability_32_clients_with_new_version"]
    lines += [
        "", "New version %d published under load: %s after the load; version %d %s." % (
            rel["published_version"], "serving" if rel["new_version_serving"] else "NOT serving", rel["previous_version"],
            "unloaded" if rel["old_version_unloaded"] else "still loaded"),
        "Server start (load + warm-up of both models): %.1f s." % r["server_start_s"], "",
    ]
    for label, result in r.get("overload_2x_saturation", {}).items():
        lines += ["Admission `%s` (%s):" % (label, " ".join(result["server_flags"]) or "the server's defaults"), ""]
        lines += overload_markdown(result)
    return "\n".join(lines)


def overload_markdown(o: dict) -> list[str]:
    """Markdown lines for an :func:`overload` result."""
    offered = o["open_loop"]
    return [
        "Overload: %d closed-loop clients saturate at %.1f QPS (p99 %.1f ms); %.0f× that offered open-loop for %.0f s:" % (
            o["saturation"]["clients"], o["saturation"]["qps"], o["saturation"]["p99_ms"], o["factor"], offered["seconds"]), "",
        "| offered | offered QPS | admitted | shed (RESOURCE_EXHAUSTED) | deadline exceeded | other errors | unanswered "
        "| admitted p50 ms | admitted p99 ms | unloaded p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| %d | %.1f | %d | %d | %d | %d | %d | %s | %s | %.1f |" % (
            offered["offered"], offered["offered_qps"], offered["admitted"], offered["shed"], offered["deadline_exceeded"],
            offered["answered"] - offered["admitted"] - offered["shed"] - offered["deadline_exceeded"], offered["unanswered"],
            offered.get("admitted_p50_ms", "-"), offered.get("admitted_p99_ms", "-"), o["unloaded_p99_ms"]), "",
    ]

