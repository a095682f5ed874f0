"""The search models built from a config: one place, used by training and by rebuilding a run for export."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from tfrec import compat
from tfrec.config.schema import Config
from tfrec.data.tables import Catalog
from tfrec.ranking.model import RankerHead
from tfrec.retrieval.model import SearchRetrievalModel
from tfrec.text.fusion import CatalogFeatureLookup
from tfrec.text.model_files import resolve_model_files

tf = compat.tensorflow()


def build_retrieval(model: Any) -> Any:
    """Create the two towers' variables (one call on a dummy pair) so weights can be loaded or copied."""
    model({"query": tf.constant(["a"]), "product_id": tf.constant(["a"]), "title": tf.constant(["a"])})
    return model


def catalog_features(cfg: Config, catalog: Optional[Catalog]) -> Optional[CatalogFeatureLookup]:
    """The in-graph lookup of the catalog columns ``data.catalog.numeric_columns`` / ``categorical_columns`` (None: none set)."""
    columns = cfg.data.catalog
    if not columns.numeric_columns and not columns.categorical_columns:
        return None
    if catalog is None:
        raise ValueError("data.catalog.numeric_columns / categorical_columns are set (%s): the product tower and the ranker "
                         "need the catalog to look them up" % ", ".join([*columns.numeric_columns, *columns.categorical_columns]))
    return CatalogFeatureLookup(
        catalog.ids,
        numeric={name: catalog.numeric[name] for name in columns.numeric_columns},
        categorical={name: catalog.categorical[name] for name in columns.categorical_columns},
        name="catalog_features",
    )


def catalog_columns(cfg: Config) -> Optional[dict[str, list[str]]]:
    """The catalog columns the models fuse, as metrics.json records them ({"numeric": [...], "categorical": [...]}); None: none set."""
    columns = cfg.data.catalog
    if not columns.numeric_columns and not columns.categorical_columns:
        return None
    return {"numeric": list(columns.numeric_columns), "categorical": list(columns.categorical_columns)}


def retrieval_model(cfg: Config, vocabulary: Sequence[str], catalog: Optional[Catalog] = None) -> Any:
    """The two-tower model of ``cfg`` (retrieval and text sections) with this product-id vocabulary.

    ``catalog`` (the run's catalog, sliced as trained) is needed when ``data.catalog`` names numeric or
    categorical columns: the product tower fuses them, looked up by product id.
    """
    rc = cfg.retrieval
    return SearchRetrievalModel(
        resolve_model_files(cfg.text.model_dir),
        vocabulary,
        query_max_length=rc.query_max_length,
        title_max_length=cfg.text.max_length,
        training_mode=rc.text_training,
        trainable_layers=rc.trainable_layers,
        temperature=rc.temperature,
        remove_accidental_hits=rc.remove_accidental_hits,
        id_embedding_dim=rc.id_embedding_dim,
        id_dropout=rc.id_dropout,
        catalog_features=catalog_features(cfg, catalog),
        seed=cfg.run.seed,
    )


def ranker_head(cfg: Config, vocabulary: Optional[Sequence[str]], catalog: Optional[Catalog] = None) -> Any:
    """The feature ranker of ``cfg`` (ranking section); ``vocabulary`` None: no product-id feature.

    ``catalog`` (the run's catalog, sliced as trained) is needed when ``data.catalog`` names numeric or
    categorical columns: the head fuses them per item, standardized / embedded with this catalog's
    statistics and vocabularies (its inputs come from ``RankerFeatures`` given :func:`catalog_features`).
    """
    rc = cfg.ranking
    columns = catalog_features(cfg, catalog)
    return RankerHead(
        product_vocabulary=vocabulary,
        id_dropout=rc.id_dropout,
        hidden_units=tuple(rc.hidden_units),
        interaction_dim=rc.interaction_dim,
        cross_layers=rc.cross_layers,
        dropout=rc.dropout,
        catalog_columns=columns.fusion_arguments() if columns is not None else None,
        seed=cfg.run.seed,
    )
