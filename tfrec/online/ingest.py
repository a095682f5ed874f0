"""Stream a file of shopper events (CSV or JSON lines) into an :class:`EventStore`.

The file is read line by line (never whole), in batches of ``batch`` events, each batch one Redis
pipeline. A line that cannot be used (not CSV/JSON, a missing or bad field, an item the catalog
does not hold) is skipped and counted under its reason, with the first few kept as examples with
their line numbers; the stream goes on. A batch Redis refused is sent again (``retries`` times,
once Redis is tried again): adds are idempotent, so a resent event is never stored twice. A batch
still refused ends the stream (``report.failed`` says why, ``report.last_line`` where).

``rate`` (events/s) paces the stream in ~10 ms steps, and ``stop`` (a ``threading.Event``) ends
it early, so a benchmark can ingest in a background thread at a steady rate.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Container, Iterable, Iterator, Mapping, Optional, Union

from tfrec.log import Progress
from tfrec.online.events import Event, EventError, EventStore

log = logging.getLogger(__name__)

FIELDS = ("user_id", "item_id", "timestamp", "kind", "event_id")
REQUIRED = ("user_id", "item_id", "timestamp")
EXAMPLES = 5  # skipped lines kept as examples in the report


class IngestError(ValueError):
    """An events file that cannot be read at all (e.g. a CSV header without a required column)."""


@dataclass
class IngestReport:
    """What one ingest did: lines read, events ingested, duplicates, dropped, skipped lines by reason."""

    source: str = ""
    lines: int = 0  # data lines read (the CSV header and blank lines not counted)
    ingested: int = 0
    duplicates: int = 0  # events the store already held (retries of an event)
    dropped: int = 0  # events Redis did not take, even after the retries
    skipped: Counter = field(default_factory=Counter)  # reason -> lines
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, detail), the first few
    seconds: float = 0.0
    stopped: bool = False  # the stop event ended the stream before its end
    failed: str = ""  # why Redis stopped taking events (the stream ends there), "" when it did not
    last_line: int = 0  # the last line read

    def skip(self, line: int, reason: str, detail: str) -> None:
        """Count a skipped line under ``reason``."""
        self.skipped[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append((line, reason, detail))

    def table(self) -> str:
        """A plain-text summary for the command line."""
        rate = self.ingested / self.seconds if self.seconds > 0 else 0.0
        rows = [("lines read", self.lines), ("ingested", self.ingested), ("duplicates", self.duplicates),
                ("dropped (Redis failed)", self.dropped), ("skipped", sum(self.skipped.values()))]
        rows += [("  " + reason, n) for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))]
        width = max(len(name) for name, _ in rows)
        ended = " (stopped early)" if self.stopped else " (Redis failed at line %d)" % self.last_line if self.failed else ""
        out = ["events from %s%s" % (self.source or "(stream)", ended)]
        out += ["  %-*s %10d" % (width, name, n) for name, n in rows]
        out += ["  first skipped: line %d: %s (%s)" % e if i == 0 else "                 line %d: %s (%s)" % e
                for i, e in enumerate(self.examples)]
        out.append("  %.1f s, %.0f events/s" % (self.seconds, rate))
        return "\n".join(out)


def parse_timestamp(value: Any) -> float:
    """Seconds since the epoch from a number, a numeric string or an ISO 8601 time (UTC when it has no zone)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise EventError("timestamp", "must be seconds since the epoch or an ISO 8601 time, got %r" % text[:40]) from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    return value  # numbers are checked by Event.checked


def _open_lines(source: Union[str, Path, Iterable[Union[str, bytes]]]) -> tuple[str, Iterable[Union[str, bytes]], Any]:
    """(name, lines, file to close or None)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        handle = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        return str(path), handle, handle
    return "", source, None


def _detect(name: str, first: str) -> str:
    suffixes = [s.lower() for s in Path(name).suffixes if s.lower() != ".gz"] if name else []
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffixes and suffixes[-1] in (".csv", ".tsv"):
        return "csv"
    return "jsonl" if first.lstrip().startswith("{") else "csv"


def _numbered(lines: Iterable[Union[str, bytes]], report: IngestReport) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines; lines that are not UTF-8 are skipped and counted."""
    for number, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                report.skip(number, "not UTF-8", str(err)[:80])
                continue
        text = raw.rstrip("\r\n")
        if text.strip():
            yield number, text.lstrip("\ufeff") if number == 1 else text


def _records(numbered: Iterator[tuple[int, str]], fmt: str, names: Mapping[str, str], delimiter: str,
             report: IngestReport) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, {file column: value}) per data line; malformed lines are counted and skipped."""
    header: Optional[list[str]] = None
    for number, text in numbered:
        if fmt == "csv" and header is None:
            header = [h.strip() for h in next(csv.reader([text], delimiter=delimiter))]
            missing = [names[f] for f in REQUIRED if names[f] not in header]
            if missing:
                raise IngestError("%s line %d: the CSV header has no column %s (it has %s); name the columns with "
                                  "--column FIELD=NAME" % (report.source or "(stream)", number, ", ".join(missing), ", ".join(header)))
            continue
        report.lines += 1
        try:
            if fmt == "csv":
                row = next(csv.reader([text], delimiter=delimiter))
                if len(row) != len(header):
                    raise ValueError("%d fields where the header has %d" % (len(row), len(header)))
                yield number, dict(zip(header, row))
            else:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError("a JSON %s, not an object" % type(record).__name__)
                yield number, record
        except (ValueError, csv.Error) as err:
            report.skip(number, "malformed line", str(err)[:80])


def ingest(source: Union[str, Path, Iterable[Union[str, bytes]]], store: EventStore, known_items: Optional[Container] = None,
           batch: int = 500, rate: Optional[float] = None, *, columns: Optional[Mapping[str, str]] = None,
           fmt: Optional[str] = None, delimiter: str = ",", stop: Optional[threading.Event] = None, retries: int = 2,
           progress: bool = True) -> IngestReport:
    """Stream events from a file path or lines (CSV with a header, or JSON lines) into ``store``.

    ``columns`` maps tfrec's field names (user_id, item_id, timestamp, kind, event_id) to the file's
    where they differ. ``known_items`` (any container, e.g. a ProductCatalog) skips events of other
    items. ``fmt`` is "csv" or "jsonl" (default: from the extension, else the first character).
    """
    if batch < 1:
        raise ValueError("batch must be >= 1, got %r" % batch)
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0 events/s, got %r" % rate)
    unknown = set(columns or {}) - set(FIELDS)
    if unknown:
        raise ValueError("columns may rename %s, not %s" % (", ".join(FIELDS), ", ".join(sorted(unknown))))
    names = dict({f: f for f in FIELDS}, **(columns or {}))
    stop = stop or threading.Event()
    if rate is not None:  # ~10 ms of events per send, so a paced stream flows instead of arriving in bursts
        batch = max(1, min(batch, int(rate / 100)))
    name, lines, handle = _open_lines(source)
    report = IngestReport(source=name)
    started = time.monotonic()
    sent = 0
    pending: list[Event] = []

    def flush() -> None:
        nonlocal sent
        if rate is not None and stop.wait(max(0.0, started + sent / rate - time.monotonic())):
            report.stopped = True
        counts = store.add_many(pending)
        for _ in range(retries):
            if not counts["dropped"] or stop.is_set():
                break
            stop.wait(max(store.link.retry_seconds, 0.05))  # the link skips Redis until then
            counts = store.add_many(pending)
        if counts["dropped"]:  # a Redis that refuses a batch after the retries would only drop the rest too
            report.failed = store.link.last_error or "Redis did not answer"
        report.ingested += counts["added"]
        report.duplicates += counts["duplicates"]
        report.dropped += counts["dropped"]
        sent += len(pending)
        meter.update(len(pending), {"skipped": sum(report.skipped.values())})
        pending.clear()

    try:
        numbered = _numbered(lines, report)
        first = next(numbered, None)
        if first is None:
            return report
        fmt = fmt or _detect(name, first[1])
        if fmt not in ("csv", "jsonl"):
            raise ValueError("fmt must be csv or jsonl, got %r" % fmt)
        with Progress("ingesting events", unit="event", logger=log, show=progress) as meter:
            for number, record in _records(_chain(first, numbered), fmt, names, delimiter, report):
                if stop.is_set() or report.failed:
                    report.stopped = not report.failed
                    break
                report.last_line = number
                event = _event(number, record, names, known_items, report)
                if event is not None:
                    pending.append(event)
                if len(pending) >= batch:
                    flush()
            if pending:
                flush()
    finally:
        if handle is not None:
            handle.close()
        report.seconds = time.monotonic() - started
    return report


def _chain(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _event(number: int, record: Mapping[str, Any], names: Mapping[str, str], known_items: Optional[Container],
           report: IngestReport) -> Optional[Event]:
    """The record's event, or None (counted under its reason) when it cannot be used."""
    values = {f: record.get(names[f]) for f in FIELDS}
    for f in REQUIRED:
        if values[f] is None or values[f] == "":
            report.skip(number, "missing %s" % f, "no %s" % names[f])
            return None
    try:
        event = Event.checked(values["user_id"], values["item_id"], parse_timestamp(values["timestamp"]),
                              values["kind"] if values["kind"] not in (None, "") else "view", values["event_id"])
    except EventError as err:
        report.skip(number, "bad %s" % err.field, str(err)[:80])
        return None
    if known_items is not None and event.item_id not in known_items:
        report.skip(number, "unknown item", "item_id %s" % event.item_id[:40])
        return None
    return event
