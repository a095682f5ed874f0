"""The ``tfrec`` command line: it only reads configs and calls library functions.

Contract for scripts: ``tfrec train`` ends by printing ``run_dir: <path>``; ``tfrec export``
prints one ``export: <model_name> <version_path>`` line per SavedModel; ``tfrec serve`` prints
``serving: grpc=HOST:P rest=HOST:Q`` once every model is loaded. Errors exit non-zero with one
line on stderr (the traceback only with ``--debug``); a config with several problems lists each on
its own line below that one.

Runs are named the same way everywhere: ``tfrec evaluate [RUN]``, ``tfrec export [RUN]``,
``tfrec compare RUN_A [RUN_B]`` (``--run RUN`` is still accepted). Without RUN, evaluate and export
take the newest finished run under ./runs and say which on stderr.

Output: stdout holds only the results a command exists to print; progress and notes are tfrec's
log (:mod:`tfrec.log`), on stderr as ``[<stage>] message`` lines. ``--quiet`` keeps warnings
only and turns progress bars off; ``--verbose`` adds debug lines and TensorFlow's own INFO logs.
"""
from __future__ import annotations

from tfrec import compat  # noqa: F401  (first: sets Keras 2 mode before anything imports TensorFlow)

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tfrec import api
from tfrec import log as tfrec_log
from tfrec.benchmarks import run_benchmarks
from tfrec.config import ConfigError, load_config
from tfrec.config.builtin import builtin_configs
from tfrec.config.starter import STARTERS, write_starter
from tfrec.data import download
from tfrec.data.download import DownloadError
from tfrec.data.errors import DataError
from tfrec.data.stats import format_stats
from tfrec.evaluation.compare import PerQuery, compare, default_pairs, format_comparison
from tfrec.runs import RunFolder, RunIncomplete, create_run_dir, newest_finished_run
from tfrec.cli.tables import hits_table
from tfrec.serving.service import ProductCatalog, RecommendService, SearchService
from tfrec.version import __version__

log = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_USAGE = 2


class NotAvailable(RuntimeError):
    """A subcommand (or part of one) that this release does not provide yet."""


class UsageError(ValueError):
    """Arguments that do not go together."""


class CommandError(RuntimeError):
    """A command that ran but failed for a reason worth one line (a server's answer, a failed check)."""


class CheckFailed(CommandError):
    """A check found problems (listed before this error)."""


def _out(line: str) -> None:
    print(line, flush=True)


def _error(line: str) -> None:
    """An error or interruption line: always on stderr, whatever the log level."""
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- commands


def _load(args: argparse.Namespace):
    return load_config(args.config, args.set or [])


def cmd_train(args: argparse.Namespace) -> int:
    """Train the configured models: search datasets train retrieval + ranker, evaluate, report."""
    if args.restart and not args.run_dir:
        raise UsageError("--restart needs --run-dir DIR, the run folder whose training starts over")
    try:
        api.train(_load(args), run_dir=args.run_dir, warm_start=args.warm_start, restart=args.restart)  # prints the stats and `run_dir: ...`
    except api.UnsupportedError as err:
        raise UsageError(str(err)) from err
    except RuntimeError as err:
        # Loaded by now if it was raised; looked up, not imported, so a plain `tfrec --help` never imports TensorFlow.
        checkpoints = sys.modules.get("tfrec.training.checkpoints")
        if checkpoints is None or not isinstance(err, checkpoints.CheckpointError):
            raise
        raise CommandError(_checkpoint_advice(err, args)) from err
    return 0


def _checkpoint_advice(err: RuntimeError, args: argparse.Namespace) -> str:
    """The checkpoint problem and, for a --run-dir run, the command that starts its training over."""
    import shlex

    problem = getattr(err, "problem", None) or str(err)  # without the Python API's resume=False hint
    if not args.run_dir:
        return problem
    command = ["tfrec", "train", "--config", args.config]
    for item in args.set or []:
        command += ["--set", item]
    command += ["--run-dir", args.run_dir, "--restart"]
    return "%s. To start this run's training over, run: %s (it moves the run's checkpoints into %s, nothing is deleted)" % (
        problem, shlex.join(command), os.path.join(args.run_dir, "checkpoints-set-aside-<UTC time>"))


def cmd_data_validate(args: argparse.Namespace) -> int:
    """Check a configuration's data and print its statistics."""
    data, stats = api.load_data(_load(args), sliced=False)
    for line in format_stats(stats):
        _out(line)
    drops = data.drops.lines()
    _out("data ok: %s" % ("no rows dropped" if not drops else "%d row(s) dropped in lenient mode" % data.drops.total))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """Download a public dataset from its official source and verify its checksum."""
    folder = download.download(args.name, args.dest, url=args.url, sha256=args.sha256, force=args.force)  # bar unless --quiet
    _out("dataset: %s %s" % (args.name, folder))
    return 0


def cmd_data_synthesize(args: argparse.Namespace) -> int:
    """Write a synthetic shop of any size (catalog, interaction log, optional search judgments, and configs that read them) for scale tests."""
    from tfrec.data import synthesize  # lazy: only this command needs pyarrow

    size = synthesize.ShopSize(products=args.products, users=args.users, events=args.events, judgments=args.judgments,
                               format=args.format, seed=args.seed)
    try:
        written = synthesize.synthesize(args.out, size, force=args.force)  # bar unless --quiet
    except synthesize.SynthesizeError as err:
        raise UsageError(str(err)) from err
    for item in written:
        _out("wrote: %s" % item.describe())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Validate, split and shard a config's data for training at any size (--config X --out DIR), or turn a raw Kaggle
    Home Depot file into tfrec's CSVs (homedepot --raw FILE)."""
    if args.dataset or args.raw:
        if not (args.dataset and args.raw):
            raise UsageError("converting a raw download needs both: tfrec data prepare homedepot --raw FILE [--dest DIR]")
        folder = download.prepare_homedepot(args.raw, args.dest, force=args.force)
        _out("dataset: homedepot %s" % folder)
        return 0
    if not (args.config and args.out):
        raise UsageError("tfrec data prepare --config CONFIG --out DIR (or: tfrec data prepare homedepot --raw FILE)")
    from tfrec.preprocess import prepare  # lazy: Spark starts only for this command

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1, got %d" % args.workers)
    if args.shards < 1:
        raise UsageError("--shards must be at least 1, got %d" % args.shards)
    loaded = _load(args)
    result = prepare(loaded, args.out, master=args.master, workers=args.workers, shards=args.shards,
                     driver_memory=args.driver_memory, force=args.force, text_vectors=args.text_vectors)
    manifest = result.manifest
    if result.up_to_date:
        _out("up to date: %s was prepared from these files with this data config (shards checked)" % result.folder)
    else:
        for line in format_stats(manifest["stats"]):
            _out(line)
        counts = ", ".join("%s %d examples" % (name, entry["examples"]) for name, entry in manifest["splits"].items())
        engine = manifest["engine"]
        _out("prepared in %.1f s (%s%s): %d products, %s" % (result.seconds, engine["name"],
                                                            " %s" % engine["master"] if "master" in engine else "",
                                                            manifest["catalog"]["items"], counts))
        if manifest.get("dead_letter"):
            _out("dropped rows, with their line and reason: %s" % (result.folder / manifest["dead_letter"]))
    _out("prepared: %s" % result.folder)
    _out("train from it: tfrec train --config %s --set data.prepared=%s" % (args.config, result.folder))
    return 0


# Where a command looks for runs when none is named (tfrec train's default run.output_dir).
RUNS_DIR = "runs"


def _run_argument(args: argparse.Namespace, *, pick_newest: bool = True) -> Optional[str]:
    """The RUN a command was given (positional, or the older --run), else the newest finished run under ./runs."""
    positional, option = getattr(args, "run_dir", None), getattr(args, "run_option", None)
    if positional is not None and option is not None and positional != option:
        raise UsageError("two runs given (%s and --run %s): name one RUN" % (positional, option))
    named = positional if positional is not None else option
    if named is not None or not pick_newest:
        return named
    newest, passed = newest_finished_run(Path(RUNS_DIR))
    skipped = "; ".join("%s (%s)" % (path, status) for path, status in passed)
    if newest is None:
        raise UsageError("no RUN given and no finished run under ./%s%s: train one with `tfrec train`, or name a RUN"
                         % (RUNS_DIR, " (not finished: %s)" % skipped if skipped else ""))
    log.info("no RUN given: using %s, the newest finished run under ./%s%s"
             % (newest, RUNS_DIR, " (passing over newer runs that did not finish: %s)" % skipped if skipped else ""))
    return str(newest)


def _model_version(args: argparse.Namespace) -> Optional[int]:
    """export's --model-version, or the older --version spelling of it (with a note that it is deprecated)."""
    if args.legacy_version is None:
        return args.model_version
    if args.model_version is not None and args.model_version != args.legacy_version:
        raise UsageError("--model-version %d and --version %d disagree: give --model-version only" % (args.model_version, args.legacy_version))
    log.warning("`tfrec export --version N` is deprecated: use --model-version N (tfrec --version prints tfrec's own version)")
    return args.legacy_version


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's trained models as SavedModels (TF Serving layout: <dir>/<model>/<version>/) and/or check an export.

    Without RUN it exports the newest finished run under ./runs; --check without RUN checks the existing export only.
    """
    run = _run_argument(args, pick_newest=not args.check)
    version = _model_version(args)
    try:
        if run is not None:  # prints `export: <model> <version_path>` per SavedModel, then the deployment files
            api.export(run, args.export_dir, version=version, check=args.check, scann=args.scann, catalog_dtype=args.catalog_dtype,
                       search_k=args.search_k)
        else:
            api.check_export(args.export_dir)
    except api.UnsupportedError as err:
        raise UsageError(str(err)) from err
    except RunIncomplete as err:
        raise NotAvailable(str(err)) from err
    except api.ExportCheckError as err:
        raise CheckFailed(str(err)) from err
    return 0


def cmd_catalog_update(args: argparse.Namespace) -> int:
    """Serve a changed catalog with a search run's trained models, no retraining: a new version of every search model.

    The changes file is CSV with the header action,product_id,title (plus any of the run's catalog columns); action is
    add, change or remove, the title empty for remove. It applies to the catalog the export serves now (its newest
    version, so updates accumulate), and is checked before any work starts: nothing is written when it has a problem.
    """
    run = _run_argument(args)
    try:  # prints `export: <model> <version_path>` per SavedModel, the deployment files, then a summary
        api.update_catalog(run, args.export_dir, args.changes, version=args.model_version)
    except (ValueError, FileNotFoundError, RunIncomplete) as err:  # the changes file, the export or the run: exit 2
        raise UsageError(str(err)) from err
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Write a run's report (report.html, report.md, PNG charts) from what it saved, and print its summary.

    Without RUN it evaluates the newest finished run under ./runs.
    """
    run = _run_argument(args)
    try:
        report = api.evaluate(run)
    except RunIncomplete as err:
        raise NotAvailable(str(err)) from err
    # The files written are what this command is for: results on stdout, like the summary.
    _out(report.summary)
    _out("report: %s" % report.html)
    for figure in report.figures:
        _out("chart: %s" % figure)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Paired bootstrap CIs between two runs (or two systems of one run) over their per-query metrics."""
    import json

    if len(args.runs) not in (1, 2):
        raise UsageError("tfrec compare takes RUN_A RUN_B, or one RUN with --system and --against")
    for run in args.runs:
        if not Path(run).exists():
            raise FileNotFoundError("run %s does not exist" % run)
    a = PerQuery.load(Path(args.runs[0]))
    b = PerQuery.load(Path(args.runs[-1]))
    if len(args.runs) == 1 and not (args.system and args.against):
        raise UsageError("with one run, name the two systems: --system S --against T (systems: %s)" % ", ".join(a.systems()))
    pairs = default_pairs(a, b, args.system, args.against)
    if args.metric:
        pairs = [p for p in pairs if p[2] in args.metric]
        if not pairs:
            raise UsageError("no compared array has metric %s" % ", ".join(args.metric))
    rows = compare(a, b, pairs, n_resamples=args.resamples, seed=args.seed)
    if args.json:
        _out(json.dumps(rows))
    else:
        _out(format_comparison(rows, args.runs[0], args.runs[-1]))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run the keras-tuner search declared in a config's `tune` section; writes best_config.yaml."""
    # lazy: `tfrec --help` and the light commands start without TensorFlow
    from tfrec.search.tuning import tune_search
    from tfrec.training.tuning import results_table

    loaded = _load(args)
    created: list[Path] = []

    def run_folder() -> Path:
        # Created once the data has loaded and passed its checks (a config it makes impossible leaves no folder).
        created.append(create_run_dir(loaded))
        tc = loaded.config.tune
        log.info("tuning %s (%s, %d trials, objective %s on a holdout of the train queries) into %s"
                 % (tc.target, tc.algorithm, tc.max_trials, tc.objective, created[0]))
        return created[0]

    try:
        results = tune_search(loaded, out_dir=run_folder)
    except RuntimeError as err:
        raise CommandError(str(err)) from err
    _out(results_table(results))
    _out("best_config: %s" % RunFolder(created[0]).best_config)
    _out("run_dir: %s" % created[0])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an export folder over TF Serving's gRPC and REST APIs (a development stand-in for TF Serving)."""
    # lazy: `tfrec --help` and the light commands start without TensorFlow
    from tfrec.serving.server import DevServer

    server = DevServer(
        args.export_dir, host=args.host, grpc_port=args.grpc_port, rest_port=args.rest_port,
        model_config_file=args.model_config_file, poll_seconds=args.poll_seconds,
        max_request_bytes=args.max_request_bytes, max_batch_size=args.max_batch_size,
        max_string_bytes=args.max_string_bytes, workers=args.workers,
        max_concurrent_executions=args.max_concurrent_executions, max_queued_requests=args.max_queued_requests,
        rest_workers=args.rest_workers, rest_timeout_seconds=args.rest_timeout_seconds,
    )
    log.info("loading the models of %s (development server; production uses TensorFlow Serving, see serving/) ...", args.export_dir)
    server.start()
    _out("serving: grpc=%s rest=%s" % (server.grpc_address, server.rest_address))
    server.serve_forever()  # returns after SIGINT/SIGTERM, having stopped the server
    return 0


def _client(args: argparse.Namespace):
    # lazy: `tfrec --help` and the light commands start without TensorFlow
    from tfrec.serving.grpc_client import GrpcClient
    from tfrec.serving.rest_client import RestClient

    if args.rest:
        url = args.rest if "://" in args.rest else "http://" + args.rest
        return RestClient(url, timeout=args.timeout)
    return GrpcClient(args.server, timeout=args.timeout)


def _catalog(args: argparse.Namespace, model: str, required: bool):
    try:
        if args.catalog:
            return ProductCatalog.from_file(Path(args.catalog))
        return ProductCatalog.from_export(Path(args.export_dir), model)
    except FileNotFoundError as err:
        if required:
            raise FileNotFoundError("%s (the ranker needs titles: pass --catalog FILE, or --no-rerank)" % err) from err
        log.warning("no catalog found (%s); results show ids only", err)
        return None


def cmd_search(args: argparse.Namespace) -> int:
    """Search served models: retrieve top-K, look up titles, re-rank, print the final list."""
    import json

    # lazy: `tfrec --help` and the light commands start without TensorFlow
    from tfrec.serving.grpc_client import ServingError

    catalog = _catalog(args, "search_retrieval", required=not args.no_rerank)
    with _client(args) as client:
        service = SearchService(client, catalog, candidates=args.candidates, rerank=False if args.no_rerank else None, label=args.label)
        try:
            results = service.search_many(args.query, k=args.top_k)
        except ServingError as err:
            raise CommandError(str(err)) from err
    for query, hits in zip(args.query, results):
        if args.json:
            _out(json.dumps({"query": query, "results": [h.as_dict() for h in hits]}, ensure_ascii=False))
        else:
            _out(hits_table(hits, header="query: %s" % query))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """Recommend from served models: items for a history (--history) or items similar to one (--similar)."""
    import json

    # lazy: `tfrec --help` and the light commands start without TensorFlow
    from tfrec.serving.grpc_client import ServingError

    if args.similar and (args.history or args.user):
        raise UsageError("--similar takes no --history or --user")
    if not (args.history or args.similar or args.user):
        raise UsageError("give --history ID,ID,..., --user ID (recent events from Redis) or --similar ID")
    model = "similar_items" if args.similar else "recommender"
    catalog = _catalog(args, model, required=False)
    events = _event_store(args) if args.user else None
    with _client(args) as client:
        service = RecommendService(client, catalog, label=args.label, events=events)
        try:
            if not args.similar:
                history = [i.strip() for i in (args.history or "").split(",") if i.strip()]
                if args.history and not history:
                    raise UsageError("--history holds no item ids")
                hits = service.recommend(history or None, k=args.top_k, user_id=args.user)
                header = "history: %s" % ",".join(history) if not args.user else "user: %s (%s)" % (args.user, _history_source(service.stats()))
            else:
                hits, header = service.similar(args.similar, k=args.top_k), "similar to: %s" % args.similar
        except ServingError as err:
            raise CommandError(str(err)) from err
    if args.json:
        _out(json.dumps({"request": header, "results": [h.as_dict() for h in hits]}, ensure_ascii=False))
    else:
        _out(hits_table(hits, header=header, id_label="item id"))
    return 0


def _history_source(stats: dict) -> str:
    """Which history a --user recommendation used, in words."""
    if stats.get("from_store"):
        return "recent events from Redis"
    if stats.get("fallbacks"):
        return "Redis did not answer: the --history given"
    return "no events in Redis: the --history given"


def _event_store(args: argparse.Namespace, min_timeout_ms: int = 0) -> Any:
    """The event store --redis or the config's online section names (UsageError when neither names a Redis)."""
    # lazy: the light commands start without the redis client
    from tfrec.online.events import EventStore
    from tfrec.online.link import RedisLink

    online = load_config(args.config, args.set or [], resolve_data_dir=False).config.online
    url = args.redis or online.redis_url
    if not url:
        raise UsageError("no Redis configured: pass --redis redis://HOST:PORT/0 or set online.redis_url in the config "
                         "(`tfrec redis` starts one on 127.0.0.1:6379)")
    link = RedisLink(url, online.namespace, timeout_ms=max(online.timeout_ms, min_timeout_ms), retry_seconds=online.retry_seconds)
    return EventStore.from_config(online, link=link)


def cmd_events_ingest(args: argparse.Namespace) -> int:
    """Stream a file of shopper events (CSV with a header, or JSON lines) into Redis, where recommendations read them.

    Lines that cannot be used are skipped and counted by reason; the exit code is 0 once the whole file was read.
    """
    from tfrec.online.ingest import FIELDS, IngestError, ingest  # lazy, as in _event_store

    if args.batch < 1 or (args.rate is not None and not args.rate > 0):
        raise UsageError("--batch must be >= 1 and --rate > 0, got --batch %d --rate %s" % (args.batch, args.rate))
    if args.file != "-" and not (Path(args.file).is_file() and os.access(args.file, os.R_OK)):
        raise UsageError("cannot read the events file %s" % args.file)
    columns = {}
    for item in args.column or []:
        name, sep, column = item.partition("=")
        if not sep or not column or name.strip() not in FIELDS:
            raise UsageError("--column takes FIELD=NAME with FIELD one of %s, got %r" % (", ".join(FIELDS), item))
        columns[name.strip()] = column.strip()
    known = None
    if args.export_dir:
        try:
            known = ProductCatalog.from_export(Path(args.export_dir), model="recommender")
        except (FileNotFoundError, ValueError) as err:
            raise UsageError("no recommender catalog to check items against: %s" % err) from err
    # Ingest is not on a request's path: it may wait longer for Redis than serving does.
    store = _event_store(args, min_timeout_ms=5000)
    link = store.link
    try:
        if not link.run("ping", lambda client: client.ping(), False):
            raise CommandError("Redis does not answer (%s)" % link.last_error)
        source = (getattr(sys.stdin, "buffer", sys.stdin) if args.file == "-" else args.file)
        try:
            report = ingest(source, store, known, batch=args.batch, rate=args.rate, columns=columns or None, fmt=args.format)
        except IngestError as err:
            raise UsageError(str(err)) from err
    finally:
        link.close()
    if args.file == "-":
        report.source = "standard input"
    _out(report.table())
    if report.failed:
        raise CommandError("Redis stopped taking events (%s); the file was read up to line %d" % (report.failed, report.last_line))
    return 0


def cmd_redis(args: argparse.Namespace) -> int:
    """Run a development redis-server on 127.0.0.1 in the foreground until Ctrl-C (production runs its own Redis)."""
    import signal
    import threading

    from tfrec.online.server import RedisServer, RedisUnavailable

    try:
        server = RedisServer(port=args.port, data_dir=args.data_dir, maxmemory_mb=args.maxmemory_mb).start()
    except RedisUnavailable as err:
        raise CommandError(str(err)) from err
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())  # a killed tfrec must not leave redis-server behind
    try:
        _out("redis: %s" % server.url)
        while server.running and not stopping.wait(0.5):
            pass
        if not stopping.is_set():
            raise CommandError("redis-server on port %d exited" % server.port)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
    log.info("redis-server stopped")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks and write their results under --out."""
    sizes = None
    if args.scale_sizes:
        from tfrec.benchmarks.scale import parse_sizes

        try:
            sizes = parse_sizes(args.scale_sizes)
        except ValueError as err:
            raise UsageError(str(err)) from err
    for path in run_benchmarks(Path(args.out), only=args.only, data_config=args.config, export_dir=Path(args.export_dir),
                               scale_sizes=sizes, search_run=Path(args.search_run) if args.search_run else None):
        _out("bench: %s" % path)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write DIR/tfrec.yaml: a commented starter config for your own CSV or Parquet files, saying what each column means."""
    path = write_starter(args.kind, args.dir, force=args.force)
    starter = STARTERS[args.kind]
    _out("wrote: %s (%s)" % (path, starter.summary))
    _out("next: put %s in %s (or edit the file and column names in %s), then run" % (
        ", ".join(starter.files), path.parent, path))
    _out("  tfrec data validate --config %s" % path)
    _out("  tfrec train --config %s" % path)
    return 0


# ----------------------------------------------------------------------------- parser


def _add_config_args(parser: argparse.ArgumentParser, default: Optional[str] = "default") -> None:
    parser.add_argument("--config", default=default, metavar="FILE",
                        help="a YAML config file, or a built-in config by name: %s (default: %%(default)s)" % ", ".join(builtin_configs()))
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override one key, e.g. --set retrieval.batch_size=32 (repeatable)"
    )


def _count(text: str) -> int:
    """A count argument: 5000000, 5_000_000, 5M or 250k."""
    from tfrec.data.synthesize import parse_count

    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_run_args(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("run_dir", nargs="?", default=None, metavar="RUN", help=help_text)
    # The spelling of earlier releases, still accepted: `--run RUN` means the same as RUN.
    parser.add_argument("--run", dest="run_option", default=None, metavar="RUN", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfrec`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    # Before or after the subcommand; the log goes to stderr, results to stdout either way.
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="log warnings only, no progress bars (results still print)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log debug lines too, and TensorFlow's own INFO logs")

    parser = argparse.ArgumentParser(
        prog="tfrec",
        parents=[common],
        description="E-commerce search and recommendation on TensorFlow: BERT text features, TFRS retrieval, "
        "TF-Ranking listwise ranking. Every command reads a YAML config (see configs/).",
        epilog="Scripts may rely on two lines: `tfrec train` ends with 'run_dir: <path>', and `tfrec export` prints "
        "'export: <model> <version_path>' per SavedModel, and `tfrec serve` prints 'serving: grpc=HOST:P rest=HOST:Q' "
        "once its models are loaded.",
    )
    parser.add_argument("--version", action="version", version="tfrec %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, func: Callable, help_text: str, description: Optional[str] = None, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=description or func.__doc__, **kwargs)
        p.set_defaults(func=func)
        return p

    p = add("train", cmd_train, "train the models of a config; prints 'run_dir: <path>' last")
    _add_config_args(p)
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="write into DIR instead of a new timestamped folder; an interrupted run in DIR resumes from its checkpoints")
    p.add_argument("--restart", action="store_true",
                   help="with --run-dir: start DIR's training over instead of resuming (its checkpoints are moved into "
                        "DIR/checkpoints-set-aside-<UTC time>/, not deleted)")
    p.add_argument("--warm-start", default=None, metavar="RUN_DIR",
                   help="start from a previous search run's two towers (ids grown, train.continual.replay_fraction of its data "
                        "replayed) and report metrics on its valid queries too")
    p = add("evaluate", cmd_evaluate, "write a run's report.html and PNG charts (valid split) and print its summary")
    _add_run_args(p, "the run folder to evaluate (default: the newest finished run under ./runs)")
    p = add("compare", cmd_compare, "paired bootstrap CIs between two runs (or two systems of a run) over queries/users")
    p.add_argument("runs", nargs="+", metavar="RUN", help="RUN_A RUN_B (same split), or one RUN with --system and --against")
    p.add_argument("--system", default=None, metavar="SYSTEM", help="system of RUN_A to compare (default: every system both runs have)")
    p.add_argument("--against", default=None, metavar="SYSTEM",
                   help="system of RUN_B (or of the one RUN) to compare with (default: --system)")
    p.add_argument("--metric", action="append", default=None, metavar="METRIC",
                   help="only this metric (repeatable), e.g. ndcg@10_e2e or recall@10")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p = add("export", cmd_export, "export a run's models as TF Serving SavedModels; --check verifies an export")
    _add_run_args(p, "the run folder to export (default: the newest finished run under ./runs; "
                     "with --check and no RUN, only the existing export is checked)")
    p.add_argument("--export-dir", default="export", metavar="DIR", help="where export/<model>/<version>/ goes (default: %(default)s)")
    p.add_argument("--model-version", type=int, default=None, metavar="N",
                   help="version number to write (default: one more than the newest in DIR)")
    p.add_argument("--version", dest="legacy_version", type=int, default=None, help=argparse.SUPPRESS)  # the old name of --model-version
    p.add_argument("--check", action="store_true", help="check the export in a fresh TensorFlow-only process (ops, signatures, warm-up)")
    p.add_argument("--scann", action="store_true", help="also write a ScaNN retrieval export under DIR/scann/ (needs a ScaNN-enabled server)")
    p.add_argument("--catalog-dtype", choices=("float32", "float16"), default=None,
                   help="how the retrieval export stores its catalog matrix (default: the run's export.catalog_dtype); "
                        "float16 halves its size")
    p.add_argument("--search-k", type=int, default=None, metavar="N",
                   help="results per query of the one-call search model (default: the run's export.search_k)")
    catalog = add("catalog", lambda a: 0, "serve a changed catalog (products added, retitled, removed) without retraining",
                  description="Work with the catalog an export serves: apply a changes file and publish a new version of "
                              "every search model (update).")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", metavar="CATALOG_COMMAND")
    catalog_sub.required = True
    p = catalog_sub.add_parser("update", parents=[common], help="apply a changes file to the served catalog: a new version "
                               "of every search model, without retraining", description=cmd_catalog_update.__doc__)
    p.set_defaults(func=cmd_catalog_update)
    _add_run_args(p, "the search run whose models serve the export (default: the newest finished run under ./runs)")
    p.add_argument("--export-dir", default="export", metavar="DIR", help="the export folder to update (default: %(default)s)")
    p.add_argument("--changes", required=True, metavar="FILE", help="CSV: action,product_id,title (+ the run's catalog columns)")
    p.add_argument("--model-version", type=int, default=None, metavar="N",
                   help="version number to write (default: one more than the newest in DIR)")
    p = add("tune", cmd_tune, "run a keras-tuner search declared in a config")
    _add_config_args(p)
    p = add("serve", cmd_serve, "serve an export folder over TF Serving's gRPC/REST APIs (development server)")
    p.set_defaults(log_timestamps=True)  # a long-running server's loads and version swaps read better with times
    p.add_argument("--export-dir", default="export", metavar="DIR", help="the export folder (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes it to the network)")
    p.add_argument("--grpc-port", type=int, default=8500, metavar="P", help="gRPC port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--rest-port", type=int, default=8501, metavar="Q", help="REST port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--model-config-file", default=None, metavar="FILE", help="a TF Serving models.config (default: every model in DIR)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="how often to look for new versions (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=1024, help="largest batch a request may carry (default: %(default)s)")
    p.add_argument("--max-request-bytes", type=int, default=4 << 20,
                   help="largest request in bytes, and most string bytes a request may carry once decoded (default: %(default)s)")
    p.add_argument("--max-string-bytes", type=int, default=64 << 10, help="longest string in a request (default: %(default)s)")
    p.add_argument("--workers", type=int, default=64,
                   help="gRPC worker threads, also the most gRPC calls in progress (default: %(default)s)")
    p.add_argument("--max-concurrent-executions", type=int, default=4, metavar="N",
                   help="requests each model runs at a time (default: %(default)s)")
    p.add_argument("--max-queued-requests", type=int, default=32, metavar="N",
                   help="requests each model queues beyond those; more get RESOURCE_EXHAUSTED / 429 (default: %(default)s)")
    p.add_argument("--rest-workers", type=int, default=32, help="REST worker threads (default: %(default)s)")
    p.add_argument("--rest-timeout-seconds", type=float, default=10.0, metavar="S",
                   help="close REST connections idle this long or this slow to send a request (default: %(default)s)")
    for name, func, help_text in (
        ("search", cmd_search, "search over served models: retrieve, look up titles, re-rank"),
        ("recommend", cmd_recommend, "recommend over served models: --history, --user or --similar"),
    ):
        p = add(name, func, help_text)
        if name == "search":
            p.add_argument("query", nargs="+", help="one or more queries (quote multi-word queries)")
            p.add_argument("--candidates", type=int, default=100, help="retrieved candidates the ranker re-orders (default: %(default)s)")
            p.add_argument("--no-rerank", action="store_true", help="return the retrieval order (no ranker call)")
        else:
            p.add_argument("--history", default=None, metavar="ID,ID,...", help="the shopper's items, oldest first")
            p.add_argument("--similar", default=None, metavar="ID", help="an item whose similar items to list")
            p.add_argument("--user", default=None, metavar="ID", help="a shopper whose recent events (in Redis) are the history; "
                                                                     "--history is then the fallback when Redis has none")
            p.add_argument("--redis", default=None, metavar="URL", help="redis://HOST:PORT/DB of the events (default: the config's "
                                                                       "online.redis_url)")
            _add_config_args(p, default=None)
        p.add_argument("--server", default="127.0.0.1:8500", metavar="HOST:PORT", help="gRPC address of TF Serving or tfrec serve (default: %(default)s)")
        p.add_argument("--rest", default=None, metavar="URL", help="use the REST API at URL instead of gRPC (e.g. 127.0.0.1:8501 or http://host:8501)")
        p.add_argument("--export-dir", default="export", metavar="DIR", help="export folder whose catalog.json gives titles (default: %(default)s)")
        p.add_argument("--catalog", default=None, metavar="FILE", help="a catalog.json to read titles from instead")
        p.add_argument("-k", "--top-k", type=int, default=10, help="results to print (default: %(default)s)")
        p.add_argument("--label", default=None, help="serve from this version label (e.g. canary)")
        p.add_argument("--timeout", type=float, default=10.0, help="deadline per request in seconds (default: %(default)s)")
        p.add_argument("--json", action="store_true", help="one JSON line per query instead of a table")
    p = add("bench", cmd_bench, "run benchmarks; results go to files under --out")
    p.add_argument("--out", default="bench_results", metavar="DIR", help="results folder (default: %(default)s)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    p.add_argument("--config", default="configs/default.yaml", metavar="FILE", help="config whose data the benchmarks read")
    p.add_argument("--export-dir", default="export", metavar="DIR", help="export the serving benchmark serves (default: %(default)s)")
    p.add_argument("--search-run", default=None, metavar="RUN", help="search run whose catalog updates --only realtime "
                                                                     "times (default: that scenario is skipped)")
    p.add_argument("--scale-sizes", default=None, metavar="LIST", help="events per size for --only scale, e.g. 1M,5M "
                                                                       "(default: 1M,5M,20M,50M)")

    data = add("data", lambda a: 0, "validate, download, prepare or synthesize datasets",
               description="Work with datasets: check a config's data and print its statistics (validate), download a "
                           "public dataset (download), turn a raw Kaggle Home Depot file into tfrec's CSVs (prepare), or "
                           "write a synthetic shop of any size for scale tests (synthesize).")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_sub.required = True
    p = data_sub.add_parser("validate", parents=[common], help="check a config's data and print its statistics", description=cmd_data_validate.__doc__)
    p.set_defaults(func=cmd_data_validate)
    _add_config_args(p)
    p = data_sub.add_parser(
        "download",
        parents=[common],
        help="download a public dataset (checksummed)",
        description=cmd_data_download.__doc__ + " Datasets behind a login print instructions instead.",
    )
    p.set_defaults(func=cmd_data_download)
    p.add_argument("name", help="movielens-100k, homedepot or amazon-scientific")
    p.add_argument("--dest", default="data", metavar="DIR", help="data root; the dataset lands in DIR/NAME (default: %(default)s)")
    p.add_argument("--url", default=None, help="a mirror URL instead of the official source")
    p.add_argument("--sha256", default=None, help="expected SHA-256 (needed with a mirror of another file)")
    p.add_argument("--force", action="store_true", help="download again even if the folder exists")
    p = data_sub.add_parser("prepare", parents=[common], help="validate, split and shard a config's data (or convert a raw Kaggle "
                            "Home Depot file)", description=cmd_data_prepare.__doc__)
    p.set_defaults(func=cmd_data_prepare)
    _add_config_args(p, default=None)
    p.add_argument("--out", metavar="DIR", help="the prepared dataset's folder (TFRecord shards + manifest.json); train with "
                                                "--set data.prepared=DIR")
    p.add_argument("--master", default=None, metavar="URL", help="Spark master for the interaction log: local[N] (default: "
                                                                 "local[--workers]), spark://HOST:PORT, yarn, k8s://...")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="local worker threads (default: every core)")
    p.add_argument("--shards", type=int, default=16, metavar="N", help="shards per split (default: %(default)s)")
    p.add_argument("--driver-memory", default="1g", metavar="SIZE", help="Spark driver JVM heap (default: %(default)s)")
    p.add_argument("--text-vectors", action="store_true", help="also encode every product's text with the config's frozen "
                                                               "text model on the workers (through the embedding cache)")
    p.add_argument("dataset", nargs="?", choices=["homedepot"], help="with --raw: the raw dataset to convert (homedepot)")
    p.add_argument("--raw", default=None, metavar="FILE", help="Kaggle's Home Depot train.csv or train.csv.zip")
    p.add_argument("--dest", default="data", metavar="DIR", help="with --raw: data root (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p = data_sub.add_parser("synthesize", parents=[common], help="write a synthetic shop of any size for scale tests",
                            description=cmd_data_synthesize.__doc__ + " Its metrics say nothing about model quality.")
    p.set_defaults(func=cmd_data_synthesize)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the files and their configs (created if missing)")
    p.add_argument("--products", required=True, type=_count, metavar="N", help="catalog size, e.g. 500k")
    p.add_argument("--users", required=True, type=_count, metavar="U", help="users, e.g. 250k")
    p.add_argument("--events", required=True, type=_count, metavar="E", help="interaction events in all, e.g. 5M (at least --users)")
    p.add_argument("--judgments", type=_count, default=0, metavar="J",
                   help="search judgments to write as train.csv/valid.csv (default: none)")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the same seed and sizes give the same bytes (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite files an earlier run wrote")
    events = add("events", lambda a: 0, "feed shoppers' recent events into Redis (ingest)",
                 description="Shoppers' recent events in Redis, which recommendations read as the freshest history: "
                             "stream a file of them in (ingest).")
    events_sub = events.add_subparsers(dest="events_command", metavar="EVENTS_COMMAND")
    events_sub.required = True
    p = events_sub.add_parser("ingest", parents=[common], help="stream a CSV or JSON-lines file of events into Redis",
                              description=cmd_events_ingest.__doc__)
    p.set_defaults(func=cmd_events_ingest)
    p.add_argument("file", metavar="FILE", help="CSV with a header (user_id,item_id,timestamp[,kind][,event_id]) or JSON "
                                                "lines, optionally .gz; - reads standard input")
    _add_config_args(p, default=None)
    p.add_argument("--redis", default=None, metavar="URL", help="redis://HOST:PORT/DB (default: the config's online.redis_url)")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="skip events of items the recommender export in DIR does not hold (its catalog.json)")
    p.add_argument("--column", action="append", metavar="FIELD=NAME",
                   help="the file's name for a field, e.g. user_id=visitorid (repeatable)")
    p.add_argument("--format", choices=["csv", "jsonl"], default=None, help="file format (default: from the extension, "
                                                                           "else the first character)")
    p.add_argument("--batch", type=int, default=500, metavar="N", help="events per Redis round trip (default: %(default)s)")
    p.add_argument("--rate", type=float, default=None, metavar="EPS", help="pace the stream at EPS events/s (default: as fast as Redis takes them)")
    p = add("redis", cmd_redis, "run a development redis-server on 127.0.0.1 until Ctrl-C (prints its URL)")
    p.set_defaults(log_timestamps=True)
    p.add_argument("--port", type=int, default=6379, help="port to listen on (default: %(default)s; 0 picks a free one)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="keep RDB snapshots in DIR (default: nothing is written to disk)")
    p.add_argument("--maxmemory-mb", type=int, default=256, metavar="MB",
                   help="memory cap; the least recently used keys are evicted beyond it (default: %(default)s)")
    p = add("init", cmd_init, "write a commented starter config (DIR/tfrec.yaml) for your own CSV or Parquet files")
    p.add_argument("kind", choices=list(STARTERS), help="; ".join("%s: %s" % (k, v.summary) for k, v in STARTERS.items()))
    p.add_argument("dir", metavar="DIR", help="the folder that holds (or will hold) your data files; created if missing")
    p.add_argument("--force", action="store_true", help="overwrite an existing DIR/tfrec.yaml")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tfrec`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if quiet and verbose:
        parser.error("--quiet and --verbose do not go together")
    if verbose:
        tfrec_log.show_tensorflow_info()
    expected = (ConfigError, DataError, DownloadError, NotAvailable, CommandError, FileNotFoundError, ValueError, OSError, compat.CompatibilityError)
    # Restored on return, so a run in-process (tests, a notebook) leaves the caller's logging as it was.
    with tfrec_log.configured(-1 if quiet else int(verbose), timestamps=getattr(args, "log_timestamps", False)):
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            _error("tfrec: interrupted")
            return 130
        except expected as err:
            if debug:
                raise
            code = EXIT_USAGE if isinstance(err, (NotAvailable, UsageError)) else EXIT_ERROR
            _error("tfrec %s: error: %s" % (args.command, _error_text(err)))
            return code
        except Exception as err:  # noqa: BLE001 (unexpected: still one line, the traceback behind --debug)
            if debug:
                raise
            _error("tfrec %s: internal error: %s: %s (run again with --debug for the traceback)" % (args.command, type(err).__name__, _one_line(err)))
            return EXIT_ERROR


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def _error_text(err: BaseException) -> str:
    """An error as one line; a config with several problems gets one more line per problem."""
    problems = getattr(err, "problems", None) if isinstance(err, ConfigError) else None
    if not problems or len(problems) < 2:
        return _one_line(err)
    return "\n".join(["%d problems in the config:" % len(problems)] + ["  %s" % " ".join(str(p).split()) for p in problems])


if __name__ == "__main__":
    sys.exit(main())
