"""Growth benchmark: how time and memory grow with the number of events, in memory and through prepared shards.

For each size a synthetic shop is written (``tfrec data synthesize``; its numbers say nothing about
quality), then three stages run as child processes while the RSS summed over each child's whole
process tree (Spark's JVM and Python workers included) is sampled every 0.2 s:

- ``in-memory load``: ``tfrec data validate``, the in-memory path's reading and validation, until
  its memory check refuses the size;
- ``prepare``: ``tfrec data prepare`` (Spark, embedded ``local[N]``);
- ``train from shards``: one epoch of the sequential recommender streamed from the shards (id
  embeddings, GRU, in-batch softmax; at most ``max_train_steps`` batches, the count is recorded).

Results: ``scale.json``, ``scale.md`` and ``scale.png`` (log-log time and memory against events).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

# events -> (products, users): the shop grows its catalog and users with its log.
SIZES = {
    1_000_000: (100_000, 50_000),
    5_000_000: (500_000, 250_000),
    20_000_000: (1_000_000, 1_000_000),
    50_000_000: (1_000_000, 2_500_000),
}
SAMPLE_SECONDS = 0.2


def parse_sizes(text: str) -> list[int]:
    """'1M,5M' -> [1000000, 5000000]; only the sizes SIZES defines."""
    from tfrec.data.synthesize import parse_count

    sizes = [parse_count(part) for part in text.split(",") if part.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise ValueError("scale sizes are %s events; got %s" % (", ".join(_short(s) for s in SIZES), ", ".join(map(str, unknown))))
    return sizes


def _short(n: int) -> str:
    return "%dM" % (n // 1_000_000) if n % 1_000_000 == 0 else "%dk" % (n // 1000)


def measure(command: list[str], log_path: Path, env: Optional[dict] = None) -> dict[str, Any]:
    """Run ``command``; its wall seconds, exit code and the peak RSS summed over its process tree."""
    import psutil

    started = time.perf_counter()
    peak = peak_processes = 0
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for member in tree:
                try:
                    total += member.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            if total > peak:
                peak, peak_processes = total, len(tree)
            time.sleep(SAMPLE_SECONDS)
        code = process.wait()
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gb": round(peak / 2**30, 2),
            "processes_at_peak": peak_processes, "exit_code": code}


def _tfrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfrec", *args]


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_size(events: int, work: Path, max_train_steps: int, workers: Optional[int]) -> dict[str, Any]:
    """Synthesize one size and measure its three stages."""
    products, users = SIZES[events]
    shop = work / ("shop-%s" % _short(events))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"events": events, "products": products, "users": users, "when": time.strftime("%Y-%m-%d %H:%M"),
                           "load_average_before": round(os.getloadavg()[0], 1), "stages": {}}
    if not (shop / "tfrec.yaml").is_file():
        result = measure(_tfrec("data", "synthesize", "--out", str(shop), "--products", str(products), "--users", str(users),
                                "--events", str(events), "--quiet", "--force"), logs / ("synthesize-%s.log" % _short(events)))
        if result["exit_code"]:
            raise RuntimeError("synthesize failed: %s" % _last_line(logs / ("synthesize-%s.log" % _short(events))))
        row["stages"]["synthesize"] = result
    config = str(shop / "tfrec.yaml")
    log = logs / ("in-memory-%s.log" % _short(events))
    result = measure(_tfrec("data", "validate", "--config", config, "--quiet"), log)
    if result["exit_code"]:
        result["refused"] = _last_line(log)
    row["stages"]["in-memory load"] = result
    prepared = work / ("prepared-%s" % _short(events))
    shutil.rmtree(prepared, ignore_errors=True)  # an up-to-date folder would make prepare a no-op: measure a full run
    log = logs / ("prepare-%s.log" % _short(events))
    command = _tfrec("data", "prepare", "--config", config, "--out", str(prepared), "--quiet")
    if workers:
        command += ["--workers", str(workers)]
    result = measure(command, log)
    if result["exit_code"]:
        raise RuntimeError("prepare failed: %s" % _last_line(log))
    result["events_per_second"] = round(events / result["seconds"])
    row["stages"]["prepare"] = result
    log = logs / ("train-%s.log" % _short(events))
    result = measure([sys.executable, "-m", "tfrec.benchmarks.scale_child", config, str(prepared), str(max_train_steps)], log)
    if result["exit_code"]:
        raise RuntimeError("training from shards failed: %s" % _last_line(log))
    result.update(json.loads(_last_line(log)))
    row["stages"]["train from shards"] = result
    return row


def run(out_dir: Path, sizes: Optional[list[int]] = None, work: Optional[Path] = None, max_train_steps: int = 500,
        workers: Optional[int] = None) -> list[Path]:
    """Measure every size (default: all of SIZES); write scale.json, scale.md and scale.png under ``out_dir``."""
    import tempfile

    sizes = sizes or list(SIZES)
    work = Path(work or os.environ.get("TFREC_BENCH_WORK") or Path(tempfile.gettempdir()) / "tfrec-bench-scale")
    # Sizes measured by an earlier run and not repeated now are kept (each row says when it ran).
    previous = out_dir / "scale.json"
    kept = {}
    if previous.is_file():
        kept = {r["events"]: r for r in json.loads(previous.read_text(encoding="utf-8")).get("sizes", []) if r["events"] not in sizes}
    rows = dict(kept)
    for events in sizes:
        rows[events] = run_size(events, work, max_train_steps, workers)
        _write(out_dir, [rows[e] for e in sorted(rows)])  # after every size: a run that stops part way keeps what it measured
    return _write(out_dir, [rows[e] for e in sorted(rows)])


def _write(out_dir: Path, rows: list[dict]) -> list[Path]:
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "sample_seconds": SAMPLE_SECONDS}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "scale.json"
    json_path.write_text(json.dumps({"meta": meta, "sizes": rows}, indent=2) + "\n", encoding="utf-8")
    md = ["# Growth with data size", "",
          "A synthetic shop per size (Zipf popularity, sessions; `tfrec data synthesize`), %(cpus)s CPUs, %(when)s. Each stage "
          "runs as a child process; peak RSS is summed over its whole process tree (Spark's JVM and Python workers included), "
          "sampled every %(sample_seconds)s s." % meta, "",
          "| events | products | users | stage | wall (s) | events/s | peak RSS (GB) | note |",
          "| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    when = ["- %s events: measured %s, load average %s before it started" % ("{:,}".format(r["events"]), r.get("when", "?"),
                                                                             r.get("load_average_before", "?")) for r in rows]
    for row in rows:
        for stage, r in row["stages"].items():
            # The memory check's message, up to where it lists files and remedies.
            note = "refused: %s" % r["refused"].split(": ", 2)[-1].split(";")[0] if r.get("refused") else ""
            if stage == "train from shards":
                note = "%d of %d batches of %d, %s examples/s" % (r["batches"], r["epoch_batches"], r["batch_size"], r["examples_per_second"])
            rate = r.get("events_per_second", round(row["events"] / r["seconds"]) if stage != "train from shards" and not note else "")
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                "{:,}".format(row["events"]), "{:,}".format(row["products"]), "{:,}".format(row["users"]), stage, r["seconds"],
                "{:,}".format(rate) if rate != "" else "", r["peak_rss_gb"], note.replace("|", "/")))
    md += ["", *when]
    md_path = out_dir / "scale.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    png = out_dir / "scale.png"
    _plot(rows, png)
    return [json_path, md_path, png]


def _plot(rows: list[dict], path: Path) -> None:
    """Log-log: wall time and peak RSS of each stage against events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    stages = ["in-memory load", "prepare", "train from shards"]
    for stage in stages:
        points = [(r["events"], r["stages"][stage]) for r in rows if stage in r["stages"] and not r["stages"][stage].get("refused")]
        if not points:
            continue
        x = [p[0] for p in points]
        # Training runs a fixed number of batches per size: its time is a rate, not a whole epoch.
        label = "%s (%d batches)" % (stage, points[0][1]["batches"]) if stage == "train from shards" else stage
        axes[0].plot(x, [p[1]["seconds"] for p in points], marker="o", label=label)
        axes[1].plot(x, [p[1]["peak_rss_gb"] for p in points], marker="o", label=label)
    for ax, label in zip(axes, ("wall time (s)", "peak RSS of the process tree (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
