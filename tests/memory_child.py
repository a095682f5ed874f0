"""Run hostile requests against an exported SavedModel in this process and report its RSS growth (JSON on stdout).

Usage: python memory_child.py EXPORT_DIR MODEL WORD [--rows N] [--give-up-mb MB]

Imports only TensorFlow and tensorflow-text, as TF Serving would. Each case builds its inputs
first, then samples this process's resident memory every 5 ms while the signature runs; the
growth is the peak during the call minus the resident memory just before it. A case whose growth
passes ``--give-up-mb`` ends the process (exit 3) instead of exhausting the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

PAGE = resource.getpagesize()


def rss_mb() -> float:
    """This process's resident set size in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def measure(case: str, call, give_up_mb: float) -> dict:
    """Peak RSS growth (MB) and seconds of ``call()``; exits the process past ``give_up_mb``."""
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            now = rss_mb()
            peak[0] = max(peak[0], now)
            if now - before > give_up_mb:
                print(json.dumps({"gave_up": case, "growth_mb": round(now - before, 1), "limit_mb": give_up_mb}), flush=True)
                os._exit(3)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    error = None
    try:
        call()
    except Exception as exc:  # reported, not raised: the caller decides whether a refusal is fine
        error = "%s: %s" % (type(exc).__name__, str(exc)[:200])
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return {"growth_mb": round(max(peak[0], rss_mb()) - before, 1), "seconds": round(seconds, 2), "error": error}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir")
    parser.add_argument("model", choices=["search_retrieval", "search_ranker"])
    parser.add_argument("word", help="a catalog word with a long posting list")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--give-up-mb", type=float, default=3000.0)
    args = parser.parse_args()

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops, as TF Serving links them)

    folder = os.path.join(args.export_dir, args.model)
    version = max(int(v) for v in os.listdir(folder) if v.isdigit())
    serve = tf.saved_model.load(os.path.join(folder, str(version))).signatures["serving_default"]
    hostile = " ".join([args.word] * (32 * 1024))[: 64 * 1024]  # 64 KiB of one repeated term

    def inputs(query: str, rows: int) -> dict:
        if args.model == "search_retrieval":
            return {"query": tf.constant([query] * rows)}
        return {"query": tf.constant([query] * rows), "product_id": tf.constant(["not-a-catalog-id"] * rows),
                "title": tf.constant([query] * rows)}

    serve(**inputs("cordless drill", 2))  # warm: the first call allocates the graph's buffers
    report = {"model": args.model, "version": version, "query_bytes": len(hostile.encode()), "rows": args.rows}
    cases = {"one_row": inputs(hostile, 1), "many_rows": inputs(hostile, args.rows)}
    # Distinct rows defeat any de-duplication of repeated queries.
    distinct = tf.strings.join([tf.constant(["%d " % i for i in range(args.rows)]), tf.constant([hostile] * args.rows)])
    cases["distinct_rows"] = {name: distinct for name in cases["many_rows"]}
    for name, feed in cases.items():
        report[name] = measure(name, lambda: serve(**feed), args.give_up_mb)
        print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
