"""The package's layering (.importlinter): lower layers never import higher ones, no import cycles."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    """lint-imports passes on the whole package (its report says which import breaks which contract)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports not found: install the dev extras (pip install -e '.[dev]')"
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_contract_lists_every_package() -> None:
    """Every subpackage and top-level module of tfrec has a place in the layers contract."""
    contract = (ROOT / ".importlinter").read_text(encoding="utf-8")
    listed = {name.strip() for line in contract.splitlines() if line.startswith("    tfrec.")
              for name in line.replace(":", "|").split("|")}
    package = ROOT / "tfrec"
    modules = {"tfrec." + p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules |= {"tfrec." + p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert modules - listed == set(), "add these to a layer in .importlinter: %s" % sorted(modules - listed)
