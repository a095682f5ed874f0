"""Resumable training: a SIGKILLed run continues to the uninterrupted result; corrupt checkpoints fall back."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from training_child import build_ranker, ranker_data

from tfrec import compat
from tfrec.training.checkpoints import CheckpointError, checkpoint_prefixes
from tfrec.training.trainer import Trainer, epoch_seed

tf = compat.tensorflow()

CHILD = str(Path(__file__).with_name("training_child.py"))
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180


def child(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, CHILD, "--dir", str(run_dir), *args]


def run_child(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def outputs(run_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with open(run_dir / "result.json", encoding="utf-8") as f:
        result = json.load(f)
    with np.load(run_dir / "weights.npz") as weights:
        return result, {name: weights[name] for name in weights.files}


def test_sigkill_mid_epoch_then_the_same_command_finishes_like_an_uninterrupted_run(tmp_path):
    # 480 pairs / 48 = 10 steps an epoch, 3 epochs; a checkpoint every 4 steps. The killed run
    # stops at step 14 (epoch 2, batch 4), two steps after its newest checkpoint (step 12).
    command = child(tmp_path / "killed", "--pause-at", "14")
    with open(tmp_path / "reference.log", "w", encoding="utf-8") as reference_log:
        reference = subprocess.Popen(child(tmp_path / "reference"), cwd=ROOT, stdout=reference_log, stderr=subprocess.STDOUT)
        killed = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(TIMEOUT, killed.kill)  # never wait forever for a child that hangs early
        watchdog.start()
        try:
            lines = []
            for line in killed.stdout:
                lines.append(line)
                if line.startswith("PAUSED"):
                    break
            assert lines and lines[-1].startswith("PAUSED"), "".join(lines[-40:])
            killed.send_signal(signal.SIGKILL)
            assert killed.wait(timeout=30) == -signal.SIGKILL
            checkpoints = checkpoint_prefixes(str(tmp_path / "killed" / "checkpoints"))
            assert [os.path.basename(p) for p in checkpoints] == ["ckpt-12", "ckpt-10", "ckpt-8"]
            assert not (tmp_path / "killed" / "result.json").exists()

            restarted = run_child(command)
            assert reference.wait(timeout=TIMEOUT) == 0, (tmp_path / "reference.log").read_text(encoding="utf-8")[-3000:]
        finally:
            watchdog.cancel()
            for process in (killed, reference):
                if process.poll() is None:
                    process.kill()
                    process.wait()
            killed.stdout.close()

    assert "resumed from step 12 (epoch 2, batch 2)" in restarted.stderr
    assert restarted.stdout.splitlines()[0].startswith("step 13 ")  # continues after the checkpoint
    expected, expected_weights = outputs(tmp_path / "reference")
    got, got_weights = outputs(tmp_path / "killed")
    assert got["resumed_from"] == 12 and got["steps"] == expected["steps"] == 30
    # Steps 13-14 ran twice (before the kill and after the restart) and gave the same losses.
    before_kill = [float(line.split()[3]) for line in lines if line.startswith("step ")]
    np.testing.assert_allclose(before_kill, expected["step_losses"][:14], rtol=1e-6)
    np.testing.assert_allclose(got["step_losses"], expected["step_losses"][12:], rtol=1e-6)
    np.testing.assert_allclose(got["loss_per_epoch"], expected["loss_per_epoch"], rtol=1e-6)
    for name, value in expected_weights.items():
        np.testing.assert_allclose(got_weights[name], value, rtol=0, atol=1e-6)


def test_mirrored_strategy_over_two_devices_matches_model_fit(tmp_path):
    run_child(child(tmp_path, "--strategy", "mirrored", "--epochs", "2", "--compare"))
    result, _ = outputs(tmp_path)
    assert result["replicas"] == 2 and len(result["step_losses"]) == 20
    np.testing.assert_allclose(result["step_losses"], result["fit_step_losses"], rtol=1e-5)
    assert result["max_weight_difference"] < 1e-5


def ranker_dataset(epoch: int) -> tf.data.Dataset:
    x, y = ranker_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=epoch_seed(0, epoch), reshuffle_each_iteration=False)
    return data.batch(32)  # 7 steps


def trainer(directory: Path, **kwargs) -> Trainer:
    return Trainer(checkpoint_dir=str(directory), checkpoint_every_steps=2, keep_checkpoints=3, progress=False, **kwargs)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    directory = tmp_path / "ck"
    first = trainer(directory)
    draws: list[float] = []  # one number from the trainer's generator after every step

    def draw(trainer_: Trainer) -> object:
        return lambda step, logs: draws.append(float(trainer_.rng.uniform([])))

    uninterrupted, _ = first.fit(build_ranker, ranker_dataset, 1, on_step_end=draw(first))
    assert [os.path.basename(p) for p in checkpoint_prefixes(str(directory))] == ["ckpt-7", "ckpt-6", "ckpt-4"]
    data = directory / "ckpt-7.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)

    second = trainer(directory)
    with caplog.at_level(logging.WARNING, logger="tfrec.training"):
        model, result = second.fit(build_ranker, ranker_dataset, 1, on_step_end=draw(second))
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "ckpt-7" in warning and "ckpt-7.data-00000-of-00001" in warning and "unreadable" in warning
    assert result.resumed_from == 6 and result.steps == 7
    assert sorted(os.listdir(directory / "corrupt")) == ["ckpt-7.data-00000-of-00001", "ckpt-7.index"]
    # Step 7 redone from checkpoint 6 lands on the uninterrupted run's weights.
    for got, want in zip(model.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    assert [os.path.basename(p) for p in checkpoint_prefixes(str(directory))] == ["ckpt-7", "ckpt-6", "ckpt-4"]
    # The generator came back in its step-6 state: the redone step 7 draws what step 7 drew before.
    assert len(draws) == 8 and draws[7] == draws[6] and len(set(draws[:7])) == 7


def test_all_checkpoints_corrupt_is_a_clear_error_unless_resume_is_off(tmp_path, caplog):
    directory = tmp_path / "ck"
    trainer(directory).fit(build_ranker, ranker_dataset, 1)
    for prefix in checkpoint_prefixes(str(directory)):
        Path(prefix + ".index").write_bytes(b"not a checkpoint index " * 8)
    (directory / "checkpoint").write_text("garbage {", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="tfrec.training"), pytest.raises(CheckpointError) as error:
        trainer(directory).fit(build_ranker, ranker_dataset, 1)
    assert str(directory) in str(error.value) and "all 3" in str(error.value) and "resume=False" in str(error.value)
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 3
    with pytest.raises(CheckpointError):  # still an error on the next try: nothing was moved aside
        trainer(directory).fit(build_ranker, ranker_dataset, 1)

    _, result = trainer(directory, resume=False).fit(build_ranker, ranker_dataset, 1)
    assert result.resumed_from is None and result.steps == 7 and np.isfinite(result.loss_per_epoch[0])
    assert [os.path.basename(p) for p in checkpoint_prefixes(str(directory))] == ["ckpt-7", "ckpt-6", "ckpt-4"]


def test_another_models_checkpoints_are_refused_with_a_clear_error(tmp_path):
    from training_child import build_two_tower, pair_dataset

    trainer(tmp_path).fit(build_ranker, ranker_dataset, 1)
    with pytest.raises(CheckpointError, match=r"ckpt-7 does not fit the model being trained"):
        trainer(tmp_path).fit(build_two_tower, pair_dataset, 1)


def test_set_aside_moves_a_runs_checkpoints_into_a_dated_folder_and_never_overwrites(tmp_path):
    from datetime import datetime, timezone

    from tfrec.training.checkpoints import set_aside_checkpoints

    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert set_aside_checkpoints(tmp_path, now) is None  # nothing to move
    moved = []
    for text in ("first", "second"):
        (tmp_path / "checkpoints" / "retrieval").mkdir(parents=True)
        (tmp_path / "checkpoints" / "retrieval" / "ckpt-1.index").write_text(text)
        moved.append(set_aside_checkpoints(tmp_path, now))
    assert [p.name for p in moved] == ["checkpoints-set-aside-20240501-120000", "checkpoints-set-aside-20240501-120000-1"]
    assert [(p / "retrieval" / "ckpt-1.index").read_text() for p in moved] == ["first", "second"]
    assert not (tmp_path / "checkpoints").exists()
