"""The data layer: validating readers, dataset adapters and tf.data pipelines.

Importing this package does not import TensorFlow; :mod:`tfrec.data.pipelines` does.
"""
from tfrec.data.datasets import Dataset, load_data
from tfrec.data.errors import DataError, DropReport
from tfrec.data.tables import Catalog, Interactions, Judgments, RecommendationData, SearchData, Sequences

__all__ = [
    "Catalog",
    "DataError",
    "Dataset",
    "DropReport",
    "Interactions",
    "Judgments",
    "RecommendationData",
    "SearchData",
    "Sequences",
    "load_data",
]
