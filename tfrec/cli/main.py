"""The ``tfrec`` command line: it only reads configs and calls library functions.

Contract for scripts: ``tfrec train`` ends by printing ``run_dir: <path>``; ``tfrec export``
prints one ``export: <model_name> <version_path>`` line per SavedModel. Errors exit non-zero
with one line on stderr (the traceback only with ``--debug``).
"""
from __future__ import annotations

from tfrec import compat  # noqa: F401  (first: sets Keras 2 mode before anything imports TensorFlow)

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from tfrec.version import __version__

EXIT_ERROR = 1
EXIT_USAGE = 2


class NotAvailable(RuntimeError):
    """A subcommand (or part of one) that this release does not provide yet."""


def _out(line: str) -> None:
    print(line, flush=True)


def _info(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- commands


def _load(args: argparse.Namespace):
    from tfrec.config import load_config

    return load_config(args.config, args.set or [])


def _load_and_describe(loaded) -> tuple[object, dict]:
    from tfrec.data import load_data
    from tfrec.data.stats import dataset_stats

    started = time.perf_counter()
    _info("loading %s from %s ..." % (loaded.config.data.dataset, loaded.config.data.dir))
    data = load_data(loaded)
    stats = dataset_stats(data, loaded.config)
    stats["load_seconds"] = round(time.perf_counter() - started, 2)
    return data, stats


def cmd_train(args: argparse.Namespace) -> int:
    """Train the configured models: search datasets train retrieval + ranker, evaluate, report."""
    from tfrec.data.slices import slice_search_data
    from tfrec.data.stats import dataset_stats, format_stats
    from tfrec.data.tables import SearchData
    from tfrec.runs import STATS_FILE, create_run_dir, write_json

    loaded = _load(args)
    run_dir = create_run_dir(loaded)
    _info("run directory %s (resolved config saved as config.yaml)" % run_dir)
    data, stats = _load_and_describe(loaded)
    dc = loaded.config.data
    if isinstance(data, SearchData) and (dc.max_train_queries or dc.max_valid_queries or dc.max_products):
        data = slice_search_data(
            data, max_train_queries=dc.max_train_queries, max_valid_queries=dc.max_valid_queries,
            max_products=dc.max_products, seed=loaded.config.run.seed,
        )
        stats = dataset_stats(data, loaded.config)
        _info("data sliced for this run (data.max_* keys): statistics below are of the slice")
    write_json(run_dir / STATS_FILE, stats)
    for line in format_stats(stats):
        _out(line)
    if isinstance(data, SearchData):
        from tfrec.search.pipeline import train_search

        started = time.perf_counter()
        train_search(loaded, data, run_dir)
        _out("trained in %.1f min" % ((time.perf_counter() - started) / 60))
    else:
        _info(
            "note: recommendation training (dataset %s) is not in this release yet; the run holds the data "
            "statistics only" % dc.dataset
        )
    _out("run_dir: %s" % run_dir)
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    """Check a configuration's data and print its statistics."""
    from tfrec.data.stats import format_stats

    loaded = _load(args)
    data, stats = _load_and_describe(loaded)
    for line in format_stats(stats):
        _out(line)
    drops = data.drops.lines()
    _out("data ok: %s" % ("no rows dropped" if not drops else "%d row(s) dropped in lenient mode" % data.drops.total))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """Download a public dataset from its official source and verify its checksum."""
    from tfrec.data import download

    folder = download.download(args.name, args.dest, url=args.url, sha256=args.sha256, progress=not args.quiet, force=args.force)
    _out("dataset: %s %s" % (args.name, folder))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Turn a raw Kaggle Home Depot file into tfrec's products/train/valid/test CSVs."""
    from tfrec.data import download

    folder = download.prepare_homedepot(args.raw, args.dest, force=args.force)
    _out("dataset: homedepot %s" % folder)
    return 0


def _require_run(run: str) -> Path:
    from tfrec.runs import CONFIG_FILE

    path = Path(run)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError("%s is not a tfrec run directory (no %s in it)" % (path, CONFIG_FILE))
    return path


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's trained models as SavedModels (TF Serving layout: <dir>/<model>/<version>/)."""
    run = _require_run(args.run)
    if not (run / "search_config.json").is_file():
        raise NotAvailable("run %s holds no trained search model; only search runs export in this release" % run)
    from tfrec.search.export import export_search, load_search_models

    _info("rebuilding the trained models of %s ..." % run)
    exported = export_search(load_search_models(run), Path(args.export_dir))
    for name, info in exported.items():
        _out("export: %s %s (%.1f MB)" % (name, info["path"], info["mb"]))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Show a run's valid-split evaluation (computed by `tfrec train`, saved as metrics.json)."""
    import json

    run = _require_run(args.run)
    metrics_file = run / "metrics.json"
    if not metrics_file.is_file():
        raise NotAvailable("run %s has no metrics.json: only search runs are trained and evaluated in this release" % run)
    from tfrec.reports.search import summary_table

    _info("evaluation saved by `tfrec train` in %s (report: %s)" % (metrics_file, run / "report.html"))
    _out(summary_table(json.loads(metrics_file.read_text(encoding="utf-8"))))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Run a keras-tuner search over the space declared in a config."""
    _load(args)  # still check the config, so a broken one is reported now
    raise NotAvailable("hyperparameter search is not in this release yet (keras-tuner itself works: see tfrec.compat.keras_tuner)")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve exported models (TF Serving configs and a local search/recommend pipeline)."""
    raise NotAvailable("serving is not in this release yet")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks and write their results under --out."""
    from tfrec.benchmarks import run_benchmarks

    for path in run_benchmarks(Path(args.out), only=args.only, data_config=args.config):
        _out("bench: %s" % path)
    return 0


# ----------------------------------------------------------------------------- parser


def _add_config_args(parser: argparse.ArgumentParser, default: Optional[str] = "configs/default.yaml") -> None:
    parser.add_argument("--config", default=default, metavar="FILE", help="YAML config (default: %(default)s)")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override one key, e.g. --set train.batch_size=64 (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfrec`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    parser = argparse.ArgumentParser(
        prog="tfrec",
        parents=[common],
        description="E-commerce search and recommendation on TensorFlow: BERT text features, TFRS retrieval, "
        "TF-Ranking listwise ranking. Every command reads a YAML config (see configs/).",
        epilog="Scripts may rely on two lines: `tfrec train` ends with 'run_dir: <path>', and `tfrec export` prints "
        "'export: <model> <version_path>' per SavedModel.",
    )
    parser.add_argument("--version", action="version", version="tfrec %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, func: Callable, help_text: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=func.__doc__, **kwargs)
        p.set_defaults(func=func)
        return p

    p = add("train", cmd_train, "train the models of a config; prints 'run_dir: <path>' last")
    _add_config_args(p)
    p = add("evaluate", cmd_evaluate, "evaluate a run's models on the valid split")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a directory under runs/")
    p = add("export", cmd_export, "export a run's models as TF Serving SavedModels")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a directory under runs/")
    p.add_argument("--export-dir", default="export", metavar="DIR", help="where export/<model>/<version>/ goes (default: %(default)s)")
    p = add("tune", cmd_tune, "run a keras-tuner search declared in a config")
    _add_config_args(p)
    add("serve", cmd_serve, "serve exported models")
    p = add("bench", cmd_bench, "run benchmarks; results go to files under --out")
    p.add_argument("--out", default="bench-results", metavar="DIR", help="results folder (default: %(default)s)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    p.add_argument("--config", default="configs/default.yaml", metavar="FILE", help="config whose data the data benchmark reads")

    data = add("data", lambda a: 0, "validate, download or prepare datasets")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = data_sub.add_parser("prepare", parents=[common], help="prepare a raw Kaggle Home Depot download", description=cmd_data_prepare.__doc__)
    p.set_defaults(func=cmd_data_prepare)
    p.add_argument("dataset", choices=["homedepot"])
    p.add_argument("--raw", required=True, metavar="FILE", help="Kaggle's train.csv or train.csv.zip")
    p.add_argument("--dest", default="data", metavar="DIR", help="data root (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing DIR/homedepot folder")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tfrec`` console script."""
    from tfrec.config import ConfigError
    from tfrec.data.download import DownloadError
    from tfrec.data.errors import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    expected = (ConfigError, DataError, DownloadError, NotAvailable, FileNotFoundError, ValueError, OSError, compat.CompatibilityError)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _info("tfrec: interrupted")
        return 130
    except expected as err:
        if debug:
            raise
        code = EXIT_USAGE if isinstance(err, NotAvailable) else EXIT_ERROR
        _info("tfrec %s: error: %s" % (args.command, _one_line(err)))
        return code
    except Exception as err:  # noqa: BLE001 (unexpected: still one line, the traceback behind --debug)
        if debug:
            raise
        _info("tfrec %s: internal error: %s: %s (run again with --debug for the traceback)" % (args.command, type(err).__name__, _one_line(err)))
        return EXIT_ERROR


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
