"""A closed-loop load generator: N client threads each call a function back to back for a while.

Each thread starts its next call as soon as the previous one returns (closed loop, so the load
adapts to the server's speed, like N users who wait for each answer). Calls that start during
the warm-up are not measured (connections open, the server's first calls are slow); calls that
start in the measured window count, successes by latency and failures by message.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

OTHER_ERRORS = "(other messages)"


def _message(error: BaseException) -> str:
    text = "%s: %s" % (type(error).__name__, error)
    return text if len(text) <= 300 else text[:297] + "..."


def run_load(call: Callable[[int], None], clients: int = 32, seconds: float = 30.0, warmup_seconds: float = 1.0,
             max_error_messages: int = 5, join_timeout: float = 60.0, stop: Optional[threading.Event] = None) -> dict:
    """Run ``clients`` threads calling ``call(i)`` (``i``: a run-wide request number 0, 1, 2...) and summarise.

    Returns {"clients", "seconds", "requests", "failures", "errors": {message: count}, "qps", "p50_ms",
    "p90_ms", "p99_ms", "max_ms"}: ``requests`` counts the calls started in the measured window,
    ``qps`` their successes per second, and the percentiles their latencies (None with no success).
    ``errors`` keeps the first ``max_error_messages`` distinct messages; later ones are counted under
    ``"(other messages)"``. Threads still inside a call ``join_timeout`` s after the end are reported
    as ``"stuck"``. Setting ``stop`` ends the load early (``seconds`` then reports the measured time).
    """
    if clients < 1:
        raise ValueError("clients must be >= 1, got %r" % (clients,))
    if seconds <= 0 or warmup_seconds < 0:
        raise ValueError("seconds must be > 0 and warmup_seconds >= 0, got %r and %r" % (seconds, warmup_seconds))
    numbers = itertools.count()  # next() on it is atomic under the GIL
    start = time.perf_counter()
    measure_from, end = start + warmup_seconds, start + warmup_seconds + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[list[str]] = [[] for _ in range(clients)]

    def worker(slot: int) -> None:
        while True:
            began = time.perf_counter()
            if began >= end or (stop is not None and stop.is_set()):
                return
            try:
                call(next(numbers))
            except Exception as error:  # a failed call is data, not a reason to stop the load
                if began >= measure_from:
                    failures[slot].append(_message(error))
                continue
            if began >= measure_from:
                latencies[slot].append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(slot,), name="load-%d" % slot, daemon=True) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, end + join_timeout - time.perf_counter()))
    stuck = sum(thread.is_alive() for thread in threads)

    ms = np.asarray([x for per in latencies for x in per], dtype=np.float64) * 1000.0
    messages = [m for per in failures for m in per]
    errors: dict[str, int] = {}
    for message in messages:
        key = message if message in errors or len(errors) < max_error_messages else OTHER_ERRORS
        errors[key] = errors.get(key, 0) + 1

    if stop is not None and stop.is_set():
        seconds = round(max(1e-9, min(end, time.perf_counter()) - measure_from), 3)

    def percentile(q: float) -> Optional[float]:
        return round(float(np.percentile(ms, q)), 3) if ms.size else None

    report = {
        "clients": clients,
        "seconds": seconds,
        "requests": int(ms.size) + len(messages),
        "failures": len(messages),
        "errors": errors,
        "qps": round(ms.size / seconds, 2),
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "p99_ms": percentile(99),
        "max_ms": round(float(ms.max()), 3) if ms.size else None,
    }
    if stuck:
        report["stuck"] = stuck
    return report


def zipf_replay(queries: Sequence[str], n: int, s: float = 1.0, seed: int = 0) -> list[str]:
    """``n`` queries drawn from the distinct ``queries`` with weight 1/rank^s, ranks a seeded permutation of them."""
    distinct = list(dict.fromkeys(str(q) for q in queries))
    if not distinct:
        raise ValueError("zipf_replay needs at least one query")
    if n < 0 or s < 0:
        raise ValueError("n and s must be >= 0, got %r and %r" % (n, s))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(distinct))  # which query is the most popular is chosen by the seed, not the file's order
    weights = 1.0 / np.arange(1, len(distinct) + 1, dtype=np.float64) ** s
    picks = rng.choice(len(distinct), size=int(n), p=weights / weights.sum())
    return [distinct[order[i]] for i in picks]
