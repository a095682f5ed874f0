"""The one compatibility module: Keras 2 mode, TF-Ranking's Keras API, keras-tuner in tf.keras mode.

Every entry point imports this module before TensorFlow. It is the only place in tfrec that
touches ``sys.modules`` or environment flags (the log levels of TensorFlow's C++ code and of
transformers default to quiet here, before either loads); ../shared/docs/STACK.md gives the facts behind it:

1. ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported so that
   ``tf.keras`` is tf-keras (Keras 2), which TFRS and the Hugging Face TF models need.
2. ``import tensorflow_ranking`` fails on TF >= 2.16 because its package ``__init__`` imports
   ``tf.estimator``. Its Keras losses and metrics do not need the estimator; they import once
   the three package ``__init__`` modules are registered as bare namespace modules.
3. keras-tuner picks Keras 2 or 3 by ``import keras`` at import time; importing it while
   ``sys.modules["keras"]`` points at ``tf_keras`` makes it run in tf.keras mode.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from typing import Any, Iterator

_LEGACY_KERAS_FLAG = "TF_USE_LEGACY_KERAS"


class CompatibilityError(RuntimeError):
    """The installed stack cannot be put into the mode tfrec needs."""


def _tensorflow_loaded() -> bool:
    return "tensorflow" in sys.modules


# Fact 1: set the flag at import time, so `import tfrec.compat` first is all an entry point needs.
if not _tensorflow_loaded():
    os.environ[_LEGACY_KERAS_FLAG] = "1"
    # TensorFlow's C++ chatter buries tfrec's own output, and its noisiest lines are logged as
    # errors though nothing is wrong ("failed call to cuInit" on a machine without a GPU, "oneDNN
    # supports DT_INT64 only on platforms with AVX-512"), so only fatal ones show. Real failures
    # reach Python as exceptions, which carry the message. A user's own setting wins;
    # `tfrec --verbose` sets 0 (tfrec.log.show_tensorflow_info).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# transformers sets its logger's level from this when it first logs (after any setLevel tfrec
# could do before it loads): its notices ("TensorFlow classes are deprecated") are not the user's
# concern. A user's own setting wins; tfrec.log.configure(verbosity > 0) shows them again.
if "transformers" not in sys.modules:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """Silence what native code writes straight to file descriptor 2 during the block (not Python's logging).

    For third-party C++ that logs through its own copy of absl, which no environment variable
    reaches (ScaNN's index builder prints "I0000 ... partitioner_factory_base.cc] Size of sampled
    dataset" lines). Python's ``sys.stderr`` is flushed first; errors still raise as exceptions.
    Does nothing when the user asked for TensorFlow's C++ logs (``TF_CPP_MIN_LOG_LEVEL`` 0 or 1,
    what ``--verbose`` sets), or when stderr has no file descriptor (a notebook).
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd < 0 or level in ("", "0", "1"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def tensorflow() -> Any:
    """Return the ``tensorflow`` module, checked to be in Keras 2 (tf-keras) mode."""
    import tensorflow as tf

    # Check a class, not the module name: `from tensorflow.keras import x` (keras-tuner does it)
    # re-binds tf.keras to a copy of tf_keras named "tensorflow.keras", still Keras 2.
    model_module = getattr(getattr(tf.keras, "Model", None), "__module__", "")
    if not model_module.startswith("tf_keras"):
        raise CompatibilityError(
            "tf.keras.Model comes from %r, not tf_keras: TensorFlow was imported before tfrec.compat set "
            "%s=1. Import tfrec (or tfrec.compat) before tensorflow." % (model_module, _LEGACY_KERAS_FLAG)
        )
    return tf


@contextlib.contextmanager
def keras_saves_without_traces() -> Iterator[None]:
    """Within the block, SavedModels hold no tf-keras per-layer call traces (about half the save time).

    TF Serving and tfrec's clients run the exported signatures, and a run's models are rebuilt from
    its config and weights, never revived from an export's Keras metadata, so nothing reads them.
    tf-keras exposes the switch only in a private module; without it, saves keep the traces.
    """
    try:
        from tf_keras.src.saving.legacy.saved_model import utils
        scope = utils.keras_option_scope(save_traces=False)
    except (ImportError, AttributeError, TypeError):
        scope = contextlib.nullcontext()
    with scope:
        yield


def data_dir_from_environment() -> str | None:
    """Return ``$TFREC_DATA_DIR`` if set and non-empty (the only environment input of tfrec)."""
    value = os.environ.get("TFREC_DATA_DIR", "").strip()
    return value or None


_TFR_PACKAGES = ("tensorflow_ranking", "tensorflow_ranking.python", "tensorflow_ranking.python.keras")


def _register_tfr_namespaces() -> None:
    if all(name in sys.modules for name in _TFR_PACKAGES):
        return  # registered before (find_spec would fail on a stand-in without __spec__)
    spec = importlib.util.find_spec("tensorflow_ranking")
    if spec is None or not spec.submodule_search_locations:
        raise CompatibilityError("tensorflow-ranking is not installed (pip install tensorflow-ranking==0.5.3)")
    root = list(spec.submodule_search_locations)[0]
    folders = (root, os.path.join(root, "python"), os.path.join(root, "python", "keras"))
    for name, folder in zip(_TFR_PACKAGES, folders):
        existing = sys.modules.get(name)
        if existing is not None:
            continue
        module = types.ModuleType(name, "namespace stand-in registered by tfrec.compat")
        module.__path__ = [folder]  # a package: submodules resolve inside its folder
        module.__file__ = None
        sys.modules[name] = module
    # Attributes let `tensorflow_ranking.python.keras` resolve as an attribute chain too.
    sys.modules["tensorflow_ranking"].python = sys.modules["tensorflow_ranking.python"]
    sys.modules["tensorflow_ranking.python"].keras = sys.modules["tensorflow_ranking.python.keras"]


def tf_ranking() -> types.SimpleNamespace:
    """Return TF-Ranking's Keras API as ``.losses`` and ``.metrics`` (no estimator import)."""
    tensorflow()
    _register_tfr_namespaces()
    losses = importlib.import_module("tensorflow_ranking.python.keras.losses")
    metrics = importlib.import_module("tensorflow_ranking.python.keras.metrics")
    return types.SimpleNamespace(losses=losses, metrics=metrics)


def keras_tuner() -> Any:
    """Return ``keras_tuner`` imported in its tf.keras (Keras 2) mode."""
    tensorflow()  # Keras 2 mode must hold before keras_tuner looks at Keras
    loaded = sys.modules.get("keras_tuner")
    if loaded is None:
        import tf_keras

        previous = sys.modules.get("keras")
        sys.modules["keras"] = tf_keras
        try:
            loaded = importlib.import_module("keras_tuner")
        finally:
            if previous is None:
                sys.modules.pop("keras", None)
            else:
                sys.modules["keras"] = previous
    from keras_tuner.src.backend import config as kt_config

    if kt_config.multi_backend():
        raise CompatibilityError(
            "keras_tuner was imported in Keras 3 mode before tfrec.compat.keras_tuner(); "
            "its tuners would reject tf.keras models. Get keras_tuner only through tfrec.compat."
        )
    return loaded
