"""Shoppers' recent events in Redis: what recommendations read as the freshest history.

Each shopper has one sorted set, ``<namespace>:events:<user>``, scored by the event's timestamp,
so late and out-of-order events land in time order. A member is ``<identity>\\x1f<kind>\\x1f<item>``:
the identity is the event id when the event has one, else its timestamp, so the same event sent
twice is the same member and ``ZADD NX`` makes the retry a no-op. After each add the set is trimmed
to the newest ``history_length`` members and its TTL refreshed, in the same round trip (one
MULTI pipeline per event, one pipeline per batch).

With ``hash_user_ids`` the key holds HMAC-SHA256(salt, user id) and event ids are stored as HMACs
too, so nothing in Redis names a shopper. Every call goes through :meth:`RedisLink.run`: when Redis
is down or slow, adds return False (counted as dropped) and reads return None ("unknown", unlike
``[]``, "no events"), so the caller can answer from the request instead.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

from tfrec.config.schema import OnlineConfig
from tfrec.online.link import RedisLink

MAX_ID_BYTES = 256
SEP = "\x1f"  # ids may not hold control characters, so this never occurs inside one
_KIND = re.compile(r"[a-z_]{1,32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DEFAULT_TTL_SECONDS = 30 * 24 * 3600


class EventError(ValueError):
    """An event field that cannot be stored; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("%s %s" % (field, message))
        self.field = field


def check_id(value: Any, field: str) -> str:
    """``value`` as an id string: non-empty, at most 256 UTF-8 bytes, no control characters (else EventError)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventError(field, "must be a string, got %s" % type(value).__name__)
    text = str(value)
    if not text.strip():
        raise EventError(field, "is empty")
    if len(text.encode("utf-8")) > MAX_ID_BYTES:
        raise EventError(field, "is longer than %d bytes (%d)" % (MAX_ID_BYTES, len(text.encode("utf-8"))))
    if _CONTROL.search(text):
        raise EventError(field, "holds a control character: %r" % text[:40])
    return text


def check_timestamp(value: Any) -> float:
    """``value`` (seconds since the epoch) as a finite float (else EventError)."""
    if isinstance(value, bool):
        raise EventError("timestamp", "must be a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EventError("timestamp", "must be a number of seconds, got %r" % (value,)) from None
    if not math.isfinite(number):
        raise EventError("timestamp", "must be finite, got %r" % (value,))
    return number


def check_kind(value: Any) -> str:
    """``value`` as an event kind: 1-32 of a-z and _ (else EventError)."""
    if not isinstance(value, str) or not _KIND.fullmatch(value):
        raise EventError("kind", "must be 1-32 lowercase letters or _, got %r" % (value,))
    return value


@dataclass(frozen=True)
class Event:
    """One shopper event; build it with :meth:`checked` to validate the fields."""

    user_id: str
    item_id: str
    timestamp: float
    kind: str = "view"
    event_id: Optional[str] = None

    @classmethod
    def checked(cls, user_id: Any, item_id: Any, timestamp: Any, kind: Any = "view", event_id: Any = None) -> "Event":
        """A validated event (EventError names the first bad field)."""
        return cls(check_id(user_id, "user_id"), check_id(item_id, "item_id"), check_timestamp(timestamp),
                   check_kind(kind), None if event_id in (None, "") else check_id(event_id, "event_id"))


EventLike = Union[Event, Sequence[Any]]


class EventStore:
    """Recent events per shopper in Redis, capped, expiring, idempotent; never raises a Redis error."""

    def __init__(self, link: RedisLink, history_length: int = 50, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 hash_user_ids: bool = False, salt: str = "") -> None:
        if int(history_length) < 1:
            raise ValueError("history_length must be >= 1, got %r" % history_length)
        if int(ttl_seconds) < 1:
            raise ValueError("ttl_seconds must be >= 1, got %r" % ttl_seconds)
        if hash_user_ids and not salt:
            raise ValueError("hash_user_ids needs a secret salt (without one the hashes can be reversed by guessing ids)")
        self.link, self.history_length, self.ttl_seconds = link, int(history_length), int(ttl_seconds)
        self.hash_user_ids, self._salt = bool(hash_user_ids), salt.encode("utf-8")
        self._lock = threading.Lock()
        self._counts = {"added": 0, "duplicates": 0, "dropped": 0}

    @classmethod
    def from_config(cls, online: OnlineConfig, link: Optional[RedisLink] = None) -> Optional["EventStore"]:
        """The store a config's ``online`` section describes (on ``link``, else its Redis); None without a Redis."""
        link = link if link is not None else RedisLink.from_config(online)
        if link is None:
            return None
        return cls(link, online.history_length, online.history_ttl_seconds, online.hash_user_ids, online.user_id_salt)

    # ------------------------------------------------------------------ writing

    def add(self, user_id: str, item_id: str, timestamp: float, kind: str = "view", event_id: Optional[str] = None) -> bool:
        """Append one event; False for a duplicate (same event id, or same time, kind and item) or when Redis failed."""
        event = Event.checked(user_id, item_id, timestamp, kind, event_id)
        key, member = self._key(event.user_id), self._member(event)

        def call(client: Any) -> Optional[bool]:
            pipe = client.pipeline(transaction=True)
            pipe.zadd(key, {member: event.timestamp}, nx=True)
            self._trim(pipe, key)
            return bool(pipe.execute()[0])

        added = self.link.run("events add", call, None)
        self._count("dropped" if added is None else "added" if added else "duplicates")
        return bool(added)

    def add_many(self, events: Iterable[EventLike]) -> dict[str, int]:
        """Append a batch in one pipeline; counts of ``added``, ``duplicates`` and ``dropped`` (Redis failed) events.

        Items are :class:`Event` or (user_id, item_id, timestamp[, kind[, event_id]]) tuples; all are
        validated before anything is sent.
        """
        checked = [e if isinstance(e, Event) else Event.checked(*e) for e in events]
        if not checked:
            return {"added": 0, "duplicates": 0, "dropped": 0}
        keys = [self._key(e.user_id) for e in checked]

        def call(client: Any) -> list:
            pipe = client.pipeline(transaction=False)
            for key, event in zip(keys, checked):
                pipe.zadd(key, {self._member(event): event.timestamp}, nx=True)
            for key in dict.fromkeys(keys):  # one trim per shopper, after all of the batch's adds
                self._trim(pipe, key)
            return pipe.execute()[: len(checked)]

        results = self.link.run("events add_many", call, None)
        if results is None:
            counts = {"added": 0, "duplicates": 0, "dropped": len(checked)}
        else:
            added = sum(1 for r in results if r)
            counts = {"added": added, "duplicates": len(checked) - added, "dropped": 0}
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n
        return counts

    def forget(self, user_id: str) -> bool:
        """Delete a shopper's events; False when Redis failed."""
        key = self._key(check_id(user_id, "user_id"))
        return self.link.run("events forget", lambda c: c.delete(key) >= 0, False)

    # ------------------------------------------------------------------ reading

    def history(self, user_id: str, n: Optional[int] = None, kinds: Optional[Sequence[str]] = None) -> Optional[list[str]]:
        """The shopper's newest ``n`` item ids (default all kept), oldest first; None when Redis cannot answer."""
        return self.histories([user_id], n, kinds)[0]

    def histories(self, user_ids: Sequence[str], n: Optional[int] = None,
                  kinds: Optional[Sequence[str]] = None) -> list[Optional[list[str]]]:
        """:meth:`history` for several shoppers in one round trip (each None when Redis cannot answer)."""
        if isinstance(user_ids, str):
            raise TypeError("histories takes a list of user ids; use history() for one")
        keys = [self._key(check_id(u, "user_id")) for u in user_ids]
        wanted = None if kinds is None else {check_kind(k) for k in kinds}
        count = self.history_length if n is None else int(n)
        if count < 1:
            raise ValueError("n must be >= 1, got %r" % n)
        if not keys:
            return []
        # With a kind filter every kept event is read, since the newest n of those kinds may lie further back.
        start = 0 if wanted is not None else -count

        def call(client: Any) -> list:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.zrange(key, start, -1)
            return pipe.execute()

        rows = self.link.run("events history", call, None)
        if rows is None:
            return [None] * len(keys)
        return [self._items(row, wanted)[-count:] for row in rows]

    def stats(self) -> dict[str, Any]:
        """Events added, duplicates and dropped (Redis failed) by this store, and the link's counters."""
        with self._lock:
            return dict(self._counts, redis=self.link.stats())

    # ------------------------------------------------------------------ encoding

    def user_key(self, user_id: str) -> str:
        """The key part that stands for a shopper: the id itself, or its salted HMAC-SHA256 (hex)."""
        if not self.hash_user_ids:
            return user_id
        return hmac.new(self._salt, user_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def _key(self, user_id: str) -> str:
        return self.link.key("events", self.user_key(user_id))

    def _member(self, event: Event) -> str:
        if event.event_id is None:
            identity = "t%r" % event.timestamp
        elif self.hash_user_ids:  # an event id may embed the shopper's id
            identity = "h" + hmac.new(self._salt, b"event:" + event.event_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
        else:
            identity = "i" + event.event_id
        return SEP.join((identity, event.kind, event.item_id))

    def _trim(self, pipe: Any, key: str) -> None:
        pipe.zremrangebyrank(key, 0, -(self.history_length + 1))
        pipe.expire(key, self.ttl_seconds)

    @staticmethod
    def _items(members: Sequence[Any], kinds: Optional[set[str]]) -> list[str]:
        items = []
        for member in members:
            text = member.decode("utf-8") if isinstance(member, bytes) else str(member)
            _, kind, item = text.split(SEP, 2)
            if kinds is None or kind in kinds:
                items.append(item)
        return items

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
