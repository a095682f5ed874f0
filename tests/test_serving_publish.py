"""Exports are all or nothing: one version for every model of a run, published together, crashes repaired.

The toy SavedModels of ``serving_toys`` stand in for a run's models; crashes are real SIGKILLs of a child process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import serving_toys as toys
from test_serving_deploy import parse_models_config
from tfrec.serving.deploy import write_export_deployment_files
from tfrec.serving.publish import JOURNAL_FILE, ExportSet, read_marker, version_runs
from tfrec.serving.savedmodel import version_folders

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
NAMES = ["search_retrieval", "search_ranker"]


def versions(export: Path) -> dict[str, list[int]]:
    """{model: sorted published versions} for the two toy models."""
    return {name: sorted(version_folders(export / name)) for name in NAMES}


def leftovers(export: Path) -> list[str]:
    """Temporary folders and journals anywhere under the export folder."""
    return sorted(str(p.relative_to(export)) for p in export.rglob("*") if ".tmp-" in p.name or p.name == JOURNAL_FILE)


def export_toys(export: Path, run: str, bias: float = 0.0) -> int:
    """One complete export of both toy models from ``run``; returns its version."""
    with ExportSet(export, NAMES, run=run) as exported:
        toys.save_toy_retrieval(exported, bias=bias)
        toys.save_toy_ranker(exported, bias=bias)
    return exported.version


def run_child(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports the toys (tests/ on sys.path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300)


def test_a_kill_between_models_publishes_nothing_and_the_rerun_is_one_version(tmp_path):
    export = tmp_path / "export"
    killed = run_child("""
        import os, signal
        import serving_toys as toys
        from tfrec.serving.publish import ExportSet
        with ExportSet(%r, %r, run="run-a") as export:
            toys.save_toy_retrieval(export)
            os.kill(os.getpid(), signal.SIGKILL)  # killed before the ranker is written
    """ % (str(export), NAMES))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert versions(export) == {"search_retrieval": [], "search_ranker": []}
    assert [p.split("/")[0] for p in leftovers(export)] == ["search_retrieval"]  # its temporary folder only
    assert export_toys(export, "run-a") == 1
    assert versions(export) == {"search_retrieval": [1], "search_ranker": [1]}
    assert leftovers(export) == []
    markers = [read_marker(export / name / "1") for name in NAMES]
    assert markers[0]["export"] == markers[1]["export"] and markers[0]["run"] == "run-a" and markers[0]["models"] == NAMES


CRASH_WHILE_PUBLISHING = """
    import os, signal
    from pathlib import Path
    import serving_toys as toys
    from tfrec.serving import publish

    real_replace, published = os.replace, []

    def replace(src, dst):
        if Path(dst).name.isdigit():  # a version folder: killed after the first of the set is in place
            if published:
                os.kill(os.getpid(), signal.SIGKILL)
            published.append(dst)
        return real_replace(src, dst)

    publish.os.replace = replace
    with publish.ExportSet(%r, %r, run="run-a") as export:
        toys.save_toy_retrieval(export)
        toys.save_toy_ranker(export)
"""


def test_a_kill_while_publishing_is_finished_by_the_next_export(tmp_path):
    export = tmp_path / "export"
    killed = run_child(CRASH_WHILE_PUBLISHING % (str(export), NAMES))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert versions(export) == {"search_retrieval": [1], "search_ranker": []}  # what the issue found
    assert (export / JOURNAL_FILE).is_file()
    assert export_toys(export, "run-a") == 2  # the next export first finishes version 1
    assert versions(export) == {"search_retrieval": [1, 2], "search_ranker": [1, 2]}
    assert leftovers(export) == []
    for version in ("1", "2"):
        assert len({read_marker(export / name / version)["export"] for name in NAMES}) == 1
    # two versions of the same run are one model: no stable/canary pair between them
    write_export_deployment_files(export)
    config = parse_models_config((export / "models.config").read_text())
    for name in NAMES:
        assert config[name][2:] == ("latest", 1, {"stable": 2}), config[name]


def test_a_publish_that_cannot_be_finished_is_rolled_back(tmp_path):
    export = tmp_path / "export"
    killed = run_child(CRASH_WHILE_PUBLISHING % (str(export), NAMES))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    for tmp in (export / "search_ranker").glob(".1.tmp-*"):  # its ranker is lost
        for path in sorted(tmp.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        tmp.rmdir()
    assert export_toys(export, "run-b") == 1
    assert versions(export) == {"search_retrieval": [1], "search_ranker": [1]}
    assert {read_marker(export / name / "1")["run"] for name in NAMES} == {"run-b"}
    assert leftovers(export) == []


def test_an_error_in_the_second_model_publishes_nothing(tmp_path):
    export = tmp_path / "export"
    with pytest.raises(RuntimeError, match="ranker failed"):
        with ExportSet(export, NAMES, run="run-a") as exported:
            toys.save_toy_retrieval(exported)
            raise RuntimeError("ranker failed")
    assert versions(export) == {"search_retrieval": [], "search_ranker": []} and leftovers(export) == []
    with pytest.raises(RuntimeError, match="before search_ranker was saved"):
        with ExportSet(export, NAMES, run="run-a") as exported:
            toys.save_toy_retrieval(exported)
    assert versions(export) == {"search_retrieval": [], "search_ranker": []} and leftovers(export) == []


def test_only_temporary_folders_of_dead_exports_are_removed(tmp_path):
    export = tmp_path / "export"
    model = export / "search_retrieval"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    old = time.time() - 7200
    folders = {
        "dead": model / (".1.tmp-%d-abc" % dead_pid),
        "live": model / (".1.tmp-%d-def" % os.getppid()),  # a running process: its export may still be going
        "old_unowned": model / ".1.tmp-ghi",  # written by an older tfrec: no pid in its name, hours old
        "new_unowned": model / ".1.tmp-jkl",
    }
    for name, folder in folders.items():
        (folder / "variables").mkdir(parents=True)
        if name != "new_unowned":
            for path in (folder / "variables", folder):
                os.utime(path, (old, old))
    export_toys(export, "run-a")
    assert {name for name, folder in folders.items() if folder.exists()} == {"live", "new_unowned"}
    assert versions(export) == {"search_retrieval": [1], "search_ranker": [1]}


def test_models_config_labels_runs_not_reruns(tmp_path):
    export = tmp_path / "export"
    export_toys(export, "run-a")
    export_toys(export, "run-a", bias=0.0)  # the same run exported again
    assert version_runs(export) == {name: {1: "run-a", 2: "run-a"} for name in NAMES}
    write_export_deployment_files(export)
    config = parse_models_config((export / "models.config").read_text())
    assert config["search_retrieval"][2:] == ("latest", 1, {"stable": 2})
    export_toys(export, "run-b", bias=1.0)
    write_export_deployment_files(export)
    config = parse_models_config((export / "models.config").read_text())
    for name in NAMES:  # the new run is canary, the newest version of the earlier run stable
        assert config[name][2:] == ("specific", [2, 3], {"stable": 2, "canary": 3}), config[name]
    assert "canary" in (export / "kubernetes.yaml").read_text()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the worker through /proc")
def test_the_conformance_worker_dies_with_its_parent(tmp_path):
    toys.write_toy_retrieval(tmp_path / "export")
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from tfrec.serving.conformance import check_export; "
                               "check_export(sys.argv[1])", str(tmp_path / "export")], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while worker is None and time.monotonic() < deadline:
            worker = next((pid for pid in _children(parent.pid)
                           if b"conformance_worker" in Path("/proc/%d/cmdline" % pid).read_bytes()), None)
            time.sleep(0.05)
        assert worker is not None, "the conformance worker did not start"
        time.sleep(0.5)  # it is importing TensorFlow now: seconds of work left
        parent.kill()  # SIGKILL: no chance to clean up
        parent.wait()
        deadline = time.monotonic() + 5
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker), "the worker outlived its parent by 5 s"
    finally:
        parent.kill()
        if worker is not None and _running(worker):
            os.kill(worker, signal.SIGKILL)
