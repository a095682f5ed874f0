"""Served results cached by model version and normalized request: in this process (LRU) or in Redis (shared).

A key holds the request's kind (search, recommend, similar), the served version of every model
that answers it (``search_retrieval@3,search_ranker@3``) and a blake2b hash of the normalized
request (query NFKC-casefolded with whitespace collapsed, k, and every option that changes the
result). Publishing a new version therefore changes the keys: nothing has to be deleted.

Served versions come from :class:`VersionWatcher`, which asks the client at most every
``refresh_seconds`` (in a caller's thread, never on every request). Staleness bound: for up to
``refresh_seconds`` (plus one status call) after a server swaps versions, requests still use the
old version's keys, so a cached answer of the old version may be served that long; answers
computed in that window by the new version are stored under the old keys, which are never read
once the watcher has seen the swap. A model whose version cannot be told is not cached at all.

Concurrent misses of one key compute once (the others wait for that computation, and share its
exception if it fails). With Redis, a failed or slow call is a miss (counted, never raised).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
import unicodedata
from collections import OrderedDict
from typing import Any, Callable, Mapping, Optional, Sequence

from tfrec.config.schema import OnlineConfig
from tfrec.online.link import RedisLink
from tfrec.serving.service import Hit

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
ABSENT = "none"  # the client does not serve that model (a version of it appearing later changes the keys)
Rows = tuple  # ((rank, item_id, title, score, retrieval_score), ...): an immutable, serializable list of hits
_FAILED = object()


def normalize_query(text: str) -> str:
    """The query as the cache keys it: Unicode NFKC, case-folded, whitespace collapsed and stripped."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def hits_to_rows(hits: Sequence[Hit]) -> Rows:
    """Hits as a tuple of (rank, item_id, title, score, retrieval_score) tuples."""
    return tuple((int(h.rank), str(h.item_id), str(h.title), float(h.score), float(h.retrieval_score)) for h in hits)


def hits_from_rows(rows: Sequence[Sequence[Any]]) -> list[Hit]:
    """Fresh Hit objects from rows (callers may change them without touching the cache)."""
    return [Hit(int(r), str(i), str(t), float(s), float(f)) for r, i, t, s, f in rows]


class MemoryBackend:
    """A bounded LRU of results in this process: at most ``entries``, each dropped ``ttl`` seconds after it was stored."""

    name = "memory"

    def __init__(self, entries: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        if int(entries) < 1:
            raise ValueError("cache entries must be >= 1, got %r" % (entries,))
        self.entries, self.clock = int(entries), clock
        self._data: OrderedDict[str, tuple[float, Rows]] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = self.expired = self.unreadable = 0

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[str]) -> Optional[list[Optional[Rows]]]:
        """The stored rows of each key (None where absent or expired)."""
        now, out = self.clock(), []
        with self._lock:
            for key in keys:
                entry = self._data.get(key)
                if entry is not None and entry[0] <= now:
                    del self._data[key]
                    self.expired += 1
                    entry = None
                if entry is not None:
                    self._data.move_to_end(key)
                out.append(None if entry is None else entry[1])
        return out

    def put_many(self, items: Sequence[tuple[str, Rows]], ttl: float) -> bool:
        """Store each (key, rows); the least recently used entries go when the cache is full."""
        expires = self.clock() + ttl
        with self._lock:
            for key, rows in items:
                self._data[key] = (expires, rows)
                self._data.move_to_end(key)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)
                self.evictions += 1
        return True


class RedisBackend:
    """Results in Redis under ``<namespace>:cache:...`` as compact JSON, expiring by SET PX; shared by every replica."""

    name = "redis"

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.evictions = self.expired = 0  # Redis evicts and expires by itself (maxmemory, PX)
        self.unreadable = 0

    def __len__(self) -> int:
        return 0  # not counted: the entries are shared with other replicas

    def _key(self, key: str) -> str:
        return self.link.key("cache", key)

    def get_many(self, keys: Sequence[str]) -> Optional[list[Optional[Rows]]]:
        """The stored rows of each key (None where absent), or None when Redis failed or was too slow."""
        raw = self.link.run("cache lookup", lambda c: c.mget([self._key(k) for k in keys]), _FAILED)
        if raw is _FAILED:
            return None
        return [None if value is None else self._decode(value) for value in raw]

    def _decode(self, value: bytes) -> Optional[Rows]:
        try:
            rows = tuple(tuple(row) for row in json.loads(value))
            hits_from_rows(rows)  # checks the shape: 5 fields a row
            return rows
        except (ValueError, TypeError):  # written by another tfrec version: a miss, then overwritten
            self.unreadable += 1
            return None

    def put_many(self, items: Sequence[tuple[str, Rows]], ttl: float) -> bool:
        """SET each (key, rows) with a PX expiry in one pipeline; False when Redis failed."""
        px = max(1, int(round(ttl * 1000)))

        def store(client: Any) -> bool:
            pipe = client.pipeline(transaction=False)
            for key, rows in items:
                pipe.set(self._key(key), json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), px=px)
            pipe.execute()
            return True

        return bool(self.link.run("cache store", store, False))


class LatencyReservoir:
    """A uniform sample of at most ``size`` latencies (reservoir sampling), with their count and sum."""

    def __init__(self, size: int = 1024, seed: int = 0) -> None:
        self.size, self.count, self.total = int(size), 0, 0.0
        self.sample: list[float] = []
        self._random = random.Random(seed)

    def add(self, seconds: float) -> None:
        """Count one latency (not thread-safe: the cache calls it under its lock)."""
        self.count += 1
        self.total += seconds
        if len(self.sample) < self.size:
            self.sample.append(seconds)
        else:
            slot = self._random.randrange(self.count)
            if slot < self.size:
                self.sample[slot] = seconds

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) of the sample, NaN when empty."""
        if not self.sample:
            return math.nan
        ordered = sorted(self.sample)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Flight:
    """One computation in progress; threads that miss the same key wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.rows: Optional[Rows] = None
        self.error: Optional[BaseException] = None


class ResultCache:
    """Lists of Hits by key, in a :class:`MemoryBackend` (default) or :class:`RedisBackend`; see the module docstring."""

    def __init__(self, backend: Any = None, ttl_seconds: float = 300.0, refresh_seconds: float = 1.0,
                 reservoir: int = 1024) -> None:
        if not ttl_seconds > 0 or refresh_seconds < 0:
            raise ValueError("ttl_seconds must be > 0 and refresh_seconds >= 0, got %r and %r" % (ttl_seconds, refresh_seconds))
        self.backend = backend if backend is not None else MemoryBackend()
        self.ttl_seconds, self.refresh_seconds = float(ttl_seconds), float(refresh_seconds)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._counts = dict.fromkeys(("hits", "misses", "coalesced", "bypassed", "computed", "compute_errors", "errors"), 0)
        self._latency = {"hit": LatencyReservoir(reservoir, 0), "miss": LatencyReservoir(reservoir, 1)}

    @classmethod
    def from_config(cls, online: OnlineConfig, link: Optional[RedisLink] = None) -> Optional["ResultCache"]:
        """The cache ``online.cache`` names (None for off); redis uses ``link`` or one made from ``online``."""
        if online.cache == "off":
            return None
        if online.cache == "memory":
            return cls(MemoryBackend(online.cache_entries), online.cache_ttl_seconds)
        if online.cache != "redis":
            raise ValueError("online.cache must be off, memory or redis, got %r" % (online.cache,))
        link = link if link is not None else RedisLink.from_config(online)
        if link is None:
            raise ValueError("online.cache: redis needs online.redis_url")
        return cls(RedisBackend(link), online.cache_ttl_seconds)

    @staticmethod
    def key(kind: str, versions: str, request: Sequence[Any]) -> str:
        """``<kind>:<model@version,...>:<blake2b of the request>`` (the request already normalized)."""
        text = json.dumps(list(request), separators=(",", ":"), ensure_ascii=False)
        return "%s:%s:%s" % (kind, versions, hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest())

    def bind(self, client: Any, kinds: Mapping[str, Sequence[str]], label: Optional[str] = None) -> "ServedCache":
        """This cache for one client: ``kinds`` maps each request kind to the models whose versions key it."""
        models = list(dict.fromkeys(m for names in kinds.values() for m in names))
        return ServedCache(self, VersionWatcher(client, models, self.refresh_seconds, label=label), kinds)

    def get(self, key: str) -> Optional[list[Hit]]:
        """The cached hits of ``key`` (None on a miss, counted either way)."""
        start = time.perf_counter()
        rows = self._lookup([key]).get(key)
        self._record(hits=int(rows is not None), misses=int(rows is None), seconds=time.perf_counter() - start,
                     outcome="hit" if rows is not None else "miss", n=1)
        return None if rows is None else hits_from_rows(rows)

    def put(self, key: str, hits: Sequence[Hit]) -> None:
        """Store hits under ``key`` for ttl_seconds."""
        self._store([(key, hits_to_rows(hits))])

    def get_or_compute(self, key: Optional[str], compute: Callable[[], Sequence[Hit]]) -> list[Hit]:
        """The cached hits of ``key``, or ``compute()`` stored under it (None key: computed, never cached)."""
        return self.get_or_compute_many([key], lambda todo: [compute()])[0]

    def get_or_compute_many(self, keys: Sequence[Optional[str]],
                            compute: Callable[[list[int]], Sequence[Sequence[Hit]]]) -> list[list[Hit]]:
        """Hits for each key: cached ones looked up together, the others from one ``compute(positions)`` call.

        ``compute`` gets the positions (into ``keys``) to compute and returns their hits in that order.
        A key repeated, or already being computed by another thread, is computed once.
        """
        start = time.perf_counter()
        results: list[Optional[list[Hit]]] = [None] * len(keys)
        places: dict[str, list[int]] = {}
        direct = [i for i, key in enumerate(keys) if key is None]
        for i, key in enumerate(keys):
            if key is not None:
                places.setdefault(key, []).append(i)
        found = self._lookup(list(places)) if places else {}
        hit_seconds = time.perf_counter() - start
        for key, rows in found.items():
            for i in places[key]:
                results[i] = hits_from_rows(rows)
        lead, follow = self._join([key for key in places if key not in found])
        if lead and isinstance(self.backend, MemoryBackend):
            # A thread that stored a key between our lookup and _join has left no flight: look again (cheap here).
            for key, rows in zip(list(lead), self.backend.get_many(list(lead)) or []):
                if rows is not None:
                    self._land(key, lead.pop(key), rows, None)
                    for i in places[key]:
                        results[i] = hits_from_rows(rows)
        todo = sorted(direct + [places[key][0] for key in lead])
        if todo:
            self._compute(todo, keys, places, lead, results, compute)
        for key, flight in follow.items():
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            for i in places[key]:
                results[i] = hits_from_rows(flight.rows or ())
        n_hits = sum(len(places[key]) for key in found)
        n_cached = sum(len(p) for p in places.values())
        self._record(hits=n_hits, misses=n_cached - n_hits, coalesced=n_cached - n_hits - len(lead),
                     bypassed=len(direct), computed=len(todo), seconds=hit_seconds, outcome="hit", n=n_hits)
        self._record(seconds=time.perf_counter() - start, outcome="miss", n=len(keys) - n_hits)
        return results  # type: ignore[return-value]

    def _compute(self, todo: list[int], keys: Sequence[Optional[str]], places: dict[str, list[int]],
                 lead: dict[str, _Flight], results: list, compute: Callable[[list[int]], Sequence[Sequence[Hit]]]) -> None:
        try:
            computed = list(compute(todo))
            if len(computed) != len(todo):
                raise ValueError("the cache's compute returned %d results for %d requests" % (len(computed), len(todo)))
        except BaseException as exc:  # every waiter must wake, whatever went wrong
            self._record(compute_errors=1)
            for key, flight in lead.items():
                self._land(key, flight, None, exc)
            raise
        rows = {i: hits_to_rows(hits) for i, hits in zip(todo, computed)}
        stored = [(keys[i], rows[i]) for i in todo if keys[i] is not None]
        if stored:
            self._store(stored)  # before the flights land, so a thread arriving after them finds the entry
        for key, flight in lead.items():
            self._land(key, flight, rows[places[key][0]], None)
        for i in todo:
            for j in (places[keys[i]] if keys[i] is not None else [i]):
                results[j] = hits_from_rows(rows[i])

    def _join(self, missing: list[str]) -> tuple[dict[str, _Flight], dict[str, _Flight]]:
        lead, follow = {}, {}
        with self._lock:
            for key in missing:
                flight = self._flights.get(key)
                if flight is None:
                    lead[key] = self._flights[key] = _Flight()
                else:
                    follow[key] = flight
        return lead, follow

    def _land(self, key: str, flight: _Flight, rows: Optional[Rows], error: Optional[BaseException]) -> None:
        flight.rows, flight.error = rows, error
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    def _lookup(self, keys: list[str]) -> dict[str, Rows]:
        before = self.backend.unreadable
        got = self.backend.get_many(keys)
        errors = (got is None) + (self.backend.unreadable - before)
        if errors:
            self._record(errors=errors)
        return {key: rows for key, rows in zip(keys, got or []) if rows is not None}

    def _store(self, items: list[tuple[str, Rows]]) -> None:
        if not self.backend.put_many(items, self.ttl_seconds):
            self._record(errors=1)

    def _record(self, seconds: float = 0.0, outcome: str = "", n: int = 0, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value
            for _ in range(n):
                self._latency[outcome].add(seconds)

    def stats(self) -> dict[str, Any]:
        """Counters (hits, misses, coalesced, bypassed, computed, compute_errors, errors, evictions, expired,
        entries) and hit/miss latency p50/p99 in ms over a bounded sample."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts, backend=self.backend.name, evictions=self.backend.evictions,
                                       expired=self.backend.expired, entries=len(self.backend))
            for outcome, sample in self._latency.items():
                out["%s_latency_ms" % outcome] = {"count": sample.count, "p50": _ms(sample.quantile(0.5)),
                                                  "p99": _ms(sample.quantile(0.99))}
        lookups = out["hits"] + out["misses"]
        out["hit_rate"] = round(out["hits"] / lookups, 4) if lookups else None
        return out

    def prometheus_text(self) -> str:
        """The counters and latency quantiles in Prometheus' text exposition format (``tfrec_cache_*``)."""
        s = self.stats()
        label = 'backend="%s"' % s["backend"]
        lines = []
        for name, kind, text in _METRICS:
            lines += ["# HELP tfrec_cache_%s %s" % (name, text), "# TYPE tfrec_cache_%s %s" % (name, kind),
                      "tfrec_cache_%s{%s} %d" % (name, label, s[name.replace("_total", "")])]
        lines += ["# HELP tfrec_cache_latency_seconds Lookup latency by outcome (quantiles of a bounded uniform sample).",
                  "# TYPE tfrec_cache_latency_seconds summary"]
        with self._lock:
            for outcome, sample in self._latency.items():
                tags = '%s,outcome="%s"' % (label, outcome)
                for q in (0.5, 0.99):
                    lines.append('tfrec_cache_latency_seconds{%s,quantile="%s"} %s' % (tags, q, _number(sample.quantile(q))))
                lines.append("tfrec_cache_latency_seconds_sum{%s} %s" % (tags, _number(sample.total)))
                lines.append("tfrec_cache_latency_seconds_count{%s} %d" % (tags, sample.count))
        return "\n".join(lines) + "\n"


_METRICS = (
    ("hits_total", "counter", "Lookups answered from the cache."),
    ("misses_total", "counter", "Lookups not in the cache (computed, or waiting for another request's computation)."),
    ("coalesced_total", "counter", "Misses answered by a computation another request had started."),
    ("bypassed_total", "counter", "Requests not cached because a model's served version was unknown."),
    ("computed_total", "counter", "Results computed by the models."),
    ("compute_errors_total", "counter", "Computations that raised (nothing was cached)."),
    ("errors_total", "counter", "Cache backend failures (Redis down or slow, unreadable entries), each answered as a miss."),
    ("evictions_total", "counter", "Entries dropped from the in-process cache to stay within its size."),
    ("expired_total", "counter", "Entries of the in-process cache found past their TTL."),
    ("entries", "gauge", "Entries held by the in-process cache."),
)


def _ms(seconds: float) -> Optional[float]:
    return None if math.isnan(seconds) else round(seconds * 1000.0, 4)


def _number(value: float) -> str:
    return "NaN" if math.isnan(value) else repr(float(value))


class VersionWatcher:
    """The version each model is served at, asked of the client at most every ``refresh_seconds``.

    Clients with ``status(model)`` (gRPC, REST) report the highest AVAILABLE version (the one a
    request without a version gets), or the ``label``'s version; a :class:`LocalClient` reports the
    version it has loaded. A model the client does not serve is ``"none"``; anything else, or a
    failed status call, is ``"unknown"`` (results that depend on it are not cached).
    The refresh runs in one caller's thread; concurrent callers keep using the last versions.
    """

    def __init__(self, client: Any, models: Sequence[str], refresh_seconds: float = 1.0, label: Optional[str] = None,
                 timeout: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.models, self.label = client, list(models), label
        self.refresh_seconds, self.timeout, self.clock = float(refresh_seconds), float(timeout), clock
        self._versions = dict.fromkeys(self.models, UNKNOWN)
        self._checked: Optional[float] = None
        self._refreshing = threading.Lock()
        self.refreshes = 0
        self.last_error = ""

    def versions(self) -> dict[str, str]:
        """{model: served version, or "unknown"}, refreshed first when ``refresh_seconds`` have passed."""
        checked = self._checked
        if (checked is None or self.clock() - checked >= self.refresh_seconds) and self._refreshing.acquire(blocking=False):
            try:
                if self._checked is checked:  # nobody refreshed while we waited for the lock
                    self.refresh()
            finally:
                self._refreshing.release()
        return dict(self._versions)

    def tag(self, models: Optional[Sequence[str]] = None) -> Optional[str]:
        """``model@version,...`` for ``models`` (all by default), or None when one of them is unknown."""
        versions = self.versions()
        chosen = self.models if models is None else models
        if any(versions.get(m, UNKNOWN) == UNKNOWN for m in chosen):
            return None
        return ",".join("%s@%s" % (m, versions[m]) for m in chosen)

    def refresh(self) -> None:
        """Ask the client for every model's served version now."""
        started = self.clock()
        self._versions = {m: self._served(m) for m in self.models}  # one assignment: readers see all or nothing
        self._checked = started
        self.refreshes += 1

    def _served(self, model: str) -> str:
        client = self.client
        try:
            if callable(getattr(client, "status", None)):
                extra = {"label": self.label} if self.label else {}
                rows = client.status(model, timeout=self.timeout, **extra)
                available = [int(r["version"]) for r in rows if r.get("state") == "AVAILABLE"]
                return str(max(available)) if available else UNKNOWN
            if self.label:
                return UNKNOWN
            if callable(getattr(client, "load", None)) and callable(getattr(client, "versions", None)):
                # a LocalClient keeps serving the version it loaded first, whatever is newer on disk
                return str(int(client.load(model).version))
            if callable(getattr(client, "versions", None)):
                found = list(client.versions(model))
                return str(max(int(v) for v in found)) if found else UNKNOWN
        except Exception as exc:  # no version known: not cached, and the request itself reports the failure
            if getattr(exc, "code", None) in ("NOT_FOUND", 404):
                return ABSENT
            if not self.last_error:
                log.warning("cannot tell the served version of %s (%s: %s); its results are not cached until it answers",
                            model, type(exc).__name__, exc)
            self.last_error = "%s: %s" % (type(exc).__name__, exc)
            return UNKNOWN
        return UNKNOWN


class ServedCache:
    """A :class:`ResultCache` bound to one client's models: each kind's keys carry those models' served versions."""

    def __init__(self, cache: ResultCache, watcher: VersionWatcher, kinds: Mapping[str, Sequence[str]]) -> None:
        self.cache, self.watcher, self.kinds = cache, watcher, {k: list(v) for k, v in kinds.items()}

    def many(self, kind: str, requests: Sequence[Sequence[Any]], inputs: Sequence[Any],
             compute: Callable[[list[Any]], Sequence[Sequence[Hit]]]) -> list[list[Hit]]:
        """Hits for each request of ``kind``; ``compute`` gets the ``inputs`` of the requests to compute, in order."""
        tag = self.watcher.tag(self.kinds[kind])
        keys = [None if tag is None else self.cache.key(kind, tag, request) for request in requests]
        return self.cache.get_or_compute_many(keys, lambda todo: compute([inputs[i] for i in todo]))

    def search(self, queries: Sequence[str], k: int, options: Sequence[Any],
               compute: Callable[[list[str]], Sequence[Sequence[Hit]]]) -> list[list[Hit]]:
        """Search results by normalized query (misses are computed on the normalized text, so every spelling agrees)."""
        normalized = [normalize_query(q) for q in queries]
        return self.many("search", [(q, int(k), *options) for q in normalized], normalized, compute)

    def recommend(self, histories: Sequence[Sequence[str]], k: int,
                  compute: Callable[[list[list[str]]], Sequence[Sequence[Hit]]]) -> list[list[Hit]]:
        """Recommendations by history (item ids, oldest first) and k."""
        lists = [[str(i) for i in h] for h in histories]
        return self.many("recommend", [(h, int(k)) for h in lists], lists, compute)

    def similar(self, item_id: str, k: int, compute: Callable[[], Sequence[Hit]]) -> list[Hit]:
        """Similar items by item id and k."""
        return self.many("similar", [(str(item_id), int(k))], [item_id], lambda todo: [compute()])[0]
