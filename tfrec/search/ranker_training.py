"""Training one ranker head on candidate lists with tfrec's trainer: the one path of ``tfrec train`` and ``tfrec tune``.

The search run trains a head per candidate loss (with its run's trainer: strategy, checkpoints,
TensorBoard); a tuning trial trains one head per trial (with a bare trainer). Both go through
:func:`train_ranker_head`, so a trial's head is built, fed and stepped as the run's would be.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from tfrec import compat
from tfrec.config.schema import Config
from tfrec.data.tables import Catalog
from tfrec.ranking.losses import ranking_loss
from tfrec.ranking.metrics import ranking_metrics
from tfrec.search.models import ranker_head
from tfrec.search.ranker_data import CandidateLists
from tfrec.training.trainer import Trainer, TrainResult, epoch_seed

tf = compat.tensorflow()

# Per-epoch numbers of the trainer's history that are bookkeeping, not training metrics.
_NOT_METRICS = ("epoch", "seconds", "examples_per_second")


def train_ranker_head(
    cfg: Config,
    trainer: Trainer,
    inputs: dict,
    lists: CandidateLists,
    vocabulary: Optional[Sequence[str]],
    *,
    loss: str,
    learning_rate: float,
    epochs: int,
    catalog: Optional[Catalog] = None,
) -> tuple[Any, TrainResult]:
    """A ranker head of ``cfg`` (``vocabulary`` None: no id feature) trained on ``lists`` for ``epochs`` with ``loss``.

    ``inputs`` are the lists' head inputs (``search.ranker_data.head_inputs``, with the catalog
    columns when ``data.catalog`` names any: then ``catalog`` is the run's catalog); the lexical
    normalization adapts to the real (unpadded) items. With 0 epochs the head is built untrained.
    """
    rc = cfg.ranking
    tf.keras.utils.set_random_seed(cfg.run.seed)

    def build() -> Any:
        head = ranker_head(cfg, vocabulary, catalog)
        head.adapt_lexical(inputs["lexical"][lists.mask])
        head.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss=ranking_loss(loss), metrics=ranking_metrics((5, 10)))
        head({k: v[:1] for k, v in inputs.items()})  # built even when it trains 0 epochs (smoke runs): it is saved and exported
        return head

    def dataset(epoch: int) -> Any:
        n = len(lists.labels)
        return (tf.data.Dataset.from_tensor_slices((inputs, lists.labels))
                .shuffle(n, seed=epoch_seed(cfg.run.seed, epoch), reshuffle_each_iteration=False).batch(rc.batch_size))

    return trainer.fit(build, dataset, epochs)


def final_train_metrics(result: TrainResult) -> dict[str, float]:
    """The last epoch's training loss and ranking metrics, rounded to 4 digits (empty when no epoch ran)."""
    if not result.history:
        return {}
    last = result.history[-1]
    return {k: round(float(v), 4) for k, v in last.items() if k not in _NOT_METRICS and not k.startswith("learning_rate")}
