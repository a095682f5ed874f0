"""The result cache: LRU and Redis backends, keys by served version, single-flight, counters, and the services over it."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import numpy as np
import pytest
import redis

from serving_toys import (
    TOY_CATALOG, ranker_reference, recommend_reference, retrieval_reference, save_toy_ranker, save_toy_retrieval,
    write_toy_ranker, write_toy_recommenders, write_toy_retrieval,
)
from tfrec.config.schema import OnlineConfig
from tfrec.online.link import RedisLink
from tfrec.serving.cache import (
    ABSENT, UNKNOWN, MemoryBackend, RedisBackend, ResultCache, VersionWatcher, hits_from_rows, hits_to_rows,
    normalize_query,
)
from tfrec.serving.grpc_client import GrpcClient, ServingError
from tfrec.serving.loadtest import zipf_replay
from tfrec.serving.local import LocalClient
from tfrec.serving.publish import ExportSet
from tfrec.serving.server import DevServer
from tfrec.serving.service import Hit, ProductCatalog, RecommendService, SearchService

TITLES = dict(TOY_CATALOG)


def hits(*ids: str, score: float = 1.0) -> list[Hit]:
    return [Hit(r + 1, i, TITLES.get(i, ""), score - r, score - r + 0.5) for r, i in enumerate(ids)]


def write_search_export(folder):
    retrieval = write_toy_retrieval(folder, k=5)
    write_toy_ranker(folder)
    catalog = {"ids": [p for p, _ in TOY_CATALOG], "titles": [t for _, t in TOY_CATALOG]}
    (retrieval / "assets.extra" / "catalog.json").write_text(json.dumps(catalog))
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = write_search_export(tmp_path_factory.mktemp("export"))
    write_toy_recommenders(folder, k=3)
    return folder


class CountingClient:
    """A real client that also records each predict_batched call (model, first input's rows)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def predict_batched(self, model, inputs, **kw):
        self.calls.append((model, [list(x) if isinstance(x, (list, np.ndarray)) else x for x in next(iter(inputs.values()))]))
        return self.inner.predict_batched(model, inputs, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# -- keys ---------------------------------------------------------------------------------------------------------


def test_queries_are_normalized_before_keying():
    assert normalize_query(" LED  Bulbs") == normalize_query("led bulbs") == "led bulbs"
    assert normalize_query("ＬＥＤ\tbulbs\n") == "led bulbs"  # NFKC: full-width letters; tabs and newlines are spaces
    assert normalize_query("STRASSE") == normalize_query("Straße")  # casefold, not lower
    assert normalize_query("½ inch") == "1⁄2 inch"


def test_keys_carry_kind_and_versions_and_hash_long_requests():
    one = ResultCache.key("search", "search_retrieval@1", ("led bulbs", 10, 100, True))
    two = ResultCache.key("search", "search_retrieval@2", ("led bulbs", 10, 100, True))
    assert one != two and one.startswith("search:search_retrieval@1:") and two.startswith("search:search_retrieval@2:")
    assert one != ResultCache.key("search", "search_retrieval@1", ("led bulbs", 5, 100, True))
    assert one != ResultCache.key("search", "search_retrieval@1", ("led bulbs", 10, 100, False))
    assert one != ResultCache.key("recommend", "search_retrieval@1", ("led bulbs", 10, 100, True))
    long = ResultCache.key("search", "m@1", ("paint " * 5000, 10))
    assert len(long) == len("search:m@1:") + 32


def test_hits_round_trip_through_rows():
    original = hits("100001", "100002")
    rows = hits_to_rows(original)
    assert json.loads(json.dumps(rows)) == [list(r) for r in rows]
    assert hits_from_rows(json.loads(json.dumps(rows))) == original


# -- the in-process LRU --------------------------------------------------------------------------------------------


def test_memory_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = ResultCache(MemoryBackend(entries=2))
    cache.put("a", hits("100001"))
    cache.put("b", hits("100002"))
    assert cache.get("a") == hits("100001")  # a is now the most recently used
    cache.put("c", hits("100003"))
    assert cache.get("b") is None
    assert cache.get("a") == hits("100001") and cache.get("c") == hits("100003")
    cache.put("d", hits("100004"))  # c was read after a: a goes
    assert cache.get("a") is None and cache.get("c") is not None
    s = cache.stats()
    assert (s["evictions"], s["entries"], s["hits"], s["misses"]) == (2, 2, 4, 2)


def test_memory_entries_expire_after_the_ttl():
    cache = ResultCache(MemoryBackend(entries=10), ttl_seconds=0.05)
    cache.put("a", hits("100001"))
    assert cache.get("a") == hits("100001")
    time.sleep(0.1)
    assert cache.get("a") is None
    calls = []
    assert cache.get_or_compute("a", lambda: calls.append(1) or hits("100002")) == hits("100002")
    assert calls == [1] and cache.stats()["expired"] == 1


def test_hits_returned_are_copies():
    cache = ResultCache()
    cache.put("a", hits("100001"))
    got = cache.get("a")
    got[0].title = "changed"
    assert cache.get("a")[0].title == TITLES["100001"]


# -- single flight -------------------------------------------------------------------------------------------------


def run_threads(n, target):
    barrier = threading.Barrier(n)
    results, errors = [None] * n, [None] * n

    def work(slot):
        barrier.wait()
        try:
            results[slot] = target()
        except Exception as exc:
            errors[slot] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def test_concurrent_misses_of_one_key_compute_once():
    cache = ResultCache()
    calls = []

    def slow():
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return hits("100003", "100006")

    results, errors = run_threads(8, lambda: cache.get_or_compute("led", slow))
    assert errors == [None] * 8 and len(calls) == 1
    assert all(r == hits("100003", "100006") for r in results)
    assert len({id(r) for r in results}) == 8  # each caller gets its own list
    s = cache.stats()
    assert s["computed"] == 1 and s["hits"] + s["misses"] == 8 and s["coalesced"] == s["misses"] - 1
    assert s["misses"] >= 2  # (a thread scheduled after the computation ended would find it cached: a hit)
    assert cache.get_or_compute("led", slow) == hits("100003", "100006") and len(calls) == 1


def test_a_failed_computation_reaches_every_waiter_and_caches_nothing():
    cache = ResultCache()
    calls = []

    def failing():
        calls.append(1)
        time.sleep(0.3)
        raise RuntimeError("model server said no")

    results, errors = run_threads(6, lambda: cache.get_or_compute("led", failing))
    assert len(calls) == 1 and results == [None] * 6
    assert all(isinstance(e, RuntimeError) and str(e) == "model server said no" for e in errors)
    assert cache.get("led") is None and cache.stats()["compute_errors"] == 1
    assert cache.get_or_compute("led", lambda: hits("100003")) == hits("100003")  # the next request computes again


def test_batches_compute_only_misses_in_one_call_and_repeated_keys_once():
    cache = ResultCache()
    cache.put("b", hits("100002"))
    asked = []

    def compute(todo):
        asked.append(list(todo))
        return [hits("10000%d" % (i + 1)) for i in todo]

    out = cache.get_or_compute_many(["a", "b", "a", None, "c"], compute)
    assert asked == [[0, 3, 4]]  # a once, the unkeyed request, c; b from the cache
    assert out == [hits("100001"), hits("100002"), hits("100001"), hits("100004"), hits("100005")]
    s = cache.stats()
    assert (s["hits"], s["misses"], s["bypassed"], s["computed"]) == (1, 3, 1, 3)
    assert cache.get("c") == hits("100005") and cache.stats()["entries"] == 3  # the unkeyed result is not stored


def test_compute_must_answer_every_request():
    cache = ResultCache()
    with pytest.raises(ValueError, match="returned 1 results for 2 requests"):
        cache.get_or_compute_many(["a", "b"], lambda todo: [hits("100001")])
    assert cache.get("a") is None


# -- counters ------------------------------------------------------------------------------------------------------


def test_stats_and_prometheus_text():
    cache = ResultCache(MemoryBackend(entries=1))
    cache.get_or_compute("a", lambda: hits("100001"))
    cache.get_or_compute("a", lambda: hits("100001"))
    cache.get_or_compute("b", lambda: hits("100002"))  # evicts a
    s = cache.stats()
    assert (s["backend"], s["hits"], s["misses"], s["computed"], s["evictions"], s["errors"]) == ("memory", 1, 2, 2, 1, 0)
    assert s["hit_rate"] == round(1 / 3, 4)
    assert s["hit_latency_ms"]["count"] == 1 and s["miss_latency_ms"]["count"] == 2
    assert 0 <= s["hit_latency_ms"]["p50"] <= s["hit_latency_ms"]["p99"] < 1000
    text = cache.prometheus_text()
    lines = text.splitlines()
    assert 'tfrec_cache_hits_total{backend="memory"} 1' in lines
    assert 'tfrec_cache_misses_total{backend="memory"} 2' in lines
    assert 'tfrec_cache_evictions_total{backend="memory"} 1' in lines
    assert 'tfrec_cache_errors_total{backend="memory"} 0' in lines
    assert "# TYPE tfrec_cache_hits_total counter" in lines and "# TYPE tfrec_cache_latency_seconds summary" in lines
    assert 'tfrec_cache_latency_seconds_count{backend="memory",outcome="miss"} 2' in lines
    assert any(line.startswith('tfrec_cache_latency_seconds{backend="memory",outcome="hit",quantile="0.99"} ') for line in lines)
    assert all(line.startswith(("# HELP tfrec_cache_", "# TYPE tfrec_cache_", "tfrec_cache_")) for line in lines)
    empty = ResultCache().prometheus_text()
    assert 'tfrec_cache_latency_seconds{backend="memory",outcome="hit",quantile="0.5"} NaN' in empty.splitlines()


def test_from_config(redis_url):
    assert ResultCache.from_config(OnlineConfig(cache="off")) is None
    memory = ResultCache.from_config(OnlineConfig(cache="memory", cache_entries=7, cache_ttl_seconds=12.0))
    assert isinstance(memory.backend, MemoryBackend) and memory.backend.entries == 7 and memory.ttl_seconds == 12.0
    shared = ResultCache.from_config(OnlineConfig(cache="redis", redis_url=redis_url, namespace="shop1"))
    assert isinstance(shared.backend, RedisBackend) and shared.backend.link.namespace == "shop1"
    link = RedisLink(redis_url, "shop2")
    assert ResultCache.from_config(OnlineConfig(cache="redis"), link=link).backend.link is link
    with pytest.raises(ValueError, match="redis_url"):
        ResultCache.from_config(OnlineConfig(cache="redis"))


# -- Redis ---------------------------------------------------------------------------------------------------------


def test_redis_cache_is_shared_by_replicas_with_a_ttl(redis_url):
    replica1 = ResultCache(RedisBackend(RedisLink(redis_url, "shop")), ttl_seconds=30)
    replica2 = ResultCache(RedisBackend(RedisLink(redis_url, "shop")), ttl_seconds=30)
    calls = []
    first = replica1.get_or_compute("search:m@1:abc", lambda: calls.append(1) or hits("100001", "100002"))
    second = replica2.get_or_compute("search:m@1:abc", lambda: calls.append(2) or hits("100009"))
    assert first == second == hits("100001", "100002") and calls == [1]
    raw = redis.Redis.from_url(redis_url)
    assert raw.keys("*") == [b"shop:cache:search:m@1:abc"]
    assert 29000 < raw.pttl("shop:cache:search:m@1:abc") <= 30000
    assert json.loads(raw.get("shop:cache:search:m@1:abc"))[0] == [1, "100001", TITLES["100001"], 1.0, 1.5]
    assert replica2.stats()["hits"] == 1 and replica1.stats()["misses"] == 1
    short = ResultCache(RedisBackend(RedisLink(redis_url, "shop")), ttl_seconds=0.05)
    short.put("k", hits("100001"))
    assert short.get("k") == hits("100001")
    time.sleep(0.2)
    assert short.get("k") is None
    raw.close()


def test_redis_batches_use_one_lookup_and_one_store(redis_url):
    link = RedisLink(redis_url, "shop")
    cache = ResultCache(RedisBackend(link))
    cache.put("b", hits("100002"))
    before = link.stats()["calls"]
    out = cache.get_or_compute_many(["a", "b", "c"], lambda todo: [hits("100001"), hits("100003")])
    assert out == [hits("100001"), hits("100002"), hits("100003")]
    assert link.stats()["calls"] - before == 2  # MGET, then one pipelined SET PX


def test_redis_down_answers_as_misses_without_raising(redis_server, redis_url):
    link = RedisLink(redis_url, "shop", retry_seconds=0.0)
    cache = ResultCache(RedisBackend(link))
    cache.put("a", hits("100001"))
    redis_server.stop()
    try:
        calls = []
        for _ in range(3):
            assert cache.get_or_compute("a", lambda: calls.append(1) or hits("100005")) == hits("100005")
        assert len(calls) == 3
        s = cache.stats()
        assert s["errors"] == 6 and s["misses"] == 3 and s["hits"] == 0  # each request: a failed lookup and store
        assert link.stats()["failures"] == 6
    finally:
        redis_server.start()
    assert cache.get("a") is None  # the restarted server kept nothing (no persistence): a miss, not an error
    cache.put("b", hits("100002"))
    assert cache.get("b") == hits("100002") and cache.stats()["errors"] == 6


def test_slow_redis_is_a_miss(redis_url):
    link = RedisLink(redis_url, "shop", timeout_ms=50, retry_seconds=0.0)
    cache = ResultCache(RedisBackend(link))
    cache.put("a", hits("100001"))
    other = redis.Redis.from_url(redis_url)
    other.execute_command("CLIENT", "PAUSE", "400", "ALL")  # every client's next command waits 0.4 s
    start = time.perf_counter()
    assert cache.get("a") is None
    assert time.perf_counter() - start < 0.3
    assert cache.stats()["errors"] == 1 and "Timeout" in link.stats()["last_error"]
    time.sleep(0.5)
    assert cache.get("a") == hits("100001")
    other.close()


def test_unreadable_redis_entries_are_misses(redis_url):
    cache = ResultCache(RedisBackend(RedisLink(redis_url, "shop")))
    raw = redis.Redis.from_url(redis_url)
    raw.set("shop:cache:a", b"{not json")
    raw.set("shop:cache:b", json.dumps([[1, "x"]]))
    assert cache.get_or_compute_many(["a", "b"], lambda todo: [hits("100001"), hits("100002")]) == [hits("100001"), hits("100002")]
    assert cache.stats()["errors"] == 2
    assert cache.get("a") == hits("100001")  # overwritten by the computed result
    raw.close()


# -- served versions -----------------------------------------------------------------------------------------------


class StatusClient:
    """A client answering status() like GrpcClient, slowly, from a version table the test changes."""

    def __init__(self, versions, delay=0.0):
        self.versions_served, self.delay, self.asked = dict(versions), delay, Counter()

    def status(self, model, timeout=None, label=None):
        self.asked[model] += 1
        time.sleep(self.delay)
        if model not in self.versions_served:
            raise ServingError("NOT_FOUND", "model %r is not served here" % model, model, "GetModelStatus")
        if self.versions_served[model] is None:
            raise ServingError("UNAVAILABLE", "connection refused", model, "GetModelStatus")
        return [{"version": 1, "state": "END", "error": ""},
                {"version": self.versions_served[model], "state": "AVAILABLE", "error": ""}]


def test_version_watcher_asks_at_most_every_refresh_and_one_caller_at_a_time():
    client = StatusClient({"search_retrieval": 2}, delay=0.3)
    now = [100.0]
    watcher = VersionWatcher(client, ["search_retrieval"], refresh_seconds=0.5, clock=lambda: now[0])
    waits = []

    def ask():
        start = time.perf_counter()
        version = watcher.versions()["search_retrieval"]
        waits.append(time.perf_counter() - start)
        return version

    versions, errors = run_threads(6, ask)
    assert errors == [None] * 6 and client.asked["search_retrieval"] == 1
    assert versions.count("2") == 1 and versions.count(UNKNOWN) == 5  # nobody else waited for the first answer
    assert sorted(waits)[-2] < 0.2
    assert watcher.versions()["search_retrieval"] == "2" and client.asked["search_retrieval"] == 1
    client.versions_served["search_retrieval"] = 3
    now[0] += 0.4
    assert watcher.tag() == "search_retrieval@2"  # within refresh_seconds of the last answer: that answer
    now[0] += 0.1
    assert watcher.tag() == "search_retrieval@3" and client.asked["search_retrieval"] == 2


def test_version_watcher_unknown_and_absent_models():
    client = StatusClient({"search_retrieval": 4, "search_ranker": None})
    watcher = VersionWatcher(client, ["search_retrieval", "search_ranker", "search"], refresh_seconds=60)
    assert watcher.versions() == {"search_retrieval": "4", "search_ranker": UNKNOWN, "search": ABSENT}
    assert watcher.tag() is None and watcher.tag(["search_retrieval", "search"]) == "search_retrieval@4,search@none"
    assert "UNAVAILABLE" in watcher.last_error
    assert VersionWatcher(object(), ["m"]).versions() == {"m": UNKNOWN}

    class OnDisk:
        def versions(self, model):
            return [3, 1, 2]

    assert VersionWatcher(OnDisk(), ["m"]).tag() == "m@3"
    assert VersionWatcher(OnDisk(), ["m"], label="stable").tag() is None  # only a server knows its labels


def test_version_watcher_reports_what_a_local_client_serves(tmp_path):
    write_toy_retrieval(tmp_path, k=3)
    with LocalClient(tmp_path) as client:
        watcher = VersionWatcher(client, ["search_retrieval", "search_ranker"], refresh_seconds=0)
        assert watcher.versions() == {"search_retrieval": "1", "search_ranker": ABSENT}
        write_toy_retrieval(tmp_path, k=3, bias=1.0)  # version 2 on disk; this client keeps serving version 1
        assert client.versions("search_retrieval") == [1, 2]
        assert watcher.versions()["search_retrieval"] == "1"


# -- the services --------------------------------------------------------------------------------------------------


def test_search_service_caches_each_query_and_batches_the_misses(export):
    catalog = ProductCatalog.from_export(export)
    with LocalClient(export) as local:
        client = CountingClient(local)
        plain = SearchService(local, catalog, candidates=4)
        cache = ResultCache()
        service = SearchService(client, catalog, candidates=4, cache=cache)
        queries = ["White Paint", "  white   paint ", "drill", "led ceiling light"]
        first = service.search_many(queries, k=3)
        assert [m for m, _ in client.calls] == ["search_retrieval", "search_ranker"]
        assert client.calls[0][1] == ["white paint", "drill", "led ceiling light"]  # normalized, each once
        assert first == plain.search_many(queries, k=3)
        assert first[0] == first[1]
        client.calls.clear()
        second = service.search_many(["drill", "garden hose", "WHITE PAINT"], k=3)
        assert client.calls[0] == ("search_retrieval", ["garden hose"])
        assert second == [first[2], plain.search("garden hose", 3), first[0]]
        client.calls.clear()
        assert service.search("LED Ceiling Light", 3) == first[3] and client.calls == []
        assert service.search("LED Ceiling Light", 2) == first[3][:2] and len(client.calls) == 2  # k is in the key
        s = cache.stats()
        assert (s["hits"], s["misses"], s["computed"]) == (3, 6, 5)
        with pytest.raises(ValueError, match="k must be >= 1"):
            service.search_many(["drill"], k=0)
        with pytest.raises(TypeError):
            service.search_many("drill")
    ids, _ = retrieval_reference(["white paint"], 5)
    want = sorted(((p, ranker_reference("white paint", p, TITLES[p])) for p in ids[0][:4]), key=lambda x: -x[1])[:3]
    assert [h.item_id for h in first[0]] == [p for p, _ in want]


def test_search_options_that_change_results_are_in_the_key(export):
    catalog = ProductCatalog.from_export(export)
    cache = ResultCache()
    with LocalClient(export) as client:
        reranked = SearchService(client, catalog, candidates=4, cache=cache).search("white paint", 3)
        retrieval = SearchService(client, catalog, candidates=4, rerank=False, cache=cache).search("white paint", 3)
        fewer = SearchService(client, catalog, candidates=2, cache=cache).search("white paint", 3)
    ids, scores = retrieval_reference(["white paint"], 5)
    assert [h.item_id for h in retrieval] == list(ids[0][:3])
    assert len(fewer) == 2 and reranked != retrieval
    assert cache.stats()["hits"] == 0 and cache.stats()["entries"] == 3


def test_recommend_service_caches_histories_and_similar_items(export):
    cache = ResultCache()
    with LocalClient(export) as local:
        client = CountingClient(local)
        service = RecommendService(client, cache=cache)
        histories = [["100001"], ["100003", "100006"], ["100001"]]
        first = service.recommend_many(histories, k=3)
        assert client.calls == [("recommender", [["100001", ""], ["100003", "100006"]])]
        for history, got in zip(histories, first):
            ids, scores = recommend_reference(history, 3)
            assert [h.item_id for h in got] == ids
            np.testing.assert_allclose([h.score for h in got], scores, rtol=1e-6)
        assert service.recommend(["100003", "100006"], k=3) == first[1]
        assert service.recommend(["100006", "100003"], k=3) is not None and len(client.calls) == 2  # order is part of a history
        similar = service.similar("100007", k=2)
        assert service.similar("100007", k=2) == similar and len(client.calls) == 3
        assert [h.item_id for h in similar] == recommend_reference(["100007"], 2)[0]
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (2, 5)


def test_a_published_version_is_served_instead_of_the_cached_answers(tmp_path):
    export = write_search_export(tmp_path / "export")
    catalog = ProductCatalog.from_export(export)
    cache = ResultCache(refresh_seconds=0.2)
    with DevServer(export, grpc_port=0, rest_port=None, poll_seconds=0.1) as server, GrpcClient(server.grpc_address) as client:
        service = SearchService(client, catalog, candidates=4, cache=cache)
        first = service.search("white paint", 3)
        assert service.search(" White  Paint", 3) == first and cache.stats()["hits"] == 1
        with ExportSet(export, ["search_retrieval", "search_ranker"]) as published:
            save_toy_retrieval(published, k=5, bias=2.0)
            save_toy_ranker(published, bias=1.0)
        deadline = time.monotonic() + 60
        while not all([v["version"] for v in client.status(m) if v["state"] == "AVAILABLE"] == [2]
                      for m in ("search_retrieval", "search_ranker")):
            assert time.monotonic() < deadline, "the server did not load version 2"
            time.sleep(0.05)
        time.sleep(0.25)  # the watcher's refresh_seconds: how long the old version's answers may still be served
        after = service.search("white paint", 3)
        assert cache.stats()["hits"] == 1 and after != first
        ids, _ = retrieval_reference(["white paint"], 5, bias=2.0)
        want = sorted(((p, ranker_reference("white paint", p, TITLES[p], bias=1.0)) for p in ids[0][:4]), key=lambda x: -x[1])[:3]
        assert [h.item_id for h in after] == [p for p, _ in want]
        np.testing.assert_allclose([h.score for h in after], [s for _, s in want], rtol=1e-5)
        np.testing.assert_allclose([h.score for h in first], [s - 1.0 for _, s in want], rtol=1e-5, atol=1e-6)
        assert service.search("white paint", 3) == after and cache.stats()["hits"] == 2
        assert any(key.startswith("search:search_retrieval@2,search_ranker@2,search@none:") for key in cache.backend._data)


# -- replay --------------------------------------------------------------------------------------------------------


def test_zipf_replay_draws_real_queries_by_rank():
    queries = ["q%d" % i for i in range(50)] + ["q0", "q1"]
    replay = zipf_replay(queries, 20000, s=1.0, seed=3)
    assert len(replay) == 20000 and set(replay) <= set(queries)
    assert replay == zipf_replay(queries, 20000, s=1.0, seed=3)
    assert replay != zipf_replay(queries, 20000, s=1.0, seed=4)
    counts = Counter(replay).most_common()
    harmonic = sum(1 / r for r in range(1, 51))
    assert abs(counts[0][1] / 20000 - 1 / harmonic) < 0.02  # the top query: 1/H(50) of the traffic
    assert abs(counts[1][1] / 20000 - 0.5 / harmonic) < 0.02
    flat = Counter(zipf_replay(queries, 20000, s=0.0)).most_common()
    assert flat[0][1] < 2 * flat[-1][1]
    assert zipf_replay(["a"], 3) == ["a", "a", "a"] and zipf_replay(["a"], 0) == []
    with pytest.raises(ValueError):
        zipf_replay([], 5)
