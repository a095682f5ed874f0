"""The rows of a user table, from a CSV file, a Parquet file or a pandas DataFrame.

Every source becomes the same :class:`TableRows` (text cells with the line or row each came
from), so the readers in :mod:`tfrec.data.readers` validate all three with the same rules and
messages. A CSV names lines (counted from 1, the header is line 1) and fields; a Parquet file
names rows counted from 0 as pandas does; a DataFrame names rows by its index labels. Both name
columns. pyarrow loads only when a Parquet file is read; pandas is never imported here (a
DataFrame arrives already built).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from tfrec.data.errors import LINE, ROW, DataError, RowChecker
from tfrec.data.locations import Location, RemotePath, location, parquet_source

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class TableRows:
    """The rows of a table that have the header's shape, each with the line (CSV) or row it came from."""

    path: str  # a file's path, or a DataFrame's name ("catalog DataFrame")
    header: list[str]
    rows: list[list[str]]
    lines: list[Any]
    unit: str = LINE  # "line" for CSV text, "row" for Parquet files and DataFrames

    def column(self, name: str) -> int:
        """Position of a column in the header."""
        return self.header.index(name)

    def error(self, message: str, line: Any = None, field_name: Optional[str] = None) -> DataError:
        """A DataError at ``line`` (a line or row of this table) naming the field or column."""
        return DataError(self.path, message, line=line, field_name=field_name, unit=self.unit)

    def place(self, line: Any) -> str:
        """How a message refers to an earlier line or row of this table ("line 4", "row 3")."""
        return "%s %s" % (self.unit, line)


def is_parquet(path: Location) -> bool:
    """Whether a data file is read as Parquet (by its extension; anything else is CSV)."""
    return path.suffix.lower() in PARQUET_SUFFIXES


def read_rows(source: Union[Location, str, Any], required: list[str], checker: RowChecker, *, encoding: str = "utf-8",
              name: str = "DataFrame") -> TableRows:
    """The rows of a CSV or Parquet file (by extension; local or a URI) or of a DataFrame (named ``name`` in messages)."""
    if isinstance(source, (str, Path, RemotePath)):
        path = location(source)
        if is_parquet(path):
            return read_parquet(path, required)
        return read_csv(path, required, checker, encoding=encoding)
    return frame_rows(source, name, required)


def decode_text(path: Location, encoding: str = "utf-8") -> str:
    """Read a whole text file, turning a decoding failure into an error with its line number."""
    if not path.is_file():
        raise DataError(str(path), "file not found")
    raw = path.read_bytes()
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            str(path),
            "not valid %s text (byte 0x%02x at offset %d); convert the file or set the encoding in the config"
            % (encoding, raw[err.start], err.start),
            line=line,
        ) from None
    except LookupError:
        raise DataError(str(path), "unknown encoding %r" % encoding) from None


def read_csv(path: Location, required: list[str], checker: RowChecker, *, encoding: str = "utf-8", delimiter: str = ",") -> TableRows:
    """Read a CSV with a header row; rows whose field count differs from the header are rejected.

    A row's line is the line where it starts (a quoted field may run over several lines), and a
    quote left open is reported at the line where it opened, not where the parser gave up.
    """
    text = decode_text(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[list[str]] = []
    lines: list[Any] = []
    header: Optional[list[str]] = None
    start = 1  # the line where the next row begins
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue  # blank line: no data to lose
            if header is None:
                header = [h.strip() for h in row]
                _check_header(str(path), header, required, "the header has", line=1)
                continue
            if len(row) != len(header):
                checker.reject(
                    DataError(str(path), "expected %d fields (%s), got %d" % (len(header), ",".join(header), len(row)), line=line)
                )
                continue
            rows.append(row)
            lines.append(line)
    except csv.Error as err:
        raise _quoting_error(str(path), text, err, start, reader.line_num) from None
    if header is None:
        raise DataError(str(path), "empty file: expected a header row with columns %s" % ", ".join(required))
    return TableRows(str(path), header, rows, lines)


def _quoting_error(path: str, text: str, err: csv.Error, start: int, stumbled: int) -> DataError:
    """A malformed-CSV error placed where the row with the broken quoting begins."""
    if stumbled <= start:
        return DataError(path, "malformed CSV: %s" % err, line=stumbled)
    # The row ran over several lines: only an open quote does that. Name the line it opened on.
    opened = _open_quote_line(text, start, stumbled)
    return DataError(
        path,
        "malformed CSV: the quoted field that opens on line %d runs on to line %d, where the parser stopped (%s); close "
        "its quote on line %d, or write a quote inside a quoted field as two quotes (\"\")" % (opened, stumbled, err, opened),
        line=opened,
    )


def _open_quote_line(text: str, start: int, stumbled: int) -> int:
    """The line where the quoted field that runs over several lines (up to ``stumbled``) opened."""
    chunk = "".join(text.splitlines(keepends=True)[start - 1: stumbled])
    line, quote_line, culprit = start, start, start
    quoted, field_start = False, True
    i = 0
    while i < len(chunk):
        char = chunk[i]
        if quoted and char == '"':
            if chunk[i + 1: i + 2] == '"':
                i += 1  # a doubled quote inside the field
            else:
                quoted = False
                if line > quote_line:
                    culprit = quote_line
        elif not quoted and char == '"' and field_start:
            quoted, quote_line = True, line
        field_start = not quoted and char in ",\r\n"
        if char == "\n" or (char == "\r" and chunk[i + 1: i + 2] != "\n"):
            line += 1
        i += 1
    return quote_line if quoted else culprit


def _check_header(path: str, header: list[str], required: list[str], has: str, line: Optional[int] = None) -> None:
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(path, "duplicate column name(s) %s in the header" % ", ".join(duplicated), line=line)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(path, "missing column(s) %s (%s: %s)" % (", ".join(repr(c) for c in missing), has, ", ".join(header)), line=line)


def read_parquet(path: Location, required: list[str]) -> TableRows:
    """Read the needed columns of a Parquet file as text cells; rows are numbered from 0."""
    if not path.is_file():
        raise DataError(str(path), "file not found")
    # lazy: pyarrow is only needed by users whose files are Parquet; `import tfrec` stays light
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(parquet_source(path))
        names = [str(n) for n in parquet.schema_arrow.names]
        _check_header(str(path), names, required, "the file has")
        table = parquet.read(columns=list(dict.fromkeys(required)))
    except (pa.ArrowException, OSError) as err:
        raise DataError(str(path), "not a readable Parquet file (%s)" % err) from None
    columns = list(dict.fromkeys(required))
    cells = [[cell_text(v) for v in table.column(name).to_pylist()] for name in columns]
    return TableRows(str(path), columns, [list(r) for r in zip(*cells)], list(range(table.num_rows)), unit=ROW)


def frame_rows(frame: Any, name: str, required: list[str]) -> TableRows:
    """The needed columns of a pandas DataFrame as text cells; rows are named by the frame's index labels."""
    header = [str(c) for c in frame.columns]
    _check_header(name, header, required, "the frame has")
    columns = list(dict.fromkeys(required))
    cells = [[cell_text(v) for v in frame.iloc[:, header.index(c)].tolist()] for c in columns]
    labels = [_label(v) for v in frame.index.tolist()]
    return TableRows(name, columns, [list(r) for r in zip(*cells)], labels, unit=ROW)


def _label(value: Any) -> Any:
    """An index label as a message shows it: integers as numbers, anything else as its text."""
    return value if isinstance(value, int) and not isinstance(value, bool) else cell_text(value)


def cell_text(value: Any) -> str:
    """A typed cell as the text a CSV would hold: missing values empty, whole floats without ".0", dates ISO 8601."""
    if isinstance(value, np.generic):
        value = value.item()  # a numpy scalar (object columns hold them) as the Python value it stands for
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != value:
            return ""
        # Integer ids in a float column (pandas turns an int column with gaps into floats): "123", not "123.0".
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
