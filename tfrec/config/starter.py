"""Starter configs for a user's own data: what ``tfrec init search|recommend DIR`` writes.

A starter is a commented YAML file (``tfrec/config/starters/<kind>.yaml``) that names the files
and columns tfrec reads and says what each one means; the user edits the names to match theirs.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

STARTER_DIR = Path(__file__).resolve().parent / "starters"
STARTER_FILE = "tfrec.yaml"


@dataclass(frozen=True)
class StarterKind:
    """One kind of starter: the task it configures and the data files it expects in DIR."""

    name: str
    summary: str
    files: tuple[str, ...]


STARTERS = {
    "search": StarterKind("search", "product search: a catalog plus graded (query, product) judgments",
                          ("products.csv", "train.csv", "valid.csv")),
    "recommend": StarterKind("recommend", "recommendation: an item catalog plus a log of (user, item, time) interactions",
                             ("items.csv", "interactions.csv")),
}


class StarterExists(FileExistsError):
    """The starter's target file is already there and overwriting it was not asked for."""


def starter_kinds() -> list[str]:
    """The kinds of starter ``tfrec init`` writes."""
    return list(STARTERS)


def render_starter(kind: str, folder: Path, config_path: Path) -> str:
    """The text of the ``kind`` starter for data in ``folder``, mentioning ``config_path`` in its commands."""
    if kind not in STARTERS:
        raise ValueError("unknown starter %r; choose one of: %s" % (kind, ", ".join(STARTERS)))
    template = Template((STARTER_DIR / ("%s.yaml" % kind)).read_text(encoding="utf-8"))
    # A run name from the folder's name, in the characters run folders use.
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "my"
    return template.substitute(
        name="%s-%s" % (name, kind),
        # data.dir is read relative to the folder tfrec runs in, so the starter holds the absolute path;
        # a JSON string is a valid YAML scalar whatever characters the path holds.
        data_dir=json.dumps(str(folder.resolve()), ensure_ascii=False),
        config=str(config_path),
    )


def write_starter(kind: str, folder: str | Path, *, force: bool = False) -> Path:
    """Write ``folder/tfrec.yaml`` for ``kind`` (creating the folder); refuse to overwrite unless ``force``."""
    folder = Path(folder).expanduser()
    target = folder / STARTER_FILE
    if target.exists() and not force:
        raise StarterExists("%s already exists; pass --force to overwrite it" % target)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError("%s is a file, not a folder" % folder)
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(render_starter(kind, folder, target), encoding="utf-8")
    return target
