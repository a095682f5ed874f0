"""Child process of the growth benchmark: one epoch of the sequential recommender streamed from prepared shards.

Usage: ``python -m tfrec.benchmarks.scale_child CONFIG PREPARED MAX_STEPS``. The model has id
embeddings only (no text encoder: encoding a million titles with BERT is measured by the text
benchmark) and an in-batch softmax, so a step's cost does not grow with the catalog. Prints one
JSON line: batches run, the epoch's batch count, batch size and examples per second.
"""
from __future__ import annotations

import json
import sys
import time

from tfrec import compat


def main(config: str, prepared: str, max_steps: int) -> dict:
    """Train up to ``max_steps`` batches of one streamed epoch; returns what was measured."""
    tf = compat.tensorflow()
    from tfrec.config.loader import load_config
    from tfrec.data.prepared.reader import ShardedSequences, open_prepared, read_catalog
    from tfrec.recommend import train as rt

    overrides = ["data.prepared=%s" % prepared, "recommendation.item_text=false", "recommendation.softmax=in_batch",
                 "recommendation.encoder=gru", "recommendation.dim=64", "recommendation.encoder_dim=64",
                 "recommendation.batch_size=512"]
    loaded = load_config(config, overrides)
    rc = loaded.config.recommendation
    data = open_prepared(loaded.config.data.prepared, loaded.config.data)
    catalog = read_catalog(data)
    train = ShardedSequences(data)
    model = rt.build_recommender(rc, catalog, None, train, seed=0)
    dataset = train.dataset(rc.max_history, rc.batch_size, seed=0, shuffle_buffer=loaded.config.data.shuffle_buffer)
    epoch_batches = -(-len(train) // rc.batch_size)
    steps = min(max_steps, epoch_batches)
    step = tf.function(lambda batch: model.train_step(batch))
    batches = examples = 0
    started = None
    for batch in dataset.take(steps):
        step(batch)
        if started is None:  # the first batch traces the step function: time the rest
            started = time.perf_counter()
        else:
            examples += int(batch["target_index"].shape[0])
        batches += 1
    seconds = time.perf_counter() - started if started is not None else 0.0
    return {"batches": batches, "epoch_batches": epoch_batches, "batch_size": rc.batch_size, "train_examples": len(train),
            "examples_per_second": round(examples / seconds) if seconds > 0 else 0}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))), flush=True)
