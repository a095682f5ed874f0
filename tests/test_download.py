"""Tests for tfrec.data.download against a local HTTP server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import csv
import hashlib
import io
import socket
import threading
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tfrec.data import download as dl

ML_FILES = {
    "ml-100k/u.data": b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
    "ml-100k/u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0\n".encode("latin-1"),
    "ml-100k/README": b"tiny MovieLens-like archive for tests\n",
}


def make_zip(members: dict[str, bytes], *, folders: bool = True) -> bytes:
    """Build a zip in memory; folder entries are added like real archives have them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        if folders:
            for folder in sorted({name.rsplit("/", 1)[0] + "/" for name in members if "/" in name}):
                zf.writestr(folder, b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer:
    """Serves in-memory files over HTTP on 127.0.0.1 and records the paths requested."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                requests.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval keeps shutdown() in the fixture teardown fast.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url(path)


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture
def ml_zip(server: FileServer) -> tuple[str, str]:
    body = make_zip(ML_FILES)
    return server.add("/ml-100k.zip", body), sha256(body)


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- download ---------------------------------------------------------------------------------


def test_registry_pins_official_movielens_archive():
    source = dl.SOURCES["movielens-100k"]
    assert source.url == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert source.size == 4_924_029
    assert source.sha256 == "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    assert dl.available() == ["amazon-scientific", "homedepot", "movielens-100k"]


def test_download_extracts_flattened(server, ml_zip, tmp_path):
    url, digest = ml_zip
    dest = tmp_path / "data"
    folder = dl.download("movielens-100k", dest, url=url, sha256=digest, progress=False)
    assert folder == dest / "movielens-100k"
    assert entries(folder) == ["README", "u.data", "u.item"]
    for member, data in ML_FILES.items():
        assert (folder / member.split("/")[-1]).read_bytes() == data
    assert entries(dest) == ["movielens-100k"]  # no temporary files left behind
    assert server.requests == ["/ml-100k.zip"]


def test_checksum_mismatch_leaves_nothing(server, ml_zip, tmp_path):
    url, digest = ml_zip
    wrong = "0" * 64
    with pytest.raises(dl.ChecksumError) as err:
        dl.download("movielens-100k", tmp_path, url=url, sha256=wrong, progress=False)
    message = str(err.value)
    assert "ml-100k.zip" in message and wrong in message and digest in message
    assert entries(tmp_path) == []


def test_mirror_is_checked_against_registry_size(server, ml_zip, tmp_path):
    url, _ = ml_zip  # no sha256 override: the official size and digest apply
    with pytest.raises(dl.ChecksumError, match="4924029"):
        dl.download("movielens-100k", tmp_path, url=url, progress=False)
    assert entries(tmp_path) == []


def test_existing_folder_is_not_downloaded_again(server, ml_zip, tmp_path, capsys):
    url, digest = ml_zip
    first = dl.download("movielens-100k", tmp_path, url=url, sha256=digest, progress=False)
    (first / "marker").write_text("kept")
    second = dl.download("movielens-100k", tmp_path, url=url, sha256=digest, progress=False)
    assert second == first and (second / "marker").exists()
    assert len(server.requests) == 1
    assert capsys.readouterr() == ("", "")

    third = dl.download(
        "movielens-100k", tmp_path, url=url, sha256=digest, progress=False, force=True
    )
    assert len(server.requests) == 2
    assert entries(third) == ["README", "u.data", "u.item"]  # replaced, marker gone
    assert entries(tmp_path) == ["movielens-100k"]


def test_http_404_is_a_download_error(server, tmp_path):
    url = server.url("/missing.zip")
    with pytest.raises(dl.DownloadError, match="404") as err:
        dl.download("movielens-100k", tmp_path, url=url, sha256="a" * 64, progress=False)
    assert url in str(err.value)
    assert entries(tmp_path) == []


def test_connection_refused_is_a_download_error(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago refuses connections
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-100k.zip"
    with pytest.raises(dl.DownloadError, match="could not download"):
        dl.download("movielens-100k", tmp_path, url=url, sha256="a" * 64, progress=False)
    assert entries(tmp_path) == []


@pytest.mark.parametrize("bad_member", ["../evil", "ml-100k/../../evil", "/tmp/evil"])
def test_zip_slip_is_refused(server, tmp_path, bad_member):
    body = make_zip({"ml-100k/u.data": b"1\t1\t5\t0\n", bad_member: b"pwned"}, folders=False)
    url = server.add("/slip.zip", body)
    dest = tmp_path / "inner" / "data"
    with pytest.raises(dl.UnsafeArchiveError, match="refusing archive member") as err:
        dl.download("movielens-100k", dest, url=url, sha256=sha256(body), progress=False)
    assert bad_member in str(err.value)
    assert entries(dest) == []
    assert not list(tmp_path.rglob("evil"))


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError) as err:
        dl.download("movielens-1m", tmp_path)
    for name in dl.available():
        assert name in str(err.value)


def test_manual_datasets_explain_how_to_get_them(tmp_path):
    with pytest.raises(dl.DownloadUnavailable) as err:
        dl.download("homedepot", tmp_path)
    message = str(err.value)
    assert "kaggle competitions download -c home-depot-product-search-relevance" in message
    assert "rules" in message
    assert "tfrec data prepare homedepot --raw" in message and str(tmp_path) in message

    with pytest.raises(dl.DownloadUnavailable) as err:
        dl.download("amazon-scientific", tmp_path)
    message = str(err.value)
    assert "UniSRec" in message and "drive.google.com" in message
    assert str(tmp_path / "amazon-scientific") in message
    for suffix in ("text", "item2index", "user2index", "train.inter", "valid.inter", "test.inter"):
        assert f"Scientific.{suffix}" in message
    assert entries(tmp_path) == []


def test_source_without_checksum_needs_explicit_sha256(server, ml_zip, tmp_path, monkeypatch):
    url, digest = ml_zip
    unpinned = dl.DatasetSource("unpinned", url, None, None, "zip-flat", "")
    monkeypatch.setitem(dl.SOURCES, "unpinned", unpinned)
    with pytest.raises(dl.DownloadError, match="sha256="):
        dl.download("unpinned", tmp_path, progress=False)
    assert server.requests == []
    folder = dl.download("unpinned", tmp_path, sha256=digest.upper(), progress=False)
    assert entries(folder) == ["README", "u.data", "u.item"]


def test_malformed_sha256_override_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="64 hexadecimal"):
        dl.download("movielens-100k", tmp_path, url="http://127.0.0.1:9/x.zip", sha256="abc")


# --- prepare_homedepot --------------------------------------------------------------------------

RAW_HEADER = ["id", "product_uid", "product_title", "search_term", "relevance"]


def raw_rows() -> list[list[str]]:
    """Kaggle-like rows: an accented title, duplicate products, case/spacing query variants."""
    rows = [
        ["2", "100001", "Simpson Strong-Tie 12-Gauge Angle", "angle bracket", "3"],
        ["3", "100001", "Simpson Strong-Tie (duplicate row, later title)", "l bracket", "2.5"],
        ["9", "100002", 'Café Table, 30 in. "Bistro"', "Angle  Bracket", "2.33"],
        ["16", "100005", "Delta Vero 1-Handle Shower", " ANGLE bracket ", "1"],
        ["17", "100005", "Delta Vero 1-Handle Shower", "shower faucet", "2.67"],
    ]
    for i in range(200):  # enough distinct queries that every split gets some
        product = str(101000 + i % 50)
        rows.append([str(100 + i), product, f"Product {i % 50} Crème", f"query {i}", "2"])
    return rows


def write_raw(path: Path, rows: list[list[str]], *, encoding: str = "latin-1",
              header: list[str] = RAW_HEADER) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([header, *rows])
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:  # strict UTF-8 on purpose
        return list(csv.DictReader(handle))


def test_prepare_homedepot_latin1(tmp_path):
    raw = write_raw(tmp_path / "train.csv", raw_rows())
    with pytest.raises(UnicodeDecodeError):
        raw.read_bytes().decode("utf-8")  # the fixture really is Latin-1

    folder = dl.prepare_homedepot(raw, tmp_path / "data")
    assert folder == tmp_path / "data" / "homedepot"
    assert entries(folder) == ["products.csv", "test.csv", "train.csv", "valid.csv"]
    assert entries(tmp_path / "data") == ["homedepot"]

    products = {row["product_id"]: row["title"] for row in read_csv(folder / "products.csv")}
    assert len(products) == len(read_csv(folder / "products.csv"))  # deduplicated
    assert set(products) == {row[1] for row in raw_rows()}
    assert products["100001"] == "Simpson Strong-Tie 12-Gauge Angle"  # first title seen
    assert products["100002"] == 'Café Table, 30 in. "Bistro"'

    splits = {s: read_csv(folder / f"{s}.csv") for s in ("train", "valid", "test")}
    assert all(splits.values())
    owner: dict[str, str] = {}
    for split, rows in splits.items():
        for row in rows:
            assert owner.setdefault(dl.normalize_query(row["query"]), split) == split
    written = [r for rows in splits.values() for r in rows]
    judged = Counter((r["query"], r["product_id"], r["relevance"]) for r in written)
    assert judged == Counter((row[3], row[1], row[4]) for row in raw_rows())
    angle = {s for s, rows in splits.items() for r in rows if "angle" in r["query"].lower()}
    assert len(angle) == 1  # all four "angle bracket" spellings in one split

    summary = dl.describe_split(folder)
    assert summary["products"]["rows"] == len(products)
    assert sum(summary[s]["rows"] for s in splits) == len(raw_rows())
    queries = {dl.normalize_query(row[3]) for row in raw_rows()}
    assert sum(summary[s]["queries"] for s in splits) == len(queries)


def test_prepare_homedepot_same_output_from_zip_and_utf8(tmp_path):
    latin = dl.prepare_homedepot(write_raw(tmp_path / "train.csv", raw_rows()), tmp_path / "a")
    utf8 = write_raw(tmp_path / "utf8.csv", raw_rows(), encoding="utf-8")
    zipped = tmp_path / "train.csv.zip"
    raw_bytes = (tmp_path / "train.csv").read_bytes()
    zipped.write_bytes(make_zip({"train.csv": raw_bytes}, folders=False))
    nested = tmp_path / "home-depot-product-search-relevance.zip"
    nested.write_bytes(make_zip({"train.csv.zip": zipped.read_bytes()}, folders=False))
    for i, raw in enumerate([utf8, zipped, nested]):
        other = dl.prepare_homedepot(raw, tmp_path / f"b{i}")
        for name in entries(latin):
            assert (other / name).read_bytes() == (latin / name).read_bytes(), (raw, name)


def test_prepare_homedepot_split_depends_on_seed(tmp_path):
    raw = write_raw(tmp_path / "train.csv", raw_rows())
    a = dl.prepare_homedepot(raw, tmp_path / "a")
    b = dl.prepare_homedepot(raw, tmp_path / "b", seed="other")
    assert (a / "valid.csv").read_bytes() != (b / "valid.csv").read_bytes()
    assert (a / "products.csv").read_bytes() == (b / "products.csv").read_bytes()


def test_prepare_homedepot_missing_column(tmp_path):
    header = [c for c in RAW_HEADER if c != "search_term"]
    raw = write_raw(tmp_path / "train.csv", [[r[0], r[1], r[2], r[4]] for r in raw_rows()],
                    header=header)
    with pytest.raises(ValueError, match="missing column 'search_term'") as err:
        dl.prepare_homedepot(raw, tmp_path / "data")
    assert str(raw) in str(err.value) and "line 1" in str(err.value)
    assert not (tmp_path / "data" / "homedepot").exists()


@pytest.mark.parametrize("value", ["high", "", "nan", "3.5", "0"])
def test_prepare_homedepot_bad_relevance(tmp_path, value):
    rows = raw_rows()
    rows[3][4] = value  # data line 4 is line 5 of the file, after the header
    raw = write_raw(tmp_path / "train.csv", rows)
    with pytest.raises(ValueError, match=r"line 5\b") as err:
        dl.prepare_homedepot(raw, tmp_path / "data")
    assert str(raw) in str(err.value) and "'relevance'" in str(err.value)
    assert isinstance(err.value, dl.DataError)  # the data layer's error type
    assert entries(tmp_path / "data") == []


def test_prepare_homedepot_existing_folder_needs_force(tmp_path):
    raw = write_raw(tmp_path / "train.csv", raw_rows())
    folder = dl.prepare_homedepot(raw, tmp_path / "data")
    (folder / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="force=True"):
        dl.prepare_homedepot(raw, tmp_path / "data")
    assert (folder / "marker").exists()
    dl.prepare_homedepot(raw, tmp_path / "data", force=True)
    assert not (folder / "marker").exists()
    assert entries(tmp_path / "data") == ["homedepot"]


def test_prepare_homedepot_rejects_bad_fractions(tmp_path):
    raw = write_raw(tmp_path / "train.csv", raw_rows())
    with pytest.raises(ValueError, match="valid_fraction"):
        dl.prepare_homedepot(raw, tmp_path / "data", valid_fraction=0.6, test_fraction=0.5)
