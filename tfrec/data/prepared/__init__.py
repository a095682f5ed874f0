"""Prepared datasets: TFRecord shards plus a manifest, as ``tfrec data prepare`` writes them.

:mod:`~tfrec.data.prepared.records` writes Examples and TFRecord files without TensorFlow,
:mod:`~tfrec.data.prepared.manifest` describes and checks a folder, and
:mod:`~tfrec.data.prepared.reader` reads it back (tables, and training examples as a stream).
"""
