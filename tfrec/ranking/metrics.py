"""Ranking metrics for ``model.compile``: TF-Ranking's NDCG@k, MRR and MAP on ``[B, L]`` lists.

Labels follow :mod:`tfrec.ranking` (``relevance - 1``, padding -1; TF-Ranking drops labels < 0).

* ``ndcg@k``: gain ``2**label - 1`` (= ``2**(relevance-1) - 1``), discount ``1 / log2(1 + rank)``,
  normalized by the ideal DCG@k of the list. A list whose labels are all 0 (every item at the
  lowest relevance) has NDCG 0 and still counts in the mean: the convention behind the dataset
  README's "perfect ordering ~0.996 on valid".
* ``mrr`` and ``map`` binarize at ``label >= 1``, i.e. relevance >= 2.
* Tied scores are ordered at random (TF-Ranking shuffles ties), so constant scores give a
  random-ordering value, not a best or worst case.
"""
from __future__ import annotations

import numbers
from typing import Sequence

from tfrec import compat

tf = compat.tensorflow()
_tfr_metrics = compat.tf_ranking().metrics


def ranking_metrics(ks: Sequence[int] = (5, 10)) -> list:
    """TF-Ranking NDCG@k for each k, MRR and MAP, named "ndcg@k", "mrr" and "map"."""
    ks = list(ks)
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1]
    if bad:
        raise ValueError("NDCG cutoffs must be positive ints, got %r" % (bad[0],))
    ks = [int(k) for k in ks]
    if len(set(ks)) != len(ks):
        raise ValueError("NDCG cutoffs must be distinct, got %r" % (ks,))
    metrics: list = [_tfr_metrics.NDCGMetric(name="ndcg@%d" % k, topn=k) for k in ks]
    metrics.append(_tfr_metrics.MRRMetric(name="mrr"))
    metrics.append(_tfr_metrics.MeanAveragePrecisionMetric(name="map"))
    return metrics


__all__ = ["ranking_metrics"]
