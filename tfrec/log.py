"""tfrec's one logging path: every module logs to ``logging.getLogger(__name__)``; the application decides where it goes.

The rules:

* Library modules report progress and notes with ``log = logging.getLogger(__name__)`` and
  ``log.info(...)`` / ``log.warning(...)``, all under the ``tfrec`` logger. They never ``print``
  progress, never add a handler and never call ``logging.basicConfig``; ``import tfrec`` puts a
  ``NullHandler`` on the ``tfrec`` logger (the library convention), so nothing shows until an
  application asks for it.
* Results a command exists to print (``run_dir: ...``, ``export: ...``, the statistics table, a
  report's summary, search results) are printed to stdout by the CLI and :mod:`tfrec.api`, so
  stdout stays clean for scripts; the log goes to stderr.
* :func:`configure` is what the ``tfrec`` command calls (``--quiet`` / ``--verbose``), and what a
  notebook or script calls to see tfrec's progress: one handler on the ``tfrec`` logger, writing
  ``[<stage>] message`` lines to stderr, where the stage is the second part of the logger's name
  (``tfrec.search.stages.towers`` -> ``[search]``, ``tfrec.serving.server`` -> ``[serving]``),
  or the stage a record names (:func:`as_stage`: ``tfrec export``'s steps all show as ``[export]``).
  Warnings and errors add their level (``[training] warning: ...``); ``timestamps=True`` puts the
  time first (``tfrec serve``, a long-running process). Errors that end a command are not log
  lines: the CLI prints them to stderr whatever the level. :func:`configured` does the same for
  a block and restores what was there (the CLI uses it, so ``main()`` run in-process leaves the
  caller's logging alone).
* Progress bars (tqdm, the trainer's epoch bar) follow the ``tfrec`` logger's level: they show
  unless it is set above INFO, which is what ``--quiet`` (``configure(-1)``) does. Code that draws
  a bar asks :func:`progress_bars` besides its own ``progress`` flag. Long steps use
  :class:`Progress`: a tqdm bar on a terminal; off a terminal (a log file, a pipe, CI) a
  ``done/total, rate, ETA`` line every :data:`PROGRESS_SECONDS` seconds and at the end, never
  ``\r`` frames.
* Third-party libraries are quiet unless asked: :mod:`tfrec.compat` defaults TensorFlow's C++
  log level to fatal-only and transformers' to errors before either loads, and :func:`configure`
  sets the Python loggers of ``transformers`` and ``absl`` to errors only; with
  ``verbosity > 0`` (``--verbose``) they and TensorFlow's INFO lines show again
  (:func:`show_tensorflow_info`).

    import tfrec.log
    tfrec.log.configure()            # INFO: the lines `tfrec train` shows
    tfrec.log.configure(-1)          # WARNING only, no progress bars
    tfrec.log.configure(1)           # DEBUG too
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional, TextIO

ROOT = "tfrec"
# The name of the handler configure() installs, so a second call replaces it instead of adding one.
HANDLER_NAME = "tfrec.log"
# Python loggers of libraries tfrec loads whose notices (transformers' "TensorFlow classes are
# deprecated", absl's saving notes) are not the user's business unless they ask (--verbose).
THIRD_PARTY_LOGGERS = ("transformers", "absl")
# Seconds between two progress lines off a terminal.
PROGRESS_SECONDS = 30.0
# A record attribute that names its stage when the module's name does not (see as_stage).
STAGE = "stage"


def level_for(verbosity: int) -> int:
    """The ``tfrec`` logger's level for a verbosity: below 0 WARNING (--quiet), 0 INFO, above 0 DEBUG (--verbose)."""
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO if verbosity == 0 else logging.DEBUG


def stage(logger_name: str) -> str:
    """The stage a logger reports as: the second part of its dotted name (``tfrec.search.stages.towers`` -> ``search``)."""
    parts = logger_name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == ROOT else parts[0]


def as_stage(logger: logging.Logger, name: str) -> logging.LoggerAdapter:
    """``logger``, with its lines shown as stage ``name``: one user-facing step (``[export]``) that spans several modules."""
    return logging.LoggerAdapter(logger, {STAGE: name})


class StageFormatter(logging.Formatter):
    """``[<stage>] message``, with ``warning:`` / ``error:`` before the message at those levels and an optional time first."""

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__("%(message)s")
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        """One record as a line (a traceback, when the record has one, follows on the next lines)."""
        prefix = "[%s] " % (getattr(record, STAGE, None) or stage(record.name))
        if record.levelno >= logging.WARNING:
            prefix += "%s: " % record.levelname.lower()
        if self.timestamps:
            prefix = "%s %s" % (self.formatTime(record), prefix)
        return prefix + super().format(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record, so a later redirect (pytest's capture, a notebook) is followed."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure(verbosity: int = 0, stream: Optional[TextIO] = None, *, timestamps: bool = False) -> logging.Handler:
    """Show tfrec's log: one handler on the ``tfrec`` logger (to ``stream``, default stderr) at the level of ``verbosity``.

    Calling it again replaces the handler it added before (never two). Records stop at the ``tfrec``
    logger: libraries that tfrec loads (absl, TensorFlow) put handlers on the root logger, which
    would print every line a second time. An application that wants tfrec's records on its own
    root handlers leaves this function alone. Returns the handler.
    """
    logger = logging.getLogger(ROOT)
    _remove_handler(logger)
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(StageFormatter(timestamps=timestamps))
    logger.addHandler(handler)
    logger.setLevel(level_for(verbosity))
    logger.propagate = False
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbosity > 0 else logging.ERROR)
    return handler


def unconfigure() -> None:
    """Undo :func:`configure`: remove its handler and leave the ``tfrec`` logger's level unset."""
    logger = logging.getLogger(ROOT)
    _remove_handler(logger)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


@contextlib.contextmanager
def configured(verbosity: int = 0, stream: Optional[TextIO] = None, *, timestamps: bool = False) -> Iterator[logging.Handler]:
    """:func:`configure` for a block; the ``tfrec`` logger's handlers and level are restored after it (the CLI run in-process)."""
    logger = logging.getLogger(ROOT)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    others = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    try:
        yield configure(verbosity, stream, timestamps=timestamps)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        for name, other in others.items():
            logging.getLogger(name).setLevel(other)


def progress_bars() -> bool:
    """Whether progress bars may show: not when the ``tfrec`` logger is set above INFO (``--quiet``)."""
    level = logging.getLogger(ROOT).level
    return level == logging.NOTSET or level <= logging.INFO


def show_tensorflow_info() -> None:
    """Let TensorFlow's own INFO logs through (``--verbose``): its Python logger, its C++ ones and transformers' if not imported yet."""
    if "tensorflow" not in sys.modules:
        # Read once when TensorFlow loads; tfrec.compat defaults it to 3 (fatal only).
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if "transformers" not in sys.modules:
        # Read when transformers first logs; tfrec.compat defaults it to "error".
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"
    logging.getLogger("tensorflow").setLevel(logging.INFO)


def verbose() -> bool:
    """Whether the user asked for everything (``--verbose``: the ``tfrec`` logger at DEBUG), third-party notices included."""
    return logging.getLogger(ROOT).isEnabledFor(logging.DEBUG)


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal or a notebook (progress bars) rather than a file or pipe (progress lines)."""
    if type(stream).__module__.startswith("ipykernel"):
        return True  # Jupyter's output stream says it is no TTY, but tqdm.auto draws a widget there
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def duration(seconds: float) -> str:
    """A short human duration: ``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min %02d s" % divmod(seconds, 60)
    return "%d h %02d min" % (seconds // 3600, seconds % 3600 // 60)


class Progress:
    """The progress of one long step: a tqdm bar on a terminal, periodic log lines elsewhere.

    On a terminal (``stream``, default stderr), with ``show`` and :func:`progress_bars`, a tqdm bar
    draws. Off a terminal, ``logger`` gets an INFO line every ``every`` seconds,
    ``<what>: 40/120 batch (33%), 2.1 batch/s, ETA 38 s[, postfix]``, and one at the end when it
    logged any before (a step shorter than ``every`` stays silent: the caller's own line covers
    it; ``end_line=False`` leaves the end to the caller, e.g. an epoch's summary). ``clock`` is
    injectable for tests. Use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        what: str,
        total: Optional[int] = None,
        *,
        logger: Optional[logging.Logger] = None,
        unit: str = "item",
        initial: int = 0,
        show: bool = True,
        every: float = PROGRESS_SECONDS,
        stream: Optional[TextIO] = None,
        leave: bool = True,
        end_line: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = self.initial = int(initial)
        self.every, self.clock, self.end_line = float(every), clock, end_line
        self.log = logger or logging.getLogger(ROOT)
        self.lines = 0  # progress lines logged so far
        self.postfix: dict[str, str] = {}
        self.started = self._last = clock()
        self._warm: Optional[tuple[float, int]] = None  # (time, done) at the first update
        self._closed = False
        stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        self._logs_lines = show and progress_bars()
        if self._logs_lines and is_terminal(stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=what, unit=unit, file=stream, dynamic_ncols=True, leave=leave)
            self._logs_lines = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1, postfix: Optional[Mapping[str, Any]] = None) -> None:
        """``n`` more units done; ``postfix`` values (``{"loss": 0.41}``) show after the numbers."""
        self.done += n
        if self._warm is None:
            self._warm = (self.clock(), self.done)
        if postfix:
            self.postfix = {k: _short(v) for k, v in postfix.items()}
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(self.postfix, refresh=False)
            self._bar.update(n)
        elif self._logs_lines and self.done > self._warm[1] and self.clock() - self._last >= self.every:
            # Not on the first update alone: its rate would be the tracing's ("ETA 35 min" for a one-minute epoch).
            self._log_line()

    def rate(self) -> float:
        """Units per second since the first update: the first one often pays for tracing or loading, later ones do not."""
        now = self.clock()
        if self._warm is not None and now > self._warm[0] and self.done > self._warm[1]:
            return (self.done - self._warm[1]) / (now - self._warm[0])
        elapsed = now - self.started
        return (self.done - self.initial) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The progress line as it stands (``<what>: done/total unit (pct), rate unit/s, ETA t``)."""
        rate = self.rate()
        count = "%d/%d %s (%d%%)" % (self.done, self.total, self.unit, 100 * self.done // max(self.total, 1)) \
            if self.total else "%d %s" % (self.done, self.unit)
        parts = [count, "%.3g %s/s" % (rate, self.unit)]
        if self.total and rate > 0 and self.done < self.total:
            parts.append("ETA %s" % duration((self.total - self.done) / rate))
        parts += ["%s %s" % kv for kv in self.postfix.items()]
        return "%s: %s" % (self.what, ", ".join(parts))

    def close(self) -> None:
        """End of the step: close the bar, or log the final line (when lines were logged before)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._logs_lines and self.lines and self.end_line:
            total = "/%d" % self.total if self.total else ""
            self.log.info("%s: %d%s %s in %s (%.3g %s/s)", self.what, self.done, total, self.unit,
                          duration(self.clock() - self.started), self.rate(), self.unit)

    def _log_line(self) -> None:
        self._last = self.clock()
        self.lines += 1
        self.log.info("%s", self.line())


def _short(value: Any) -> str:
    return "%.4g" % value if isinstance(value, float) else str(value)


def _remove_handler(logger: logging.Logger) -> None:
    for handler in [h for h in logger.handlers if h.get_name() == HANDLER_NAME]:
        logger.removeHandler(handler)
        handler.flush()
