"""The real-time benchmark's scenarios on toy models and a real redis-server (numbers are not asserted, their shape is)."""
from __future__ import annotations

import csv
import json

from serving_toys import TOY_CATALOG, write_toy_ranker, write_toy_recommenders, write_toy_retrieval
from tfrec.benchmarks.realtime import event_to_recommendation, markdown, write_changes, zipf_cache
from tfrec.serving.loadtest import zipf_replay
from tfrec.serving.service import ProductCatalog
from tfrec.serving.server import DevServer


def test_event_to_recommendation_measures_events_that_reach_the_recommender(redis_url, tmp_path):
    rec, _ = write_toy_recommenders(tmp_path, k=3)
    (rec / "assets.extra").mkdir(exist_ok=True)
    (rec / "assets.extra" / "catalog.json").write_text(json.dumps({"ids": [i for i, _ in TOY_CATALOG],
                                                                   "titles": [t for _, t in TOY_CATALOG]}))
    catalog = ProductCatalog.from_export(tmp_path, model="recommender")
    with DevServer(tmp_path, grpc_port=0, rest_port=None) as server:
        result = event_to_recommendation(server.grpc_address, catalog, redis_url, rate=200.0, probes=5)
    assert result["probes"] == 5 and result["event_in_history"] == 5
    assert result["event_to_recommendation"]["n"] == 5 and result["event_to_recommendation"]["p99_ms"] > 0
    assert result["ingest_rate_achieved"] > 0
    text = markdown({"cpus": 2, "python": "3", "when": "now", "replay": "r", "warm_requests": 1, "skipped": {}},
                    {"event_to_recommendation": result})
    assert "Event to recommendation" in text and "5 of 5" in text


def test_change_files_hold_the_mix_they_report(tmp_path):
    ids, titles = ["p%d" % i for i in range(50)], ["title %d" % i for i in range(50)]
    counts = write_changes(tmp_path / "changes.csv", ids, titles, 20, seed=3)
    with open(tmp_path / "changes.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert counts == {"add": 12, "change": 6, "remove": 2}
    assert [sum(r["action"] == a for r in rows) for a in ("add", "change", "remove")] == [12, 6, 2]
    touched = [r["product_id"] for r in rows if r["action"] != "add"]
    assert len(set(touched)) == len(touched) and set(touched) <= set(ids)
    assert all(r["title"] for r in rows if r["action"] != "remove") and all(not r["title"] for r in rows if r["action"] == "remove")


def test_zipf_replay_runs_with_each_cache_and_reports_hit_rates(redis_url, tmp_path):
    retrieval = write_toy_retrieval(tmp_path, k=5)
    write_toy_ranker(tmp_path)
    (retrieval / "assets.extra" / "catalog.json").write_text(json.dumps({"ids": [i for i, _ in TOY_CATALOG],
                                                                         "titles": [t for _, t in TOY_CATALOG]}))
    catalog = ProductCatalog.from_export(tmp_path)
    words = sorted({w for _, title in TOY_CATALOG for w in title.split()})
    replay = zipf_replay(words + ["%s %s" % (a, b) for a in words for b in words], 3000, seed=1)
    with DevServer(tmp_path, grpc_port=0, rest_port=None) as server:
        result = zipf_cache(server.grpc_address, catalog, replay, redis_url, seconds=0.5, warm=500, clients_list=(1, 4))
    assert set(result) == {"off", "memory", "redis"}
    for mode, runs in result.items():
        for clients in (1, 4):
            run = runs["clients_%d" % clients]
            assert run["failures"] == 0 and run["requests"] > 0, (mode, run)
            assert ("hit_rate" in run) == (mode != "off")
    assert result["memory"]["clients_4"]["hit_rate"] > 0.5 and result["redis"]["clients_4"]["hit_rate"] > 0.5
    assert result["redis"]["cache_stats"]["hits"] > 0
