"""One logging path: the `tfrec` logger, configured by tfrec.log (the CLI's --quiet/--verbose), results on stdout."""
from __future__ import annotations

import io
import logging
import os
import re
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


def test_quiet_keeps_warnings_and_turns_progress_bars_off(restored, tmp_path, capsys, monkeypatch):
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
    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)  # the encoding bar draws on stderr when it is a terminal
    EmbeddingCache(tmp_path / "a").encode_catalog(texts, encode, "enc-a", batch_size=2, progress=True)
    monkeypatch.undo()
    assert "1/2" in terminal.getvalue() and "encoding texts" in stderr.getvalue()
    assert log.getvalue() == "[training] epoch 1/1: loss=0.5\n"

    quiet = io.StringIO()
    configure(-1, stream=quiet)
    assert not progress_bars()
    terminal = Terminal()
    draw(terminal)
    monkeypatch.setattr(sys, "stderr", stderr := Terminal())
    EmbeddingCache(tmp_path / "b").encode_catalog(texts, encode, "enc-a", batch_size=2, progress=True)
    monkeypatch.undo()
    logging.getLogger("tfrec.training.checkpoints").warning("a warning still shows")
    assert terminal.getvalue() == "" and stderr.getvalue() == "" and capsys.readouterr().err == ""
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


class Clock:
    """A clock the test moves by hand: progress lines without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_progress_is_a_line_every_30_seconds_with_rate_and_eta(restored):
    out, clock, pipe = io.StringIO(), Clock(), io.StringIO()  # a StringIO is no terminal: lines, not a bar
    configure(stream=out)
    logger = logging.getLogger("tfrec.text.cache")
    with tfrec.log.Progress("encoding texts", 1200, logger=logger, unit="text", stream=pipe, clock=clock) as bar:
        for _ in range(12):
            clock.now += 5  # 100 texts every 5 s: 20 texts/s
            bar.update(100)
    assert pipe.getvalue() == ""
    assert out.getvalue().splitlines() == [
        "[text] encoding texts: 600/1200 text (50%), 20 text/s, ETA 30 s",
        "[text] encoding texts: 1200/1200 text (100%), 20 text/s",
        "[text] encoding texts: 1200/1200 text in 1 min 00 s (20 text/s)",
    ]
    assert "\r" not in out.getvalue()
    assert tfrec.log.duration(3725) == "1 h 02 min" and tfrec.log.duration(4.4) == "4 s"


def test_a_short_step_logs_nothing_and_the_epoch_line_carries_the_loss(restored):
    out, clock = io.StringIO(), Clock()
    configure(stream=out)
    with tfrec.log.Progress("encode", 10, logger=logging.getLogger("tfrec.retrieval.train"), stream=io.StringIO(), clock=clock) as bar:
        clock.now += 29
        bar.update(10)
    assert out.getvalue() == ""  # under 30 s: the caller's own line says it is done
    epoch = EpochProgress(1, 3, total_steps=40, stream=io.StringIO(), clock=clock)
    for _ in range(40):
        clock.now += 1
        epoch.update(32, 0.25)
    epoch.close({"loss": 0.25})
    assert out.getvalue().splitlines() == [
        "[training] epoch 2/3: 30/40 step (75%), 1 step/s, ETA 10 s, loss 0.25, examples/s 32",
        "[training] epoch 2/3: loss=0.25",
    ]
    quiet = io.StringIO()
    configure(-1, stream=quiet)
    with tfrec.log.Progress("encode", 10, stream=io.StringIO(), clock=clock) as bar:
        clock.now += 100
        bar.update(10)
    assert quiet.getvalue() == ""


def train_command(homedepot_slice: Path, runs: Path) -> list[str]:
    """`tfrec train` on a small slice: TensorFlow, BERT, the ScaNN check and four ranker heads, no training steps."""
    sets = ["data.dir=%s" % homedepot_slice, "evaluation.ks=[10]", "retrieval.top_k=10", "run.output_dir=%s" % runs,
            "retrieval.epochs=0", "ranking.epochs=0", "evaluation.baselines=false", "text.cache_dir=%s" % (runs / "cache")]
    return [sys.executable, "-m", "tfrec", "train", *[arg for item in sets for arg in ("--set", item)]]


def test_off_a_terminal_only_tfrec_lines_reach_stderr_and_verbose_brings_tensorflow_back(in_repo, homedepot_slice, tmp_path):
    """No CUDA/oneDNN/absl/ScaNN/transformers notices, no retracing warnings, no \\r frames; -v shows TensorFlow's lines."""
    command = train_command(homedepot_slice, tmp_path / "runs")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TRANSFORMERS_VERBOSITY")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines and [line for line in lines if not line.startswith("[")] == [], done.stderr[-3000:]
    for noise in ("cuInit", "oneDNN", "retracing", "absl", "partitioner", "deprecated", "non-serializable"):
        assert noise not in done.stderr, noise
    assert "[search] ranker" in done.stderr

    # --verbose: TensorFlow's own lines show from its import on; stop once they did (the run itself is the same).
    verbose = subprocess.Popen([*command[:4], "-v", *command[4:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env)
    seen = []
    try:
        for line in verbose.stderr:
            seen.append(line)
            if "tensorflow/" in line or "external/local_xla" in line:
                break
    finally:
        verbose.kill()
        verbose.wait()
    assert any("tensorflow/" in line or "external/local_xla" in line for line in seen), "".join(seen)[-3000:]


@pytest.mark.timeout(300)
def test_export_and_its_check_report_each_step(restored, tmp_path):
    """`tfrec export` says which model it writes and checks (n/m) and how long each took: never minutes of silence."""
    import serving_toys as toys
    from tfrec.serving.conformance import check_export
    from tfrec.serving.publish import ExportSet

    out = io.StringIO()
    configure(stream=out)
    with ExportSet(tmp_path, ["search_retrieval", "search_ranker"], run="r") as export:
        toys.save_toy_retrieval(export)
        toys.save_toy_ranker(export)
    check_export(tmp_path, timeout=300)
    lines = [re.sub(r"\d+(\.\d+)? (s|MB)", "T", line) for line in out.getvalue().splitlines()]
    assert lines == [
        "[export] search_retrieval v1 (1/2): writing the SavedModel ...",
        "[export] search_retrieval v1 (1/2): written in T (T)",
        "[export] search_ranker v1 (2/2): writing the SavedModel ...",
        "[export] search_ranker v1 (2/2): written in T (T)",
        "[export] checking search_ranker v1 (1/2) ...",
        "[export] checked search_ranker v1 (1/2): FAILED in T",  # the toy ranker's outputs have an unknown rank
        "[export] checking search_retrieval v1 (2/2) ...",
        "[export] checked search_retrieval v1 (2/2): OK in T",
    ]


def test_the_eta_leaves_out_a_slow_first_step(restored):
    """The first step pays for tracing (minutes on BERT): the rate and ETA count from the steps after it."""
    out, clock = io.StringIO(), Clock()
    configure(stream=out)
    bar = tfrec.log.Progress("epoch 1/1", 100, logger=logging.getLogger("tfrec.training.trainer"), unit="step",
                             stream=io.StringIO(), clock=clock)
    clock.now += 300
    bar.update(1)
    for _ in range(30):
        clock.now += 1
        bar.update(1)
    lines = out.getvalue().splitlines()
    # The first line waits for a second step (a rate of the first step's alone would say "ETA 8 h").
    assert lines == ["[training] epoch 1/1: 2/100 step (2%), 1 step/s, ETA 1 min 38 s"]
