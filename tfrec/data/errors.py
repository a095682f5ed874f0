"""Data errors that name file, line and field, and the report of rows dropped in lenient mode."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

_MAX_EXAMPLES_PER_REASON = 3


class DataError(ValueError):
    """A data file is malformed or inconsistent; the message names file, line, field and expectation."""

    def __init__(self, path: str, message: str, *, line: Optional[int] = None, field_name: Optional[str] = None):
        self.path, self.line, self.field_name = str(path), line, field_name
        where = self.path
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

    def add(self, error: DataError) -> None:
        """Count one dropped row, keeping the first few messages of each reason as examples."""
        reason = (error.path, error.field_name or "", _reason(error))
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < _MAX_EXAMPLES_PER_REASON:
            kept.append(str(error))

    @property
    def total(self) -> int:
        """Rows dropped in all."""
        return sum(self.counts.values())

    def merge(self, other: "DropReport") -> None:
        """Add another report's counts and examples to this one."""
        self.counts.update(other.counts)
        for reason, kept in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(kept[: _MAX_EXAMPLES_PER_REASON - len(mine)])

    def as_dict(self) -> dict:
        """Plain data for the run's statistics file."""
        return {
            "total": self.total,
            "reasons": [
                {"file": path, "field": name, "reason": reason, "rows": n, "examples": self.examples[(path, name, reason)]}
                for (path, name, reason), n in self.counts.most_common()
            ],
        }

    def lines(self) -> list[str]:
        """Human-readable summary lines (empty when nothing was dropped)."""
        return [
            "dropped %d row(s) from %s%s: %s" % (n, path, " field %r" % name if name else "", reason)
            for (path, name, reason), n in self.counts.most_common()
        ]


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
