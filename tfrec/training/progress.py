"""What a training run shows while it runs: a per-epoch progress bar (off a terminal, a line every ~30 s) and TensorBoard summaries."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, TextIO

from tfrec import compat
from tfrec.log import Progress

tf = compat.tensorflow()

log = logging.getLogger(__name__)


def say(message: str, *, show: bool) -> None:
    """Log ``message``: at INFO when ``show`` (a line `tfrec train` shows), else at DEBUG (shown by ``--verbose``)."""
    log.log(logging.INFO if show else logging.DEBUG, message)


def format_logs(logs: Mapping[str, float]) -> str:
    """``key=value`` pairs in a short form for one line."""
    return " ".join("%s=%.4g" % (k, v) for k, v in logs.items())


class EpochProgress:
    """One epoch's progress (:class:`tfrec.log.Progress`) and a log line with the epoch's numbers at the end.

    On a terminal (``stream``, default stderr) a tqdm bar with the loss and examples/s draws,
    when ``show`` and :func:`tfrec.log.progress_bars` allow it (not under ``--quiet``); off a
    terminal the same numbers come as a ``[training] epoch 1/3: 40/120 step (33%), ...`` line
    every ~30 s. ``clock`` is injectable for tests.
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
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.show = show
        self.examples = 0.0
        self.clock = clock
        self.started = clock()
        self._first: Optional[tuple[float, float]] = None  # (time, examples) at the end of the first step
        self._progress = Progress("epoch %d/%d" % (epoch + 1, epochs), total_steps, logger=log, unit="step",
                                  initial=initial_step, show=show, stream=stream, end_line=False, clock=clock)

    def update(self, examples: float, loss: float) -> None:
        """One step done: ``examples`` trained in it, its ``loss``."""
        now = self.clock()
        if self._first is None:  # the first step pays for tracing: the rate counts from its end
            self._first = (now, examples)
        self.examples += examples
        since, first = self._first
        rate = (self.examples - first) / (now - since) if now > since else examples / max(now - self.started, 1e-9)
        self._progress.update(1, {"loss": "%.4g" % loss, "examples/s": "%.0f" % rate})

    def close(self, summary: Mapping[str, float]) -> None:
        """End of the epoch: close the bar and log the epoch's numbers once."""
        self._progress.close()
        say("epoch %d/%d: %s" % (self.epoch + 1, self.epochs, format_logs(summary)), show=self.show)


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
