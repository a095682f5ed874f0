"""The trainer: the same numbers as model.fit, TensorBoard events, early stopping, mixed precision, clear errors."""
from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
from training_child import N_PAIRS, build_ranker, build_two_tower, pair_dataset, ranker_data

from tfrec import compat
from tfrec.log import configured
from tfrec.training.progress import EpochProgress
from tfrec.training.trainer import Trainer, epoch_seed, precision_policy

tf = compat.tensorflow()

BATCH = 32


def ranker_dataset(epoch: int) -> tf.data.Dataset:
    x, y = ranker_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=epoch_seed(0, epoch), reshuffle_each_iteration=False)
    return data.batch(BATCH)


def all_epochs(dataset, epochs: int) -> tf.data.Dataset:
    data = dataset(0)
    for epoch in range(1, epochs):
        data = data.concatenate(dataset(epoch))
    return data


def max_difference(a: tf.keras.Model, b: tf.keras.Model) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


def read_events(folder: str) -> dict[str, list[tuple[int, object]]]:
    """tag -> [(step, value)] from the TensorBoard event files under ``folder``."""
    events: dict[str, list[tuple[int, object]]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                item = array.item() if array.ndim == 0 else array
                events.setdefault(value.tag, []).append((event.step, item.decode() if isinstance(item, bytes) else item))
    return events


def test_compiled_keras_model_matches_model_fit_and_logs_to_tensorboard(tmp_path):
    epochs, steps = 3, -(-224 // BATCH)
    trainer = Trainer(tensorboard_dir=str(tmp_path / "tb"), summary_every_steps=1, config_text="train:\n  epochs: 3", progress=False)
    model, result = trainer.fit(build_ranker, ranker_dataset, epochs, validate=lambda m: {"mse_first": 1.0})
    reference = build_ranker()
    history = reference.fit(all_epochs(ranker_dataset, epochs), epochs=epochs, steps_per_epoch=steps, verbose=0).history

    np.testing.assert_allclose(result.loss_per_epoch, history["loss"], rtol=1e-5)
    assert max_difference(model, reference) < 1e-6
    assert (result.epochs_run, result.steps, result.resumed_from, result.stopped_early) == (3, 21, None, False)
    assert result.examples_per_second > 0 and result.history[0]["learning_rate"] == pytest.approx(0.01)

    events = read_events(str(tmp_path / "tb"))
    (config_step, config), = events["config"]
    assert config_step == 0 and "train:\n  epochs: 3" in config
    losses = events["train/loss"]
    assert [s for s, _ in losses] == list(range(1, 22))
    # Step 1's loss, recomputed in numpy from the initial weights and the first batch.
    x, y = next(iter(ranker_dataset(0)))
    w1, b1, w2, b2 = build_ranker().get_weights()
    prediction = np.maximum(x.numpy() @ w1 + b1, 0.0) @ w2 + b2
    assert losses[0][1] == pytest.approx(float(np.mean((prediction - y.numpy()) ** 2)), rel=1e-5)
    assert [s for s, _ in events["epoch/loss"]] == [7, 14, 21]
    np.testing.assert_allclose([v for _, v in events["epoch/loss"]], history["loss"], rtol=1e-5)
    assert [v for _, v in events["val/mse_first"]] == [1.0, 1.0, 1.0]
    assert all(v > 0 for _, v in events["epoch/examples_per_second"])
    assert [v for _, v in events["epoch/learning_rate"]] == pytest.approx([0.01] * 3)


def test_two_tower_with_head_optimizer_matches_model_fit_step_by_step():
    epochs = 2
    losses: list[float] = []
    trainer = Trainer(progress=False)
    model, result = trainer.fit(build_two_tower, pair_dataset, epochs, on_step_end=lambda step, logs: losses.append(logs["loss"]))
    reference = build_two_tower()
    fit_losses: list[float] = []
    callback = tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: fit_losses.append(float(logs["loss"])))
    reference.fit(all_epochs(pair_dataset, epochs), epochs=epochs, steps_per_epoch=N_PAIRS // 48, verbose=0, callbacks=[callback])

    assert len(losses) == result.steps == 20
    np.testing.assert_allclose(losses, fit_losses, rtol=1e-5)
    assert max_difference(model, reference) < 1e-6
    assert losses[-1] < losses[0]  # it learns
    # Epoch loss = mean of the (equal-sized) steps; both optimizers' rates are reported.
    assert result.loss_per_epoch[0] == pytest.approx(np.mean(losses[:10]), rel=1e-6)
    assert model.head_optimizer.iterations.numpy() == 20
    assert {"learning_rate", "head_learning_rate"} <= set(result.history[-1])


@pytest.mark.parametrize("on_disk", [False, True])
def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path, on_disk):
    scores = [0.10, 0.50, 0.30, 0.20, 0.90, 0.95]
    seen: list[list[np.ndarray]] = []

    def validate(model):
        seen.append(model.get_weights())
        return {"ndcg@10": scores[len(seen) - 1], "recall@100": 0.5}

    trainer = Trainer(
        checkpoint_dir=str(tmp_path / "ck") if on_disk else None, checkpoint_every_steps=5, progress=False,
        early_stopping_metric="ndcg@10", early_stopping_patience=2,
    )
    model, result = trainer.fit(build_ranker, ranker_dataset, 6, validate=validate)

    assert result.stopped_early and result.best_epoch == 1 and result.epochs_run == 4 and len(seen) == 4
    assert [h["val_ndcg@10"] for h in result.history] == scores[:4]
    for got, best in zip(model.get_weights(), seen[1]):
        np.testing.assert_array_equal(got, best)
    assert not np.array_equal(seen[1][0], seen[3][0])  # training did move on after the best epoch
    if on_disk:
        assert sorted(os.listdir(tmp_path / "ck" / "best")) == ["best-1.data-00000-of-00001", "best-1.index"]
        # The same run again: finished and stopped, so nothing trains and the best weights come back.
        again, second = trainer.fit(build_ranker, ranker_dataset, 6, validate=validate)
        assert second.resumed_from == result.steps and second.stopped_early and len(seen) == 4
        for got, best in zip(again.get_weights(), seen[1]):
            np.testing.assert_array_equal(got, best)


def test_mixed_bfloat16_trains_to_a_finite_loss_and_leaves_the_global_policy():
    before = tf.keras.mixed_precision.global_policy().name
    model, result = Trainer(mixed_precision="mixed_bfloat16", progress=False).fit(build_ranker, ranker_dataset, 2)
    assert tf.keras.mixed_precision.global_policy().name == before == "float32"
    assert model.layers[0].compute_dtype == "bfloat16" and model.layers[0].kernel.dtype == tf.float32
    assert all(np.isfinite(result.loss_per_epoch)) and result.loss_per_epoch[1] < result.loss_per_epoch[0]


def test_mixed_float16_wraps_every_optimizer_in_loss_scaling():
    model, result = Trainer(mixed_precision="mixed_float16", progress=False).fit(build_two_tower, pair_dataset, 1)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert isinstance(model.head_optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert model.query_tower.layers[0].compute_dtype == "float16"
    assert np.isfinite(result.loss_per_epoch[0]) and model.head_optimizer.iterations.numpy() == 10


def test_policy_is_restored_when_build_fails():
    def broken():
        raise RuntimeError("no model today")

    with pytest.raises(RuntimeError, match="no model today"):
        Trainer(mixed_precision="mixed_bfloat16", progress=False).fit(broken, ranker_dataset, 1)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    with precision_policy("mixed_float16"):
        assert tf.keras.mixed_precision.global_policy().name == "mixed_float16"
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_clear_errors():
    with pytest.raises(ValueError, match="'fp8'"):
        Trainer(mixed_precision="fp8")
    with pytest.raises(ValueError, match="needs an early_stopping_metric"):
        Trainer(early_stopping_patience=2)
    with pytest.raises(ValueError, match="must return a compiled model"):
        Trainer(progress=False).fit(lambda: tf.keras.Sequential([tf.keras.layers.Dense(1)]), ranker_dataset, 1)
    with pytest.raises(TypeError, match=r"dataset\(0\) must return a tf.data.Dataset, got list"):
        Trainer(progress=False).fit(build_ranker, lambda epoch: [1, 2], 1)
    trainer = Trainer(progress=False, early_stopping_metric="ndcg@10", early_stopping_patience=1)
    with pytest.raises(ValueError, match=r"validate\(\) returned no 'ndcg@10'.*'recall@100'"):
        trainer.fit(build_ranker, ranker_dataset, 1, validate=lambda m: {"recall@100": 0.3})


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (as stderr does in an interactive shell)."""

    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_one_log_line_per_epoch():
    terminal, plain, log = Terminal(), io.StringIO(), io.StringIO()
    with configured(stream=log):
        for stream in (terminal, plain):
            bar = EpochProgress(0, 2, total_steps=3, stream=stream)
            for _ in range(3):
                bar.update(32, 1.25)
            bar.close({"loss": 1.25, "examples_per_second": 640.0})
        assert "epoch 1/2" in terminal.getvalue() and "3/3" in terminal.getvalue() and "examples/s=" in terminal.getvalue()
        assert "loss=1.25" in terminal.getvalue()
        assert plain.getvalue() == ""  # no bar off a terminal: the epoch's line is in the log
        assert log.getvalue() == "[training] epoch 1/2: loss=1.25 examples_per_second=640\n" * 2
        quiet = io.StringIO()
        EpochProgress(0, 2, total_steps=3, stream=quiet, show=False).close({"loss": 1.0})
        assert quiet.getvalue() == ""
        assert log.getvalue().count("\n") == 2  # show=False logs at DEBUG only
