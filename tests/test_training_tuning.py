"""keras-tuner searches over configs (tfrec.training.tuning) with the search ranker trial (tfrec.search.tuning).

Tiny searches on a real Home Depot slice: 40 train queries, 1 epoch per trial, one shared objective
(its MiniLM vectors are cached in a temporary folder and computed once for the module).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, write_homedepot_slice
from tfrec import compat
from tfrec.config.loader import ConfigError, load_config
from tfrec.config.schema import RankingConfig, TuneParam
from tfrec.data.datasets import load_data
from tfrec.data.tables import Judgments
from tfrec.evaluation import search as ev
from tfrec.search.ranker_training import train_ranker_head
from tfrec.search.tuning import (
    RANKER_METRICS,
    TUNABLE_KEYS,
    UNTUNABLE,
    RankerTrialObjective,
    holdout_metrics,
    predict_scores,
    trial_objective,
    tune_search,
)
from tfrec.training.trainer import Trainer
from tfrec.training.tuning import (
    BEST_CONFIG,
    RESULTS_FILE,
    check_space,
    hyperparameters_from_space,
    overrides_for,
    project_name,
    run_tuning,
)

tf = compat.tensorflow()

SPACE = [
    {"key": "ranking.learning_rate", "type": "float", "min": 0.001, "max": 0.03, "sampling": "log"},
    {"key": "ranking.loss", "type": "choice", "values": ["softmax", "listmle"]},
    {"key": "ranking.hidden_units", "type": "choice", "values": ["[16]", "[32, 16]"]},
]


def write_config(folder: Path, env: dict, *, algorithm: str = "random", max_trials: int = 3, space=None, **extra) -> Path:
    """A config over the slice with a tune section; ``extra`` sets more keys as {section: {key: value}}."""
    values = {
        "run": {"name": "tiny", "seed": 3},
        "data": {"dataset": "homedepot", "dir": str(env["slice"])},
        "text": {"cache_dir": str(env["cache"])},
        "retrieval": {"top_k": 20},
        "ranking": {"epochs": 1, "negatives": 4},
        "evaluation": {"ks": [10, 20]},
        "train": {"progress": False},
        "tune": {"algorithm": algorithm, "max_trials": max_trials, "max_epochs": 3, "directory": str(folder / "tuning"),
                 "space": SPACE if space is None else space},
    }
    for section, keys in extra.items():
        values[section] = {**values.get(section, {}), **keys}
    path = folder / "tune.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


class Recording:
    """The real objective, recording the config and epochs of each call (the tuner sees the same attributes)."""

    def __init__(self, inner: RankerTrialObjective) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, cfg, trial_epochs):
        self.calls.append((cfg, trial_epochs))
        return self.inner(cfg, trial_epochs)


@pytest.fixture(scope="module")
def env(shared_datasets, files, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tuning")
    out = {"slice": write_homedepot_slice(shared_datasets, root / "homedepot", n_queries=40), "cache": root / "minilm-cache"}
    loaded = load_config(write_config(root, out), [])
    out["objective"] = trial_objective(loaded)  # shared: trial-independent features computed once
    out["data"] = load_data(loaded)
    return out


# ----------------------------------------------------------------------------- the space


def test_space_becomes_hyperparameters_and_overrides_that_round_trip(tmp_path):
    """Floats, ints and choices (numeric ones typed, others YAML text) become overrides the loader reads back exactly."""
    space = [
        TuneParam(key="ranking.learning_rate", type="float", min=1e-5, max=1e-2, sampling="log"),
        TuneParam(key="ranking.epochs", type="int", min=2, max=8, step=2),
        TuneParam(key="ranking.hidden_units", type="choice", values=["[32, 16]", "[8]"]),
        TuneParam(key="ranking.dropout", type="choice", values=["0.1", "0.25"]),
        TuneParam(key="ranking.loss", type="choice", values=["softmax", "listmle"]),
    ]
    hp = hyperparameters_from_space(space)
    assert [p.name for p in hp.space] == [p.key for p in space]
    by_name = {p.name: p for p in hp.space}
    assert by_name["ranking.dropout"].values == [0.1, 0.25]  # numeric choices are numbers (ordered)
    assert by_name["ranking.hidden_units"].values == ["[32, 16]", "[8]"]
    assert (by_name["ranking.epochs"].min_value, by_name["ranking.epochs"].max_value, by_name["ranking.epochs"].step) == (2, 8, 2)

    values = {"ranking.learning_rate": 1.2345678901234e-05, "ranking.epochs": 6, "ranking.hidden_units": "[8]",
              "ranking.dropout": 0.25, "ranking.loss": "listmle", "tuner/epochs": 3, "tuner/trial_id": "0001"}
    overrides = overrides_for(values)
    assert len(overrides) == 5 and not any(o.startswith("tuner/") for o in overrides)
    rc = load_config(None, overrides, resolve_data_dir=False).config.ranking
    assert rc.learning_rate == 1.2345678901234e-05  # exact: a trial's config is the value it was scored with
    assert (rc.epochs, rc.hidden_units, rc.dropout, rc.loss) == (6, [8], 0.25, "listmle")


@pytest.mark.parametrize(
    "entry, where, words",
    [
        ({"key": "ranking.los", "type": "choice", "values": ["softmax"]}, "tune.space[0]", ["ranking.los", "unknown key", "loss"]),
        ({"key": "ranking.loss", "type": "choice", "values": ["softmax", "bogus"]}, "tune.space[0]",
         ["ranking.loss=bogus", "expected one of"]),
        ({"key": "ranking.dropout", "type": "float", "min": 0.1, "max": 1.5}, "tune.space[0]", ["ranking.dropout=1.5", "<= 0.9"]),
        ({"key": "ranking.epochs", "type": "float", "min": 1, "max": 3}, "tune.space[0]", ["ranking.epochs=1.0", "expected int"]),
        ({"key": "ranking.epochs", "type": "int", "min": 1.5, "max": 3}, "tune.space[0].min", ["whole numbers"]),
        ({"key": "ranking.learning_rate", "type": "float", "min": 0.0, "max": 0.1, "sampling": "log"}, "tune.space[0].min", ["log"]),
        ({"key": "ranking.learning_rate", "type": "float", "min": 0.1, "max": 0.01}, "tune.space[0].max", ["greater than min"]),
        ({"key": "tune.max_trials", "type": "int", "min": 1, "max": 3}, "tune.space[0].key", ["tune section"]),
        ({"key": "", "type": "float"}, "tune.space[0].key", ["required"]),
    ],
)
def test_bad_space_entry_is_config_error_naming_it(tmp_path, entry, where, words):
    """A space no trial could use fails before the search, naming the config file, the entry and the key."""
    path = write_config(tmp_path, {"slice": tmp_path, "cache": tmp_path}, space=[entry])
    loaded = load_config(path, [], resolve_data_dir=False)
    with pytest.raises(ConfigError) as err:
        check_space(loaded)
    assert err.value.key == where and err.value.source == str(path)
    for word in words:
        assert word in str(err.value)


def test_space_checked_against_what_a_ranker_trial_reads(tmp_path):
    """Keys a ranker trial ignores, an unknown objective metric and Hyperband's own epochs key are refused."""
    env = {"slice": tmp_path, "cache": tmp_path}
    cases = [
        ({"space": [{"key": "retrieval.temperature", "type": "float", "min": 0.01, "max": 0.1}]}, "tune.space[0]", "retrieval.temperature"),
        ({"space": [{"key": "ranking.candidate_losses", "type": "choice", "values": ["[listmle]"]}]}, "tune.space[0]", "candidate_losses"),
        ({"space": [{"key": "ranking.dense_weight", "type": "float", "min": 0.0, "max": 1.0}]}, "tune.space[0]", "two towers"),
        ({"space": [{"key": "ranking.cross_encoder.epochs", "type": "int", "min": 1, "max": 2}]}, "tune.space[0]", "cross-encoder"),
        ({"tune": {"objective": "recall@100"}}, "tune.objective", "e2e_ndcg@10"),
        ({"algorithm": "hyperband", "space": [{"key": "ranking.epochs", "type": "int", "min": 1, "max": 3}]}, "tune.space", "Hyperband"),
    ]
    for kwargs, where, word in cases:
        tune_extra = kwargs.pop("tune", None)
        path = write_config(tmp_path, env, **kwargs, **({"tune": tune_extra} if tune_extra else {}))
        loaded = load_config(path, [], resolve_data_dir=False)
        check_space(loaded)  # valid config values: only the objective can tell
        with pytest.raises(ConfigError) as err:
            check_space(loaded, RankerTrialObjective)
        assert err.value.key == where and word in str(err.value), str(err.value)
        if where == "tune.space[0]":  # a refused key: the error lists what a trial can tune
            assert "Tunable keys: %s" % ", ".join(TUNABLE_KEYS) in str(err.value)
    # Every key a trial honours passes, retrieval.query_max_terms included.
    path = write_config(tmp_path, env, space=[{"key": "retrieval.query_max_terms", "type": "int", "min": 1, "max": 8}])
    check_space(load_config(path, [], resolve_data_dir=False), RankerTrialObjective)


def test_every_ranking_key_is_tunable_or_refused_with_a_reason():
    """A new ranking.* key must be classified: honoured by trials (TUNABLE_KEYS) or refused with a reason (UNTUNABLE)."""
    for name in RankingConfig.__dataclass_fields__:
        key = "ranking." + name
        assert (key in TUNABLE_KEYS) != (key in UNTUNABLE), key
        assert (RankerTrialObjective.untunable_reason(key) is None) == (key in TUNABLE_KEYS)


def test_bad_space_fails_before_reading_data_or_creating_the_project(tmp_path):
    """tune_search checks the space first: no data folder is needed and no tuner folder appears."""
    path = write_config(tmp_path, {"slice": tmp_path / "missing", "cache": tmp_path}, space=[{"key": "ranking.nope", "type": "float"}])
    with pytest.raises(ConfigError, match="ranking.nope"):
        tune_search(load_config(path, [], resolve_data_dir=False), tmp_path / "out")
    assert not (tmp_path / "tuning").exists() and not (tmp_path / "out").exists()


def test_retrieval_target_is_refused_with_a_reason(tmp_path):
    """tune.target: retrieval was removed: the config no longer loads, and the error says why and what to do."""
    path = write_config(tmp_path, {"slice": tmp_path, "cache": tmp_path}, tune={"target": "retrieval"})
    with pytest.raises(ConfigError) as err:
        load_config(path, [], resolve_data_dir=False)
    assert err.value.key == "tune.target" and "25 min" in str(err.value) and "tune.target: ranker" in str(err.value)


# ----------------------------------------------------------------------------- the objective


def test_objective_never_reads_valid(env):
    """Trials fit and score on disjoint parts of the train queries; valid is dropped by construction."""
    objective, data = env["objective"], env["data"]
    train_queries = set(data.train.queries.astype(str))
    valid_queries = set(data.valid.queries.astype(str))
    fit, holdout = set(objective.fit_queries), set(objective.holdout_queries)
    assert fit | holdout == train_queries and not fit & holdout
    assert len(holdout) == round(0.2 * len(train_queries))  # tune.holdout_fraction
    assert not (fit | holdout) & valid_queries
    held_judgments = [v for v in vars(objective).values() if isinstance(v, Judgments)]
    assert all(set(j.queries.astype(str)) <= train_queries for j in held_judgments)

    cfg = load_config(write_config(Path(env["slice"]).parent, env), []).config
    setup = objective.lists_for(cfg)
    assert set(setup.holdout.queries.astype(str)) == holdout
    # As many training lists as tfrec train's ranker (ranking.holdout_fraction of the train queries), all fit queries.
    assert len(setup.fit_lists.rows) == round(0.25 * len(train_queries))
    assert set(objective.ranker_queries(0.25)) <= fit


def test_objective_is_deterministic_and_scores_the_trial_config(env):
    """The same config scores the same (trials compare); a different config trains a different head."""
    cfg = load_config(write_config(Path(env["slice"]).parent, env), []).config
    first, second = env["objective"](cfg, None), env["objective"](cfg, None)
    assert set(first) == set(RANKER_METRICS) and first == second
    assert all(0.0 <= v <= 1.0 for v in first.values())
    other = load_config(write_config(Path(env["slice"]).parent, env), ["ranking.learning_rate=0.05", "ranking.epochs=3"]).config
    assert env["objective"](other, None) != first


def test_trial_heads_train_on_the_run_path_and_honour_query_max_terms(env):
    """A trial's head is the one train_ranker_head (tfrec train's path) makes; retrieval.query_max_terms changes the features."""
    objective = env["objective"]
    cfg = load_config(write_config(Path(env["slice"]).parent, env), []).config
    setup = objective.lists_for(cfg)
    head = objective.train_head(cfg, setup)
    again, result = train_ranker_head(cfg, Trainer(seed=cfg.run.seed, progress=False), setup.fit_inputs, setup.fit_lists,
                                      setup.vocabulary, loss=cfg.ranking.loss, learning_rate=cfg.ranking.learning_rate,
                                      epochs=cfg.ranking.epochs)
    assert result.epochs_run == cfg.ranking.epochs == 1 and "ndcg@10" in result.history[-1]
    np.testing.assert_allclose(predict_scores(head, setup.judged_inputs), predict_scores(again, setup.judged_inputs), rtol=1e-6)

    short = load_config(write_config(Path(env["slice"]).parent, env), ["retrieval.query_max_terms=1"]).config
    one_word = objective.lists_for(short)
    multi_word = np.array([len(q.split()) > 1 for q in setup.holdout.queries.astype(str)])
    assert multi_word.any()
    lexical, lexical_short = setup.judged_inputs["lexical"], one_word.judged_inputs["lexical"]
    assert lexical.shape == lexical_short.shape and not np.array_equal(lexical[multi_word], lexical_short[multi_word])


def test_holdout_metrics_match_tf_ranking_and_plain_python():
    """Re-rank NDCG equals TF-Ranking's NDCGMetric; MRR and end-to-end NDCG equal straightforward loops."""
    rng = np.random.default_rng(0)
    queries, products, labels = [], [], []
    for q in range(30):
        n = int(rng.integers(2, 9))
        queries += ["q%02d" % q] * n
        products += list(rng.choice(200, n, replace=False))
        labels += list(rng.choice([1.0, 1.33, 2.0, 2.67, 3.0], n))
    es = ev.SearchEvalSet.from_judgments(
        Judgments(np.array(queries, dtype=object), np.array(products, np.int32), np.array(labels, np.float32)), positive_relevance=2.5
    )
    scores = rng.normal(size=len(es.products))
    top = np.array([rng.permutation(200)[:15] for _ in range(es.n_queries)])
    metrics = holdout_metrics(es, scores, top)

    width = int(np.diff(es.offsets).max())
    y = np.full((es.n_queries, width), -1.0, np.float32)
    s = np.full((es.n_queries, width), -1e4, np.float32)
    for q in range(es.n_queries):
        a, b = es.offsets[q], es.offsets[q + 1]
        y[q, : b - a], s[q, : b - a] = es.labels[a:b] - 1.0, scores[a:b]
    for k in (5, 10):
        tfr_ndcg = compat.tf_ranking().metrics.NDCGMetric(topn=k)
        tfr_ndcg.update_state(tf.constant(y), tf.constant(s))
        assert metrics["ndcg@%d" % k] == pytest.approx(float(tfr_ndcg.result()), abs=1e-5)

    reciprocal, e2e = [], []
    for q in range(es.n_queries):
        a, b = es.offsets[q], es.offsets[q + 1]
        judged = dict(zip(es.products[a:b].tolist(), es.labels[a:b].tolist()))
        ranked = [p for _, p in sorted(zip(-scores[a:b], es.products[a:b].tolist()))]
        hits = [i for i, p in enumerate(ranked) if judged[p] >= 2.5]
        if hits:
            reciprocal.append(1.0 / (hits[0] + 1))
        gain = lambda rel: 2.0 ** (rel - 1.0) - 1.0  # noqa: E731
        dcg = sum(gain(judged.get(p, 1.0)) / math.log2(i + 2) for i, p in enumerate(top[q, :10].tolist()))
        ideal = sum(gain(r) / math.log2(i + 2) for i, r in enumerate(sorted(judged.values(), reverse=True)[:10]))
        e2e.append(dcg / ideal if ideal > 0 else 0.0)
    assert metrics["mrr"] == pytest.approx(np.mean(reciprocal))
    assert metrics["e2e_ndcg@10"] == pytest.approx(np.mean(e2e))


# ----------------------------------------------------------------------------- searches


def test_random_search_writes_best_config_and_resumes(env, tmp_path):
    """N trials run and are written; best_config.yaml loads and holds the best values; reruns resume."""
    objective = Recording(env["objective"])
    path = write_config(tmp_path, env, max_trials=3)
    results = run_tuning(load_config(path, []), tmp_path / "out", objective=objective)

    assert len(objective.calls) == 3 and all(epochs is None for _, epochs in objective.calls)
    trials = results["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED"] * 3
    # Each call got the config of its trial's values.
    for (cfg, _), t in zip(objective.calls, trials):
        assert cfg.ranking.learning_rate == t["values"]["ranking.learning_rate"] and cfg.ranking.loss == t["values"]["ranking.loss"]
    best = max(trials, key=lambda t: t["metrics"]["ndcg@10"])
    assert results["best"]["trial_id"] == best["trial_id"]
    assert json.loads((tmp_path / "out" / RESULTS_FILE).read_text()) == results

    best_cfg = load_config(tmp_path / "out" / BEST_CONFIG, []).config
    assert best_cfg.ranking.learning_rate == best["values"]["ranking.learning_rate"]
    assert best_cfg.ranking.loss == best["values"]["ranking.loss"]
    assert best_cfg.ranking.hidden_units == yaml.safe_load(best["values"]["ranking.hidden_units"])
    assert best_cfg.data.dir == str(env["slice"]) and best_cfg.run.seed == 3  # the rest is the base config

    # Rerun: every trial is reloaded, none runs again.
    rerun = run_tuning(load_config(path, []), tmp_path / "out2", objective=objective)
    assert len(objective.calls) == 3
    assert rerun["trials"] == trials and rerun["best"]["trial_id"] == best["trial_id"]
    # A larger budget runs only the missing trial.
    more = run_tuning(load_config(path, ["tune.max_trials=4"]), tmp_path / "out3", objective=objective)
    assert len(objective.calls) == 4 and len(more["trials"]) == 4 and more["trials"][:3] == trials
    # A config that changes what trials compute is refused, naming the change.
    with pytest.raises(ValueError, match="ranking.batch_size"):
        run_tuning(load_config(path, ["ranking.batch_size=8"]), tmp_path / "out4", objective=objective)
    assert (tmp_path / "tuning" / project_name(load_config(path, []).config) / "base_config.yaml").is_file()


def test_hyperband_trains_each_trial_for_its_epochs(env, tmp_path):
    """Hyperband's tuner/epochs reach the objective and the trial's ranking.epochs; the best config keeps them."""
    objective = Recording(env["objective"])
    # max_epochs 3, factor 3: three 1-epoch trials, then the best of them promoted to 3 epochs (capped at 4 trials).
    path = write_config(tmp_path, env, algorithm="hyperband", max_trials=4)
    results = run_tuning(load_config(path, []), tmp_path / "out", objective=objective)
    assert len(objective.calls) == 4
    assert [epochs for _, epochs in objective.calls] == [1, 1, 1, 3]
    assert all(cfg.ranking.epochs == epochs for cfg, epochs in objective.calls)
    assert [t["epochs"] for t in results["trials"]] == [1, 1, 1, 3]
    promoted = results["trials"][3]["values"]
    best_first_round = max(results["trials"][:3], key=lambda t: t["metrics"]["ndcg@10"])
    assert promoted == best_first_round["values"]
    best_cfg = load_config(tmp_path / "out" / BEST_CONFIG, []).config
    assert best_cfg.ranking.epochs == results["best"]["epochs"]


def test_bayesian_search_runs(env, tmp_path):
    """BayesianOptimization: 2 random points, then one proposed by the Gaussian process."""
    pytest.importorskip("scipy")
    pytest.importorskip("sklearn")
    objective = Recording(env["objective"])
    path = write_config(tmp_path, env, algorithm="bayesian", max_trials=3)
    results = run_tuning(load_config(path, []), tmp_path / "out", objective=objective)
    assert len(objective.calls) == 3 and [t["status"] for t in results["trials"]] == ["COMPLETED"] * 3
    lr = [t["values"]["ranking.learning_rate"] for t in results["trials"]]
    assert all(0.001 <= v <= 0.03 for v in lr) and len(set(lr)) == 3
    best_cfg = load_config(tmp_path / "out" / BEST_CONFIG, []).config
    assert best_cfg.ranking.learning_rate == results["best"]["values"]["ranking.learning_rate"]


# A search whose objective is plain Python (no training), killed by SIGKILL on its second trial when asked.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import tfrec
    from pathlib import Path
    from tfrec.config.loader import load_config
    from tfrec.training.tuning import run_tuning

    config, out, log, kill = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "kill"

    def objective(cfg, epochs):
        with open(log, "a") as f:
            f.write("%r\\n" % cfg.ranking.learning_rate)
        if kill and len(log.read_text().splitlines()) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"closeness": -abs(cfg.ranking.learning_rate - 0.01)}

    run_tuning(load_config(config, []), out, objective=objective)
    """
)


def _toy_search_config(tmp_path, max_trials: int, space: dict):
    """A tune config over an empty search-csv folder (the tests pass their own objective; no data is read)."""
    (tmp_path / "data").mkdir()
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": "search-csv", "dir": str(tmp_path / "data")},
        "train": {"progress": False},
        "tune": {"max_trials": max_trials, "objective": "closeness", "directory": str(tmp_path / "tuning"), "space": [space]},
    }), encoding="utf-8")
    return config


def test_search_killed_mid_trial_resumes_that_trial(tmp_path):
    """SIGKILL during trial 2: the rerun runs trial 2 again with the same values, then the rest, keeping trial 1."""
    config = _toy_search_config(tmp_path, 3, {"key": "ranking.learning_rate", "type": "float", "min": 0.001, "max": 0.1, "sampling": "log"})
    script, log = tmp_path / "child.py", tmp_path / "calls.txt"
    script.write_text(CHILD, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def child(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(config), str(tmp_path / "out"), str(log), mode],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    killed = child("kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    first_two = [float(v) for v in log.read_text().split()]
    assert len(first_two) == 2 and not (tmp_path / "out").exists()

    resumed = child("resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    calls = [float(v) for v in log.read_text().split()]
    assert len(calls) == 4 and calls[2] == first_two[1]  # the interrupted trial again, same value; trial 1 not rerun
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    values = [t["values"]["ranking.learning_rate"] for t in results["trials"]]
    assert values == [first_two[0], first_two[1], calls[3]]
    assert [t["status"] for t in results["trials"]] == ["COMPLETED"] * 3
    assert results["best"]["values"]["ranking.learning_rate"] == min(values, key=lambda v: abs(v - 0.01))


def test_failed_trials_are_recorded_and_skipped(tmp_path):
    """A trial whose objective raises or returns NaN is FAILED with its reason; the best comes from completed ones."""
    config = _toy_search_config(tmp_path, 4, {"key": "ranking.dropout", "type": "float", "min": 0.0, "max": 0.9})
    calls = []

    def objective(cfg, epochs):
        calls.append(cfg.ranking.dropout)
        if len(calls) == 2:
            raise ValueError("diverged at dropout %r" % cfg.ranking.dropout)
        return {"closeness": float("nan") if len(calls) == 3 else -abs(cfg.ranking.dropout - 0.3)}

    results = run_tuning(load_config(config, []), tmp_path / "out", objective=objective)
    statuses = [t["status"] for t in results["trials"]]
    assert statuses == ["COMPLETED", "FAILED", "FAILED", "COMPLETED"]
    assert "diverged at dropout" in results["trials"][1]["message"]
    assert "non-finite" in results["trials"][2]["message"]
    completed = [t for t in results["trials"] if t["status"] == "COMPLETED"]
    assert results["best"]["trial_id"] == max(completed, key=lambda t: t["metrics"]["closeness"])["trial_id"]


def test_search_stops_after_three_failures_in_a_row_and_still_writes_results(tmp_path):
    """keras-tuner's stop after 3 consecutive failed trials surfaces as a RuntimeError; the trials are written."""
    config = _toy_search_config(tmp_path, 5, {"key": "ranking.dropout", "type": "float", "min": 0.0, "max": 0.9})

    def objective(cfg, epochs):
        raise ValueError("broken objective")

    with pytest.raises(RuntimeError, match="consecutive failures"):
        run_tuning(load_config(config, []), tmp_path / "out", objective=objective)
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert [t["status"] for t in results["trials"]] == ["FAILED"] * 3 and results["best"] is None
    assert all("broken objective" in t["message"] for t in results["trials"])


def test_cli_tune_writes_best_config_and_the_shipped_tune_config_loads(env, tmp_path, in_repo, capsys):
    """`tfrec tune` runs the config's search and prints best_config/run_dir; configs/tune.yaml is a valid search."""
    from tfrec.cli.main import main
    from tfrec.training.tuning import results_table

    shipped = load_config("configs/tune.yaml", []).config.tune
    assert shipped.space and shipped.target == "ranker"
    config = write_config(tmp_path, env, max_trials=2, run={"name": "tiny", "seed": 3, "output_dir": str(tmp_path / "runs")})
    code = main(["tune", "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines() if line.startswith(("best_config: ", "run_dir: ")))
    best = load_config(lines["best_config"], []).config
    results = json.loads((Path(lines["run_dir"]) / "tuning_results.json").read_text())
    assert best.ranking.loss in ("softmax", "listmle")
    assert len([t for t in results["trials"] if t["status"] == "COMPLETED"]) == 2
    assert results_table(results) in out and "[training] best " in err  # the table is a result; the rest is the log


def test_a_config_the_data_makes_impossible_fails_before_the_run_folder_exists(homedepot_slice, tmp_path, capsys):
    """tfrec tune loads and checks the data first: a cut-off above the catalog size leaves no run folder."""
    from tfrec.cli.main import main

    path = write_config(tmp_path, {"slice": homedepot_slice, "cache": tmp_path}, run={"output_dir": str(tmp_path / "runs")},
                        evaluation={"ks": [10, 100000]})
    assert main(["tune", "--config", str(path)]) != 0
    assert "evaluation.ks" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tuning").exists()
