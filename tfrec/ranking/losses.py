"""Ranking losses on ``[B, L]`` score lists whose padding has label -1, from TF-Ranking.

Every loss here gives the same value for a batch and for the same batch with extra padding
(label -1, any score), which TF-Ranking 0.5.3's Keras losses do not all do:

* ``softmax``: TF-Ranking's SoftmaxLoss, ``-sum_i y_i log softmax(s)_i`` averaged over lists.
  It hides padding behind a logit of log(1e-10); we first shift each list so its top valid score
  is 0 (softmax does not change), so very negative scores cannot let padding take probability.
* ``listmle``: TF-Ranking's ListMLELoss adds ``log(n_padding!)`` per list (padding sorts last, and
  each padded position contributes ``log`` of how many padded items follow it), and its padding
  logit log(1e-10) outweighs valid scores below about -23; ours masks those positions out and
  keeps padding out of the Plackett-Luce normalizers. Ties in labels are broken
  at random, as in TF-Ranking, so the value is stochastic when a list has tied labels.
* ``approx_ndcg``: TF-Ranking's ApproxNDCGLoss, ``-ApproxNDCG`` averaged over lists (a list with no
  positive label counts as 0).
* ``pairwise_logistic``: ``log(1 + exp(-(s_i - s_j) / T))`` averaged over all valid pairs with
  ``y_i > y_j`` in the batch. TF-Ranking's Keras loss divides the sum by ``B * L`` (padding
  included, so padding shrinks it) and ignores ``temperature``; we divide by the pair count.
* ``mse``: ``(y_i - s_i)^2`` averaged over the valid items of the batch (a pointwise baseline).
  TF-Ranking's MeanSquaredLoss masks padding but divides by ``B * L``; we divide by the valid count.

All are Keras ``Loss`` objects registered under the package ``tfrec``, usable in
``model.compile`` and round-tripped by ``tf.keras.losses.serialize`` / ``deserialize``.
"""
from __future__ import annotations

from typing import Any, Optional

from tfrec import compat
from tfrec.ranking import PADDING_LABEL, PADDING_SCORE, ranking_labels

tf = compat.tensorflow()
_tfr_losses = compat.tf_ranking().losses
_losses_impl = _tfr_losses.losses_impl
_tfr_utils = _losses_impl.utils  # tensorflow_ranking.python.utils (is_label_valid, sort_by_scores)

LOSSES = ("softmax", "listmle", "approx_ndcg", "pairwise_logistic", "mse")
_Reduction = tf.keras.losses.Reduction
_TINY = 1e-30  # floor for a sum of exps that underflowed (score gaps > ~87)


def _float32(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    # Integer labels would break TF-Ranking's `labels >= 0.` and a float16 model's scores its math.
    return tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)


@tf.keras.utils.register_keras_serializable(package="tfrec")
class SoftmaxLoss(_tfr_losses.SoftmaxLoss):
    """Listwise softmax cross-entropy; padding (label < 0) is masked."""

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Optional[Any] = None) -> Any:
        """Loss of a [B, L] batch (see tf.keras.losses.Loss)."""
        y_true, y_pred = _float32(y_true, y_pred)
        if not isinstance(y_pred, tf.RaggedTensor):
            valid = _tfr_utils.is_label_valid(y_true)
            lowest = tf.reduce_min(y_pred, axis=1, keepdims=True)
            top = tf.reduce_max(tf.where(valid, y_pred, lowest), axis=1, keepdims=True)
            y_pred = y_pred - tf.stop_gradient(top)
        return super().__call__(y_true, y_pred, sample_weight)


@tf.keras.utils.register_keras_serializable(package="tfrec")
class ApproxNDCGLoss(_tfr_losses.ApproxNDCGLoss):
    """Negative ApproxNDCG (Qin et al. 2008); padding (label < 0) is masked."""

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Optional[Any] = None) -> Any:
        """Loss of a [B, L] batch (see tf.keras.losses.Loss)."""
        return super().__call__(*_float32(y_true, y_pred), sample_weight)


class _MaskedListMLE(_losses_impl.ListMLELoss):
    """TF-Ranking's ListMLE with padded positions left out of the likelihood."""

    def _compute_unreduced_loss_impl(self, labels: Any, logits: Any, mask: Optional[Any] = None) -> tuple[Any, Any]:
        if mask is None:
            mask = _tfr_utils.is_label_valid(labels)
        labels = tf.where(mask, labels, tf.zeros_like(labels))
        # Padding sorts below every valid label, so it is the tail of the sampled permutation.
        order_by = tf.where(mask, labels, tf.reduce_min(labels, axis=1, keepdims=True) - 1.0)
        sorted_labels, sorted_logits, sorted_mask = _tfr_utils.sort_by_scores(
            order_by, [labels, logits, tf.cast(mask, tf.float32)], shuffle_ties=True, seed=37
        )
        valid = sorted_mask > 0.0
        top = tf.reduce_max(tf.where(valid, sorted_logits, sorted_logits.dtype.min), axis=1, keepdims=True)
        # Padded logits become 0 before exp: masking after exp would still pass NaN gradients (0 * inf).
        shifted = tf.where(valid, sorted_logits - top, tf.zeros_like(sorted_logits))
        tail = tf.cumsum(tf.where(valid, tf.exp(shifted), tf.zeros_like(shifted)), axis=1, reverse=True)
        # log sum_{j >= i} exp(s_j) - s_i: the negative log-probability of picking item i next.
        terms = tf.math.log(tf.maximum(tail, _TINY)) - shifted
        terms = tf.where(valid, terms, tf.zeros_like(terms))
        if isinstance(self._lambda_weight, _losses_impl.ListMLELambdaWeight):
            batch_size, list_size = tf.unstack(tf.shape(sorted_labels))
            positions = tf.tile(tf.expand_dims(tf.range(list_size) + 1, 0), [batch_size, 1])
            terms *= self._lambda_weight.individual_weights(sorted_labels, positions)
        nll = tf.reduce_sum(terms, axis=1, keepdims=True)
        return nll, tf.ones_like(nll)


@tf.keras.utils.register_keras_serializable(package="tfrec")
class ListMLELoss(_tfr_losses.ListMLELoss):
    """ListMLE (Xia et al. 2008): Plackett-Luce negative log-likelihood of the label order; padding masked."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._loss = _MaskedListMLE(
            name="{}_impl".format(self.name) if self.name else None,
            lambda_weight=self._lambda_weight,
            temperature=self._temperature,
            ragged=self._ragged,
        )

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Optional[Any] = None) -> Any:
        """Loss of a [B, L] batch (see tf.keras.losses.Loss)."""
        return super().__call__(*_float32(y_true, y_pred), sample_weight)


class _MeanOverWeightsMixin:
    """Reduce TF-Ranking's per-list losses by their weights (pair or item counts), not by B * L."""

    _loss: Any
    reduction: str

    def _check_reduction(self) -> None:
        if self.reduction not in (_Reduction.AUTO, _Reduction.SUM_OVER_BATCH_SIZE, _Reduction.NONE):
            raise ValueError(
                "%s supports reduction AUTO (a mean over valid units) or NONE (per list), got %r"
                % (type(self).__name__, self.reduction)
            )

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Optional[Any] = None) -> Any:
        """Loss of a [B, L] batch (see tf.keras.losses.Loss)."""
        y_true, y_pred = _float32(y_true, y_pred)
        per_list, weights = self._loss.compute_per_list(y_true, self._loss.get_logits(y_pred), sample_weight)
        if self.reduction == _Reduction.NONE:
            return per_list
        return tf.math.divide_no_nan(tf.reduce_sum(per_list * weights), tf.reduce_sum(weights))


@tf.keras.utils.register_keras_serializable(package="tfrec")
class PairwiseLogisticLoss(_MeanOverWeightsMixin, _tfr_losses.PairwiseLogisticLoss):
    """RankNet-style logistic loss, a mean over valid pairs with y_i > y_j; padding masked."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._check_reduction()


@tf.keras.utils.register_keras_serializable(package="tfrec")
class MeanSquaredLoss(_MeanOverWeightsMixin, _tfr_losses.MeanSquaredLoss):
    """Pointwise squared error between label and score, a mean over valid items; padding masked."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._check_reduction()


_CLASSES = {
    "softmax": SoftmaxLoss,
    "listmle": ListMLELoss,
    "approx_ndcg": ApproxNDCGLoss,
    "pairwise_logistic": PairwiseLogisticLoss,
    "mse": MeanSquaredLoss,
}


def ranking_loss(name: str, *, temperature: float = 1.0, **kwargs: Any) -> tf.keras.losses.Loss:
    """A ranking loss by name (one of ``LOSSES``); ``temperature`` divides the scores (not for mse)."""
    if name not in _CLASSES:
        raise ValueError("unknown ranking loss %r; valid names: %s" % (name, ", ".join(LOSSES)))
    if not temperature > 0:
        raise ValueError("temperature must be > 0, got %r" % (temperature,))
    if name == "mse":
        if temperature != 1.0:
            raise ValueError("the mse loss regresses raw scores and takes no temperature, got %r" % (temperature,))
        return MeanSquaredLoss(**kwargs)
    return _CLASSES[name](temperature=float(temperature), **kwargs)


__all__ = [
    "LOSSES",
    "PADDING_LABEL",
    "PADDING_SCORE",
    "ApproxNDCGLoss",
    "ListMLELoss",
    "MeanSquaredLoss",
    "PairwiseLogisticLoss",
    "SoftmaxLoss",
    "ranking_labels",
    "ranking_loss",
]
