"""``tfrec export --check``: will stock TensorFlow Serving load and run this export?

TF Serving cannot run here, so the check does the closest thing: a fresh Python process that
imports only TensorFlow and tensorflow-text (``conformance_worker.py``, run as a file so tfrec is
never imported there) loads each export with tag ``serve``, compares the ops its graph and function
library use with the registered ops (rejecting ScaNN and Python-callback ops), checks every
signature's dtypes and batch dimension, and replays the warm-up file through every signature.
This module starts that process and turns its JSON report into a :class:`ConformanceReport`.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from tfrec.log import as_stage, duration

WORKER = Path(__file__).resolve().with_name("conformance_worker.py")
# What the worker puts before a step line on stderr (conformance_worker.STEP_PREFIX; the worker is
# never imported here: it must run without tfrec).
STEP_PREFIX = "tfrec-check-step: "

log = logging.getLogger(__name__)
export_log = as_stage(log, "export")  # the steps of `tfrec export --check`


@dataclass
class ModelReport:
    """The findings for one model version."""

    model: str
    version: int
    path: str
    ops: list[str] = field(default_factory=list)
    unregistered_ops: list[str] = field(default_factory=list)
    rejected_ops: list[str] = field(default_factory=list)
    # {key: {"method", "inputs": {name: {"dtype", "shape", "dense"}}, "outputs": {...}, "examples_run"}}
    signatures: dict[str, dict[str, Any]] = field(default_factory=dict)
    warmup_records: int = 0
    warmup_replayed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing stops TF Serving from loading and serving this version."""
        return not self.problems

    def lines(self) -> list[str]:
        """Human-readable summary: status, signatures, warm-up, problems."""
        out = ["%s v%d: %s (%d ops, warm-up %d/%d replayed)" % (
            self.model, self.version, "OK" if self.ok else "FAILED", len(self.ops), self.warmup_replayed, self.warmup_records)]
        for key, sig in self.signatures.items():
            out.append("  %s [%s]: %s -> %s; %d example(s) run" % (
                key, sig.get("method", "?").rsplit("/", 1)[-1], _tensors(sig.get("inputs", {})), _tensors(sig.get("outputs", {})),
                sig.get("examples_run", 0)))
        out += ["  - %s" % p for p in self.problems]
        return out


@dataclass
class ConformanceReport:
    """The findings for an export folder: one :class:`ModelReport` per checked version."""

    export_dir: str
    models: list[ModelReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # not tied to one model: missing models, crashes, imports
    seconds: float = 0.0
    tensorflow: str = ""

    @property
    def ok(self) -> bool:
        """True when at least one model was checked and nothing failed."""
        return bool(self.models) and not self.problems and all(m.ok for m in self.models)

    def model(self, name: str, version: Optional[int] = None) -> ModelReport:
        """The report of ``name`` (its newest checked version, or ``version``)."""
        matches = [m for m in self.models if m.model == name and (version is None or m.version == version)]
        if not matches:
            checked = ", ".join("%s v%d" % (m.model, m.version) for m in self.models) or "none"
            raise KeyError("no report for model %r%s (checked: %s)" % (name, "" if version is None else " v%d" % version, checked))
        return max(matches, key=lambda m: m.version)

    def lines(self) -> list[str]:
        """Human-readable summary of the whole check."""
        head = "TF Serving conformance of %s: %s (%d model version(s), %.1f s%s)" % (
            self.export_dir, "OK" if self.ok else "FAILED", len(self.models), self.seconds,
            ", TensorFlow %s" % self.tensorflow if self.tensorflow else "")
        out = [head] + ["- %s" % p for p in self.problems]
        for m in self.models:
            out += m.lines()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _tensors(infos: dict[str, dict[str, Any]]) -> str:
    def shape(s: Optional[list]) -> str:
        return "?" if s is None else "[%s]" % ",".join("None" if d is None else str(d) for d in s)

    return ", ".join("%s %s%s" % (name, i.get("dtype", "?"), shape(i.get("shape"))) for name, i in infos.items()) or "(none)"


def _from_worker(export_dir: str, data: dict[str, Any], seconds: float) -> ConformanceReport:
    fields = set(ModelReport.__dataclass_fields__)
    return ConformanceReport(
        export_dir=export_dir,
        models=[ModelReport(**{k: v for k, v in m.items() if k in fields}) for m in data.get("models", [])],
        problems=list(data.get("problems", [])),
        seconds=seconds,
        tensorflow=str(data.get("tensorflow", "")),
    )


def worker_command(export_dir: Path, models: Optional[Sequence[str]] = None, all_versions: bool = False) -> list[str]:
    """The command line of the worker process (run by file path: tfrec is never imported there)."""
    command = [sys.executable, str(WORKER), str(Path(export_dir).resolve())]
    for name in models or ():
        command += ["--model", str(name)]
    if all_versions:
        command.append("--all-versions")
    return command


def check_export(
    export_dir: Path,
    models: Optional[Sequence[str]] = None,
    timeout: float = 600,
    all_versions: bool = False,
) -> ConformanceReport:
    """Check an export folder in a fresh TensorFlow + tensorflow-text process (newest version of each model by default)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError("export folder %s does not exist" % export_dir)
    if timeout <= 0:
        raise ValueError("timeout must be positive, got %r" % (timeout,))
    # TFREC_CHECK_PARENT: the worker exits when this process dies (a SIGKILLed export leaves no worker running)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", TFREC_CHECK_PARENT=str(os.getpid()))
    started = time.monotonic()
    worker = subprocess.Popen(worker_command(export_dir, models, all_versions), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    # Both pipes are read while the worker runs: stderr carries its steps, and a full pipe would stall it.
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [threading.Thread(target=lambda: stdout.append(worker.stdout.read()), daemon=True),
               threading.Thread(target=_read_steps, args=(worker.stderr, stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        returncode = worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        return ConformanceReport(str(export_dir), problems=["the conformance worker did not finish within %g s" % timeout],
                                 seconds=time.monotonic() - started)
    finally:
        for reader in readers:
            reader.join(timeout=10)
    seconds = time.monotonic() - started
    out = "".join(stdout).strip()
    try:
        data = json.loads(out.splitlines()[-1]) if out else None
    except ValueError:
        data = None
    if returncode != 0 or not isinstance(data, dict):
        tail = " | ".join(stderr[-5:])
        return ConformanceReport(str(export_dir), problems=["the conformance worker exited with code %d and no report: %s"
                                                            % (returncode, tail or "(no output)")], seconds=seconds)
    return _from_worker(str(export_dir), data, seconds)


def _read_steps(stream: Any, lines: list[str]) -> None:
    """Log the worker's steps as they come (``[export] checking search_ranker v3 (2/2) ...``); keep its other lines."""
    for raw in stream:
        line = raw.rstrip("\n")
        if not line.startswith(STEP_PREFIX):
            if line.strip():
                lines.append(line.strip())
                log.debug("check worker: %s", line)
            continue
        try:
            step = json.loads(line[len(STEP_PREFIX):])
            what = "%s v%s (%s/%s)" % (step["model"], step["version"], step["index"], step["total"])
        except (ValueError, KeyError, TypeError):
            continue
        if step.get("event") == "checking":
            export_log.info("checking %s ...", what)
        elif step.get("event") == "checked":
            export_log.info("checked %s: %s in %s", what, "OK" if step.get("ok") else "FAILED", duration(float(step.get("seconds", 0))))
