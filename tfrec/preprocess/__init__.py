"""Preprocessing at scale: ``tfrec data prepare`` validates, splits and shards a config's data on Apache Spark.

Importing this package imports neither Spark nor TensorFlow; :func:`prepare` starts Spark when
the data has an interaction log.
"""
from tfrec.preprocess.prepare import PrepareResult, prepare

__all__ = ["PrepareResult", "prepare"]
