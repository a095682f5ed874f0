"""One case of the training benchmark, in its own process (see tfrec.benchmarks.training); prints one JSON line."""
from __future__ import annotations

from tfrec import compat  # noqa: F401  (first: Keras 2 mode)

import argparse
import json
import time

from tfrec.config import load_config
from tfrec.data import load_data
from tfrec.training.strategy import describe, make_strategy, split_logical_cpus


def main() -> None:
    """Parse the case, split the CPU if asked (before TensorFlow starts), train, print the measurements."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--logical-cpus", type=int, default=1)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default="")
    args = parser.parse_args()

    if args.logical_cpus > 1:
        split_logical_cpus(args.logical_cpus)
    # after split_logical_cpus: these build TensorFlow state, which must come after the CPU split
    from tfrec.retrieval.train import train_retrieval, training_pairs
    from tfrec.search.models import retrieval_model
    from tfrec.training.trainer import Trainer

    loaded = load_config(args.config, ["train.distribute.strategy=%s" % args.strategy])
    cfg = loaded.config
    strategy = make_strategy(cfg.train.distribute)
    data = load_data(loaded)
    batch = cfg.retrieval.batch_size
    pairs = training_pairs(data.train, data.catalog, min_relevance=cfg.retrieval.min_relevance, seed=cfg.run.seed)
    pairs = {k: v[: batch * args.steps] for k, v in pairs.items()}
    if not cfg.retrieval.sampling_correction:
        pairs.pop("sampling_probability")
    vocabulary = sorted(set(pairs["product_id"])) if cfg.retrieval.product_id else []
    stamps: list[float] = []
    trainer = Trainer(strategy, seed=cfg.run.seed, progress=False,
                      checkpoint_dir=args.checkpoint_dir if args.checkpoint_every else None,
                      checkpoint_every_steps=max(args.checkpoint_every, 1), resume=False)
    train_retrieval(lambda: retrieval_model(cfg, vocabulary), pairs, epochs=1, batch_size=batch,
                    learning_rate=cfg.retrieval.learning_rate, head_learning_rate=cfg.retrieval.head_learning_rate,
                    seed=cfg.run.seed, verbose=0, trainer=trainer, on_step_end=lambda step, logs: stamps.append(time.perf_counter()))
    timed = stamps[-1] - stamps[args.warmup_steps - 1]
    measured = len(stamps) - args.warmup_steps
    checkpoints = sum(1 for s in range(args.warmup_steps + 1, len(stamps) + 1) if args.checkpoint_every and s % args.checkpoint_every == 0)
    print(json.dumps({
        "replicas": describe(strategy)["replicas"], "batch_size": batch, "steps": len(stamps), "measured_steps": measured,
        "seconds": round(timed, 2), "examples_per_second": round(measured * batch / timed, 2), "checkpoints": checkpoints,
        "seconds_per_checkpoint": None,
    }))


if __name__ == "__main__":
    main()
