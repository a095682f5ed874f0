"""MovieLens 100K: the tutorials' split, the TFRS recipe, the multi-task model (shared bottom, MMoE) and its run."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT

from tfrec.config.loader import load_config
from tfrec.data.datasets import load_data
from tfrec.data.tables import RecommendationData
from tfrec.recommend import movielens as ml
from tfrec.reports.evaluation import evaluate_run

tf = ml.tf

# The first rows of the permutation the tutorial's own code draws (eager, tf.random.set_seed(42),
# Dataset.range(100_000).shuffle(100_000, seed=42, reshuffle_each_iteration=False)).
TUTORIAL_FIRST_ROWS = [50633, 33113, 42358, 88434, 45144, 4086, 12219, 13956, 82858, 91309]


@pytest.fixture(scope="module")
def movielens(shared_datasets):
    """The real MovieLens 100K, loaded through configs/movielens.yaml."""
    loaded = load_config(ROOT / "configs" / "movielens.yaml", ["data.dir=%s" % (shared_datasets / "movielens-100k")])
    return loaded, load_data(loaded)


@pytest.fixture(scope="module")
def split(movielens):
    return ml.tutorial_split(len(movielens[1].interactions))


def test_tutorial_split_reproduces(split):
    """80,000 / 20,000 disjoint rows, drawn by the tutorial's shuffle, the same on every call."""
    assert len(split.train) == 80_000 and len(split.test) == 20_000
    assert len(np.intersect1d(split.train, split.test)) == 0
    assert len(np.unique(np.concatenate([split.train, split.test]))) == 100_000
    assert split.train[:10].tolist() == TUTORIAL_FIRST_ROWS
    again = ml.tutorial_split(100_000)
    assert np.array_equal(again.train, split.train) and np.array_equal(again.test, split.test)


def test_split_sizes_and_holdout_are_checked():
    """Bad sizes and fractions are refused with the numbers named; the holdout is seeded and disjoint."""
    with pytest.raises(ValueError, match="n_rows"):
        ml.tutorial_split(10, train_size=8, test_size=5)
    fit, holdout = ml.holdout_split(np.arange(1000), 0.1, seed=3)
    assert len(holdout) == 100 and len(fit) == 900 and not set(fit) & set(holdout)
    assert np.array_equal(ml.holdout_split(np.arange(1000), 0.1, seed=3)[1], holdout)
    with pytest.raises(ValueError, match="fraction"):
        ml.holdout_split(np.arange(10), 1.5, seed=0)
    assert ml.tutorial_sizes(100_000) == (80_000, 20_000) and ml.tutorial_sizes(1000) == (800, 200)


def test_movie_titles_group_repeated_titles(movielens):
    """1,682 movies share 1,664 titles; each catalog row maps to its title, texts are 'title | genres'."""
    titles = ml.movie_titles(movielens[1].catalog)
    assert len(titles) == 1_664 and len(titles.of_row) == 1_682
    assert titles.titles[titles.of_row[0]] == "Toy Story (1995)"
    assert titles.texts[titles.of_row[0]] == "Toy Story (1995) | Animation, Children's, Comedy"


def test_top_k_accuracy_counts_ties_for_the_positive():
    """Hit at k when fewer than k candidates score strictly above the positive (FactorizedTopK's in_top_k)."""
    candidates = np.array([[3.0], [2.0], [2.0], [1.0]], np.float32)  # rows 1 and 2 share a score (a repeated title)
    queries = np.ones((3, 1), np.float32)
    result = ml.top_k_accuracy(queries, candidates, np.array([0, 2, 3]), ks=(1, 2, 3))
    assert result == {"top_1_accuracy": pytest.approx(1 / 3), "top_2_accuracy": pytest.approx(2 / 3), "top_3_accuracy": 2 / 3}
    with pytest.raises(ValueError, match="positive"):
        ml.top_k_accuracy(queries, candidates, np.array([0, 1, 9]))


def test_recipe_trains_better_than_random(movielens, split):
    """The TFRS recipe on two batches of 8,192 pairs beats an untrained model on FactorizedTopK top-100."""
    from tfrec.benchmarks import movielens as bench

    data = movielens[1]
    small = ml.TutorialSplit(train=split.train[:16_384], test=split.test[:4_000])
    titles = data.catalog.texts["title"].astype(str)
    untrained = bench.recipe_model(np.unique(data.interactions.users.astype(str)), np.unique(titles), titles)
    test_users = data.interactions.users[small.test].astype(str)
    random = ml.top_k_accuracy(untrained.user_model(tf.constant(test_users)).numpy(),
                               untrained.movie_model(tf.constant(titles)).numpy(), data.interactions.items[small.test])
    trained = bench.run_recipe(data, small)
    assert trained["train_batch_top_k_metrics"] and trained["train_pairs"] == 16_384 and trained["epochs"] == 3
    factorized = trained["factorized_top_k_evaluate"]["top_100_categorical_accuracy"]  # the tutorial's model.evaluate
    assert factorized > random["top_100_accuracy"] + 0.05
    assert factorized == pytest.approx(trained["top_100_accuracy"], abs=0.005)  # tfrec's evaluator agrees


def _small_problem(n_pairs: int = 600, n_titles: int = 40, n_users: int = 30, seed: int = 0):
    """Generated titles with random unit text vectors and random rated pairs."""
    rng = np.random.default_rng(seed)
    names = np.array(["Movie %02d (1990)" % i for i in range(n_titles)], dtype=object)
    titles = ml.MovieTitles(titles=names, of_row=np.arange(n_titles, dtype=np.int32), texts=names)
    vectors = rng.normal(size=(n_titles, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = rng.integers(0, n_titles, n_pairs).astype(np.int32)
    pairs = ml.Pairs(users=np.array([str(u) for u in rng.integers(0, n_users, n_pairs)], dtype=object), rows=rows,
                     titles=rows, ratings=rng.integers(1, 6, n_pairs).astype(np.float32))
    return titles, vectors, pairs


def _batch(pairs: ml.Pairs, n: int = 64) -> dict:
    return next(iter(ml.pairs_dataset(pairs, n, seed=0, epoch=0)))


@pytest.mark.parametrize("mixture", ml.MIXTURES)
def test_loss_is_the_weighted_sum(mixture):
    """compute_loss = rating_weight * rating loss + retrieval_weight * retrieval loss."""
    titles, vectors, pairs = _small_problem()
    settings = ml.MovieLensSettings(mixture=mixture, rating_weight=0.5, retrieval_weight=2.0, dim=8, expert_units=8,
                                    rating_units=(8,), dropout=0.0, id_dropout=0.0)
    model = ml.build_model(settings, titles, vectors, pairs)
    batch = _batch(pairs)
    parts = model.task_losses(batch)
    assert float(parts["retrieval"]) > 0 and float(parts["rating"]) > 0
    expected = 0.5 * float(parts["rating"]) + 2.0 * float(parts["retrieval"])
    assert float(model.compute_loss(batch)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mixture", ml.MIXTURES)
def test_zero_rating_weight_leaves_the_rating_head_untouched(mixture):
    """rating_weight 0: a training step moves the retrieval towers but not one weight of the rating head."""
    titles, vectors, pairs = _small_problem()
    settings = ml.MovieLensSettings(mixture=mixture, rating_weight=0.0, retrieval_weight=1.0, dim=8, expert_units=8,
                                    rating_units=(8,), learning_rate=0.05)
    model = ml.build_model(settings, titles, vectors, pairs)
    batch = _batch(pairs)
    model.task_losses(batch)  # builds every layer
    head_before = [w.numpy().copy() for w in model.rating_head.weights]
    users_before = model.user_embedding.embeddings.numpy().copy()
    logs = model.train_step(batch)
    assert np.isfinite(float(logs["loss"]))
    for before, after in zip(head_before, model.rating_head.weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert not np.allclose(users_before, model.user_embedding.embeddings.numpy())


def test_mmoe_gates_are_per_task_softmaxes():
    """Each task's gate is a softmax over the experts (sums to 1) and the tasks' gates differ."""
    layer = ml.TaskMixture(6, mixture="mmoe", experts=3, units=5)
    x = tf.random.stateless_normal([7, 4], seed=[1, 2])
    outputs = layer(x)
    gates = layer.gates(x)
    assert set(gates) == set(ml.TASKS) and all(outputs[t].shape == (7, 6) for t in ml.TASKS)
    for gate in gates.values():
        assert gate.shape == (7, 3) and float(tf.reduce_min(gate)) >= 0.0
        np.testing.assert_allclose(tf.reduce_sum(gate, axis=-1).numpy(), 1.0, rtol=1e-6)
    assert not np.allclose(gates["retrieval"].numpy(), gates["rating"].numpy())
    assert not np.allclose(outputs["retrieval"].numpy(), outputs["rating"].numpy())
    shared = ml.TaskMixture(6, mixture="shared_bottom")
    same = shared(x)
    np.testing.assert_array_equal(same["retrieval"].numpy(), same["rating"].numpy())
    with pytest.raises(ValueError, match="no gates"):
        shared.gates(x)


def test_history_leaves_the_pairs_own_movie_out():
    """A training pair's history mean excludes its own movie; an evaluation pair's uses all training movies."""
    titles, vectors, pairs = _small_problem(n_pairs=3, n_titles=5)
    pairs = replace(pairs, users=np.array(["u", "u", "u"], dtype=object), rows=np.array([0, 1, 2], np.int32),
                    titles=np.array([0, 1, 2], np.int32))
    model = ml.build_model(ml.MovieLensSettings(dim=4, expert_units=4), titles, vectors, pairs)
    inputs = model.user_inputs(tf.constant(["u", "u"]), tf.constant([0, 0]), tf.constant([1.0, 0.0])).numpy()
    np.testing.assert_allclose(inputs[0, 4:], vectors[[1, 2]].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(inputs[1, 4:], vectors[[0, 1, 2]].mean(axis=0), rtol=1e-5)


def test_settings_refuse_bad_values():
    """Unknown mixtures and all-zero weights are refused with the value named."""
    with pytest.raises(ValueError, match="mixture"):
        ml.MovieLensSettings(mixture="moe")
    with pytest.raises(ValueError, match="both 0"):
        ml.MovieLensSettings(rating_weight=0.0, retrieval_weight=0.0)


def test_config_rejects_an_all_zero_weighting(in_repo):
    """A weighting of [0, 0] in the config names the key."""
    from tfrec.config.loader import ConfigError

    with pytest.raises(ConfigError, match="weightings"):
        load_config("configs/movielens.yaml", ["recommendation.multitask.weightings=[[0, 0]]"], resolve_data_dir=False)


def test_train_movielens_writes_every_weighting(in_repo, files, movielens, tmp_path):
    """On a 3,000-rating slice, one epoch each: metrics.json holds every (mixture, weighting) with test metrics."""
    _, data = movielens
    loaded = load_config("configs/movielens.yaml", [
        "recommendation.epochs=1", "recommendation.multitask.weightings=[[0.0, 1.0], [1.0, 1.0]]",
        "recommendation.multitask.expert_units=16", "recommendation.dim=16",
    ])
    log = data.interactions
    keep = slice(0, 3000)
    small_log = replace(log, users=log.users[keep], items=log.items[keep], timestamps=log.timestamps[keep], ratings=log.ratings[keep])
    small = RecommendationData(data.catalog, data.train, data.valid, interactions=small_log, name=data.name)
    metrics = ml.train_movielens(loaded, small, tmp_path, progress=False)
    written = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert written["split"]["train"] == 2400 and written["split"]["test"] == 600
    combos = {(r["mixture"], r["rating_weight"], r["retrieval_weight"]) for r in written["runs"]}
    # The configured weighting (1, 1) is trained once, not again as a listed one.
    assert combos == {(m, w[0], w[1]) for m in ml.MIXTURES for w in [(1.0, 1.0), (0.0, 1.0)]} and len(written["runs"]) == 4
    for run in written["runs"]:
        assert 0.0 <= run["test"]["top_100_accuracy"] <= 1.0 and run["test"]["rating_rmse"] > 0
    assert metrics["configured"]["mixture"] == "shared_bottom" and metrics["configured"]["rating_weight"] == 1.0
    evaluate_run(tmp_path)  # the report is rendered from metrics.json, as `tfrec train` does once the pipeline returns
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "mmoe" in report and "Top-100 acc." in report and (tmp_path / "report.html").is_file()
