"""tfrec: e-commerce search and recommendation on TensorFlow/Keras.

Importing tfrec imports :mod:`tfrec.compat` first, so TensorFlow loads in Keras 2 mode.
TensorFlow itself is imported lazily by the modules that need it.
"""
from tfrec import compat as compat  # noqa: F401  (must stay the first import)
from tfrec.version import __version__

__all__ = ["__version__", "compat"]
