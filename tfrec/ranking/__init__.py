"""Re-ranking judged lists: TF-Ranking losses and metrics, a feature ranker, a cross-encoder.

Label convention for every ranking loss and metric in tfrec: a list's labels are
``relevance - 1`` (0..2 for Home Depot's 1..3 scale) and padding is ``-1``. TF-Ranking treats
labels < 0 as absent items (``utils.is_label_valid``), and its default NDCG gain ``2**label - 1``
is then the project's reporting gain ``2**(relevance - 1) - 1``.

Importing this package does not import TensorFlow; :mod:`tfrec.ranking.losses`,
:mod:`tfrec.ranking.metrics` and :mod:`tfrec.ranking.cross_encoder` do.
"""
from __future__ import annotations

import numpy as np

PADDING_LABEL = -1.0
# What a ranker returns at padding positions: below any real score, so sorting puts padding last,
# yet finite (and representable in float16) so that masked losses never meet inf - inf.
PADDING_SCORE = -1.0e4


def ranking_labels(relevance: np.ndarray) -> np.ndarray:
    """Ranking labels ``relevance - 1`` (float32) from relevance >= 1, keeping padding (-1) as -1."""
    relevance = np.asarray(relevance, dtype=np.float64)
    padding = relevance == PADDING_LABEL
    bad = ~padding & ~(relevance >= 1.0)  # also catches NaN
    if bad.any():
        raise ValueError(
            "relevance must be >= 1 (or -1 for padding); got %r at index %s"
            % (float(relevance[bad][0]), tuple(int(i) for i in np.argwhere(bad)[0]))
        )
    return np.where(padding, PADDING_LABEL, relevance - 1.0).astype(np.float32)


__all__ = ["PADDING_LABEL", "PADDING_SCORE", "ranking_labels"]
