"""`tfrec catalog update`: a changed catalog served by a search run's trained models, checked through the served models.

Two updates of a copy of the session's small export: the first adds, retitles and removes a product,
the second does it again on top of the first. Searches go through the exported models
(LocalClient + SearchService), as a server would answer them. Each update writes every search
SavedModel again (about a minute on 2 cores), so the tests that read them are marked slow; the
checks of bad changes files write nothing and run in seconds.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytest

from cli_runs import in_repository_root
from tfrec.cli.main import main
from tfrec.lexical.tokens import raw_tokens

HEADER = "action,product_id,title"
NEW_1 = ("cu-new-1", "Glimmerforge titanium snowplow blade")
NEW_2 = ("cu-new-2", "Quillspark copper weathervane rooster")
CHANGED_1 = "Zorblax quantum birdbath fountain"
CHANGED_2 = "Velvetrune marble chess table"


def write_changes(path: Path, rows: Sequence[str], header: str = HEADER) -> Path:
    """A changes file with ``header`` and ``rows`` (CSV lines as written)."""
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def csv_row(*cells: str) -> str:
    """One CSV line, titles quoted."""
    return ",".join('"%s"' % c.replace('"', '""') if ("," in c or '"' in c) else c for c in cells)


def version_listing(export: Path) -> dict[str, list[str]]:
    """Every model folder's entries (versions and anything else), and the stored states."""
    return {p.name: sorted(e.name for e in p.iterdir()) for p in sorted(export.iterdir()) if p.is_dir()}


def served_catalog(export: Path, version: int) -> tuple[list[str], list[str]]:
    """The ids and titles a version of search_retrieval serves."""
    content = json.loads((export / "search_retrieval" / str(version) / "assets.extra" / "catalog.json").read_text(encoding="utf-8"))
    return content["ids"], content["titles"]


def catalog_matrices(export: Path, version: int) -> dict[str, np.ndarray]:
    """The catalog matrices [N, d] every model of a version holds (product tower and zero-shot vectors), by model and name."""
    from tfrec import compat

    tf = compat.tensorflow()
    n = len(served_catalog(export, version)[0])
    out = {}
    for model in sorted(p for p in export.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (model / str(version)).is_dir():
            continue
        reader = tf.train.load_checkpoint(str(model / str(version) / "variables" / "variables"))
        dtypes = reader.get_variable_to_dtype_map()
        for name, shape in reader.get_variable_to_shape_map().items():
            if len(shape) == 2 and shape[0] == n and dtypes[name].is_floating:
                out["%s:%s" % (model.name, name)] = reader.get_tensor(name)
    assert out, "no catalog matrices in version %d of %s" % (version, export)
    return out


def search_ids(export: Path, queries: Sequence[str], k: int = 10) -> list[list[str]]:
    """The product ids the exported models return for each query (newest version)."""
    from tfrec.serving.local import LocalClient
    from tfrec.serving.service import ProductCatalog, SearchService

    with LocalClient(export) as client:
        service = SearchService(client, ProductCatalog.from_export(export))
        return [[hit.item_id for hit in hits] for hits in service.search_many(list(queries), k=k)]


def run_update(run: Path, export: Path, changes: Path, capsys: Any, extra: Sequence[str] = ()) -> tuple[int, str, str]:
    """`tfrec catalog update` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with in_repository_root():
        code = main(["catalog", "update", str(run), "--export-dir", str(export), "--changes", str(changes), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def distinctive(titles: Sequence[str], row: int) -> Optional[str]:
    """A word of ``titles[row]`` that no other title holds (None when it has none)."""
    counts: dict[str, int] = {}
    for title in titles:
        for token in set(raw_tokens(title)):
            counts[token] = counts.get(token, 0) + 1
    unique = [t for t in raw_tokens(titles[row]) if counts[t] == 1 and t.isalpha() and len(t) >= 5]
    return " ".join(unique[:3]) or None


@pytest.fixture(scope="module")
def copied(search_run, search_export, tmp_path_factory) -> dict:
    """A copy of the session export that the checks of bad changes files must leave as it is."""
    export = tmp_path_factory.mktemp("catalog_checks") / "export"
    shutil.copytree(search_export, export)
    return {"export": export, "run": search_run}


@pytest.fixture(scope="module")
def updated(search_run, search_export, tmp_path_factory) -> dict:
    """Two catalog updates of a copy of the session export, with what was searched after each."""
    tmp = tmp_path_factory.mktemp("catalog_update")
    export = tmp / "export"
    shutil.copytree(search_export, export)
    ids, titles = served_catalog(export, 1)
    rows = [i for i in range(len(ids)) if distinctive(titles, i)]
    changed, removed, changed_2, removed_2 = (rows[i] for i in (3, 7, 11, 15))
    info = {"export": export, "run": search_run, "ids": ids, "titles": titles,
            "changed": (ids[changed], titles[changed], distinctive(titles, changed)),
            "removed": (ids[removed], titles[removed]),
            "changed_2": (ids[changed_2], titles[changed_2]), "removed_2": (ids[removed_2], titles[removed_2])}
    first = write_changes(tmp / "changes-1.csv", [
        csv_row("add", *NEW_1), csv_row("change", ids[changed], CHANGED_1), csv_row("remove", ids[removed], ""),
    ])
    second = write_changes(tmp / "changes-2.csv", [
        csv_row("remove", ids[removed_2], ""), csv_row("add", *NEW_2), csv_row("change", ids[changed_2], CHANGED_2),
    ])
    queries = [NEW_1[1], titles[removed], CHANGED_1, info["changed"][2], NEW_2[1], titles[removed_2], CHANGED_2]
    info["before"] = search_ids(export, queries)
    for step, changes in (("v2", first), ("v3", second)):
        with in_repository_root():  # capsys is function-scoped: capture by hand here
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["catalog", "update", str(search_run), "--export-dir", str(export), "--changes", str(changes)])
        assert code == 0, err.getvalue()
        info[step] = {"stdout": out.getvalue(), "stderr": err.getvalue(), "hits": dict(zip(queries, search_ids(export, queries)))}
    return info


@pytest.mark.slow
def test_an_added_product_is_found_by_its_title(updated):
    assert updated["v2"]["hits"][NEW_1[1]][0] == NEW_1[0]
    assert updated["v3"]["hits"][NEW_1[1]][0] == NEW_1[0]  # still there after the second update
    assert updated["v3"]["hits"][NEW_2[1]][0] == NEW_2[0]
    assert NEW_2[0] not in updated["v2"]["hits"][NEW_2[1]]  # not before it was added


@pytest.mark.slow
def test_a_removed_product_is_never_returned(updated):
    removed_id, removed_title = updated["removed"]
    assert removed_id in updated["before"][1][:3]  # its exact title found it before
    for step in ("v2", "v3"):
        assert all(removed_id not in hits for hits in updated[step]["hits"].values())
        ids, _ = served_catalog(updated["export"], int(step[1]))
        assert removed_id not in ids
    removed_2 = updated["removed_2"][0]
    assert removed_2 in updated["v2"]["hits"][updated["removed_2"][1]][:3]
    assert all(removed_2 not in hits for hits in updated["v3"]["hits"].values())


@pytest.mark.slow
def test_a_changed_title_is_found_by_its_new_words_not_its_old_ones(updated):
    changed_id, old_title, old_words = updated["changed"]
    assert changed_id in updated["before"][3][:3]  # its old distinctive words found it before
    for step in ("v2", "v3"):
        hits = updated[step]["hits"]
        assert hits[CHANGED_1][0] == changed_id
        assert changed_id not in hits[old_words][:3]
    _, titles = served_catalog(updated["export"], 3)
    ids, _ = served_catalog(updated["export"], 3)
    assert titles[ids.index(changed_id)] == CHANGED_1  # the second update kept the first one's title
    assert updated["v3"]["hits"][CHANGED_2][0] == updated["changed_2"][0]


@pytest.mark.slow
def test_the_updates_accumulate_and_are_summarized(updated):
    export = updated["export"]
    v1_ids, _ = served_catalog(export, 1)
    v2_ids, _ = served_catalog(export, 2)
    v3_ids, v3_titles = served_catalog(export, 3)
    assert len(v2_ids) == len(v1_ids) and len(v3_ids) == len(v1_ids)  # one added, one removed each time
    assert set(v3_ids) == (set(v1_ids) - {updated["removed"][0], updated["removed_2"][0]}) | {NEW_1[0], NEW_2[0]}
    models = [p.name for p in export.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert "search_retrieval" in models and "search_ranker" in models
    for name in models:  # every model of the export got both versions
        assert {"1", "2", "3"} <= {e.name for e in (export / name).iterdir()}, name
    out = updated["v2"]["stdout"]
    assert re.search(r"catalog: %d products \(1 added, 1 changed, 1 removed\)" % len(v2_ids), out), out
    assert re.search(r"vectors: 2 encoded, %d reused" % (len(v2_ids) - 2), out), out
    assert "version: 2 published in" in out and "version: 3 published in" in updated["v3"]["stdout"]
    assert all("load" in updated[s]["stdout"] and "save" in updated[s]["stdout"] for s in ("v2", "v3"))
    assert "export: search_retrieval %s" % (export / "search_retrieval" / "3") in updated["v3"]["stdout"]
    assert "[catalog]" in updated["v2"]["stderr"]
    # One stored state per served catalog: version 1 is the run's own (nothing stored for it).
    states = [p for p in (export / ".tfrec-catalog").iterdir() if p.is_dir()]
    assert len(states) == 2


def matched(before: dict[str, np.ndarray], after: dict[str, np.ndarray], rows_old: np.ndarray, rows_new: np.ndarray) -> None:
    """Each matrix of ``after`` has a matrix of the same model in ``before`` whose kept rows are bit-identical."""
    models = {name.split(":")[0] for name in after}
    assert models == {name.split(":")[0] for name in before}
    for model in models:
        old = [m for name, m in before.items() if name.startswith(model + ":")]
        new = [m for name, m in after.items() if name.startswith(model + ":")]
        assert len(old) == len(new), model  # checkpoint names may differ between versions; the matrices may not
        for matrix in new:
            assert any(m.shape[1] == matrix.shape[1] and np.array_equal(m[rows_old], matrix[rows_new]) for m in old), model


@pytest.mark.slow
def test_unchanged_products_keep_their_vectors_bit_for_bit(updated):
    export = updated["export"]
    for old, new in ((1, 2), (2, 3)):
        old_ids, old_titles = served_catalog(export, old)
        new_ids, new_titles = served_catalog(export, new)
        old_row = {pid: i for i, pid in enumerate(old_ids)}
        kept = [(old_row[pid], i) for i, (pid, title) in enumerate(zip(new_ids, new_titles))
                if pid in old_row and old_titles[old_row[pid]] == title]
        assert len(kept) == len(new_ids) - 2  # all but the added and the changed product
        before, after = catalog_matrices(export, old), catalog_matrices(export, new)
        assert len(after) >= 2  # product tower and zero-shot vectors
        rows_old, rows_new = np.array(kept).T
        matched(before, after, rows_old, rows_new)
        # the changed product's vectors did change
        changed = [i for i, (pid, title) in enumerate(zip(new_ids, new_titles)) if pid in old_row and old_titles[old_row[pid]] != title]
        assert len(changed) == 1
        with pytest.raises(AssertionError):
            matched(before, after, np.array([old_row[new_ids[changed[0]]]]), np.array(changed))
    # the product the first update added kept its vectors through the second one (stored with that update)
    v2_ids, v3_ids = served_catalog(export, 2)[0], served_catalog(export, 3)[0]
    matched(catalog_matrices(export, 2), catalog_matrices(export, 3), np.array([v2_ids.index(NEW_1[0])]),
            np.array([v3_ids.index(NEW_1[0])]))


BAD_FILES = [
    ("unknown action", [csv_row("add", "cu-x", "A new lamp"), csv_row("ad", "cu-y", "Another lamp")], HEADER,
     ["line 3", "'action'", "unknown action 'ad'"]),
    ("add of an existing id", ["add,{id0},A lamp"], HEADER, ["line 2", "'product_id'", "already in the served catalog"]),
    ("change of an unknown id", ["change,cu-nowhere,A lamp"], HEADER, ["line 2", "'product_id'", "not in the served catalog"]),
    ("remove of an unknown id", ["remove,cu-nowhere,"], HEADER, ["line 2", "'product_id'", "not in the served catalog"]),
    ("duplicate ids", ["change,{id0},A lamp", "remove,{id0},"], HEADER, ["line 3", "'product_id'", "first on line 2"]),
    ("empty title for add", ["add,cu-x,  "], HEADER, ["line 2", "'title'", "non-empty title"]),
    ("empty title for change", ["change,{id0},"], HEADER, ["line 2", "'title'", "non-empty title"]),
    ("title on remove", ["remove,{id0},A lamp"], HEADER, ["line 2", "'title'", "remove row"]),
    ("missing header column", ["add,cu-x"], "action,product_id", ["line 1", "missing column(s) 'title'"]),
    ("unknown column", ["add,cu-x,A lamp,12.5"], HEADER + ",price", ["line 1", "unknown column(s) 'price'"]),
    ("huge title", ["add,cu-x," + "lamp" * 2500], HEADER, ["line 2", "'title'", "10,000 bytes", "8,192"]),
    ("malformed CSV", ['add,cu-x,"A lamp', "remove,{id0},"], HEADER, ["line 2", "malformed CSV"]),
    ("wrong field count", ["add,cu-x,A lamp,extra"], HEADER, ["line 2", "expected 3 fields"]),
    ("no changes", [], HEADER, ["no changes"]),
]


@pytest.mark.parametrize("case, rows, header, expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_changes_file_names_line_and_field_and_writes_nothing(copied, tmp_path, capsys, case, rows, header, expected):
    export = copied["export"]
    ids, _ = served_catalog(export, 1)
    changes = write_changes(tmp_path / "changes.csv", [r.format(id0=ids[0]) for r in rows], header)
    before = version_listing(export)
    code, out, err = run_update(copied["run"], export, changes, capsys)
    assert code == 2, (out, err)
    assert "changes.csv" in err and "tfrec catalog: error:" in err, err
    for text in expected:
        assert text in err, (text, err)
    assert version_listing(export) == before
    assert "export:" not in out


def test_bad_bytes_and_an_empty_file_are_errors(copied, tmp_path, capsys):
    export = copied["export"]
    before = version_listing(export)
    bad = tmp_path / "latin1.csv"
    bad.write_bytes((HEADER + "\nadd,cu-x,Caf\xe9 lamp\n").encode("latin-1"))
    code, _, err = run_update(copied["run"], export, bad, capsys)
    assert code == 2 and "latin1.csv line 2" in err and "not valid utf-8" in err, err
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    code, _, err = run_update(copied["run"], export, empty, capsys)
    assert code == 2 and "empty.csv" in err and "empty file" in err, err
    code, _, err = run_update(copied["run"], export, tmp_path / "missing.csv", capsys)
    assert code == 2 and "missing.csv" in err and "not found" in err, err
    assert version_listing(export) == before


def fake_export(folder: Path, ids: Sequence[str], titles: Sequence[str], run: str) -> Path:
    """An export folder holding only what an update reads first: search_retrieval/1's catalog file and marker."""
    extra = folder / "search_retrieval" / "1" / "assets.extra"
    extra.mkdir(parents=True)
    (extra / "catalog.json").write_text(json.dumps({"ids": list(ids), "titles": list(titles), "rerank": True}), encoding="utf-8")
    (extra / "tfrec_export.json").write_text(json.dumps({"run": run}), encoding="utf-8")
    return folder


def test_an_export_of_another_run_or_catalog_is_refused(copied, tmp_path, capsys):
    run = copied["run"]
    ids, titles = served_catalog(copied["export"], 1)
    changes = write_changes(tmp_path / "changes.csv", [csv_row("add", *NEW_1)])
    other = fake_export(tmp_path / "other-run", ids, titles, "another-run-20260101-000000")
    code, _, err = run_update(run, other, changes, capsys)
    assert code == 2 and "comes from run another-run-20260101-000000, not %s" % run.name in err, err
    retitled = fake_export(tmp_path / "retitled", ids, [titles[0] + " (renamed elsewhere)"] + titles[1:], run.name)
    code, _, err = run_update(run, retitled, changes, capsys)
    assert code == 2 and "product %r of the served catalog has no stored vectors" % ids[0] in err, err
    code, _, err = run_update(run, tmp_path / "no-export", changes, capsys)
    assert code == 2 and "holds no search_retrieval version" in err, err
    assert sorted(p.name for p in retitled.iterdir()) == ["search_retrieval"]  # nothing written there


def test_the_rebuilt_bm25_index_keeps_the_run_vocabulary():
    from tfrec.lexical.index import LexicalIndex
    from tfrec.search.catalog_update import run_vocabulary

    titles = ["Cordless drill driver kit", "Copper pipe fittings, 1/2 in.", "Shelves and shelving brackets", "Ladders"]
    queries = ["knives for carving", "sanding the shelves", "drilling machines"]
    index = LexicalIndex.build(titles, queries)
    again = LexicalIndex.build(titles, run_vocabulary(index))
    assert again.raw_tokens == index.raw_tokens and again.terms == index.terms
    np.testing.assert_array_equal(again.raw_to_term, index.raw_to_term)
    np.testing.assert_array_equal(again.term_weights, index.term_weights)
    # a new catalog: the training queries' words stay known, new titles add theirs, removed ones score nothing
    updated = LexicalIndex.build(titles[1:] + ["Glimmerforge snowplow blade"], run_vocabulary(index))
    for word in ("knives", "carving", "drilling", "glimmerforge"):
        assert updated.term_id(word) >= 0, word
    assert updated.scores(["cordless"]).max() == 0


def test_catalog_columns_of_added_and_changed_products(tmp_path):
    from tfrec.data.errors import DataError
    from tfrec.data.tables import Catalog
    from tfrec.search.catalog_update import ServedState, _plan, read_changes

    run = Catalog(ids=np.array(["a", "b", "c"], object), texts={"title": np.array(["Drill", "Saw", "Hammer"], object)},
                  numeric={"price": np.array([10.0, 20.0, np.nan], np.float32)},
                  categorical={"brand": np.array(["acme", "", "bolt"], object)})
    served = ServedState(1, "", ["a", "b", "c"], ["Drill", "Saw", "Hammer"], None)
    header = HEADER + ",price,brand"
    changes = read_changes(write_changes(tmp_path / "columns.csv", [
        "add,d,Cordless drill,99.5,", "change,a,Hammer drill,,zeta", "remove,b,,,",
    ], header), served.ids, ["price"], ["brand"])
    plan = _plan(served, changes, run, np.array(["Drill", "Saw", "Hammer"]), ["price"], ["brand"])
    assert plan.ids == ["a", "c", "d"] and plan.titles == ["Hammer drill", "Hammer", "Cordless drill"]
    np.testing.assert_array_equal(plan.numeric["price"], np.array([10.0, np.nan, 99.5], np.float32))  # empty cell: kept / missing
    assert plan.categorical["brand"].tolist() == ["zeta", "bolt", ""]
    assert plan.encode_rows.tolist() == [0, 2] and plan.run_rows.tolist() == [1] and plan.run_source.tolist() == [2]
    with pytest.raises(DataError, match=r"line 2, field 'price': expected a number"):
        read_changes(write_changes(tmp_path / "bad.csv", ["add,d,Cordless drill,cheap,"], header), served.ids, ["price"], ["brand"])
