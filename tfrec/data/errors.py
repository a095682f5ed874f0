"""Data errors that name file, line and field, and the report of rows dropped in lenient mode."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Optional

_MAX_EXAMPLES_PER_REASON = 3

# Where a problem sits: CSV text has lines and fields; Parquet files and DataFrames have rows and columns.
LINE, ROW = "line", "row"


class DataError(ValueError):
    """A data file is malformed or inconsistent; the message names file, line, field and expectation.

    For a Parquet file or a DataFrame the place is a row (counted from 0, as pandas does; a
    DataFrame's own index label) and a column: ``catalog DataFrame, row 12, column 'price': ...``.
    """

    def __init__(self, path: str, message: str, *, line: Any = None, field_name: Optional[str] = None, unit: str = LINE):
        self.path, self.line, self.field_name, self.unit = str(path), line, field_name, unit
        where = self.path
        if unit == ROW:
            if line is not None:
                where += ", row %s" % (line,)
            if field_name is not None:
                where += ", column %r" % field_name
        else:
            if line is not None:
                where += " line %d" % line
            if field_name is not None:
                where += ", field %r" % field_name
        super().__init__("%s: %s" % (where, message))


@dataclass
class DropReport:
    """Counts (and a few examples of) rows dropped in lenient mode, per file and reason."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    first_lines: dict = field(default_factory=dict)  # reason -> (unit, the first few line or row numbers)

    def add(self, error: DataError) -> None:
        """Count one dropped row, keeping the first few messages and line numbers of each reason as examples."""
        reason = (error.path, error.field_name or "", _reason(error))
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < _MAX_EXAMPLES_PER_REASON:
            kept.append(str(error))
            if error.line is not None:
                self.first_lines.setdefault(reason, (error.unit, []))[1].append(error.line)

    @property
    def total(self) -> int:
        """Rows dropped in all."""
        return sum(self.counts.values())

    def merge(self, other: "DropReport") -> None:
        """Add another report's counts and examples to this one."""
        self.counts.update(other.counts)
        for reason, kept in other.examples.items():
            room = _MAX_EXAMPLES_PER_REASON - len(self.examples.setdefault(reason, []))
            self.examples[reason].extend(kept[:room])
            if reason in other.first_lines and room > 0:
                unit, numbers = other.first_lines[reason]
                self.first_lines.setdefault(reason, (unit, []))[1].extend(numbers[:room])

    def as_dict(self) -> dict:
        """Plain data for the run's statistics file."""
        reasons = []
        for (path, name, reason), n in self.counts.most_common():
            unit, numbers = self.first_lines.get((path, name, reason), (LINE, []))
            reasons.append({"file": path, "field": name, "reason": reason, "rows": n, "unit": unit,
                            "first_lines": list(numbers), "examples": self.examples[(path, name, reason)]})
        return {"total": self.total, "reasons": reasons}

    @classmethod
    def from_dict(cls, dropped: dict) -> "DropReport":
        """The report :meth:`as_dict` described (counts, examples and first lines per file, field and reason)."""
        report = cls()
        for r in dropped.get("reasons") or []:
            key = (r["file"], r.get("field") or "", r["reason"])
            report.counts[key] += r["rows"]
            report.examples[key] = list(r.get("examples", []))
            report.first_lines[key] = (r.get("unit", LINE), list(r.get("first_lines", [])))
        return report

    def lines(self) -> list[str]:
        """The dropped rows as an aligned table by file and reason (empty when nothing was dropped)."""
        return format_drops(self.as_dict())


def format_drops(dropped: dict) -> list[str]:
    """Render :meth:`DropReport.as_dict` data as a header and one aligned row per file and reason."""
    reasons = dropped.get("reasons") or []
    if not reasons:
        return []
    header = ("file", "field", "rows", "reason", "first at")
    rows = [(_file_name(r["file"]), r.get("field") or "-", str(r["rows"]), r["reason"], _first_at(r)) for r in reasons]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple) -> str:
        padded = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(padded).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _file_name(path: str) -> str:
    """A file's name without its folder (the statistics keep the full path); a DataFrame's name as is."""
    return PurePath(path).name if ("/" in path or "\\" in path) else path


def _first_at(reason: dict) -> str:
    numbers = reason.get("first_lines") or []
    if not numbers:
        return "-"
    more = ", ..." if reason["rows"] > len(numbers) else ""
    unit = reason.get("unit", LINE)
    return "%s%s %s%s" % (unit, "s" if len(numbers) > 1 else "", ", ".join(str(n) for n in numbers), more)


def _reason(error: DataError) -> str:
    """The message without its per-row details, so equal problems count together."""
    text = str(error).split(": ", 1)[-1]
    return text.split(", got")[0]


class RowChecker:
    """Raises a DataError in strict mode; in lenient mode records it and lets the caller drop the row."""

    def __init__(self, strict: bool, report: Optional[DropReport] = None):
        self.strict = strict
        self.report = report if report is not None else DropReport()

    def reject(self, error: DataError) -> None:
        """Raise ``error`` when strict, else count the row as dropped."""
        if self.strict:
            raise error
        self.report.add(error)
