"""The search path end to end on a small real Home Depot slice: train, evaluate, report, export, reload.

One module-scoped run trains the two towers and the ranker (about a minute on 2 cores); the
tests read its outputs. The export is reloaded in a fresh process that imports only TensorFlow
and tensorflow-text, as TF Serving would, and must give the numbers the evaluation used.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cli_runs import ROOT, in_repository_root
from tfrec.cli.main import main



@pytest.fixture(scope="module")
def run_dir(search_run):
    return search_run


def test_metrics_cover_every_view_with_seen_cold_split(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    systems = metrics["systems"]
    for name in ("bm25", "bm25_stemmed", "minilm_zero_shot", "hybrid_bm25_minilm", "tfrec_two_tower", "tfrec_hybrid", "tfrec_search"):
        assert name in systems, name
    hybrid = systems["tfrec_hybrid"]["retrieval"]
    assert 0.0 <= hybrid["recall@10"] <= hybrid["recall@20"] <= 1.0
    assert {"seen", "cold"} <= set(hybrid)
    search = systems["tfrec_search"]
    assert 0.0 < search["e2e"]["ndcg@10"] <= 1.0
    assert systems["random"]["rerank"]["ndcg@10"] <= systems["perfect"]["rerank"]["ndcg@10"]
    assert 0.0 < search["rerank"]["ndcg@10"] <= systems["perfect"]["rerank"]["ndcg@10"] + 1e-9
    # Each view's paired test is against the strongest baseline measured in the same run, on the view's headline metric.
    assert "targets" not in metrics
    tested = {(s["view"], s["system"]): s for s in metrics["significance"]}
    for view, system, metric in (("e2e", "tfrec_search", "ndcg@10"), ("retrieval", "tfrec_hybrid", "recall@20"),
                                 ("rerank", "tfrec_search", "ndcg@10")):
        entry = tested[(view, system)]
        baselines = [s[view][metric] for s in systems.values() if s["kind"] == "baseline" and s.get(view) and metric in s[view]]
        assert entry["metric"] == metric and systems[entry["versus"]][view][metric] == max(baselines)
        assert entry["low"] <= entry["mean_diff"] <= entry["high"]
        assert entry["mean_diff"] == pytest.approx(systems[system][view][metric] - max(baselines), abs=1e-4)
    index = metrics["training"]["retrieval"]["index"]
    assert 0.0 <= index["scann_vs_brute_force_top10_overlap"] <= 1.0
    assert metrics["halves"]["tune"]["n_queries"] + metrics["halves"]["holdout"]["n_queries"] == metrics["n_queries"]["e2e"]


def test_ranker_dense_fusion_is_chosen_on_the_tuning_half_and_restored(run_dir):
    from tfrec.search.export import load_search_models
    from tfrec.search.stages.ranker import DENSE_WEIGHT_GRID

    ranker = json.loads((run_dir / "metrics.json").read_text())["training"]["ranker"]
    fusion = ranker["dense_fusion"]
    trials = fusion["trials"]
    assert [t["weight"] for t in trials] == list(DENSE_WEIGHT_GRID)
    best = max(t["tune_half_e2e_ndcg@10"] for t in trials)
    assert fusion["weight"] == next(t["weight"] for t in trials if t["tune_half_e2e_ndcg@10"] == best)
    # Each candidate loss was tried with its own weight, and the kept one is the best of them.
    kept = max(ranker["loss_selection"], key=lambda t: t["tune_half_e2e_ndcg@10"])
    assert (kept["loss"], kept["dense_weight"]) == (ranker["loss"], fusion["weight"])
    # The export rebuilds the head with the same fusion (weights file), so it scores like the evaluation.
    models = load_search_models(run_dir)
    assert float(models.head.dense_weight.numpy()) == pytest.approx(fusion["weight"])
    assert float(models.head.score_scale.numpy()) == pytest.approx(fusion["score_scale"], rel=1e-4)
    np.testing.assert_allclose(models.head.catalog_stats.mean.numpy(), models.catalog_dense.mean(axis=0), atol=1e-5)


def test_per_query_metrics_saved_for_paired_comparisons(run_dir):
    saved = np.load(run_dir / "per_query.npz")
    n = json.loads((run_dir / "metrics.json").read_text())["n_queries"]["e2e"]
    assert len(saved["keys"]) == n
    for key in ("tfrec_search/ndcg@10_e2e", "tfrec_hybrid/recall@10", "tfrec_two_tower/recall@10", "hybrid_bm25_minilm/ndcg@10_e2e"):
        assert saved[key].shape == (n,), key
    values = saved["tfrec_search/ndcg@10_e2e"]
    assert np.nanmin(values) >= 0.0 and np.nanmax(values) <= 1.0


def test_report_files_written(run_dir):
    for name in ("report.md", "report.html", "config.yaml", "search_config.json", "lexical/lexical_index.json", "top_results.json"):
        assert (run_dir / name).is_file(), name
    md = (run_dir / "report.md").read_text()
    assert "tfrec search" in md
    for chart in ("recall_at_k.png", "ndcg.png", "per_query.png", "training.png"):
        assert "](%s)" % chart in md and (run_dir / chart).read_bytes()[:4] == b"\x89PNG", chart


def test_worst_queries_gallery_shows_the_lowest_scoring_query(run_dir):
    """The gallery's first card is the query with the lowest end-to-end NDCG@10, with what the system returned."""
    from tfrec.evaluation.results import read_top_results

    saved = np.load(run_dir / "per_query.npz")
    values = saved["tfrec_search/ndcg@10_e2e"]
    record = read_top_results(run_dir / "top_results.json")
    assert [q["query"] for q in record["queries"]] == list(saved["keys"])
    assert all(len(q["top"]) == 10 and set(q["top"]) <= set(record["products"]) for q in record["queries"])
    worst = float(np.nanmin(values))
    md = (run_dir / "report.md").read_text()
    gallery = md[md.index("## Worst queries"):]
    first_card = re.search(r"\*\*\"(.+?)\"\*\*\n_NDCG@10 ([0-9.]+);", gallery)
    assert float(first_card.group(2)) == pytest.approx(worst, abs=5e-4)
    assert values[list(saved["keys"]).index(first_card.group(1))] == pytest.approx(worst)


def test_evaluate_rewrites_the_same_report(run_dir, in_repo, capsys):
    """`tfrec evaluate` rebuilds report.html from the saved files: the page equals the one `tfrec train` wrote."""
    before = (run_dir / "report.html").read_bytes()
    (run_dir / "report.html").unlink()
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert "tfrec search" in out.out and "report: %s" % (run_dir / "report.html") in out.out
    assert (run_dir / "report.html").read_bytes() == before


@pytest.fixture(scope="module")
def exported(search_export):
    return search_export


def test_export_layout_and_versions(exported):
    assert sorted(p.name for p in exported.iterdir() if p.is_dir()) == ["search", "search_ranker", "search_retrieval"]
    for name in ("search_retrieval", "search_ranker", "search"):
        versions = [p.name for p in (exported / name).iterdir()]
        assert versions == ["1"], versions  # no temporary folder left behind
        assert (exported / name / "1" / "saved_model.pb").is_file()


def test_exports_reload_with_tensorflow_only_and_match_evaluation(run_dir, exported):
    script = textwrap.dedent(
        """
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (what TF Serving links; the exports must not need more)
        out = {}
        r = tf.saved_model.load(sys.argv[1] + "/search_retrieval/1").signatures["serving_default"]
        spec = r.structured_input_signature[1]
        out["retrieval_inputs"] = {k: [v.dtype.name, v.shape.as_list()] for k, v in spec.items()}
        res = r(query=tf.constant(["cordless drill", "", "x" * 5000]))
        out["product_ids_shape"] = res["product_ids"].shape.as_list()
        out["product_ids"] = [[i.decode() for i in row] for row in res["product_ids"].numpy()]
        out["scores"] = res["scores"].numpy().tolist()
        k = tf.saved_model.load(sys.argv[1] + "/search_ranker/1").signatures["serving_default"]
        spec = k.structured_input_signature[1]
        out["ranker_inputs"] = {k2: [v.dtype.name, v.shape.as_list()] for k2, v in spec.items()}
        pairs = json.loads(sys.argv[2])
        s = k(query=tf.constant(pairs["query"]), product_id=tf.constant(pairs["product_id"]), title=tf.constant(pairs["title"]))
        out["ranker_scores"] = s["score"].numpy().tolist()
        print(json.dumps(out))
        """
    )
    from tfrec.search.export import load_search_models

    models = load_search_models(run_dir)
    ids = models.ids
    # A catalog product with its catalog title (the export reads its vectors from the catalog), one with
    # another title, an unknown id and an empty title (those are encoded in the graph).
    pairs = {"query": ["cordless drill", "cordless drill", "cordless drill", "paint"],
             "product_id": [str(ids[2]), str(ids[0]), "not-a-product", str(ids[1])],
             "title": [str(models.titles[2]), "a title", "brand new cordless drill 18v", ""]}
    proc = subprocess.run([sys.executable, "-c", script, str(exported), json.dumps(pairs)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["retrieval_inputs"] == {"query": ["string", [None]]}
    assert out["ranker_inputs"] == {k: ["string", [None]] for k in ("query", "product_id", "title")}
    assert out["product_ids_shape"] == [3, models.top_k]
    assert set(out["product_ids"][0]) <= set(ids.tolist())
    assert np.all(np.diff(np.asarray(out["scores"]), axis=1) <= 1e-6)  # sorted, best first

    # The exported retrieval returns what the evaluation ranked (same hybrid function, same weights).
    from tfrec.retrieval.train import encode_queries
    from tfrec.search.hybrid import CatalogScorer

    query = ["cordless drill"]
    scorer = CatalogScorer(models.catalog_dense, models.catalog_zero, models.lexical)
    zero = np.asarray(models.zero_encoder(np.asarray(query)))
    rows, scores = scorer.top_k(encode_queries(models.retrieval, query), zero, query, models.weights, models.top_k)
    assert out["product_ids"][0][:5] == ids[rows[0, :5]].tolist()
    np.testing.assert_allclose(out["scores"][0], scores[0], rtol=1e-3, atol=1e-3)

    # The exported ranker scores like an in-process module that encodes every title (no catalog cache).
    from tfrec.search.export import RankerExport

    local = RankerExport(models.retrieval, models.zero_encoder, models.lexical, models.head)
    import tensorflow as tf

    expected = local.serve(tf.constant(pairs["query"]), tf.constant(pairs["product_id"]), tf.constant(pairs["title"]))["score"].numpy()
    np.testing.assert_allclose(out["ranker_scores"], expected, rtol=1e-4, atol=1e-4)


def test_export_of_a_run_without_search_model_is_refused(tmp_path, in_repo, capsys):
    run = tmp_path / "not-a-run"
    run.mkdir()
    assert main(["export", "--run", str(run), "--export-dir", str(tmp_path / "x")]) != 0
    assert "not a tfrec run directory" in capsys.readouterr().err


def test_export_meets_the_tf_serving_contract(exported, capsys):
    """`tfrec export --check`: TF-only process, registered ops only, every signature and warm-up record runs."""
    with in_repository_root():
        code = main(["export", "--check", "--export-dir", str(exported)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "search_retrieval" in out and "search_ranker" in out and "search v1: OK" in out
    for name in ("search_retrieval", "search_ranker", "search"):
        assert (exported / name / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    for name in ("search_retrieval", "search"):
        assert (exported / name / "1" / "assets.extra" / "catalog.json").is_file()
    assert "search_retrieval" in (exported / "models.config").read_text()


def test_search_pipeline_over_the_dev_server_matches_the_exported_models(exported, capsys):
    """Retrieve -> titles -> re-rank through gRPC and REST gives the order the SavedModels themselves give."""
    import tensorflow as tf

    from tfrec.serving.grpc_client import GrpcClient
    from tfrec.serving.rest_client import RestClient
    from tfrec.serving.server import DevServer
    from tfrec.serving.service import ProductCatalog, SearchService

    catalog = ProductCatalog.from_export(exported)
    queries = ["cordless drill", "white paint", ""]
    with DevServer(exported, grpc_port=0, rest_port=0) as server, \
            GrpcClient(server.grpc_address, timeout=120) as grpc_client, \
            RestClient("http://" + server.rest_address, timeout=120) as rest_client:
        over_grpc = SearchService(grpc_client, catalog, candidates=10).search_many(queries, k=5)
        over_rest = SearchService(rest_client, catalog, candidates=10).search_many(queries, k=5)
        pairs = [{"query": "cordless drill", "product_id": h.item_id, "title": h.title} for h in over_grpc[0]]
        regressed = grpc_client.regress("search_ranker", pairs)
        code = main(["search", "cordless drill", "--server", server.grpc_address, "--export-dir", str(exported),
                     "--candidates", "10", "-k", "3", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [h["item_id"] for h in printed["results"]] == [h.item_id for h in over_grpc[0][:3]]

    # Independent: call the SavedModels directly and order the candidates by the ranker's scores.
    retrieval = tf.saved_model.load(str(exported / "search_retrieval" / "1")).signatures["serving_default"]
    ranker = tf.saved_model.load(str(exported / "search_ranker" / "1")).signatures["serving_default"]
    for query, hits_grpc, hits_rest in zip(queries, over_grpc, over_rest):
        ids = [i.decode() for i in retrieval(query=tf.constant([query]))["product_ids"].numpy()[0][:10]]
        titles = [catalog.title(i) for i in ids]
        scores = ranker(query=tf.constant([query] * 10), product_id=tf.constant(ids), title=tf.constant(titles))["score"].numpy()
        order = np.argsort(-scores, kind="stable")[:5]
        assert [h.item_id for h in hits_grpc] == [ids[i] for i in order]
        assert [h.item_id for h in hits_rest] == [h.item_id for h in hits_grpc]
        np.testing.assert_allclose([h.score for h in hits_grpc], scores[order], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose([h.score for h in hits_rest], scores[order], rtol=1e-4, atol=1e-4)
        assert all(h.title == catalog.title(h.item_id) and h.title for h in hits_grpc)
    np.testing.assert_allclose(regressed, [h.score for h in over_grpc[0]], rtol=1e-4, atol=1e-4)


# A request within the documented limits must not be able to exhaust the server's memory.
MEMORY_BOUND_MB = 300


def _costliest_word(run_dir) -> str:
    """The raw word whose BM25 posting list is the longest in the run's lexical index."""
    from tfrec.lexical import LexicalIndex

    index = LexicalIndex.load(run_dir / "lexical")
    term = int(np.argmax(np.diff(index.term_offsets)))
    return min((raw for raw, t in zip(index.raw_tokens, index.raw_to_term) if t == term), key=len)


# The ranker takes 256 rows (4 of its 64-row steps, a BERT pass per new title) to keep the suite short.
@pytest.mark.parametrize("model,rows", [("search_retrieval", 1024), ("search_ranker", 256)])
def test_hostile_requests_to_the_exported_graphs_stay_within_the_memory_bound(run_dir, exported, model, rows):
    """A 64 KiB query repeating the costliest word, alone and as many rows, run by the SavedModel itself."""
    child = ROOT / "tests" / "memory_child.py"
    word = _costliest_word(run_dir)
    done = subprocess.run([sys.executable, str(child), str(exported), model, word, "--rows", str(rows), "--give-up-mb", "2000"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["query_bytes"] >= 65000
    for case in ("one_row", "many_rows", "distinct_rows"):
        assert report[case]["error"] is None, report
        assert report[case]["growth_mb"] < MEMORY_BOUND_MB, report


def test_hostile_requests_to_the_dev_server_stay_within_the_memory_bound(run_dir, exported):
    """The same query over gRPC, and a [1024] tensor declared over one 64 KiB value, against a served export."""
    import threading
    import time

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfrec.serving.grpc_client import GrpcClient
    from tfrec.serving.process import start_server
    from tfrec.serving.tensors import to_tensor_proto

    hostile = " ".join([_costliest_word(run_dir)] * 32768)[: 64 * 1024]
    with start_server(exported, timeout=300) as server, GrpcClient(server.grpc_address, timeout=120, retries=0) as client:
        statm = "/proc/%d/statm" % server.process.pid

        def rss_mb() -> float:
            with open(statm) as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

        client.predict("search_retrieval", {"query": ["cordless drill"]})
        client.predict("search_ranker", {"query": ["drill"], "product_id": ["x"], "title": ["cordless drill"]})
        before, peak, stop = rss_mb(), [0.0], threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            found = client.predict("search_retrieval", {"query": [hostile]})
            assert found["product_ids"].shape[0] == 1
            rows = 16  # 3 x 16 x 64 KiB: within the 4 MiB request limit
            scores = client.predict("search_ranker", {"query": [hostile] * rows, "product_id": ["x"] * rows, "title": [hostile] * rows})
            assert scores["score"].shape == (rows,) and np.isfinite(scores["score"]).all()
            # One string_val declared as shape [1024]: TensorFlow would repeat it 1,024 times.
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "search_retrieval"
            request.inputs["query"].CopyFrom(to_tensor_proto([hostile]))
            request.inputs["query"].tensor_shape.dim[0].size = 1024
            with grpc.insecure_channel(server.grpc_address) as channel:
                with pytest.raises(grpc.RpcError) as raised:
                    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
        finally:
            stop.set()
            sampler.join()
        growth = max(peak[0], rss_mb()) - before
        print("dev server RSS growth over the hostile requests: %.1f MB" % growth)
        assert growth < MEMORY_BOUND_MB
        assert server.alive()
        assert client.predict("search_retrieval", {"query": ["cordless drill"]})["product_ids"].shape[0] == 1
