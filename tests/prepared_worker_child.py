"""Child processes for tests/test_prepared_multiworker.py: two multi_worker processes on 127.0.0.1, one prepared folder.

    python tests/prepared_worker_child.py launch read FOLDER... OUT.json     2 workers: what each reads of the train shards
    python tests/prepared_worker_child.py launch train ARGS... OUT.json      2 workers: `tfrec train ARGS...`
    python tests/prepared_worker_child.py read OUT.json FOLDER...            one reading worker ($TF_CONFIG names which)

A reading worker streams each folder's train split exactly as training does (the same example
stream and shard policy, distributed by MultiWorkerMirroredStrategy), with each example's user
added, and writes the examples it got and the shard file each came from.
"""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode)

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed_child import _die_with_parent, _free_ports, _loopback_up, wait_workers  # noqa: E402

WORKERS = 2
MAX_HISTORY = 6
BATCH = 64
SEED = 5
WORKER_TIMEOUT_S = 420


def _examples(batch: dict) -> list[list]:
    """[user, target, *history] rows of one batch."""
    users = [u.decode("utf-8") for u in batch["user"].numpy().tolist()]
    return [[u, t, *h] for u, t, h in zip(users, batch["target_index"].numpy().tolist(), batch["history_index"].numpy().tolist())]


def run_read(out: Path, folders: list[str]) -> None:
    """One worker: the train examples this worker's share of each folder's stream holds, and their shard files."""
    from tfrec.config.schema import DistributeConfig
    from tfrec.training import strategy as st

    strategy = st.make_strategy(DistributeConfig(strategy="multi_worker"))  # first: before any TF op
    from tfrec.data.prepared.reader import ShardedSequences, example_stream, open_prepared

    workers = st.describe(strategy)["workers"]
    result = {"task": st.parse_tf_config()["task"], "workers": workers, "folders": {}}
    for folder in folders:
        train = ShardedSequences(open_prepared(Path(folder)))
        files = train.prepared.files("train")
        # Where each user's records are: each user's examples come from one record of one file.
        file_of = {}
        for path in files:
            for batch in example_stream([path], MAX_HISTORY, part="all", batch_size=1024, seed=0, shuffle_buffer=0, with_users=True):
                file_of.update((row[0], Path(path).name) for row in _examples(batch))
        policy = train.shard_policy(workers)
        stream = example_stream(files, MAX_HISTORY, part="all", batch_size=BATCH, seed=SEED, shuffle_buffer=10_000,
                                with_users=True, shard_policy=policy)
        mine, steps = [], 0
        for batch in strategy.experimental_distribute_dataset(stream):
            mine += _examples(strategy.experimental_local_results(batch)[0])
            steps += 1
        result["folders"][folder] = {
            "policy": policy, "note": train.sharding_note(workers), "steps": steps, "examples": mine,
            "files": dict(Counter(file_of[row[0]] for row in mine)), "train_files": [Path(p).name for p in files],
        }
    out.write_text(json.dumps(result))


def run_launch(out: Path, mode: str, args: list[str]) -> None:
    """Start WORKERS processes (reading workers, or `tfrec train`) on 127.0.0.1 ports; wait (bounded); collect results."""
    if os.environ.get("CHILD_IN_NETNS") == "1":
        _loopback_up()
    cluster = {"worker": ["127.0.0.1:%d" % p for p in _free_ports(WORKERS)]}
    procs = []
    started = time.monotonic()
    for index in range(WORKERS):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = ([sys.executable, __file__, "read", str(out.with_suffix(".worker%d.json" % index)), *args] if mode == "read"
                   else [sys.executable, "-m", "tfrec", "train", *args])
        log = open(out.with_suffix(".worker%d.log" % index), "w")
        procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent), log))
    codes = wait_workers(procs, started + WORKER_TIMEOUT_S)
    result = {"cluster": cluster, "codes": codes, "seconds": time.monotonic() - started, "workers": []}
    for index in range(WORKERS):
        path = out.with_suffix(".worker%d.json" % index)
        worker = json.loads(path.read_text()) if path.exists() else {}
        worker["log"] = out.with_suffix(".worker%d.log" % index).read_text()[-6000:]
        result["workers"].append(worker)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "launch":  # launch MODE ARGS... OUT (the output last, as tests/test_training_strategy.run_child passes it)
        if sys.argv[2] not in ("read", "train"):
            sys.exit("launch needs read or train, got %r" % sys.argv[2])
        run_launch(Path(sys.argv[-1]), sys.argv[2], sys.argv[3:-1])
    else:
        run_read(Path(sys.argv[2]), sys.argv[3:])
