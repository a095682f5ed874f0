"""One logging path: the `tfrec` logger, configured by tfrec.log (the CLI's --quiet/--verbose), results on stdout."""
from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfrec.log
from tfrec.cli.main import build_parser, main
from tfrec.log import configure, configured, progress_bars, stage
from tfrec.text.cache import EmbeddingCache
from tfrec.training.progress import EpochProgress, say

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, so progress bars draw on it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture()
def restored():
    """Leaves the `tfrec` logger's handlers and level as the test found them."""
    logger = logging.getLogger("tfrec")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if h.get_name() == tfrec.log.HANDLER_NAME]


def test_configure_sets_the_level_and_never_adds_a_second_handler(restored):
    for verbosity, level in ((0, logging.INFO), (-1, logging.WARNING), (1, logging.DEBUG), (-3, logging.WARNING), (2, logging.DEBUG)):
        configure(verbosity)
        assert restored.level == level and len(ours(restored)) == 1
    first, second = io.StringIO(), io.StringIO()
    configure(stream=first)
    configure(stream=second)
    logging.getLogger("tfrec.api").info("once")
    assert first.getvalue() == "" and second.getvalue() == "[api] once\n"
    tfrec.log.unconfigure()
    assert ours(restored) == [] and restored.level == logging.NOTSET


def test_lines_carry_the_stage_of_their_module(restored):
    out = io.StringIO()
    configure(stream=out)
    logging.getLogger("tfrec.search.stages.towers").info("towers: %d epochs", 2)
    logging.getLogger("tfrec.recommend.pipeline").info("done")
    logging.getLogger("tfrec.serving.server").warning("slow load")
    logging.getLogger("tfrec").error("top level")
    assert out.getvalue().splitlines() == [
        "[search] towers: 2 epochs", "[recommend] done", "[serving] warning: slow load", "[tfrec] error: top level"]
    assert stage("tfrec.training.progress") == "training" and stage("tensorflow") == "tensorflow"
    timed = io.StringIO()
    configure(stream=timed, timestamps=True)
    logging.getLogger("tfrec.serving.models").info("loaded")
    assert timed.getvalue().endswith(" [serving] loaded\n") and timed.getvalue()[:2] == "20"


def test_quiet_keeps_warnings_and_turns_progress_bars_off(restored, tmp_path, capsys):
    texts = ["cordless drill", "hammer", "wood screws"]

    def encode(batch: list[str]) -> np.ndarray:
        return np.ones((len(batch), 4), np.float32)

    def draw(stream: io.StringIO) -> None:
        bar = EpochProgress(0, 1, total_steps=2, stream=stream)
        bar.update(8, 0.5)
        bar.close({"loss": 0.5})

    log = io.StringIO()
    configure(0, stream=log)
    assert progress_bars()
    terminal = Terminal()
    draw(terminal)
    EmbeddingCache(tmp_path / "a").encode_catalog(texts, encode, "enc-a", batch_size=2, progress=True)
    assert "1/2" in terminal.getvalue() and "encoding texts" in capsys.readouterr().err
    assert log.getvalue() == "[training] epoch 1/1: loss=0.5\n"

    quiet = io.StringIO()
    configure(-1, stream=quiet)
    assert not progress_bars()
    terminal = Terminal()
    draw(terminal)
    EmbeddingCache(tmp_path / "b").encode_catalog(texts, encode, "enc-a", batch_size=2, progress=True)
    logging.getLogger("tfrec.training.checkpoints").warning("a warning still shows")
    assert terminal.getvalue() == "" and capsys.readouterr().err == ""
    assert quiet.getvalue() == "[training] warning: a warning still shows\n"


def test_verbose_shows_debug_lines(restored):
    out = io.StringIO()
    configure(0, stream=out)
    say("hidden by default", show=False)
    logging.getLogger("tfrec.api").debug("also hidden")
    assert out.getvalue() == ""
    configure(1, stream=out)
    say("a head's epoch", show=False)
    logging.getLogger("tfrec.api").debug("details")
    assert out.getvalue().splitlines() == ["[training] a head's epoch", "[api] details"]


def test_quiet_and_verbose_parse_before_or_after_the_subcommand():
    parser = build_parser()
    for argv in (["--quiet", "data", "validate"], ["data", "validate", "-q"], ["data", "download", "movielens-100k", "--quiet"]):
        args = parser.parse_args(argv)
        assert args.quiet and not getattr(args, "verbose", False)
    assert parser.parse_args(["-v", "evaluate", "--run", "r"]).verbose
    assert parser.parse_args(["evaluate", "--run", "r", "--verbose"]).verbose
    assert not hasattr(parser.parse_args(["data", "download", "movielens-100k"]), "quiet")
    with pytest.raises(SystemExit) as done:
        main(["--quiet", "evaluate", "--run", "r", "--verbose"])
    assert done.value.code == 2


def test_the_cli_in_process_leaves_logging_as_it_found_it(restored, tmp_path, capsys):
    before = list(restored.handlers), restored.level
    assert main(["--quiet", "export", "--run", str(tmp_path)]) == 1
    assert (list(restored.handlers), restored.level) == before
    assert "is not a tfrec run directory" in capsys.readouterr().err  # errors show under --quiet too


def test_importing_tfrec_adds_only_a_null_handler():
    """The library never configures logging: every module imported, the root logger has no handler, `tfrec` a NullHandler."""
    code = """
import importlib, logging, pkgutil
import tfrec
skip = ("tfrec.__main__", "tfrec.serving.conformance_worker", "tfrec.benchmarks.training_child")
for module in pkgutil.walk_packages(tfrec.__path__, "tfrec."):
    if module.name not in skip:
        importlib.import_module(module.name)
print(logging.getLogger().handlers, [type(h).__name__ for h in logging.getLogger("tfrec").handlers],
      logging.getLogger("tfrec").level)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[] ['NullHandler'] 0"


def test_cli_prints_results_on_stdout_and_logs_on_stderr(in_repo, homedepot_slice):
    """`tfrec data validate`: stdout holds the statistics only; the log is on stderr, and --quiet empties it."""
    sets = ["data.dir=%s" % homedepot_slice, "evaluation.ks=[10]", "retrieval.top_k=10"]
    command = [sys.executable, "-m", "tfrec", "data", "validate", *[arg for item in sets for arg in ("--set", item)]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[-1] == "data ok: no rows dropped" and any(line.startswith("catalog:") for line in out)
    assert not [line for line in out if line.startswith("[")]
    assert done.stderr.splitlines() == ["[api] loading homedepot from %s ..." % homedepot_slice.resolve()]
    for quiet in (["--quiet", *command[3:]], [*command[3:], "-q"]):
        again = subprocess.run([*command[:3], *quiet], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and again.stderr == "", again.stderr
        timeless = [[line for line in run.stdout.splitlines() if not line.startswith("load_seconds:")] for run in (again, done)]
        assert timeless[0] == timeless[1]
