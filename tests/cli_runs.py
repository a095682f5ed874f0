"""Helpers for tests that drive `tfrec train` / `tfrec export` in-process from module-scoped fixtures."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from tfrec.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def in_repository_root() -> Iterator[None]:
    """Module fixtures cannot use monkeypatch.chdir: run from the root, where configs/ resolves."""
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


def train_run(output_dir: Path, config: str, settings: Sequence[str], run_prefix: str) -> Path:
    """`tfrec train --config CONFIG --set ...` into ``output_dir``; returns the one run folder it made."""
    args = ["train", "--config", config]
    for item in list(settings) + ["run.output_dir=%s" % output_dir]:
        args += ["--set", item]
    with in_repository_root():
        assert main(args) == 0
    runs = [p for p in Path(output_dir).iterdir() if p.is_dir() and p.name.startswith(run_prefix)]
    assert len(runs) == 1, runs
    return runs[0]


def export_run(run_dir: Path, export_dir: Path) -> Path:
    """`tfrec export RUN --export-dir DIR`; returns DIR."""
    with in_repository_root():
        assert main(["export", str(run_dir), "--export-dir", str(export_dir)]) == 0
    return export_dir
