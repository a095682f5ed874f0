"""Multi-worker training from one prepared folder: two real worker processes on 127.0.0.1 (tests/prepared_worker_child.py).

Each worker must read its own train shard files (together all of them, none twice), a folder with
fewer files than workers must still give each example to exactly one worker, and `tfrec train`
must finish on both workers with only the chief writing the run folder.
"""
from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest

from tfrec.api import load_config
from tfrec.data.prepared.reader import example_stream, open_prepared
from tfrec.data.synthetic import write_interactions_csv

pytest.importorskip("pyspark")
ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().parent / "prepared_worker_child.py"
sys.path.insert(0, str(CHILD.parent))
import prepared_worker_child as child  # noqa: E402, I001  (after sys.path: the children's constants)
from test_training_strategy import _netns_available, run_child  # noqa: E402

CONFIG = """\
data:
  dataset: interactions-csv
  dir: {dir}
  catalog: {{path: products.csv, id_column: product_id, text_columns: [title], numeric_columns: [price], categorical_columns: [category]}}
  interactions: {{path: interactions.csv, user_column: user_id, item_column: item_id, timestamp_column: timestamp, rating_column: rating}}
recommendation: {{max_history: 6}}
evaluation: {{ks: [5, 10]}}
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _netns_available(), reason="needs `unshare -rn` (a private network namespace): TensorFlow's "
                       "gRPC server listens on all interfaces, so workers run where only loopback exists"),
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """A synthetic shop (~3,000 events) prepared twice: 4 train shard files, and 1."""
    from tfrec.preprocess import prepare

    folder = write_interactions_csv(tmp_path_factory.mktemp("shop"), n_items=300, n_users=400, seed=3)
    (folder / "shop.yaml").write_text(CONFIG.format(dir=folder), encoding="utf-8")
    loaded = load_config(folder / "shop.yaml")
    prepare(loaded, folder / "four", workers=2, shards=4)
    prepare(loaded, folder / "one", workers=2, shards=1)
    return folder


def launch(out: Path, args: list[str], timeout: int = 480) -> dict:
    """Two workers (child `launch`) in a private network namespace; killed whole on timeout; their results."""
    result = run_child(["launch", *args], out, timeout, prefix=["unshare", "-rn"], env={"CHILD_IN_NETNS": "1"}, child=CHILD)
    assert result["codes"] == [0, 0], "\n\n".join(w["log"][-3000:] for w in result["workers"])
    return result


def all_examples(folder: Path) -> Counter:
    """Every train example of a folder, read in one process without sharding, as [user, target, *history] rows."""
    files = open_prepared(folder).files("train")
    rows = Counter()
    for batch in example_stream(files, child.MAX_HISTORY, part="all", batch_size=1024, seed=0, shuffle_buffer=0, with_users=True):
        rows.update(tuple(r) for r in child._examples(batch))
    return rows


def test_each_worker_reads_its_own_shard_files(shop, tmp_path):
    result = launch(tmp_path / "read.json", ["read", str(shop / "four"), str(shop / "one")])
    first, second = result["workers"]
    assert [first["task"]["index"], second["task"]["index"]] == [0, 1] and first["workers"] == 2

    four = [w["folders"][str(shop / "four")] for w in (first, second)]
    manifest = open_prepared(shop / "four").manifest["splits"]["train"]
    names = {s["file"] for s in manifest["shards"]}
    assert len(names) == 4 and all(f["policy"] == "FILE" and f["note"] is None for f in four)
    read = [set(f["files"]) for f in four]
    assert read[0] and read[1] and not read[0] & read[1] and read[0] | read[1] == names
    # Whole files: each worker's examples are exactly those of its files, none missing, none twice.
    per_file = Counter()
    for f in four:
        per_file.update(f["files"])
    expected = all_examples(shop / "four")
    assert sum(per_file.values()) == sum(expected.values()) == manifest["examples"]
    streamed = Counter(tuple(r) for r in four[0]["examples"]) + Counter(tuple(r) for r in four[1]["examples"])
    assert streamed == expected

    # One file for two workers: both read it and keep disjoint halves of its examples (DATA sharding), with a note.
    one = [w["folders"][str(shop / "one")] for w in (first, second)]
    assert all(f["policy"] == "DATA" and f["files"].keys() == {"part-00000-of-00001.tfrecord.gz"} for f in one)
    assert "1 train shard file(s) for 2 workers" in one[0]["note"] and "--shards 2" in one[0]["note"]
    halves = [Counter(tuple(r) for r in f["examples"]) for f in one]
    assert halves[0] + halves[1] == all_examples(shop / "one") == expected
    assert abs(sum(halves[0].values()) - sum(halves[1].values())) <= child.BATCH


def test_tfrec_train_runs_on_two_workers_and_only_the_chief_writes_the_run(shop, tmp_path):
    runs = tmp_path / "runs"
    settings = ["data.prepared=%s" % (shop / "four"), "train.distribute.strategy=multi_worker", "recommendation.item_text=false",
                "recommendation.encoder=mean", "recommendation.dim=32", "recommendation.epochs=2", "train.progress=false",
                "evaluation.bootstrap_resamples=100", "run.name=mw", "run.output_dir=%s" % runs]
    args = ["train", "--config", str(shop / "shop.yaml")] + [a for s in settings for a in ("--set", s)]
    result = launch(tmp_path / "train.json", args)
    chief_log, worker_log = (w["log"] for w in result["workers"])
    assert "run_dir: " in chief_log and "run_dir: " not in worker_log
    assert "worker 1: trained in step with the chief" in worker_log

    (run,) = [p for p in runs.iterdir()]  # the other worker made no folder of its own
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["training"]["selection"]["history"]
    assert len(history) == 2 and all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in history)
    assert metrics["n_users"] == 400 and metrics["training"]["selection"]["train_examples"] == 1455
    (model,) = [s for s in metrics["systems"].values() if s["kind"] == "model"]
    assert all(math.isfinite(model[k]) and 0 <= model[k] <= 1 for k in ("recall@10", "ndcg@10", "mrr"))
    assert (run / "recommender" / "weights.index").is_file()
    assert not list(run.rglob(".worker-*"))  # the other worker's checkpoints went to scratch folders, deleted after
