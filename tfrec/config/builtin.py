"""The configs that ship inside the package, and how a ``--config`` argument finds its file.

``tfrec train --config quick`` works from any folder: an existing file is read as given;
otherwise a built-in name (``quick``, ``quick.yaml`` or ``configs/quick.yaml``, as the README
and Makefile write it) is read from the package's own ``tfrec/configs/`` folder.
"""
from __future__ import annotations

from pathlib import Path

# A data folder inside the package (not a Python package): the built-in YAML files, which
# `extends:` each other by sibling file name.
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "configs"
_SUFFIX = ".yaml"


def builtin_configs() -> list[str]:
    """The names of the built-in configs, sorted (``default``, ``quick``, ...)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*" + _SUFFIX) if p.is_file())


def builtin_config_path(name: str) -> Path | None:
    """The packaged file of built-in config ``name`` (with or without .yaml), or None if there is none."""
    stem = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
        return None
    path = BUILTIN_DIR / (stem + _SUFFIX)
    return path if path.is_file() else None


def find_config(name_or_path: str | Path) -> Path | None:
    """The config file ``name_or_path`` means: an existing file as given, else a built-in config; None if neither."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    # `configs/quick.yaml` is how the README and the Makefile name the built-ins; outside the
    # repository there is no configs/ folder, so the packaged file stands in for it.
    names = [str(name_or_path)] + ([path.name] if path.parent == Path("configs") else [])
    for name in names:
        found = builtin_config_path(name)
        if found is not None:
            return found
    return None


def missing_config_message(name_or_path: str | Path) -> str:
    """Why ``name_or_path`` names no config: the path looked at and the built-in names there are."""
    return "config file not found (%s), and no built-in config has that name; built-in configs: %s" % (
        Path(name_or_path).expanduser().resolve(),
        ", ".join(builtin_configs()) or "none",
    )
