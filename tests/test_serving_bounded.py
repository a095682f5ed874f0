"""tfrec.serving.bounded: a batch run in row chunks equals one pass over it, in tf.function and a SavedModel."""
from __future__ import annotations

import numpy as np
import pytest

from tfrec import compat
from tfrec.serving.bounded import map_row_chunks

tf = compat.tensorflow()


def _rows(texts, weights):
    """Per row: the text twice, and its length times the weight matrix's row sums (a matmul per chunk)."""
    lengths = tf.cast(tf.strings.length(texts), tf.float32)[:, None]
    return tf.strings.join([texts, texts]), tf.matmul(lengths * tf.ones([1, 4]), weights)


class Chunked(tf.Module):
    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows
        self.weights = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, 2], tf.int32)])
    def serve(self, texts, pairs):
        doubled, scores, summed = map_row_chunks(
            lambda t, p: (*_rows(t, self.weights), tf.reduce_sum(p, axis=1)), [texts, pairs], self.rows,
            [(tf.string, []), (tf.float32, [3]), (tf.int32, [])])
        return {"doubled": doubled, "scores": scores, "summed": summed}


@pytest.mark.parametrize("batch", [0, 1, 4, 5, 12, 13])
def test_chunks_equal_one_pass_for_every_batch_size(batch, tmp_path):
    texts = ["t%d" % i * (i + 1) for i in range(batch)]
    pairs = np.arange(2 * batch, dtype=np.int32).reshape(batch, 2)
    module = Chunked(rows=4)
    expected_doubled, expected_scores = _rows(tf.constant(texts, tf.string), module.weights)
    got = module.serve(tf.constant(texts, tf.string), tf.constant(pairs))
    assert got["doubled"].numpy().tolist() == expected_doubled.numpy().tolist()
    assert got["scores"].shape == (batch, 3) and got["summed"].shape == (batch,)
    np.testing.assert_allclose(got["scores"].numpy(), expected_scores.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(got["summed"].numpy(), pairs.sum(axis=1))
    if batch == 13:  # through a SavedModel too: the loop and the one-pass branch are both in the graph
        tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.serve})
        loaded = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
        again = loaded(texts=tf.constant(texts), pairs=tf.constant(pairs))
        np.testing.assert_allclose(again["scores"].numpy(), expected_scores.numpy(), rtol=1e-6)


def test_rows_must_be_positive():
    with pytest.raises(ValueError, match="rows must be >= 1"):
        map_row_chunks(lambda t: [t], [tf.constant(["a"])], 0, [(tf.string, [])])
