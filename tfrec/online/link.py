"""A Redis connection that fails soft: when Redis is down or slow, calls return a fallback instead of raising.

The serving path must answer without Redis (from the exports alone), so every call goes through
:meth:`RedisLink.run`: a connection error or a call slower than ``timeout_ms`` returns the caller's
fallback, is counted, and is logged once per outage (not per request). After a failure Redis is
skipped for ``retry_seconds`` (no request waits on a dead server), then the next call tries again;
the first success after an outage logs that Redis is back.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from tfrec.config.schema import OnlineConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def redis_client(url: str, timeout_ms: int = 50, max_connections: int = 64) -> Any:
    """A ``redis.Redis`` for ``url`` whose connects and calls time out after ``timeout_ms``."""
    import redis  # lazy: tfrec works without Redis until a config names one

    seconds = max(1, int(timeout_ms)) / 1000.0
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=seconds,
                                                 socket_timeout=seconds, socket_connect_timeout=seconds)
    return redis.Redis(connection_pool=pool)


class RedisLink:
    """One Redis (``url``) and its key namespace; :meth:`run` never raises a Redis error.

    ``client`` may be given instead of ``url`` (any ``redis.Redis``-like object). :meth:`stats`
    counts calls, failures and calls skipped while Redis was marked down.
    """

    def __init__(self, url: str = "", namespace: str = "tfrec", *, timeout_ms: int = 50, retry_seconds: float = 2.0,
                 client: Any = None) -> None:
        if client is None and not url:
            raise ValueError("RedisLink needs a redis:// url or a client")
        if not namespace or ":" in namespace:
            raise ValueError("namespace must be a non-empty name without ':', got %r" % namespace)
        self.url, self.namespace = url, namespace
        self.timeout_ms, self.retry_seconds = int(timeout_ms), float(retry_seconds)
        self.client = client if client is not None else redis_client(url, timeout_ms)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._outage = False
        self._counts = {"calls": 0, "failures": 0, "skipped": 0, "outages": 0}
        self.last_error = ""

    @classmethod
    def from_config(cls, online: OnlineConfig) -> Optional["RedisLink"]:
        """The link a config's ``online`` section names, or None when it names no Redis."""
        if not online.redis_url:
            return None
        return cls(online.redis_url, online.namespace, timeout_ms=online.timeout_ms, retry_seconds=online.retry_seconds)

    def key(self, *parts: str) -> str:
        """``<namespace>:<part>:<part>...``."""
        return ":".join((self.namespace,) + tuple(str(p) for p in parts))

    @property
    def available(self) -> bool:
        """False while Redis is marked down after a failure (calls are skipped until ``retry_seconds`` pass)."""
        return time.monotonic() >= self._down_until

    def run(self, what: str, call: Callable[[Any], T], fallback: T) -> T:
        """``call(client)``, or ``fallback`` when Redis fails, is too slow or is marked down (``what`` names it in the log)."""
        import redis

        with self._lock:
            if time.monotonic() < self._down_until:
                self._counts["skipped"] += 1
                return fallback
            self._counts["calls"] += 1
        try:
            result = call(self.client)
        except (redis.RedisError, OSError) as exc:
            self._failed(what, exc)
            return fallback
        if self._outage:
            with self._lock:
                if self._outage:
                    self._outage = False
                    log.warning("Redis at %s is back; %s works again", self._where(), what)
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self._counts["failures"] += 1
            self._down_until = time.monotonic() + self.retry_seconds
            self.last_error = "%s: %s" % (type(exc).__name__, exc)
            first = not self._outage
            if first:
                self._outage = True
                self._counts["outages"] += 1
        if first:  # once per outage: a dead Redis under load would otherwise log every request
            log.warning("Redis at %s failed during %s (%s); answering without it, retrying every %.1f s",
                        self._where(), what, self.last_error, self.retry_seconds)

    def _where(self) -> str:
        if not self.url:
            return "(client)"
        # never log a password
        head, sep, tail = self.url.rpartition("@")
        return ("redis://***@" + tail) if sep else self.url

    def stats(self) -> dict[str, Any]:
        """Counters: calls, failures, skipped, outages, and whether Redis is marked available."""
        with self._lock:
            return dict(self._counts, available=time.monotonic() >= self._down_until, last_error=self.last_error)

    def close(self) -> None:
        """Close the connection pool."""
        try:
            self.client.close()
        except Exception:  # closing a pool to a dead server must not fail shutdown
            pass
