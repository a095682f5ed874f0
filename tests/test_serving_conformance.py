"""The TF Serving conformance check, on small real SavedModels built here with plain TF ops.

Each worker run is a fresh TensorFlow process (~5-10 s), so one export holding every toy model is
checked once and the tests read their model's part of that report.
"""
from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tfrec import compat
from tfrec.serving.conformance import WORKER, check_export, worker_command
from tfrec.serving.publish import save_versioned
from tfrec.serving.savedmodel import REGRESS_METHOD, predict_log, regress_log

tf = compat.tensorflow()

CATALOG = ["cordless drill", "copper pipe fitting", "garden hose", "led light bulb", "paint roller", "wood screws"]
IDS = ["p%d" % i for i in range(len(CATALOG))]
BUCKETS, K = 32, 3


def bag(texts):
    """[B] strings -> [B, BUCKETS] hashed-token counts (tensorflow-text tokenizer: its ops must count as registered)."""
    import tensorflow_text as tf_text

    tokens = tf_text.WhitespaceTokenizer().tokenize(tf.strings.lower(texts))
    return tf.reduce_sum(tf.one_hot(tf.strings.to_hash_bucket_fast(tokens, BUCKETS), BUCKETS), axis=1)


class ToyRetrieval(tf.Module):
    """query [None] -> product_ids [None, K], scores [None, K] over a tiny in-graph catalog."""

    def __init__(self, batch=None):
        super().__init__()
        self.catalog = tf.Variable(bag(tf.constant(CATALOG)), trainable=False)
        self.ids = tf.Variable(IDS, dtype=tf.string, trainable=False)
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([batch], tf.string, name="query")])

    def _serve(self, query):
        top = tf.math.top_k(tf.matmul(bag(query), self.catalog, transpose_b=True), k=K)
        return {"product_ids": tf.gather(self.ids, top.indices), "scores": top.values}


class ToyRanker(tf.Module):
    """(query, product_id, title) [None] -> score [None]; regress: serialized tf.Examples -> outputs."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=n) for n in ("query", "product_id", "title")])
    def serve(self, query, product_id, title):
        overlap = tf.reduce_sum(bag(query) * bag(title), axis=-1)
        return {"score": overlap + 0.01 * tf.cast(tf.strings.length(product_id), tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        spec = {n: tf.io.FixedLenFeature([], tf.string, default_value="") for n in ("query", "product_id", "title")}
        f = tf.io.parse_example(inputs, spec)
        return {"outputs": self.serve(f["query"], f["product_id"], f["title"])["score"]}


class ToyPyFunc(tf.Module):
    """A signature that calls back into Python (EagerPyFunc): no model server can run it."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query")])
    def serve(self, query):
        length = tf.py_function(lambda q: tf.strings.length(q), [query], tf.int32)
        return {"length": tf.ensure_shape(length, [None])}


def _retrieval_warmup(name):
    return [predict_log(name, {"query": ["cordless drill", "", "garden hose nozzle"]}), predict_log(name, {"query": ["pipe"]})]


def _save_scann(export: Path) -> bool:
    try:
        import tensorflow_recommenders as tfrs
        import scann  # noqa: F401
    except ImportError:
        return False
    rng = np.random.default_rng(0)
    index = tfrs.layers.factorized_top_k.ScaNN(k=K, num_leaves=5, num_leaves_to_search=2, num_reordering_candidates=10)
    index.index(tf.constant(rng.normal(size=(50, 8)).astype("float32")), identifiers=tf.constant(["i%d" % i for i in range(50)]))

    class ToyScann(tf.Module):
        def __init__(self):
            super().__init__()
            self.index = index

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="query_vector")])
        def serve(self, query_vector):
            scores, ids = self.index(query_vector)
            return {"scores": scores, "item_ids": ids}

    module = ToyScann()
    assert module.serve(tf.constant(rng.normal(size=(2, 8)).astype("float32")))["item_ids"].shape == (2, K)  # works in-process
    save_versioned(module, export, "scann", {"serving_default": module.serve},
                   warmup=[predict_log("scann", {"query_vector": rng.normal(size=(2, 8)).astype("float32")})],
                   options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
    return True


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory):
    """An export folder with one clean retrieval (2 versions), a clean ranker and one broken model per failure kind."""
    export = tmp_path_factory.mktemp("conformance") / "export"
    retrieval = ToyRetrieval()
    for _ in range(2):
        save_versioned(retrieval, export, "good", {"serving_default": retrieval.serve}, warmup=_retrieval_warmup("good"))
    ranker = ToyRanker()
    pairs = {"query": ["drill", "garden hose"], "product_id": ["p0", "unknown"], "title": ["cordless drill", ""]}
    save_versioned(ranker, export, "ranker", {"serving_default": ranker.serve, "regress": ranker.regress},
                   warmup=[predict_log("ranker", pairs),
                           regress_log("ranker", [dict(zip(pairs, v)) for v in zip(*pairs.values())])],
                   methods={"regress": REGRESS_METHOD})
    pyfunc = ToyPyFunc()
    save_versioned(pyfunc, export, "pyfunc", {"serving_default": pyfunc.serve}, warmup=_retrieval_warmup("pyfunc"))
    save_versioned(retrieval, export, "nowarmup", {"serving_default": retrieval.serve})
    fixed = ToyRetrieval(batch=2)
    save_versioned(fixed, export, "fixedbatch", {"serving_default": fixed.serve},
                   warmup=[predict_log("fixedbatch", {"query": ["drill", "hose"]})])
    save_versioned(retrieval, export, "badwarmup", {"serving_default": retrieval.serve},
                   warmup=[predict_log("badwarmup", {"q": ["drill"]}),
                           predict_log("badwarmup", {"query": ["drill"]}, signature="nope")])
    has_scann = _save_scann(export)
    return export, has_scann


@pytest.fixture(scope="module")
def report(toy_export):
    return check_export(toy_export[0], timeout=300)


def test_worker_runs_by_file_path_in_a_fresh_interpreter(tmp_path):
    command = worker_command(tmp_path, ["a", "b"], all_versions=True)
    assert command[:2] == [sys.executable, str(WORKER)] and WORKER.is_file()
    assert "-m" not in command and command[3:] == ["--model", "a", "--model", "b", "--all-versions"]
    # The worker imports nothing of tfrec (nor any other project dependency beyond TF/tf-text/TF Serving protos).
    imports = set()
    for node in ast.walk(ast.parse(WORKER.read_text())):
        if isinstance(node, ast.Import):
            imports.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add(node.module.split(".")[0])
    assert imports <= {"__future__", "argparse", "ctypes", "gc", "json", "os", "re", "signal", "sys", "threading", "time",
                       "tensorflow", "tensorflow_text", "tensorflow_serving"}, imports


@pytest.mark.timeout(300)
def test_clean_models_pass(report):
    good, ranker = report.model("good"), report.model("ranker")
    assert good.ok and ranker.ok, "\n".join(report.lines())
    assert good.version == 2 and [m.version for m in report.models if m.model == "good"] == [2]  # newest only by default
    assert good.warmup_records == good.warmup_replayed == 2
    assert any(op.startswith("TFText>") for op in good.ops) and not good.unregistered_ops  # tf-text ops are registered
    assert {"MatMul", "TopKV2"} <= set(good.ops)
    sig = good.signatures["serving_default"]
    assert sig["inputs"] == {"query": {"dtype": "string", "shape": [None], "dense": True}}
    assert sig["outputs"]["product_ids"] == {"dtype": "string", "shape": [None, K], "dense": True}
    assert sig["outputs"]["scores"]["dtype"] == "float32" and sig["examples_run"] == 2
    assert ranker.signatures["regress"]["method"] == REGRESS_METHOD and ranker.signatures["regress"]["examples_run"] == 1
    assert ranker.signatures["serving_default"]["examples_run"] == 1 and ranker.warmup_replayed == 2
    assert not report.ok  # the broken toy models are in the same folder
    text = "\n".join(report.lines())
    assert "good v2: OK" in text and "pyfunc v1: FAILED" in text


@pytest.mark.timeout(300)
def test_py_function_is_rejected(report):
    pyfunc = report.model("pyfunc")
    assert pyfunc.rejected_ops == ["EagerPyFunc"] and not pyfunc.ok
    assert any("rejected ops: EagerPyFunc" in p for p in pyfunc.problems)
    # Its warm-up fails too: the Python callback does not exist in a fresh process.
    assert any("record 0" in p and "pyfunc_0" in p and "EagerPyFunc" in p for p in pyfunc.problems), pyfunc.problems


@pytest.mark.timeout(300)
def test_scann_ops_are_rejected(report, toy_export):
    if not toy_export[1]:
        pytest.skip("scann / tensorflow-recommenders not installed")
    scann = report.model("scann")
    assert scann.rejected_ops and all(op.startswith("Scann>") for op in scann.rejected_ops)
    assert set(scann.rejected_ops) <= set(scann.unregistered_ops)  # unknown without `import scann`, as in TF Serving
    assert any("does not load" in p for p in scann.problems), scann.problems


@pytest.mark.timeout(300)
def test_missing_warmup_and_fixed_batch_are_reported(report):
    nowarmup = report.model("nowarmup")
    assert nowarmup.warmup_records == 0
    assert any("no warm-up file" in p for p in nowarmup.problems)
    assert any("'serving_default': no example to run" in p for p in nowarmup.problems)
    fixed = report.model("fixedbatch")
    assert fixed.signatures["serving_default"]["inputs"]["query"]["shape"] == [2]
    assert any("input 'query' has a fixed batch dimension 2" in p for p in fixed.problems), fixed.problems
    assert fixed.warmup_replayed == 1  # it runs; the fixed batch is what TF Serving's batching cannot handle


@pytest.mark.timeout(300)
def test_failing_warmup_records_are_reported(report):
    bad = report.model("badwarmup")
    assert bad.warmup_records == 2 and bad.warmup_replayed == 0 and not bad.ok
    assert any("record 0" in p and "['q']" in p and "['query']" in p for p in bad.problems), bad.problems
    assert any("record 1" in p and "'nope'" in p for p in bad.problems), bad.problems


@pytest.mark.timeout(300)
def test_all_versions_of_a_clean_model_pass(toy_export):
    result = check_export(toy_export[0], models=["good"], all_versions=True, timeout=300)
    assert result.ok, "\n".join(result.lines())
    assert [(m.model, m.version) for m in result.models] == [("good", 1), ("good", 2)]
    assert result.tensorflow == tf.__version__


@pytest.mark.timeout(300)
def test_foreign_imports_and_missing_models_are_reported(toy_export, tmp_path, monkeypatch):
    # A sitecustomize that imports tfrec: the check must notice it did not run on TF + tf-text alone.
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import tfrec  # noqa: F401
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = check_export(toy_export[0], models=["good", "missing"], timeout=300)
    assert result.model("good").ok and not result.ok
    assert any("imported" in p and "tfrec" in p for p in result.problems), result.problems
    assert any("'missing' not found" in p for p in result.problems), result.problems


def test_timeouts_and_bad_arguments(toy_export, tmp_path):
    result = check_export(toy_export[0], timeout=0.5)
    assert not result.ok and "did not finish within 0.5 s" in result.problems[0]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        check_export(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="-1"):
        check_export(toy_export[0], timeout=-1)
