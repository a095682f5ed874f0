"""The one trainer of tfrec: a tf.distribute loop around ``model.train_step`` with resumable checkpoints.

Any Keras model whose ``train_step`` does the work trains here: tfrs.Model subclasses (the two
towers, which also carry a ``head_optimizer``) and plain compiled Keras models (the ranker head),
under any tf.distribute strategy (the default one included). Each step runs
``strategy.run(model.train_step, ...)`` in a ``tf.function`` and reduces the returned numbers the
way ``model.fit`` does, so a run reproduces ``model.fit`` on the same batches.

Resuming. Every ``checkpoint_every_steps`` steps and at each epoch end a checkpoint holds the
model, every optimizer (slots and iteration counts, so learning-rate schedules continue), the
global step, epoch and batch-in-epoch, the random generators (the trainer's ``rng`` and those of
the model's Keras random layers, which Keras itself leaves out of checkpoints) and the loop's own
state (history, the epoch's running sums, early-stopping state). A restarted run restores the
newest readable checkpoint, rebuilds that epoch's dataset and skips the batches already trained,
so it continues on exactly the data and random draws it would have seen. That holds when
``dataset(epoch)`` is a pure function of the epoch (shuffle with a seed derived from it, e.g.
:func:`epoch_seed`) and the model's randomness comes from tf.random.Generator state: Keras
layers use one only when built with ``force_generator=True``; legacy stateful random ops (a
default ``Dropout``, ``tf.random.uniform(seed=...)``) restart their sequence in a new process,
so such a model resumes correctly but not bit-for-bit.

Numbers. Per step, a model's metrics are reset after its values are read, so every step reports
that batch alone; an epoch's value is the example-weighted mean of its steps (for compiled Keras
models this equals ``model.fit``'s epoch value; tfrs models log the last batch there instead).

Mixed precision. The Keras dtype policy is set only while ``build()`` runs, so the layers built
there compute in float16/bfloat16 with float32 variables and the global policy is left as it was.
It is numerically safe when the model's outputs and losses are float32 (a final layer with
``dtype="float32"`` or a cast, and losses computed from float32 values); softmax over many
candidates, norms and sums of squares should stay float32 too. ``mixed_float16`` wraps every
optimizer in a ``LossScaleOptimizer`` (compile does it for ``model.optimizer``; this trainer
for other optimizer attributes such as ``head_optimizer``); a custom ``train_step`` gets loss
scaling only through ``optimizer.minimize(loss, vars, tape=tape)`` or ``get_scaled_loss`` /
``get_unscaled_gradients``, otherwise the wrapper just skips steps with non-finite gradients.
``mixed_bfloat16`` needs no loss scaling (TPUs, recent CPUs and Ampere+ GPUs).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

from tfrec import compat
from tfrec.runs import RunFolder
from tfrec.training.checkpoints import BestWeights, CheckpointError, TrainingCheckpoints
from tfrec.training.progress import EpochProgress, Summaries, format_logs, say
from tfrec.training.steps import layer_generators, learning_rates, model_optimizers, step_function, worker
from tfrec.config.loader import dump_config

tf = compat.tensorflow()

__all__ = ["MIXED_PRECISION", "CheckpointError", "TrainResult", "Trainer", "describe", "epoch_seed", "precision_policy", "run_trainer"]

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")


@dataclass
class TrainResult:
    """What a :meth:`Trainer.fit` run did. Epochs are numbered from 0, as ``dataset(epoch)`` sees them.

    ``history`` has one dict per completed epoch (those before a resume included): ``epoch``, the
    step logs' epoch means (``loss``, ...), ``examples_per_second``, ``seconds``, the optimizers'
    learning rates and the validation numbers as ``val_<name>``. ``best_epoch`` is the epoch with
    the best ``early_stopping_metric`` (None without one); the returned model has its weights when
    early stopping is on (patience > 0). ``seconds`` and ``examples_per_second`` cover this call.
    """

    epochs_run: int
    steps: int
    loss_per_epoch: list[float]
    history: list[dict[str, float]]
    seconds: float
    examples_per_second: float
    resumed_from: Optional[int]
    stopped_early: bool
    best_epoch: Optional[int]


def epoch_seed(seed: int, epoch: int) -> int:
    """A shuffle seed for ``epoch`` derived from the run's ``seed`` (the same on every restart)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 1) % (2**31 - 1)


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Inside the block the global Keras dtype policy is ``name`` ("none" leaves it); the previous one is put back.

    ``precision_policy("float32")`` inside ``build()`` creates layers that must compute in float32
    under mixed precision but take no ``dtype`` argument (tfrs tasks: a mixed-policy Retrieval
    task casts only its query argument and its matmul fails on the float32 candidates).
    """
    if name not in MIXED_PRECISION + ("float32",):
        raise ValueError("mixed_precision must be one of %s, got %r" % (", ".join(MIXED_PRECISION), name))
    if name == "none":
        yield
        return
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


@dataclass
class _LoopState:
    """The loop's own state, saved as JSON inside each checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of `epoch` already trained
    history: list = field(default_factory=list)
    sums: dict = field(default_factory=dict)  # example-weighted sums of the epoch's step logs
    examples: float = 0.0
    seconds: float = 0.0  # training seconds of the epoch so far
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    wait: int = 0
    stopped: bool = False

    def add_step(self, logs: Mapping[str, float], examples: float) -> None:
        for key, value in logs.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * examples
        self.examples += examples
        self.global_step += 1
        self.batch += 1

    def epoch_means(self) -> dict[str, float]:
        return {key: total / self.examples for key, total in self.sums.items()} if self.examples else {}

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.sums, self.examples, self.seconds = self.epoch + 1, 0, {}, 0.0, 0.0


class _Counters:
    """The checkpointed counters and loop state, as variables (host memory, outside any strategy scope)."""

    def __init__(self) -> None:
        with tf.device("/cpu:0"):
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
            self.loop_state = tf.Variable("", dtype=tf.string, trainable=False, name="loop_state")

    def trackables(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "loop_state": self.loop_state}

    def write(self, state: _LoopState) -> None:
        self.global_step.assign(state.global_step)
        self.epoch.assign(state.epoch)
        self.step_in_epoch.assign(state.batch)
        self.loop_state.assign(json.dumps(asdict(state)))

    def read(self) -> _LoopState:
        text = self.loop_state.numpy().decode("utf-8")
        state = _LoopState(**json.loads(text)) if text else _LoopState()
        # The variables are the source of truth for the position (the JSON is written beside them).
        state.global_step, state.epoch, state.batch = int(self.global_step.numpy()), int(self.epoch.numpy()), int(self.step_in_epoch.numpy())
        return state


class _Run:
    """The moving parts of one fit() call: the model, its step function, checkpoints, summaries, loop state."""

    def __init__(self, model: Any, step: Callable, state: _LoopState, *, counters: _Counters, layer_rngs: Any,
                 store: Optional[TrainingCheckpoints], best: BestWeights, summaries: Summaries, show: bool) -> None:
        self.model, self.step, self.state = model, step, state
        self.counters, self.layer_rngs, self.store, self.best, self.summaries = counters, layer_rngs, store, best, summaries
        self.show = show
        self.traced = False
        self.examples, self.seconds = 0.0, 0.0  # this call's training only (not a resumed run's earlier part)

    def save(self) -> None:
        if self.store is not None:
            self.counters.write(self.state)
            self.store.save(self.state.global_step)

    def trace(self, element: Any) -> None:
        # Tracing builds the model's layers without running a step; their random generators exist
        # from then on and, attached now, take the checkpoint's state (deferred restoration)
        # before the first step draws from them.
        self.step.get_concrete_function(element)
        for i, generator in enumerate(layer_generators(self.model)):
            setattr(self.layer_rngs, "layer_%d" % i, generator)
        self.traced = True

    def train_epoch(self, elements: Any, bar: EpochProgress, *, every: int, summary_every: int,
                    examples_per_batch: Optional[int], on_step_end: Optional[Callable]) -> None:
        state, pending_save = self.state, False
        window_examples, window_start = 0.0, time.perf_counter()
        mark = time.perf_counter()
        for element in elements:
            if pending_save:
                # Saved once the next batch exists, so an epoch's last step is saved by the epoch-end
                # checkpoint (after validation) and not twice.
                now = time.perf_counter()
                state.seconds, self.seconds, mark = state.seconds + now - mark, self.seconds + now - mark, now
                self.save()
                pending_save = False
            if not self.traced:
                self.trace(element)
            logs, examples = self.step(element)
            values = {key: float(value) for key, value in logs.items()}
            if "loss" not in values:
                raise ValueError("model.train_step returned no 'loss' (it returned %s)" % sorted(values))
            n = float(examples_per_batch if examples_per_batch is not None else int(examples))
            state.add_step(values, n)
            self.examples += n
            window_examples += n
            bar.update(n, values["loss"])
            if self.summaries.active and state.global_step % summary_every == 0:
                now = time.perf_counter()
                rate = window_examples / max(now - window_start, 1e-9)
                self.summaries.scalars("train", {**values, "examples_per_second": rate}, step=state.global_step)
                window_examples, window_start = 0.0, now
            if on_step_end is not None:
                on_step_end(state.global_step, values)
            pending_save = self.store is not None and state.global_step % every == 0
        now = time.perf_counter()
        state.seconds, self.seconds = state.seconds + now - mark, self.seconds + now - mark

    def end_epoch(self, record: Mapping[str, float]) -> None:
        """Summaries of the finished epoch, then its checkpoint (the loop state already names the next epoch)."""
        step = self.state.global_step
        self.summaries.scalars("epoch", {k: v for k, v in record.items() if k != "epoch" and not k.startswith("val_")}, step=step)
        self.summaries.scalars("val", {k[4:]: v for k, v in record.items() if k.startswith("val_")}, step=step)
        self.summaries.flush()
        self.state.next_epoch()
        self.save()
        if self.state.best_epoch is not None:
            self.best.prune(self.state.best_epoch)


class Trainer:
    """Trains a Keras model built by a callable under a tf.distribute strategy, with resumable checkpoints.

    ``checkpoint_dir`` None: no checkpoints (and nothing to resume). ``resume`` False starts over
    and deletes the directory's earlier numbered checkpoints. ``tensorboard_dir`` None: no event
    files. ``early_stopping_metric`` names a key of ``validate(model)``'s dict; with a patience > 0
    training stops after that many epochs without improvement (a stopped run stays stopped when
    resumed) and the best epoch's weights are put back. ``config_text`` (e.g. the resolved YAML)
    is written to TensorBoard as text.
    """

    def __init__(
        self,
        strategy: Any = None,
        *,
        checkpoint_dir: Optional[str] = None,
        checkpoint_every_steps: int = 200,
        keep_checkpoints: int = 3,
        resume: bool = True,
        seed: int = 0,
        tensorboard_dir: Optional[str] = None,
        summary_every_steps: int = 10,
        config_text: Optional[str] = None,
        progress: bool = True,
        mixed_precision: str = "none",
        early_stopping_metric: Optional[str] = None,
        early_stopping_patience: int = 0,
        early_stopping_mode: str = "max",
    ) -> None:
        if checkpoint_every_steps < 1:
            raise ValueError("checkpoint_every_steps must be >= 1, got %r" % (checkpoint_every_steps,))
        if keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1, got %r" % (keep_checkpoints,))
        if summary_every_steps < 1:
            raise ValueError("summary_every_steps must be >= 1, got %r" % (summary_every_steps,))
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError("mixed_precision must be one of %s, got %r" % (", ".join(MIXED_PRECISION), mixed_precision))
        if early_stopping_mode not in ("max", "min"):
            raise ValueError("early_stopping_mode must be 'max' or 'min', got %r" % (early_stopping_mode,))
        if early_stopping_patience < 0:
            raise ValueError("early_stopping_patience must be >= 0, got %r" % (early_stopping_patience,))
        if early_stopping_patience > 0 and not early_stopping_metric:
            raise ValueError("early_stopping_patience=%d needs an early_stopping_metric" % early_stopping_patience)
        self.strategy = strategy
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every_steps = int(checkpoint_every_steps)
        self.keep_checkpoints = int(keep_checkpoints)
        self.resume = bool(resume)
        self.seed = int(seed)
        self.tensorboard_dir = tensorboard_dir
        self.summary_every_steps = int(summary_every_steps)
        self.config_text = config_text
        self.progress = bool(progress)
        self.mixed_precision = mixed_precision
        self.early_stopping_metric = early_stopping_metric or None
        self.early_stopping_patience = int(early_stopping_patience)
        self.early_stopping_mode = early_stopping_mode
        # The trainer's random generator, created by fit() and checkpointed with the run: randomness
        # drawn from it in the model's steps continues exactly after a resume. (Not for `dataset`,
        # which is rebuilt at a resume and must depend on the epoch alone.)
        self.rng: Any = None

    def fit(
        self,
        build: Callable[[], Any],
        dataset: Callable[[int], Any],
        epochs: int,
        *,
        steps_per_epoch: Optional[int] = None,
        examples_per_batch: Optional[int] = None,
        validate: Optional[Callable[[Any], Mapping[str, float]]] = None,
        on_step_end: Optional[Callable[[int, dict], None]] = None,
    ) -> tuple[Any, TrainResult]:
        """Build the model in the strategy's scope and train it ``epochs`` epochs (continuing a checkpointed run).

        ``build()`` returns a compiled model. ``dataset(epoch)`` returns that epoch's batches (global
        batch size), the same ones every time it is asked for that epoch. ``steps_per_epoch`` caps
        (or, for a repeated dataset, sets) an epoch's length; ``examples_per_batch`` overrides the
        examples counted per step (by default the leading size of the batch's first tensor).
        ``validate(model)`` runs after each epoch and returns named numbers; ``on_step_end(step,
        logs)`` is called after every step with the global step and that step's logs.
        """
        if epochs < 0:
            raise ValueError("epochs must be >= 0, got %r" % (epochs,))
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be >= 1 or None, got %r" % (steps_per_epoch,))
        if examples_per_batch is not None and examples_per_batch < 1:
            raise ValueError("examples_per_batch must be >= 1 or None, got %r" % (examples_per_batch,))
        if self.early_stopping_patience > 0 and validate is None:
            raise ValueError("early stopping on %r needs a validate function" % self.early_stopping_metric)
        started = time.perf_counter()
        strategy = self.strategy or tf.distribute.get_strategy()
        run, resumed_from = self._start(build, strategy)
        state = run.state
        try:
            while state.epoch < epochs and not state.stopped:
                data = dataset(state.epoch)
                if not isinstance(data, tf.data.Dataset):
                    raise TypeError("dataset(%d) must return a tf.data.Dataset, got %s" % (state.epoch, type(data).__name__))
                if steps_per_epoch is not None:
                    data = data.take(steps_per_epoch)
                total = steps_per_epoch or _known_length(data)
                if state.batch:
                    data = data.skip(state.batch)  # the batches trained before the checkpoint
                bar = EpochProgress(state.epoch, epochs, total_steps=total, initial_step=state.batch, show=run.show)
                run.train_epoch(
                    strategy.experimental_distribute_dataset(data), bar, every=self.checkpoint_every_steps,
                    summary_every=self.summary_every_steps, examples_per_batch=examples_per_batch, on_step_end=on_step_end,
                )
                record = self._end_epoch(run, validate)
                run.end_epoch(record)
                bar.close({k: v for k, v in record.items() if k != "epoch"})
            if self._restores_best() and state.best_epoch is not None and state.history and state.best_epoch != state.history[-1]["epoch"]:
                if run.best.restore(state.best_epoch):
                    say("restored the weights of epoch %d (best %s=%.4g)" % (state.best_epoch + 1, self.early_stopping_metric, state.best), show=run.show)
        finally:
            run.summaries.close()
        history = list(state.history)
        return run.model, TrainResult(
            epochs_run=len(history),
            steps=state.global_step,
            loss_per_epoch=[h["loss"] for h in history if "loss" in h],
            history=history,
            seconds=time.perf_counter() - started,
            examples_per_second=run.examples / run.seconds if run.seconds > 0 else 0.0,
            resumed_from=resumed_from,
            stopped_early=state.stopped,
            best_epoch=state.best_epoch,
        )

    def _start(self, build: Callable[[], Any], strategy: Any) -> tuple[_Run, Optional[int]]:
        """Build the model, assemble the checkpoint and restore the newest good one (if resuming)."""
        chief, task_id = worker(strategy)
        show = self.progress and chief
        self.rng = tf.random.Generator.from_seed(self.seed)
        model = self._build(build, strategy)
        counters = _Counters()
        layer_rngs = tf.Module()  # gets the layers' generators once the first trace has built them
        checkpoint = tf.train.Checkpoint(
            model=model, rng=self.rng, layer_rngs=layer_rngs, **model_optimizers(model), **counters.trackables()
        )
        store = None
        if self.checkpoint_dir:
            scratch = None if chief else os.path.join(self.checkpoint_dir, ".worker-%d-tmp" % task_id)
            store = TrainingCheckpoints(self.checkpoint_dir, checkpoint, keep=self.keep_checkpoints, write_directory=scratch)
        state, resumed_from = self._restore(store, counters, show=show, chief=chief)
        best = BestWeights(model, os.path.join(self.checkpoint_dir, "best") if self.checkpoint_dir else None, write=chief)
        summaries = Summaries(self.tensorboard_dir, enabled=chief)
        if self.config_text is not None:
            summaries.text("config", self.config_text, step=state.global_step)
        run = _Run(
            model, step_function(strategy, model), state, counters=counters, layer_rngs=layer_rngs,
            store=store, best=best, summaries=summaries, show=show,
        )
        return run, resumed_from

    def _build(self, build: Callable[[], Any], strategy: Any) -> Any:
        with strategy.scope():
            with precision_policy(self.mixed_precision):
                model = build()
            if getattr(model, "optimizer", None) is None:
                raise ValueError(
                    "build() must return a compiled model, got %s with no optimizer: call model.compile(optimizer=...) in build()"
                    % type(model).__name__
                )
            if self.mixed_precision == "mixed_float16":
                for name, optimizer in model_optimizers(model).items():
                    if name != "optimizer" and not isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
                        setattr(model, name, tf.keras.mixed_precision.LossScaleOptimizer(optimizer))
        return model

    def _restore(self, store: Optional[TrainingCheckpoints], counters: _Counters, *, show: bool, chief: bool) -> tuple[_LoopState, Optional[int]]:
        if store is None:
            return _LoopState(), None
        if not self.resume:
            removed = store.clear() if chief else 0
            if removed:
                say("resume=False: removed %d checkpoint(s) of an earlier run in %s" % (removed, store.directory), show=show)
            return _LoopState(), None
        prefix = store.restore_newest()
        if prefix is None:
            return _LoopState(), None
        state = counters.read()
        # Epoch as the progress bar numbers it (from 1); batch = batches of it already trained.
        say("resumed from step %d (epoch %d, batch %d): %s" % (state.global_step, state.epoch + 1, state.batch, prefix), show=show)
        return state, state.global_step

    def _restores_best(self) -> bool:
        return self.early_stopping_metric is not None and self.early_stopping_patience > 0

    def _end_epoch(self, run: _Run, validate: Optional[Callable]) -> dict[str, float]:
        """The epoch's history record (validation included); updates the early-stopping state."""
        state = run.state
        record: dict[str, float] = {"epoch": state.epoch, **state.epoch_means()}
        record["examples_per_second"] = state.examples / state.seconds if state.seconds > 0 else 0.0
        record["seconds"] = state.seconds
        record.update(learning_rates(run.model))
        scores = {str(k): float(v) for k, v in (validate(run.model) if validate is not None else {}).items()}
        record.update({"val_%s" % k: v for k, v in scores.items()})
        state.history.append(record)
        metric = self.early_stopping_metric
        if metric is None or validate is None:
            return record
        if metric not in scores:
            raise ValueError("validate() returned no %r (early_stopping_metric); it returned %s" % (metric, sorted(scores)))
        value = scores[metric]
        if math.isnan(value):
            improved = False
        elif state.best is None:
            improved = True
        else:
            improved = value > state.best if self.early_stopping_mode == "max" else value < state.best
        if improved:
            state.best, state.best_epoch, state.wait = value, state.epoch, 0
            if self._restores_best():
                run.best.save(state.epoch)
        else:
            state.wait += 1
        if self._restores_best() and state.wait >= self.early_stopping_patience:
            state.stopped = True
            say("early stopping after epoch %d: no better %s than %.4g (epoch %d) for %d epoch(s)"
                % (state.epoch + 1, metric, state.best if state.best is not None else float("nan"),
                   (state.best_epoch or 0) + 1, state.wait), show=run.show)
        return record


def _known_length(data: Any) -> Optional[int]:
    n = int(data.cardinality())
    return n if n >= 0 else None


def describe(result: TrainResult) -> str:
    """One line about a finished run."""
    last = result.history[-1] if result.history else {}
    return "%d epoch(s), %d steps, %.0f examples/s%s%s: %s" % (
        result.epochs_run, result.steps, result.examples_per_second,
        ", resumed from step %d" % result.resumed_from if result.resumed_from is not None else "",
        ", stopped early" if result.stopped_early else "",
        format_logs({k: v for k, v in last.items() if k != "epoch"}),
    )


def run_trainer(cfg: Any, run_dir: Any, name: str, strategy: Any, *, early_stopping_metric: Optional[str] = None,
                early_stopping_patience: int = 0, progress: Optional[bool] = None,
                mixed_precision: Optional[str] = None) -> Trainer:
    """The Trainer of one model of a run, from the config's ``train`` section: checkpoints and TensorBoard under ``run_dir``."""
    tc = cfg.train
    folder = RunFolder(run_dir)
    return Trainer(
        strategy,
        checkpoint_dir=str(folder.checkpoint_dir(name)) if tc.checkpoint.enabled else None,
        checkpoint_every_steps=tc.checkpoint.every_steps, keep_checkpoints=tc.checkpoint.keep, resume=tc.checkpoint.resume,
        seed=cfg.run.seed, tensorboard_dir=str(folder.tensorboard_dir(name)) if tc.tensorboard else None,
        config_text=dump_config(cfg), progress=tc.progress if progress is None else progress,
        mixed_precision=tc.distribute.mixed_precision if mixed_precision is None else mixed_precision,
        early_stopping_metric=early_stopping_metric, early_stopping_patience=early_stopping_patience,
    )
