"""The run folder: the one place that names every artifact of a run, and its ``run.json`` record.

A run folder is ``<run.output_dir>/<name>-<UTC timestamp>``. :class:`RunFolder` spells every path
in it (training writes them, export / evaluate / compare / warm start read them), and ``run.json``
records the run's kind, status (``running`` while training, then ``finished`` or ``failed``), the
tfrec version and a hash of the resolved config, so readers never guess a run's kind from which
files happen to exist. Every JSON file of a run is written atomically by :func:`write_json`.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from tfrec.config.loader import LoadedConfig, config_to_dict, load_config, save_config
from tfrec.files import write_bytes_atomic
from tfrec.version import __version__

CONFIG_FILE = "config.yaml"
STATS_FILE = "data_stats.json"
RUN_FILE = "run.json"

SEARCH = "search"
RECOMMENDATION = "recommendation"
MOVIELENS = "movielens-multitask"
KINDS = (SEARCH, RECOMMENDATION, MOVIELENS)
RUNNING, FINISHED, FAILED = "running", "finished", "failed"


class RunIncomplete(FileNotFoundError):
    """A run whose training did not finish: run.json says running or failed, or a file training writes is missing."""


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run's artifacts (nothing is created by naming it)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- the run as a whole
    @property
    def config(self) -> Path:
        """The resolved config the run trained with."""
        return self.root / CONFIG_FILE

    @property
    def record_file(self) -> Path:
        """run.json: kind, status, version, config hash."""
        return self.root / RUN_FILE

    @property
    def stats(self) -> Path:
        """The data statistics printed at the start of training."""
        return self.root / STATS_FILE

    @property
    def metrics(self) -> Path:
        """metrics.json: every system's numbers on the evaluation split."""
        return self.root / "metrics.json"

    @property
    def per_query(self) -> Path:
        """Per-query (per-user) metric arrays that `tfrec compare` pairs."""
        return self.root / "per_query.npz"

    @property
    def top_results(self) -> Path:
        """A search run's final top results for the report's query tables."""
        return self.root / "top_results.json"

    @property
    def report_html(self) -> Path:
        """The self-contained HTML report."""
        return self.root / "report.html"

    @property
    def report_markdown(self) -> Path:
        """The Markdown report."""
        return self.root / "report.md"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard logs, one folder per trained model."""
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        """Training checkpoints, one folder per trained model (dropped once the model is saved)."""
        return self.root / "checkpoints"

    def checkpoint_dir(self, model: str) -> Path:
        """Checkpoints of one trained model."""
        return self.checkpoints / model

    def tensorboard_dir(self, model: str) -> Path:
        """TensorBoard logs of one trained model."""
        return self.tensorboard / model

    # -- search runs
    @property
    def lexical(self) -> Path:
        """The in-graph BM25 index."""
        return self.root / "lexical"

    @property
    def search_settings(self) -> Path:
        """search_config.json: the hybrid weights and the number of candidates re-ranked."""
        return self.root / "search_config.json"

    @property
    def retrieval_weights(self) -> Path:
        """Checkpoint prefix of the two towers."""
        return self.root / "retrieval" / "weights"

    @property
    def retrieval_vocabulary(self) -> Path:
        """The two towers' product-id vocabulary, one id per line."""
        return self.root / "retrieval" / "product_vocabulary.txt"

    @property
    def catalog_vectors(self) -> Path:
        """The fine-tuned product vectors of the whole catalog [N, D]."""
        return self.root / "retrieval" / "catalog_vectors.npy"

    @property
    def ranker_weights(self) -> Path:
        """Checkpoint prefix of the feature ranker."""
        return self.root / "ranker" / "weights"

    @property
    def ranker_vocabulary(self) -> Path:
        """The ranker's product-id vocabulary, one id per line (empty: no id feature)."""
        return self.root / "ranker" / "product_vocabulary.txt"

    # -- sequential recommendation runs
    @property
    def recommender_weights(self) -> Path:
        """Checkpoint prefix of the history model."""
        return self.root / "recommender" / "weights"

    @property
    def item_vocabulary(self) -> Path:
        """The history model's item vocabulary, one id per line."""
        return self.root / "recommender" / "item_vocabulary.txt"

    @property
    def recommendation_settings(self) -> Path:
        """recommendation.json: top_k and whether a user's history is excluded."""
        return self.root / "recommendation.json"

    # -- tuning
    @property
    def best_config(self) -> Path:
        """The best configuration a tuning run found."""
        return self.root / "best_config.yaml"

    @property
    def tuning_results(self) -> Path:
        """Every trial of a tuning run."""
        return self.root / "tuning_results.json"

    # -- the run.json record
    def start(self, kind: str, loaded: LoadedConfig) -> "RunRecord":
        """Write run.json with status ``running`` (kind, tfrec version, config hash, start time)."""
        if kind not in KINDS:
            raise ValueError("unknown run kind %r (one of %s)" % (kind, ", ".join(KINDS)))
        record = RunRecord(kind=kind, status=RUNNING, tfrec_version=__version__, config_hash=config_hash(loaded),
                           started=_now())
        write_json(self.record_file, record.as_dict())
        return record

    def finish(self, status: str = FINISHED, error: Optional[str] = None) -> "RunRecord":
        """Mark the run ``finished`` or ``failed`` (with the error's one-line summary) in run.json."""
        if status not in (FINISHED, FAILED):
            raise ValueError("a run finishes as %s or %s, not %r" % (FINISHED, FAILED, status))
        record = self.record()
        if record is None:
            raise FileNotFoundError("%s has no %s: the run was not started through tfrec" % (self.root, RUN_FILE))
        record.status, record.finished, record.error = status, _now(), error
        write_json(self.record_file, record.as_dict())
        return record

    def record(self) -> Optional["RunRecord"]:
        """The run.json record, or None when the run has none (runs made by tfrec before it wrote one)."""
        if not self.record_file.is_file():
            return None
        try:
            payload = json.loads(self.record_file.read_text(encoding="utf-8"))
            return RunRecord(**{k: payload.get(k) for k in RunRecord.__dataclass_fields__})
        except (ValueError, TypeError) as err:
            raise ValueError("%s is not a valid run record (%s)" % (self.record_file, err)) from err

    def kind(self) -> str:
        """search, recommendation or movielens-multitask: from run.json, or for older runs from their saved settings."""
        record = self.record()
        if record is not None:
            if record.kind not in KINDS:
                raise ValueError("%s names an unknown run kind %r" % (self.record_file, record.kind))
            return record.kind
        # Runs written before run.json existed: each kind saved one settings file only it writes.
        if self.search_settings.is_file():
            return SEARCH
        if self.recommendation_settings.is_file():
            return RECOMMENDATION
        if self.metrics.is_file():
            try:
                if json.loads(self.metrics.read_text(encoding="utf-8")).get("task") == MOVIELENS:
                    return MOVIELENS
            except ValueError:
                pass
        raise FileNotFoundError("%s has no %s and none of the files a finished run leaves; is it a tfrec run folder?"
                                % (self.root, RUN_FILE))

    def require_finished(self) -> None:
        """Raise RunIncomplete when run.json says the training is still running or failed (runs without run.json pass)."""
        record = self.record()
        if record is None or record.status == FINISHED:
            return
        status = record.status if not record.error else "%s: %s" % (record.status, record.error)
        raise RunIncomplete("training of %s did not finish (status %s): resume it with tfrec train --run-dir %s "
                            "and the config it started with" % (self.root, status, self.root))

    def require(self, *paths: Path, what: str = "trained run") -> None:
        """Raise FileNotFoundError naming every missing artifact (a checkpoint prefix counts by its .index file)."""
        missing = [str(p) for p in paths if not (p.is_file() or p.with_name(p.name + ".index").is_file())]
        if missing:
            raise FileNotFoundError("%s holds no complete %s; missing: %s" % (self.root, what, ", ".join(missing)))


@dataclass
class RunRecord:
    """The content of run.json."""

    kind: str
    status: str
    tfrec_version: str
    config_hash: str
    started: str
    finished: Optional[str] = None
    error: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The record as JSON-ready data."""
        return asdict(self)


def run_status(folder: RunFolder) -> str:
    """running, finished or failed from run.json; runs without one: finished if they hold metrics.json, else incomplete."""
    try:
        record = folder.record()
    except ValueError:
        return "unreadable"
    if record is not None:
        return str(record.status)
    return FINISHED if folder.metrics.is_file() else "incomplete"


def list_runs(root: Path) -> list[tuple[Path, str]]:
    """The run folders directly under ``root`` (those holding a config.yaml) with their status, most recently written first.

    A run's time is that of its run.json (rewritten when training ends), else of its newest record file.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        folder = RunFolder(path)
        if not path.is_dir() or not folder.config.is_file():
            continue
        stamp = max(p.stat().st_mtime for p in (folder.record_file, folder.metrics, folder.config) if p.is_file())
        found.append((stamp, path.name, path, run_status(folder)))
    found.sort(reverse=True)
    return [(path, status) for _, _, path, status in found]


def newest_finished_run(root: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """The most recent finished run under ``root`` (None if there is none) and the newer unfinished runs passed over."""
    passed: list[tuple[Path, str]] = []
    for path, status in list_runs(root):
        if status == FINISHED:
            return path, passed
        passed.append((path, status))
    return None, passed


def config_hash(loaded: LoadedConfig) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config, key order independent."""
    text = json.dumps(config_to_dict(loaded.config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def create_run_dir(loaded: LoadedConfig, now: datetime | None = None) -> Path:
    """Create ``<output_dir>/<name>-<UTC timestamp>[-n]`` and save the resolved config in it."""
    run = loaded.config.run
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    root = Path(run.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = "%s-%s" % (_slug(run.name), stamp)
    for attempt in range(1000):
        path = root / (base if attempt == 0 else "%s-%d" % (base, attempt))
        try:
            path.mkdir()
        except FileExistsError:
            continue  # two runs started in the same second: take the next free name
        save_config(loaded, RunFolder(path).config)
        return path
    raise RuntimeError("could not create a run directory under %s" % root)


def open_run_dir(loaded: LoadedConfig, path: Path) -> Path:
    """Use ``path`` as the run directory: create it, or reopen it (to resume) if it holds the same resolved config."""
    path = Path(path)
    saved = RunFolder(path).config
    if saved.is_file():
        before, now = _flat(config_to_dict(load_config(saved, []).config)), _flat(config_to_dict(loaded.config))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            # Starting over is not a config change: say how to do it rather than just refusing.
            restart = (" (to start its training over, keep its config and add --restart)"
                       if "train.checkpoint.resume" in changed else "")
            raise ValueError("%s was started with another config (differs in %s): resume with the same config and --set "
                             "overrides, or pick a new --run-dir%s" % (path, ", ".join(changed[:8]), restart))
        return path
    path.mkdir(parents=True, exist_ok=True)
    save_config(loaded, saved)
    return path


def _flat(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out: dict = {}
        for key, value in tree.items():
            out.update(_flat(value, "%s%s." % (prefix, key)))
        return out
    return {prefix[:-1]: tree}


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, paths and dates: what run results hold besides plain Python values.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(path: Path, payload: Any, *, compact: bool = False) -> Path:
    """Write ``payload`` as JSON atomically (temp file, fsync, rename): readers never see half a file.

    Indented by default; ``compact`` writes one line with non-ASCII kept as is (large files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compact:
        text = json.dumps(payload, ensure_ascii=False, default=_json_default) + "\n"
    else:
        text = json.dumps(payload, indent=2, sort_keys=False, default=_json_default, allow_nan=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
    return path
