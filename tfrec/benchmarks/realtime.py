"""Real-time serving benchmark: result caches on a Zipf replay, one-call search, event -> recommendation, catalog updates.

Everything goes through the development server (``tfrec serve`` in a child process, loopback
gRPC) over a copy of the newest version of each model, and a ``redis-server`` this benchmark
starts on a free loopback port:

- **Zipf replay**: the distinct training queries of the config's data, weighted 1/rank over a
  seeded permutation, replayed by 1, 8 and 32 client threads through ``SearchService`` with the
  cache off, in this process (LRU) and in Redis. A cached run first fills its cache with the
  replay's first requests (batched searches), then measures the requests that follow: the hit
  rate of the measured window is reported beside QPS and latency.
- **One call**: batch-1 latency of the ``search`` model against ``search_retrieval`` alone and
  the two-call pipeline (retrieve, then re-rank), cache off, on valid queries.
- **Event -> recommendation**: while a background thread ingests 1,000 events/s into the event
  store, a probe adds one event for a shopper and asks for that shopper's recommendations: the
  time from the event to the answer that used it.
- **Catalog update** (with ``search_run``): ``tfrec catalog update`` with 1,000 and 10,000 changed
  products, timed from the command's start until the server answers from the new version; and the
  1,000-product update published while 8 clients search, counting failed requests.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec.benchmarks.serving import _percentiles, _wait_for_version, copy_newest, valid_queries
from tfrec.config import load_config
from tfrec.config.schema import OnlineConfig
from tfrec.data import load_data
from tfrec.serving.loadtest import run_load, zipf_replay
from tfrec.serving.process import start_server
from tfrec.serving.service import (RANKER_MODEL, RECOMMENDER_MODEL, RETRIEVAL_MODEL, SEARCH_MODEL, ProductCatalog,
                                   RecommendService, SearchService)

CLIENTS = (1, 8, 32)
CACHE_MODES = ("off", "memory", "redis")
WARM_REQUESTS = 30000  # replay requests that fill a cache before its measured window
WARM_BATCH = 64


def train_queries(data_config: str) -> list[str]:
    """The distinct training queries of the config's data (the replay's vocabulary)."""
    data = load_data(load_config(data_config))
    return sorted({str(q) for q in data.train.queries})


def _fill(service: SearchService, requests: list[str]) -> float:
    """Search ``requests`` in batches (what fills a cache fast); returns the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(requests), WARM_BATCH):
        service.search_many(requests[start:start + WARM_BATCH])
    return time.perf_counter() - started


def zipf_cache(address: str, catalog: ProductCatalog, replay: list[str], redis_url: str, seconds: float,
               warm: int = WARM_REQUESTS, clients_list: tuple[int, ...] = CLIENTS) -> dict:
    """QPS and latency of the Zipf replay with the cache off, in-process and in Redis, for each client count."""
    from tfrec.online.link import RedisLink
    from tfrec.serving.cache import ResultCache
    from tfrec.serving.grpc_client import GrpcClient

    out: dict = {}
    for mode in CACHE_MODES:
        online = OnlineConfig(cache=mode, redis_url=redis_url if mode == "redis" else "", cache_entries=50000, cache_ttl_seconds=3600.0)
        link = RedisLink.from_config(online) if mode == "redis" else None
        if link is not None:
            link.run("flush", lambda c: c.flushdb(), None)
        cache = ResultCache.from_config(online, link=link)
        with GrpcClient(address, timeout=30.0) as client:
            service = SearchService(client, catalog, candidates=100, cache=cache)
            position, runs = 0, {}
            if cache is not None:
                runs["fill_seconds"] = round(_fill(service, replay[:warm]), 1)
                position = warm
            for clients in clients_list:
                before = cache.stats() if cache is not None else None
                start = position
                result = run_load(lambda i: service.search(replay[(start + i) % len(replay)]), clients=clients,
                                  seconds=seconds, warmup_seconds=1.0)
                position += result["requests"] + clients * 4  # past what the warm-up second used too
                if cache is not None:
                    after = cache.stats()
                    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
                    result["hit_rate"] = round(hits / max(1, hits + misses), 4)
                runs["clients_%d" % clients] = result
        if cache is not None:
            runs["cache_stats"] = {k: v for k, v in cache.stats().items() if not isinstance(v, (dict, list))}
        if link is not None:
            link.close()
        out[mode] = runs
    return out


def one_call(address: str, catalog: ProductCatalog, queries: list[str]) -> dict:
    """Batch-1 latency: the one-call ``search`` model, ``search_retrieval`` alone, retrieve + re-rank in two calls."""
    from tfrec.serving.grpc_client import GrpcClient

    with GrpcClient(address, timeout=30.0) as client:
        retrieve = lambda q: client.predict(RETRIEVAL_MODEL, {"query": [q]})  # noqa: E731
        one = SearchService(client, catalog, candidates=100, one_call=True)
        two = SearchService(client, catalog, candidates=100, one_call=False)
        for q in queries[:10]:
            retrieve(q), one.search(q), two.search(q)
        # Interleaved rounds, so drift on a shared machine touches all three alike.
        ms: dict[str, list[float]] = {"search_one_call": [], "search_retrieval": [], "retrieve_then_rerank": []}
        for q in queries:
            for name, call in (("search_one_call", one.search), ("search_retrieval", retrieve), ("retrieve_then_rerank", two.search)):
                started = time.perf_counter()
                call(q)
                ms[name].append((time.perf_counter() - started) * 1000.0)
    return {name: _percentiles(values) for name, values in ms.items()}


def _ingest_forever(store: Any, items: list[str], rate: float, stop: threading.Event, counts: dict) -> None:
    """Add ``rate`` events/s for 10,000 background shoppers until ``stop`` (batches every 50 ms)."""
    rng = np.random.default_rng(0)
    per_tick = max(1, int(rate * 0.05))
    began = time.perf_counter()
    n = 0
    while not stop.is_set():
        now = time.time()
        users = rng.integers(0, 10000, per_tick)
        picks = rng.integers(0, len(items), per_tick)
        store.add_many([("shopper-%d" % u, items[p], now, "view") for u, p in zip(users, picks)])
        n += per_tick
        delay = began + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    counts["events"] = n
    counts["seconds"] = time.perf_counter() - began


def event_to_recommendation(address: str, catalog: ProductCatalog, redis_url: str, rate: float = 1000.0, probes: int = 200) -> dict:
    """p50/p99 from an event to the recommendation that used it, while ``rate`` events/s are ingested."""
    from tfrec.online.events import EventStore
    from tfrec.online.link import RedisLink
    from tfrec.serving.grpc_client import GrpcClient

    link = RedisLink(redis_url, "bench-events", timeout_ms=200)
    link.run("flush", lambda c: c.flushdb(), None)
    store = EventStore(link, history_length=50)
    items = list(catalog.ids())
    rng = np.random.default_rng(1)
    stop, counts = threading.Event(), {}
    ms, changed, seen = [], 0, 0
    with GrpcClient(address, timeout=30.0) as client:
        service = RecommendService(client, catalog, events=store)
        ingest = threading.Thread(target=_ingest_forever, args=(store, items, rate, stop, counts), name="ingest", daemon=True)
        ingest.start()
        try:
            time.sleep(2.0)
            for p in range(probes):
                user = "probe-%d" % p
                start_items = [items[i] for i in rng.integers(0, len(items), 3)]
                t0 = time.time() - 60
                for j, item in enumerate(start_items):
                    store.add(user, item, t0 + j, "view")
                before = [h.item_id for h in service.recommend(user_id=user, k=10)]
                new_item = items[int(rng.integers(0, len(items)))]
                started = time.perf_counter()
                store.add(user, new_item, time.time(), "view")
                after = [h.item_id for h in service.recommend(user_id=user, k=10)]
                ms.append((time.perf_counter() - started) * 1000.0)
                changed += after != before
                seen += (store.history(user) or [None])[-1] == new_item
        finally:
            stop.set()
            ingest.join(10)
    link.close()
    achieved = counts.get("events", 0) / max(counts.get("seconds", 1e-9), 1e-9)
    return {"ingest_rate_target": rate, "ingest_rate_achieved": round(achieved, 1), "probes": probes,
            "event_to_recommendation": _percentiles(ms), "recommendation_changed": changed, "event_in_history": seen}


def write_changes(path: Path, ids: list[str], titles: list[str], n: int, seed: int = 0) -> dict:
    """A change file of ``n`` products: 60 % adds (real titles with a new model number), 30 % changes, 10 % removes."""
    rng = np.random.default_rng(seed)
    n_add, n_change = int(n * 0.6), int(n * 0.3)
    n_remove = n - n_add - n_change
    existing = rng.permutation(len(ids))[: n_change + n_remove]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["action", "product_id", "title"])
        for i in range(n_add):
            source = titles[int(rng.integers(0, len(titles)))]
            writer.writerow(["add", "new-%d-%d" % (seed, i), "%s model zq%05d" % (source, i)])
        for r in existing[:n_change]:
            writer.writerow(["change", ids[r], "%s, 2-pack" % titles[r]])
        for r in existing[n_change:]:
            writer.writerow(["remove", ids[r], ""])
    return {"add": n_add, "change": n_change, "remove": n_remove}


def _update(run_dir: Path, export_dir: Path, changes: Path) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tfrec", "catalog", "update", "--run", str(run_dir), "--export-dir", str(export_dir),
                           "--changes", str(changes)], capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr)[-2000:], time.perf_counter() - started


def catalog_updates(run_dir: Path, served: Path, address: str, catalog: ProductCatalog, queries: list[str],
                    sizes: tuple[int, ...] = (1000, 10000), under_load: tuple[int, ...] = (1000,)) -> dict:
    """Time from `tfrec catalog update` to serving for each size; those in ``under_load`` while 8 clients search."""
    from tfrec.serving.grpc_client import GrpcClient
    from tfrec.serving.savedmodel import version_folders

    out: dict = {}
    with GrpcClient(address, timeout=30.0) as client:
        service = SearchService(client, catalog, candidates=100)
        for n in sizes:
            loaded = n in under_load
            current = ProductCatalog.from_export(served)  # what the previous update left: changes apply to it
            ids = current.ids()
            titles = [current.title(i) for i in ids]
            changes = served.parent / ("changes_%d.csv" % n)
            counts = write_changes(changes, ids, titles, n, seed=n)
            version = max(version_folders(served / RETRIEVAL_MODEL)) + 1
            load: dict = {}
            stop = threading.Event()
            if loaded:
                def searching() -> None:
                    load.update(run_load(lambda i: service.search(queries[i % len(queries)]),
                                         clients=8, seconds=600.0, warmup_seconds=0.0, join_timeout=30.0, stop=stop))
                thread = threading.Thread(target=searching, name="search-load", daemon=True)
                thread.start()
            started = time.perf_counter()
            rc, output, command_s = _update(run_dir, served, changes)
            status = _wait_for_version(client, RETRIEVAL_MODEL, version, timeout=300.0) if rc == 0 else []
            serving_s = time.perf_counter() - started
            if loaded:
                time.sleep(3.0)
                stop.set()
                thread.join(60)
            entry = {"changes": counts, "returncode": rc, "command_s": round(command_s, 1), "to_serving_s": round(serving_s, 1),
                     "new_version": version,
                     "serving": any(s["version"] == version and s["state"] == "AVAILABLE" for s in status)}
            if rc != 0:
                entry["output"] = output
            if loaded:
                entry["load_8_clients"] = load
            out[str(n)] = entry
    return out


def run(out_dir: Path, data_config: str, export_dir: Path = Path("export"), search_run: Optional[Path] = None,
        seconds: float = 20.0, n_queries: int = 200) -> list[Path]:
    """Measure the real-time paths over ``export_dir`` (and ``search_run`` for catalog updates); write serving_realtime.*"""
    from tfrec.online.server import RedisServer
    from tfrec.serving.savedmodel import version_folders

    export_dir = Path(export_dir)
    queries = valid_queries(data_config, n_queries)
    replay = zipf_replay(train_queries(data_config), WARM_REQUESTS + 200000, s=1.0, seed=0)
    results: dict = {}
    skipped: dict[str, str] = {}
    search_models = tuple(m for m in (SEARCH_MODEL, RETRIEVAL_MODEL, RANKER_MODEL) if version_folders(export_dir / m))
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-realtime-") as tmp, RedisServer(maxmemory_mb=512) as redis_server:
        served = Path(tmp) / "export"
        versions = copy_newest(export_dir, served, search_models)
        catalog = ProductCatalog.from_export(served)
        with start_server(served, ["--poll-seconds", "1"]) as server:
            results["zipf_replay"] = zipf_cache(server.grpc_address, catalog, replay, redis_server.url, seconds)
            if SEARCH_MODEL in search_models:
                results["one_call"] = one_call(server.grpc_address, catalog, queries)
            else:
                skipped["one_call"] = "the export has no %s model (export the run again)" % SEARCH_MODEL
            if search_run is not None:
                results["catalog_update"] = catalog_updates(Path(search_run), served, server.grpc_address, catalog, queries)
            else:
                skipped["catalog_update"] = "no search run given (--search-run RUN)"
        if version_folders(export_dir / RECOMMENDER_MODEL):
            rec = Path(tmp) / "export_rec"
            versions.update(copy_newest(export_dir, rec, (RECOMMENDER_MODEL,)))
            rec_catalog = ProductCatalog.from_export(rec, model=RECOMMENDER_MODEL)
            with start_server(rec, ["--poll-seconds", "5"]) as server:
                results["event_to_recommendation"] = event_to_recommendation(server.grpc_address, rec_catalog, redis_server.url)
        else:
            skipped["event_to_recommendation"] = "the export has no %s model" % RECOMMENDER_MODEL
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "export_dir": str(export_dir), "versions": versions,
            "search_run": str(search_run) if search_run else None, "replay": "Zipf s=1.0 over %s's distinct training queries, seed 0"
            % data_config, "warm_requests": WARM_REQUESTS, "seconds_per_load": seconds, "skipped": skipped}
    json_path = out_dir / "serving_realtime.json"
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    md_path = out_dir / "serving_realtime.md"
    md_path.write_text(markdown(meta, results), encoding="utf-8")
    return [json_path, md_path]


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown(meta: dict, r: dict) -> str:
    """The results as tables a person reads."""
    lines = ["# Real-time serving benchmark", "",
             "%s CPUs, Python %s, %s; development server (`tfrec serve`, a child process) over loopback gRPC; "
             "redis-server on loopback. Replay: %s; a cached run first fills its cache with %d replay requests."
             % (meta["cpus"], meta["python"], meta["when"], meta["replay"], meta["warm_requests"]), ""]
    if "zipf_replay" in r:
        lines += ["## Zipf replay through SearchService", "",
                  "| cache | clients | requests | failed | QPS | p50 ms | p99 ms | hit rate |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for mode, runs in r["zipf_replay"].items():
            for key, res in runs.items():
                if key.startswith("clients_"):
                    lines.append("| %s | %d | %d | %d | %s | %s | %s | %s |" % (
                        mode, res["clients"], res["requests"], res["failures"], res["qps"], _cell(res["p50_ms"]),
                        _cell(res["p99_ms"]), _cell(res.get("hit_rate"))))
        lines.append("")
    if "one_call" in r:
        lines += ["## One-call search, batch 1, cache off", "", "| model | requests | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: |"]
        for name, res in r["one_call"].items():
            lines.append("| %s | %d | %s | %s |" % (name, res["n"], res["p50_ms"], res["p99_ms"]))
        lines.append("")
    if "event_to_recommendation" in r:
        e = r["event_to_recommendation"]
        lines += ["## Event to recommendation", "",
                  "While %.0f events/s were ingested (%.0f achieved), %d test shoppers each added one event and asked for "
                  "recommendations: p50 %s ms, p99 %s ms from the event to the answer; the event was the newest in the "
                  "history read in %d of %d, and the list changed in %d of %d."
                  % (e["ingest_rate_target"], e["ingest_rate_achieved"], e["probes"], e["event_to_recommendation"]["p50_ms"],
                     e["event_to_recommendation"]["p99_ms"], e["event_in_history"], e["probes"], e["recommendation_changed"], e["probes"]), ""]
    if "catalog_update" in r:
        lines += ["## Catalog update", "", "| products changed | add / change / remove | exit | command s | to serving s | under load: requests | failed |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for n, e in r["catalog_update"].items():
            load = e.get("load_8_clients") or {}
            lines.append("| %s | %d / %d / %d | %d | %s | %s | %s | %s |" % (
                n, e["changes"]["add"], e["changes"]["change"], e["changes"]["remove"], e["returncode"], e["command_s"],
                e["to_serving_s"], _cell(load.get("requests")), _cell(load.get("failures"))))
        lines.append("")
    for name, why in meta["skipped"].items():
        lines.append("Skipped %s: %s." % (name, why))
    return "\n".join(lines) + "\n"
