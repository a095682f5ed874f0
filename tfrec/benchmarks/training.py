"""Training benchmark: two-tower throughput under tf.distribute strategies, and checkpoint overhead.

Each measurement runs in a child process (logical CPU devices need a fresh TensorFlow runtime):
the default search config's two towers (MiniLM fine-tuned in full, batch `retrieval.batch_size`)
train a fixed number of steps on real Home Depot pairs through :class:`tfrec.training.trainer.Trainer`;
examples/s are measured after the first steps (graph tracing) are done.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = (
    {"name": "default", "strategy": "default", "logical_cpus": 1, "checkpoint_every": 0},
    {"name": "mirrored (2 logical CPUs)", "strategy": "mirrored", "logical_cpus": 2, "checkpoint_every": 0},
    {"name": "default, checkpoint every 10 steps", "strategy": "default", "logical_cpus": 1, "checkpoint_every": 10},
    {"name": "default, checkpoint every 2 steps", "strategy": "default", "logical_cpus": 1, "checkpoint_every": 2},
)

log = logging.getLogger(__name__)


def run(out_dir: Path, data_config: str, steps: int = 24, warmup_steps: int = 4) -> list[Path]:
    """Run every case in its own process; write training.json and training.md."""
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory(prefix="tfrec-bench-train-") as tmp:
            command = [sys.executable, "-m", "tfrec.benchmarks.training_child", "--config", data_config,
                       "--strategy", case["strategy"], "--logical-cpus", str(case["logical_cpus"]), "--steps", str(steps),
                       "--warmup-steps", str(warmup_steps), "--checkpoint-every", str(case["checkpoint_every"]),
                       "--checkpoint-dir", str(Path(tmp) / "ckpt")]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError("training benchmark case %r failed:\n%s" % (case["name"], done.stderr[-3000:]))
            result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({**case, **result})
        log.info("training: %s: %.1f examples/s", case["name"], result["examples_per_second"])
    base = rows[0]
    for row in rows:
        row["relative_to_default"] = round(row["examples_per_second"] / base["examples_per_second"], 3)
        if row["checkpoints"]:
            # The same steps as the default case, plus the checkpoint writes.
            per_step = base["seconds"] / base["measured_steps"]
            row["seconds_per_checkpoint"] = round((row["seconds"] - per_step * row["measured_steps"]) / row["checkpoints"], 2)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": steps, "warmup_steps": warmup_steps, "config": data_config}
    json_path = out_dir / "training.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n", encoding="utf-8")
    lines = ["# Training benchmark", "",
             "%(cpus)s CPUs, Python %(python)s, %(when)s; two towers of %(config)s (MiniLM fine-tuned), %(steps)s steps, "
             "the first %(warmup_steps)s not timed." % meta, "",
             "| case | replicas | global batch | examples/s | vs default | checkpoints written | s per checkpoint |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append("| %s | %d | %d | %.1f | %.2f | %d | %s |" % (
            r["name"], r["replicas"], r["batch_size"], r["examples_per_second"], r["relative_to_default"], r["checkpoints"],
            "%.2f" % r["seconds_per_checkpoint"] if r["seconds_per_checkpoint"] is not None else "-"))
    md_path = out_dir / "training.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [json_path, md_path]
