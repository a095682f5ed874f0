"""Stage 5: what a sequential recommendation run leaves for `tfrec export`, `tfrec evaluate` and `tfrec compare`.

The weights and item vocabulary the model is rebuilt from, recommendation.json (serving settings),
per_query.npz (per-user metrics) and metrics.json, written last, all at the paths
:class:`~tfrec.runs.RunFolder` names. :func:`load_recommender` reads them back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tfrec.config.loader import load_config
from tfrec.config.schema import RecommendationConfig
from tfrec.data.datasets import load_data
from tfrec.data.tables import RecommendationData
from tfrec.evaluation.compare import write_per_query
from tfrec.files import write_bytes_atomic
from tfrec.recommend.metrics import RecommendationMetrics
from tfrec.recommend.model import SequentialRecommender
from tfrec.recommend.stages.item_text import item_text_vectors
from tfrec.runs import RunFolder, write_json


def save_artifacts(folder: RunFolder, model: SequentialRecommender, rc: RecommendationConfig, metrics: RecommendationMetrics,
                   users: np.ndarray, per_user: dict[str, dict[str, np.ndarray]]) -> None:
    """Write the model, its serving settings, the per-user metrics (keyed by ``users``) and metrics.json."""
    folder.recommender_weights.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(folder.recommender_weights))
    vocabulary = model.item_fusion.id_vocabulary or []
    write_bytes_atomic(folder.item_vocabulary, "".join(v + "\n" for v in vocabulary).encode("utf-8"))
    write_json(folder.recommendation_settings, {"top_k": rc.top_k, "exclude_history": rc.exclude_history})
    # Valid has one example per user: the user ids key the rows for `tfrec compare`.
    write_per_query(folder.per_query, np.asarray(users).astype(str), per_user)
    write_json(folder.metrics, metrics.to_json())


def load_recommender(run_dir: Path) -> tuple[SequentialRecommender, RecommendationData, dict[str, Any]]:
    """Rebuild a run's trained recommender: (model, data, settings)."""
    folder = RunFolder(run_dir)
    folder.require(folder.config, folder.recommendation_settings, folder.recommender_weights, folder.item_vocabulary,
                   what="trained recommendation run")
    loaded = load_config(folder.config, [])
    rc = loaded.config.recommendation
    data = load_data(loaded)
    vectors = item_text_vectors(loaded.config, data.catalog)
    vocabulary = [v for v in folder.item_vocabulary.read_text(encoding="utf-8").split("\n") if v]
    model = SequentialRecommender(
        data.catalog.ids.astype(str), vectors, vocabulary or None, encoder=rc.encoder, dim=rc.dim, encoder_dim=rc.encoder_dim,
        max_history=rc.max_history, layers=rc.transformer_layers, heads=rc.transformer_heads, dropout=rc.dropout,
        id_dropout=rc.id_dropout, temperature=rc.temperature, softmax=rc.softmax, seed=loaded.config.run.seed,
    )
    model.user_vectors(np.full((1, rc.max_history), -1, np.int32))  # build every layer before loading
    model.load_weights(str(folder.recommender_weights)).expect_partial()
    settings = json.loads(folder.recommendation_settings.read_text(encoding="utf-8"))
    return model, data, settings
