"""Full-ranking recommendation metrics, the popularity and zero-shot baselines, and the report writer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tfrec.baselines.recommend import (
    baseline_tops,
    history_profiles,
    popularity_score_matrix,
    popularity_scores,
    popularity_top_k,
    zero_shot_history_scores,
)
from tfrec.data.tables import Sequences
from tfrec.evaluation.recommend import (
    beyond_accuracy,
    coverage,
    dot_scores,
    intra_list_diversity,
    item_counts,
    novelty,
    rank_metrics,
    rank_metrics_per_user,
    recommendation_report,
    top_k_from_vectors,
    top_k_items,
)
from tfrec.reports.recommend import write_recommendation_report

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
# A 3-item toy: item 2 sits at 45 degrees between items 0 and 1 (not unit length on purpose).
TOY_VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])


def test_top_k_orders_by_score_and_breaks_ties_by_lower_row():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.2], [1.0, 1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(top_k_items(scores, 3), [[1, 3, 2], [0, 1, 2]])
    # the tie straddles the cut-off: the lower row wins the last slot
    np.testing.assert_array_equal(top_k_items(np.array([[0.0, 0.7, 0.3, 0.7, 0.7]]), 2), [[1, 3]])
    assert top_k_items(scores, 2).dtype == np.int32


def test_top_k_matches_a_stable_sort_on_random_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(40, 12)).astype(np.float32)
    exclude = rng.integers(-1, 12, size=(40, 4))
    top = top_k_items(scores, 5, exclude)
    for i in range(len(scores)):
        row = scores[i].astype(np.float64)
        row[exclude[i][exclude[i] >= 0]] = -np.inf
        expected = [j for j in np.argsort(-row, kind="stable") if row[j] > -np.inf][:5]
        assert list(top[i]) == expected + [-1] * (5 - len(expected))


def test_exclusion_removes_history_items_and_shifts_the_target_up():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    targets = np.array([3])
    assert rank_metrics_per_user(top_k_items(scores, 5), targets, [3])["recall@3"][0] == 0.0  # rank 3
    history = np.array([[-1, -1, 0, 2]])  # front padding is ignored
    top = top_k_items(scores, 3, exclude=history)
    np.testing.assert_array_equal(top, [[1, 3, 4]])
    metrics = rank_metrics_per_user(top, targets, [3])
    assert metrics["recall@3"][0] == 1.0
    assert metrics["ndcg@3"][0] == pytest.approx(1 / math.log2(3))  # rank 1 after exclusion


def test_fewer_items_than_k_after_exclusion_leave_empty_slots():
    top = top_k_items(np.array([[0.3, 0.2, 0.1]]), 3, exclude=np.array([[2, 0]]))
    np.testing.assert_array_equal(top, [[1, -1, -1]])
    assert coverage(top, 3) == pytest.approx(1 / 3)


def test_top_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be in"):
        top_k_items(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="NaN"):
        top_k_items(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="exclude holds item row 5"):
        top_k_items(np.zeros((1, 3)), 1, exclude=np.array([[5]]))
    with pytest.raises(ValueError, match="exclude must be"):
        top_k_items(np.zeros((2, 3)), 1, exclude=np.array([[0]]))


def test_top_k_from_vectors_matches_dense_scores_in_small_batches():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(7, 4)), rng.normal(size=(9, 4))
    exclude = np.array([[-1, 2]] * 7)
    expected = top_k_items(users @ items.T, 4, exclude)
    np.testing.assert_array_equal(top_k_from_vectors(users, items, 4, exclude, batch_size=3), expected)


def test_identical_item_vectors_tie_exactly_and_rank_by_lower_row():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(300, 16)).astype(np.float32)
    items[250] = items[7]  # e.g. two products whose truncated texts encode alike
    users = rng.normal(size=(50, 16)).astype(np.float32)
    scores = dot_scores(users, items)
    np.testing.assert_array_equal(scores[:, 250], scores[:, 7])
    top = top_k_from_vectors(users, items, 300, batch_size=16)
    position = {int(item): pos for pos, item in enumerate(top[0])}
    assert position[7] + 1 == position[250]


def test_rank_metrics_known_values():
    top = np.array([[5, 1, 2], [1, 2, 5], [1, 2, 3], [4, 5, 1]])
    targets = np.array([5, 5, 9, 1])  # ranks 0, 2, absent, 2
    per_user = rank_metrics_per_user(top, targets, [1, 3])
    np.testing.assert_allclose(per_user["recall@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(per_user["recall@3"], [1, 1, 0, 1])
    np.testing.assert_allclose(per_user["ndcg@3"], [1.0, 0.5, 0.0, 0.5])  # 1/log2(4) = 0.5
    np.testing.assert_allclose(per_user["ndcg@1"], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(per_user["mrr"], [1.0, 1 / 3, 0.0, 1 / 3])
    means = rank_metrics(top, targets, [3])
    assert means["recall@3"] == pytest.approx(0.75)
    assert means["ndcg@3"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="deeper than the top lists"):
        rank_metrics(top, targets, [10])


def test_coverage_diversity_novelty_on_a_three_item_toy():
    top = np.array([[0, 1], [0, 2]])
    assert coverage(top, 3) == pytest.approx(1.0)
    assert coverage(np.array([[0, 1], [1, 0]]), 3) == pytest.approx(2 / 3)
    # user 1: orthogonal items, distance 1; user 2: 45 degrees apart, distance 1 - cos(45)
    expected_diversity = (1.0 + (1.0 - math.sqrt(0.5))) / 2
    assert intra_list_diversity(top, TOY_VECTORS) == pytest.approx(expected_diversity)
    assert intra_list_diversity(np.array([[2, 2]]), TOY_VECTORS) == pytest.approx(0.0)
    counts = np.array([3, 1, 0])  # total 4, n_items 3: p = 4/7, 2/7, 1/7 (add-one smoothing)
    expected_novelty = np.mean([-math.log2(4 / 7), -math.log2(2 / 7), -math.log2(4 / 7), -math.log2(1 / 7)])
    assert novelty(top, counts) == pytest.approx(expected_novelty)
    summary = beyond_accuracy(np.array([[0, 1, 2], [0, 2, 1]]), TOY_VECTORS, counts, k=2)
    assert summary == pytest.approx({"coverage@2": 1.0, "diversity@2": expected_diversity, "novelty@2": expected_novelty})


def test_item_counts_counts_each_interaction_once_not_once_per_prefix():
    # user a's log is 5, 6, 7 (two prefix examples); user b's log is 1, 1 (a repeat purchase)
    train = Sequences(
        items=np.array([5, 6, 1], np.int32),
        starts=np.array([0, 0, 2]),
        ends=np.array([1, 2, 3]),
        targets=np.array([6, 7, 1], np.int32),
        users=np.array(["a", "a", "b"], dtype=object),
    )
    counts = item_counts(train, 8)
    np.testing.assert_array_equal(counts, [0, 2, 0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="rows in"):
        item_counts(train, 6)


def test_popularity_baseline_is_the_same_ranking_for_everyone():
    counts = np.array([2, 5, 5, 0])
    np.testing.assert_array_equal(popularity_scores(counts), [2.0, 5.0, 5.0, 0.0])
    matrix = popularity_score_matrix(counts, 3)
    assert matrix.shape == (3, 4)
    np.testing.assert_array_equal(top_k_items(matrix, 3), [[1, 2, 0]] * 3)
    exclude = np.array([[1], [-1], [0]])
    np.testing.assert_array_equal(top_k_items(matrix, 2, exclude=exclude), [[2, 0], [1, 2], [1, 2]])
    np.testing.assert_array_equal(popularity_top_k(counts, 3, 2, exclude, batch_size=2), [[2, 0], [1, 2], [1, 2]])
    np.testing.assert_array_equal(popularity_top_k(counts, 3, 3), [[1, 2, 0]] * 3)


def test_zero_shot_scores_mask_padding_and_score_empty_histories_zero():
    vectors = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    histories = np.array([[-1, -1, 0], [-1, 0, 1], [-1, -1, -1]])
    scores = zero_shot_history_scores(histories, vectors)
    # padding -1 must not read the last item: a history of item 0 alone scores plain cosines
    np.testing.assert_allclose(scores[0], [1.0, 0.0, math.sqrt(0.5)], atol=1e-6)
    # mean of unit vectors (1, 0) and (0, 1): item 2 points the same way, items 0 and 1 at 45 degrees
    np.testing.assert_allclose(scores[1], [math.sqrt(0.5), math.sqrt(0.5), 1.0], atol=1e-6)
    np.testing.assert_array_equal(scores[2], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(history_profiles(histories[:2], vectors), axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="item rows in"):
        zero_shot_history_scores(np.array([[3]]), vectors)


def _toy_systems() -> tuple[dict, np.ndarray]:
    targets = np.array([0, 1, 2, 0])
    systems = {
        "popularity": {"top": np.array([[0, 1], [0, 1], [0, 1], [0, 1]]), "label": "Popularity", "kind": "baseline"},
        "model": {"top": np.array([[0, 1], [1, 0], [2, 0], [1, 2]]), "label": "tfrec <model> | v1", "kind": "tfrec"},
    }
    return systems, targets


def test_recommendation_report_is_json_and_compares_with_the_reference():
    systems, targets = _toy_systems()
    counts = np.array([3, 1, 0])
    per_user: dict = {}
    report = recommendation_report(systems, targets, [1, 2], TOY_VECTORS, counts, 3, False, "popularity",
                                   beyond_k=2, ci_metrics=("recall@1", "ndcg@2"), n_resamples=200, per_user=per_user)
    json.dumps(report)  # JSON-able: no numpy arrays or scalars left
    assert report["exclude_history"] is False and report["reference"] == "popularity" and report["n_users"] == 4
    assert report["systems"]["popularity"]["recall@1"] == pytest.approx(0.5)
    assert report["systems"]["model"]["recall@1"] == pytest.approx(0.75)
    assert report["systems"]["model"]["coverage@2"] == pytest.approx(1.0)
    assert [(t["system"], t["metric"]) for t in report["significance"]] == [("model", "recall@1"), ("model", "ndcg@2")]
    assert report["significance"][0]["mean_diff"] == pytest.approx(0.25)
    np.testing.assert_allclose(per_user["model"]["recall@1"], [1, 1, 1, 0])
    with pytest.raises(ValueError, match="reference 'nope'"):
        recommendation_report(systems, targets, [1], TOY_VECTORS, counts, 3, False, "nope")


def test_report_writer_writes_markdown_and_html_with_the_table(tmp_path):
    systems, targets = _toy_systems()
    report = recommendation_report(systems, targets, [1, 2], TOY_VECTORS, np.array([3, 1, 0]), 3, True,
                                   beyond_k=2, ci_metrics=("recall@2",), n_resamples=100)
    _, _, charts = write_recommendation_report(tmp_path, report, "Toy recommendation report", ["a note"])
    assert [c.name for c in charts] == ["recall_at_k.png", "ndcg_at_k.png", "beyond_accuracy.png"]
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "| System | Kind | Recall@1 | Recall@2 | NDCG@1 | NDCG@2 | MRR | Coverage@2 | Diversity@2 | Novelty@2 |" in markdown
    assert "History items were excluded" in markdown and "History items were excluded" in html
    assert "tfrec &lt;model> \\| v1" in markdown  # labels are escaped, not read as markup
    assert "95% [" in markdown and "a note" in markdown
    assert html.count('<img src="data:image/png;base64,') == 3 and "<table>" in html and "tfrec &lt;model&gt; | v1" in html
    assert all(c.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)
    assert "![Beyond-accuracy bars](beyond_accuracy.png)" in markdown
    report["exclude_history"] = False
    write_recommendation_report(tmp_path, report, "Toy", [])
    assert "History items were not excluded" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def amazon():
    """Amazon Scientific with the default text config's cached MiniLM vectors of the catalog's "text" field."""
    if not (SHARED / "amazon-scientific" / "Scientific.valid.inter").is_file():
        pytest.skip("../shared/datasets/amazon-scientific is not beside the repository")
    from tfrec.config.loader import load_config
    from tfrec.data.datasets import load_data
    from tfrec.text.model_files import ModelFilesError, resolve_model_files

    try:
        resolve_model_files()
    except ModelFilesError as exc:
        pytest.skip(str(exc))
    from tfrec.text.catalog import catalog_text_features

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # configs/, ../shared and the embedding cache resolve from the repository root
        patch.delenv("TFREC_DATA_DIR", raising=False)
        loaded = load_config("configs/amazon_scientific.yaml")
        data = load_data(loaded)
        vectors, _ = catalog_text_features(list(data.catalog.texts["text"]), loaded.config.text, progress=False)
    return loaded, data, vectors


def test_zero_shot_beats_popularity_on_a_slice_of_amazon_valid(amazon):
    loaded, data, vectors = amazon
    valid = data.valid
    rows = np.arange(0, len(valid), 10)  # 293 users spread over the file
    sample = Sequences(valid.items, valid.starts[rows], valid.ends[rows], valid.targets[rows], valid.users[rows])
    counts = item_counts(data.train, len(data.catalog))
    # each valid history is the user's whole training log, so it holds every interaction exactly once
    full_logs = valid.padded_histories(int(valid.history_lengths().max()))[0]
    np.testing.assert_array_equal(counts, np.bincount(full_logs[full_logs >= 0], minlength=len(data.catalog)))
    systems = baseline_tops(data.train, sample, vectors, 50, loaded.config.recommendation.max_history, counts=counts)
    report = recommendation_report(systems, sample.targets, [10, 50], vectors, counts, len(data.catalog), False,
                                   "popularity", n_resamples=500)
    popularity, zero_shot = report["systems"]["popularity"], report["systems"]["zero_shot_text"]
    assert zero_shot["recall@10"] > popularity["recall@10"] + 0.02
    assert report["significance"][0]["low"] > 0  # recall@10 difference, paired over users
    assert popularity["coverage@10"] == pytest.approx(10 / len(data.catalog))  # one list for everyone
    assert zero_shot["coverage@10"] > popularity["coverage@10"]
