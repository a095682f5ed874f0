"""The one-call ``search`` SavedModel: retrieval and re-ranking in one graph, the numbers of the two calls.

Reads the session's small Home Depot search run and its export (``search_run``, ``search_export``);
a second export, of the ``search`` model alone with ``--search-k 3``, is written for the slow test
of K and of the TF Serving contract.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cli_runs import ROOT, in_repository_root
from tfrec.cli.main import main

LONG_QUERY = "1/2 in. x 10 ft. type l copper pipe for water lines " * 150  # ~8 KB: the tokenizer truncates it


def valid_queries(run_dir: Path) -> list[str]:
    """The distinct queries of the run's valid judgments (the slice the run trained on), sorted."""
    from tfrec.config.loader import load_config
    from tfrec.data.datasets import load_data
    from tfrec.data.slices import slice_for_config
    from tfrec.runs import RunFolder

    loaded = load_config(RunFolder(run_dir).config, [])
    data = slice_for_config(load_data(loaded), loaded.config)
    return sorted(set(data.valid.queries.astype(str)))


class RecordingClient:
    """A LocalClient that records the model of every predict call; ``models`` may name fewer than the export holds."""

    def __init__(self, client, models=None) -> None:
        self.client, self.calls, self._models = client, [], models

    @property
    def models(self) -> list[str]:
        """The models served: those given, else the wrapped client's."""
        return self.client.models if self._models is None else self._models

    def predict_batched(self, model: str, inputs: dict, **kw) -> dict:
        """Record ``model``, then predict."""
        self.calls.append(model)
        return self.client.predict_batched(model, inputs, **kw)


class StatusClient(RecordingClient):
    """What a gRPC/REST client offers instead of ``models``: ``status(model)``, answered from the export folder."""

    models = None  # type: ignore[assignment]  (servers are asked, not listed)

    def __init__(self, client, served=None) -> None:
        super().__init__(client)
        self.asked, self.served = [], client.models if served is None else served

    def status(self, model: str, **kw) -> list[dict]:
        """AVAILABLE for each version on disk; NOT_FOUND for a model not served (as a server answers)."""
        from tfrec.serving.grpc_client import ServingError

        self.asked.append(model)
        if model not in self.served:
            raise ServingError("NOT_FOUND", "model %r not found" % model, model, "GetModelStatus")
        return [{"version": v, "state": "AVAILABLE", "error": ""} for v in self.client.versions(model)]


@pytest.fixture(scope="module")
def queries(search_run) -> list[str]:
    return valid_queries(search_run) + ["", LONG_QUERY]


@pytest.fixture(scope="module")
def client(search_export):
    from tfrec.serving.local import LocalClient

    with LocalClient(search_export) as local:
        yield local


@pytest.fixture(scope="module")
def catalog(search_export):
    from tfrec.serving.service import ProductCatalog

    return ProductCatalog.from_export(search_export)


@pytest.fixture(scope="module")
def search_k3(search_run, tmp_path_factory) -> Path:
    """`tfrec export RUN --search-k 3`, writing only the ``search`` model (the other two are the shared export's)."""
    import tfrec.search.export as search_export_module
    from tfrec.serving.publish import ExportSet

    def search_only(models, export_dir, version=None, run="", scann=False):
        with ExportSet(export_dir, [search_export_module.SEARCH_NAME], run=run, version=version) as export:
            search_export_module._save_search(export, models)
        return export.published

    folder = tmp_path_factory.mktemp("export_k3")
    with pytest.MonkeyPatch.context() as patch, in_repository_root():
        patch.setattr(search_export_module, "export_search", search_only)
        assert main(["export", str(search_run), "--export-dir", str(folder), "--search-k", "3"]) == 0
    return folder


def test_one_call_gives_the_two_calls_top_k(client, catalog, queries):
    """Same ids, titles, ranker and retrieval scores as retrieval then ranker, on the run's valid queries."""
    from tfrec.serving.service import SearchService

    assert len(queries) >= 10
    one = SearchService(client, catalog, one_call=True).search_many(queries, k=10)
    two = SearchService(client, catalog, one_call=False).search_many(queries, k=10)
    for query, a, b in zip(queries, one, two):
        assert len(a) == 10, query[:40]
        assert [h.item_id for h in a] == [h.item_id for h in b], query[:40]
        assert [h.title for h in a] == [h.title for h in b] == [catalog.title(h.item_id) for h in a]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=0, atol=1e-4)
        np.testing.assert_allclose([h.retrieval_score for h in a], [h.retrieval_score for h in b], rtol=0, atol=1e-4)
        assert all(x.score >= y.score for x, y in zip(a, a[1:]))  # ordered by the ranker

    # One query alone takes the graph's single-chunk path; a batch takes its chunked loop: same answers.
    alone = SearchService(client, catalog, one_call=True).search(queries[0], k=10)
    assert [h.item_id for h in alone] == [h.item_id for h in one[0]]
    out = client.predict("search", {"query": queries[:3]})
    assert out["product_ids"].shape == out["titles"].shape == out["scores"].shape == out["retrieval_scores"].shape == (3, 10)
    assert out["scores"].dtype == out["retrieval_scores"].dtype == np.float32
    assert out["candidates"].tolist() == [20 if catalog.rerank else 0] * 3  # the run's retrieval.top_k re-ranked, or none


def test_search_model_holds_one_copy_of_each_catalog_matrix(search_export, catalog):
    import tensorflow as tf

    saved = tf.train.list_variables(str(search_export / "search" / "1" / "variables" / "variables"))
    matrices = {name: shape for name, shape in saved if len(shape) == 2 and shape[0] == len(catalog)}
    assert sorted(n.split("/")[-3] for n in matrices) == ["catalog_dense", "catalog_zero"], matrices
    ranker = tf.train.list_variables(str(search_export / "search_ranker" / "1" / "variables" / "variables"))
    # the separate ranker keeps its own copies (it scores any pair sent to it)
    assert len([s for _, s in ranker if len(s) == 2 and s[0] == len(catalog)]) == 2


def test_service_uses_the_search_model_when_served(client, catalog):
    """Auto mode: one call when the client serves ``search`` and it answers as the two calls would."""
    from tfrec.serving.service import SearchService

    assert catalog.rerank, "the session's search run keeps its ranker (the cases below depend on it)"
    recorded = RecordingClient(client)
    service = SearchService(recorded, catalog)
    service.search("cordless drill")
    service.search_many(["white paint", "deck screws"], k=5)
    assert recorded.calls == ["search", "search"]

    # Fewer candidates than the model re-ranks: its answer would differ; the service goes back to two calls for good.
    fewer = RecordingClient(recorded.client)
    service = SearchService(fewer, catalog, candidates=10)
    first = service.search("cordless drill", k=5)
    service.search("white paint", k=5)
    assert fewer.calls == ["search", "search_retrieval", "search_ranker", "search_retrieval", "search_ranker"]
    expected = SearchService(recorded.client, catalog, candidates=10, one_call=False).search("cordless drill", k=5)
    assert [h.item_id for h in first] == [h.item_id for h in expected]
    with pytest.raises(ValueError, match="one_call=True"):
        SearchService(recorded.client, catalog, candidates=10, one_call=True).search("cordless drill")

    # Retrieval order asked of a run that re-ranks: two calls, never the search model again.
    unranked = RecordingClient(recorded.client)
    SearchService(unranked, catalog, rerank=False).search_many(["drill", "paint"], k=3)
    assert unranked.calls == ["search", "search_retrieval"]

    # An export without the search model: two calls from the start.
    older = RecordingClient(client, models=["search_retrieval", "search_ranker"])
    SearchService(older, catalog).search("cordless drill")
    assert older.calls == ["search_retrieval", "search_ranker"]

    # Server clients are asked for the model's status once.
    asking = StatusClient(recorded.client)
    service = SearchService(asking, catalog)
    service.search("drill")
    service.search("paint")
    assert asking.asked == ["search"] and asking.calls == ["search", "search"]
    missing = StatusClient(client, served=["search_retrieval", "search_ranker"])
    service = SearchService(missing, catalog)
    service.search("drill")
    service.search("paint")
    assert missing.asked == ["search"] and missing.calls == ["search_retrieval", "search_ranker"] * 2


@pytest.mark.slow
def test_search_k_and_the_tf_serving_contract(search_k3, client, capsys):
    """--search-k 3 gives [None, 3] outputs, the first 3 of the K=10 model; the TF-only check passes."""
    from tfrec.serving.local import LocalClient

    assert sorted(p.name for p in search_k3.iterdir() if (p / "1" / "saved_model.pb").is_file()) == ["search"]
    assert json.loads((search_k3 / "search" / "1" / "assets.extra" / "catalog.json").read_text())["rerank"] is True
    with LocalClient(search_k3) as k3:
        small = k3.predict("search", {"query": ["cordless drill", ""]})
    full = client.predict("search", {"query": ["cordless drill", ""]})
    assert small["product_ids"].shape == (2, 3)
    assert small["product_ids"].tolist() == full["product_ids"][:, :3].tolist()
    np.testing.assert_allclose(small["scores"], full["scores"][:, :3], rtol=0, atol=1e-5)

    capsys.readouterr()
    with in_repository_root():
        code = main(["export", "--check", "--export-dir", str(search_k3)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "search v1: OK" in out and "warm-up 2/2 replayed" in out, out


def test_tfrec_search_over_a_server_of_the_search_model_alone(search_export, client, capsys):
    """A server that serves only ``search``: `tfrec search` answers through it (one call, gRPC status asked)."""
    from tfrec.serving.server import DevServer

    with DevServer(search_export, grpc_port=0, rest_port=None, models=["search"]) as server:
        code = main(["search", "cordless drill", "--server", server.grpc_address, "--export-dir", str(search_export),
                     "-k", "3", "--json", "--timeout", "120"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = client.predict("search", {"query": ["cordless drill"]})
    assert [h["item_id"] for h in printed["results"]] == expected["product_ids"][0, :3].tolist()
    assert [h["title"] for h in printed["results"]] == expected["titles"][0, :3].tolist()


MEMORY_BOUND_MB = 300


def test_hostile_requests_to_the_search_model_stay_within_the_memory_bound(search_run, search_export):
    """64 KiB queries of the costliest word, alone and as 64 rows, through the SavedModel in a TF-only process."""
    from tfrec.lexical import LexicalIndex

    index = LexicalIndex.load(search_run / "lexical")
    term = int(np.argmax(np.diff(index.term_offsets)))
    word = min((raw for raw, t in zip(index.raw_tokens, index.raw_to_term) if t == term), key=len)
    script = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[3])
        import tensorflow as tf
        import tensorflow_text  # noqa: F401
        from memory_child import measure
        serve = tf.saved_model.load(sys.argv[1] + "/search/1").signatures["serving_default"]
        hostile = " ".join([sys.argv[2]] * 32768)[: 64 * 1024]
        serve(query=tf.constant(["cordless drill", "paint"]))
        report = {}
        for case, rows in (("one_row", 1), ("many_rows", 64)):
            feed = tf.strings.join([tf.constant(["%d " % i for i in range(rows)]), tf.constant([hostile] * rows)])
            report[case] = measure(case, lambda: serve(query=feed)["product_ids"].shape, 2000)
        print(json.dumps(report))
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(search_export), word, str(ROOT / "tests")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for case in ("one_row", "many_rows"):
        assert report[case]["error"] is None, report
        assert report[case]["growth_mb"] < MEMORY_BOUND_MB, report


def test_ranker_features_read_existing_float16_catalog_variables():
    """Given a HybridScorer's float16 matrices, RankerFeatures keeps them (no copy) and gathers rows as float32."""
    import tensorflow as tf

    from tfrec.lexical import LexicalIndex, LexicalScorer
    from tfrec.search.features import RankerFeatures
    from tfrec.search.hybrid import HybridScorer

    titles = ["cordless drill 18v", "white interior paint", "copper pipe 10 ft"]
    rng = np.random.default_rng(0)
    dense, zero = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    hybrid = HybridScorer(dense, zero, dtype="float16")
    lexical = LexicalScorer(LexicalIndex.build(titles, ["drill"]))
    features = RankerFeatures(lexical.pair_features, hybrid.catalog_dense, hybrid.catalog_zero)
    assert features.catalog["product_vector"] is hybrid.catalog_dense and features.catalog["product_zero"] is hybrid.catalog_zero
    out = features({"query": tf.constant(["drill", "paint"]), "query_vector": tf.zeros([2, 8]), "query_zero": tf.zeros([2, 5]),
                    "product_id": tf.constant([["a", "c"], ["b", "a"]]), "title": tf.constant([[titles[0], titles[2]], [titles[1], titles[0]]]),
                    "product_row": tf.constant([[0, 2], [1, 0]])})
    assert out["product_vector"].dtype == out["product_zero"].dtype == tf.float32
    rows = np.array([[0, 2], [1, 0]])
    np.testing.assert_array_equal(out["product_vector"].numpy(), dense.astype(np.float16).astype(np.float32)[rows])
    np.testing.assert_array_equal(out["product_zero"].numpy(), zero.astype(np.float16).astype(np.float32)[rows])
    assert out["lexical"].numpy()[0, 0, 0] > 0  # "drill" in the drill's title: a BM25 score


def test_ranker_features_take_catalog_rows_lexical_side_precomputed(shared_datasets):
    """With catalog_pair_features, rows >= 0 read the precomputed titles, -1 and padding as before: the same lexical inputs."""
    import tensorflow as tf

    from conftest import homedepot_titles_and_queries
    from tfrec.lexical import LexicalIndex, LexicalScorer
    from tfrec.lexical.scorer import CatalogPairFeatures
    from tfrec.search.features import RankerFeatures

    titles, queries = homedepot_titles_and_queries(shared_datasets, 200, 6)
    titles = titles + ["", "ab"]
    lexical = LexicalScorer(LexicalIndex.build(titles, queries))
    dense, zero = np.zeros((len(titles), 4), np.float32), np.zeros((len(titles), 3), np.float32)
    class Zeros:
        """Encoders of constant vectors: the products outside the catalog need some (only their lexical inputs are compared)."""

        dim, output_dim = 4, 3

        def product_vectors(self, product_id, title):
            return tf.zeros([tf.size(title), self.dim])

        def __call__(self, texts, training=False):
            return tf.zeros([tf.size(texts), self.output_dim])

    encoders = {"retrieval": Zeros(), "zero_encoder": Zeros()}
    plain = RankerFeatures(lexical.pair_features, dense, zero, **encoders)
    fast = RankerFeatures(lexical.pair_features, dense, zero, catalog_pair_features=CatalogPairFeatures(lexical, titles).pair_features,
                          **encoders)
    rows = np.argsort(-lexical.catalog_scores(tf.constant(queries)).numpy(), axis=1, kind="stable")[:, :12]
    rows[:, -2:] = [len(titles) - 2, len(titles) - 1]
    item_titles = np.asarray(titles, object)[rows]
    rows[1, 0] = rows[4, 0] = -1  # products outside the catalog (their best titles): their titles are tokenized
    mask = np.ones(rows.shape, bool)
    mask[2, 5:] = False
    inputs = {"query": tf.constant(queries), "query_vector": tf.zeros([6, 4]), "query_zero": tf.zeros([6, 3]),
              "product_id": tf.constant(np.where(rows >= 0, rows.astype(str), "new").astype(object)),
              "title": tf.constant(item_titles.astype(object)), "product_row": tf.constant(rows), "mask": tf.constant(mask)}
    expected, got = plain(inputs)["lexical"].numpy(), fast(inputs)["lexical"].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert not got[2, 5:].any() and got[1, 0, 0] > 0 and got[4, 0, 0] > 0  # padding stays zero; new products get BM25
    assert (got[..., 0] > 0).sum() > 15
