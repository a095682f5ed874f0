"""Admission control of the development server: a bounded queue and a number of concurrent runs per model.

A request that passed validation asks its model's :class:`ModelQueue` for a slot before the model runs:
it runs at once while fewer than ``concurrency`` runs are in progress, otherwise it waits in a FIFO
queue of at most ``max_queued`` requests. Beyond that it is refused at once with RESOURCE_EXHAUSTED
(REST 429), and a request whose deadline passes while it waits (or before it would start) is dropped
with DEADLINE_EXCEEDED, so an overloaded server spends its time on requests someone still waits for.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Iterator, Optional

from tfrec.serving.models import RequestError


def deadline_exceeded(message: str) -> RequestError:
    """A DEADLINE_EXCEEDED error."""
    return RequestError("DEADLINE_EXCEEDED", message)


class ModelQueue:
    """Slots for one model: ``concurrency`` runs at a time, at most ``max_queued`` waiting (FIFO)."""

    def __init__(self, name: str, concurrency: int, max_queued: int) -> None:
        if concurrency < 1 or max_queued < 0:
            raise ValueError("concurrency must be >= 1 and max_queued >= 0, got %r and %r" % (concurrency, max_queued))
        self.name = name
        self.concurrency = concurrency
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self.shed = 0  # refused because the queue was full
        self.expired = 0  # dropped because their deadline passed before they ran

    @contextlib.contextmanager
    def slot(self, deadline: Optional[float] = None) -> Iterator[None]:
        """Hold one run slot for the block; ``deadline`` is a time.monotonic() value (None: wait as long as it takes)."""
        self._acquire(deadline)
        try:
            if deadline is not None and time.monotonic() >= deadline:
                with self._lock:
                    self.expired += 1
                raise deadline_exceeded("the request's deadline passed before model '%s' could run it" % self.name)
            yield
        finally:
            self._release()

    def _acquire(self, deadline: Optional[float]) -> None:
        with self._lock:
            if deadline is not None and time.monotonic() >= deadline:
                self.expired += 1
                raise deadline_exceeded("the request's deadline had passed when it reached model '%s'" % self.name)
            if self._running < self.concurrency and not self._waiting:
                self._running += 1
                return
            if len(self._waiting) >= self.max_queued:
                self.shed += 1
                raise RequestError("RESOURCE_EXHAUSTED", "model '%s' is overloaded: %d requests running and %d queued "
                                   "(the most allowed); retry later" % (self.name, self._running, len(self._waiting)))
            turn = threading.Event()
            self._waiting.append(turn)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if turn.wait(timeout):
            return  # the slot was handed over by _release
        with self._lock:
            handed_over = turn.is_set()  # the slot arrived just as the wait timed out: it is ours to pass on
            if not handed_over:
                self._waiting.remove(turn)
            self.expired += 1
        if handed_over:
            self._release()
        raise deadline_exceeded("the request's deadline passed while it waited for model '%s'" % self.name)

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # the slot passes to the oldest waiter; _running is unchanged
            else:
                self._running -= 1

    def load(self) -> tuple[int, int]:
        """(running, queued) now."""
        with self._lock:
            return self._running, len(self._waiting)


class Admission:
    """One :class:`ModelQueue` per model name, made on first use."""

    def __init__(self, concurrency: int = 4, max_queued: int = 32) -> None:
        ModelQueue("-", concurrency, max_queued)  # validates the numbers now rather than at the first request
        self.concurrency = int(concurrency)
        self.max_queued = int(max_queued)
        self._queues: dict[str, ModelQueue] = {}
        self._lock = threading.Lock()

    def queue(self, model: str) -> ModelQueue:
        """The queue of ``model``."""
        with self._lock:
            found = self._queues.get(model)
            if found is None:
                found = self._queues[model] = ModelQueue(model, self.concurrency, self.max_queued)
            return found

    @contextlib.contextmanager
    def gate(self, model: str, deadline: Optional[float] = None) -> Iterator[None]:
        """A slot of ``model``'s queue, taken only when the block is entered (after the request was validated)."""
        with self.queue(model).slot(deadline):
            yield
