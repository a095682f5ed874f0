"""tfrec: e-commerce search and recommendation on TensorFlow/Keras.

Importing tfrec imports :mod:`tfrec.compat` first, so TensorFlow loads in Keras 2 mode.
TensorFlow itself is imported lazily by the modules that need it. The public API
(:mod:`tfrec.api`: ``tfrec.train``, ``tfrec.evaluate``, ``tfrec.export``, ``tfrec.serve``,
``tfrec.LocalClient``, ...) is reachable from here and loads on first use. Progress is logged
to the ``tfrec`` logger: ``import tfrec.log; tfrec.log.configure()`` shows it (see tfrec/log.py).
"""
from tfrec import compat as compat  # noqa: F401  (must stay the first import)

import logging

from tfrec.version import __version__

# The library convention: tfrec never decides where its log goes; the `tfrec` command (or
# tfrec.log.configure() in a notebook) adds the handler that shows it. See tfrec/log.py.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Names of tfrec.api offered here; listed (not imported) so `import tfrec` stays light.
_API = (
    "Comparison", "ExportCheckError", "TpuLocation", "UnsupportedError",
    "check_export", "compare", "evaluate", "export", "find_tpu", "load_config", "load_data", "serve", "train",
    "EvaluationReport", "GrpcClient", "Hit", "LocalClient", "ProductCatalog", "RecommendService", "RestClient",
    "SearchService", "ServingError",
)

__all__ = ["__version__", "compat", "api", *_API]


def __getattr__(name: str):
    """``tfrec.api`` and its names, imported on first use."""
    import importlib

    if name == "api":
        return importlib.import_module("tfrec.api")
    if name in _API:
        return getattr(importlib.import_module("tfrec.api"), name)
    raise AttributeError("module 'tfrec' has no attribute %r" % name)


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
