"""Learning-rate schedules shared by the BERT fine-tuning loops (two towers, cross-encoder)."""
from __future__ import annotations

from typing import Any

from tfrec import compat

tf = compat.tensorflow()


class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``total`` steps."""

    def __init__(self, peak: float, total: int, warmup: int) -> None:
        self.peak, self.total, self.warmup = float(peak), max(int(total), 1), max(int(warmup), 1)

    def __call__(self, step: Any) -> Any:
        step = tf.cast(step, tf.float32) + 1.0  # the first update already gets a non-zero rate
        rising = step / self.warmup
        falling = tf.maximum(0.0, (self.total - step + 1.0) / max(self.total - self.warmup + 1, 1))
        return self.peak * tf.minimum(rising, falling)

    def get_config(self) -> dict:
        """Constructor arguments."""
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup}
