"""tf.data pipelines: retrieval pairs, ranking lists and (history -> next item) sequences."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before TensorFlow is imported)

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from tfrec.config import load_config
from tfrec.data import load_data
from tfrec.data.datasets import load_amazon_scientific, load_movielens_100k
from tfrec.data.errors import RowChecker
from tfrec.data.pipelines import (
    PAD_INDEX,
    PAD_LABEL,
    build_ranking_lists,
    ranking_lists,
    retrieval_pair_arrays,
    retrieval_pairs,
    sequence_arrays,
    sequences_dataset,
)
from tfrec.data.readers import leave_one_out
from tfrec.data.synthetic import synthetic_catalog, synthetic_interactions, synthetic_judgments
from tfrec.data.tables import Catalog, Interactions, Judgments, Sequences

from conftest import write_homedepot_slice

FOLDER = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PAIR_KEYS = ("query", "product_index", "product_id", "product_text", "relevance")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """A 200-item SYNTHETIC catalog."""
    return synthetic_catalog(200, seed=0)


@pytest.fixture(scope="module")
def judgments(catalog) -> Judgments:
    """About 600 SYNTHETIC judgments over 100 queries, labels in [1, 3]."""
    return synthetic_judgments(catalog, n_queries=100, seed=0)


def _value(x):
    return x.decode("utf-8") if isinstance(x, bytes) else x.item() if hasattr(x, "item") else x


def epoch_rows(ds, keys) -> list[tuple]:
    """All rows of one pass over a batched dataset, as tuples of plain Python values."""
    rows = []
    for batch in ds:
        columns = [batch[k].numpy() for k in keys]
        rows.extend(tuple(_value(c[i]) for c in columns) for i in range(len(columns[0])))
    return rows


def array_rows(arrays: dict, keys) -> list[tuple]:
    """The rows of a dict of numpy columns, as tuples of plain Python values."""
    return [tuple(_value(arrays[k][i]) for k in keys) for i in range(len(arrays[keys[0]]))]


def judgments_by_query(j: Judgments) -> dict[str, Counter]:
    """query -> multiset of (product index, label) built straight from the input columns."""
    out: dict[str, Counter] = defaultdict(Counter)
    for q, p, label in zip(j.queries.tolist(), j.products.tolist(), j.labels.tolist()):
        out[str(q)][(int(p), float(label))] += 1
    return dict(out)


def hand_judgments() -> Judgments:
    """Three queries with 5, 2 and 1 judgments, rows of one query not contiguous."""
    rows = [
        ("drill", 0, 3.0),
        ("saw", 5, 1.0),
        ("drill", 1, 2.0),
        ("lamp", 9, 2.5),
        ("drill", 2, 1.5),
        ("saw", 6, 2.0),
        ("drill", 3, 2.75),
        ("drill", 4, 1.0),
    ]
    q, p, label = zip(*rows)
    return Judgments(np.asarray(q, dtype=object), np.asarray(p, dtype=np.int32), np.asarray(label, dtype=np.float32), source="hand")


def hand_catalog(n: int = 12) -> Catalog:
    """A catalog with ids I0..I{n-1} and two text fields (one of them sometimes empty)."""
    return Catalog(
        ids=np.asarray(["I%d" % i for i in range(n)], dtype=object),
        texts={
            "title": np.asarray(["title %d" % i for i in range(n)], dtype=object),
            "brand": np.asarray(["" if i % 3 == 0 else "brand%d" % i for i in range(n)], dtype=object),
        },
        source="hand",
    )


# ----------------------------------------------------------------------------- retrieval pairs


def test_retrieval_pair_arrays_keep_relevant_rows_with_catalog_columns(catalog, judgments):
    """Only labels >= min_relevance are kept, in input order, with the catalog id/text of each row."""
    arrays = retrieval_pair_arrays(judgments, catalog, 2.0)
    keep = judgments.labels >= 2.0
    assert 0 < keep.sum() < len(judgments)
    assert all(len(v) == keep.sum() for v in arrays.values())
    np.testing.assert_array_equal(arrays["query"], judgments.queries[keep].astype(str))
    np.testing.assert_array_equal(arrays["product_index"], judgments.products[keep])
    np.testing.assert_array_equal(arrays["product_id"], catalog.ids[arrays["product_index"]].astype(str))
    np.testing.assert_array_equal(arrays["product_text"], catalog.texts["title"][arrays["product_index"]].astype(str))
    np.testing.assert_array_equal(arrays["relevance"], judgments.labels[keep])
    assert arrays["relevance"].min() >= 2.0
    assert arrays["product_index"].dtype == np.int32 and arrays["relevance"].dtype == np.float32


def test_retrieval_pair_arrays_threshold_is_inclusive_and_text_fields_selectable():
    """A label equal to min_relevance is kept; text_fields picks fields, the default joins all non-empty ones."""
    cat, j = hand_catalog(), hand_judgments()
    arrays = retrieval_pair_arrays(j, cat, 2.5)
    assert array_rows(arrays, ("query", "product_index", "relevance")) == [("drill", 0, 3.0), ("lamp", 9, 2.5), ("drill", 3, 2.75)]
    assert arrays["product_id"].tolist() == ["I0", "I9", "I3"]
    assert arrays["product_text"].tolist() == ["title 0", "title 9", "title 3"]  # brand of 0, 3, 9 is empty
    brand = retrieval_pair_arrays(j, cat, 2.0, text_fields=["brand"])
    assert brand["product_text"].tolist() == ["", "brand1", "", "", ""]
    joined = retrieval_pair_arrays(j, cat, 2.0)
    assert joined["product_text"].tolist() == ["title 0", "title 1 brand1", "title 9", "title 6", "title 3"]


def test_retrieval_pairs_batches_have_configured_size(catalog, judgments):
    """Every batch has batch_size rows except a smaller last one; drop_remainder drops it."""
    n = int((judgments.labels >= 2.0).sum())
    ds = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=16, seed=1)
    sizes = [int(b["query"].shape[0]) for b in ds]
    assert sizes == [16] * (n // 16) + ([n % 16] if n % 16 else [])
    dropped = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=16, seed=1, drop_remainder=True)
    assert [int(b["query"].shape[0]) for b in dropped] == [16] * (n // 16)
    first = next(iter(ds))
    assert set(first) == set(PAIR_KEYS)
    assert first["product_index"].dtype.name == "int32" and first["relevance"].dtype.name == "float32"


def test_retrieval_pairs_epoch_is_the_input_set(catalog, judgments):
    """One epoch yields each kept pair exactly once: nothing lost, nothing duplicated."""
    ds = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=32, seed=7)
    got = epoch_rows(ds, PAIR_KEYS)
    expected = array_rows(retrieval_pair_arrays(judgments, catalog, 2.0), PAIR_KEYS)
    assert Counter(got) == Counter(expected)
    assert len(set(got)) == len(got) == len(expected)


def test_retrieval_pairs_same_seed_same_order(catalog, judgments):
    """Two freshly built datasets with one seed give the same first-epoch order."""
    a = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=32, seed=11)
    b = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=32, seed=11)
    first_a, first_b = epoch_rows(a, PAIR_KEYS), epoch_rows(b, PAIR_KEYS)
    assert first_a == first_b
    assert first_a != array_rows(retrieval_pair_arrays(judgments, catalog, 2.0), PAIR_KEYS)  # it is shuffled


def test_retrieval_pairs_different_seed_different_order(catalog, judgments):
    """Different seeds give different first-epoch orders of the same pairs."""
    a = epoch_rows(retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=32, seed=1), PAIR_KEYS)
    b = epoch_rows(retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=32, seed=2), PAIR_KEYS)
    assert a != b
    assert Counter(a) == Counter(b)


def test_retrieval_pairs_reshuffle_each_epoch(catalog, judgments):
    """Two epochs of one dataset come in different orders but hold the same multiset."""
    ds = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=32, seed=5)
    first, second = epoch_rows(ds, PAIR_KEYS), epoch_rows(ds, PAIR_KEYS)
    assert first != second
    assert Counter(first) == Counter(second)
    # The epoch sequence itself is reproducible: a fresh dataset with the seed repeats both epochs.
    again = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=32, seed=5)
    assert [epoch_rows(again, PAIR_KEYS), epoch_rows(again, PAIR_KEYS)] == [first, second]


def test_retrieval_pairs_without_shuffle_keep_input_order(catalog, judgments):
    """shuffle=False yields the pairs in input order, every epoch."""
    ds = retrieval_pairs(judgments, catalog, min_relevance=2.0, batch_size=10, seed=3, shuffle=False)
    expected = array_rows(retrieval_pair_arrays(judgments, catalog, 2.0), PAIR_KEYS)
    assert epoch_rows(ds, PAIR_KEYS) == expected
    assert epoch_rows(ds, PAIR_KEYS) == expected


def test_retrieval_pairs_without_pairs_raise(catalog, judgments):
    """No label reaching min_relevance (or no judgments at all) is a ValueError, not an empty dataset."""
    with pytest.raises(ValueError, match="no retrieval pairs"):
        retrieval_pairs(judgments, catalog, min_relevance=3.5, batch_size=8, seed=0)
    empty = Judgments(np.zeros(0, dtype=object), np.zeros(0, np.int32), np.zeros(0, np.float32), source="empty")
    with pytest.raises(ValueError, match="empty"):
        retrieval_pairs(empty, catalog, min_relevance=1.0, batch_size=8, seed=0)


def test_retrieval_pairs_on_real_homedepot_slice(shared_datasets, tmp_path):
    """On a real Home Depot slice the pairs are exactly the train.csv rows with relevance >= 2.5."""
    folder = write_homedepot_slice(shared_datasets, tmp_path / "hd", n_queries=60)
    loaded = load_config(None, ["data.dataset=search-csv", "data.dir=%s" % folder, "evaluation.ks=[10]", "retrieval.top_k=10"])
    data = load_data(loaded)
    with open(folder / "train.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = Counter((r["query"], r["product_id"], float(np.float32(r["relevance"]))) for r in rows if float(r["relevance"]) >= 2.5)
    titles = {pid: t for pid, t in zip(data.catalog.ids.tolist(), data.catalog.texts["title"].tolist())}
    ds = retrieval_pairs(data.train, data.catalog, min_relevance=2.5, batch_size=64, seed=0)
    got = epoch_rows(ds, PAIR_KEYS)
    assert Counter((q, pid, rel) for q, _, pid, _, rel in got) == expected
    assert all(text == titles[pid] for _, _, pid, text, _ in got)
    assert all(data.catalog.ids[index] == pid for _, index, pid, _, _ in got)


# ----------------------------------------------------------------------------- ranking lists


def test_build_ranking_lists_pad_and_hold_each_querys_judgments(judgments):
    """Each query is one list; real positions hold exactly its judgments, the rest is -1 padding."""
    lists = build_ranking_lists(judgments, list_size=8, seed=0)
    expected = judgments_by_query(judgments)
    assert lists.products.shape == lists.labels.shape == (len(expected), 8)
    assert sorted(lists.queries.tolist()) == sorted(expected) and len(set(lists.queries.tolist())) == len(expected)
    assert lists.truncated_lists == 0 and lists.dropped_items == 0
    np.testing.assert_array_equal(lists.mask, lists.products >= 0)
    assert (lists.products[~lists.mask] == PAD_INDEX).all() and (lists.labels[~lists.mask] == PAD_LABEL).all()
    assert (lists.labels[lists.mask] >= 1.0).all()
    for row, query in enumerate(lists.queries.tolist()):
        n = sum(expected[query].values())
        assert lists.mask[row].tolist() == [True] * n + [False] * (8 - n)  # real items first, then padding
        got = Counter(zip(lists.products[row][: n].tolist(), lists.labels[row][: n].tolist()))
        assert got == expected[query]


def test_build_ranking_lists_hand_example():
    """Non-contiguous rows of a query are grouped; exact padding for 5, 2 and 1 judgments in lists of 6."""
    lists = build_ranking_lists(hand_judgments(), list_size=6, seed=4)
    assert lists.queries.tolist() == ["drill", "lamp", "saw"]
    assert sorted(lists.products[0].tolist()) == [-1, 0, 1, 2, 3, 4]
    assert sorted(lists.products[1].tolist()) == [-1] * 5 + [9]
    assert sorted(lists.products[2].tolist()) == [-1] * 4 + [5, 6]
    label_of = {0: 3.0, 1: 2.0, 2: 1.5, 3: 2.75, 4: 1.0, 9: 2.5, 5: 1.0, 6: 2.0, -1: -1.0}
    assert [[label_of[p] for p in row] for row in lists.products.tolist()] == lists.labels.tolist()
    assert lists.mask.sum(axis=1).tolist() == [5, 1, 2]


def test_build_ranking_lists_truncation_counts_and_subsets(judgments):
    """With list_size below a query's count, truncated_lists/dropped_items are right and kept items are a subset."""
    counts = Counter(judgments.queries.astype(str).tolist())
    assert set(counts.values()) == {5, 6}
    lists = build_ranking_lists(judgments, list_size=5, seed=2)
    assert lists.truncated_lists == sum(c > 5 for c in counts.values()) > 0
    assert lists.dropped_items == sum(max(0, c - 5) for c in counts.values())
    assert lists.mask.all()  # every query has >= 5 judgments
    expected = judgments_by_query(judgments)
    for row, query in enumerate(lists.queries.tolist()):
        kept = Counter(zip(lists.products[row].tolist(), lists.labels[row].tolist()))
        assert not kept - expected[query]  # a sub-multiset of the query's judgments
        assert len(set(lists.products[row].tolist())) == 5
    small = build_ranking_lists(hand_judgments(), list_size=2, seed=0)
    assert (small.truncated_lists, small.dropped_items) == (1, 3)
    assert set(small.products[0].tolist()) <= {0, 1, 2, 3, 4} and (small.products[0] >= 0).all()


def test_build_ranking_lists_seeded_order(judgments):
    """The order inside each list is fixed by the seed and changes with it; the contents do not."""
    a = build_ranking_lists(judgments, list_size=8, seed=1)
    b = build_ranking_lists(judgments, list_size=8, seed=1)
    c = build_ranking_lists(judgments, list_size=8, seed=2)
    np.testing.assert_array_equal(a.products, b.products)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.queries.tolist() == c.queries.tolist()
    assert not np.array_equal(a.products, c.products)
    np.testing.assert_array_equal(np.sort(a.products, axis=1), np.sort(c.products, axis=1))
    # Truncation is a seeded sample too: different seeds keep different items of long lists.
    ta, tc = build_ranking_lists(judgments, 3, seed=1), build_ranking_lists(judgments, 3, seed=2)
    assert not np.array_equal(np.sort(ta.products, axis=1), np.sort(tc.products, axis=1))


def test_ranking_lists_dataset_consistent_tensors(catalog, judgments):
    """Dataset lists have shape [batch, list_size]; mask, label, ids and texts agree with the judgments."""
    list_size, batch_size = 8, 16
    ds = ranking_lists(judgments, catalog, list_size=list_size, batch_size=batch_size, seed=3)
    expected = judgments_by_query(judgments)
    titles = catalog.texts["title"]
    seen = []
    sizes = []
    for batch in ds:
        b = {k: v.numpy() for k, v in batch.items()}
        n = len(b["query"])
        sizes.append(n)
        for key in ("product_index", "product_id", "product_text", "label", "mask"):
            assert b[key].shape == (n, list_size), key
        assert b["mask"].dtype == bool and b["label"].dtype == np.float32 and b["product_index"].dtype == np.int32
        np.testing.assert_array_equal(b["mask"], b["product_index"] >= 0)
        np.testing.assert_array_equal(b["mask"], b["label"] >= 0)
        assert (b["product_index"][~b["mask"]] == -1).all() and (b["label"][~b["mask"]] == -1).all()
        assert set(b["product_id"][~b["mask"]].tolist()) <= {b""}
        assert set(b["product_text"][~b["mask"]].tolist()) <= {b""}
        for i in range(n):
            query = b["query"][i].decode()
            seen.append(query)
            m = b["mask"][i]
            index = b["product_index"][i][m]
            assert Counter(zip(index.tolist(), b["label"][i][m].tolist())) == expected[query]
            assert [x.decode() for x in b["product_id"][i][m]] == catalog.ids[index].tolist()
            assert [x.decode() for x in b["product_text"][i][m]] == titles[index].tolist()
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    assert sizes == [batch_size] * (len(expected) // batch_size) + [len(expected) % batch_size]


def test_ranking_lists_dataset_seeded(catalog, judgments):
    """The same seed gives the same lists in the same order; another seed reorders the lists and their items."""

    def first_epoch(seed):
        ds = ranking_lists(judgments, catalog, list_size=8, batch_size=32, seed=seed)
        rows = []
        for batch in ds:
            b = {k: v.numpy() for k, v in batch.items()}
            rows += [(q.decode(), tuple(p.tolist()), tuple(l.tolist())) for q, p, l in zip(b["query"], b["product_index"], b["label"])]
        return rows

    a, b, c = first_epoch(9), first_epoch(9), first_epoch(10)
    assert a == b
    assert [r[0] for r in a] != [r[0] for r in c]  # list order differs
    lists_a, lists_c = {q: p for q, p, _ in a}, {q: p for q, p, _ in c}
    assert lists_a.keys() == lists_c.keys()
    assert any(lists_a[q] != lists_c[q] for q in lists_a)  # order inside lists differs
    assert all(sorted(lists_a[q]) == sorted(lists_c[q]) for q in lists_a)  # contents do not


def test_ranking_lists_unshuffled_follow_build_ranking_lists():
    """With shuffle=False the dataset holds build_ranking_lists' arrays with ids/texts looked up."""
    cat, j = hand_catalog(), hand_judgments()
    ds = ranking_lists(j, cat, list_size=4, batch_size=2, seed=6, shuffle=False, text_fields=["title"])
    batches = [{k: v.numpy() for k, v in b.items()} for b in ds]
    assert [len(b["query"]) for b in batches] == [2, 1]
    lists = build_ranking_lists(j, 4, seed=6)
    product_index = np.concatenate([b["product_index"] for b in batches])
    np.testing.assert_array_equal(product_index, lists.products)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), lists.labels)
    ids = np.concatenate([b["product_id"] for b in batches]).astype(str)
    assert ids.tolist() == [["I%d" % p if p >= 0 else "" for p in row] for row in lists.products.tolist()]
    texts = np.concatenate([b["product_text"] for b in batches]).astype(str)
    assert texts.tolist() == [["title %d" % p if p >= 0 else "" for p in row] for row in lists.products.tolist()]
    assert (lists.truncated_lists, lists.dropped_items) == (1, 1)


# ----------------------------------------------------------------------------- sequences


def test_padded_histories_keep_newest_items_at_the_end():
    """The last max_history items are kept, newest in the last column, -1 padding in front, lengths capped."""
    items = np.asarray([10, 11, 12, 13, 14, 20, 21, 30], dtype=np.int32)
    seqs = Sequences(
        items=items,
        starts=np.asarray([0, 0, 0, 5, 7, 3], dtype=np.int64),
        ends=np.asarray([1, 3, 5, 7, 8, 3], dtype=np.int64),
        targets=np.asarray([11, 13, 0, 22, 31, 1], dtype=np.int32),
        users=np.asarray(["a", "a", "a", "b", "c", "d"], dtype=object),
    )
    history, length = seqs.padded_histories(3)
    assert history.dtype == np.int32 and length.dtype == np.int32
    assert history.tolist() == [
        [-1, -1, 10],
        [10, 11, 12],
        [12, 13, 14],
        [-1, 20, 21],
        [-1, -1, 30],
        [-1, -1, -1],
    ]
    assert length.tolist() == [1, 3, 3, 2, 1, 0]
    assert seqs.history_lengths().tolist() == [1, 3, 5, 2, 1, 0]
    wide, wide_length = seqs.padded_histories(6)
    assert wide[2].tolist() == [-1, 10, 11, 12, 13, 14] and wide_length.tolist() == [1, 3, 5, 2, 1, 0]


def test_sequence_arrays_ids_follow_indices():
    """history_id is "" where history_index is -1 and the catalog id elsewhere; target ids match the catalog."""
    cat = hand_catalog(40)
    seqs = Sequences(
        items=np.asarray([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32),
        starts=np.asarray([0, 0, 5], dtype=np.int64),
        ends=np.asarray([2, 5, 7], dtype=np.int64),
        targets=np.asarray([4, 9, 6], dtype=np.int32),
        users=np.asarray(["u1", "u1", "u2"], dtype=object),
    )
    arrays = sequence_arrays(seqs, cat, max_history=4)
    assert arrays["history_index"].tolist() == [[-1, -1, 3, 1], [1, 4, 1, 5], [-1, -1, 9, 2]]
    assert arrays["history_id"].tolist() == [["", "", "I3", "I1"], ["I1", "I4", "I1", "I5"], ["", "", "I9", "I2"]]
    assert arrays["history_length"].tolist() == [2, 4, 2]
    assert arrays["target_index"].tolist() == [4, 9, 6] and arrays["target_index"].dtype == np.int32
    assert arrays["target_id"].tolist() == ["I4", "I9", "I6"]
    assert arrays["user_id"].tolist() == ["u1", "u1", "u2"]


def _hand_log() -> Interactions:
    """Users b (5 events), a (3) and c (2), interleaved, timestamps unordered, some equal."""
    rows = [  # (user, item, timestamp)
        ("b", 3, 50),
        ("c", 9, 3),
        ("a", 7, 5),
        ("b", 1, 10),
        ("b", 4, 30),
        ("a", 6, 5),  # same time as item 7 of a, later in the file
        ("b", 2, 30),  # same time as item 4 of b, later in the file
        ("c", 0, 2),
        ("a", 8, 1),
        ("b", 5, 70),
    ]
    users, items, stamps = zip(*rows)
    return Interactions(np.asarray(users, dtype=object), np.asarray(items, dtype=np.int32), np.asarray(stamps, dtype=np.int64), source="hand")


def _examples(seqs: Sequences) -> list[tuple[str, list[int], int]]:
    return [
        (str(u), seqs.items[s:e].tolist(), int(t))
        for u, s, e, t in zip(seqs.users.tolist(), seqs.starts.tolist(), seqs.ends.tolist(), seqs.targets.tolist())
    ]


def test_leave_one_out_hand_example():
    """Time order (ties in file order) gives the exact train prefixes, valid = second-to-last, counts right."""
    split = leave_one_out(_hand_log())
    # b in time order: 1 (10), 4 (30), 2 (30), 3 (50), 5 (70); a: 8 (1), 7 (5), 6 (5); c is too short.
    assert _examples(split.train) == [("b", [1], 4), ("b", [1, 4], 2)]
    assert _examples(split.valid) == [("a", [8], 7), ("b", [1, 4, 2], 3)]
    assert split.short_users == 1 and split.held_out_test == 2
    assert split.train.targets.dtype == np.int32 and split.train.starts.dtype == np.int64


def test_leave_one_out_never_leaks_the_test_item():
    """The last item of each user is never a target nor inside a train/valid history; valid history stops before it."""
    log = _hand_log()
    split = leave_one_out(log)
    last = {"a": 6, "b": 5, "c": 0}  # latest event of each user (test items); items are unique per user here
    second_to_last = {"a": 7, "b": 3}
    for user, history, target in _examples(split.train) + _examples(split.valid):
        assert target != last[user] and last[user] not in history
    for user, history, target in _examples(split.valid):
        assert target == second_to_last[user] and second_to_last[user] not in history
    assert "c" not in split.train.users.tolist() + split.valid.users.tolist()


def _reference_split(log: Interactions):
    """An independent leave-one-out: per user sort by (timestamp, file line), last = test, second-to-last = valid."""
    events: dict[str, list] = defaultdict(list)
    for line, (u, i, t) in enumerate(zip(log.users.tolist(), log.items.tolist(), log.timestamps.tolist())):
        events[str(u)].append((t, line, int(i)))
    train, valid, short = [], [], 0
    for user in sorted(events):
        seq = [i for _, _, i in sorted(events[user])]
        if len(seq) < 3:
            short += 1
            continue
        train += [(user, seq[:k], seq[k]) for k in range(1, len(seq) - 2)]
        valid.append((user, seq[:-2], seq[-2]))
    return train, valid, short


def test_leave_one_out_matches_reference_on_synthetic_log():
    """On a SYNTHETIC log (shuffled rows) the split equals a per-user reference, test positions unused."""
    cat = synthetic_catalog(100, seed=1)
    log = synthetic_interactions(cat, n_users=30, events_per_user=(2, 9), seed=1)
    perm = np.random.default_rng(0).permutation(len(log))
    shuffled = Interactions(log.users[perm], log.items[perm], log.timestamps[perm], log.ratings[perm], source="shuffled")
    split = leave_one_out(shuffled)
    train, valid, short = _reference_split(shuffled)
    assert _examples(split.train) == train
    assert _examples(split.valid) == valid
    assert split.short_users == short and split.held_out_test == len(valid) == 30 - short
    counts = Counter(log.users.tolist())
    assert len(split.train) == sum(max(0, c - 3) for c in counts.values())
    assert short > 0 and len(train) > 0
    # Positions: every example of a user ends (exclusive) at least two events before the user's end.
    ends_by_user = dict(counts)
    first_by_user = dict(zip(split.valid.users.tolist(), split.valid.starts.tolist()))
    for u, s, e in zip(split.train.users.tolist(), split.train.starts.tolist(), split.train.ends.tolist()):
        assert s == first_by_user[u] and e - s <= ends_by_user[u] - 3
    for u, s, e in zip(split.valid.users.tolist(), split.valid.starts.tolist(), split.valid.ends.tolist()):
        assert e - s == ends_by_user[u] - 2


def test_sequences_dataset_empty_raises():
    """No examples at all is a ValueError naming the source."""
    empty = leave_one_out(_hand_log()).train
    none = Sequences(empty.items, empty.starts[:0], empty.ends[:0], empty.targets[:0], empty.users[:0], source="nothing-here")
    with pytest.raises(ValueError, match="nothing-here"):
        sequences_dataset(none, hand_catalog(), max_history=4, batch_size=2, seed=0)


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def amazon():
    """Amazon Scientific in strict mode."""
    folder = FOLDER / "amazon-scientific"
    if not (folder / "Scientific.train.inter").is_file():
        pytest.skip("../shared/datasets/amazon-scientific is not beside the repository")
    return load_amazon_scientific(folder, RowChecker(strict=True))


@pytest.fixture(scope="module")
def movielens():
    """MovieLens 100K in strict mode."""
    folder = FOLDER / "movielens-100k"
    if not (folder / "u.data").is_file():
        pytest.skip("../shared/datasets/movielens-100k is not beside the repository")
    return load_movielens_100k(folder, RowChecker(strict=True))


def test_amazon_first_user_examples(amazon):
    """User index 0's shortest train row is history [0] -> 1 (item "B00O47ILVA" is index 0), valid [0,1,2] -> 3."""
    assert amazon.catalog.ids[0] == "B00O47ILVA" and amazon.catalog.index_of(["B00O47ILVA"]).tolist() == [0]
    assert len(amazon.catalog) == 1585 and amazon.drops.total == 0
    user0 = amazon.train.users[0]
    assert user0 == "A1AXCV2WYDA4PD"
    rows = [ex for ex in _examples(amazon.train) if ex[0] == user0]
    assert sorted(rows, key=lambda r: len(r[1])) == [(user0, [0], 1), (user0, [0, 1], 2)]
    assert _examples(amazon.train)[0] == (user0, [0, 1], 2)  # file order: the longer prefix comes first
    assert _examples(amazon.valid)[0] == (user0, [0, 1, 2], 3)
    assert len(amazon.valid) == 2928 and len(set(amazon.valid.users.tolist())) == 2928


def test_amazon_sequences_dataset_dtypes_and_widths(amazon):
    """sequences_dataset over Amazon yields int32 histories of width max_history and string ids."""
    tf = tfrec.compat.tensorflow()
    ds = sequences_dataset(amazon.train, amazon.catalog, max_history=20, batch_size=256, seed=0)
    spec = ds.element_spec
    assert spec["history_index"].dtype == tf.int32 and spec["history_index"].shape.as_list() == [None, 20]
    assert spec["history_id"].dtype == tf.string and spec["history_id"].shape.as_list() == [None, 20]
    assert spec["history_length"].dtype == tf.int32 and spec["target_index"].dtype == tf.int32
    assert spec["user_id"].dtype == tf.string and spec["target_id"].dtype == tf.string
    total = 0
    ids = amazon.catalog.ids
    for batch in ds.take(5):
        b = {k: v.numpy() for k, v in batch.items()}
        total += len(b["target_index"])
        assert ((b["history_index"] >= -1) & (b["history_index"] < len(ids))).all()
        np.testing.assert_array_equal((b["history_index"] >= 0).sum(axis=1), b["history_length"])
        assert (b["history_index"][:, -1] >= 0).all()  # every history is non-empty: newest item in the last column
        assert b["history_length"].max() <= 20
        assert [x.decode() for x in b["target_id"]] == ids[b["target_index"]].tolist()
    assert total == 5 * 256


def test_movielens_valid_is_second_to_last_by_time(movielens):
    """MovieLens has 943 valid examples; each target is the user's second-to-last rating in time (ties: file order)."""
    assert len(movielens.valid) == 943 and movielens.valid.targets.dtype == np.int32
    data = np.loadtxt(FOLDER / "movielens-100k" / "u.data", dtype=np.int64)
    users, movies, stamps = data[:, 0], data[:, 1], data[:, 3]
    # One user read by hand: user 2 (62 ratings, no ties among the last three timestamps).
    mine = np.flatnonzero(users == 2)
    by_time = mine[np.argsort(stamps[mine], kind="stable")]
    assert stamps[by_time[-3]] < stamps[by_time[-2]] < stamps[by_time[-1]]
    assert (movies[by_time[-2]], movies[by_time[-1]]) == (314, 281)
    valid = {u: (s, e, t) for u, s, e, t in zip(movielens.valid.users.tolist(), movielens.valid.starts, movielens.valid.ends, movielens.valid.targets)}
    s, e, target = valid["2"]
    assert movielens.catalog.ids[target] == str(movies[by_time[-2]])
    assert movielens.valid.items[s:e].tolist() == movielens.catalog.index_of([str(m) for m in movies[by_time[:-2]]]).tolist()
    # Every user: the valid target's timestamp is the second-to-last one, ties broken by file order.
    for user in np.unique(users):
        rows = np.flatnonzero(users == user)
        ordered = rows[np.argsort(stamps[rows], kind="stable")]
        s, e, target = valid[str(user)]
        assert movielens.catalog.ids[target] == str(movies[ordered[-2]]), user
        assert e - s == len(rows) - 2
