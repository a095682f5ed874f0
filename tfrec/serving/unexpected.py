"""Logging of unexpected server errors: one traceback per kind of error, not one per request.

A client that can trigger a bug can trigger it thousands of times a second; a traceback per request
would flood the log (and the disk). The first error of a kind (its type and the line that raised it)
is logged with its traceback, later ones at DEBUG level with a count.
"""
from __future__ import annotations

import logging
import threading
import traceback

_MAX_KINDS = 1024  # past this many distinct kinds, new ones are counted under one key


def error_kind(exc: BaseException) -> tuple[str, str]:
    """(type name, "file:line" where it was raised) of an exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "%s:%d" % (frames[-1].filename, frames[-1].lineno) if frames else "?"
    return type(exc).__qualname__, where


class UnexpectedErrors:
    """Counts unexpected errors by kind for one server and logs each kind's traceback once."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def report(self, exc: BaseException, what: str) -> None:
        """Log ``exc`` (raised while doing ``what``): with its traceback the first time its kind is seen."""
        kind = error_kind(exc)
        with self._lock:
            if kind not in self._seen and len(self._seen) >= _MAX_KINDS:
                kind = ("(other)", "?")
            count = self._seen[kind] = self._seen.get(kind, 0) + 1
        if count == 1:
            self.log.error("%s: %s: %s (at %s; logged once, repeats at DEBUG)", what, kind[0], exc, kind[1], exc_info=exc)
        else:
            self.log.debug("%s: %s: %s (at %s; %d times so far)", what, kind[0], exc, kind[1], count)
