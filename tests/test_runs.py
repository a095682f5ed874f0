"""The declared run folder: run.json written at the start and the end of `tfrec train`, the run kind read
from it (settings files for older runs), unfinished runs refused by export / evaluate / compare / warm
start, and atomic JSON writes."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

import tfrec
from cli_runs import in_repository_root
from conftest import write_homedepot_slice
from tfrec import api
from tfrec.cli.main import main
from tfrec.config import load_config
from tfrec.reports.evaluation import run_kind
from tfrec.runs import (
    FAILED, FINISHED, MOVIELENS, RECOMMENDATION, RUNNING, SEARCH, RunFolder, RunIncomplete, config_hash, list_runs,
    newest_finished_run, write_json,
)
from tfrec.training.warm_start import WarmStartError, read_previous_run
from tfrec.version import __version__


def quick_search(data: Path, runs: Path) -> list[str]:
    """The whole search path on a small slice, without training steps or baselines (as the CLI tests run it)."""
    return ["data.dir=%s" % data, "evaluation.ks=[10]", "retrieval.top_k=10", "run.output_dir=%s" % runs,
            "retrieval.epochs=0", "ranking.epochs=0", "evaluation.baselines=false"]


def only_run(runs: Path) -> Path:
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_datasets):
    """One quick search run through tfrec.train; also what its run.json said as training started, and its stdout."""
    root = tmp_path_factory.mktemp("runs")
    data = write_homedepot_slice(shared_datasets, root / "homedepot")
    seen = {}
    real_pipeline = api._train_pipeline

    def train_and_look(kind, loaded, data, folder, warm_start, strategy=None):
        seen["record"] = RunFolder(only_run(root / "runs")).record()
        return real_pipeline(kind, loaded, data, folder, warm_start, strategy)

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, in_repository_root(), contextlib.redirect_stdout(stdout):
        patch.delenv("TFREC_DATA_DIR", raising=False)
        patch.setattr(api, "_train_pipeline", train_and_look)
        folder = tfrec.train("configs/default.yaml", quick_search(data, root / "runs"))
    return folder, seen["record"], stdout.getvalue()


@pytest.fixture()
def unfinished(trained, tmp_path):
    """A copy of the trained run whose run.json says it is still running."""
    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy)
    RunFolder(copy).start(SEARCH, load_config(RunFolder(copy).config, []))
    return copy


def test_train_writes_run_json_running_at_start_and_finished_at_the_end(trained):
    folder, at_start, stdout = trained
    assert at_start is not None and at_start.status == RUNNING and at_start.finished is None
    assert at_start.kind == SEARCH and at_start.tfrec_version == __version__
    record = RunFolder(folder).record()
    assert record.status == FINISHED and record.error is None and record.kind == SEARCH
    assert record.started == at_start.started and record.finished >= record.started
    assert record.config_hash == at_start.config_hash == config_hash(load_config(RunFolder(folder).config, []))
    lines = stdout.strip().splitlines()
    assert lines[-1] == "run_dir: %s" % folder and lines[-2].startswith("trained in ")
    summary = api.evaluate(folder).summary
    assert summary.splitlines()[0] in lines[:-2]  # the report's summary prints before the timing


def test_kind_comes_from_run_json(trained, tmp_path):
    folder = trained[0]
    assert RunFolder(folder).kind() == SEARCH
    metrics = json.loads(RunFolder(folder).metrics.read_text())
    assert run_kind(metrics, folder) == run_kind(metrics) == SEARCH
    # The record wins over the files a folder happens to hold.
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(RunFolder(folder).search_settings, RunFolder(copy).search_settings)
    record = RunFolder(folder).record()
    record.kind = RECOMMENDATION
    write_json(RunFolder(copy).record_file, record.as_dict())
    assert RunFolder(copy).kind() == RECOMMENDATION
    record.kind = "nonsense"
    write_json(RunFolder(copy).record_file, record.as_dict())
    with pytest.raises(ValueError, match="unknown run kind 'nonsense'"):
        RunFolder(copy).kind()


def test_older_runs_without_run_json_fall_back_to_their_settings_files(trained, tmp_path, in_repo):
    old = tmp_path / "old"
    shutil.copytree(trained[0], old)
    RunFolder(old).record_file.unlink()
    assert RunFolder(old).record() is None and RunFolder(old).kind() == SEARCH
    RunFolder(old).require_finished()  # nothing says it did not finish
    assert api.evaluate(old).summary == api.evaluate(trained[0]).summary
    assert read_previous_run(old).retrieval_vocabulary
    for name, write, kind in (("rec", lambda f: write_json(f.recommendation_settings, {"top_k": 10}), RECOMMENDATION),
                              ("ml", lambda f: write_json(f.metrics, {"task": MOVIELENS}), MOVIELENS)):
        folder = RunFolder(tmp_path / name)
        write(folder)
        assert folder.kind() == kind
    with pytest.raises(FileNotFoundError, match="is it a tfrec run folder"):
        RunFolder(tmp_path / "ml" / "nothing").kind()


def test_export_evaluate_compare_and_warm_start_refuse_a_running_run(unfinished, capsys):
    says = r"training of %s did not finish \(status running\): resume it with tfrec train --run-dir" % unfinished
    with pytest.raises(RunIncomplete, match=says):
        tfrec.export(unfinished, unfinished / "export")
    with pytest.raises(RunIncomplete, match=says):
        tfrec.evaluate(unfinished)
    with pytest.raises(RunIncomplete, match=says):
        tfrec.compare(unfinished, system="tfrec_search", against="tfrec_hybrid")
    with pytest.raises(WarmStartError, match="did not finish"):
        read_previous_run(unfinished)
    for argv in (["export", "--run", str(unfinished), "--export-dir", str(unfinished / "export")],
                 ["evaluate", "--run", str(unfinished)]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert "did not finish (status running)" in captured.err and captured.out == ""
    assert not (unfinished / "export").exists()


def test_a_failed_run_is_refused_with_its_error(unfinished, capsys):
    RunFolder(unfinished).finish(FAILED, error="ValueError: boom")
    with pytest.raises(RunIncomplete, match=r"status failed: ValueError: boom"):
        tfrec.evaluate(unfinished)
    assert main(["export", "--run", str(unfinished)]) == 2
    assert "did not finish (status failed: ValueError: boom)" in capsys.readouterr().err


def test_a_pipeline_error_marks_the_run_failed(homedepot_slice, tmp_path, in_repo):
    """A warm start from a folder that is no run fails inside the search pipeline: run.json says failed, with why."""
    runs = tmp_path / "runs"
    with pytest.raises(WarmStartError, match="not a trained search run"):
        tfrec.train("configs/default.yaml", quick_search(homedepot_slice, runs), warm_start=tmp_path / "empty")
    record = RunFolder(only_run(runs)).record()
    assert record.status == FAILED and record.finished is not None
    assert record.error.startswith("WarmStartError: --warm-start %s is not a trained search run" % (tmp_path / "empty"))
    assert "\n" not in record.error


def test_an_interrupted_run_is_marked_failed(homedepot_slice, tmp_path, in_repo, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_train_pipeline", interrupted)
    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        tfrec.train("configs/default.yaml", quick_search(homedepot_slice, runs))
    record = RunFolder(only_run(runs)).record()
    assert (record.status, record.error) == (FAILED, "KeyboardInterrupt")


def test_write_json_is_atomic_and_writes_numpy(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"n": np.int64(3), "v": np.array([0.5, 1.0]), "x": np.float32(0.25)})
    assert json.loads(path.read_text()) == {"n": 3, "v": [0.5, 1.0], "x": 0.25}

    class Unwritable:
        def __str__(self) -> str:
            raise RuntimeError("cannot serialize")

    with pytest.raises(RuntimeError, match="cannot serialize"):
        write_json(path, {"n": 4, "bad": Unwritable()})
    assert json.loads(path.read_text())["n"] == 3  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # and no temporary file is left


def _run_with_status(folder: Path, status: str, mtime: float, error: Optional[str] = None) -> Path:
    """A run folder holding a config.yaml and a run.json that says ``status`` (written ``mtime``)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("run:\n  name: x\n")
    record = {"kind": SEARCH, "status": status, "tfrec_version": __version__, "config_hash": "0",
              "started": "2025-01-01T00:00:00Z", "error": error}
    write_json(RunFolder(folder).record_file, record)
    for path in folder.iterdir():
        os.utime(path, (mtime, mtime))
    return folder


def test_the_newest_finished_run_passes_over_unfinished_ones(tmp_path):
    """What `tfrec export` / `evaluate` use without RUN: the most recently finished run, and what was passed over."""
    now = time.time()
    old = _run_with_status(tmp_path / "a-old", FINISHED, now - 300)
    newer = _run_with_status(tmp_path / "b-newer", FINISHED, now - 200)
    failed = _run_with_status(tmp_path / "c-failed", FAILED, now - 100, "ValueError: boom")
    running = _run_with_status(tmp_path / "d-running", RUNNING, now - 10)
    (tmp_path / "not-a-run").mkdir()  # no config.yaml: ignored
    assert list_runs(tmp_path) == [(running, RUNNING), (failed, FAILED), (newer, FINISHED), (old, FINISHED)]
    assert newest_finished_run(tmp_path) == (newer, [(running, RUNNING), (failed, FAILED)])
    assert newest_finished_run(tmp_path / "missing") == (None, [])
    RunFolder(newer).finish(FAILED, error="KeyboardInterrupt")  # now the newest record: still passed over
    assert newest_finished_run(tmp_path)[0] == old


def test_exporting_a_failed_run_fails_at_once_without_tensorflow(tmp_path):
    """`tfrec export RUN` on a failed run says its status and error from run.json before any TensorFlow work."""
    run = _run_with_status(tmp_path / "run", FAILED, time.time(), "ValueError: evaluation.ks is larger than the catalog")
    code = ("import sys; from tfrec.cli.main import main; rc = main(['export', sys.argv[1], '--export-dir', sys.argv[2]]); "
            "print('tensorflow' in sys.modules, rc)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(run), str(tmp_path / "export")], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "2"], done.stderr
    assert "did not finish (status failed: ValueError: evaluation.ks is larger than the catalog)" in done.stderr
    assert time.perf_counter() - started < 60 and not (tmp_path / "export").exists()
    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError, match="run %s does not exist" % missing):
        tfrec.export(missing, tmp_path / "export")
