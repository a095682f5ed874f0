"""The README and the documentation site: size, wording, coverage of the config keys, metric conventions.

The site itself is built with `mkdocs build --strict` by `make docs` (and CI); the build test here
is marked slow and skipped where the `docs` extra is not installed.
"""
from __future__ import annotations

import html
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfrec.evaluation import search as ev

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_BYTES = 12 * 1024
# Words of our own process, never of the user's data or tfrec's behaviour.
INTERNAL = re.compile(r"\b(issues?|milestones?|probes?|quality targets?|targets? (?:met|missed)|not met)\b", re.IGNORECASE)
RUN_NAME = re.compile(r"\b[a-z][a-z0-9_-]*-\d{8}-\d{6}\b")  # e.g. homedepot-search-20261124-093323


def _hook():
    spec = importlib.util.spec_from_file_location("config_reference", DOCS / "hooks" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_readme_reads_in_five_minutes():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, "README.md is %d bytes; keep it under %d and move detail into docs/" % (size, README_MAX_BYTES)
    text = README.read_text(encoding="utf-8")
    for heading in ("## Install", "## The two commands", "## Your own data", "## Serve and query", "## Read more"):
        assert heading in text


@pytest.mark.parametrize("path", [README, *_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_process_words_or_foreign_run_names(path):
    text = path.read_text(encoding="utf-8")
    assert not INTERNAL.findall(text), "%s speaks of our process: %s" % (path.name, sorted(set(INTERNAL.findall(text))))
    assert not RUN_NAME.findall(text), "%s names runs the reader does not have: %s" % (path.name, RUN_NAME.findall(text))


def test_every_config_key_has_a_meaning_in_the_reference():
    hook = _hook()
    sections = hook.read_schema()
    assert {"run", "data", "data.catalog", "data.judgments", "data.interactions", "retrieval", "ranking", "evaluation"} <= {
        s.path for s in sections}
    missing = ["%s.%s" % (s.path, k.name) for s in sections for k in s.keys if not hook.meaning(s, k)]
    assert not missing, "config keys without a meaning (comment them in schema.py or docs/hooks): %s" % missing
    stale = set(hook.MEANINGS) - {"%s.%s" % (s.path, k.name) for s in sections for k in s.keys}
    assert not stale, "docs/hooks/config_reference.py describes keys the schema no longer has: %s" % sorted(stale)
    rendered = hook.render()
    assert "`data.judgments.label_min`" in rendered and "`retrieval.top_k`" in rendered
    assert hook.MARKER in (DOCS / "configuration.md").read_text(encoding="utf-8")


def test_own_data_page_explains_every_own_data_key():
    page = (DOCS / "own-data.md").read_text(encoding="utf-8")
    sections = {s.path: s for s in _hook().read_schema()}
    for path in ("data.catalog", "data.judgments", "data.interactions"):
        for key in sections[path].keys:
            assert "`%s.%s`" % (path, key.name) in page, "docs/own-data.md does not explain %s.%s" % (path, key.name)


def test_metric_conventions_in_the_docs_are_what_the_code_does():
    # Query "a": judged labels all 1 (ideal DCG 0, no positive). Query "b": one positive at rank 1.
    es = ev.SearchEvalSet(
        queries=np.array(["a", "b"], dtype=object), offsets=np.array([0, 1, 2]),
        products=np.array([0, 1], dtype=np.int32), labels=np.array([1.0, 3.0], dtype=np.float32),
    )
    top = np.array([[2, 3], [1, 2]])
    mean, per_query = ev.end_to_end_ndcg(es, top, k=2)
    assert per_query[0] == 0.0 and mean == pytest.approx(0.5)  # counted as 0, kept in the mean
    recall = ev.recall_at_k_per_query(es, top, [2])[2]
    assert np.isnan(recall[0]) and ev.recall_at_k(es, top, [2])[2] == 1.0  # left out of recall
    assert np.isnan(ev.mrr_per_query(es, top)[0])
    page = (DOCS / "evaluation.md").read_text(encoding="utf-8")
    assert "It **counts as 0** in every NDCG mean" in page
    assert "**queries without a positive are left out**" in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="the docs extra is not installed (pip install -e '.[docs]' or make docs)")
def test_site_builds_strictly_and_speaks_to_users(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    command = [str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env={
        **__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # The API pages render docstrings: they must not speak of our process either.
    for page in (tmp_path / "site").rglob("*.html"):
        text = html.unescape(re.sub(r"<script.*?</script>|<[^>]+>", " ", page.read_text(encoding="utf-8"), flags=re.S))
        assert not INTERNAL.findall(text), "%s: %s" % (page.relative_to(tmp_path), sorted(set(INTERNAL.findall(text))))
