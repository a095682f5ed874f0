"""Text encoding benchmark: throughput vs the machine's matmul peak, query latency, catalog encoding.

Measures, on whatever machine runs it (results name the CPU count):
- dense matmul peak (4096^2, float32 and bfloat16) as the yardstick;
- frozen MiniLM throughput (in-graph tokenizer + BERT + mean pooling) at batch 1/32/256 and
  fixed max length 32/64, with its FLOP rate as a fraction of the float32 peak;
- catalog engines on Home Depot titles: float32 fixed length, float32 length-bucketed, int8;
- batch-1 query latency through a reloaded SavedModel (string in, vector out);
- the full Home Depot catalog encoded cold and from the cache;
- embedding drift int8 vs float32 and the zero-shot retrieval metric change it causes
  (valid queries, positives = relevance >= 2.5, recall@K over the whole catalog).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tfrec import compat
from tfrec.config import load_config
from tfrec.config.schema import TextConfig
from tfrec.data import load_data
from tfrec.text.catalog import catalog_text_features, float32_encode_fn, frozen_encoder
from tfrec.text.encoder import TextEncoder
from tfrec.text.model_files import resolve_model_files
from tfrec.text.quantized import Int8CatalogEncoder

tf = compat.tensorflow()
log = logging.getLogger(__name__)

_FLOP_CONFIG = {"layers": 6, "hidden": 384, "intermediate": 1536}


def bert_flops(tokens: float, seq_len: int, layers: int, hidden: int, intermediate: int) -> float:
    """Forward FLOPs of a BERT encoder over ``tokens`` tokens in sequences of ``seq_len`` (matmuls only)."""
    per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * seq_len * hidden
    return tokens * layers * per_token_layer


def matmul_peak_gflops(dtype, n: int = 4096, repeats: int = 8) -> float:
    """Best-of-three GFLOP/s of an n x n matmul in ``dtype``."""
    a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(3, 4)), dtype)
    run = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    run().numpy()
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            run().numpy()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9)
    return best


def _timed(fn, batches) -> float:
    for batch in batches:  # trace every shape before timing
        fn(batch)
    started = time.perf_counter()
    for batch in batches:
        fn(batch)
    return time.perf_counter() - started


def _throughput_rows(titles: list[str], peak: float, files) -> list[dict]:
    rows = []
    bert = None
    for max_length in (32, 64):
        encoder = TextEncoder(files, max_length=max_length, bert=bert)
        bert = encoder.bert
        run = tf.function(lambda x, e=encoder: e(x))
        for batch_size in (1, 32, 256):
            n = 256 if batch_size == 1 else 2048
            batches = [tf.constant(titles[i : i + batch_size]) for i in range(0, n, batch_size)]
            seconds = _timed(lambda b: run(b).numpy(), batches)
            rate = n / seconds
            gflops = bert_flops(rate * max_length, max_length, **_FLOP_CONFIG) / 1e9
            rows.append({"max_length": max_length, "batch": batch_size, "texts_per_s": round(rate, 1),
                         "model_gflops": round(gflops, 1), "fraction_of_fp32_peak": round(gflops / peak, 3)})
    return rows


def _catalog_engines(titles: list[str], text_cfg: TextConfig) -> tuple[list[dict], dict]:
    frozen = frozen_encoder(text_cfg)
    fixed = TextEncoder(frozen.files, max_length=text_cfg.max_length, bert=frozen.bert)
    order = np.argsort([len(t) for t in titles], kind="stable")
    chunks = [order[i : i + 256] for i in range(0, len(titles), 256)]
    rows, vectors = [], {}
    fixed_run = tf.function(lambda x: fixed(x))
    bucketed = float32_encode_fn(frozen)
    engines = {
        "float32, fixed length %d" % text_cfg.max_length: lambda texts: fixed_run(tf.constant(texts)).numpy(),
        "float32, length-bucketed": bucketed,
    }
    started = time.perf_counter()
    int8 = Int8CatalogEncoder(frozen)
    int8(titles[:2048])  # converts every bucket once (a per-process cost, timed below)
    conversion_s = time.perf_counter() - started
    engines["int8 (TFLite dynamic range), length-bucketed"] = int8
    for name, encode in engines.items():
        out = np.zeros((len(titles), frozen.output_dim), np.float32)
        for chunk in chunks[:2]:
            encode([titles[i] for i in chunk])  # warm-up / tracing
        started = time.perf_counter()
        for chunk in chunks:
            out[chunk] = encode([titles[i] for i in chunk])
        seconds = time.perf_counter() - started
        vectors[name] = out
        rows.append({"engine": name, "titles": len(titles), "titles_per_s": round(len(titles) / seconds, 1)})
    rows[-1]["one_time_conversion_s"] = round(conversion_s, 1)
    return rows, vectors


def _serving_module(encoder) -> tf.Module:
    """A module with a string -> embedding serving signature around ``encoder``."""
    module = tf.Module()
    module.encoder = encoder

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def serve(texts):
        return {"embedding": module.encoder(texts)}

    module.serve = serve
    return module


# Runs in a fresh process that imports only tensorflow and tensorflow_text, as TF Serving would,
# with op threads fixed before the runtime starts (they cannot be changed afterwards).
_LATENCY_SCRIPT = """
import json, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)
intra, inter = int(sys.argv[2]), int(sys.argv[3])
tf.config.threading.set_intra_op_parallelism_threads(intra)
tf.config.threading.set_inter_op_parallelism_threads(inter)
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
queries = json.loads(open(sys.argv[4], encoding="utf-8").read())
inputs = [tf.constant([q]) for q in queries]
for x in inputs[:30]:
    serve(texts=x)
times = []
for x in inputs:
    started = time.perf_counter()
    serve(texts=x)["embedding"].numpy()
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}))
"""


def _fresh_process_latency(path: Path, queries: list[str], intra: int, inter: int) -> dict:
    """Median/p90 batch-1 latency of a SavedModel in a TF-only process with the given op threads."""
    query_file = path.parent / "latency_queries.json"
    query_file.write_text(json.dumps(queries), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", _LATENCY_SCRIPT, str(path), str(intra), str(inter), str(query_file)],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError("latency subprocess failed: %s" % done.stderr.strip().splitlines()[-1:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _query_latency(queries: list[str], text_cfg: TextConfig, workdir: Path) -> list[dict]:
    files = resolve_model_files(text_cfg.model_dir)
    rows, bert = [], None
    for pad_to in ("max_length", "batch"):
        encoder = TextEncoder(files, max_length=text_cfg.max_length, pad_to=pad_to, bert=bert)
        bert = encoder.bert
        module = _serving_module(encoder)
        path = workdir / ("query_encoder_%s" % pad_to)
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
        for intra, inter in ((0, 0), (1, 1)):  # 0 = TensorFlow's default (all cores)
            measured = _fresh_process_latency(path, queries[:300], intra, inter)
            rows.append({"path": "SavedModel, padding=%s, fresh TF-only process, op threads intra=%s inter=%s"
                         % (pad_to, intra or "default", inter or "default"), "queries": min(len(queries), 300),
                         "median_ms": round(measured["median_ms"], 2), "p90_ms": round(measured["p90_ms"], 2)})
    # Where the time goes (in-process tf.functions, batch padding): tokenizer vs BERT, and XLA.
    inputs = [tf.constant([q]) for q in queries[:300]]
    tokenize = tf.function(lambda x: encoder.tokenizer(x))
    tokens = [tokenize(x) for x in inputs]
    parts = {
        "tokenizer only": (tokenize, inputs),
        "BERT + pooling only": (tf.function(lambda t: encoder.encode_tokens(t)), tokens),
        "BERT + pooling only, XLA (jit_compile)": (tf.function(lambda t: encoder.encode_tokens(t), jit_compile=True), tokens),
    }
    for name, (fn, xs) in parts.items():
        times = []
        for i, x in enumerate(xs):
            started = time.perf_counter()
            tf.nest.map_structure(lambda v: v.numpy(), fn(x))
            if i >= 30:  # the first calls trace and compile
                times.append((time.perf_counter() - started) * 1000)
        rows.append({"path": name, "queries": len(times), "median_ms": round(float(np.median(times)), 2),
                     "p90_ms": round(float(np.percentile(times, 90)), 2)})
    return rows


def _recall(query_vectors: np.ndarray, catalog_vectors: np.ndarray, positives: list[set], ks=(10, 100)) -> dict:
    scores = query_vectors @ catalog_vectors.T
    top = np.argsort(-scores, axis=1)[:, : max(ks)]
    out = {}
    for k in ks:
        hits = [len(set(top[i, :k].tolist()) & pos) / len(pos) for i, pos in enumerate(positives)]
        out["recall@%d" % k] = round(float(np.mean(hits)), 4)
    return out


def run(out_dir: Path, data_config: str) -> list[Path]:
    """Run the text benchmark on the Home Depot data of ``data_config``; write JSON and Markdown."""
    loaded = load_config(data_config)
    data = load_data(loaded)
    text_cfg = loaded.config.text
    titles = data.catalog.text().tolist()
    rng = np.random.default_rng(0)
    sample = [titles[i] for i in rng.choice(len(titles), 4096, replace=False)]
    results: dict = {"meta": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                              "tensorflow": tf.__version__, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "model": str(resolve_model_files(text_cfg.model_dir).dir), "max_length": text_cfg.max_length}}
    _progress("matmul peak")
    peak32 = matmul_peak_gflops(tf.float32)
    results["matmul_peak_gflops"] = {"float32": round(peak32, 1), "bfloat16": round(matmul_peak_gflops(tf.bfloat16), 1)}
    files = resolve_model_files(text_cfg.model_dir)
    _progress("encoder throughput at batch 1/32/256, max length 32/64")
    results["throughput"] = _throughput_rows(sample, peak32, files)
    _progress("catalog engines (int8 conversion included)")
    engines, vectors = _catalog_engines(sample, text_cfg)
    reference = vectors["float32, length-bucketed"]
    for row in engines:
        v = vectors[row["engine"]]
        cosine = (v * reference).sum(1) / np.maximum(np.linalg.norm(v, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)
        row["cosine_to_float32_min"] = round(float(cosine.min()), 4)
        row["cosine_to_float32_mean"] = round(float(cosine.mean()), 5)
    results["catalog_engines"] = engines

    workdir = Path(tempfile.mkdtemp(prefix="tfrec-bench-"))
    try:
        queries = sorted(set(data.valid.queries.tolist()))
        _progress("batch-1 query latency through SavedModels")
        results["query_latency_batch1"] = _query_latency(queries, text_cfg, workdir)
        _progress("full catalog, cold and cached, float32 and int8")
        full = {}
        for engine in ("float32", "int8"):
            cfg = dataclasses.replace(text_cfg, cache_dir=str(workdir / "cache"), catalog_engine=engine)
            started = time.perf_counter()
            vecs, stats = catalog_text_features(titles, cfg, progress=False)
            cold = time.perf_counter() - started
            started = time.perf_counter()
            _, again = catalog_text_features(titles, cfg, progress=False)
            warm = time.perf_counter() - started
            full[engine] = vecs
            results.setdefault("full_catalog", []).append({
                "engine": engine, "products": len(titles), "distinct_texts_encoded": stats.encoded,
                "cold_s": round(cold, 1), "cached_s": round(warm, 2), "cached_encoded": again.encoded})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    _progress("zero-shot retrieval on valid")
    # Zero-shot retrieval on valid: fp32 query vectors against each engine's catalog vectors.
    encode_queries = float32_encode_fn(frozen_encoder(text_cfg))
    valid_queries = sorted(set(data.valid.queries.tolist()))
    positives_by_query: dict = {}
    for q, p, label in zip(data.valid.queries.tolist(), data.valid.products.tolist(), data.valid.labels.tolist()):
        if label >= loaded.config.evaluation.positive_relevance:
            positives_by_query.setdefault(q, set()).add(p)
    evaluated = [q for q in valid_queries if q in positives_by_query]
    qv = np.concatenate([encode_queries(evaluated[i : i + 256]) for i in range(0, len(evaluated), 256)])
    positives = [positives_by_query[q] for q in evaluated]
    results["zero_shot_retrieval_valid"] = {
        "queries": len(evaluated), "catalog": len(titles),
        **{engine: _recall(qv, v, positives) for engine, v in full.items()},
    }
    json_path = out_dir / "text_encoding.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md_path = out_dir / "text_encoding.md"
    md_path.write_text(_markdown(results), encoding="utf-8")
    return [json_path, md_path]


def _progress(stage: str) -> None:
    log.info("text_encoding: %s ...", stage)


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return lines


def _markdown(results: dict) -> str:
    meta = results["meta"]
    peak = results["matmul_peak_gflops"]
    lines = [
        "# Text encoding benchmark", "",
        "%(cpus)s CPUs (%(machine)s), TensorFlow %(tensorflow)s, %(when)s; model %(model)s, max length %(max_length)s." % meta, "",
        "Dense matmul peak (4096x4096, best of 3): float32 %s GFLOP/s, bfloat16 %s GFLOP/s." % (peak["float32"], peak["bfloat16"]), "",
        "## Frozen encoder throughput (in-graph tokenizer, fixed padding, 4,096 random Home Depot titles)", "",
        "model_gflops counts the encoder's matmul FLOPs at the padded length.", "",
        *_table(results["throughput"]), "",
        "## Catalog engines (same titles, batches sorted by length)", "",
        *_table(results["catalog_engines"]), "",
        "## Batch-1 query latency (string in, vector out, valid queries)", "",
        *_table(results["query_latency_batch1"]), "",
        "## Full Home Depot catalog through the embedding cache", "",
        *_table(results["full_catalog"]), "",
        "## Zero-shot retrieval on valid (float32 queries; catalog vectors per engine)", "",
        "Positives: judged relevance >= 2.5; recall over the whole catalog (%s products), %s queries."
        % (results["zero_shot_retrieval_valid"]["catalog"], results["zero_shot_retrieval_valid"]["queries"]), "",
        *_table([{"catalog engine": k, **v} for k, v in results["zero_shot_retrieval_valid"].items() if isinstance(v, dict)]), "",
    ]
    return "\n".join(lines)
