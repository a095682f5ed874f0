"""Stage 3: full-ranking evaluation on valid against the popularity and zero-shot text baselines.

Every system ranks all catalog items for each user's one valid target; the numbers are also
split by whether the target was seen in training (cold targets are reachable through their text only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from tfrec.baselines.recommend import baseline_tops
from tfrec.config.schema import Config
from tfrec.data.prepared.reader import ShardedSequences
from tfrec.data.tables import RecommendationData
from tfrec.evaluation.recommend import CI_METRICS, item_counts, rank_metrics, recommendation_report, top_k_from_vectors
from tfrec.evaluation.search import paired_bootstrap
from tfrec.recommend import train as rt
from tfrec.recommend.metrics import RankingMetrics, SeenCold
from tfrec.recommend.model import SequentialRecommender


@dataclass(frozen=True, eq=False)
class Evaluation:
    """The valid-split numbers of every system, and the per-user arrays `tfrec compare` pairs."""

    ranking: RankingMetrics
    seen_cold: SeenCold
    model: str  # the trained model's key in ``ranking.systems``
    per_user: dict[str, dict[str, np.ndarray]]  # {system: {metric: float64 [n_users]}}


def model_inputs(item_text: bool, item_id: bool) -> str:
    """What the model's item vectors are made of, for its label in reports: "text + id", "text" or "id"."""
    return " + ".join(name for name, used in (("text", item_text), ("id", item_id)) if used)


def evaluate_recommender(config: Config, data: RecommendationData, model: SequentialRecommender,
                         text_vectors: Optional[np.ndarray]) -> Evaluation:
    """Rank the whole catalog for every valid user with the model and both baselines; compare them."""
    rc, catalog, valid = config.recommendation, data.catalog, data.valid
    n_items, k = len(catalog), max(max(config.evaluation.ks), 10)
    history, _ = valid.padded_histories(rc.max_history)
    streamed = isinstance(data.train, ShardedSequences)  # training examples left in prepared shards
    counts = data.train.item_counts() if streamed else item_counts(data.train, n_items)
    items = rt.item_matrix(model)
    # Diversity is measured on text vectors; an id-only model has none, so its own item vectors stand in.
    text = text_vectors if text_vectors is not None else items
    systems: dict = baseline_tops(data.train, valid, text, k, rc.max_history, exclude_history=rc.exclude_history, counts=counts)
    if text_vectors is None:
        systems.pop("zero_shot_text")
    name = "tfrec_%s" % rc.encoder
    systems[name] = {"top": top_k_from_vectors(rt.user_matrix(model, history), items, k, exclude=history if rc.exclude_history else None),
                     "label": "tfrec %s (%s)" % (rc.encoder, model_inputs(rc.item_text, rc.item_id)), "kind": "model"}
    reference = "zero_shot_text" if "zero_shot_text" in systems else "popularity"
    per_user: dict = {}
    report = recommendation_report(systems, valid.targets, config.evaluation.ks, text, counts, n_items,
                                   exclude_history=rc.exclude_history, reference=reference,
                                   n_resamples=config.evaluation.bootstrap_resamples, seed=config.run.seed, per_user=per_user)
    report["significance"] += versus_strongest(report, per_user, name, config.evaluation.bootstrap_resamples, config.run.seed)
    if streamed:
        seen = data.train.counts()["vocab_all"].astype(bool)
    else:
        seen = np.zeros(n_items, bool)
        seen[np.unique(np.concatenate([data.train.items, data.train.targets]))] = True
    return Evaluation(RankingMetrics.from_report(report), seen_cold(systems, valid.targets, seen), name, per_user)


def versus_strongest(report: Mapping[str, Any], per_user: Mapping[str, Mapping[str, np.ndarray]], model: str,
                     n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """Paired bootstrap of ``model`` against the strongest baseline on each interval metric, where that baseline is not
    the report's reference (the reference comparison is already in the report)."""
    out = []
    for metric in CI_METRICS:
        scored = [(entry[metric], key) for key, entry in report["systems"].items()
                  if entry.get("kind") == "baseline" and np.isfinite(entry.get(metric, np.nan))]
        if not scored:
            continue
        best = max(scored)[1]
        if best == report["reference"] or metric not in per_user.get(best, {}) or metric not in per_user.get(model, {}):
            continue
        test = paired_bootstrap(per_user[model][metric], per_user[best][metric], n_resamples=n_resamples, seed=seed)
        out.append({"system": model, "versus": best, "metric": metric, "mean_diff": test["mean_diff"], "low": test["low"],
                    "high": test["high"], "p_value": test["p_value"], "n_users": test["n_queries"], "confidence": 0.95})
    return out


def seen_cold(systems: Mapping[str, Mapping[str, Any]], targets: np.ndarray, seen: np.ndarray) -> SeenCold:
    """Each system's metrics@10 on targets seen in training and on cold ones (``seen``: bool per item)."""
    cold = ~seen[targets]
    parts: dict[str, dict[str, dict[str, float]]] = {}
    for name, system in systems.items():
        for label, keep in (("seen", ~cold), ("cold", cold)):
            if keep.any():
                parts.setdefault(name, {})[label] = rank_metrics(system["top"][keep], targets[keep], [10])
    return SeenCold(valid_targets=int(len(targets)), cold_targets=int(cold.sum()), systems=parts)
