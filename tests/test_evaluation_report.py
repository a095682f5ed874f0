"""`tfrec evaluate`'s report from a run folder: per-query charts, the worst-queries gallery, training curves
from real TensorBoard logs, and the page rendered by headless Chromium when one is installed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from test_reports import realistic_metrics
from tfrec.cli.main import main
from tfrec.evaluation.compare import write_per_query
from tfrec.evaluation.results import read_top_results, top_results_record, worst_queries, write_top_results
from tfrec.evaluation.search import SearchEvalSet
from tfrec.reports.evaluation import evaluate_run, read_curves
from tfrec.reports.plots import per_query_distribution, training_curves
from tfrec.training.progress import Summaries

IDS = np.array(["p%d" % i for i in range(8)], dtype=object)
TITLES = np.array(["cordless drill", "drill bits", "hammer", "claw hammer", "paint roller", "wall paint", "ladder", "saw"])


def toy_eval_set() -> SearchEvalSet:
    """Three queries with graded judgments (positives: relevance >= 2.5)."""
    return SearchEvalSet(
        queries=np.array(["drill", "hammer", "paint"], dtype=object),
        offsets=np.array([0, 2, 4, 7]),
        products=np.array([0, 1, 2, 3, 4, 5, 6], dtype=np.int32),
        labels=np.array([3.0, 2.0, 3.0, 2.67, 1.0, 3.0, 2.0], dtype=np.float32),
    )


# query 0 finds its best product first; query 1 finds nothing judged; query 2 finds one positive low down
TOP = np.array([[0, 7, 6], [7, 6, 4], [6, 7, 5]])
VALUES = np.array([1.0, 0.0, 0.3])


def test_top_results_record_round_trips_and_names_labels(tmp_path):
    record = top_results_record(toy_eval_set(), TOP, IDS, TITLES, system="tfrec_search", k=2)
    path = write_top_results(tmp_path / "top_results.json", record)
    again = read_top_results(path)
    assert again == json.loads(json.dumps(record))
    assert again["queries"][1] == {"query": "hammer", "top": ["p7", "p6"], "judged": [["p2", 3.0], ["p3", 2.67]]}
    assert set(again["products"]) == {"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"} and again["products"]["p7"] == "saw"
    (tmp_path / "bad.json").write_text('{"queries": []}')
    with pytest.raises(ValueError, match="not a tfrec top-results file"):
        read_top_results(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"top must be \[3 queries, K\]"):
        top_results_record(toy_eval_set(), TOP[:2], IDS, TITLES, system="x")


def test_worst_queries_lowest_first_ties_by_positives_with_returned_and_missed():
    record = top_results_record(toy_eval_set(), TOP, IDS, TITLES, system="tfrec_search", k=3)
    keys = ["drill", "hammer", "paint", "not in the record"]
    worst = worst_queries(record, keys, [1.0, 0.0, 0.0, 0.0], n=2, show=2)
    # hammer and paint tie at 0: hammer has 2 positives (3.0, 2.67), paint 1 (3.0), so hammer first
    assert [w.query for w in worst] == ["hammer", "paint"]
    hammer = worst[0]
    assert (hammer.n_judged, hammer.n_positive) == (2, 2)
    assert hammer.top == (("p7", "saw", None), ("p6", "ladder", None))
    assert hammer.missed == (("p2", "hammer", 3.0), ("p3", "claw hammer", 2.67))
    assert worst[1].top[0] == ("p6", "ladder", 2.0) and worst[1].missed == (("p4", "paint roller", 1.0),)
    assert [w.query for w in worst_queries(record, keys, [np.nan, 0.5, 0.2, 0.0])] == ["paint", "hammer"]


def test_per_query_distribution_counts_worse_equal_better():
    model, baseline = np.array([0.5, 0.2, 0.2, np.nan, 1.0]), np.array([0.1, 0.2, 0.4, 0.3, 0.0])
    fig = per_query_distribution({"model": model, "baseline": baseline}, "NDCG@10")
    left, right = fig.axes
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["model (mean 0.475, 0% at 0)", "baseline (mean 0.200, 20% at 0)"]
    assert [bar.get_height() for bar in right.patches] == pytest.approx([-0.2, 0.0, 0.4, 1.0])
    assert right.get_xlabel() == "queries: 25% worse, 25% equal, 50% better"


def write_logs(folder: Path) -> dict:
    """Real TensorBoard event files, written the way tfrec's Trainer writes them."""
    logged = {"retrieval": {"train/loss": [(10, 5.0), (20, 4.0), (30, 3.5)], "val/ndcg@10": [(15, 0.2), (30, 0.25)]},
              "ranker-softmax": {"train/loss": [(10, 2.0), (20, 1.5)]}}
    for model, tags in logged.items():
        summaries = Summaries(str(folder / model))
        for tag, points in tags.items():
            prefix, name = tag.split("/")
            for step, value in points:
                summaries.scalars(prefix, {name: value}, step=step)
        summaries.close()
    return logged


def test_read_curves_gives_back_the_logged_values(tmp_path):
    logged = write_logs(tmp_path / "tensorboard")
    curves = read_curves(tmp_path / "tensorboard")
    assert {m: {t: [(s, pytest.approx(v)) for s, v in pts] for t, pts in tags.items()} for m, tags in curves.items()} == {
        m: {t: [(float(s), pytest.approx(v)) for s, v in pts] for t, pts in tags.items()} for m, tags in logged.items()}
    fig = training_curves(curves)
    first = fig.axes[0]
    assert first.get_title(loc="left") == "retrieval"  # the first-stage model comes first
    raw = first.get_lines()[0]
    assert list(raw.get_xdata()) == [10.0, 20.0, 30.0] and list(raw.get_ydata()) == pytest.approx([5.0, 4.0, 3.5])


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A run folder like `tfrec train` leaves: metrics.json, per_query.npz, top_results.json, TensorBoard logs."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "metrics.json").write_text(json.dumps(realistic_metrics()))
    es = toy_eval_set()
    write_per_query(run / "per_query.npz", es.queries, {"tfrec_search": {"ndcg@10_e2e": VALUES},
                                                        "bm25_stemmed": {"ndcg@10_e2e": np.array([0.8, 0.1, 0.3])}})
    write_top_results(run / "top_results.json", top_results_record(es, TOP, IDS, TITLES, system="tfrec_search"))
    write_logs(run / "tensorboard")
    return run


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_evaluate_writes_every_chart_and_the_gallery(search_run, in_repo, capsys):
    assert main(["evaluate", "--run", str(search_run)]) == 0
    out = capsys.readouterr().out
    charts = ["recall_at_k.png", "ndcg.png", "per_query.png", "training.png"]
    assert [line.rsplit("/", 1)[1] for line in out.splitlines() if line.startswith("chart: ")] == charts
    html = (search_run / "report.html").read_text(encoding="utf-8")
    parser = Images()
    parser.feed(html)
    assert len(parser.sources) == 4 and all(s.startswith("data:image/png;base64,") for s in parser.sources)
    md = (search_run / "report.md").read_text(encoding="utf-8")
    gallery = md[md.index("## Worst queries"):]
    # hammer (0.0) is worst, then paint (0.3); drill (1.0) is third of three
    assert gallery.index('**"hammer"**') < gallery.index('**"paint"**') < gallery.index('**"drill"**')
    assert "1. saw — unjudged" in gallery and "1. hammer — relevance 3.00" in gallery
    assert "_NDCG@10 0.000; 2 judged products, 2 relevant_" in gallery
    for name in charts:
        pixels = imread(search_run / name)
        assert pixels.shape[1] >= 500


def test_evaluate_without_optional_files_says_what_is_missing(tmp_path, in_repo, capsys):
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / "metrics.json").write_text(json.dumps(realistic_metrics()))
    report = evaluate_run(tmp_path)
    assert [p.name for p in report.figures] == ["recall_at_k.png", "ndcg.png"]
    md = report.html.with_name("report.md").read_text(encoding="utf-8")
    assert "has no top_results.json" in md and "No TensorBoard logs under" in md
    (tmp_path / "metrics.json").write_text("{not json")
    assert main(["evaluate", "--run", str(tmp_path)]) == 1
    assert "metrics.json is not valid JSON" in capsys.readouterr().err
    (tmp_path / "metrics.json").unlink()
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "has no metrics.json: its `tfrec train` did not finish" in capsys.readouterr().err


def test_data_text_is_unescaped_exactly_once(tmp_path, in_repo):
    """A title the data holds as "Kitchen &amp; Bath" reads "Kitchen & Bath" on the page: escaped once in the HTML, plain in Markdown."""
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / "metrics.json").write_text(json.dumps(realistic_metrics()))
    es = toy_eval_set()
    titles = TITLES.astype(object)
    titles[7] = "Kitchen &amp; Bath saw"
    write_per_query(tmp_path / "per_query.npz", es.queries, {"tfrec_search": {"ndcg@10_e2e": VALUES}})
    write_top_results(tmp_path / "top_results.json", top_results_record(es, TOP, IDS, titles, system="tfrec_search"))
    report = evaluate_run(tmp_path)
    html, md = report.html.read_text(encoding="utf-8"), report.html.with_name("report.md").read_text(encoding="utf-8")
    assert "<li>Kitchen &amp; Bath saw — unjudged</li>" in html and "&amp;amp;" not in html
    assert "1. Kitchen & Bath saw — unjudged" in md and "&amp;" not in md.split("## Worst queries")[1]


def chromium() -> str | None:
    """Debian's chromium (``.ci/run`` installs it where it can), or None."""
    return os.environ.get("TFREC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_every_chart(search_run, tmp_path):
    """The page opens offline in a real browser and its PNG charts are painted (their palette colours are on screen)."""
    evaluate_run(search_run)
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--user-data-dir=%s" % (tmp_path / "profile"),
             "--window-size=1200,6000", "--screenshot=%s" % shot]
    subprocess.run([chromium()] + flags + [(search_run / "report.html").as_uri()], check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pixels = (imread(shot)[:, :, :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (6000, 1200)
    blue = np.all(np.abs(pixels - [0, 114, 178]) <= 3, axis=-1)  # PALETTE[0]: drawn only inside the charts
    rows_with_blue = np.flatnonzero(blue.any(axis=1))
    assert blue.sum() > 2000
    # the four charts sit at different heights of the page: blue shows up in several separate bands
    bands = np.sum(np.diff(rows_with_blue) > 40) + 1
    assert bands >= 4, bands
