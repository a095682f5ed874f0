"""Shoppers' recent events in a real Redis: the store, file ingest, the CLI, and recommendations that read them."""
from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import redis

from tfrec.cli.main import main
from tfrec.online.events import EventError, EventStore
from tfrec.online.ingest import IngestError, ingest
from tfrec.online.link import RedisLink


def make_store(url: str, namespace: str = "shop", **kwargs) -> EventStore:
    link = RedisLink(url, namespace, timeout_ms=kwargs.pop("timeout_ms", 1000), retry_seconds=kwargs.pop("retry_seconds", 0.1))
    return EventStore(link, **kwargs)


def everything_in(url: str) -> list[str]:
    """Every key of the Redis and every value they hold, as text."""
    client = redis.Redis.from_url(url, decode_responses=True)
    out = []
    for key in client.scan_iter("*"):
        out.append(key)
        out += client.zrange(key, 0, -1, withscores=False)
    client.close()
    return out


# ----------------------------------------------------------------------------- the store


def test_history_keeps_the_newest_events_oldest_first_whatever_order_they_arrive_in(redis_url):
    store = make_store(redis_url, history_length=3)
    for item, ts in (("a", 10), ("b", 30), ("c", 20)):
        assert store.add("u1", item, ts)
    assert store.history("u1") == ["a", "c", "b"]
    assert store.add("u1", "d", 40)
    assert store.history("u1") == ["c", "b", "d"]  # "a" (the oldest) trimmed
    assert store.add("u1", "late", 15)  # older than every kept event: accepted, trimmed at once
    assert store.history("u1") == ["c", "b", "d"]
    assert store.add("u1", "middle", 25)  # a late event inside the window lands in time order
    assert store.history("u1") == ["middle", "b", "d"]
    assert store.history("u1", n=2) == ["b", "d"]
    assert store.history("nobody") == []
    assert store.histories(["u1", "nobody"]) == [["middle", "b", "d"], []]
    client = redis.Redis.from_url(redis_url)
    assert client.zcard("shop:events:u1") == 3


def test_history_filters_kinds(redis_url):
    store = make_store(redis_url, history_length=10)
    store.add("u1", "a", 1, kind="view")
    store.add("u1", "b", 2, kind="purchase")
    store.add("u1", "c", 3, kind="view")
    store.add("u1", "d", 4, kind="add_to_cart")
    assert store.history("u1", kinds=["purchase", "add_to_cart"]) == ["b", "d"]
    assert store.history("u1", n=1, kinds=["view"]) == ["c"]
    assert store.history("u1") == ["a", "b", "c", "d"]


def test_every_add_sets_the_ttl_again(redis_url):
    store = make_store(redis_url, ttl_seconds=100)
    client = redis.Redis.from_url(redis_url)
    store.add("u1", "a", 1)
    assert 90 < client.ttl("shop:events:u1") <= 100
    client.expire("shop:events:u1", 5)
    store.add("u1", "b", 2)
    assert 90 < client.ttl("shop:events:u1") <= 100
    store.add_many([("u1", "c", 3)])
    client.expire("shop:events:u1", 5)
    store.add_many([("u1", "d", 4)])
    assert 90 < client.ttl("shop:events:u1") <= 100


def test_a_retried_event_is_stored_once(redis_url):
    store = make_store(redis_url)
    assert store.add("u1", "a", 10, event_id="e-1") is True
    assert store.add("u1", "a", 10, event_id="e-1") is False
    assert store.add("u1", "a", 11, event_id="e-1") is False  # a retry stamped later is still the same event
    assert store.add("u1", "b", 20) is True
    assert store.add("u1", "b", 20) is False  # no id: the same time, kind and item are the same event
    assert store.add("u1", "b", 20, kind="purchase") is True
    counts = store.add_many([("u1", "a", 10, "view", "e-1"), ("u1", "c", 30), ("u1", "c", 30), ("u2", "c", 30)])
    assert counts == {"added": 2, "duplicates": 2, "dropped": 0}
    assert store.history("u1") == ["a", "b", "b", "c"]
    stats = store.stats()
    assert (stats["added"], stats["duplicates"], stats["dropped"]) == (5, 5, 0)


def test_hashed_user_ids_leave_no_raw_id_in_redis(redis_url):
    store = make_store(redis_url, hash_user_ids=True, salt="s3cret")
    store.add("alice@example.com", "100001", 1, event_id="alice@example.com/evt/1")
    store.add("alice@example.com", "100002", 2)
    store.add_many([("bob-4711", "100003", 3, "view", "bob-4711/evt/9")])
    assert store.history("alice@example.com") == ["100001", "100002"]
    assert store.histories(["bob-4711", "carol"]) == [["100003"], []]
    stored = everything_in(redis_url)
    assert len(stored) == 2 + 3  # two keys, three members
    for raw in ("alice", "example.com", "bob", "4711", "evt"):
        assert not any(raw in text for text in stored), raw
    expected = hmac.new(b"s3cret", b"alice@example.com", hashlib.sha256).hexdigest()
    assert "shop:events:" + expected in stored
    other_salt = make_store(redis_url, hash_user_ids=True, salt="other")
    assert other_salt.history("alice@example.com") == []
    with pytest.raises(ValueError, match="salt"):
        make_store(redis_url, hash_user_ids=True)


def test_namespaces_do_not_collide(redis_url):
    a, b = make_store(redis_url, "shopa"), make_store(redis_url, "shopb")
    a.add("u1", "a", 1)
    b.add("u1", "b", 1)
    assert (a.history("u1"), b.history("u1")) == (["a"], ["b"])
    assert a.forget("u1")
    assert (a.history("u1"), b.history("u1")) == ([], ["b"])
    assert sorted(redis.Redis.from_url(redis_url, decode_responses=True).keys("*")) == ["shopb:events:u1"]


@pytest.mark.parametrize("args, field", [
    (("", "a", 1), "user_id"),
    (("u" * 257, "a", 1), "user_id"),
    (("u1", "", 1), "item_id"),
    (("u1", "a\nb", 1), "item_id"),
    (("u1", 7.5, 1), "item_id"),
    (("u1", "a", float("nan")), "timestamp"),
    (("u1", "a", float("inf")), "timestamp"),
    (("u1", "a", "soon"), "timestamp"),
    (("u1", "a", 1, "View"), "kind"),
    (("u1", "a", 1, "k" * 33), "kind"),
    (("u1", "a", 1, "view", "e" * 300), "event_id"),
])
def test_bad_events_are_refused_naming_the_field(redis_url, args, field):
    store = make_store(redis_url)
    with pytest.raises(EventError, match="^" + field) as err:
        store.add(*args)
    assert err.value.field == field
    with pytest.raises(ValueError, match=field):
        store.add_many([("u1", "ok", 1), args])
    assert everything_in(redis_url) == []  # a batch is checked before anything is sent


def test_add_many_sustains_a_stream(redis_url):
    store = make_store(redis_url, history_length=20)
    events = [("u%d" % (i % 200), "item%d" % (i % 37), float(i)) for i in range(10000)]
    started = time.perf_counter()
    for i in range(0, len(events), 500):
        assert store.add_many(events[i:i + 500]) == {"added": 500, "duplicates": 0, "dropped": 0}
    rate = len(events) / (time.perf_counter() - started)
    print("add_many: %.0f events/s" % rate)  # measured, not asserted: the machine is shared
    newest_of_u7 = [i for i in range(len(events)) if i % 200 == 7][-20:]
    assert store.history("u7") == ["item%d" % (i % 37) for i in newest_of_u7]


def test_redis_down_drops_adds_and_reads_unknown(redis_server, redis_url):
    store = make_store(redis_url, retry_seconds=0.05)
    store.add("u1", "a", 1)
    redis_server.stop()
    try:
        assert store.add("u1", "b", 2) is False
        assert store.history("u1") is None  # unknown, not "no events"
        assert store.histories(["u1", "u2"]) == [None, None]
        assert store.add_many([("u1", "c", 3), ("u2", "c", 3)]) == {"added": 0, "duplicates": 0, "dropped": 2}
        assert store.forget("u1") is False
        assert store.stats()["dropped"] == 3
    finally:
        redis_server.start()
    time.sleep(0.06)
    assert store.add("u1", "d", 4) is True  # reconnected (the server kept nothing: no persistence)
    assert store.history("u1") == ["d"]


# ----------------------------------------------------------------------------- ingest


CSV_LINES = """visitor,product,ts,kind,event_id
u1,100001,100,view,e1
u1,100002,2024-01-01T00:00:00Z,purchase,e2
u1,100003,101
u2,999999,102,view,e4
u2,100004,not-a-time,view,e5
,100004,103,view,e6
u2,100004,104,View,e7
u1,100001,100,view,e1

u2,100005,105,view,e9
"""


def test_ingest_a_csv_counts_what_it_skips_and_why(redis_url, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(CSV_LINES)
    store = make_store(redis_url)
    known = {"100001", "100002", "100003", "100004", "100005"}
    report = ingest(path, store, known_items=known, batch=2, progress=False,
                    columns={"user_id": "visitor", "item_id": "product", "timestamp": "ts"})
    assert (report.lines, report.ingested, report.duplicates, report.dropped) == (9, 3, 1, 0)
    assert dict(report.skipped) == {"malformed line": 1, "unknown item": 1, "bad timestamp": 1, "missing user_id": 1,
                                    "bad kind": 1}
    assert [(line, reason) for line, reason, _ in report.examples] == [
        (4, "malformed line"), (5, "unknown item"), (6, "bad timestamp"), (7, "missing user_id"), (8, "bad kind")]
    assert store.history("u1") == ["100001", "100002"]  # 2024 sorts after t=100
    assert store.history("u2") == ["100005"]
    table = report.table()
    assert "ingested" in table and "unknown item" in table and "first skipped: line 4" in table


def test_ingest_json_lines_from_any_iterable(redis_url, tmp_path):
    lines = [
        b'{"user_id": "u1", "item_id": "100001", "timestamp": 1}\n',
        b'{"user_id": "u1", "item_id": 100002, "timestamp": 2, "kind": "purchase"}\n',
        b"{not json\n",
        b"[1, 2]\n",
        b'{"user_id": "u1", "item_id": "100003"}\n',
        b'{"user_id": "u1", "item_id": "\xff\xfe", "timestamp": 3}\n',
        b'{"user_id": "u1", "item_id": "100004", "timestamp": true}\n',
        b'{"user_id": "u2", "item_id": "100001", "timestamp": 1.5, "event_id": 77}\n',
    ]
    store = make_store(redis_url)
    report = ingest(iter(lines), store, progress=False)
    assert (report.lines, report.ingested, report.duplicates) == (7, 3, 0)
    assert dict(report.skipped) == {"malformed line": 2, "missing timestamp": 1, "not UTF-8": 1, "bad timestamp": 1}
    assert [line for line, _, _ in report.examples] == [3, 4, 5, 6, 7]
    assert store.history("u1") == ["100001", "100002"]
    assert store.history("u2") == ["100001"]
    # gzip, and the format from the extension
    path = tmp_path / "more.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('{"user_id": "u2", "item_id": "100002", "timestamp": 9}\n')
    assert ingest(path, store, progress=False).ingested == 1
    assert store.history("u2") == ["100001", "100002"]


def test_ingest_refuses_a_csv_without_the_required_columns(redis_url):
    with pytest.raises(IngestError, match="line 1: the CSV header has no column timestamp"):
        ingest(["user_id,item_id,time\n", "u1,a,1\n"], make_store(redis_url), progress=False)


def test_paced_ingest_runs_in_a_thread_until_stopped(redis_url):
    def endless():
        yield "user_id,item_id,timestamp\n"
        i = 0
        while True:
            i += 1
            yield "u%d,item%d,%d\n" % (i % 10, i % 5, i)

    store = make_store(redis_url, history_length=1000)
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(report=ingest(endless(), store, rate=1000, stop=stop, progress=False)))
    started = time.monotonic()
    thread.start()
    time.sleep(0.4)
    stop.set()
    thread.join(5)
    elapsed = time.monotonic() - started
    assert not thread.is_alive()
    report = result["report"]
    assert report.stopped
    # paced: never ahead of 1,000 events/s; slack: the 10 ms step sent at once, and the one already read when
    # stop arrives mid-wait (sent, not dropped: it was taken from the stream)
    assert 0 < report.ingested <= 1000 * elapsed + 20
    assert sum(len(h) for h in store.histories(["u%d" % i for i in range(10)])) == report.ingested


def test_ingest_stops_when_redis_stops_taking_events(redis_server, redis_url):
    store = make_store(redis_url, retry_seconds=0.05)
    lines = ["user_id,item_id,timestamp\n"] + ["u1,item%d,%d\n" % (i, i) for i in range(10)]
    redis_server.stop()
    try:
        report = ingest(lines, store, batch=4, retries=1, progress=False)
    finally:
        redis_server.start()
    assert report.failed and report.dropped == 4 and report.ingested == 0
    assert report.last_line == 5 and not report.stopped


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory) -> Path:
    """Toy recommender + similar_items exports, with the catalog.json the recommender ships."""
    from serving_toys import TOY_CATALOG, write_toy_recommenders

    folder = tmp_path_factory.mktemp("events-export")
    rec, _ = write_toy_recommenders(folder, k=3)
    (rec / "assets.extra").mkdir(exist_ok=True)
    (rec / "assets.extra" / "catalog.json").write_text(json.dumps({"ids": [i for i, _ in TOY_CATALOG],
                                                                   "titles": [t for _, t in TOY_CATALOG]}))
    return folder


def test_cli_events_ingest_end_to_end(redis_url, toy_export, tmp_path, capsys):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,100001,1\nu1,nope,2\nu1,100003,3\nu1,100003\n")
    assert main(["events", "ingest", str(path), "--redis", redis_url, "--export-dir", str(toy_export),
                 "--set", "online.namespace=clishop"]) == 0
    out = capsys.readouterr().out
    assert "ingested" in out and "unknown item" in out and "malformed line" in out
    assert [line.split()[-1] for line in out.splitlines() if line.strip().startswith(("ingested", "skipped"))] == ["2", "2"]
    store = make_store(redis_url, "clishop")
    assert store.history("u1") == ["100001", "100003"]
    # the same file again, without the catalog: the two events are duplicates, the unknown item gets in
    assert main(["events", "ingest", str(path), "--redis", redis_url, "--set", "online.namespace=clishop"]) == 0
    counts = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()
              if line.strip().startswith(("ingested", "duplicates"))}
    assert counts == {"ingested": "1", "duplicates": "2"}
    assert store.history("u1") == ["100001", "nope", "100003"]


def test_cli_recommend_for_a_user_reads_the_events_ingested(redis_url, toy_export, tmp_path, capsys):
    from serving_toys import recommend_reference
    from tfrec.serving.server import DevServer

    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu7,100002,1\nu7,100005,2\n")
    assert main(["events", "ingest", str(path), "--redis", redis_url]) == 0
    capsys.readouterr()
    with DevServer(toy_export, grpc_port=0, rest_port=None) as server:
        common = ["--server", server.grpc_address, "--export-dir", str(toy_export), "--redis", redis_url, "--json"]
        assert main(["recommend", "--user", "u7"] + common) == 0
        line = json.loads(capsys.readouterr().out.strip())
        assert "recent events from Redis" in line["request"]
        assert [r["item_id"] for r in line["results"]] == recommend_reference(["100002", "100005"], 3)[0]
        # a shopper Redis has no events for: the --history given is the fallback
        assert main(["recommend", "--user", "nobody", "--history", "100007"] + common) == 0
        line = json.loads(capsys.readouterr().out.strip())
        assert "no events in Redis" in line["request"]
        assert [r["item_id"] for r in line["results"]] == recommend_reference(["100007"], 3)[0]
    assert main(["recommend", "--user", "u7", "--server", "127.0.0.1:1"]) == 2
    assert "no Redis configured" in capsys.readouterr().err


def test_cli_events_ingest_refuses_unusable_arguments(redis_url, tmp_path, capsys):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,100001,1\n")
    assert main(["events", "ingest", str(path)]) == 2
    assert "no Redis configured" in capsys.readouterr().err
    assert main(["events", "ingest", str(tmp_path / "missing.csv"), "--redis", redis_url]) == 2
    assert "cannot read the events file" in capsys.readouterr().err
    assert main(["events", "ingest", str(path), "--redis", redis_url, "--column", "user=visitor"]) == 2
    assert "--column takes FIELD=NAME" in capsys.readouterr().err
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("who,what,when\nu1,100001,1\n")
    assert main(["events", "ingest", str(bad_header), "--redis", redis_url]) == 2
    assert "has no column user_id, item_id, timestamp" in capsys.readouterr().err


# ----------------------------------------------------------------------------- recommendations


@pytest.fixture()
def service_parts(redis_url, toy_export):
    from tfrec.serving.local import LocalClient

    store = make_store(redis_url, timeout_ms=50, retry_seconds=0.1)
    with LocalClient(toy_export) as client:
        yield store, client


def ids(hits) -> list[str]:
    return [h.item_id for h in hits]


def test_an_added_event_changes_the_next_recommendation(service_parts):
    from serving_toys import recommend_reference
    from tfrec.serving.service import RecommendService

    store, client = service_parts
    service = RecommendService(client, events=store)
    store.add("u1", "100001", 1)
    first = ids(service.recommend(user_id="u1", k=3))
    assert first == recommend_reference(["100001"], 3)[0]
    store.add("u1", "100003", 2)
    store.add("u1", "100006", 3)
    second = ids(service.recommend(user_id="u1", k=3))
    assert second == recommend_reference(["100001", "100003", "100006"], 3)[0] and second != first
    # the store wins over a history sent with the request; positional histories still work without a user
    assert ids(service.recommend(["100002"], 3, user_id="u1")) == second
    assert ids(service.recommend(["100002"], 3)) == recommend_reference(["100002"], 3)[0]
    # a shopper the store knows nothing about is served the request's history
    many = service.recommend_many([[], ["100002", "100005"]], k=3, user_ids=["u1", "new"])
    assert [ids(h) for h in many] == [second, recommend_reference(["100002", "100005"], 3)[0]]
    assert service.stats() == {"from_store": 4, "no_events": 1, "fallbacks": 0}
    purchases = RecommendService(client, events=store, kinds=["purchase"])
    store.add("u1", "100004", 4, kind="purchase")
    assert ids(purchases.recommend(user_id="u1", k=3)) == recommend_reference(["100004"], 3)[0]


def test_redis_down_answers_from_the_request_then_reads_the_store_again(service_parts, redis_server, caplog):
    from serving_toys import recommend_reference
    from tfrec.serving.service import RecommendService

    store, client = service_parts
    service = RecommendService(client, events=store)
    store.add("u1", "100007", 1)
    assert ids(service.recommend(["100002"], 3, user_id="u1")) == recommend_reference(["100007"], 3)[0]
    redis_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="tfrec.online"):
            for _ in range(5):
                assert ids(service.recommend(["100002"], 3, user_id="u1")) == recommend_reference(["100002"], 3)[0]
            time.sleep(0.15)  # past retry_seconds: Redis is tried (and fails) again, without a new log line
            assert ids(service.recommend(["100002"], 3, user_id="u1")) == recommend_reference(["100002"], 3)[0]
            assert ids(service.recommend(user_id="u1", k=3)) == recommend_reference([], 3)[0]
    finally:
        redis_server.start()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "answering without it" in warnings[0].getMessage()
    assert service.stats()["fallbacks"] == 7
    time.sleep(0.15)
    store.add("u1", "100008", 2)  # the restarted server kept nothing (no persistence)
    assert ids(service.recommend(["100002"], 3, user_id="u1")) == recommend_reference(["100008"], 3)[0]
    assert service.stats() == {"from_store": 2, "no_events": 0, "fallbacks": 7}


def test_slow_redis_falls_back_within_the_deadline(service_parts, redis_url):
    from serving_toys import recommend_reference
    from tfrec.serving.service import RecommendService

    store, client = service_parts
    service = RecommendService(client, events=store)
    store.add("u1", "100007", 1)
    assert ids(service.recommend(["100002"], 3, user_id="u1")) == recommend_reference(["100007"], 3)[0]  # warm
    other = redis.Redis.from_url(redis_url)
    # The development server refuses DEBUG (enable-debug-command is off); CLIENT PAUSE stalls every client the same way.
    other.execute_command("CLIENT", "PAUSE", "1000", "ALL")
    try:
        started = time.perf_counter()
        hits = service.recommend(["100002"], 3, user_id="u1")
        elapsed = time.perf_counter() - started
    finally:
        other.ping()  # answers once the pause is over
        other.close()
    assert ids(hits) == recommend_reference(["100002"], 3)[0]
    assert elapsed < 0.5  # the 50 ms timeout, not the 1 s pause
    assert service.stats()["fallbacks"] == 1
    time.sleep(0.15)
    assert ids(service.recommend(["100002"], 3, user_id="u1")) == recommend_reference(["100007"], 3)[0]
