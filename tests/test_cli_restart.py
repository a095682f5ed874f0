"""`tfrec train --run-dir` with no readable checkpoint: a clear error giving the command that starts over, and that command."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before TensorFlow is imported)

import os
import shlex
from pathlib import Path

from tfrec import compat
from tfrec.cli.main import main

tf = compat.tensorflow()


def small_run_settings(folder: Path, tmp_path: Path) -> list[str]:
    # The whole search path runs, without training steps or baselines: only checkpoint handling matters here.
    sets = ["data.dir=%s" % folder, "evaluation.ks=[10]", "retrieval.top_k=10", "retrieval.epochs=0", "ranking.epochs=0",
            "ranking.candidate_losses=[]", "evaluation.baselines=false", "text.cache_dir=%s" % (tmp_path / "cache")]
    return [arg for item in sets for arg in ("--set", item)]


def write_corrupt_checkpoints(folder: Path) -> dict[str, bytes]:
    """Two real checkpoints in ``folder``, then one truncated and one overwritten; returns every file's bytes."""
    folder.mkdir(parents=True)
    checkpoint = tf.train.Checkpoint(weights=tf.Variable(tf.ones([64, 16])))
    for number in (4, 8):
        checkpoint.write(str(folder / ("ckpt-%d" % number)))
    data = folder / "ckpt-8.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    (folder / "ckpt-4.index").write_bytes(b"not a checkpoint index " * 8)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_no_readable_checkpoint_gives_a_command_that_starts_over_without_deleting_them(capsys, in_repo, homedepot_slice, tmp_path):
    run_dir = tmp_path / "run"
    train = ["train", "--config", "configs/default.yaml", *small_run_settings(homedepot_slice, tmp_path), "--run-dir", str(run_dir)]
    # What a run killed while saving leaves behind: every checkpoint of the model it trains unreadable.
    corrupt = write_corrupt_checkpoints(run_dir / "checkpoints" / "retrieval")

    assert main(train) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("tfrec train: error: no readable checkpoint in %s: all 2 are corrupt or truncated" % (run_dir / "checkpoints" / "retrieval"))
    assert "internal error" not in error and "resume=False" not in error
    assert "nothing is deleted" in error
    command = shlex.split(error.split("run: ", 1)[1].split(" (it moves", 1)[0])
    assert command[:2] == ["tfrec", "train"] and command[-1] == "--restart"
    assert {p.name for p in (run_dir / "checkpoints" / "retrieval").iterdir()} == set(corrupt)  # nothing moved yet

    # Changing the config instead is refused, and the refusal points at --restart.
    assert main([*train, "--set", "train.checkpoint.resume=false"]) == 1
    assert "add --restart" in capsys.readouterr().err
    assert main(["train", "--config", "configs/default.yaml", "--restart"]) == 2
    assert "--restart needs --run-dir" in capsys.readouterr().err

    assert main(command[1:]) == 0  # the command the error gave
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == "run_dir: %s" % run_dir and (run_dir / "metrics.json").is_file()
    (set_aside,) = [p for p in run_dir.iterdir() if p.name.startswith("checkpoints-set-aside-")]
    assert "moved the earlier checkpoints to %s" % set_aside in err
    kept = {p.name: p.read_bytes() for p in (set_aside / "retrieval").iterdir()}
    assert kept == corrupt  # the unreadable files are kept, byte for byte
