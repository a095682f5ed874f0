"""Quoting values in config error messages: short, and never expanding a huge or self-repeating value."""
from __future__ import annotations

import reprlib
from typing import Any

# Enough to recognise a value; an error message is one line, not a dump of the file.
QUOTE_LIMIT = 200


def _repr() -> reprlib.Repr:
    # reprlib looks at a bounded prefix of every container, so a value built from YAML aliases
    # (a few nodes standing for billions of items) is quoted in time proportional to the cut.
    r = reprlib.Repr()
    r.maxlevel = 4
    r.maxtuple = r.maxlist = r.maxarray = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = 12
    r.maxstring = r.maxother = QUOTE_LIMIT
    r.maxlong = 60
    return r


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    note = "... (%d characters)" % len(text)
    return text[: max(limit - len(note), 0)] + note


def quote_value(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        note = "... (%d characters)" % len(value)
        return repr(value[:limit])[: max(limit - len(note), 0)] + note
    return shorten(_repr().repr(value), limit)
