"""Publishing the models of one export together: one version number for all of them, all or nothing.

* ``ExportSet(export_dir, names, run=...)`` takes the export folder's lock (``.tfrec-export.lock``),
  finishes a publish that a killed export left half done, removes the ``.N.tmp-*`` folders of dead
  exports, and picks one version for every model: one more than the newest version of any of them.
* ``save()`` writes a model to ``<model>/.N.tmp-<pid>-*`` with a marker,
  ``assets.extra/tfrec_export.json`` (run, export id, the models of the set). Leaving the ``with``
  block without an error publishes: a journal (``.tfrec-publish.json``) lists the renames, each
  temporary folder is renamed to ``<model>/N``, then the journal is removed. An error removes the
  temporary folders, so a server polling the folder sees every model of the set or none.
* ``version_runs(export_dir)`` reads the markers: ``tfrec.serving.deploy`` never labels two versions of
  one run "stable" and "canary".
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; stale folders are then recognised by their dead owner only
    fcntl = None  # type: ignore[assignment]

from tfrec.files import write_bytes_atomic
from tfrec.log import as_stage, duration
from tfrec.serving.savedmodel import folder_mb, next_version, write_saved_model

log = logging.getLogger(__name__)
export_log = as_stage(log, "export")  # the steps of `tfrec export`, whichever module runs them

LOCK_FILE = ".tfrec-export.lock"
JOURNAL_FILE = ".tfrec-publish.json"
MARKER_FILE = "tfrec_export.json"  # under assets.extra/, beside the warm-up file
STALE_SECONDS = 600.0  # a temporary folder without an owner pid (older tfrec) is left alone until this old
_TMP = re.compile(r"^\.(\d+)\.tmp-(?:(\d+)-)?")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest_mtime(path: Path) -> float:
    newest = 0.0
    for root, _, files in os.walk(path):
        for entry in [root] + [os.path.join(root, f) for f in files]:
            try:
                newest = max(newest, os.stat(entry).st_mtime)
            except OSError:
                pass
    return newest


def _model_dirs(export_dir: Path) -> list[Path]:
    """Folders that may hold versions: ``<model>/`` and one level below (``scann/<model>/``)."""
    out = []
    for first in sorted(p for p in export_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out.append(first)
        out += sorted(p for p in first.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.name.isdigit())
    return out


def stale_temporary_folders(export_dir: Path, started: float) -> list[Path]:
    """``.N.tmp-*`` folders older than ``started`` whose export is dead (its pid gone, or old enough without one)."""
    stale = []
    for model_dir in _model_dirs(Path(export_dir)):
        for entry in model_dir.iterdir():
            match = _TMP.match(entry.name)
            if not match or not entry.is_dir():
                continue
            newest = _newest_mtime(entry)
            if newest >= started:
                continue
            pid = match.group(2)
            dead = not _pid_alive(int(pid)) if pid and int(pid) != os.getpid() else False
            if dead or (not pid and newest < started - STALE_SECONDS):
                stale.append(entry)
    return stale


def read_marker(version_dir: Path) -> dict[str, Any]:
    """The export marker of a version folder ({} for versions written without one)."""
    try:
        data = json.loads((Path(version_dir) / "assets.extra" / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def version_runs(export_dir: Path) -> dict[str, dict[int, str]]:
    """{model: {version: run}} for the versions of an export folder whose marker names their run."""
    out: dict[str, dict[int, str]] = {}
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        return out
    for model_dir in _model_dirs(export_dir):
        for version in (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            run = read_marker(version).get("run")
            if run:
                out.setdefault(str(model_dir.relative_to(export_dir).as_posix()), {})[int(version.name)] = str(run)
    return out


class ExportSet:
    """Writes several models under one version number and publishes them together (a ``with`` block)."""

    def __init__(self, export_dir: Path, names: Sequence[str], run: str = "", version: Optional[int] = None) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError("an export set needs distinct model names, got %r" % (list(names),))
        self.export_dir = Path(export_dir)
        self.names = list(names)
        self.run = str(run)
        self.requested = None if version is None else int(version)
        self.version = 0
        self.id = uuid.uuid4().hex
        self.published: dict[str, dict[str, Any]] = {}  # {name: {"path", "mb"}} once published
        self._staged: dict[str, Path] = {}
        self._sizes: dict[str, float] = {}
        self._lock: Any = None
        self._publishing = False

    def __enter__(self) -> "ExportSet":

        started = time.time()
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            recover(self.export_dir)
            for folder in stale_temporary_folders(self.export_dir, started):
                log.warning("removing %s, left by an export that did not finish", folder)
                shutil.rmtree(folder, ignore_errors=True)
            self.version = self.requested or max(next_version(self.export_dir / n) for n in self.names)
            if self.version < 1:
                raise ValueError("versions are positive integers, got %d" % self.version)
            for name in self.names:
                final = self.export_dir / name / str(self.version)
                if final.exists():
                    raise FileExistsError("%s already exists: versions are never overwritten (pick another version)" % final)
        except BaseException:
            self._release()
            raise
        return self

    def save(self, name: str, module: Any, signatures: Mapping[str, Any], warmup: Iterable[Any] = (),
             methods: Optional[Mapping[str, str]] = None, extra_files: Optional[Mapping[str, bytes]] = None,
             options: Optional[Any] = None) -> Path:
        """Write one model of the set to its temporary folder; returns the folder it will be published as."""

        if not self.version:
            raise RuntimeError("use the export set in a with block: `with ExportSet(...) as export: export.save(...)`")
        if name not in self.names or name in self._staged:
            raise ValueError("model %r is not an unsaved model of this export set (%s)" % (name, ", ".join(self.names)))
        model_dir = self.export_dir / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".%d.tmp-%d-" % (self.version, os.getpid()), dir=model_dir))
        self._staged[name] = tmp
        marker = {"run": self.run, "export": self.id, "models": self.names,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        files = dict(extra_files or {})
        files[MARKER_FILE] = json.dumps(marker, indent=1).encode("utf-8")
        # Tracing and writing a model with a text encoder takes minutes: say so before and after.
        step = "%s v%d (%d/%d)" % (name, self.version, len(self._staged), len(self.names))
        export_log.info("%s: writing the SavedModel ...", step)
        started = time.monotonic()
        write_saved_model(module, tmp, signatures, warmup, methods, files, options)
        # mkdtemp makes the folder owner-only; a server running as another user must read it.
        os.chmod(tmp, 0o755)
        self._sizes[name] = folder_mb(tmp)
        export_log.info("%s: written in %s (%.1f MB)", step, duration(time.monotonic() - started), self._sizes[name])
        return model_dir / str(self.version)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if kind is None:
                missing = [n for n in self.names if n not in self._staged]
                if missing:
                    raise RuntimeError("export set closed before %s was saved: nothing published" % ", ".join(missing))
                self._publish()
        finally:
            if not self._publishing:  # a publish cut short is finished by the next export (its journal says how)
                for tmp in self._staged.values():
                    shutil.rmtree(tmp, ignore_errors=True)
            self._release()

    def _publish(self) -> None:
        moves = [(self._staged[n], self.export_dir / n / str(self.version)) for n in self.names]
        journal = {"export": self.id, "version": self.version, "pid": os.getpid(),
                   "moves": [[str(t.relative_to(self.export_dir)), str(f.relative_to(self.export_dir))] for t, f in moves]}

        write_bytes_atomic(self.export_dir / JOURNAL_FILE, json.dumps(journal).encode("utf-8"))
        self._publishing = True
        for tmp, final in moves:
            os.replace(tmp, final)
        (self.export_dir / JOURNAL_FILE).unlink()
        self.published = {n: {"path": str(f), "mb": self._sizes[n]} for n, (_, f) in zip(self.names, moves)}

    def _acquire(self) -> None:
        if fcntl is None:
            return
        self._lock = open(self.export_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another export is writing to %s; waiting for it to finish", self.export_dir)
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None


def recover(export_dir: Path) -> Optional[str]:
    """Finish (or, if its files are gone, roll back) a publish a killed export left half done; says what it did."""
    journal_path = Path(export_dir) / JOURNAL_FILE
    if not journal_path.is_file():
        return None
    try:
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
        moves = [(Path(export_dir) / t, Path(export_dir) / f) for t, f in journal["moves"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError("%s is unreadable (%s): check the versions it names by hand, then delete it"
                           % (journal_path, exc)) from exc
    if all(final.exists() or tmp.is_dir() for tmp, final in moves):
        for tmp, final in moves:
            if not final.exists():
                os.replace(tmp, final)
        done = "finished publishing version %s of %s" % (journal.get("version"), ", ".join(str(f.parent.name) for _, f in moves))
    else:  # a temporary folder is gone: the set cannot be completed, so none of it stays
        for tmp, final in moves:
            shutil.rmtree(tmp, ignore_errors=True)
            if final.is_dir() and read_marker(final).get("export") == journal.get("export"):
                shutil.rmtree(final)
        done = "rolled back the incomplete version %s" % journal.get("version")
    journal_path.unlink()
    log.warning("%s: %s (an earlier export was stopped while publishing)", export_dir, done)
    return done


def save_versioned(
    module: Any,
    export_dir: Path,
    name: str,
    signatures: Mapping[str, Any],
    warmup: Iterable[Any] = (),
    methods: Optional[Mapping[str, str]] = None,
    extra_files: Optional[Mapping[str, bytes]] = None,
    version: Optional[int] = None,
    options: Optional[Any] = None,
    run: str = "",
) -> Path:
    """Write ``module`` to ``export_dir/name/<version>/`` through a temporary folder and a rename.

    ``signatures`` maps signature keys to tf.functions; ``methods`` sets non-Predict method names
    (e.g. ``{"regress": REGRESS_METHOD}``); ``warmup`` PredictionLogs go to the warm-up file;
    ``extra_files`` ({relative path: bytes}) land under ``assets.extra/``; ``options`` are
    ``tf.saved_model.SaveOptions`` (e.g. a namespace whitelist for custom ops); ``run`` names the
    run it comes from. Several models of one run: :class:`ExportSet`.
    """
    with ExportSet(export_dir, [name], run=run, version=version) as export:
        export.save(name, module, signatures, warmup, methods, extra_files, options)
    return Path(export.published[name]["path"])
