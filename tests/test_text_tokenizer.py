"""The in-graph BERT tokenizer: exact id parity with HF BertTokenizerFast, pairs, bad input, SavedModel."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before TensorFlow)

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import homedepot_titles_and_queries
from tfrec import compat
from tfrec.text.tokenizer import BertTokenizerLayer, longest_first_lengths

tf = compat.tensorflow()

KEYS = ("input_ids", "attention_mask", "token_type_ids")
LONG_TEXT = ("Cordless drill driver 20V MAX lithium-ion ½ in. chuck ™ " * 2000)[:100_000]
BAD_INPUTS = [
    b"",
    b"   \t\n ",
    LONG_TEXT.encode("utf-8"),
    b"\xff\xfe bad",
    "cordless \U0001F600 drill \U0001F970 \U0001F44D\U0001F3FD".encode("utf-8"),
    "電動ドリル 充電式 中文字符 한국어".encode("utf-8"),
    b"ok\xc3",
    b"a\x00b [CL\x00S]",
]
# One or more examples of each mismatch class that the module's "Parity notes" describe.
EDGE_CASES = {
    "control-chars": ["Men\x89\xdb\xaas gloves", "CWTF35\x89\xdb\xd23 brewer", "a\x00b", "x\x7fy\x1bz\x9fw"],
    "compatibility-chars": ["½ in. ¾ ¼", "BEHR™ Premium®", "45° elbow", "ª º µ", "ﬁ ﬀ ﬃ", "ｆｕｌｌ－ｗｉｄｔｈ", "①②"],
    "accents-nfd-nfc": ["café café", "Å Å Å", "naïve résumé", "x\u0301\u0302", "İstanbul", "ǅ ǲ ß ẞ"],
    "final-sigma": ["ΟΔΟΣ Σ σ ς ΣΑΣ"],
    "whitespace": ["a\u00a0b\u3000c\u2028d\u0085e\x0bf\x0cg\th\ni\rj", "zero\u200bwidth\u200djoiner\ufeffbom"],
    "punctuation": ["don't \"q\" <t> a|b a^b a`b $5 +1 = ~x @y #z", "a—b–c «d» ¿e? ¡f! 「g」 h…", "§ ¶ · •"],
    "symbols-emoji": ["© ® € £ ¥ √ ∞ ≤", "\U0001F600 \U0001F970 \u2764\ufe0f \U0001F1FA\U0001F1F8"],
    "cjk": ["中文字符 日本語 한국어 カタカナ ひらがな", "\uf900\uf901 \U00020000", "x中y"],
    "long-words": ["a" * 100, "a" * 101, "é" * 100, "é" * 101, "ж" * 60, "ж" * 101, "ab" * 80 + " ok"],
    "special-literals": ["[CLS] hi [SEP]", "a[MASK]b", "[cls] [unused0] [UNK]x", "[[SEP]]", "[PAD][PAD]"],
    "unicode-version-skew": ["\u2c2f \ua7c0 \u0898x \u2e43 \U00010570ab", "a\u1734b c\u166dd e\U000111c9f"],
    "private-use-and-unassigned": ["\ue000private", "x\U000e0001y", "\U0010fffd"],
}


@pytest.fixture(scope="module")
def hf(files):
    """HF's fast tokenizer for the same vocab, built from the local file only (no hub)."""
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast(vocab_file=str(files.vocab), do_lower_case=True)


@pytest.fixture(scope="module")
def homedepot_text(shared_datasets):
    """The first 1,000 product titles and the first 1,000 distinct train queries."""
    return homedepot_titles_and_queries(shared_datasets, 1000, 1000)


def _hf_encode(hf, texts, max_length, pairs=None):
    out = hf(texts, pairs, truncation=True, max_length=max_length, padding="max_length", return_tensors="np")
    return {key: out[key] for key in KEYS}


def _assert_same(ours: dict, ref: dict, texts) -> int:
    """Assert equal arrays per key, naming the first differing text; return how many ids were compared."""
    for key in KEYS:
        got = np.asarray(ours[key])
        assert got.dtype == np.int32, key
        assert got.shape == ref[key].shape, key
        rows = np.flatnonzero((got != ref[key]).any(axis=1))
        assert rows.size == 0, "%s differs for %d text(s), first %r: ours %s, HF %s" % (
            key, rows.size, texts[rows[0]], got[rows[0]].tolist(), ref[key][rows[0]].tolist())
    return int(ref["input_ids"].size)


@pytest.mark.parametrize("max_length", [32, 64])
def test_ids_equal_hf_on_homedepot_titles_and_queries(files, hf, homedepot_text, max_length):
    titles, queries = homedepot_text
    texts = titles + queries
    tokenizer = BertTokenizerLayer(files.vocab, max_length=max_length)
    compared = _assert_same(tokenizer(tf.constant(texts)), _hf_encode(hf, texts, max_length), texts)
    assert compared == 2000 * max_length


def test_wordpieces_equal_hf_for_every_code_point(files, hf):
    # Each code point between two letters ("x<c>y ") shows whether it is deleted, split off,
    # kept inside the word, stripped or lowercased; and the plain runs show how neighbours combine.
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    in_words = ["".join("x%sy " % chr(c) for c in code_points[i : i + 64]) for i in range(0, len(code_points), 64)]
    runs = ["".join(chr(c) for c in code_points[i : i + 64]) for i in range(0, len(code_points), 64)]
    tokenizer = BertTokenizerLayer(files.vocab)
    for texts in (in_words, runs):
        ours = tokenizer.tokenize(tf.constant(texts)).to_list()
        ref = hf(texts, add_special_tokens=False)["input_ids"]
        bad = [i for i, (a, b) in enumerate(zip(ours, ref)) if a != b]
        assert not bad, "%d chunk(s) differ, first %r" % (len(bad), texts[bad[0]][:80])


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_each_parity_class_matches_hf(files, hf, case):
    texts = EDGE_CASES[case]
    tokenizer = BertTokenizerLayer(files.vocab, max_length=64)
    _assert_same(tokenizer(tf.constant(texts)), _hf_encode(hf, texts, 64), texts)


def test_cased_setting_matches_hf_cased(files, homedepot_text):
    transformers = pytest.importorskip("transformers")
    hf_cased = transformers.BertTokenizerFast(vocab_file=str(files.vocab), do_lower_case=False)
    texts = homedepot_text[0][:300] + [t for group in EDGE_CASES.values() for t in group]
    tokenizer = BertTokenizerLayer(files.vocab, lowercase=False, max_length=48)
    _assert_same(tokenizer(tf.constant(texts)), _hf_encode(hf_cased, texts, 48), texts)


@pytest.mark.parametrize("max_length", [16, 32, 64])
def test_pairs_equal_hf_on_query_title_pairs(files, hf, shared_datasets, max_length):
    folder = shared_datasets / "homedepot"
    with open(folder / "products.csv", encoding="utf-8", newline="") as f:
        titles = {row["product_id"]: row["title"] for row in csv.DictReader(f)}
    with open(folder / "train.csv", encoding="utf-8", newline="") as f:
        rows = [row for row, _ in zip(csv.DictReader(f), range(200))]
    queries, docs = [r["query"] for r in rows], [titles[r["product_id"]] for r in rows]
    tokenizer = BertTokenizerLayer(files.vocab, max_length=max_length)
    for first, second in ((queries, docs), (docs, queries)):
        ours = tokenizer((tf.constant(first), tf.constant(second)))
        _assert_same(ours, _hf_encode(hf, first, max_length, second), list(zip(first, second)))


@pytest.mark.parametrize("max_length", [8, 9])
def test_pair_truncation_is_longest_first_on_every_length_combination(files, hf, max_length):
    # Ties, odd budgets, one side empty or over the whole budget: the cases where truncation rules differ.
    first = [" ".join(["a"] * n) for n in range(12) for _ in range(12)]
    second = [" ".join(["b"] * m) for _ in range(12) for m in range(12)]
    tokenizer = BertTokenizerLayer(files.vocab, max_length=max_length)
    ours = tokenizer((tf.constant(first), tf.constant(second)))
    _assert_same(ours, _hf_encode(hf, first, max_length, second), list(zip(first, second)))


def test_longest_first_lengths_keeps_short_text_whole_when_it_fits_half():
    keep_a, keep_b = longest_first_lengths(tf.constant([3, 40, 20, 20, 0]), tf.constant([40, 3, 20, 21, 50]), 29)
    assert keep_a.numpy().tolist() == [3, 26, 14, 14, 0]
    assert keep_b.numpy().tolist() == [26, 3, 15, 15, 29]


def _check_valid(out: dict, tokenizer: BertTokenizerLayer, length: int) -> None:
    ids, mask, types = (np.asarray(out[key]) for key in KEYS)
    assert ids.shape[1] == length and ids.dtype == np.int32
    lengths = mask.sum(axis=1)
    assert (ids[:, 0] == tokenizer.cls_id).all()
    assert (ids[np.arange(len(ids)), lengths - 1] == tokenizer.sep_id).all()
    assert ((ids == tokenizer.pad_id) == (mask == 0)).all()
    assert (mask[:, :-1] >= mask[:, 1:]).all()  # padding only at the end
    assert (types == 0).all()


def test_bad_input_gives_valid_ids_eagerly_in_tf_function_and_equal_to_hf(files, hf):
    tokenizer = BertTokenizerLayer(files.vocab, max_length=32)
    texts = tf.constant(BAD_INPUTS)
    eager = tokenizer(texts)
    _check_valid(eager, tokenizer, 32)
    assert eager["input_ids"][0].numpy().tolist()[:3] == [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]
    assert eager["input_ids"][1].numpy().tolist()[:2] == [tokenizer.cls_id, tokenizer.sep_id]
    # Invalid UTF-8 is read as Python's errors="replace" reads it (U+FFFD, then deleted as HF does).
    decoded = [b.decode("utf-8", errors="replace") for b in BAD_INPUTS]
    _assert_same(eager, _hf_encode(hf, decoded, 32), decoded)
    graph = tf.function(tokenizer, input_signature=[tf.TensorSpec([None], tf.string)])(texts)
    for key in KEYS:
        np.testing.assert_array_equal(graph[key].numpy(), eager[key].numpy())


def test_runs_inside_tf_data(files):
    tokenizer = BertTokenizerLayer(files.vocab, max_length=16)
    dataset = tf.data.Dataset.from_tensor_slices(BAD_INPUTS).batch(3).map(tokenizer)
    batches = list(dataset.as_numpy_iterator())
    expected = tokenizer(tf.constant(BAD_INPUTS))
    for key in KEYS:
        np.testing.assert_array_equal(np.concatenate([b[key] for b in batches]), expected[key].numpy())


def test_saved_model_tokenizer_gives_the_same_ids(files, tmp_path):
    tokenizer = BertTokenizerLayer(files.vocab, max_length=16)
    module = tf.Module()
    module.tokenizer = tokenizer
    module.tokenize = tf.function(lambda texts: tokenizer(texts), input_signature=[tf.TensorSpec([None], tf.string)])
    module.tokenize_pair = tf.function(
        lambda a, b: tokenizer((a, b)), input_signature=[tf.TensorSpec([None], tf.string)] * 2
    )
    tf.saved_model.save(module, str(tmp_path / "tokenizer"))
    loaded = tf.saved_model.load(str(tmp_path / "tokenizer"))
    texts = tf.constant(BAD_INPUTS)
    single, expected = loaded.tokenize(texts), tokenizer(texts)
    pair, expected_pair = loaded.tokenize_pair(texts, texts[::-1]), tokenizer((texts, texts[::-1]))
    for key in KEYS:
        np.testing.assert_array_equal(single[key].numpy(), expected[key].numpy())
        np.testing.assert_array_equal(pair[key].numpy(), expected_pair[key].numpy())


def test_pad_to_batch_pads_to_a_multiple_of_8_capped_at_max_length(files):
    fixed = BertTokenizerLayer(files.vocab, max_length=30)
    batch = BertTokenizerLayer(files.vocab, max_length=30, pad_to="batch")
    short = tf.constant(["drill", "cordless drill bits"])
    out = batch(short)
    assert out["input_ids"].shape == (2, 8)
    np.testing.assert_array_equal(out["input_ids"].numpy(), fixed(short)["input_ids"].numpy()[:, :8])
    long_ = tf.constant(["drill", LONG_TEXT])
    assert batch(long_)["input_ids"].shape == (2, 30)  # not rounded past max_length
    assert batch(tf.constant([], tf.string))["input_ids"].shape == (0, 0)
    pair = batch((short, short))
    assert pair["input_ids"].shape == (2, 16) and pair["token_type_ids"].numpy().max() == 1


def test_fixed_padding_has_a_static_length(files):
    tokenizer = BertTokenizerLayer(files.vocab, max_length=24)
    spec = tf.function(tokenizer).get_concrete_function(tf.TensorSpec([None], tf.string)).structured_outputs
    assert all(spec[key].shape.as_list() == [None, 24] for key in KEYS)


def test_accepts_batch_by_one_strings(files):
    tokenizer = BertTokenizerLayer(files.vocab, max_length=8)
    flat = tokenizer(tf.constant(["angle bracket", ""]))["input_ids"].numpy()
    column = tokenizer(tf.constant([["angle bracket"], [""]]))["input_ids"].numpy()
    np.testing.assert_array_equal(flat, column)


def test_rejects_bad_arguments_clearly(files, tmp_path):
    with pytest.raises(ValueError, match="pad_to"):
        BertTokenizerLayer(files.vocab, pad_to="longest")
    with pytest.raises(ValueError, match="max_length"):
        BertTokenizerLayer(files.vocab, max_length=2)
    tokenizer = BertTokenizerLayer(files.vocab)
    with pytest.raises(TypeError, match="string"):
        tokenizer(tf.constant([1, 2]))
    with pytest.raises(ValueError, match=r"\[batch\]"):
        tokenizer(tf.constant([["a", "b"]]))
    with pytest.raises(ValueError, match="pair mode"):
        tokenizer((tf.constant(["a"]),) * 3)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \[CLS\], \[SEP\], \[MASK\]"):
        BertTokenizerLayer(vocab)
    with pytest.raises(ValueError, match="cannot read"):
        BertTokenizerLayer(tmp_path / "nope.txt")


def test_config_round_trip(files):
    tokenizer = BertTokenizerLayer(files.vocab, max_length=20, pad_to="batch", lowercase=True)
    again = BertTokenizerLayer.from_config(tokenizer.get_config())
    texts = tf.constant(["Simpson Strong-Tie 12-Gauge Angle"])
    np.testing.assert_array_equal(again(texts)["input_ids"].numpy(), tokenizer(texts)["input_ids"].numpy())
    assert Path(again.vocab_path) == files.vocab


def test_long_texts_are_read_up_to_max_text_bytes_with_the_same_ids(files, hf):
    tokenizer = BertTokenizerLayer(files.vocab, max_length=16)
    assert tokenizer.max_text_bytes == 16 * 256
    # 64 KiB texts: the ids are HF's (only the first 14 pieces count), and a multi-byte character
    # cut in two by the byte limit leaves no stray piece.
    texts = ["cordless drill " * 4400, "a " * 2047 + "bé" + " drill" * 10000, "x " * 32768]
    _assert_same(tokenizer(tf.constant(texts)), _hf_encode(hf, texts, 16), texts)
    small = BertTokenizerLayer(files.vocab, max_length=16, max_text_bytes=10)
    assert tokenizer.tokenize(tf.constant(["drill bit set"])).to_list() == [[hf.convert_tokens_to_ids(t) for t in ("drill", "bit", "set")]]
    assert small.tokenize(tf.constant(["drill bit set"])).to_list() == [[hf.convert_tokens_to_ids(t) for t in ("drill", "bit")]]
    assert small.tokenize(tf.constant(["drill bité"])).to_list() == small.tokenize(tf.constant(["drill bit"])).to_list()
    assert BertTokenizerLayer.from_config(small.get_config()).max_text_bytes == 10
    with pytest.raises(ValueError, match="max_text_bytes"):
        BertTokenizerLayer(files.vocab, max_text_bytes=0)
