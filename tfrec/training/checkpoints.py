"""Resumable training checkpoints: numbered ``ckpt-<global step>`` files, the newest *readable* one restored.

A checkpoint is only trusted after every tensor in it was read back (TensorFlow checks each
tensor's CRC32C on read), so a truncated ``.data`` file or a garbage ``.index`` is found before
anything is restored. Unreadable checkpoints are reported (file and error), moved into
``corrupt/`` once an older good one is found (so they never shadow the newer checkpoints that
follow); when none is readable, :class:`CheckpointError` names the directory and nothing moves.
:func:`set_aside_checkpoints` moves a run's whole checkpoint folder into a dated folder beside it,
so the run starts its training over without deleting anything (``tfrec train --restart``).
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from tfrec import compat
from tfrec.runs import RunFolder

tf = compat.tensorflow()

log = logging.getLogger(__name__)

PREFIX = "ckpt"
QUARANTINE = "corrupt"
_INDEX = re.compile(r"^%s-(\d+)\.index$" % PREFIX)
SET_ASIDE = "checkpoints-set-aside"  # <run>/checkpoints-set-aside-<UTC time>: a run's checkpoints after --restart


class CheckpointError(RuntimeError):
    """No checkpoint of a directory can be restored (all unreadable, or they do not fit the model).

    ``problem`` says what is wrong and ``directory`` where; the message adds ``hint``, how to go on
    through the Python API (the command line replaces it with the command to run).
    """

    def __init__(self, problem: str, directory: str, hint: str = "") -> None:
        self.problem, self.directory, self.hint = problem, directory, hint
        super().__init__("%s; %s" % (problem, hint) if hint else problem)


_API_HINT = "pass resume=False to start the training from scratch (it deletes them)"


def checkpoint_prefixes(directory: str) -> list[str]:
    """Prefixes of the numbered checkpoints in ``directory``, newest (highest number) first."""
    if not os.path.isdir(directory):
        return []
    numbered = []
    for name in os.listdir(directory):
        match = _INDEX.match(name)
        if match:
            numbered.append((int(match.group(1)), os.path.join(directory, name[: -len(".index")])))
    return [prefix for _, prefix in sorted(numbered, reverse=True)]


def checkpoint_number(prefix: str) -> int:
    """The number (global step) in a ``.../ckpt-<n>`` prefix."""
    return int(prefix.rsplit("-", 1)[1])


def checkpoint_files(prefix: str) -> list[str]:
    """The files that make up one checkpoint (``.index`` and ``.data-*``)."""
    return sorted(glob.glob(glob.escape(prefix) + ".index") + glob.glob(glob.escape(prefix) + ".data-*"))


def verify_checkpoint(prefix: str) -> None:
    """Read every tensor of the checkpoint at ``prefix``; raises whatever TensorFlow raises on a bad file."""
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _describe(prefix: str) -> str:
    files = checkpoint_files(prefix)
    return "%s (%s)" % (prefix, ", ".join(os.path.basename(f) for f in files) or "no files")


class TrainingCheckpoints:
    """One run's checkpoint directory for one ``tf.train.Checkpoint``: save every N steps, restore the newest good one.

    ``write_directory`` differs from ``directory`` on non-chief workers of a multi-worker run: they
    must take part in every save (it may synchronise variables) but write to a scratch folder that
    is deleted right after, so only the chief's files land in ``directory``.
    """

    def __init__(self, directory: str, checkpoint: Any, *, keep: int = 3, write_directory: Optional[str] = None) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1, got %r" % (keep,))
        self.directory = directory
        self.checkpoint = checkpoint
        self.keep = int(keep)
        self.write_directory = write_directory or directory
        self._manager: Any = None

    def restore_newest(self) -> Optional[str]:
        """Restore the newest readable checkpoint and return its prefix; None when the directory holds none.

        Unreadable ones are warned about (and moved to corrupt/ once a good one is found); all unreadable
        raises CheckpointError.
        """
        prefixes = checkpoint_prefixes(self.directory)
        if not prefixes:
            return None
        unreadable = []
        for prefix in prefixes:
            try:
                verify_checkpoint(prefix)
            except Exception as exc:  # any failure to read means the files cannot be trusted
                log.warning(
                    "checkpoint %s is unreadable and is skipped: %s: %s",
                    _describe(prefix), type(exc).__name__, _first_line(exc),
                )
                unreadable.append(prefix)
                continue
            if self.write_directory == self.directory:  # only the chief moves files of a shared directory
                for bad in unreadable:
                    self._quarantine(bad)
            status = self.checkpoint.restore(prefix)
            try:
                status.assert_existing_objects_matched()
            except AssertionError as exc:
                status.expect_partial()  # the error says it all; no per-value warnings at teardown
                summary = str(exc).split(" Showing ", 1)[0][:300]  # the rest dumps variable values
                raise CheckpointError(
                    "checkpoint %s does not fit the model being trained (another model's run directory?): %s"
                    % (prefix, summary),
                    self.directory, _API_HINT,
                ) from exc
            self._rewrite_state()
            return prefix
        # Left in place: every later resume fails the same way until the run is started over on purpose.
        raise CheckpointError(
            "no readable checkpoint in %s: all %d are corrupt or truncated (see the warnings above)" % (self.directory, len(prefixes)),
            self.directory, _API_HINT,
        )

    def save(self, number: int) -> str:
        """Write checkpoint ``ckpt-<number>`` and drop the oldest beyond ``keep``; returns its prefix."""
        if self._manager is None:
            self._rewrite_state()
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, self.write_directory, max_to_keep=self.keep, checkpoint_name=PREFIX
            )
        path = self._manager.save(checkpoint_number=int(number))
        if self.write_directory != self.directory:
            shutil.rmtree(self.write_directory, ignore_errors=True)
            self._manager = None
        return path

    def clear(self) -> int:
        """Delete this directory's numbered checkpoints and their state file (a run started over); returns how many."""
        prefixes = checkpoint_prefixes(self.directory)
        for prefix in prefixes:
            for path in checkpoint_files(prefix):
                os.remove(path)
        state = os.path.join(self.directory, "checkpoint")
        if os.path.exists(state):
            os.remove(state)
        self._manager = None
        return len(prefixes)

    def _quarantine(self, prefix: str) -> None:
        # Moved aside, not deleted: the files may matter to whoever investigates, and a newer number
        # left in place would be tried (and fail) again on every later resume.
        folder = os.path.join(self.directory, QUARANTINE)
        os.makedirs(folder, exist_ok=True)
        for path in checkpoint_files(prefix):
            shutil.move(path, os.path.join(folder, os.path.basename(path)))

    def _rewrite_state(self) -> None:
        # CheckpointManager rotates what the "checkpoint" state file lists; rebuild it from the files
        # actually present, so quarantined or garbage entries neither break it nor get rotated.
        if self.write_directory != self.directory:
            return
        prefixes = checkpoint_prefixes(self.directory)
        if not prefixes:
            state = os.path.join(self.directory, "checkpoint")
            if os.path.exists(state):
                os.remove(state)
            return
        # The CheckpointState text proto, written directly (its TF writer is deprecated) and atomically.
        # Timestamps matter: entries without one count as "preserved" and would never be rotated out.
        oldest_first = list(reversed(prefixes))
        stamps = [os.path.getmtime(p + ".index") for p in oldest_first]
        lines = ['model_checkpoint_path: "%s"' % os.path.basename(prefixes[0])]
        lines += ['all_model_checkpoint_paths: "%s"' % os.path.basename(p) for p in oldest_first]
        lines += ["all_model_checkpoint_timestamps: %r" % t for t in stamps]
        lines.append("last_preserved_timestamp: %r" % (min(stamps) - 1.0))
        temporary = os.path.join(self.directory, "checkpoint.tmp")
        with open(temporary, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(temporary, os.path.join(self.directory, "checkpoint"))


def set_aside_checkpoints(run_dir: Union[str, os.PathLike], now: Optional[datetime] = None) -> Optional[Path]:
    """Move ``<run_dir>/checkpoints`` to ``<run_dir>/checkpoints-set-aside-<UTC time>``; returns it (None: nothing to move)."""
    source = RunFolder(run_dir).checkpoints
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        if not source.exists():
            return None  # nothing there, or another worker of the same run moved it first
        target = Path(run_dir) / ("%s-%s%s" % (SET_ASIDE, stamp, "" if attempt == 0 else "-%d" % attempt))
        if target.exists():
            continue  # set aside twice in one second: take the next free name
        try:
            # One rename: a run killed here leaves the checkpoints either where they were or set aside.
            os.rename(source, target)
        except FileNotFoundError:
            return None
        except OSError:
            if target.exists():
                continue  # another process took this name in the meantime
            raise
        return target
    raise OSError("could not find a free %s-%s-<n> folder name in %s" % (SET_ASIDE, stamp, run_dir))


class BestWeights:
    """The model weights of the best epoch so far: in memory, or on disk as ``<directory>/best-<epoch>``.

    On disk (the resumable case) each new best is written under its own name and the previous
    one removed only afterwards, so a kill at any moment leaves the one the loop state names.
    """

    def __init__(self, model: Any, directory: Optional[str] = None, *, write: bool = True) -> None:
        self.model = model
        self.directory = directory
        self.write = write
        self._memory: Optional[list] = None

    def _checkpoint(self) -> Any:
        return tf.train.Checkpoint(weights=list(self.model.weights))

    def path(self, epoch: int) -> Optional[str]:
        """Where the weights of ``epoch`` are kept (None in memory)."""
        return None if self.directory is None else os.path.join(self.directory, "best-%d" % epoch)

    def save(self, epoch: int) -> None:
        """Keep the current weights as the best (epoch ``epoch``)."""
        if self.directory is None:
            self._memory = self.model.get_weights()
            return
        target = self.path(epoch) if self.write else os.path.join(self.directory + "-worker-tmp", "best")
        self._checkpoint().write(target)
        if not self.write:
            shutil.rmtree(self.directory + "-worker-tmp", ignore_errors=True)

    def prune(self, keep_epoch: int) -> None:
        """Remove the files of every best epoch but ``keep_epoch`` (call once the loop state names it)."""
        if self.directory is None or not self.write or not os.path.isdir(self.directory):
            return
        keep = os.path.basename(self.path(keep_epoch) or "")
        for name in os.listdir(self.directory):
            if name.startswith("best-") and name.split(".", 1)[0] != keep:
                os.remove(os.path.join(self.directory, name))

    def restore(self, epoch: int) -> bool:
        """Put the weights of ``epoch`` back into the model; False (with a warning) when they are lost."""
        if self.directory is None:
            if self._memory is None:
                log.warning("the best epoch's weights (epoch %d) are not in memory; keeping the last epoch's", epoch)
                return False
            self.model.set_weights(self._memory)
            return True
        path = self.path(epoch) or ""
        try:
            verify_checkpoint(path)
        except Exception as exc:  # unreadable: the last weights are still a usable model
            log.warning(
                "the best epoch's weights %s are unreadable (%s: %s); keeping the last epoch's weights",
                _describe(path), type(exc).__name__, _first_line(exc),
            )
            return False
        self._checkpoint().read(path).assert_consumed()
        return True
