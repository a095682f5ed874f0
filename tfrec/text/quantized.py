"""An int8 (TFLite dynamic-range) engine for encoding catalogs offline with a frozen encoder.

On CPUs the float32 encoder is bound by the dense matmul rate (about 500 titles/s on two cores
even with length bucketing); int8 weights with XNNPACK kernels roughly double that. The engine
computes the *frozen* features (tokenizer -> BERT -> pooling -> optional L2 norm) that the
embedding cache stores; anything trainable sits downstream of the cache. It is not a serving
path: exported models keep the float32 in-graph encoder that TF Serving loads.

TFLite cannot convert BERT with a dynamic sequence axis without Flex ops, so one model is
converted per length bucket (multiples of ``bucket``) at a fixed batch size; texts are sorted by
token count so each batch runs at the smallest bucket that holds it.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.text.encoder import TextEncoder

tf = compat.tensorflow()


def bucket_lengths(max_length: int, bucket: int) -> list[int]:
    """Sequence lengths the engine compiles: multiples of ``bucket`` up to ``max_length`` (always included)."""
    lengths = list(range(bucket, max_length, bucket))
    return [*lengths, max_length]


class Int8CatalogEncoder:
    """Texts -> frozen float32 vectors through int8 TFLite models, one per length bucket."""

    def __init__(self, encoder: TextEncoder, *, batch_size: int = 64, bucket: int = 16, num_threads: Optional[int] = None):
        if encoder.projection is not None or encoder.training_mode != "frozen":
            raise ValueError(
                "the int8 catalog engine encodes frozen features: build it from a frozen TextEncoder without "
                "a projection (projection_dim=0); the trainable parts run on the cached vectors"
            )
        if batch_size < 1 or bucket < 1:
            raise ValueError("batch_size and bucket must be >= 1, got %d and %d" % (batch_size, bucket))
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_length = encoder.tokenizer.max_length
        self.lengths = bucket_lengths(self.max_length, bucket)
        self.num_threads = num_threads or os.cpu_count() or 1
        self._interpreters: dict[int, Any] = {}

    def _interpreter(self, length: int) -> Any:
        """The converted model for one bucket length (converted on first use, then kept)."""
        if length not in self._interpreters:
            spec = tf.TensorSpec([self.batch_size, length], tf.int32)
            encoder = self.encoder

            @tf.function(input_signature=[spec, spec])
            def frozen_features(input_ids, attention_mask):
                return encoder.encode_tokens({"input_ids": input_ids, "attention_mask": attention_mask})

            converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen_features.get_concrete_function()], encoder)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8 weights
            interpreter = tf.lite.Interpreter(model_content=converter.convert(), num_threads=self.num_threads)
            interpreter.allocate_tensors()
            self._interpreters[length] = interpreter
        return self._interpreters[length]

    def _run(self, length: int, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        interpreter = self._interpreter(length)
        for detail in interpreter.get_input_details():
            # Input names come from the signature's argument names.
            interpreter.set_tensor(detail["index"], mask if "mask" in detail["name"] else ids)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into [n, dim] float32 vectors, in input order."""
        n = len(texts)
        dim = self.encoder.output_dim
        if n == 0:
            return np.zeros((0, dim), np.float32)
        tokens = self.encoder.tokenizer(tf.constant(list(texts)))
        ids = _fit(tokens["input_ids"].numpy(), self.max_length)
        mask = _fit(tokens["attention_mask"].numpy(), self.max_length)
        counts = mask.sum(axis=1)
        order = np.argsort(counts, kind="stable")
        out = np.zeros((n, dim), np.float32)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            length = next(L for L in self.lengths if L >= counts[rows].max())
            batch_ids = np.zeros((self.batch_size, length), np.int32)
            batch_mask = np.zeros((self.batch_size, length), np.int32)
            batch_ids[: len(rows)] = ids[rows, :length]
            batch_mask[: len(rows)] = mask[rows, :length]
            out[rows] = self._run(length, batch_ids, batch_mask)[: len(rows)]
        return out


def _fit(values: np.ndarray, width: int) -> np.ndarray:
    """Pad (with 0) or crop a [n, w] int array to [n, width]."""
    values = values.astype(np.int32)
    if values.shape[1] >= width:
        return values[:, :width]
    return np.pad(values, ((0, 0), (0, width - values.shape[1])))
