"""Search report: Markdown/HTML files, PNG charts drawn from the metrics, escaping, validation, summary table."""
from __future__ import annotations

import base64
import io
import re
import statistics
from html.parser import HTMLParser

import numpy as np
import pytest

from matplotlib.image import imread

from tfrec.reports import summary_table, write_search_report
from tfrec.reports.markup import md_escape
from tfrec.reports.metrics import parse_metrics
from tfrec.reports.plots import bar_panels, recall_curves
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
        "targets": [
            {"view": "e2e", "metric": "ndcg@10", "system": "tfrec_search", "target": 0.419, "value": 0.43, "met": True},
            {"view": "rerank", "metric": "ndcg@10", "system": "tfrec_search", "target": 0.92, "value": 0.911, "met": False},
        ],
        "timings": {"load data": 1.2, "baselines": 30.5, "retrieval training": 600.0, "ranker training": 3725.4},
        "training": {"retrieval": {"epochs": 3, "learning_rate": 0.001}, "ranker": {"loss": "softmax", "history": [0.9, 0.91]}},
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
    assert parser.tags.count("img") == 2 and parser.tags.count("table") == 8
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
    for table_header in ("| System | Kind | Recall@10", "| System | View | Metric | Seen"):
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


def test_seen_cold_flags_a_gap_larger_than_the_baselines(written):
    """The trained system's seen-cold gap is compared with the baselines' median gap and flagged when 0.05 larger."""
    metrics, md_path, _ = written
    rows = md_table(md_path.read_text(encoding="utf-8"), "| System | View | Metric | Seen |")
    systems = metrics["systems"]
    base_gaps = [s["retrieval"]["seen"]["recall@100"] - s["retrieval"]["cold"]["recall@100"] for s in systems.values() if s["kind"] == "baseline"]
    hybrid = systems["tfrec_hybrid"]["retrieval"]
    gap = hybrid["seen"]["recall@100"] - hybrid["cold"]["recall@100"]
    row = next(r for r in rows if r[1] == "Retrieval" and r[0].startswith("&lt;script>"))
    assert row[3:6] == ["0.950", "0.830", "%+.3f" % gap]
    assert row[6] == "**⚠ %+.3f**" % (gap - statistics.median(base_gaps))
    assert row[7] == "120 / 778"
    calm = next(r for r in rows if r[0] == "tfrec retrieve top-100 + ranker")
    assert "⚠" not in "".join(calm)


def test_significance_targets_timings_tables(written):
    """Verdicts follow the interval, targets say met/missed, timings are m:ss with their total."""
    _, md_path, _ = written
    md = md_path.read_text(encoding="utf-8")
    significance = md_table(md, "| System | Versus |")
    assert significance[0][4:] == ["+0.006", "[+0.002, +0.010]", "0.004", "1,128", "better"]
    assert significance[1][-1] == "no clear difference" and significance[1][1] == "Stemmed BM25 (bm25s)"
    targets = md_table(md, "| System | View | Metric | Target |")
    assert [r[-1] for r in targets] == ["**met**", "**missed**"] and targets[1][3:5] == ["0.920", "0.911"]
    timings = md_table(md, "| Step |")
    assert timings[-1] == ["**Total**", "**%s**" % fmt_duration(1.2 + 30.5 + 600.0 + 3725.4)]
    assert [fmt_duration(s) for s in (1.2, 59.6, 600.0, 3725.4)] == ["0:01", "1:00", "10:00", "1:02:05"]


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
    assert re.split(r"\s{2,}", lines[-1].strip()) == ["Ranker", "-", "-", "-", "-", "-", "0.900"]


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
    """A non-numeric metric or an incomplete target entry fails with its location in the message."""
    metrics = realistic_metrics()
    metrics["systems"]["minilm"]["retrieval"]["recall@10"] = "high"
    with pytest.raises(ValueError, match=r"\['minilm'\]\['retrieval'\]\['recall@10'\].*'high'"):
        summary_table(metrics)
    metrics = realistic_metrics()
    del metrics["targets"][1]["target"]
    with pytest.raises(ValueError, match=r"targets\[1\] is missing required key 'target'"):
        summary_table(metrics)


def test_numpy_scalars_and_nan_are_accepted(tmp_path):
    """numpy numbers count as numbers; NaN (an empty group) shows as not reported."""
    metrics = minimal_metrics()
    metrics["systems"]["ranker"]["rerank"] = {"ndcg@10": np.float32(0.9), "mrr": np.float64("nan"), "map": np.int64(1)}
    last = re.split(r"\s{2,}", summary_table(metrics).splitlines()[-1].strip())
    assert last == ["Ranker", "-", "-", "-", "-", "-", "0.900"]
    md = write_search_report(metrics, tmp_path)[0].read_text(encoding="utf-8")
    assert md_table(md, "| System | Kind | NDCG@10 | MRR | MAP |")[1] == ["Ranker", "", "**0.900**", "-", "**1.000**"]


def test_summary_table_rows_and_targets():
    """One fixed-width row per system with its six numbers (or '-'), then a met/missed line per target."""
    metrics = realistic_metrics()
    lines = summary_table(metrics).splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    assert header == ["System", "E2E NDCG@10", "R@10", "R@100", "R@1000", "MRR", "Re-rank NDCG@10"]
    assert len({len(line) for line in lines[1:3 + len(metrics["systems"])]}) == 1  # aligned columns
    columns = [("e2e", "ndcg@10"), ("retrieval", "recall@10"), ("retrieval", "recall@100"),
               ("retrieval", "recall@1000"), ("retrieval", "mrr"), ("rerank", "ndcg@10")]
    for line, system in zip(lines[3:], metrics["systems"].values()):
        cells = re.split(r"\s{2,}", line.strip())
        expected = ["%.3f" % system[v][m] if system.get(v) and system[v].get(m) is not None else "-" for v, m in columns]
        assert cells[-6:] == expected
        assert line.startswith(" ".join(system["label"].split())[:37])
    target_lines = lines[lines.index("Targets:") + 1:]
    assert target_lines[0].split()[0] == "met" and "0.430 (target 0.419)" in target_lines[0]
    assert target_lines[1].split()[0] == "missed" and "0.911 (target 0.920)" in target_lines[1]


def test_md_escape_neutralises_markup():
    """Markup characters are escaped while ordinary text and intra-word underscores stay readable."""
    assert md_escape("a|b *c* `d` _e_ f_g [x](y) <b>") == "a\\|b \\*c\\* \\`d\\` \\_e\\_ f_g [x\\](y) &lt;b>"
    assert md_escape("line\nbreak &amp; 3 < 4") == "line break &amp;amp; 3 < 4"
