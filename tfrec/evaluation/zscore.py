"""The z-score every hybrid score uses: standardize scores per query over the catalog.

One formula for the search baselines (numpy), the hybrid retrieval (TensorFlow, evaluation and
export) and the ranker's dense fusion (TensorFlow, with the catalog moments computed from the
catalog's covariance instead of scoring it): ``(score - mean) / (std + epsilon)``, and exactly 0
for a query whose scores are constant (a query without a known term scores 0 everywhere).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tfrec import compat

# Keeps a near-constant row finite; small enough to leave real rows' z-scores as they are.
ZSCORE_EPSILON = 1e-6


def zscore(scores: Any, mean: Optional[Any] = None, std: Optional[Any] = None, *, epsilon: float = ZSCORE_EPSILON) -> Any:
    """``(scores - mean) / (std + epsilon)``, 0 where ``std`` is 0; numpy arrays in, numpy out, else TensorFlow.

    ``mean`` and ``std`` (broadcastable to ``scores``) default to each row's mean and population
    standard deviation over the last axis.
    """
    if isinstance(scores, np.ndarray):
        if mean is None or std is None:
            mean, std = scores.mean(axis=-1, keepdims=True), scores.std(axis=-1, keepdims=True)
        positive = std > 0
        return np.where(positive, (scores - mean) / np.where(positive, std + epsilon, 1.0), 0.0).astype(scores.dtype, copy=False)
    tf = compat.tensorflow()  # here, not at import: the numpy callers (baselines, metrics) stay TensorFlow-free
    if mean is None or std is None:
        mean, variance = tf.nn.moments(scores, axes=[-1], keepdims=True)
        std = tf.sqrt(variance)
    positive = std > 0
    return tf.where(positive, (scores - mean) / tf.where(positive, std + epsilon, tf.ones_like(std)), tf.zeros_like(scores))
