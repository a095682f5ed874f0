"""The tfrec command line: help, the run_dir contract, one-line errors, --debug tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tfrec.cli.main import build_parser, main
from tfrec.config import load_config

SUBCOMMANDS = ["train", "evaluate", "export", "tune", "serve", "bench", "data"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def slice_args(folder: Path, runs: Path) -> list[str]:
    # The whole search path runs, without training steps or baselines: these tests are about the CLI.
    sets = ["data.dir=%s" % folder, "evaluation.ks=[10]", "retrieval.top_k=10", "run.output_dir=%s" % runs,
            "retrieval.epochs=0", "ranking.epochs=0", "evaluation.baselines=false", "text.cache_dir=%s" % (runs / "cache")]
    return [arg for item in sets for arg in ("--set", item)]


def test_help_lists_every_subcommand(capsys):
    """`tfrec --help` names every subcommand and the two script contracts."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    assert "run_dir: <path>" in out and "export: <model> <version_path>" in out


@pytest.mark.parametrize("argv", [[c] for c in SUBCOMMANDS] + [["data", "validate"], ["data", "download"], ["data", "prepare"]])
def test_each_subcommand_has_help(capsys, argv):
    """Every subcommand answers --help with a description and its options."""
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: tfrec " + " ".join(argv) in out and "--debug" in out


def test_train_prints_run_dir_last_and_saves_config(capsys, in_repo, homedepot_slice, tmp_path):
    """`tfrec train` ends with 'run_dir: <path>'; the run holds the resolved config and data stats."""
    code, out, err = run_cli(capsys, "train", "--config", "configs/default.yaml", *slice_args(homedepot_slice, tmp_path / "runs"))
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("run_dir: ")
    run_dir = Path(last.split(": ", 1)[1])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("homedepot-search-")
    stats = json.loads((run_dir / "data_stats.json").read_text())
    products = len((homedepot_slice / "products.csv").read_text(encoding="utf-8").splitlines()) - 1
    assert stats["catalog"]["items"] == products > 0
    saved = load_config(run_dir / "config.yaml")
    assert saved.config.data.dir == str(homedepot_slice.resolve())
    assert saved.config.evaluation.ks == [10]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"tfrec_hybrid", "tfrec_search"} <= set(metrics["systems"])
    assert (run_dir / "report.html").is_file()


def test_two_runs_in_the_same_second_get_distinct_dirs(in_repo, homedepot_slice, tmp_path):
    """Run directories never collide (two runs of one config created back to back)."""
    from tfrec.runs import create_run_dir

    loaded = load_config("configs/default.yaml", ["data.dir=%s" % homedepot_slice, "run.output_dir=%s" % (tmp_path / "runs")])
    dirs = {create_run_dir(loaded) for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() for d in dirs)


def test_errors_are_one_line_and_nonzero(capsys, in_repo, tmp_path):
    """Config and data errors exit 1 with a single stderr line naming the problem."""
    code, out, err = run_cli(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("tfrec train: error: ") and "nope.yaml: config file not found" in err
    code, _, err = run_cli(capsys, "data", "validate", "--set", "retrieval.batch_size=-1")
    assert code == 1 and "--set retrieval.batch_size=-1: retrieval.batch_size: must be >= 2, got -1" in err
    assert err.count("\n") == 1


def test_debug_shows_the_traceback(capsys, in_repo, tmp_path):
    """--debug re-raises so the full traceback shows."""
    from tfrec.config import ConfigError

    with pytest.raises(ConfigError):
        main(["train", "--debug", "--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", str(tmp_path / "nope.yaml")])


def test_data_validate_reports_statistics(capsys, in_repo, homedepot_slice, tmp_path):
    """`tfrec data validate` prints the dataset statistics and a final verdict."""
    code, out, err = run_cli(capsys, "data", "validate", *slice_args(homedepot_slice, tmp_path)[:6])
    assert code == 0, err
    assert "catalog:" in out and "overlap:" in out
    assert out.strip().splitlines()[-1] == "data ok: no rows dropped"


def test_evaluate_shows_the_saved_evaluation_and_incomplete_runs_say_so(capsys, in_repo, homedepot_slice, tmp_path):
    """`evaluate` prints a run's saved metrics; a run without them exits 2 saying what is missing."""
    code, out, _ = run_cli(capsys, "train", *slice_args(homedepot_slice, tmp_path / "runs"))
    run_dir = Path(out.strip().splitlines()[-1].split(": ", 1)[1])
    code, out, err = run_cli(capsys, "evaluate", "--run", str(run_dir))
    assert code == 0 and "tfrec search" in out and "report.html" in out
    (run_dir / "metrics.json").unlink()
    (run_dir / "search_config.json").unlink()
    for argv, says in ((["export", "--run", str(run_dir)], "holds no exportable model"), (["evaluate", "--run", str(run_dir)], "did not finish")):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and says in err and out == "", err
    code, _, err = run_cli(capsys, "export", "--run", str(tmp_path))
    assert code == 1 and "is not a tfrec run directory" in err


def test_download_of_a_login_dataset_prints_instructions(capsys, tmp_path):
    """Datasets behind a login fail with instructions instead of a traceback."""
    code, _, err = run_cli(capsys, "data", "download", "homedepot", "--dest", str(tmp_path))
    assert code == 1 and "kaggle" in err.lower()


def test_usage_errors_exit_2(capsys):
    """Unknown subcommands and missing required options are argparse usage errors (exit 2)."""
    for argv in (["frobnicate"], ["search"], []):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
    # Arguments that parse but do not go together: exit 2 with one line naming them.
    for argv, expected in ((["export"], "--run RUN_DIR"), (["recommend"], "--history"), (["recommend", "--history", "a", "--similar", "b"], "--history")):
        assert main(argv) == 2
        assert expected in capsys.readouterr().err


def test_console_script_in_a_subprocess(in_repo, homedepot_slice, tmp_path):
    """The installed `tfrec` entry point runs train end to end and keeps stdout clean for scripts."""
    exe = Path(sys.executable).with_name("tfrec")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "tfrec"]
    done = subprocess.run([*command, "train", *slice_args(homedepot_slice, tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("run_dir: ")
    # Progress is tfrec's log, on stderr as [<stage>] lines; stdout holds the results only.
    assert not [line for line in done.stdout.splitlines() if line.startswith("[")], done.stdout
    assert "[api] run directory " in done.stderr and "[search] " in done.stderr
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("tfrec ")


def test_cli_imports_without_tensorflow():
    """`tfrec --help` and config/data commands do not pay for importing TensorFlow."""
    code = "import sys; from tfrec.cli.main import build_parser; build_parser(); print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert build_parser().prog == "tfrec"
