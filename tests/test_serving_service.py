"""The search and recommend pipelines over served toy models, as a library and from the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from serving_toys import (
    TOY_CATALOG, ranker_reference, recommend_reference, retrieval_reference, write_toy_ranker, write_toy_recommenders,
    write_toy_retrieval,
)
from tfrec.cli.main import main
from tfrec.serving.grpc_client import GrpcClient, ServingError
from tfrec.serving.rest_client import RestClient
from tfrec.serving.server import DevServer
from tfrec.serving.service import Hit, ProductCatalog, RecommendService, SearchService, format_hits


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    retrieval = write_toy_retrieval(folder, k=5)
    write_toy_ranker(folder)
    write_toy_recommenders(folder, k=3)
    catalog = {"ids": [p for p, _ in TOY_CATALOG], "titles": [t for _, t in TOY_CATALOG]}
    (retrieval / "assets.extra" / "catalog.json").write_text(json.dumps(catalog))
    return folder


@pytest.fixture(scope="module")
def server(export):
    with DevServer(export, grpc_port=0, rest_port=0) as running:
        yield running


def expected_search(query: str, k: int, candidates: int) -> list[tuple[str, float]]:
    ids, _ = retrieval_reference([query], 5)
    titles = dict(TOY_CATALOG)
    scored = [(pid, ranker_reference(query, pid, titles[pid])) for pid in ids[0][:candidates]]
    return sorted(scored, key=lambda x: -x[1])[:k]  # sorted() is stable: ties keep retrieval order


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_search_retrieves_titles_and_reranks(export, server, protocol):
    catalog = ProductCatalog.from_export(export)
    client = GrpcClient(server.grpc_address) if protocol == "grpc" else RestClient("http://" + server.rest_address)
    with client:
        service = SearchService(client, catalog, candidates=4)
        queries = ["white paint", "led ceiling light", "drill", ""]
        results = service.search_many(queries, k=3)
        plain = SearchService(client, catalog, candidates=4, rerank=False).search("white paint", k=2)
    for query, hits in zip(queries, results):
        want = expected_search(query, 3, 4)
        assert [h.item_id for h in hits] == [pid for pid, _ in want], query
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in want], rtol=1e-5, atol=1e-6)
        assert [h.rank for h in hits] == [1, 2, 3]
        assert all(h.title == dict(TOY_CATALOG)[h.item_id] for h in hits)
    ids, scores = retrieval_reference(["white paint"], 5)
    assert [h.item_id for h in plain] == list(ids[0][:2])
    np.testing.assert_allclose([h.score for h in plain], scores[0][:2], rtol=1e-5)


def test_search_keeps_retrieval_order_when_the_run_did_not_keep_its_ranker(export, server, tmp_path):
    # catalog.json's "rerank": false is what a run whose ranker lost to retrieval on its tuning queries exports.
    from tfrec.serving.catalog_file import catalog_json

    path = tmp_path / "catalog.json"
    path.write_bytes(catalog_json([p for p, _ in TOY_CATALOG], [t for _, t in TOY_CATALOG], rerank=False))
    catalog = ProductCatalog.from_file(path)
    assert catalog.rerank is False and ProductCatalog.from_export(export).rerank is True  # older files: re-rank
    ids, scores = retrieval_reference(["white paint"], 5)
    with GrpcClient(server.grpc_address) as client:
        hits = SearchService(client, catalog, candidates=4).search("white paint", k=3)
        forced = SearchService(client, catalog, candidates=4, rerank=True).search("white paint", k=3)
    assert [h.item_id for h in hits] == list(ids[0][:3])
    np.testing.assert_allclose([h.score for h in hits], scores[0][:3], rtol=1e-5, atol=1e-6)
    assert [h.item_id for h in forced] == [pid for pid, _ in expected_search("white paint", 3, 4)]


def test_recommend_and_similar_items(export, server):
    catalog = ProductCatalog.from_export(export)
    with GrpcClient(server.grpc_address) as client:
        service = RecommendService(client, catalog)
        history = ["100002", "100005", "unknown-item"]
        hits = service.recommend(history, k=3)
        many = service.recommend_many([["100001"], ["100003", "100006"]], k=2)
        similar = service.similar("100007", k=3)
    ids, scores = recommend_reference(history, 3)
    assert [h.item_id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)
    assert hits[0].title == dict(TOY_CATALOG)[ids[0]]
    assert [h.item_id for h in many[0]] == recommend_reference(["100001"], 2)[0]
    assert [h.item_id for h in many[1]] == recommend_reference(["100003", "100006"], 2)[0]
    assert [h.item_id for h in similar] == recommend_reference(["100007"], 3)[0]


def test_cli_search_and_recommend_print_results(export, server, capsys):
    assert main(["search", "white paint", "drill", "--server", server.grpc_address, "--export-dir", str(export),
                 "--candidates", "4", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "query: white paint" in out and "query: drill" in out
    top = expected_search("white paint", 1, 4)[0][0]
    assert top in out and dict(TOY_CATALOG)[top] in out
    assert main(["search", "drill", "--rest", server.rest_address, "--export-dir", str(export), "--candidates", "4", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert [r["item_id"] for r in line["results"]] == [pid for pid, _ in expected_search("drill", 10, 4)]
    assert main(["recommend", "--history", "100002,100005", "--server", server.grpc_address, "--export-dir", str(export), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert [r["item_id"] for r in line["results"]] == recommend_reference(["100002", "100005"], 3)[0]
    assert main(["recommend", "--similar", "100007", "--server", server.grpc_address, "--export-dir", str(export)]) == 0
    assert "similar to: 100007" in capsys.readouterr().out


def test_cli_without_catalog_or_server_says_what_is_missing(tmp_path, server, capsys):
    code = main(["recommend", "--history", "100001", "--server", server.grpc_address, "--export-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0 and "no catalog found" in captured.err  # no catalog only loses the titles
    assert recommend_reference(["100001"], 1)[0][0] in captured.out
    code = main(["search", "drill", "--server", server.grpc_address, "--export-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "--no-rerank" in err  # the ranker needs titles: it says how to go on
    code = main(["search", "drill", "--no-rerank", "--server", "127.0.0.1:1", "--export-dir", str(tmp_path), "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 1 and ("UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err), err


def test_catalog_errors_name_the_file(tmp_path):
    bad = tmp_path / "catalog.json"
    bad.write_text("{\"ids\": [1, 2], \"titles\": [\"a\"]}")
    with pytest.raises(ValueError, match="2 ids but 1 titles"):
        ProductCatalog.from_file(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="catalog.json is not a tfrec catalog file"):
        ProductCatalog.from_file(bad)
    with pytest.raises(FileNotFoundError, match="make export"):
        ProductCatalog.from_export(tmp_path)
    with pytest.raises(ValueError, match="needs the catalog"):
        SearchService(object(), None)
    assert "(no results)" in format_hits([])
    assert "1." in format_hits([Hit(1, "7", "t" * 100, 0.5, 0.4)])


def test_unknown_model_is_a_clear_serving_error(server):
    with GrpcClient(server.grpc_address, retries=0) as client:
        with pytest.raises(ServingError) as raised:
            SearchService(client, None, rerank=False, retrieval_model="nope").search("drill")
    assert raised.value.code == "NOT_FOUND" and "nope" in str(raised.value)
