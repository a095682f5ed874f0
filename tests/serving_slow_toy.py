"""A deliberately slow toy SavedModel for overload tests: it sleeps without using the CPU.

``serving_default``: ``query`` string [None], ``pause_ms`` int64 [None] -> ``length`` int32 [None]
(the byte length of each query); each call first sleeps max(pause_ms) milliseconds in a tf.data
sleep, so a test decides how long a request occupies the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from tfrec import compat
from tfrec.serving.publish import save_versioned
from tfrec.serving.savedmodel import predict_log

tf = compat.tensorflow()


class _SlowModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query"),
                                  tf.TensorSpec([None], tf.int64, name="pause_ms")])
    def serve(self, query, pause_ms):
        # the core SleepDataset op has no public alias; imported here, after tfrec set up TensorFlow
        from tensorflow.python.data.experimental.ops.testing import sleep

        pause_us = tf.maximum(tf.reduce_max(pause_ms), 0) * 1000
        slept = tf.data.Dataset.range(1).apply(sleep(pause_us)).reduce(tf.constant(0, tf.int64), lambda a, b: a + b)
        return {"length": tf.strings.length(query) + tf.cast(slept, tf.int32)}


def write_slow_model(export_dir: Path, name: str = "slow", version: Optional[int] = None) -> Path:
    """Write the slow toy model to export_dir/name/<version>/ (warm-up record with no pause) and return that folder."""
    module = _SlowModel()
    warmup = [predict_log(name, {"query": ["warm"], "pause_ms": np.array([0], np.int64)})]
    return save_versioned(module, export_dir, name, {"serving_default": module.serve}, warmup=warmup, version=version)
