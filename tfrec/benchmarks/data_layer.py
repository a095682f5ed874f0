"""Data layer benchmark: load+validate time per dataset and tf.data pipeline throughput."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from tfrec.config import load_config
from tfrec.data import load_data
from tfrec.data import pipelines

# Every pipeline is measured at one batch size (the models' own sizes differ; throughput is per example).
BATCH_SIZE = 256
CONFIGS = {
    "homedepot": "configs/default.yaml",
    "amazon-scientific": "configs/amazon_scientific.yaml",
    "movielens-100k": "configs/movielens.yaml",
}


def _throughput(dataset, epochs: int = 3) -> dict:
    """Examples per second over ``epochs`` full passes (the first pass includes warm-up)."""
    rates = []
    for _ in range(epochs):
        started, n = time.perf_counter(), 0
        for batch in dataset:
            n += int(next(iter(batch.values())).shape[0])
        rates.append(n / (time.perf_counter() - started))
    return {"examples_per_epoch": n, "examples_per_s_first": round(rates[0]), "examples_per_s_best": round(max(rates))}


def run(out_dir: Path, data_config: str) -> list[Path]:
    """Measure load times and pipeline rates on the shared datasets; write JSON and Markdown."""
    rows = []
    for name, config_path in CONFIGS.items():
        loaded = load_config(config_path)
        cfg = loaded.config
        started = time.perf_counter()
        data = load_data(loaded)
        load_s = time.perf_counter() - started
        if name == "homedepot":
            built = {
                "retrieval_pairs": pipelines.retrieval_pairs(
                    data.train, data.catalog, min_relevance=cfg.retrieval.min_relevance, batch_size=BATCH_SIZE, seed=cfg.run.seed
                ),
                "ranking_lists": pipelines.ranking_lists(
                    data.train, data.catalog, list_size=cfg.ranking.list_size, batch_size=BATCH_SIZE, seed=cfg.run.seed
                ),
            }
        else:
            built = {
                "sequences": pipelines.sequences_dataset(
                    data.train, data.catalog, max_history=cfg.recommendation.max_history, batch_size=BATCH_SIZE, seed=cfg.run.seed
                )
            }
        for pipeline, ds in built.items():
            rows.append({"dataset": name, "load_validate_s": round(load_s, 3), "pipeline": pipeline, "batch_size": BATCH_SIZE, **_throughput(ds)})
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    json_path = out_dir / "data_layer.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n", encoding="utf-8")
    md = ["# Data layer benchmark", "", "%(cpus)s CPUs, Python %(python)s, %(when)s. Three full passes per pipeline; "
          "'first' includes tf.data warm-up." % meta, "",
          "| dataset | load+validate (s) | pipeline | batch | examples/epoch | examples/s first | examples/s best |",
          "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    md += ["| %(dataset)s | %(load_validate_s)s | %(pipeline)s | %(batch_size)s | %(examples_per_epoch)s | %(examples_per_s_first)s | %(examples_per_s_best)s |" % r for r in rows]
    md_path = out_dir / "data_layer.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return [json_path, md_path]
