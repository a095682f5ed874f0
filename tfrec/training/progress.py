"""What a training run shows while it runs: a per-epoch progress bar (or one line per epoch) and TensorBoard summaries."""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, TextIO

from tfrec import compat
from tfrec.log import progress_bars

tf = compat.tensorflow()

log = logging.getLogger(__name__)


def say(message: str, *, show: bool) -> None:
    """Log ``message``: at INFO when ``show`` (a line `tfrec train` shows), else at DEBUG (shown by ``--verbose``)."""
    log.log(logging.INFO if show else logging.DEBUG, message)


def format_logs(logs: Mapping[str, float]) -> str:
    """``key=value`` pairs in a short form for one line."""
    return " ".join("%s=%.4g" % (k, v) for k, v in logs.items())


class EpochProgress:
    """One epoch's progress: a tqdm bar (loss, examples/s) on a terminal, and a log line with the epoch's numbers at the end.

    The bar draws on ``stream`` (default stderr) when ``show``, the stream is a terminal and
    :func:`tfrec.log.progress_bars` allows it (not under ``--quiet``).
    """

    def __init__(
        self,
        epoch: int,
        epochs: int,
        *,
        total_steps: Optional[int],
        initial_step: int = 0,
        show: bool = True,
        stream: Optional[TextIO] = None,
    ) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.show = show
        self.stream = stream or sys.stderr
        self.examples = 0.0
        self.started = time.perf_counter()
        self._bar: Any = None
        if show and progress_bars() and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=initial_step, desc="epoch %d/%d" % (epoch + 1, epochs),
                unit="step", file=self.stream, dynamic_ncols=True, leave=True,
            )

    def update(self, examples: float, loss: float) -> None:
        """One step done: ``examples`` trained in it, its ``loss``."""
        self.examples += examples
        if self._bar is not None:
            rate = self.examples / max(time.perf_counter() - self.started, 1e-9)
            self._bar.set_postfix(loss="%.4g" % loss, examples_s="%.0f" % rate, refresh=False)
            self._bar.update(1)

    def close(self, summary: Mapping[str, float]) -> None:
        """End of the epoch: close the bar and log the epoch's numbers once."""
        if self._bar is not None:
            self._bar.close()
        say("epoch %d/%d: %s" % (self.epoch + 1, self.epochs, format_logs(summary)), show=self.show)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Summaries:
    """TensorBoard event files in ``directory`` (nothing at all when it is None, or on non-chief workers)."""

    def __init__(self, directory: Optional[str], *, enabled: bool = True) -> None:
        self._writer = tf.summary.create_file_writer(directory) if directory and enabled else None

    @property
    def active(self) -> bool:
        """Whether anything is written."""
        return self._writer is not None

    def text(self, name: str, text: str, step: int) -> None:
        """A text summary (e.g. the resolved config), shown as Markdown in a code block so YAML stays readable."""
        if self._writer is None:
            return
        with self._writer.as_default():
            tf.summary.text(name, "```\n%s\n```" % text, step=step)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """Scalars named ``prefix/key`` at ``step``."""
        if self._writer is None:
            return
        with self._writer.as_default():
            for key, value in values.items():
                tf.summary.scalar("%s/%s" % (prefix, key), float(value), step=step)

    def flush(self) -> None:
        """Write pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@dataclass
class StageTimer:
    """Seconds per named stage of a job, in the order they ran (metrics.json's timings), logged to the job's logger."""

    log: logging.Logger
    announce: bool = False  # also log "<stage> ..." when a stage starts
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block and log how long it took."""
        if self.announce:
            self.log.info("%s ...", name)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.log.info("%s: %.1f s", name, self.seconds[name])
