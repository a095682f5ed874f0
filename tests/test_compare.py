"""`tfrec compare`: paired bootstrap over saved per-query metrics, on hand-made runs with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tfrec.cli.main import main
from tfrec.evaluation.compare import PerQuery, align, compare, default_pairs, write_per_query


def _run(tmp_path, name, keys, per_query):
    folder = tmp_path / name
    folder.mkdir()
    write_per_query(folder / "per_query.npz", keys, per_query)
    return folder


@pytest.fixture
def runs(tmp_path):
    keys = ["q%d" % i for i in range(200)]
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 200)
    a = _run(tmp_path, "a", keys, {"model": {"ndcg@10": base + 0.1, "recall@10": base}, "bm25": {"ndcg@10": base}})
    # Run b lists the same queries in another order, one of them missing, and one NaN (no positive).
    order = rng.permutation(200)[:199]
    b_ndcg = base[order].copy()
    b_ndcg[0] = np.nan
    b = _run(tmp_path, "b", [keys[i] for i in order], {"model": {"ndcg@10": b_ndcg, "recall@10": base[order]}})
    return a, b


def test_a_constant_improvement_has_a_degenerate_interval_at_that_value(runs):
    a, b = (PerQuery.load(r) for r in runs)
    rows = compare(a, b, [("model", "model", "ndcg@10")], n_resamples=200)
    assert rows[0]["diff"] == pytest.approx(0.1)
    assert rows[0]["low"] == pytest.approx(0.1) and rows[0]["high"] == pytest.approx(0.1)
    assert rows[0]["n"] == 198 and rows[0]["common_rows"] == 199  # the missing query and the NaN one are dropped


def test_identical_numbers_show_no_difference(runs):
    a, b = (PerQuery.load(r) for r in runs)
    row = compare(a, b, [("model", "model", "recall@10")], n_resamples=200)[0]
    assert row["diff"] == 0.0 and row["low"] == 0.0 and row["high"] == 0.0 and row["p_value"] == 1.0


def test_alignment_pairs_rows_by_key_not_position(runs):
    a, b = (PerQuery.load(r) for r in runs)
    rows_a, rows_b = align(a, b)
    np.testing.assert_array_equal(a.keys[rows_a], b.keys[rows_b])


def test_noisy_difference_matches_a_hand_computed_bootstrap(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.5, 0.2, 300), rng.normal(0.45, 0.2, 300)
    keys = ["u%d" % i for i in range(300)]
    a = PerQuery.load(_run(tmp_path, "x", keys, {"m": {"r": x}}))
    b = PerQuery.load(_run(tmp_path, "y", keys, {"m": {"r": y}}))
    row = compare(a, b, [("m", "m", "r")], n_resamples=4000, seed=3)[0]
    diff = x - y
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert row["diff"] == pytest.approx(diff.mean())
    # The percentile bootstrap CI is close to the normal-theory one for a mean of 300 values.
    assert row["low"] == pytest.approx(diff.mean() - 1.96 * se, abs=0.006)
    assert row["high"] == pytest.approx(diff.mean() + 1.96 * se, abs=0.006)


def test_within_one_run_a_model_against_a_baseline(runs, capsys):
    assert main(["compare", str(runs[0]), "--system", "model", "--against", "bm25", "--resamples", "200", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["a"], r["b"], r["metric"]) for r in rows] == [("model", "bm25", "ndcg@10")]
    assert rows[0]["diff"] == pytest.approx(0.1)


def test_cli_table_names_the_verdict(runs, capsys):
    assert main(["compare", str(runs[0]), str(runs[1]), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "A better" in out and "no measurable difference" in out and "paired on the 199 rows" in out


def test_clear_errors(runs, tmp_path, capsys):
    a, b = (PerQuery.load(r) for r in runs)
    with pytest.raises(KeyError, match="metrics of model: ndcg@10, recall@10"):
        a.get("model", "mrr")
    other = PerQuery.load(_run(tmp_path, "other", ["z1", "z2"], {"model": {"ndcg@10": np.ones(2)}}))
    with pytest.raises(ValueError, match="share no query"):
        align(a, other)
    with pytest.raises(ValueError, match="nothing to compare"):
        default_pairs(a, b, "bm25")
    with pytest.raises(ValueError, match="3 values for 2 keys"):
        write_per_query(tmp_path / "bad.npz", ["a", "b"], {"s": {"m": np.ones(3)}})
    assert main(["compare", str(runs[0])]) != 0
    assert "name the two systems" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nowhere"), str(runs[1])]) != 0
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "old-run").mkdir()
    assert main(["compare", str(tmp_path / "old-run"), str(runs[1])]) != 0
    assert "per_query.npz not found" in capsys.readouterr().err
