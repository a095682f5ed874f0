"""tfrec's public Python API: what the ``tfrec`` commands do, as functions for notebooks and scripts.

``import tfrec`` exposes every name here lazily (``tfrec.train``, ``tfrec.LocalClient``, ...).
Importing this module is cheap: TensorFlow loads only when a function that needs it runs.

    run = tfrec.train("configs/quick.yaml", ["retrieval.epochs=1"])   # -> runs/<name>-<time>/
    report = tfrec.evaluate(run)                                      # report.html, PNG charts, metrics
    tfrec.export(run, "export")                                       # export/<model>/<version>/
    with tfrec.LocalClient("export") as client:                       # no server needed
        hits = tfrec.SearchService(client, tfrec.ProductCatalog.from_export("export")).search("drill")
    with tfrec.serve("export") as server:                             # gRPC + REST on 127.0.0.1
        ...

``train`` and ``export`` print the results ``tfrec train`` / ``tfrec export`` print (on stdout);
their progress is logged to the ``tfrec`` logger, which shows nothing until asked:
``import tfrec.log; tfrec.log.configure()`` gives a notebook the terminal's stderr lines.
"""
from __future__ import annotations

from tfrec import compat  # noqa: F401  (first: Keras 2 mode before anything imports TensorFlow)

import dataclasses
import functools
import importlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from tfrec.config import LoadedConfig
from tfrec.config import load_config as _load_config
from tfrec.config.loader import save_config
from tfrec.config.schema import DistributeConfig
from tfrec.data import load_data as read_data
from tfrec.data.frames import covers_every_file, data_frames, keep_frames
from tfrec.data.preflight import preflight
from tfrec.data.slices import slice_for_config, slice_recommendation_data
from tfrec.data.stats import dataset_stats, format_stats
from tfrec.data.tables import SearchData
from tfrec.evaluation.compare import PerQuery, compare as paired, default_pairs, format_comparison
from tfrec.runs import FAILED, MOVIELENS, RECOMMENDATION, SEARCH, RunFolder, create_run_dir, open_run_dir, write_json
from tfrec.serving.conformance import check_export as check
from tfrec.serving.deploy import write_export_deployment_files
from tfrec.training.strategy import locate_tpu

if TYPE_CHECKING:  # the real classes load TensorFlow; annotations only need their names
    from tfrec.reports.evaluation import EvaluationReport
    from tfrec.serving.conformance import ConformanceReport
    from tfrec.serving.server import DevServer

PathLike = Union[str, Path]

log = logging.getLogger(__name__)

# The datasets tfrec.data reads as query-product judgments (SearchData): they train search runs.
SEARCH_DATASETS = ("homedepot", "search-csv")

# Re-exported lazily (their modules import TensorFlow): name -> module.
_LAZY = {
    "GrpcClient": "tfrec.serving.grpc_client",
    "ServingError": "tfrec.serving.grpc_client",
    "RestClient": "tfrec.serving.rest_client",
    "SearchService": "tfrec.serving.service",
    "RecommendService": "tfrec.serving.service",
    "ProductCatalog": "tfrec.serving.service",
    "Hit": "tfrec.serving.service",
    "LocalClient": "tfrec.serving.local",
    "EvaluationReport": "tfrec.reports.evaluation",
}

__all__ = [
    "Comparison", "ExportCheckError", "TpuLocation", "UnsupportedError",
    "check_export", "compare", "evaluate", "export", "find_tpu", "load_config", "load_data", "serve", "train",
    *_LAZY,
]


class UnsupportedError(ValueError):
    """A request this run or config cannot do (e.g. exporting a benchmark-only run); the message says why."""


class ExportCheckError(RuntimeError):
    """An export that does not meet TF Serving's contract; ``report`` lists the problems."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


def __getattr__(name: str) -> Any:
    """Load the re-exported serving classes on first use (they import TensorFlow)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _out(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- configs and data


def load_config(path: Optional[PathLike], overrides: Sequence[str] = ()) -> LoadedConfig:
    """Load a config: schema defaults, then the YAML file (and what it extends), then ``key.path=value`` overrides."""
    if isinstance(overrides, str):
        raise TypeError("overrides is a list of 'key.path=value' strings, got the single string %r" % overrides)
    return _load_config(path, list(overrides))


def _loaded(config: Union[PathLike, LoadedConfig], overrides: Sequence[str], frames: Optional[dict] = None) -> LoadedConfig:
    if isinstance(config, LoadedConfig):
        if overrides:
            raise ValueError("overrides apply to a config file: pass the file's path with them, or put them in "
                             "load_config(path, overrides) and pass its result alone")
        return config
    if not isinstance(config, (str, Path)):
        raise TypeError("config must be a YAML path or a LoadedConfig, got %s" % type(config).__name__)
    if frames and covers_every_file(frames):
        overrides = [*overrides, "data.dir=."]  # every file comes from a DataFrame: no data folder is read
    return load_config(config, overrides)


def load_data(config: Union[PathLike, LoadedConfig], overrides: Sequence[str] = (), sliced: bool = True, *,
              catalog: Any = None, judgments: Optional[dict] = None, interactions: Any = None) -> tuple[Any, dict]:
    """Read and validate a config's dataset (sliced by its ``data.max_*`` keys unless ``sliced=False``); returns (data, statistics).

    ``catalog``, ``judgments`` and ``interactions`` take pandas DataFrames in place of the data files, as :func:`train` does.
    """
    frames = data_frames(catalog=catalog, judgments=judgments, interactions=interactions)
    loaded = _loaded(config, overrides, frames)
    if not sliced:
        return _read(loaded, frames)
    data, stats, _ = _load_sliced(loaded, frames)
    return data, stats


def _read(loaded: LoadedConfig, frames: Optional[dict] = None) -> tuple[Any, dict]:
    """The whole dataset of a config and its statistics (with the load time)."""
    started = time.perf_counter()
    where = "DataFrames" if frames and covers_every_file(frames) else loaded.config.data.prepared or loaded.config.data.dir
    log.info("loading %s from %s ..." % (loaded.config.data.dataset, where))
    data = read_data(loaded, frames)
    if loaded.config.data.prepared:
        # Its training examples stay in the shards: the statistics prepare computed over all of them.
        stats = dict(data.train.prepared.manifest["stats"])
    else:
        stats = dataset_stats(data, loaded.config)
    if loaded.config.data.prepared:
        stats["prepared"] = str(loaded.config.data.prepared)
    stats["load_seconds"] = round(time.perf_counter() - started, 2)
    return data, stats


def _load_sliced(loaded: LoadedConfig, frames: Optional[dict] = None) -> tuple[Any, dict, Optional[str]]:
    """(data, statistics, a note when sliced) of a config: what ``tfrec train`` trains on."""
    data, stats = _read(loaded, frames)
    dc = loaded.config.data
    note = None
    if isinstance(data, SearchData) and (dc.max_train_queries or dc.max_valid_queries or dc.max_products or dc.periods > 1):
        data = slice_for_config(data, loaded.config)
        stats = dataset_stats(data, loaded.config)
        note = "data sliced for this run (data.max_* / data.period keys): statistics below are of the slice"
    if not isinstance(data, SearchData) and dc.max_users:
        data = slice_recommendation_data(data, dc.max_users, loaded.config.run.seed)
        stats = dataset_stats(data, loaded.config)
        note = "data sliced for this run (data.max_users): statistics below are of the slice"
    return data, stats, note


# ----------------------------------------------------------------------------- train, evaluate, compare


def train(config: Union[PathLike, LoadedConfig], overrides: Sequence[str] = (), run_dir: Optional[PathLike] = None,
          warm_start: Optional[PathLike] = None, restart: bool = False, *, catalog: Any = None,
          judgments: Optional[dict] = None, interactions: Any = None) -> Optional[Path]:
    """Train and evaluate a config end to end (what ``tfrec train`` does); returns the run folder.

    ``restart`` (with ``run_dir``) starts the run's training over: its checkpoints are moved into a
    dated ``checkpoints-set-aside-<UTC time>`` folder of the run, never deleted.

    Under ``train.distribute.strategy: multi_worker`` only the chief (worker 0) evaluates and writes the
    run folder; the other workers train in step with it and return ``run_dir`` (None without it).

    Own data may come as pandas DataFrames instead of the files the config names, each read with
    the columns and checks of that file (errors name the frame, row and column):
    ``catalog=`` replaces ``data.catalog.path``; for search, ``judgments={"train": df, "valid": df}``
    replaces ``data.judgments.train`` and ``data.judgments.valid`` (train and valid are separate, as
    with the files); for recommendation, ``interactions=`` replaces ``data.interactions.path``. The
    run keeps the columns it reads as Parquet files in its ``data/`` folder and its config.yaml points
    there (its header names the DataFrames), so export and evaluation need no frames; training the
    original config again needs them again.
    """
    if restart and not run_dir:
        raise ValueError("restart needs run_dir: the run folder whose training starts over")
    frames = data_frames(catalog=catalog, judgments=judgments, interactions=interactions)
    loaded = _loaded(config, overrides, frames)
    kind = _run_kind(loaded, bool(warm_start))
    strategy = _strategy_before_data(loaded, kind)
    # The data first: a config value it makes impossible (a cut-off above the catalog size, ...) fails in
    # seconds, every such problem at once, before any encoding and before a run folder exists.
    data, stats, note = _load_sliced(loaded, frames)
    preflight(loaded, data)
    if strategy is not None and not _is_chief(strategy):
        return _train_as_worker(kind, loaded, data, strategy, run_dir)
    if frames and run_dir:
        keep_frames(loaded, frames, Path(run_dir), write=False)  # resuming compares a config that points at the kept copies
    run = RunFolder(open_run_dir(loaded, Path(run_dir)) if run_dir else create_run_dir(loaded))
    folder = run.root
    if frames:
        keep_frames(loaded, frames, folder)  # the run's own copies: export and evaluation read them
        save_config(loaded, run.config)
    run.start(kind, loaded)
    try:
        if restart:
            # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
            from tfrec.training.checkpoints import set_aside_checkpoints

            moved = set_aside_checkpoints(folder)
            log.info("restart: %s" % ("moved the earlier checkpoints to %s (nothing deleted); training starts over" % moved
                                       if moved else "no checkpoints in %s; training starts from the beginning" % folder))
        log.info("run directory %s (resolved config saved as %s; if interrupted, run the same command with "
                 "--run-dir %s to resume from its checkpoints)" % (folder, run.config.name, folder))
        if note:
            log.info(note)
        write_json(run.stats, stats)
        for line in format_stats(stats):
            _out(line)
        started = time.perf_counter()
        _train_pipeline(kind, loaded, data, folder, warm_start, strategy)
    except BaseException as err:  # KeyboardInterrupt too: run.json must not say running after the process ends
        _mark_failed(run, err)
        raise
    run.finish()
    _render_report(folder)
    _out("trained in %.1f min" % ((time.perf_counter() - started) / 60))
    _out("run_dir: %s" % folder)
    return folder


def _run_kind(loaded: LoadedConfig, warm_start: bool) -> str:
    """What a config trains (search, recommendation or movielens-multitask); refuses what no pipeline does."""
    dc = loaded.config.data
    if dc.dataset in SEARCH_DATASETS:
        return SEARCH
    if warm_start:
        raise UnsupportedError("--warm-start applies to search runs only in this release")
    task = loaded.config.recommendation.task
    if task == "multitask" and dc.dataset != "movielens-100k":
        raise UnsupportedError("recommendation.task=multitask is the MovieLens 100K model (dataset movielens-100k), "
                               "got %s" % dc.dataset)
    if task == "multitask" or (task == "auto" and dc.dataset == "movielens-100k"):
        return MOVIELENS
    return RECOMMENDATION


def _strategy_before_data(loaded: LoadedConfig, kind: str) -> Any:
    """A recommendation run's multi_worker strategy, made before its data is read; None otherwise (the pipeline makes it).

    MultiWorkerMirroredStrategy needs a fresh TensorFlow runtime, and reading a prepared folder starts it.
    """
    if kind != RECOMMENDATION or loaded.config.train.distribute.strategy != "multi_worker":
        return None
    from tfrec.training.strategy import make_strategy  # lazy: TensorFlow

    return make_strategy(loaded.config.train.distribute)


def _is_chief(strategy: Any) -> bool:
    from tfrec.training.steps import worker  # lazy: TensorFlow

    return worker(strategy)[0]


def _train_as_worker(kind: str, loaded: LoadedConfig, data: Any, strategy: Any, run_dir: Optional[PathLike]) -> Optional[Path]:
    """A non-chief worker of a multi-worker run: it trains in step with the chief, which alone writes the run folder.

    With ``run_dir`` (the chief's, on shared storage) it reads the run's checkpoints there, to resume as the chief
    does; its own checkpoints go to a scratch folder the trainer deletes. Without, it trains in a temporary folder,
    deleted afterwards (the chief names its run folder itself). Returns ``run_dir``.
    """
    from tfrec.training.steps import worker  # lazy: TensorFlow

    task = worker(strategy)[1]
    scratch = None if run_dir else Path(tempfile.mkdtemp(prefix="tfrec-worker-%d-" % task))
    try:
        _train_pipeline(kind, loaded, data, Path(run_dir) if run_dir else scratch, None, strategy)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _out("worker %d: trained in step with the chief, which evaluates and writes the run folder" % task)
    return Path(run_dir) if run_dir else None


def _train_pipeline(kind: str, loaded: LoadedConfig, data: Any, folder: Path, warm_start: Optional[PathLike],
                    strategy: Any = None) -> None:
    """Run the pipeline of ``kind`` into ``folder`` (each writes its models, metrics.json and per-query metrics).

    ``strategy``: a recommendation run's strategy when it was made before the data (multi_worker).
    """
    if kind == SEARCH:
        # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
        from tfrec.search.pipeline import train_search

        train_search(loaded, data, folder, warm_start=Path(warm_start) if warm_start else None)
    elif kind == MOVIELENS:
        # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
        from tfrec.recommend.movielens import train_movielens

        train_movielens(loaded, data, folder, progress=loaded.config.train.progress)
    else:
        # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
        from tfrec.recommend.pipeline import train_recommendation

        train_recommendation(loaded, data, folder, strategy)


def _mark_failed(run: RunFolder, err: BaseException) -> None:
    """Record the failure in run.json; a record that cannot be written must not hide the error itself."""
    message = " ".join(str(err).split())
    summary = "%s: %s" % (type(err).__name__, message) if message else type(err).__name__
    try:
        run.finish(FAILED, error=summary[:1000])
    except (OSError, ValueError) as problem:
        log.warning("could not mark %s as failed: %s", run.record_file, problem)


def _render_report(folder: Path) -> None:
    """Write a finished run's report, print its summary and say where the page is."""
    from tfrec.reports.evaluation import evaluate_run  # loads matplotlib: only once a run has finished

    report = evaluate_run(folder)
    _out(report.summary)
    log.info("report: %s (charts: %s)", report.html, ", ".join(p.name for p in report.figures) or "none")


def _run_folder(run: PathLike) -> RunFolder:
    """A run folder, checked to be one (it holds the resolved config.yaml) whose training did not stop unfinished."""
    folder = RunFolder(run)
    if not folder.root.exists():
        raise FileNotFoundError("run %s does not exist" % folder.root)
    if not folder.config.is_file():
        raise FileNotFoundError("%s is not a tfrec run directory (no %s in it)" % (folder.root, folder.config.name))
    folder.require_finished()  # RunIncomplete while run.json says running or failed
    return folder


def evaluate(run: PathLike) -> "EvaluationReport":
    """A trained run's evaluation: writes report.html and the PNG charts, returns them with the metrics."""
    # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
    from tfrec.reports.evaluation import evaluate_run

    return evaluate_run(_run_folder(run).root)  # RunIncomplete (a FileNotFoundError) when training did not finish


@dataclass
class Comparison:
    """Paired bootstrap rows (A - B per system and metric) and their printable table."""

    rows: list[dict] = field(default_factory=list)
    table: str = ""

    def __str__(self) -> str:
        return self.table


def compare(run_a: PathLike, run_b: Optional[PathLike] = None, *, system: Optional[str] = None,
            against: Optional[str] = None, metrics: Sequence[str] = (), resamples: int = 2000, seed: int = 0) -> Comparison:
    """Paired bootstrap CIs of run_a minus run_b (or of ``system`` minus ``against`` within one run)."""
    if isinstance(metrics, str):
        metrics = [metrics]
    a = PerQuery.load(Path(run_a))
    b = a if run_b is None else PerQuery.load(Path(run_b))
    if run_b is None and not (system and against):
        raise ValueError("with one run, name the two systems: system=S, against=T (systems: %s)" % ", ".join(a.systems()))
    pairs = default_pairs(a, b, system, against)
    if metrics:
        pairs = [p for p in pairs if p[2] in metrics]
        if not pairs:
            raise ValueError("no compared array has metric %s" % ", ".join(metrics))
    rows = paired(a, b, pairs, n_resamples=resamples, seed=seed)
    return Comparison(rows, format_comparison(rows, str(run_a), str(run_b if run_b is not None else run_a)))


# ----------------------------------------------------------------------------- export and serving


def export(run: PathLike, export_dir: PathLike = "export", version: Optional[int] = None, check: bool = False,
           scann: bool = False, catalog_dtype: Optional[str] = None, search_k: Optional[int] = None) -> dict[str, dict]:
    """Export a run's models as TF Serving SavedModels (what ``tfrec export`` does); returns {model: {"path", "mb"}}.

    ``catalog_dtype`` (float32 or float16) replaces the run's ``export.catalog_dtype`` for this export,
    ``search_k`` its ``export.search_k`` (results per query of a search run's one-call ``search`` model).
    """
    if catalog_dtype not in (None, "float32", "float16"):
        raise UnsupportedError("catalog_dtype must be float32 or float16, got %r" % (catalog_dtype,))
    if search_k is not None and search_k < 1:
        raise UnsupportedError("search_k must be >= 1, got %r" % (search_k,))
    folder = _run_folder(run)
    export_dir = Path(export_dir)
    if _exportable_kind(folder) == RECOMMENDATION:
        if search_k is not None:
            raise UnsupportedError("search_k applies to search runs (%s is a recommendation run)" % folder.root)
        exported = _export_recommendation(folder.root, export_dir, version, scann, catalog_dtype)
    else:
        exported = _export_search(folder.root, export_dir, version, scann, catalog_dtype, search_k)
    for name, info in exported.items():
        _out("export: %s %s (%.1f MB)" % (name, info["path"], info["mb"]))

    # The export folder carries TF Serving files matching its real versions (docker compose up there).
    for path in write_export_deployment_files(export_dir):
        _out("deployment: %s" % path)
    if check:
        check_export(export_dir)
    return exported


def update_catalog(run: PathLike, export_dir: PathLike, changes: PathLike, version: Optional[int] = None) -> Any:
    """Serve a changed catalog with a run's trained models, no retraining (what ``tfrec catalog update`` does).

    Applies ``changes`` (CSV: action,product_id,title) to the catalog ``export_dir`` serves and publishes a new version
    of every search model; prints the new versions and a summary and returns the
    :class:`~tfrec.search.catalog_update.CatalogUpdate`.
    """
    # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
    from tfrec.search.catalog_update import update_catalog as update

    folder = _run_folder(run)
    export_dir = Path(export_dir)
    result = update(folder.root, export_dir, Path(changes), version=version)
    for name, info in result.published.items():
        _out("export: %s %s (%.1f MB)" % (name, info["path"], info["mb"]))
    for path in write_export_deployment_files(export_dir):  # the labels follow the new version
        _out("deployment: %s" % path)
    for line in result.lines():
        _out(line)
    return result


def _exportable_kind(folder: RunFolder) -> str:
    """search or recommendation, from run.json (older runs: their settings file); refuses runs with nothing to export."""
    why = "search runs and sequential recommendation runs export; MovieLens multi-task runs are benchmarks"
    try:
        kind = folder.kind()
    except FileNotFoundError:
        kind = None
    settings = {SEARCH: folder.search_settings, RECOMMENDATION: folder.recommendation_settings}.get(kind)
    if settings is None:
        raise UnsupportedError("run %s holds no exportable model (%s)" % (folder.root, why))
    if not settings.is_file():
        raise UnsupportedError("run %s holds no exportable model: its %s is missing (%s)" % (folder.root, settings.name, why))
    return kind


def _export_search(run: Path, export_dir: Path, version: Optional[int], scann: bool, catalog_dtype: Optional[str],
                   search_k: Optional[int] = None) -> dict:
    # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
    from tfrec.search.export import export_search, load_search_models

    log.info("rebuilding the trained models of %s ..." % run, extra={"stage": "export"})  # tfrec.log.as_stage
    models = load_search_models(run)
    if catalog_dtype is not None:
        models = dataclasses.replace(models, catalog_dtype=catalog_dtype)
    if search_k is not None:
        models = dataclasses.replace(models, search_k=search_k)
    # every model of the run (ScaNN's too) gets one version number and appears at once
    return export_search(models, export_dir, version=version, run=run.name, scann=scann)


def _export_recommendation(run: Path, export_dir: Path, version: Optional[int], scann: bool, catalog_dtype: Optional[str]) -> dict:
    # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
    from tfrec.recommend.export import export_recommendation, run_catalog_dtype
    from tfrec.recommend.pipeline import load_recommender

    if scann:
        raise UnsupportedError("--scann applies to search runs (recommendation exports are brute force over the catalog)")
    log.info("rebuilding the trained recommender of %s ..." % run, extra={"stage": "export"})
    model, data, settings = load_recommender(run)
    return export_recommendation(model, data.catalog.text().astype(str), export_dir, k=int(settings["top_k"]),
                                 exclude_history=bool(settings["exclude_history"]), version=version, run=run.name,
                                 catalog_dtype=catalog_dtype or run_catalog_dtype(run))


def check_export(export_dir: PathLike = "export") -> "ConformanceReport":
    """Check an export as TF Serving would load it (fresh TensorFlow-only process); raises ExportCheckError on a problem."""
    log.info("checking %s in a fresh TensorFlow-only process (what TF Serving can load) ..." % export_dir, extra={"stage": "export"})
    report = check(Path(export_dir))
    for line in report.lines():
        _out(line)
    if not report.ok:
        raise ExportCheckError("the export does not meet TF Serving's contract (problems listed above)", report)
    return report


@functools.lru_cache(maxsize=None)
def _started_server_class() -> type:
    # lazy: `import tfrec` and the CLI's startup stay free of TensorFlow
    from tfrec.serving.server import DevServer

    class StartedServer(DevServer):
        """A DevServer that ``serve()`` already started: ``with`` stops it at the end without starting it again."""

        def __enter__(self) -> "StartedServer":
            return self

    return StartedServer


def serve(export_dir: PathLike = "export", grpc_port: int = 0, rest_port: Optional[int] = 0, *, host: str = "127.0.0.1",
          timeout: float = 600.0, **options: Any) -> "DevServer":
    """Start the development server on an export (0 = a free port); returns it running, ``with`` stops it."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise FileNotFoundError("export folder %s not found: export a run first (tfrec.export(run, %r))" % (folder, str(folder)))
    server = _started_server_class()(folder, host=host, grpc_port=grpc_port, rest_port=rest_port, **options)
    return server.start(timeout=timeout)


# ----------------------------------------------------------------------------- accelerators


@dataclass(frozen=True)
class TpuLocation:
    """Where a TPU seems to be: ``target`` for ``TPUClusterResolver(tpu=...)`` and what pointed at it."""

    target: Optional[str]
    source: str


def find_tpu(tpu: str = "") -> Optional[TpuLocation]:
    """The TPU this machine can reach (a name, grpc:// address or "local"), or None when none is in sight."""
    import os

    found = locate_tpu(DistributeConfig(strategy="tpu", tpu=tpu), os.environ)
    return TpuLocation(*found) if found else None
