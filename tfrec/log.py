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
  (``tfrec.search.stages.towers`` -> ``[search]``, ``tfrec.serving.server`` -> ``[serving]``).
  Warnings and errors add their level (``[training] warning: ...``); ``timestamps=True`` puts the
  time first (``tfrec serve``, a long-running process). Errors that end a command are not log
  lines: the CLI prints them to stderr whatever the level. :func:`configured` does the same for
  a block and restores what was there (the CLI uses it, so ``main()`` run in-process leaves the
  caller's logging alone).
* Progress bars (tqdm, the trainer's epoch bar) follow the ``tfrec`` logger's level: they show
  unless it is set above INFO, which is what ``--quiet`` (``configure(-1)``) does. Code that draws
  a bar asks :func:`progress_bars` besides its own ``progress`` flag.

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
from typing import Iterator, Optional, TextIO

ROOT = "tfrec"
# The name of the handler configure() installs, so a second call replaces it instead of adding one.
HANDLER_NAME = "tfrec.log"


def level_for(verbosity: int) -> int:
    """The ``tfrec`` logger's level for a verbosity: below 0 WARNING (--quiet), 0 INFO, above 0 DEBUG (--verbose)."""
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO if verbosity == 0 else logging.DEBUG


def stage(logger_name: str) -> str:
    """The stage a logger reports as: the second part of its dotted name (``tfrec.search.stages.towers`` -> ``search``)."""
    parts = logger_name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == ROOT else parts[0]


class StageFormatter(logging.Formatter):
    """``[<stage>] message``, with ``warning:`` / ``error:`` before the message at those levels and an optional time first."""

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__("%(message)s")
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        """One record as a line (a traceback, when the record has one, follows on the next lines)."""
        prefix = "[%s] " % stage(record.name)
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
    return handler


def unconfigure() -> None:
    """Undo :func:`configure`: remove its handler and leave the ``tfrec`` logger's level unset."""
    logger = logging.getLogger(ROOT)
    _remove_handler(logger)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


@contextlib.contextmanager
def configured(verbosity: int = 0, stream: Optional[TextIO] = None, *, timestamps: bool = False) -> Iterator[logging.Handler]:
    """:func:`configure` for a block; the ``tfrec`` logger's handlers and level are restored after it (the CLI run in-process)."""
    logger = logging.getLogger(ROOT)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        yield configure(verbosity, stream, timestamps=timestamps)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def progress_bars() -> bool:
    """Whether progress bars may show: not when the ``tfrec`` logger is set above INFO (``--quiet``)."""
    level = logging.getLogger(ROOT).level
    return level == logging.NOTSET or level <= logging.INFO


def show_tensorflow_info() -> None:
    """Let TensorFlow's own INFO logs through (``--verbose``): its Python logger, and its C++ ones if it is not imported yet."""
    if "tensorflow" not in sys.modules:
        # Read once when TensorFlow loads; tfrec.compat defaults it to 2 (errors only).
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    logging.getLogger("tensorflow").setLevel(logging.INFO)


def _remove_handler(logger: logging.Logger) -> None:
    for handler in [h for h in logger.handlers if h.get_name() == HANDLER_NAME]:
        logger.removeHandler(handler)
        handler.flush()
