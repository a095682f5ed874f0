"""What every stage of a search run reads: the config, the data, the run folder, the strategy, the stage timer."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec.config.loader import LoadedConfig
from tfrec.config.schema import Config
from tfrec.data.tables import SearchData
from tfrec.runs import RunFolder
from tfrec.training.progress import StageTimer
from tfrec.training.strategy import describe, make_strategy, scaled_learning_rate
from tfrec.training.trainer import Trainer, run_trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SearchContext:
    """The run's inputs and services, made once; stages pass their results to each other, never through here."""

    loaded: LoadedConfig
    data: SearchData
    run: RunFolder
    strategy: Any
    strategy_info: dict
    timer: StageTimer
    titles: np.ndarray  # [N] str: the catalog's text
    ids: np.ndarray  # [N] str: the catalog's product ids

    @property
    def cfg(self) -> Config:
        """The resolved config."""
        return self.loaded.config

    @classmethod
    def create(cls, loaded: LoadedConfig, data: SearchData, run_dir: Path) -> "SearchContext":
        """Check the config for the search path and make the distribution strategy (before any TensorFlow op)."""
        cfg = loaded.config
        if cfg.train.distribute.mixed_precision != "none":
            # tfrs.tasks.Retrieval has no dtype: under a mixed policy its matmul mixes float16 queries
            # with float32 candidates. The trainer supports it; this model does not yet.
            raise ValueError("train.distribute.mixed_precision=%s: the search two-tower model trains in float32 only "
                             "in this release (set it to none)" % cfg.train.distribute.mixed_precision)
        # Before any TensorFlow op: multi-worker and logical-device strategies need a fresh runtime.
        strategy = make_strategy(cfg.train.distribute)
        return cls(loaded, data, RunFolder(run_dir), strategy, describe(strategy), StageTimer(log, announce=True),
                   data.catalog.text().astype(str), data.catalog.ids.astype(str))

    def trainer(self, name: str, early_stopping: bool = False, progress: Optional[bool] = None) -> Trainer:
        """tfrec's trainer for one model of this run: strategy, checkpoints, TensorBoard, progress."""
        tc = self.cfg.train
        return run_trainer(self.cfg, self.run.root, name, self.strategy, progress=progress,
                           early_stopping_metric=tc.early_stopping_metric if early_stopping else None,
                           early_stopping_patience=tc.early_stopping_patience if early_stopping else 0)

    def scaled(self, learning_rate: float) -> float:
        """A learning rate scaled to the strategy's replicas as ``train.distribute.learning_rate_scaling`` says."""
        return scaled_learning_rate(learning_rate, self.strategy_info["replicas"], self.cfg.train.distribute.learning_rate_scaling)

    def drop_checkpoints(self, name: str) -> None:
        """Training checkpoints only matter until the model is saved: the towers' take ~0.8 GB."""
        shutil.rmtree(self.run.checkpoint_dir(name), ignore_errors=True)
