"""The typed results of a sequential recommendation run; ``to_json()`` gives the run's metrics.json.

Every field keeps the name and place it has in metrics.json, which scripts, `tfrec compare` and
the report read: ``RecommendationMetrics.to_json()`` is the file, key for key and in order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

SPLIT = "valid"


@dataclass(frozen=True)
class EpochSelection:
    """How the number of epochs was chosen on each user's newest training example."""

    epochs_run: int
    best_epoch: int  # 1-based; 0 when no epoch ran
    history: list[dict[str, float]]  # the Trainer's per-epoch logs, rounded to 5 digits
    holdout_examples: int
    train_examples: int
    stopped_early: bool

    def holdout_metrics(self) -> dict[str, float]:
        """The best epoch's validation numbers (``val_`` prefix dropped); empty when no epoch ran."""
        if not self.history:
            return {}
        return {k[len("val_"):]: v for k, v in self.history[self.best_epoch - 1].items() if k.startswith("val_")}

    def to_json(self) -> dict[str, Any]:
        """metrics.json's ``training.selection``."""
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "history": self.history,
                "holdout_examples": self.holdout_examples, "train_examples": self.train_examples,
                "stopped_early": self.stopped_early}


@dataclass(frozen=True)
class TrainingSummary:
    """Epoch selection, the selected model's holdout numbers and whether it was re-trained on everything."""

    selection: EpochSelection
    holdout: dict[str, float]
    refit: bool
    examples_per_second: Optional[float] = None  # of the re-training, when there was one

    def to_json(self) -> dict[str, Any]:
        """metrics.json's ``training``."""
        out: dict[str, Any] = {"selection": self.selection.to_json(), "holdout": self.holdout, "refit": self.refit}
        if self.examples_per_second is not None:
            out["examples_per_second"] = self.examples_per_second
        return out


@dataclass(frozen=True)
class RankingMetrics:
    """Full-ranking accuracy and beyond-accuracy numbers per system, with paired bootstrap intervals.

    The fields of :func:`tfrec.evaluation.recommend.recommendation_report`, in its order.
    """

    n_users: int
    n_items: int
    ks: list[int]
    exclude_history: bool
    reference: str
    beyond_accuracy_k: int
    novelty_smoothing: str
    systems: dict[str, dict[str, Any]]
    significance: list[dict[str, Any]]

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> "RankingMetrics":
        """From the dict :func:`~tfrec.evaluation.recommend.recommendation_report` returns."""
        return cls(**{name: report[name] for name in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        """The fields as metrics.json has them (top level)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class SeenCold:
    """Each system's metrics@10 on valid targets seen in training and on those never seen (cold)."""

    valid_targets: int
    cold_targets: int
    systems: dict[str, dict[str, dict[str, float]]]  # {system: {"seen"|"cold": metrics}}; a part without targets is left out

    def to_json(self) -> dict[str, Any]:
        """metrics.json's ``seen_cold``."""
        return {"valid_targets": self.valid_targets, "cold_targets": self.cold_targets, **self.systems}


SIMILAR_ITEMS_NOTE = ("recall@10 of the valid target among the 10 items most similar to the user's newest history item "
                      "(the item itself excluded)")


@dataclass(frozen=True)
class SimilarItems:
    """Item -> items lists checked on valid, per item vector space, and a few sample lists."""

    examples: int
    spaces: dict[str, dict[str, float]]  # {"item tower" | "zero-shot text": metrics}
    samples: list[dict[str, Any]]  # [{"item": title, "similar": [titles]}]

    def to_json(self) -> dict[str, Any]:
        """metrics.json's ``similar_items``."""
        return {"examples": self.examples, "note": SIMILAR_ITEMS_NOTE, **self.spaces, "samples": self.samples}


@dataclass(frozen=True)
class RecommendationMetrics:
    """Everything a sequential recommendation run reports on its valid split."""

    ranking: RankingMetrics
    seen_cold: SeenCold
    similar_items: SimilarItems
    training: TrainingSummary
    model: str  # the key of the trained model in ``ranking.systems``
    seconds: dict[str, float]
    split: str = SPLIT

    def to_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        return {**self.ranking.to_json(), "seen_cold": self.seen_cold.to_json(), "similar_items": self.similar_items.to_json(),
                "training": self.training.to_json(), "model": self.model, "split": self.split, "seconds": self.seconds}
