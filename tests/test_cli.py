"""The tfrec command line: help, the run_dir contract, one-line errors, --debug tracebacks, run arguments, result tables."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfrec.cli.main import build_parser, main
from tfrec.config import load_config

SUBCOMMANDS = ["train", "evaluate", "export", "tune", "serve", "bench", "data", "init"]


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


def _undocumented(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
    """Commands without a description and arguments without help, walking every subparser."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description or not helps.get(name):
                    missing.append("command %s" % " ".join((*path, name)))
                missing += _undocumented(sub, (*path, name))
        elif not action.help:  # argparse.SUPPRESS (a hidden alias) is help set on purpose
            missing.append("%s %s" % (" ".join(path), "/".join(action.option_strings) or action.dest))
    return missing


def test_every_command_and_argument_has_help():
    """Every command (and `tfrec data`'s own) has a description and every argument a help text."""
    assert _undocumented(build_parser(), ("tfrec",)) == []


def test_run_arguments_are_positional_everywhere_and_run_is_still_accepted(capsys, tmp_path, monkeypatch):
    """evaluate and export take RUN like compare takes RUN_A RUN_B; --run RUN still means the same."""
    from tfrec.cli.main import _run_argument

    parser = build_parser()
    for command in ("evaluate", "export"):
        assert _run_argument(parser.parse_args([command, "runs/a"])) == "runs/a"
        assert _run_argument(parser.parse_args([command, "--run", "runs/a"])) == "runs/a"
        assert _run_argument(parser.parse_args([command, "runs/a", "--run", "runs/a"])) == "runs/a"
    assert parser.parse_args(["compare", "runs/a", "runs/b"]).runs == ["runs/a", "runs/b"]
    assert main(["evaluate", "runs/a", "--run", "runs/b"]) == 2
    assert "two runs given" in capsys.readouterr().err
    # A path that is not there says so, whichever spelling named it.
    missing = str(tmp_path / "no-such-run")
    for argv in (["export", missing], ["export", "--run", missing], ["evaluate", missing], ["compare", missing, missing]):
        assert main(argv) == 1
        assert "run %s does not exist" % missing in capsys.readouterr().err


def _fake_run(folder: Path, status: str, mtime: float) -> Path:
    """A run folder with a config.yaml and a run.json saying ``status`` (nothing to export)."""
    from tfrec.runs import RunFolder, write_json

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("run:\n  name: x\n")
    record = {"kind": "search", "status": status, "tfrec_version": "0", "config_hash": "0", "started": "2025-01-01T00:00:00Z",
              "error": "ValueError: boom" if status == "failed" else None}
    write_json(RunFolder(folder).record_file, record)
    for path in folder.iterdir():
        os.utime(path, (mtime, mtime))
    return folder


def test_without_run_the_newest_finished_run_is_used_and_named(capsys, tmp_path, monkeypatch):
    """`tfrec export` / `evaluate` without RUN take the newest finished run under ./runs, say which, pass over failed ones."""
    monkeypatch.chdir(tmp_path)
    assert main(["export"]) == 2
    assert "no RUN given and no finished run under ./runs" in capsys.readouterr().err
    now = time.time()
    _fake_run(tmp_path / "runs" / "old", "finished", now - 300)
    _fake_run(tmp_path / "runs" / "broken", "failed", now - 60)
    assert main(["export"]) == 2  # the picked run has no search_config.json: nothing to export
    err = capsys.readouterr().err
    assert "no RUN given: using runs/old, the newest finished run under ./runs" in err
    assert "runs/broken (failed)" in err and "holds no exportable model" in err
    assert main(["evaluate"]) == 2  # picked, then found without metrics.json
    assert "using runs/old" in capsys.readouterr().err
    # --check without RUN checks the existing export only: it never picks a run.
    assert main(["export", "--check", "--export-dir", str(tmp_path / "nothing")]) != 0
    assert "using runs/old" not in capsys.readouterr().err


def test_export_model_version_and_its_deprecated_spelling(capsys, tmp_path):
    """export's version flag is --model-version; --version still works there with a note, tfrec --version is tfrec's."""
    parser = build_parser()
    assert parser.parse_args(["export", "r", "--model-version", "7"]).model_version == 7
    run = _fake_run(tmp_path / "run", "finished", time.time())
    assert main(["export", str(run), "--version", "3"]) == 2
    err = capsys.readouterr().err
    assert "`tfrec export --version N` is deprecated: use --model-version N" in err
    assert main(["export", str(run), "--version", "3", "--model-version", "4"]) == 2
    assert "disagree" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("tfrec ")


def test_results_print_as_tables_with_headers():
    """Search and recommendation results print as aligned columns under a header row."""
    from tfrec.cli.tables import format_table, hits_table
    from tfrec.serving.service import Hit

    hits = [Hit(1, "100001", "Cordless Drill 18V", 1.25, 0.5), Hit(12, "7", "t" * 100, -0.031, 0.4)]
    lines = hits_table(hits, header="query: drill").splitlines()
    assert lines[0] == "query: drill"
    assert lines[1].split() == ["rank", "score", "product", "id", "title"]
    assert lines[2].split()[:3] == ["1", "1.2500", "100001"] and lines[3].split()[:3] == ["12", "-0.0310", "7"]
    assert lines[3].endswith("t" * 77 + "...")
    starts = {line.index(value) + len(value) for line, value in zip(lines[1:], ("score", "1.2500", "-0.0310"))}
    assert len(starts) == 1  # the score column is right-aligned under its header
    assert lines[1].index("title") == lines[2].index("Cordless")
    assert "item id" in hits_table(hits, id_label="item id") and hits_table([], "q") == "q\n  (no results)"
    assert format_table(("a", "bb"), [(1, 2), (333, 4)], numeric=(True, True)).splitlines() == ["    a  bb", "    1   2", "  333   4"]


def test_the_dev_server_shows_its_ports(tmp_path):
    """`tfrec.serve()`'s object says where it serves: repr and attributes, before and without starting it."""
    from tfrec.serving.server import DevServer

    server = DevServer(tmp_path, grpc_port=8600, rest_port=None)
    assert (server.grpc_port, server.rest_port, server.host, server.export_dir) == (8600, None, "127.0.0.1", tmp_path)
    assert repr(server) == "DevServer(export_dir=%r, host='127.0.0.1', grpc_port=8600, rest_port=None, not started)" % str(tmp_path)


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
    code, out, err = run_cli(capsys, "evaluate", str(run_dir))
    assert code == 0 and "tfrec search" in out and "report.html" in out, err
    code, again, err = run_cli(capsys, "evaluate", "--run", str(run_dir))  # the older spelling
    assert code == 0 and again == out
    (run_dir / "metrics.json").unlink()
    (run_dir / "search_config.json").unlink()
    for argv, says in ((["export", str(run_dir)], "holds no exportable model"), (["evaluate", str(run_dir)], "did not finish")):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and says in err and out == "", err
    code, _, err = run_cli(capsys, "export", str(tmp_path))
    assert code == 1 and "is not a tfrec run directory" in err
    code, _, err = run_cli(capsys, "export", str(tmp_path / "nowhere"))
    assert code == 1 and "run %s does not exist" % (tmp_path / "nowhere") in err


def test_config_problems_are_listed_together_and_data_checks_fail_before_a_run_folder(capsys, in_repo, homedepot_slice, tmp_path):
    """Every config problem is listed, one per line, naming its key and source; cut-offs the data cannot
    serve fail right after loading, naming the --set, with no run folder left behind."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: %s\nretrieval:\n  epochs: \"2\"\n  bach_size: 3\n" % Path("configs/quick.yaml").resolve())
    code, _, err = run_cli(capsys, "data", "validate", "--config", str(bad), "--set", "ranking.list_size=1")
    lines = err.strip().splitlines()
    assert code == 1 and lines[0] == "tfrec data: error: 3 problems in the config:"
    assert "  %s: retrieval.epochs: expected int, got '2' (a quoted string: write the number without quotes)" % bad in lines
    assert "  %s: retrieval.bach_size: unknown key (did you mean 'batch_size'?)" % bad in lines
    assert "  --set ranking.list_size=1: ranking.list_size: must be >= 2, got 1" in lines

    runs = tmp_path / "runs"
    started = time.perf_counter()
    code, out, err = run_cli(capsys, "train", *slice_args(homedepot_slice, runs), "--set", "evaluation.ks=[10,100000]",
                             "--set", "retrieval.top_k=50000")
    seconds = time.perf_counter() - started
    assert code == 1 and "2 problems in the config:" in err, err
    assert "  --set evaluation.ks=[10,100000]: evaluation.ks: k=100000 is larger than the catalog (" in err
    assert "  --set retrieval.top_k=50000: retrieval.top_k: 50000 is larger than the catalog (" in err
    assert not runs.exists() or not any(runs.iterdir())  # no half-made run folder
    assert "run_dir:" not in out and seconds < 60


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
    for argv, expected in ((["recommend"], "--history"), (["recommend", "--history", "a", "--similar", "b"], "--history")):
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
