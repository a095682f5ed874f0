"""Conformance check worker: does an export load and run the way stock TensorFlow Serving runs it?

Run as a script in a fresh process (``tfrec.serving.conformance.check_export`` does), never imported
from tfrec: it imports only TensorFlow, tensorflow-text (whose ops TF Serving links), TF Serving's
API protos (to read the warm-up file) and the standard library, so what loads here needs nothing a
model server lacks. For the newest (or every) version of each model it

* lists the op types of the serve MetaGraph, its function library included, against the ops
  registered after ``import tensorflow_text``, and rejects ScaNN (``Scann>*``) and Python-callback
  ops (PyFunc, PyFuncStateless, EagerPyFunc);
* checks every signature's inputs and outputs: dense, a string/float/int dtype, an unknown batch
  dimension (TF Serving batches along it);
* loads it with ``tf.saved_model.load(path, tags=["serve"])`` and replays the warm-up file
  (``assets.extra/tf_serving_warmup_requests``): predict records feed the signature they name,
  regress/classify records feed their serialized tf.Examples; every output must keep the batch size.

Usage: ``python conformance_worker.py EXPORT_DIR [--model NAME ...] [--all-versions]``. Prints one
JSON report on stdout (everything else goes to stderr) and exits 0 whether or not the export passes.
With ``TFREC_CHECK_PARENT=<pid>`` in its environment it dies with that process (a killed
``tfrec export --check`` leaves no worker behind).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import signal
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# Running this file puts its own folder (tfrec/serving) first on sys.path: drop it, so that no
# sibling module can be picked up by accident.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

FORBIDDEN_MODULES = ("tfrec", "tensorflow_recommenders", "tensorflow_ranking", "transformers", "scann", "keras_tuner")
REJECTED_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")
REJECTED_PREFIXES = ("Scann",)
SERVABLE_DTYPES = ("string", "float32", "float64", "int32", "int64")
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving fails the load above this
DEFAULT_SIGNATURE = "serving_default"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_METHOD = "tensorflow/serving/classify"


def scan_export(export_dir: str) -> dict:
    """{model: sorted versions}: integer version folders holding a saved_model.pb (as tfrec.serving.deploy)."""
    models = {}
    for name in sorted(os.listdir(export_dir)):
        model_dir = os.path.join(export_dir, name)
        if name.startswith(".") or not os.path.isdir(model_dir):
            continue
        versions = sorted(
            int(v) for v in os.listdir(model_dir)
            if v.isdigit() and int(v) > 0 and os.path.isfile(os.path.join(model_dir, v, "saved_model.pb"))
        )
        if versions:
            models[name] = versions
    return models


def graph_ops(meta_graph) -> list:
    """Op types the graph and every function of its library use (calls of library functions excluded)."""
    library = meta_graph.graph_def.library
    functions = {f.signature.name for f in library.function}
    ops = {node.op for node in meta_graph.graph_def.node}
    for function in library.function:
        ops.update(node.op for node in function.node_def)
    return sorted(ops - functions)


def _short(error: BaseException) -> str:
    """One line: the error type and message; for TF graph errors the cause and the failing node."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        # "Graph execution error:", stack lines, then the cause and "[[{{node X}}]]": keep those.
        causes = [line for line in lines[1:] if re.match(r"[A-Za-z_.]*(Error|Exception)\b", line)]
        nodes = [line for line in lines if line.startswith("[[")]
        lines = [lines[0]] + (causes[-1:] or lines[1:2]) + nodes[-1:]
    return "%s: %s" % (type(error).__name__, " ".join(lines[:3])[:500])


def _tensor_info(tf, info) -> dict:
    shape = None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    return {"dtype": tf.as_dtype(info.dtype).name if info.dtype else "invalid", "shape": shape,
            "dense": info.WhichOneof("encoding") == "name"}


def _check_tensor(kind: str, name: str, info: dict) -> list:
    where = "%s %r" % (kind, name)
    problems = []
    if not info["dense"]:
        problems.append("%s is not a dense tensor (TF Serving feeds and fetches dense tensors only)" % where)
    if info["dtype"] not in SERVABLE_DTYPES:
        problems.append("%s has dtype %s (expected one of %s)" % (where, info["dtype"], ", ".join(SERVABLE_DTYPES)))
    shape = info["shape"]
    if shape is None:
        problems.append("%s has an unknown rank (expected [None, ...])" % where)
    elif not shape:
        problems.append("%s is a scalar: no batch dimension (TF Serving batches along dimension 0)" % where)
    elif shape[0] is not None:
        problems.append("%s has a fixed batch dimension %d (expected None): shape %s" % (where, shape[0], shape))
    return problems


def _signature_report(tf, key: str, signature) -> tuple:
    report = {
        "method": signature.method_name,
        "inputs": {n: _tensor_info(tf, t) for n, t in sorted(signature.inputs.items())},
        "outputs": {n: _tensor_info(tf, t) for n, t in sorted(signature.outputs.items())},
        "examples_run": 0,
    }
    problems = []
    for kind in ("inputs", "outputs"):
        for name, info in report[kind].items():
            problems += ["signature %r: %s" % (key, p) for p in _check_tensor(kind[:-1], name, info)]
    if not report["inputs"] or not report["outputs"]:
        problems.append("signature %r needs at least one input and one output" % key)
    if signature.method_name in (REGRESS_METHOD, CLASSIFY_METHOD):
        # TF Serving's Regress/Classify APIs feed one string tensor of serialized tf.Examples.
        if list(report["inputs"]) != ["inputs"] or report["inputs"]["inputs"]["dtype"] != "string":
            problems.append("signature %r (%s) must have one string input named 'inputs', has %s"
                            % (key, signature.method_name, list(report["inputs"])))
    if signature.method_name == REGRESS_METHOD and list(report["outputs"]) != ["outputs"]:
        problems.append("signature %r (regress) must have one output named 'outputs', has %s" % (key, list(report["outputs"])))
    return report, problems


def _read_warmup(tf, path: str) -> list:
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def _examples(request) -> list:
    """Serialized tf.Examples of a regress/classify request (context merged in, as TF Serving does)."""
    which = request.input.WhichOneof("kind")
    if which == "example_list":
        return [e.SerializeToString() for e in request.input.example_list.examples]
    if which == "example_list_with_context":
        merged = []
        for example in request.input.example_list_with_context.examples:
            combined = type(example)()
            combined.CopyFrom(request.input.example_list_with_context.context)
            combined.MergeFrom(example)
            merged.append(combined.SerializeToString())
        return merged
    return []


def _feeds(tf, log, signatures: dict) -> tuple:
    """(signature key, {input: tensor}) of a warm-up record; raises ValueError naming what does not match."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        request = log.predict_log.request
    elif kind in ("regress_log", "classify_log"):
        request = getattr(log, kind).request
    else:
        raise ValueError("a %s record, which this check does not replay" % kind)
    key = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if key not in signatures:
        raise ValueError("%s for signature %r, which the model does not have (has %s)" % (kind, key, sorted(signatures)))
    expected = signatures[key]["inputs"]
    if kind == "predict_log":
        given = sorted(request.inputs)
        if given != sorted(expected):
            raise ValueError("predict request for %r feeds inputs %s, the signature takes %s" % (key, given, sorted(expected)))
        feeds = {}
        for name, proto in request.inputs.items():
            dtype = tf.as_dtype(proto.dtype).name
            if dtype != expected[name]["dtype"]:
                raise ValueError("predict request for %r feeds %r as %s, the signature takes %s"
                                 % (key, name, dtype, expected[name]["dtype"]))
            feeds[name] = tf.constant(tf.make_ndarray(proto))
        return key, feeds
    examples = _examples(request)
    if not examples:
        raise ValueError("%s for %r holds no tf.Examples" % (kind, key))
    if len(expected) != 1:
        raise ValueError("%s for %r: the signature takes %d inputs, not one tensor of tf.Examples" % (kind, key, len(expected)))
    return key, {next(iter(expected)): tf.constant(examples, dtype=tf.string)}


def _run(tf, function, key: str, feeds: dict, outputs_expected: dict) -> None:
    sizes = {name: (int(t.shape[0]) if t.shape.rank else None) for name, t in feeds.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError("inputs of %r have no common batch size: %s" % (key, sizes))
    batch = next(iter(sizes.values()))
    outputs = function(**feeds)
    missing = sorted(set(outputs_expected) - set(outputs))
    if missing:
        raise ValueError("signature %r returned no %s" % (key, missing))
    for name, info in outputs_expected.items():
        value = outputs[name]
        if value.dtype.name != info["dtype"]:
            raise ValueError("output %r of %r is %s, the signature says %s" % (name, key, value.dtype.name, info["dtype"]))
        if value.shape.rank == 0 or int(value.shape[0]) != batch:
            raise ValueError("output %r of %r has shape %s for a batch of %d" % (name, key, value.shape.as_list(), batch))


def check_version(tf, op_registry, model: str, version: int, path: str) -> dict:
    """The conformance report of one SavedModel version folder."""
    from tensorflow.core.protobuf import saved_model_pb2

    report = {"model": model, "version": version, "path": path, "ops": [], "unregistered_ops": [], "rejected_ops": [],
              "signatures": {}, "warmup_records": 0, "warmup_replayed": 0, "problems": []}
    problems = report["problems"]
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    serve = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags]
    if not serve:
        problems.append("no MetaGraph tagged 'serve' (tags: %s)" % [list(g.meta_info_def.tags) for g in saved_model.meta_graphs])
        return report
    meta_graph = serve[0]
    report["ops"] = graph_ops(meta_graph)
    report["unregistered_ops"] = [op for op in report["ops"] if op_registry.get(op) is None]
    report["rejected_ops"] = [op for op in report["ops"] if op in REJECTED_OPS or op.startswith(REJECTED_PREFIXES)]
    if report["unregistered_ops"]:
        problems.append("ops not registered by TensorFlow + tensorflow-text (stock TF Serving cannot load them): %s"
                        % ", ".join(report["unregistered_ops"]))
    if report["rejected_ops"]:
        reasons = []
        if any(op.startswith(REJECTED_PREFIXES) for op in report["rejected_ops"]):
            reasons.append("stock TF Serving does not link ScaNN's ops")
        if any(op in REJECTED_OPS for op in report["rejected_ops"]):
            reasons.append("a Python callback cannot run in a model server")
        problems.append("rejected ops: %s (%s)" % (", ".join(report["rejected_ops"]), "; ".join(reasons)))
    for key, signature in sorted(meta_graph.signature_def.items()):
        if key.startswith("__"):  # __saved_model_init_op and the like: not servable signatures
            continue
        report["signatures"][key], signature_problems = _signature_report(tf, key, signature)
        problems += signature_problems
    if not report["signatures"]:
        problems.append("no signatures to serve")

    warmup_path = os.path.join(path, WARMUP_DIR, WARMUP_FILE)
    logs = []
    if not os.path.isfile(warmup_path):
        problems.append("no warm-up file %s/%s (TF Serving would serve the first requests cold)" % (WARMUP_DIR, WARMUP_FILE))
    else:
        try:
            logs = _read_warmup(tf, warmup_path)
        except Exception as error:  # noqa: BLE001  (a corrupt file is a finding, not a crash)
            problems.append("warm-up file does not parse as PredictionLog records: %s" % _short(error))
        report["warmup_records"] = len(logs)
        if len(logs) > MAX_WARMUP_RECORDS:
            problems.append("%d warm-up records; TF Serving fails the load above %d" % (len(logs), MAX_WARMUP_RECORDS))

    try:
        loaded = tf.saved_model.load(path, tags=["serve"])
    except Exception as error:  # noqa: BLE001
        problems.append("does not load with tf.saved_model.load(tags=['serve']): %s" % _short(error))
        return report
    for index, log in enumerate(logs):
        key = None
        try:
            key, feeds = _feeds(tf, log, report["signatures"])
            _run(tf, loaded.signatures[key], key, feeds, report["signatures"][key]["outputs"])
        except Exception as error:  # noqa: BLE001  (TF Serving fails the whole load on a failing record)
            problems.append("warm-up record %d%s failed: %s" % (index, " (signature %r)" % key if key else "", _short(error)))
            continue
        report["signatures"][key]["examples_run"] += 1
        report["warmup_replayed"] += 1
    for key, signature in report["signatures"].items():
        if signature["examples_run"] == 0:
            problems.append("signature %r: no example to run (add a warm-up record for it)" % key)
    del loaded
    gc.collect()
    return report


def run(export_dir: str, models: list, all_versions: bool) -> dict:
    """The whole report: every selected model version, plus process-level problems."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the ops TF Serving links: the tokenizers)
    from tensorflow.python.framework import op_def_registry

    report = {"export_dir": export_dir, "tensorflow": tf.__version__,
              "tensorflow_text": getattr(tensorflow_text, "__version__", "?"), "models": [], "problems": []}
    found = scan_export(export_dir) if os.path.isdir(export_dir) else {}
    if not os.path.isdir(export_dir):
        report["problems"].append("export folder %s does not exist" % export_dir)
    elif not found:
        report["problems"].append("no <model>/<version>/saved_model.pb under %s" % export_dir)
    for name in models or []:
        if name not in found:
            report["problems"].append("model %r not found under %s (has %s)" % (name, export_dir, sorted(found) or "none"))
    selected = [(name, version) for name in (models or sorted(found))
                for version in (found.get(name, []) if all_versions else found.get(name, [])[-1:])]
    for index, (name, version) in enumerate(selected):
        path = os.path.join(export_dir, name, str(version))
        started = time.monotonic()
        step(event="checking", model=name, version=version, index=index + 1, total=len(selected))
        try:
            report["models"].append(check_version(tf, op_def_registry, name, version, path))
        except Exception as error:  # noqa: BLE001  (one broken version must not hide the others)
            report["models"].append({"model": name, "version": version, "path": path, "ops": [], "unregistered_ops": [],
                                     "rejected_ops": [], "signatures": {}, "warmup_records": 0, "warmup_replayed": 0,
                                     "problems": ["check failed: %s" % _short(error)]})
        step(event="checked", model=name, version=version, index=index + 1, total=len(selected),
             seconds=round(time.monotonic() - started, 1), ok=not report["models"][-1]["problems"])
    imported = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN_MODULES)
    if imported:
        report["problems"].append("the check imported %s: it must run on TensorFlow and tensorflow-text alone"
                                  % ", ".join(imported))
    return report


# Lines on stderr that start with this carry a JSON step ({"event": "checking"|"checked", ...}):
# the parent (tfrec.serving.conformance) reads them to report progress while the check runs.
STEP_PREFIX = "tfrec-check-step: "


def step(**fields) -> None:
    """Tell the parent process where the check is (one line on stderr)."""
    sys.stderr.write(STEP_PREFIX + json.dumps(fields) + "\n")
    sys.stderr.flush()


PARENT_ENV = "TFREC_CHECK_PARENT"
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Exit as soon as ``parent`` is gone: the kernel's parent-death signal on Linux, a watch thread everywhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread below still notices
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        # An orphan is re-parented (to init or a subreaper), so its parent pid changes.
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv=None) -> int:
    """Parse arguments, run the check, print the JSON report on the real stdout."""
    parser = argparse.ArgumentParser(description="TF Serving conformance check of an export folder (JSON on stdout).")
    parser.add_argument("export_dir")
    parser.add_argument("--model", action="append", default=[], help="model to check (repeatable; default: all)")
    parser.add_argument("--all-versions", action="store_true", help="check every version, not only the newest")
    args = parser.parse_args(argv)
    if os.environ.get(PARENT_ENV, "").isdigit():
        die_with_parent(int(os.environ[PARENT_ENV]))
    # TensorFlow and its C++ runtime may print on stdout: send all of it to stderr and keep the
    # real stdout for the report alone.
    report_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    report = run(os.path.abspath(args.export_dir), args.model, args.all_versions)
    report_out.write(json.dumps(report))
    report_out.write("\n")
    report_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
