"""The cross-encoder ranker on a real Home Depot slice: padding, pair scoring, training, inference."""
from __future__ import annotations

import collections
import csv

import numpy as np
import pytest

from tfrec import compat
from tfrec.ranking import PADDING_SCORE, ranking_labels
from tfrec.ranking.cross_encoder import CrossEncoderRanker, score_lists, train_cross_encoder
from tfrec.ranking.losses import ranking_loss
from tfrec.ranking.metrics import ranking_metrics

tf = compat.tensorflow()


def judged_lists(shared, n_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``n_queries`` train queries with their judged titles and relevance, padded ("" / -1)."""
    with open(shared / "homedepot" / "products.csv", encoding="utf-8", newline="") as f:
        title_of = {row["product_id"]: row["title"] for row in csv.DictReader(f)}
    lists: dict[str, list] = collections.OrderedDict()
    with open(shared / "homedepot" / "train.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["query"] in lists or len(lists) < n_queries:
                lists.setdefault(row["query"], []).append((title_of[row["product_id"]], float(row["relevance"])))
    width = max(len(items) for items in lists.values())
    titles = np.full((n_queries, width), "", dtype=object)
    relevance = np.full((n_queries, width), -1.0)
    for row, items in enumerate(lists.values()):
        for position, (title, value) in enumerate(items):
            titles[row, position], relevance[row, position] = title, value
    return np.array(list(lists), dtype=object), titles, relevance


@pytest.fixture(scope="module")
def ranker(files):
    return CrossEncoderRanker(files, max_length=32, seed=0)


@pytest.fixture(scope="module")
def lists(shared_datasets):
    return judged_lists(shared_datasets, 24)


def _call(model, queries, titles) -> np.ndarray:
    inputs = {"query": tf.constant(queries.astype(str)), "title": tf.constant(titles.astype(str))}
    return model(inputs, training=False).numpy()


def test_padding_does_not_change_valid_scores(ranker, lists):
    queries, titles, _ = lists
    queries, titles = queries[:3], titles[:3]
    plain = _call(ranker, queries, titles)
    valid = titles != ""
    assert plain.dtype == np.float32 and plain.shape == titles.shape
    np.testing.assert_array_equal(plain[~valid], PADDING_SCORE)
    # Extra padding columns and an all-padding list in the batch.
    wider = np.concatenate([titles, np.full((3, 5), "", dtype=object)], axis=1)
    wider = np.concatenate([wider, np.full((1, wider.shape[1]), "", dtype=object)], axis=0)
    padded = _call(ranker, np.append(queries, "an empty list"), wider)
    np.testing.assert_allclose(padded[:3, : titles.shape[1]][valid], plain[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(padded[3], PADDING_SCORE)
    # Each list alone (a different batch-length padding of its tokens) scores the same too.
    for row in range(3):
        alone = _call(ranker, queries[row : row + 1], titles[row : row + 1])
        np.testing.assert_allclose(alone[0][valid[row]], plain[row][valid[row]], rtol=1e-5, atol=1e-5)


def test_score_pairs_equals_call(ranker, lists):
    queries, titles, _ = lists
    queries, titles = queries[3:6], titles[3:6]
    rows, positions = np.nonzero(titles != "")
    pair_queries, pair_titles = tf.constant(queries[rows].astype(str)), tf.constant(titles[rows, positions].astype(str))
    pair_scores = ranker.score_pairs(pair_queries, pair_titles)
    assert pair_scores.shape == (len(rows),)
    expected = _call(ranker, queries, titles)[rows, positions]
    np.testing.assert_allclose(pair_scores.numpy(), expected, rtol=1e-5, atol=1e-5)
    # The model reads the pair in order: swapping query and title changes the score.
    swapped = ranker.score_pairs(pair_titles, pair_queries)
    assert not np.allclose(swapped.numpy(), pair_scores.numpy(), atol=1e-4)


def test_score_lists_batches_pairs_and_puts_scores_back_in_place(ranker, lists):
    queries, titles, _ = lists
    queries, titles = queries[6:12], titles[6:12]
    titles = np.concatenate([titles, np.full((6, 3), "", dtype=object)], axis=1)
    scores = score_lists(ranker, queries, titles, batch_size=5)  # uneven, length-sorted pair batches
    np.testing.assert_allclose(scores, _call(ranker, queries, titles), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scores[titles == ""], PADDING_SCORE)


def test_an_all_padding_batch_gets_padding_scores(ranker):
    queries = np.array(["deck screws", "angle bracket"], dtype=object)
    scores = _call(ranker, queries, np.full((2, 4), "", dtype=object))
    np.testing.assert_array_equal(scores, np.full((2, 4), PADDING_SCORE, np.float32))


def test_inputs_are_checked(ranker, lists):
    queries, titles, relevance = lists
    labels = ranking_labels(relevance)
    with pytest.raises(ValueError, match="titles must be \\[n, L\\] with n = 24"):
        score_lists(ranker, queries, titles[:5])
    with pytest.raises(ValueError, match="labels must have the titles' shape"):
        train_cross_encoder(ranker, queries, titles, labels[:, :3], progress=False)
    broken = labels.copy()
    broken[0, -1] = 1.0  # a label on a padded (empty) title
    with pytest.raises(ValueError, match="list 0 position .* empty title"):
        train_cross_encoder(ranker, queries, titles, broken, progress=False)
    with pytest.raises(ValueError, match="unknown ranking loss 'pointwise'"):
        train_cross_encoder(ranker, queries, titles, labels, loss="pointwise", progress=False)
    head = ranker.head.kernel.numpy()
    history = train_cross_encoder(ranker, queries, titles, labels, epochs=0, progress=False)  # evaluate untrained
    assert history["steps"] == 0 and history["loss"] == [] and np.array_equal(ranker.head.kernel.numpy(), head)


@pytest.fixture()
def restore_weights(ranker):
    """Training tests put the pretrained weights back, so test order does not matter."""
    weights = [v.numpy() for v in ranker.trainable_variables]
    yield
    for variable, value in zip(ranker.trainable_variables, weights):
        variable.assign(value)


def test_training_steps_update_bert_and_head(ranker, lists, restore_weights):
    """A quick smoke test: 8 lists, 2 steps of 4 lists; every weight group moves, losses are finite."""
    queries, titles, relevance = (part[:8] for part in lists)
    labels = ranking_labels(relevance)
    head, embeddings = ranker.head.kernel.numpy(), ranker.bert.bert.embeddings.weight.numpy()
    history = train_cross_encoder(ranker, queries, titles, labels, loss="listmle", batch_size=4, progress=False)
    assert history["steps"] == 2 and history["pairs"] == int((labels >= 0).sum())
    assert np.all(np.isfinite(history["step_loss"])) and len(history["loss"]) == 1
    assert not np.allclose(ranker.head.kernel.numpy(), head)
    assert not np.allclose(ranker.bert.bert.embeddings.weight.numpy(), embeddings)
    scores = _call(ranker, queries, titles)
    assert np.all(np.isfinite(scores)) and np.all(scores[labels < 0] == PADDING_SCORE)


@pytest.mark.slow
def test_training_on_a_real_slice_improves_the_training_lists(ranker, lists, restore_weights):
    """24 Home Depot queries (183 judged pairs), 1 epoch, 4 lists a batch, max_length 32 (~40 s of CPU)."""
    queries, titles, relevance = lists
    labels = ranking_labels(relevance)
    before = score_lists(ranker, queries, titles, batch_size=32)
    np.testing.assert_allclose(before, _call(ranker, queries, titles), rtol=1e-5, atol=1e-5)  # traced == eager
    # 1e-4 rather than the 3e-5 default, so that 6 steps move the scores clearly.
    history = train_cross_encoder(
        ranker, queries, titles, labels, epochs=1, batch_size=4, learning_rate=1e-4, seed=0, progress=False
    )
    after = score_lists(ranker, queries, titles, batch_size=32)
    assert history["steps"] == 6 and len(history["step_loss"]) == 6 and history["pairs"] == int((labels >= 0).sum())
    assert np.all(np.isfinite(history["step_loss"])) and history["pairs_per_second"][0] > 0
    np.testing.assert_array_equal(after[labels < 0], PADDING_SCORE)
    loss = ranking_loss("softmax")
    assert float(loss(labels, after)) < float(loss(labels, before))

    def ndcg(scores: np.ndarray) -> float:
        metric = ranking_metrics((10,))[0]
        metric.update_state(labels, scores)
        return float(metric.result())

    assert ndcg(after) > ndcg(before) + 0.01
