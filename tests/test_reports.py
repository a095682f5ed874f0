"""Search and recommendation reports: Markdown/HTML files, PNG charts drawn from the metrics, the headline against the
strongest baseline, escaping, validation, summary tables."""
from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from matplotlib.image import imread

from tfrec.reports import summary_table, write_search_report
from tfrec.reports.headline import ranker_sentence, recommendation_headline
from tfrec.reports.markup import md_escape
from tfrec.reports.metrics import parse_metrics
from tfrec.reports.plots import BarRow, Panel, bar_panels, recall_curves, wrap_label
from tfrec.reports.recommend import summary_table as recommendation_summary
from tfrec.reports.recommend import write_recommendation_report
from tfrec.reports.search import ndcg_bars, recall_lines
from tfrec.reports.tables import fmt_duration

EVIL = "<script>alert('x')</script> & co"


def realistic_metrics() -> dict:
    """A metrics.json like the training pipeline writes, with a hostile label and a pipe in another."""
    return {
        "dataset": "homedepot", "split": "valid", "run_name": "default-20261123-200000", "created": "2026-11-23T20:00:00",
        "n_queries": {"rerank": 1128, "retrieval": 898, "e2e": 1128},
        "catalog_size": 54667,
        "systems": {
            "bm25_stemmed": {"label": "Stemmed BM25 (bm25s)", "kind": "baseline",
                             "retrieval": {"recall@10": 0.45, "recall@100": 0.78, "recall@1000": 0.90, "mrr": 0.31,
                                           "seen": {"recall@100": 0.80, "n_queries": 120}, "cold": {"recall@100": 0.77, "n_queries": 778}},
                             "e2e": {"ndcg@10": 0.354, "seen": {"ndcg@10": 0.36, "n_queries": 150}, "cold": {"ndcg@10": 0.35, "n_queries": 978}},
                             "rerank": {"ndcg@5": 0.851, "ndcg@10": 0.902, "mrr": 0.71, "map": 0.66}},
            "minilm": {"label": "MiniLM | zero-shot", "kind": "baseline",
                       "retrieval": {"recall@10": 0.41, "recall@100": 0.74, "recall@1000": 0.93, "mrr": 0.28,
                                     "seen": {"recall@100": 0.76, "n_queries": 120}, "cold": {"recall@100": 0.72, "n_queries": 778}},
                       "e2e": {"ndcg@10": 0.33}, "rerank": {"ndcg@5": 0.86, "ndcg@10": 0.905, "mrr": 0.72, "map": 0.67}},
            "random": {"label": "Random order", "kind": "reference", "retrieval": None, "e2e": None, "rerank": {"ndcg@10": 0.889}},
            "tfrec_hybrid": {"label": EVIL, "kind": "tfrec",
                             "retrieval": {"recall@10": 0.52, "recall@100": 0.85, "recall@1000": 0.96, "mrr": 0.37,
                                           "seen": {"recall@100": 0.95, "n_queries": 120}, "cold": {"recall@100": 0.83, "n_queries": 778}},
                             "e2e": {"ndcg@10": 0.41}, "rerank": None},
            "tfrec_search": {"label": "tfrec retrieve top-100 + ranker", "kind": "tfrec", "retrieval": None,
                             "e2e": {"ndcg@10": 0.43, "seen": {"ndcg@10": 0.44, "n_queries": 150}, "cold": {"ndcg@10": 0.428, "n_queries": 978}},
                             "rerank": {"ndcg@5": 0.87, "ndcg@10": 0.911, "mrr": 0.74, "map": 0.69}},
        },
        "significance": [
            {"view": "rerank", "system": "tfrec_search", "versus": "minilm", "metric": "ndcg@10",
             "mean_diff": 0.006, "low": 0.002, "high": 0.010, "p_value": 0.004, "n_queries": 1128},
            {"view": "retrieval", "system": "tfrec_hybrid", "versus": "bm25_stemmed", "metric": "recall@100",
             "mean_diff": -0.004, "low": -0.02, "high": 0.012, "p_value": 0.61, "n_queries": 898},
        ],
        "timings": {"load data": 1.2, "baselines": 30.5, "retrieval training": 600.0, "ranker training": 3725.4},
        "training": {"retrieval": {"epochs": 3, "learning_rate": 0.001, "hybrid_weights": {"dense": 1.0, "lexical": 0.3},
                                   "index": {"kind": "brute_force", "scann_build_s": 5.69}},
                     "ranker": {"loss": "softmax", "history": [0.9, 0.91],
                                "loss_selection": [{"loss": "softmax", "tune_half_e2e_ndcg@10": 0.4198},
                                                   {"loss": "listmle", "tune_half_e2e_ndcg@10": 0.4105}],
                                "selection": {"kept": "ranker", "ranker_tune_half_e2e_ndcg@10": 0.4274,
                                              "retrieval_tune_half_e2e_ndcg@10": 0.4012, "n_queries": 564}}},
        "exports": {"search_retrieval": {"path": "runs/x/export/1", "mb": 190.0}},
        "notes": ["Fusion weight tuned on valid; test split untouched.", "# not a heading | not a cell"],
    }


def minimal_metrics() -> dict:
    """Only the required keys; views null or absent, no optional sections."""
    return {"dataset": "homedepot", "split": "valid", "systems": {
        "random": {"label": "Random order", "kind": "reference", "retrieval": None, "e2e": None, "rerank": {"ndcg@10": 0.889}},
        "ranker": {"label": "Ranker", "rerank": {"ndcg@10": 0.9, "mrr": None}},
    }}


class TagBalance(HTMLParser):
    """Records start tags and whether every element is closed in order."""

    VOID = {"meta", "link", "br", "hr", "img", "input", "source", "wbr", "col", "area", "base", "embed", "track"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append("</%s> closes %s" % (tag, self.stack[-1:] or "nothing"))
        else:
            self.stack.pop()


def md_cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def md_table(md: str, header_start: str) -> list[list[str]]:
    """The rows (as cell lists) of the first Markdown table whose header starts with ``header_start``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(md_cells(line))
    return rows


def recall_points(metrics: dict) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for system in metrics["systems"].values():
        part = system.get("retrieval") or {}
        points = sorted((int(k.split("@")[1]), v) for k, v in part.items() if k.startswith("recall@"))
        if points:
            out[system["label"]] = points
    return out


@pytest.fixture()
def written(tmp_path):
    metrics = realistic_metrics()
    md_path, html_path, charts = write_search_report(metrics, tmp_path / "run")
    assert [c.name for c in charts] == ["recall_at_k.png", "ndcg.png"]  # no per-query data or logs given
    return metrics, md_path, html_path


def png_pixels(data: bytes) -> np.ndarray:
    """A PNG decoded to an RGB(A) array (fails on anything that is not a PNG)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


def assert_drawn(pixels: np.ndarray) -> None:
    """A real chart: a sensible size, mostly white, with several distinct colours drawn on it."""
    height, width = pixels.shape[:2]
    assert width >= 500 and height >= 250
    colours = {tuple(p) for p in (pixels[::4, ::4, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 20


def test_files_and_html_is_balanced_escaped_and_self_contained(written):
    """Both reports and both charts exist; the HTML nests correctly, escapes labels, inlines its PNGs and loads nothing."""
    metrics, md_path, html_path = written
    run = md_path.parent
    assert md_path.name == "report.md" and html_path == run / "report.html"
    html = html_path.read_text(encoding="utf-8")
    parser = TagBalance()
    parser.feed(html)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert "script" not in parser.tags and "link" not in parser.tags and "svg" not in parser.tags
    assert parser.tags.count("img") == 2 and parser.tags.count("table") == 9  # the ranker's loss selection is one
    sources = re.findall(r'<img src="([^"]+)"', html)
    for name, source in zip(("recall_at_k.png", "ndcg.png"), sources):
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)  # self-contained: the page opens offline, without the PNG files
        assert base64.b64decode(source[len(prefix):]) == (run / name).read_bytes()
        assert_drawn(png_pixels((run / name).read_bytes()))
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in html
    assert "<script" not in html and "http" not in " ".join(sources) and "@import" not in html
    assert "MiniLM | zero-shot" in html  # a pipe needs no escaping in HTML
    for system in metrics["systems"].values():
        if system["label"] != EVIL:
            assert system["label"] in html


def test_markdown_links_charts_and_escapes(written):
    """Charts are relative image links; a label's pipe and HTML cannot break the tables or inject markup."""
    _, md_path, _ = written
    md = md_path.read_text(encoding="utf-8")
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (md_path.parent / name).is_file() and "/" not in name
    assert "<script" not in md and "&lt;script>" in md
    assert "MiniLM \\| zero-shot" in md
    assert "- \\# not a heading \\| not a cell" in md
    for table_header in ("| System | Kind | Recall@10", "| System | End-to-end NDCG@10, seen"):
        widths = {len(row) for row in md_table(md, table_header)}
        assert len(widths) == 1  # no row split by a stray pipe


def test_markdown_view_tables_hold_the_numbers_with_best_in_bold(written):
    """Each view table lists the systems reporting it, values to 3 decimals, the column maxima in bold."""
    metrics, md_path, _ = written
    md = md_path.read_text(encoding="utf-8")
    for view, header in (("retrieval", "| System | Kind | Recall@10 | Recall@100 | Recall@1000 | MRR |"),
                         ("rerank", "| System | Kind | NDCG@5 | NDCG@10 | MRR | MAP |"),
                         ("e2e", "| System | Kind | NDCG@10 |")):
        names = [h.lower() for h in md_cells(header)[2:]]
        systems = [s for s in metrics["systems"].values() if s.get(view)]
        best = {n: max(s[view][n] for s in systems if s[view].get(n) is not None) for n in names}
        rows = md_table(md, header)
        assert len(rows) == len(systems)
        for row, system in zip(rows, systems):
            assert row[1] == system["kind"]
            for cell, name in zip(row[2:], names):
                value = system[view].get(name)
                expected = "-" if value is None else "%.3f" % value
                if value is not None and value == best[name]:
                    expected = "**%s**" % expected
                assert cell == expected, (view, system["label"], name)


def test_recall_chart_has_one_line_per_system_at_its_values(written):
    """One line per system with recall@K, at exactly its (K, recall) points, on a log-K axis with the raw label."""
    metrics, _, _ = written
    lines = recall_lines(parse_metrics(metrics))
    expected = recall_points(metrics)
    assert {line.label: [(int(k), v) for k, v in line.points] for line in lines} == expected and len(lines) == 3
    assert [line.dashed for line in lines] == [metrics["systems"][k]["kind"] != "tfrec" for k in metrics["systems"]
                                               if metrics["systems"][k]["label"] in expected]
    fig = recall_curves(lines, "Recall@K")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    drawn = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}
    assert drawn == {label: [(float(k), v) for k, v in points] for label, points in expected.items()}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100", "1000"]
    assert EVIL in [t.get_text() for t in ax.get_legend().get_texts()]


def test_ndcg_chart_bars_match_values(written):
    """One bar per system and panel, as long as its E2E / re-rank NDCG@10; a missing value is a labelled n/a."""
    metrics, md_path, _ = written
    rows, panels, views, _ = ndcg_bars(parse_metrics(metrics))
    assert views == ["e2e", "rerank"]
    e2e = [s["e2e"]["ndcg@10"] for s in metrics["systems"].values() if s.get("e2e")]
    rerank = [s["rerank"]["ndcg@10"] for s in metrics["systems"].values() if s.get("rerank")]
    assert [r.values[0] for r in rows if r.values[0] is not None] == pytest.approx(e2e)
    assert [r.values[1] for r in rows if r.values[1] is not None] == pytest.approx(rerank)
    fig = bar_panels(rows, panels, "NDCG@10")
    for p, ax in enumerate(fig.axes):
        widths = [bar.get_width() for bar in ax.patches]
        assert widths == pytest.approx([r.values[p] if r.values[p] is not None else 0.0 for r in rows])
        texts = [t.get_text() for t in ax.texts]
        assert texts == ["n/a" if r.values[p] is None else "%.3f" % r.values[p] for r in rows]
        assert ax.get_xlim()[0] == pytest.approx(panels[p].start)
    md = md_path.read_text(encoding="utf-8")
    start = float(re.search(r"re-rank axis starts at ([0-9.]+), not 0: Random order already scores 0\.889", md).group(1))
    assert 0.5 < start < min(rerank) and panels[1].start == pytest.approx(start)


def test_headline_is_tfrec_against_the_strongest_baseline_with_interval_and_verdict(written):
    """One row per view: tfrec, the strongest baseline, the difference, its saved paired interval and a plain verdict."""
    _, md_path, html_path = written
    md = md_path.read_text(encoding="utf-8")
    rows = md_table(md, "| Measure | tfrec | Value | Strongest baseline |")
    assert rows == [
        # no paired test saved for this view: the difference of the means, no interval, no verdict
        ["**End-to-end NDCG@10**", "tfrec retrieve top-100 + ranker", "0.430", "Stemmed BM25 (bm25s)", "0.354", "+0.076",
         "-", "-", "-"],
        ["**Retrieval Recall@100**", md_escape(EVIL), "0.850", "Stemmed BM25 (bm25s)", "0.780", "-0.004", "[-0.020, +0.012]",
         "898", "no measurable difference"],
        ["**Re-rank NDCG@10**", "tfrec retrieve top-100 + ranker", "0.911", "MiniLM \\| zero-shot", "0.905", "+0.006",
         "[+0.002, +0.010]", "1,128", "**better**"],
    ]
    assert md.index("## tfrec vs the strongest baseline") < md.index("## End-to-end search")
    sentence = ("The ranker improved end-to-end NDCG@10 on the 564 held-out tuning queries (0.427 vs 0.401 for retrieval "
                "alone), so it is kept.")
    assert "**%s**" % sentence in md and sentence in html_path.read_text(encoding="utf-8")


def test_ranker_sentence_for_each_choice_and_none_without_a_record():
    selection = {"kept": "retrieval", "ranker_tune_half_e2e_ndcg@10": 0.631, "retrieval_tune_half_e2e_ndcg@10": 0.653,
                 "n_queries": 40}
    assert ranker_sentence({"ranker": {"selection": selection}}) == (
        "The ranker did not improve on retrieval alone on the 40 held-out tuning queries (0.631 vs 0.653), so results are "
        "served in retrieval order.")
    assert ranker_sentence({"ranker": {"loss": "softmax"}}) == "" and ranker_sentence({}) == ""
    metrics = realistic_metrics()
    del metrics["training"]["ranker"]["selection"]
    assert "ranker" not in summary_table(metrics).split("tfrec vs the strongest baseline")[1].lower()


def test_no_targets_even_from_an_older_run_that_saved_them(tmp_path):
    """An older metrics.json with a (even malformed) targets list renders; no target or its value shows anywhere."""
    metrics = realistic_metrics()
    metrics["targets"] = [{"view": "retrieval", "metric": "recall@100", "system": "tfrec_hybrid", "target": 1.004, "met": False},
                          {"view": "e2e", "metric": "ndcg@10"}]
    md_path, html_path, _ = write_search_report(metrics, tmp_path)
    for text in (md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8"), summary_table(metrics)):
        assert "target" not in text.lower() and "1.004" not in text
        # every metric value shown is a share: none above 1 (differences are signed, counts have separators)
        assert max(float(v) for v in re.findall(r"(?<![\d.,+\-])\d\.\d{3}(?![\d])", text)) <= 1.0


def test_seen_cold_is_one_compact_table_without_flags(tmp_path):
    """One row per system with each view's seen and cold value, a row of group sizes, small groups greyed, no warnings."""
    metrics = realistic_metrics()
    md_path, html_path, _ = write_search_report(metrics, tmp_path)
    md = md_path.read_text(encoding="utf-8")
    header = "| System | End-to-end NDCG@10, seen | End-to-end NDCG@10, cold | Retrieval Recall@100, seen | Retrieval Recall@100, cold |"
    rows = md_table(md, header)
    assert [r[0] for r in rows] == ["Stemmed BM25 (bm25s)", "MiniLM \\| zero-shot", md_escape(EVIL),
                                    "tfrec retrieve top-100 + ranker", "Queries in the group"]
    assert rows[2] == [md_escape(EVIL), "-", "-", "0.950", "0.830"]
    assert rows[-1] == ["Queries in the group", "150", "978", "120", "778"]
    section = md[md.index("## Seen and cold queries"):md.index("## All paired comparisons")]
    assert "A product is seen when a training judgment names it." in section
    assert "⚠" not in md and "leakage" not in md.lower() and "honesty" not in md.lower() and "Grey:" not in section
    # a group of a handful of queries is shown with its size, greyed, and still without a flag
    for system in metrics["systems"].values():
        for view in ("retrieval", "e2e"):
            if system.get(view) and "seen" in system[view]:
                system[view]["seen"]["n_queries"] = 4
    md_path, html_path, _ = write_search_report(metrics, tmp_path)
    md, html = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert md_table(md, header)[-1] == ["Queries in the group", "4", "978", "4", "778"]
    assert '<td class="num muted">0.360</td>' in html and '<td class="num">0.350</td>' in html
    assert "Grey: a group of fewer than 30 queries" in md and "⚠" not in md


def test_training_records_are_tables_not_json(written):
    """Scalars and short mappings are key/value lines, lists of records are tables; no JSON text is left."""
    _, md_path, html_path = written
    md = md_path.read_text(encoding="utf-8")
    training = md[md.index("## Training"):md.index("## Exports")]
    assert "- Hybrid weights: dense 1, lexical 0.3" in training and "- Index: ScaNN build (s): 5.69" in training
    assert "- History: 0.9, 0.91" in training and "- Loss: softmax" in training
    assert md_table(training, "| Loss | Tuning half end-to-end NDCG@10 |") == [["softmax", "0.4198"], ["listmle", "0.4105"]]
    assert not re.search(r"[{}\[\]\"]", training.split("| Loss |")[0]) and "Selection" not in training
    assert '{"' not in html_path.read_text(encoding="utf-8")


def test_significance_timings_tables(written):
    """Verdicts follow the interval, timings are m:ss with their total."""
    _, md_path, _ = written
    md = md_path.read_text(encoding="utf-8")
    significance = md_table(md, "| System | Versus |")
    assert significance[0][4:] == ["+0.006", "[+0.002, +0.010]", "0.004", "1,128", "better"]
    assert significance[1][-1] == "no measurable difference" and significance[1][1] == "Stemmed BM25 (bm25s)"
    timings = md_table(md, "| Step |")
    assert timings[-1] == ["**Total**", "**%s**" % fmt_duration(1.2 + 30.5 + 600.0 + 3725.4)]
    assert [fmt_duration(s) for s in (1.2, 59.6, 600.0, 3725.4)] == ["0:01", "1:00", "10:00", "1:02:05"]


def test_long_chart_labels_wrap_at_word_boundaries():
    """A long system label wraps onto lines in the bar chart and the legend; no word is cut."""
    label = "tfrec hybrid retrieval (dense + in-graph BM25 + zero-shot)"
    wrapped = wrap_label(label, 28)
    assert "\n" in wrapped and wrapped.replace("\n", " ") == label and "…" not in wrapped
    fig = bar_panels([BarRow(label, "#0072B2", (0.4,)), BarRow("BM25", "#E69F00", (0.3,))], [Panel("NDCG@10", 0.0, 1.0)], "t")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [wrapped, "BM25"]
    assert wrap_label("a " * 60, 10).endswith("…") and wrap_label("supercalifragilistic", 5) == "supercalifragilistic"


def test_nulls_and_missing_optional_parts(tmp_path):
    """With only required keys the report still renders: no recall chart (an older one is removed), re-rank bars only."""
    write_search_report(realistic_metrics(), tmp_path)
    (tmp_path / "recall_at_k.svg").write_text("<svg/>")  # a chart of a tfrec 0.1 report
    md_path, html_path, charts = write_search_report(minimal_metrics(), tmp_path)
    md = md_path.read_text(encoding="utf-8")
    assert charts == [tmp_path / "ndcg.png"]
    assert not (tmp_path / "recall_at_k.png").exists() and not (tmp_path / "recall_at_k.svg").exists()
    assert "No system reported retrieval metrics." in md and "No system reported end-to-end metrics." in md
    assert md_table(md, "| System | Kind | NDCG@10 | MRR |") == [["Random order", "reference", "0.889", "-"], ["Ranker", "", "**0.900**", "-"]]
    rows, panels, views, _ = ndcg_bars(parse_metrics(minimal_metrics()))
    assert views == ["rerank"] and [r.values for r in rows] == [(0.889,), (0.9,)]
    parser = TagBalance()
    parser.feed(html_path.read_text(encoding="utf-8"))
    assert parser.errors == [] and parser.stack == [] and parser.tags.count("img") == 1
    lines = summary_table(minimal_metrics()).splitlines()
    assert re.split(r"\s{2,}", lines[-1].strip()) == ["Ranker", "-", "-", "0.900"]  # no recall evaluated: no R@K column


@pytest.mark.parametrize("key", ["dataset", "split", "systems"])
def test_missing_required_key_is_named(tmp_path, key):
    """Both entry points refuse a metrics dict without a required key and name it."""
    metrics = realistic_metrics()
    del metrics[key]
    with pytest.raises(ValueError, match="missing required key '%s'" % key):
        write_search_report(metrics, tmp_path)
    with pytest.raises(ValueError, match="'%s'" % key):
        summary_table(metrics)
    assert not (tmp_path / "report.md").exists()


def test_bad_values_are_named():
    """A non-numeric metric or an incomplete comparison fails with its location in the message."""
    metrics = realistic_metrics()
    metrics["systems"]["minilm"]["retrieval"]["recall@10"] = "high"
    with pytest.raises(ValueError, match=r"\['minilm'\]\['retrieval'\]\['recall@10'\].*'high'"):
        summary_table(metrics)
    metrics = realistic_metrics()
    del metrics["significance"][1]["versus"]
    with pytest.raises(ValueError, match=r"significance\[1\] is missing required key 'versus'"):
        summary_table(metrics)


def test_numpy_scalars_and_nan_are_accepted(tmp_path):
    """numpy numbers count as numbers; NaN (an empty group) shows as not reported."""
    metrics = minimal_metrics()
    metrics["systems"]["ranker"]["rerank"] = {"ndcg@10": np.float32(0.9), "mrr": np.float64("nan"), "map": np.int64(1)}
    last = re.split(r"\s{2,}", summary_table(metrics).splitlines()[-1].strip())
    assert last == ["Ranker", "-", "-", "0.900"]
    md = write_search_report(metrics, tmp_path)[0].read_text(encoding="utf-8")
    assert md_table(md, "| System | Kind | NDCG@10 | MRR | MAP |")[1] == ["Ranker", "", "**0.900**", "-", "**1.000**"]


def test_summary_table_rows_and_headline():
    """One fixed-width row per system with its numbers (or '-'), then tfrec against the strongest baseline per view."""
    metrics = realistic_metrics()
    lines = summary_table(metrics).splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    assert header == ["System", "E2E NDCG@10", "R@10", "R@100", "R@1000", "MRR", "Re-rank NDCG@10"]
    assert len({len(line) for line in lines[1:3 + len(metrics["systems"])]}) == 1  # aligned columns
    columns = [("e2e", "ndcg@10"), ("retrieval", "recall@10"), ("retrieval", "recall@100"),
               ("retrieval", "recall@1000"), ("retrieval", "mrr"), ("rerank", "ndcg@10")]
    for line, system in zip(lines[3:3 + len(metrics["systems"])], metrics["systems"].values()):
        cells = re.split(r"\s{2,}", line.strip())
        expected = ["%.3f" % system[v][m] if system.get(v) and system[v].get(m) is not None else "-" for v, m in columns]
        assert cells[-6:] == expected
        assert line.startswith(" ".join(system["label"].split())[:37])
    rest = lines[3 + len(metrics["systems"]):]
    assert rest[0] == "" and rest[1] == "tfrec vs the strongest baseline (paired 95% interval over queries):"
    assert re.split(r"\s{2,}", rest[3].strip()) == ["End-to-end NDCG@10", "0.430", "0.354", "+0.076", "-", "-", "Stemmed BM25 (bm25s)"]
    assert re.split(r"\s{2,}", rest[4].strip()) == ["Retrieval Recall@100", "0.850", "0.780", "-0.004", "[-0.020, +0.012]",
                                                   "no measurable difference", "Stemmed BM25 (bm25s)"]
    assert re.split(r"\s{2,}", rest[5].strip()) == ["Re-rank NDCG@10", "0.911", "0.905", "+0.006", "[+0.002, +0.010]", "better",
                                                   "MiniLM | zero-shot"]
    assert rest[6] == "  (-: this run saved no paired interval for that measure)"
    assert rest[7].startswith("The ranker improved end-to-end NDCG@10 on the 564 held-out tuning queries")
    assert "target" not in "\n".join(lines).lower()


def test_summary_shows_only_the_cut_offs_evaluated():
    """With evaluation.ks = [10, 20] the summary has R@10 and R@20 columns, no empty R@100 or R@1000."""
    metrics = realistic_metrics()
    for system in metrics["systems"].values():
        part = system.get("retrieval")
        if part:
            part["recall@20"] = part.pop("recall@100")
            part.pop("recall@1000")
    metrics["significance"] = [c for c in metrics["significance"] if c["view"] != "retrieval"]
    lines = summary_table(metrics).splitlines()
    assert re.split(r"\s{2,}", lines[1].strip()) == ["System", "E2E NDCG@10", "R@10", "R@20", "MRR", "Re-rank NDCG@10"]
    retrieval = next(line for line in lines if line.strip().startswith("Retrieval"))
    assert re.split(r"\s{2,}", retrieval.strip())[:4] == ["Retrieval Recall@20", "0.850", "0.780", "+0.070"]


def recommendation_metrics() -> dict:
    """A recommendation run's metrics.json: two baselines, the model, intervals against the reference and the strongest."""
    def system(label, kind, recall, ndcg):
        return {"label": label, "kind": kind, "recall@10": recall, "ndcg@10": ndcg, "recall@50": recall + 0.1,
                "ndcg@50": ndcg + 0.02, "mrr": ndcg * 0.7, "coverage@10": 0.4, "diversity@10": 0.35, "novelty@10": 10.1,
                "depth": 50}

    def test(versus, metric, diff, low, high):
        return {"system": "tfrec_transformer", "versus": versus, "metric": metric, "mean_diff": diff, "low": low, "high": high,
                "p_value": 0.2, "n_users": 300, "confidence": 0.95}

    return {
        "n_users": 300, "n_items": 1585, "ks": [10, 50], "exclude_history": False, "reference": "zero_shot_text",
        "beyond_accuracy_k": 10, "novelty_smoothing": "add-one", "model": "tfrec_transformer", "split": "valid",
        "systems": {"popularity": system("Popularity", "baseline", 0.06, 0.033),
                    "zero_shot_text": system("Zero-shot MiniLM (history mean)", "baseline", 0.153, 0.066),
                    "tfrec_transformer": system("tfrec transformer (text + id)", "model", 0.133, 0.062)},
        "significance": [test("zero_shot_text", "recall@10", -0.02, -0.053, 0.015), test("zero_shot_text", "ndcg@10", -0.004, -0.019, 0.009)],
        "seen_cold": {"valid_targets": 300, "cold_targets": 3,
                      "popularity": {"seen": {"recall@10": 0.061, "ndcg@10": 0.033}, "cold": {"recall@10": 0.0, "ndcg@10": 0.0}},
                      "tfrec_transformer": {"seen": {"recall@10": 0.131, "ndcg@10": 0.061},
                                            "cold": {"recall@10": 0.333, "ndcg@10": 0.167}}},
        "similar_items": {}, "training": {}, "seconds": {},
    }


def test_recommendation_headline_summary_and_seen_cold(tmp_path):
    """The model against the strongest baseline per metric with its interval; cold targets in a greyed row of 3 users."""
    metrics = recommendation_metrics()
    rows = recommendation_headline(metrics)
    assert [(r.view, r.baseline, r.diff, r.low, r.high, r.verdict) for r in rows] == [
        ("Recall@10", "Zero-shot MiniLM (history mean)", -0.02, -0.053, 0.015, "no measurable difference"),
        ("NDCG@10", "Zero-shot MiniLM (history mean)", -0.004, -0.019, 0.009, "no measurable difference")]
    summary = recommendation_summary(metrics)
    assert "tfrec vs the strongest baseline (paired 95% interval over users):" in summary
    assert re.split(r"\s{2,}", summary.splitlines()[-2].strip())[:6] == [
        "Recall@10", "0.133", "0.153", "-0.020", "[-0.053, +0.015]", "no measurable difference"]
    write_recommendation_report(tmp_path, metrics, "Toy", [])
    md, html = (tmp_path / "report.md").read_text(encoding="utf-8"), (tmp_path / "report.html").read_text(encoding="utf-8")
    assert md.index("## tfrec vs the strongest baseline") < md.index("## Results")
    assert md_table(md, "| Measure |")[0][-1] == "no measurable difference"
    cold = md_table(md, "| System | Recall@10, seen | Recall@10, cold |")
    assert cold[-1] == ["Users in the group", "297", "3", "297", "3"] and "Grey: a group of fewer than 30 users" in md
    assert '<td class="num muted">0.333</td>' in html and "A valid target is seen when it appears in the training" in md
    # the strongest baseline is the one compared with, even when it is not the report's reference
    metrics["systems"]["popularity"]["recall@10"] = 0.2
    metrics["significance"].append({"system": "tfrec_transformer", "versus": "popularity", "metric": "recall@10",
                                    "mean_diff": -0.067, "low": -0.1, "high": -0.03, "n_users": 300})
    first = recommendation_headline(metrics)[0]
    assert (first.baseline, first.verdict, first.interval()) == ("Popularity", "worse", "[-0.100, -0.030]")


def test_md_escape_neutralises_markup():
    """Markup characters are escaped while ordinary text and intra-word underscores stay readable."""
    assert md_escape("a|b *c* `d` _e_ f_g [x](y) <b>") == "a\\|b \\*c\\* \\`d\\` \\_e\\_ f_g [x\\](y) &lt;b>"
    assert md_escape("line\nbreak &amp; 3 < 4") == "line break &amp;amp; 3 < 4"


def test_recommendation_run_tests_the_model_against_the_strongest_baseline_when_not_the_reference():
    """The stage adds the paired test the headline needs when the strongest baseline is not the report's reference."""
    from tfrec.recommend.stages.evaluation import versus_strongest

    rng = np.random.default_rng(0)
    per_user = {name: {"recall@10": (rng.random(200) < p).astype(float), "ndcg@10": rng.random(200) * p}
                for name, p in (("popularity", 0.3), ("zero_shot_text", 0.1), ("model", 0.2))}
    report = {"reference": "zero_shot_text", "systems": {
        name: {"kind": "model" if name == "model" else "baseline", **{m: float(v.mean()) for m, v in metrics.items()}}
        for name, metrics in per_user.items()}}
    tests = versus_strongest(report, per_user, "model", 200, 0)
    assert [(t["system"], t["versus"], t["metric"]) for t in tests] == [("model", "popularity", "recall@10"),
                                                                        ("model", "popularity", "ndcg@10")]
    assert tests[0]["mean_diff"] == pytest.approx(per_user["model"]["recall@10"].mean() - per_user["popularity"]["recall@10"].mean())
    assert tests[0]["low"] <= tests[0]["mean_diff"] <= tests[0]["high"] and tests[0]["n_users"] == 200
    report["reference"] = "popularity"  # already compared with the strongest baseline: nothing to add
    assert versus_strongest(report, per_user, "model", 200, 0) == []
