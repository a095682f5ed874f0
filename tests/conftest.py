"""Shared fixtures: where the shared datasets are, and small real slices of them as CSV files."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before any test imports TensorFlow)

import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def session_embedding_cache(tmp_path_factory) -> Path:
    """One embedding cache for the whole test session, never the user's own ~/.cache/tfrec.

    Tests that leave text.cache_dir unset share it (a catalog is encoded once per session); child
    processes inherit it through the environment. A TFREC_CACHE_DIR set before pytest starts is kept.
    """
    import os

    from tfrec.text.cache import CACHE_ENV

    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = tmp_path_factory.mktemp("tfrec-cache")
    os.environ[CACHE_ENV] = str(root)
    return root


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a free 127.0.0.1 port for the session (skipped without one, failed under CI)."""
    import os

    from tfrec.online.server import RedisServer, RedisUnavailable

    try:
        server = RedisServer().start()
    except RedisUnavailable as exc:
        if os.environ.get("TFREC_REQUIRE_REDIS"):
            pytest.fail("TFREC_REQUIRE_REDIS is set but Redis cannot start: %s" % exc)
        pytest.skip(str(exc))
    yield server
    server.close()


@pytest.fixture()
def redis_url(redis_server) -> str:
    """The session server's URL, with its keys wiped first (each test starts from an empty Redis)."""
    import redis

    if not redis_server.running:  # a test stopped it to check the fallback
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The shared datasets folder; tests that need it skip with a reason if it is absent."""
    if not (SHARED / "homedepot" / "products.csv").is_file():
        pytest.skip("../shared/datasets is not beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def files():
    """The shipped MiniLM model folder (skips with the install hint if absent)."""
    from tfrec.text.model_files import ModelFilesError, resolve_model_files

    try:
        return resolve_model_files()
    except ModelFilesError as exc:
        pytest.skip(str(exc))


@pytest.fixture()
def in_repo(monkeypatch):
    """Run the test from the repository root, where configs/ and ../shared resolve."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("TFREC_DATA_DIR", raising=False)
    return ROOT


def sequence_rows(sequences, max_history: int = 64) -> list:
    """Sequences as sorted (user, padded history, target) rows: equal when two splits hold the same examples."""
    history, _ = sequences.padded_histories(max_history)
    return sorted(zip(sequences.users.astype(str).tolist(), map(tuple, history.tolist()), sequences.targets.tolist()))


def write_homedepot_slice(shared: Path, dest: Path, n_queries: int = 40) -> Path:
    """Copy the judgments of the first ``n_queries`` train/valid queries and their products."""
    dest.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for split in ("train", "valid"):
        with open(shared / "homedepot" / ("%s.csv" % split), encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        queries: list[str] = []
        kept = []
        for row in body:
            if row[0] not in queries:
                if len(queries) == n_queries:
                    continue
                queries.append(row[0])
            kept.append(row)
        used.update(r[1] for r in kept)
        with open(dest / ("%s.csv" % split), "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([header, *kept])
    with open(shared / "homedepot" / "products.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    with open(dest / "products.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([rows[0], *[r for r in rows[1:] if r[0] in used]])
    return dest


def homedepot_titles_and_queries(shared: Path, n_titles: int, n_queries: int) -> tuple[list[str], list[str]]:
    """The first ``n_titles`` product titles and the first ``n_queries`` distinct train queries."""
    folder = shared / "homedepot"
    with open(folder / "products.csv", encoding="utf-8", newline="") as f:
        titles = [row["title"] for row, _ in zip(csv.DictReader(f), range(n_titles))]
    queries: list[str] = []
    with open(folder / "train.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["query"] not in queries:
                queries.append(row["query"])
            if len(queries) == n_queries:
                break
    return titles, queries


@pytest.fixture()
def homedepot_slice(shared_datasets, tmp_path) -> Path:
    """A small real slice of Home Depot (products.csv, train.csv, valid.csv) in a temp folder."""
    return write_homedepot_slice(shared_datasets, tmp_path / "homedepot")


# The small search run several modules read (about a minute on 2 cores): trained and exported once per session.
SEARCH_SLICE = [
    "data.max_train_queries=40", "data.max_valid_queries=20", "data.max_products=300",
    "retrieval.top_k=20", "retrieval.batch_size=16", "ranking.epochs=2", "ranking.negatives=4",
    "evaluation.ks=[10,20]", "evaluation.bootstrap_resamples=100",
]


@pytest.fixture(scope="session")
def search_run(tmp_path_factory, shared_datasets) -> Path:
    """A quick search run on a small Home Depot slice (read it; copy it before changing anything)."""
    from cli_runs import train_run

    tmp = tmp_path_factory.mktemp("search")
    return train_run(tmp, "configs/quick.yaml", SEARCH_SLICE + ["text.cache_dir=%s" % (tmp / "cache")], "homedepot-quick")


@pytest.fixture(scope="session")
def search_export(search_run, tmp_path_factory) -> Path:
    """``search_run`` exported (version 1 of every search model); copy it before writing new versions."""
    from cli_runs import export_run

    return export_run(search_run, tmp_path_factory.mktemp("export"))
