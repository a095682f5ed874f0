"""Sequential recommendation end to end on a real Amazon Scientific slice: train, evaluate, report, export, serve.

One module-scoped `tfrec train` (300 users, a small Transformer, 2 epochs; under a minute on 2
cores once the item text vectors are cached) feeds every test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_runs import export_run, in_repository_root, train_run
from tfrec.cli.main import main

SLICE = [
    "data.max_users=300", "recommendation.epochs=2", "recommendation.patience=1", "recommendation.encoder_dim=32",
    "recommendation.transformer_layers=1", "recommendation.max_history=20", "recommendation.top_k=20",
    "evaluation.bootstrap_resamples=100", "train.progress=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_datasets):
    return train_run(tmp_path_factory.mktemp("recommend"), "configs/amazon_scientific.yaml", SLICE, "amazon-scientific")


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_run(run_dir, tmp_path_factory.mktemp("export"))


def test_metrics_compare_the_model_with_both_baselines(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "valid" and metrics["exclude_history"] is False
    assert metrics["n_users"] == 300 and metrics["n_items"] == 1585
    systems = metrics["systems"]
    assert set(systems) == {"popularity", "zero_shot_text", "tfrec_transformer"}
    for system in systems.values():
        assert 0.0 <= system["recall@10"] <= system["recall@50"] <= 1.0
        assert 0.0 <= system["ndcg@10"] <= system["ndcg@50"] <= 1.0
        assert 0.0 < system["coverage@10"] <= 1.0 and system["novelty@10"] > 0
    # The residual towers start as the zero-shot text model, so even 2 epochs on 300 users beat popularity.
    assert systems["tfrec_transformer"]["recall@10"] > systems["popularity"]["recall@10"]
    versus = {(s["system"], s["metric"]) for s in metrics["significance"]}
    assert ("tfrec_transformer", "recall@10") in versus
    sel = metrics["training"]["selection"]
    assert 1 <= sel["best_epoch"] <= sel["epochs_run"] <= 2 and sel["holdout_examples"] == 300
    holdout = metrics["training"]["holdout"]
    assert set(holdout) == {"recall@10", "ndcg@10"} and 0.0 <= holdout["ndcg@10"] <= holdout["recall@10"] <= 1.0
    assert metrics["seen_cold"]["valid_targets"] == 300
    assert {"item tower", "zero-shot text"} <= set(metrics["similar_items"])
    saved = np.load(run_dir / "per_query.npz")
    assert len(set(saved["keys"])) == 300
    np.testing.assert_allclose(saved["tfrec_transformer/recall@10"].mean(), systems["tfrec_transformer"]["recall@10"])


def test_typed_metrics_give_the_metrics_json_layout():
    """RecommendationMetrics.to_json() is metrics.json: its keys, in their order, with optional parts left out."""
    from tfrec.recommend.metrics import (EpochSelection, RankingMetrics, RecommendationMetrics, SeenCold, SimilarItems,
                                         TrainingSummary)

    ranking = RankingMetrics(n_users=2, n_items=5, ks=[10], exclude_history=False, reference="popularity", beyond_accuracy_k=10,
                             novelty_smoothing="add-one", systems={"popularity": {"recall@10": 0.5}}, significance=[])
    history = [{"loss": 2.0, "val_ndcg@10": 0.25}, {"loss": 1.0, "val_ndcg@10": 0.125}]
    selection = EpochSelection(epochs_run=2, best_epoch=1, history=history, holdout_examples=2, train_examples=4, stopped_early=False)
    assert selection.holdout_metrics() == {"ndcg@10": 0.25}
    training = TrainingSummary(selection, selection.holdout_metrics(), refit=False)
    metrics = RecommendationMetrics(ranking, SeenCold(2, 1, {"popularity": {"seen": {"recall@10": 1.0}}}),
                                    SimilarItems(2, {"item tower": {"recall@10": 0.5}}, [{"item": "a", "similar": ["b"]}]),
                                    training, "popularity", {"evaluation": 0.1})
    written = metrics.to_json()
    assert list(written) == ["n_users", "n_items", "ks", "exclude_history", "reference", "beyond_accuracy_k", "novelty_smoothing",
                             "systems", "significance", "seen_cold", "similar_items", "training", "model", "split", "seconds"]
    assert written["split"] == "valid" and json.loads(json.dumps(written)) == written
    assert list(written["training"]) == ["selection", "holdout", "refit"]  # examples_per_second only after a refit
    assert list(written["seen_cold"]) == ["valid_targets", "cold_targets", "popularity"]
    assert list(written["similar_items"]) == ["examples", "note", "item tower", "samples"]
    refit = TrainingSummary(selection, {}, refit=True, examples_per_second=12.5).to_json()
    assert refit["examples_per_second"] == 12.5 and refit["selection"]["best_epoch"] == 1


def test_report_states_the_exclusion_policy(run_dir):
    md = (run_dir / "report.md").read_text()
    assert "NOT excluded" in md and "tfrec transformer" in md
    html = (run_dir / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 5  # recall, NDCG, beyond accuracy, per user, training curves
    assert {"beyond_accuracy.png", "per_user.png", "training.png"} <= {p.name for p in run_dir.glob("*.png")}
    assert "Per-user results" in md and "Training curves" in md


def test_export_serves_the_model_the_evaluation_used(run_dir, exported):
    """The SavedModel's top items for a raw-id history equal the rebuilt model's own ranking."""
    import tensorflow as tf

    from tfrec.recommend.stages.artifacts import load_recommender
    from tfrec.recommend.train import item_matrix, user_matrix

    model, data, settings = load_recommender(run_dir)
    assert settings["top_k"] == 20
    # The rebuilt model is the trained one: it reproduces the saved valid metric on the run's 300 users.
    from tfrec.evaluation.recommend import rank_metrics, top_k_from_vectors

    users = json.loads((run_dir / "metrics.json").read_text())
    keys = np.load(run_dir / "per_query.npz")["keys"]
    valid = data.valid.take(np.isin(data.valid.users.astype(str), keys))
    rows, _ = valid.padded_histories(20)
    top = top_k_from_vectors(user_matrix(model, rows), item_matrix(model), 10)
    assert rank_metrics(top, valid.targets, [10])["recall@10"] == pytest.approx(users["systems"]["tfrec_transformer"]["recall@10"], abs=1e-9)
    history = data.valid.take(np.arange(3))
    rows, _ = history.padded_histories(20)
    ids = np.where(rows >= 0, data.catalog.ids[np.maximum(rows, 0)], "").astype(str)
    served = tf.saved_model.load(str(exported / "recommender" / "1")).signatures["serving_default"](history=tf.constant(ids))
    scores = user_matrix(model, rows) @ item_matrix(model).T
    expected = data.catalog.ids[np.argsort(-scores, axis=1, kind="stable")[:, :5]].astype(str)
    np.testing.assert_array_equal(served["item_ids"].numpy()[:, :5].astype(str), expected)
    assert served["item_ids"].shape == (3, 20)
    # Past one chunk of rows the batch is scored in steps, with the same answers.
    many = tf.saved_model.load(str(exported / "recommender" / "1")).signatures["serving_default"](history=tf.constant(np.tile(ids, (25, 1))))
    np.testing.assert_array_equal(many["item_ids"].numpy(), np.tile(served["item_ids"].numpy(), (25, 1)))
    np.testing.assert_allclose(many["scores"].numpy(), np.tile(served["scores"].numpy(), (25, 1)), rtol=1e-5, atol=1e-6)
    similar = tf.saved_model.load(str(exported / "similar_items" / "1")).signatures["serving_default"]
    items = tf.constant(np.resize(data.catalog.ids[:7].astype(str), 75))
    np.testing.assert_array_equal(similar(item_id=items)["item_ids"].numpy(), similar(item_id=items[:7])["item_ids"].numpy()[np.arange(75) % 7])


def test_export_can_store_the_catalog_in_float16(run_dir, exported, tmp_path):
    """`tfrec export --catalog-dtype float16` overrides the run's setting: half-size item vectors, the same top items."""
    import tensorflow as tf

    from tfrec.recommend.stages.artifacts import load_recommender

    half = tmp_path / "half"
    with in_repository_root():
        assert main(["export", str(run_dir), "--export-dir", str(half), "--catalog-dtype", "float16"]) == 0
    model32 = tf.saved_model.load(str(exported / "recommender" / "1"))
    model16 = tf.saved_model.load(str(half / "recommender" / "1"))
    assert model32.items.dtype == tf.float32 and model16.items.dtype == tf.float16
    _, data, _ = load_recommender(run_dir)
    rows, _ = data.valid.take(np.arange(20)).padded_histories(20)
    ids = tf.constant(np.where(rows >= 0, data.catalog.ids[np.maximum(rows, 0)], "").astype(str))
    top32 = model32.signatures["serving_default"](history=ids)["item_ids"].numpy()[:, :10]
    top16 = model16.signatures["serving_default"](history=ids)["item_ids"].numpy()[:, :10]
    # The float16 shortlist is re-scored in float32: at most a rare swap at a near-tie.
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top16)]) >= 0.95


def test_export_meets_the_tf_serving_contract(exported, capsys):
    with in_repository_root():
        code = main(["export", "--check", "--export-dir", str(exported)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "recommender" in out and "similar_items" in out


def test_recommend_over_the_dev_server(exported, capsys):
    from tfrec.serving.grpc_client import GrpcClient
    from tfrec.serving.server import DevServer
    from tfrec.serving.service import ProductCatalog, RecommendService

    catalog = ProductCatalog.from_export(exported, model="recommender")
    with DevServer(exported, grpc_port=0, rest_port=0) as server, GrpcClient(server.grpc_address, timeout=120) as client:
        service = RecommendService(client, catalog)
        hits = service.recommend(["B00O47ILVA", "unknown-id", "B006ATU73A"], k=5)
        similar = service.similar(hits[0].item_id, k=5)
        code = main(["recommend", "--similar", hits[0].item_id, "--server", server.grpc_address, "--export-dir", str(exported)])
    assert code == 0 and len(hits) == 5 and len(similar) == 5
    assert hits[0].item_id not in [h.item_id for h in similar]
    assert all(h.title for h in hits), "titles come from the export's catalog.json"
    assert similar[0].item_id in capsys.readouterr().out


def test_evaluate_prints_the_saved_recommendation_table(run_dir, capsys):
    with in_repository_root():
        assert main(["evaluate", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "300 users" in out and "history items not excluded" in out
    assert "Zero-shot MiniLM (history mean)" in out and "tfrec transformer" in out


def test_movielens_sequential_exports_movie_ids_and_leaves_out_the_history(tmp_path, shared_datasets):
    """configs/movielens_sequential.yaml: the sequential model on MovieLens, exported under MovieLens movie ids."""
    import tensorflow as tf

    run = train_run(tmp_path, "configs/movielens_sequential.yaml",
                    ["data.max_users=60", "recommendation.epochs=1", "recommendation.top_k=10", "train.progress=false",
                     "evaluation.bootstrap_resamples=100"], "movielens-sequential")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["exclude_history"] is True and metrics["n_users"] == 60 and metrics["n_items"] == 1682
    assert "History items were excluded" in (run / "report.md").read_text()
    out = export_run(run, tmp_path / "export")
    serve = tf.saved_model.load(str(out / "recommender" / "1")).signatures["serving_default"]
    history = ["50", "172", "181"]  # Star Wars and its two sequels, by MovieLens movie id
    ids = serve(history=tf.constant([history + [""]]))["item_ids"].numpy()[0].astype(str)
    assert len(ids) == 10 and not set(history) & set(ids)
    many = serve(history=tf.constant([history + [""]] * 40 + [["1", "2", "3", "4"]]))["item_ids"].numpy().astype(str)
    assert all(row.tolist() == ids.tolist() for row in many[:40]) and not {"1", "2", "3", "4"} & set(many[40])
    assert all(i.isdigit() and 1 <= int(i) <= 1682 for i in ids)


def test_multitask_task_is_refused_outside_movielens(tmp_path, shared_datasets, capsys):
    with in_repository_root():
        code = main(["train", "--config", "configs/amazon_scientific.yaml", "--set", "recommendation.task=multitask",
                     "--set", "run.output_dir=%s" % tmp_path])
    assert code != 0 and "movielens-100k" in capsys.readouterr().err


def test_your_own_interaction_log_trains_the_sequential_model(tmp_path):
    """data.dataset=interactions-csv (a catalog CSV + one log) goes through the same sequential pipeline."""
    from tfrec.data.synthetic import write_interactions_csv

    folder = write_interactions_csv(tmp_path / "shop", n_items=120, n_users=40)
    run = train_run(tmp_path / "runs", "configs/amazon_scientific.yaml",
                    ["data.dataset=interactions-csv", "data.dir=%s" % folder, "data.interactions.rating_column=rating",
                     "text.max_length=32", "recommendation.epochs=1", "recommendation.encoder=mean", "train.progress=false",
                     "evaluation.bootstrap_resamples=100", "run.name=shop"], "shop")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_items"] == 120 and metrics["n_users"] == 40
    assert (run / "recommender" / "weights.index").is_file()
