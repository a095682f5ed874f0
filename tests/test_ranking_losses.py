"""Ranking losses and metrics: padding is masked, values match numpy, every loss trains a model."""
from __future__ import annotations

import numpy as np
import pytest

from tfrec import compat
from tfrec.ranking import PADDING_LABEL, PADDING_SCORE, ranking_labels
from tfrec.ranking.losses import LOSSES, ranking_loss
from tfrec.ranking.metrics import ranking_metrics

tf = compat.tensorflow()

# Ranking labels (relevance - 1), padding -1. Rows 0-3 have no tied labels (ListMLE is then
# deterministic); row 4 has no relevant item at all.
LABELS = np.array(
    [
        [2.0, 1.0, 0.0, -1, -1, -1],
        [0.0, 1.5, 2.0, 0.5, 1.0, -1],
        [1.0, 0.0, -1, -1, -1, -1],
        [0.33, 2.0, 1.0, 0.0, 0.67, 1.67],
        [0.0, 0.0, 0.0, -1, -1, -1],
    ],
    np.float32,
)


def _scores(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=LABELS.shape).astype(np.float32)
    scores[1] -= 40.0  # far below TF-Ranking's log(1e-10) padding logit: padding must still not count
    return scores


def _pad(labels: np.ndarray, scores: np.ndarray, extra: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Append ``extra`` padding columns with arbitrary scores, and scramble the existing padding scores."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([labels, np.full((len(labels), extra), PADDING_LABEL, np.float32)], axis=1)
    garbage = rng.normal(scale=100.0, size=labels.shape).astype(np.float32)
    garbage[:, -1] = PADDING_SCORE
    scores = np.concatenate([scores, np.zeros((len(scores), extra), np.float32)], axis=1)
    return labels, np.where(labels < 0, garbage, scores).astype(np.float32)


def _valid_lists(labels: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(y[y >= 0].astype(np.float64), s[y >= 0].astype(np.float64)) for y, s in zip(labels, scores)]


def _log_softmax(s: np.ndarray) -> np.ndarray:
    return s - s.max() - np.log(np.exp(s - s.max()).sum())


def numpy_loss(name: str, labels: np.ndarray, scores: np.ndarray, temperature: float = 1.0) -> float:
    """Each loss computed on the unpadded lists, independently of TensorFlow."""
    lists = _valid_lists(labels, scores)
    if name == "mse":
        errors = np.concatenate([(y - s) ** 2 for y, s in lists])
        return float(errors.mean())
    lists = [(y, s / temperature) for y, s in lists]
    if name == "softmax":
        return float(np.mean([-(y * _log_softmax(s)).sum() for y, s in lists]))
    if name == "listmle":
        total = []
        for y, s in lists:
            ordered = s[np.argsort(-y, kind="stable")]
            total.append(sum(np.log(np.exp(ordered[i:]).sum()) - ordered[i] for i in range(len(ordered))))
        return float(np.mean(total))
    if name == "pairwise_logistic":
        pairs = [(s, i, j) for y, s in lists for i in range(len(y)) for j in range(len(y)) if y[i] > y[j]]
        pair_losses = [np.log1p(np.exp(-(s[i] - s[j]))) for s, i, j in pairs]
        return float(np.mean(pair_losses))
    if name == "approx_ndcg":
        per_list = []
        for y, s in lists:
            if y.sum() == 0:
                per_list.append(0.0)  # weight 0, still in the batch mean
                continue
            beats = 1 / (1 + np.exp(-(s[None, :] - s[:, None])))  # [i, j]: how much j outranks i
            ranks = 1.0 + beats.sum(axis=1) - 0.5  # without j == i
            dcg = ((2**y - 1) / np.log2(1 + ranks)).sum()
            ideal = np.sort(y)[::-1]
            idcg = ((2**ideal - 1) / np.log2(2 + np.arange(len(ideal)))).sum()
            per_list.append(-dcg / idcg)
        return float(np.mean(per_list))
    raise AssertionError(name)


def test_ranking_labels_shift_relevance_and_keep_padding():
    relevance = np.array([[3.0, 1.0, 2.33, -1.0], [1.67, -1.0, -1.0, -1.0]])
    labels = ranking_labels(relevance)
    assert labels.dtype == np.float32
    np.testing.assert_allclose(labels, [[2.0, 0.0, 1.33, -1.0], [0.67, -1.0, -1.0, -1.0]], rtol=1e-6)
    for bad in (0.5, np.nan, -2.0):
        with pytest.raises(ValueError, match="relevance must be >= 1"):
            ranking_labels(np.array([2.0, bad]))


def test_unknown_loss_and_bad_temperature_are_named():
    with pytest.raises(ValueError, match="'lambdarank'.*softmax, listmle, approx_ndcg, pairwise_logistic, mse"):
        ranking_loss("lambdarank")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ranking_loss("softmax", temperature=0.0)
    with pytest.raises(ValueError, match="mse.*no temperature"):
        ranking_loss("mse", temperature=0.5)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_numpy_on_unpadded_lists_and_ignores_padding(name):
    labels, scores = (LABELS[:4], _scores()[:4]) if name == "listmle" else (LABELS, _scores())
    temperature = 1.0 if name == "mse" else 0.7
    loss = ranking_loss(name, temperature=temperature)
    padded_labels, padded_scores = _pad(labels, scores)
    expected = numpy_loss(name, labels, scores, temperature)
    assert float(loss(labels, scores)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(loss(padded_labels, padded_scores)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # Integer-typed or float64 inputs work too (Keras may hand either over).
    as_float64 = float(loss(padded_labels.astype(np.float64), padded_scores.astype(np.float64)))
    assert as_float64 == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_padding_gets_no_gradient_and_valid_gradients_do_not_change(name):
    labels, scores = (LABELS[:4], _scores()[:4]) if name == "listmle" else (LABELS, _scores())
    padded_labels, padded_scores = _pad(labels, scores)
    loss = ranking_loss(name)

    def gradient(y: np.ndarray, s: np.ndarray) -> np.ndarray:
        s = tf.Variable(s)
        with tf.GradientTape() as tape:
            value = loss(y, s)
        return tape.gradient(value, s).numpy()

    plain, padded = gradient(labels, scores), gradient(padded_labels, padded_scores)
    assert np.all(np.isfinite(padded))
    np.testing.assert_allclose(padded[padded_labels < 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(padded[:, : labels.shape[1]][labels >= 0], plain[labels >= 0], rtol=1e-4, atol=1e-7)


def test_tf_ranking_listmle_would_count_padding():
    """Why tfrec has its own ListMLE: TF-Ranking's adds log(n_padding!) per list."""
    tfr_loss = compat.tf_ranking().losses.ListMLELoss()
    labels, scores = LABELS[:4], np.random.default_rng(0).normal(size=LABELS[:4].shape).astype(np.float32)
    padded_labels, padded_scores = _pad(labels, scores, extra=3)
    n_padding = (padded_labels < 0).sum(axis=1)
    log_factorials = np.array([np.log(np.arange(1, n + 1)).sum() for n in n_padding])
    gap = float(tfr_loss(padded_labels, padded_scores)) - numpy_loss("listmle", labels, scores)
    assert gap == pytest.approx(log_factorials.mean(), rel=1e-4)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_survives_keras_serialization(name):
    loss = ranking_loss(name) if name == "mse" else ranking_loss(name, temperature=0.5)
    restored = tf.keras.losses.deserialize(tf.keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    padded_labels, padded_scores = _pad(LABELS[:4], _scores()[:4])
    expected = float(loss(padded_labels, padded_scores))
    assert float(restored(padded_labels, padded_scores)) == pytest.approx(expected, rel=1e-6)


def _generated_lists(n: int = 96, size: int = 6, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items with features; labels 0..2 from a hidden linear score; lists of 2..6 items, padded."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, size, dim)).astype(np.float32)
    hidden = features @ rng.normal(size=dim).astype(np.float32)
    labels = np.digitize(hidden, [-1.0, 1.0]).astype(np.float32)
    lengths = rng.integers(2, size + 1, size=n)
    padding = np.arange(size)[None, :] >= lengths[:, None]
    labels[padding] = PADDING_LABEL
    features[padding] = rng.normal(scale=10.0, size=features[padding].shape)
    return features, labels


def _list_model(features: np.ndarray) -> tf.keras.Model:
    layers = tf.keras.layers
    return tf.keras.Sequential([layers.Input(features.shape[1:]), layers.Dense(1), layers.Reshape(features.shape[1:2])])


def _ndcg5(labels: np.ndarray, scores: tf.Tensor) -> float:
    metric = ranking_metrics((5,))[0]
    metric.update_state(labels, scores)
    return float(metric.result())


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_trains_a_model_with_compile(name):
    tf.keras.utils.set_random_seed(0)
    features, labels = _generated_lists()
    model = _list_model(features)
    loss = ranking_loss(name)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss=loss)
    before_loss, before_ndcg = float(loss(labels, model(features))), _ndcg5(labels, model(features))
    model.fit(features, labels, batch_size=16, epochs=4, verbose=0, shuffle=False)
    after_loss, after_ndcg = float(loss(labels, model(features))), _ndcg5(labels, model(features))
    assert np.isfinite(after_loss) and after_loss < before_loss - 0.05 * abs(before_loss)
    assert after_ndcg > before_ndcg


def test_metrics_report_by_name_in_compile():
    tf.keras.utils.set_random_seed(0)
    features, labels = _generated_lists()
    model = _list_model(features)
    model.compile(loss=ranking_loss("softmax"), metrics=ranking_metrics())
    scores = model.predict(features, verbose=0)
    reported = model.evaluate(features, labels, batch_size=len(labels), verbose=0, return_dict=True)
    assert set(reported) == {"loss", "ndcg@5", "ndcg@10", "mrr", "map"}
    relevance = np.where(labels < 0, -1.0, labels + 1.0)
    expected = numpy_ranking_metrics(relevance, scores, 5)
    assert reported["ndcg@5"] == pytest.approx(expected["ndcg@5"], rel=1e-5)
    assert reported["map"] == pytest.approx(expected["map"], rel=1e-5)


def numpy_ranking_metrics(relevance: np.ndarray, scores: np.ndarray, k: int) -> dict:
    """NDCG@k with gain 2**(relevance-1)-1 and log2 discount, MRR and MAP at relevance >= 2."""
    ndcgs, rrs, aps = [], [], []
    for rel, s in zip(relevance, scores):
        rel, s = rel[rel >= 1], s[rel >= 1]
        ordered = rel[np.argsort(-s)]
        gains = 2.0 ** (ordered - 1) - 1
        ideal = np.sort(2.0 ** (rel - 1) - 1)[::-1]
        discounts = 1 / np.log2(np.arange(len(rel)) + 2)
        idcg = (ideal[:k] * discounts[:k]).sum()
        ndcgs.append((gains[:k] * discounts[:k]).sum() / idcg if idcg > 0 else 0.0)
        hits = ordered >= 2
        rrs.append(1.0 / (np.argmax(hits) + 1) if hits.any() else 0.0)
        precisions = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append((precisions * hits).sum() / hits.sum() if hits.any() else 0.0)
    return {"ndcg@%d" % k: np.mean(ndcgs), "mrr": np.mean(rrs), "map": np.mean(aps)}


def test_metrics_on_a_padded_batch_match_numpy():
    rng = np.random.default_rng(3)
    lengths = np.array([7, 3, 1, 16, 5, 9, 2, 4])
    relevance = np.full((len(lengths), 18), -1.0)
    for row, n in enumerate(lengths):
        relevance[row, :n] = rng.choice([1.0, 1.33, 1.67, 2.0, 2.33, 2.67, 3.0], size=n)
    relevance[4, :5] = 1.0  # a list with nothing above the lowest grade: NDCG 0, still counted
    scores = rng.permutation(relevance.size).reshape(relevance.shape).astype(np.float32)  # no ties
    labels = ranking_labels(relevance)
    metrics = {m.name: m for m in ranking_metrics((1, 5, 10))}
    assert list(metrics) == ["ndcg@1", "ndcg@5", "ndcg@10", "mrr", "map"]
    for name, metric in metrics.items():
        metric.update_state(labels, scores)
        k = int(name.split("@")[1]) if "@" in name else 10
        expected = numpy_ranking_metrics(relevance, scores, k)[name]
        assert float(metric.result()) == pytest.approx(expected, rel=1e-5), name


def test_metric_cutoffs_are_checked():
    with pytest.raises(ValueError, match="positive ints, got 0"):
        ranking_metrics((5, 0))
    with pytest.raises(ValueError, match="distinct"):
        ranking_metrics((5, 5))
    assert [m.name for m in ranking_metrics(np.array([3]))] == ["ndcg@3", "mrr", "map"]
