"""tfrec's public API (tfrec.api, lazily re-exported by `import tfrec`) and the in-process LocalClient."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfrec
from serving_toys import (
    TOY_CATALOG, ranker_reference, recommend_reference, retrieval_reference, write_toy_ranker, write_toy_recommenders,
    write_toy_retrieval,
)
from tfrec import api
from tfrec.serving.grpc_client import GrpcClient, ServingError
from tfrec.serving.local import LocalClient
from tfrec.serving.service import ProductCatalog, RecommendService, SearchService

TITLES = dict(TOY_CATALOG)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """Toy search and recommendation models with the signatures of tfrec's exports; retrieval has versions 1 and 2."""
    folder = tmp_path_factory.mktemp("export")
    write_toy_retrieval(folder, k=5, bias=0.0)
    newest = write_toy_retrieval(folder, k=5, bias=10.0)  # version 2: every score + 10, so versions tell apart
    write_toy_ranker(folder)
    write_toy_recommenders(folder, k=3)
    catalog = {"ids": [p for p, _ in TOY_CATALOG], "titles": [t for _, t in TOY_CATALOG]}
    (newest / "assets.extra" / "catalog.json").write_text(json.dumps(catalog))
    return folder


def test_import_tfrec_stays_light_and_exposes_the_api():
    """`import tfrec` loads no TensorFlow; tfrec.<name> reaches every name of tfrec.api."""
    code = ("import sys, tfrec; tfrec.load_config; tfrec.train; tfrec.api.export; "
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert set(tfrec._API) == set(api.__all__)
    for name in api.__all__:
        assert getattr(tfrec, name) is getattr(api, name), name
    assert tfrec.LocalClient is LocalClient and tfrec.GrpcClient is GrpcClient
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tfrec.nope  # noqa: B018


def test_local_client_predicts_the_newest_version_like_a_server(export):
    """predict() runs the newest version in-process; version= picks another; outputs are decoded like the clients'."""
    queries = ["white paint", "led ceiling light", ""]
    with LocalClient(export) as client:
        assert client.models == ["recommender", "search_ranker", "search_retrieval", "similar_items"]
        assert client.versions("search_retrieval") == [1, 2]
        newest = client.predict("search_retrieval", {"query": queries})
        first = client.predict("search_retrieval", {"query": queries}, version=1, output_filter=["scores"])
    ids, scores = retrieval_reference(queries, k=5, bias=10.0)
    assert newest["product_ids"].tolist() == ids.tolist() and isinstance(newest["product_ids"][0, 0], str)
    np.testing.assert_allclose(newest["scores"], scores, rtol=1e-5)
    assert set(first) == {"scores"}
    np.testing.assert_allclose(first["scores"], retrieval_reference(queries, k=5)[1], rtol=1e-5)


def test_local_client_batches_and_regresses(export):
    """predict_batched cuts rows into max_batch_size batches; regress scores tf.Examples like the Regress API."""
    queries = ["drill", "white paint", "garden hose", "led", "door", "paint"]
    with LocalClient(export, max_batch_size=4) as client:
        out = client.predict_batched("search_retrieval", {"query": queries})
        values = client.regress("search_ranker", [{"query": "drill", "product_id": "100007", "title": TITLES["100007"]},
                                                  {"query": "white paint", "product_id": "100002", "title": TITLES["100002"]}])
    assert out["product_ids"].tolist() == retrieval_reference(queries, k=5, bias=10.0)[0].tolist()
    np.testing.assert_allclose(values, [ranker_reference("drill", "100007", TITLES["100007"]),
                                        ranker_reference("white paint", "100002", TITLES["100002"])], rtol=1e-5)


def test_search_and_recommend_services_run_without_a_server(export):
    """SearchService(LocalClient(...)) retrieves, titles and re-ranks; RecommendService recommends and finds similar items."""
    catalog = ProductCatalog.from_export(export)
    with LocalClient(export) as client:
        hits = SearchService(client, catalog, candidates=4).search("white paint", k=3)
        recommended = RecommendService(client, catalog).recommend(["100002", "100005"], k=3)
        similar = RecommendService(client, catalog).similar("100007", k=2)
    candidates = retrieval_reference(["white paint"], k=5, bias=10.0)[0][0][:4]
    expected = sorted(candidates, key=lambda pid: -ranker_reference("white paint", pid, TITLES[pid]))[:3]
    assert [h.item_id for h in hits] == expected and all(h.title == TITLES[h.item_id] for h in hits)
    assert [h.item_id for h in recommended] == recommend_reference(["100002", "100005"], 3)[0]
    assert [h.item_id for h in similar] == recommend_reference(["100007"], 2)[0]


def test_local_client_errors_name_what_is_wrong(export, tmp_path):
    """Unknown models and versions are NOT_FOUND listing what exists; bad inputs INVALID_ARGUMENT; labels and empty folders refused."""
    client = LocalClient(export)
    with pytest.raises(ServingError, match="model 'nope' is not in .*search_ranker, search_retrieval") as unknown:
        client.predict("nope", {"query": ["x"]})
    assert unknown.value.code == "NOT_FOUND"
    with pytest.raises(ServingError, match=r"no version 7 .*versions: 1, 2") as version:
        client.predict("search_retrieval", {"query": ["x"]}, version=7)
    assert version.value.code == "NOT_FOUND"
    with pytest.raises(ServingError, match="missing input 'query'") as missing:
        client.predict("search_retrieval", {"text": ["x"]})
    assert missing.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ServingError, match="expects DT_STRING"):
        client.predict("search_retrieval", {"query": [1.5]})
    with pytest.raises(ValueError, match="not labels"):
        client.predict("search_retrieval", {"query": ["x"]}, label="canary")
    with pytest.raises(FileNotFoundError, match="not found"):
        LocalClient(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no models in"):
        LocalClient(tmp_path)


def test_serve_returns_a_started_server_that_with_stops(export):
    """tfrec.serve starts the development server on free ports; `with` does not start it twice and stops it."""
    with tfrec.serve(export, grpc_port=0, rest_port=0) as server:
        with GrpcClient(server.grpc_address, timeout=30.0) as client:
            out = client.predict("search_retrieval", {"query": ["drill"]})
        assert out["product_ids"][0].tolist() == retrieval_reference(["drill"], k=5, bias=10.0)[0][0].tolist()
    with GrpcClient(server.grpc_address, timeout=2.0, retries=0) as client, pytest.raises(ServingError):
        client.predict("search_retrieval", {"query": ["drill"]})
    with pytest.raises(FileNotFoundError, match="export a run first"):
        tfrec.serve(export / "missing")


def test_api_errors_are_clear(tmp_path, in_repo):
    """Wrong runs, unfinished runs and mixed-up arguments fail with messages naming the problem."""
    with pytest.raises(FileNotFoundError, match="is not a tfrec run directory"):
        tfrec.export(tmp_path, tmp_path / "export")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run:\n  name: x\n")
    with pytest.raises(tfrec.UnsupportedError, match="holds no exportable model"):
        tfrec.export(run, tmp_path / "export")
    with pytest.raises(FileNotFoundError, match="has no metrics.json"):
        tfrec.evaluate(run)
    loaded = tfrec.load_config("configs/default.yaml")
    with pytest.raises(ValueError, match="overrides apply to a config file"):
        tfrec.train(loaded, ["retrieval.epochs=0"])
    with pytest.raises(TypeError, match="list of 'key.path=value' strings"):
        tfrec.load_config("configs/default.yaml", "retrieval.epochs=0")
    with pytest.raises(TypeError, match="YAML path or a LoadedConfig"):
        tfrec.train(42)


def test_train_refuses_warm_start_for_recommendation(tmp_path, in_repo, shared_datasets):
    """Warm starts are a search feature: asking for one on a recommendation config says so."""
    with pytest.raises(tfrec.UnsupportedError, match="--warm-start applies to search runs"):
        tfrec.train("configs/amazon_scientific.yaml", ["run.output_dir=%s" % tmp_path, "data.max_users=20"],
                    warm_start=tmp_path)


def test_compare_wraps_the_paired_bootstrap(tmp_path):
    """compare() pairs two runs' per-query arrays (or two systems of one run) and renders the CLI's table."""
    from tfrec.evaluation.compare import write_per_query

    keys = ["q%d" % i for i in range(40)]
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=40)
    for name, shift in (("a", 0.2), ("b", 0.0)):
        (tmp_path / name).mkdir()
        write_per_query(tmp_path / name / "per_query.npz", keys,
                        {"tfrec_search": {"ndcg@10_e2e": base + shift}, "bm25": {"ndcg@10_e2e": base}})
    result = tfrec.compare(tmp_path / "a", tmp_path / "b", metrics=["ndcg@10_e2e"], resamples=200)
    rows = {row["a"]: row for row in result.rows}
    assert rows["tfrec_search"]["diff"] == pytest.approx(0.2) and rows["tfrec_search"]["low"] > 0
    assert rows["bm25"]["diff"] == pytest.approx(0.0)
    assert "A better" in str(result) and "A = %s" % (tmp_path / "a") in result.table
    within = tfrec.compare(tmp_path / "a", system="tfrec_search", against="bm25", resamples=200)
    assert within.rows[0]["diff"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="name the two systems.*tfrec_search, bm25"):
        tfrec.compare(tmp_path / "a")


def test_find_tpu_looks_only_where_a_tpu_announces_itself(monkeypatch):
    """No TPU settings, variables or device files: None at once; a Colab address or a name is passed on."""
    from tfrec.training import strategy

    for name in strategy.TPU_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(strategy, "TPU_DEVICE_GLOBS", ())
    assert tfrec.find_tpu() is None
    assert tfrec.find_tpu("my-tpu") == tfrec.TpuLocation("my-tpu", "train.distribute.tpu='my-tpu'")
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert tfrec.find_tpu().target == "grpc://10.0.0.2:8470"


def test_cli_export_goes_through_the_api(capsys, tmp_path):
    """`tfrec export` on a folder that is no run keeps its exit codes and one-line errors."""
    from tfrec.cli.main import main

    assert main(["export", "--run", str(tmp_path)]) == 1
    assert "is not a tfrec run directory" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run:\n  name: x\n")
    assert main(["export", "--run", str(run), "--export-dir", str(tmp_path / "export")]) == 2
    captured = capsys.readouterr()
    assert "holds no exportable model" in captured.err and captured.out == ""
    assert not Path(tmp_path / "export").exists()
