"""Validating readers: every kind of bad input is a clear error, or a counted drop in lenient mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfrec.config import load_config
from tfrec.config.schema import CatalogFiles, InteractionFiles, JudgmentFiles
from tfrec.data import DataError, load_data
from tfrec.data.errors import RowChecker
from tfrec.data.readers import read_catalog, read_interactions, read_judgments

CATALOG = "product_id,title,price\nA1,Steel hammer,9.5\nA2,Oak shelf,\nA3,Brass lamp,20\n"


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def catalog(folder: Path, text: str = CATALOG, strict: bool = True, **spec):
    write(folder, "products.csv", text)
    checker = RowChecker(strict)
    return read_catalog(CatalogFiles(**spec), folder, checker), checker.report


def test_reads_a_clean_catalog(tmp_path):
    """Ids, texts and numeric columns (empty = NaN) are read in file order."""
    cat, report = catalog(tmp_path, numeric_columns=["price"])
    assert cat.ids.tolist() == ["A1", "A2", "A3"]
    assert cat.texts["title"].tolist() == ["Steel hammer", "Oak shelf", "Brass lamp"]
    assert cat.numeric["price"][0] == pytest.approx(9.5) and np.isnan(cat.numeric["price"][1])
    assert cat.index_of(["A3", "nope"]).tolist() == [2, -1]
    assert report.total == 0


def test_quoted_fields_bom_and_unicode(tmp_path):
    """Quoted commas and newlines, a UTF-8 BOM, emoji and CJK text are read unchanged."""
    text = '\ufeffproduct_id,title\nA1,"Hammer, 16 oz ""claw"""\nA2,"two\nlines"\nA3,電動ドリル 🔨\n'
    cat, _ = catalog(tmp_path, text)
    assert cat.texts["title"].tolist() == ['Hammer, 16 oz "claw"', "two\nlines", "電動ドリル 🔨"]


@pytest.mark.parametrize(
    "text, line, field, fragment",
    [
        ("product_id,title\nA1,Hammer\nA1,Saw\n", 3, "product_id", "duplicate product id 'A1' (first on line 2)"),
        ("product_id,title\nA1,Hammer\n,Saw\n", 3, "product_id", "expected a non-empty product id"),
        ("product_id,title\nA1,Hammer\nA2,   \n", 3, "title", "expected non-empty text in title"),
        ("product_id,title\nA1,Hammer\nA2,Saw,extra\n", 3, None, "expected 2 fields (product_id,title), got 3"),
        ("product_id,title,price\nA1,Hammer,cheap\n", 2, "price", "expected a number or an empty field, got 'cheap'"),
        ("product_id,title,price\nA1,Hammer,inf\n", 2, "price", "expected a number or an empty field"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, text, line, field, fragment):
    """Strict mode: a bad row raises a DataError naming the file, line, field and expectation."""
    numeric = ["price"] if "price" in text else []
    with pytest.raises(DataError) as err:
        catalog(tmp_path, text, numeric_columns=numeric)
    assert err.value.path.endswith("products.csv") and err.value.line == line and err.value.field_name == field
    assert fragment in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "products.csv") + " line %d" % line)


def test_lenient_mode_counts_every_drop(tmp_path):
    """Lenient mode keeps good rows and counts each dropped row by file, field and reason."""
    text = "product_id,title\nA1,Hammer\nA1,Saw\nA2,\nA3,Lamp\nA4,x,y\nA5,Rake\n"
    cat, report = catalog(tmp_path, text, strict=False)
    assert cat.ids.tolist() == ["A1", "A3", "A5"]
    assert report.total == 3
    reasons = {r["reason"]: r["rows"] for r in report.as_dict()["reasons"]}
    assert reasons == {"duplicate product id 'A1' (first on line 2)": 1, "expected non-empty text in title": 1,
                       "expected 2 fields (product_id,title)": 1}
    table = report.lines()  # a header and one aligned row per file and reason
    assert table[0].split() == ["file", "field", "rows", "reason", "first", "at"]
    rows = {line.split()[1]: line for line in table[1:]}
    assert len(table) == 4 and all(line.startswith("products.csv ") for line in table[1:])
    assert rows["product_id"].split()[2] == "1" and rows["product_id"].endswith("(first on line 2)  line 3")
    assert rows["title"].endswith("line 4") and rows["-"].endswith("line 6")


@pytest.mark.parametrize(
    "text, fragment, line",
    [
        ("", "empty file: expected a header row with columns product_id, title", None),
        ("id,name\nA1,Hammer\n", "missing column(s) 'product_id', 'title' (the header has: id, name)", 1),
        ("product_id,title,title\nA1,a,b\n", "duplicate column name(s) title", 1),
        ('product_id,title\nA1,"unterminated\n', "malformed CSV", 2),
        ('product_id,title\nA1,"quoted" then text\n', "malformed CSV", 2),
    ],
)
def test_whole_file_problems_are_errors_even_when_lenient(tmp_path, text, fragment, line):
    """Empty files, missing or duplicate columns and broken quoting fail in both modes."""
    for strict in (True, False):
        with pytest.raises(DataError) as err:
            catalog(tmp_path, text, strict=strict)
        assert fragment in str(err.value)
        assert err.value.line == line


def test_wrong_encoding_names_the_line(tmp_path):
    """A Latin-1 file read as UTF-8 fails with the line and byte; the right encoding reads it."""
    write(tmp_path, "products.csv", "product_id,title\nA1,Hammer\nA2,Café table\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"products.csv line 3: not valid utf-8 text \(byte 0xe9"):
        read_catalog(CatalogFiles(), tmp_path, RowChecker(True))
    cat = read_catalog(CatalogFiles(encoding="latin-1"), tmp_path, RowChecker(True))
    assert cat.texts["title"][1] == "Café table"


def test_missing_file(tmp_path):
    """A missing file is a DataError naming the path."""
    with pytest.raises(DataError, match=r"products.csv: file not found"):
        read_catalog(CatalogFiles(), tmp_path, RowChecker(True))


def test_huge_and_odd_texts_survive(tmp_path):
    """A 100,000-character title, emoji and control characters are read intact."""
    long_title = "drill " * 16_000 + "end"
    text = "product_id,title\nA1,%s\nA2,🔨🪚 tools\nA3,tab\there\n" % long_title
    cat, _ = catalog(tmp_path, text)
    assert len(cat.texts["title"][0]) == len(long_title) > 95_000
    assert cat.texts["title"][2] == "tab\there"


def judgments(folder: Path, text: str, strict: bool = True):
    cat, _ = catalog(folder)
    path = write(folder, "train.csv", text)
    checker = RowChecker(strict)
    return read_judgments(JudgmentFiles(), path, cat, checker), checker.report


def test_judgments_read_and_validated(tmp_path):
    """Judgments map products to catalog rows and keep graded labels."""
    j, _ = judgments(tmp_path, "query,product_id,relevance\nhammer,A1,3\nlamp,A3,2.33\nhammer,A3,1\n")
    assert j.queries.tolist() == ["hammer", "lamp", "hammer"]
    assert j.products.tolist() == [0, 2, 2]
    assert j.labels.tolist() == pytest.approx([3, 2.33, 1])
    assert j.n_queries == 2


@pytest.mark.parametrize(
    "row, field, fragment",
    [
        ("hammer,A1,3.5", "relevance", "expected a number in [1, 3], got '3.5'"),
        ("hammer,A1,0", "relevance", "expected a number in [1, 3], got '0'"),
        ("hammer,A1,", "relevance", "expected a number in [1, 3], got ''"),
        ("hammer,A1,high", "relevance", "expected a number in [1, 3], got 'high'"),
        ("hammer,A1,nan", "relevance", "expected a number in [1, 3]"),
        ("hammer,ZZZ,2", "product_id", "product id 'ZZZ' is not in the catalog"),
        (" ,A1,2", "query", "expected a non-empty query"),
        ("lamp,A3,3", "product_id", "duplicate judgment of product 'A3' for query 'lamp' (first on line 2)"),
    ],
)
def test_bad_judgments(tmp_path, row, field, fragment):
    """Labels out of range, unknown products, empty queries and duplicates are errors with line and field."""
    with pytest.raises(DataError) as err:
        judgments(tmp_path, "query,product_id,relevance\nlamp,A3,2\n%s\n" % row)
    assert err.value.line == 3 and err.value.field_name == field
    assert fragment in str(err.value)


def test_lenient_judgments_drop_and_count(tmp_path):
    """In lenient mode bad judgments are dropped and counted; good ones stay."""
    j, report = judgments(tmp_path, "query,product_id,relevance\nlamp,A3,2\nsaw,ZZZ,2\nsaw,A1,9\nsaw,A1,3\n", strict=False)
    assert j.queries.tolist() == ["lamp", "saw"]
    assert report.total == 2


def test_interactions_reader(tmp_path):
    """Interaction logs accept integer and ISO timestamps; unknown items and bad times are errors."""
    cat, _ = catalog(tmp_path)
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp,rating\nu1,A1,100,5\nu1,A2,2024-01-02T03:04:05+00:00,4\n")
    log = read_interactions(InteractionFiles(rating_column="rating"), tmp_path, cat, RowChecker(True))
    assert log.items.tolist() == [0, 1]
    assert log.timestamps.tolist() == [100, 1704164645]
    assert log.ratings.tolist() == [5.0, 4.0]
    for row, field in (("u1,NOPE,5,1", "item_id"), ("u1,A1,yesterday,1", "timestamp"), ("u1,A1,5,great", "rating"), (",A1,5,1", "user_id")):
        write(tmp_path, "interactions.csv", "user_id,item_id,timestamp,rating\n%s\n" % row)
        with pytest.raises(DataError) as err:
            read_interactions(InteractionFiles(rating_column="rating"), tmp_path, cat, RowChecker(True))
        assert err.value.field_name == field and err.value.line == 2


def test_lenient_config_reports_drops_end_to_end(in_repo, homedepot_slice):
    """data.strict=false loads a damaged real slice and reports exactly the damaged rows."""
    train = homedepot_slice / "train.csv"
    lines = train.read_text(encoding="utf-8").splitlines()
    good = len(lines) - 1
    lines += ["broken query,999999999,3", "another,%s,7" % lines[1].split(",")[-2]]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="train.csv line %d, field 'product_id'" % (good + 2)):
        load_data(load_config(None, ["data.dir=%s" % homedepot_slice, "evaluation.ks=[10]", "retrieval.top_k=10"]))
    data = load_data(load_config(None, ["data.dir=%s" % homedepot_slice, "data.strict=false", "evaluation.ks=[10]", "retrieval.top_k=10"]))
    assert len(data.train) == good
    assert data.drops.total == 2
