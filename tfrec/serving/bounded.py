"""Bounded work per request inside exported graphs: batches are processed a fixed number of rows at a time.

A served request may carry up to the server's batch limit of rows (TF Serving has none by
default), and some of the work per row is proportional to the catalog (a ``[rows, N]`` score
matrix per component) or to a BERT pass. Running the batch through a ``tf.while_loop`` of
``rows``-row chunks, one chunk at a time, keeps the peak memory of a request at what one chunk
needs, whatever the batch size; the results are those of one pass over the whole batch. A batch
that fits one chunk (the common request) runs without the loop.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from tfrec import compat

tf = compat.tensorflow()

# Rows per step: large enough that matmuls stay efficient, small enough that a chunk's [rows, N]
# score matrices over a 50k-product catalog stay in the tens of MB.
DEFAULT_CHUNK_ROWS = 32


def map_row_chunks(fn: Callable[..., Sequence[Any]], inputs: Sequence[Any], rows: int,
                   outputs: Sequence[tuple[Any, Sequence[Any]]]) -> list[Any]:
    """Apply ``fn`` to ``rows``-row slices of ``inputs`` (aligned ``[B, ...]`` tensors) in turn and concatenate.

    ``outputs`` gives each result's (dtype, shape after the batch dimension). Chunks run one after
    another (``parallel_iterations=1``), so only one chunk's intermediates are alive at a time.
    """
    if rows < 1:
        raise ValueError("rows must be >= 1, got %r" % (rows,))
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    total = tf.shape(inputs[0])[0]
    arrays = [
        tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False, element_shape=tf.TensorShape([None, *inner]))
        for dtype, inner in outputs
    ]

    def body(step: Any, *acc: Any) -> tuple:
        start = step * rows
        parts = fn(*[x[start:start + rows] for x in inputs])
        return (step + 1, *[a.write(step, p) for a, p in zip(acc, parts)])

    def in_chunks() -> list:
        steps = (total + rows - 1) // rows
        _, *filled = tf.while_loop(lambda step, *_: step < steps, body, (tf.constant(0), *arrays), parallel_iterations=1)
        return [array.concat() for array in filled]

    # The common request fits one chunk (and an empty one needs no loop): run it without the loop.
    return tf.cond(total <= rows, lambda: list(fn(*inputs)), in_chunks)
