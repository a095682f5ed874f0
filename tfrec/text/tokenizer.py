"""An in-graph BERT WordPiece tokenizer layer whose ids equal Hugging Face's BertTokenizerFast.

:class:`BertTokenizerLayer` turns a ``[B]`` string tensor (or a pair of them, for cross-encoders)
into ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (int32, ``[B, max_length]``) with
TensorFlow and TensorFlow Text ops only, so it runs inside ``tf.function``, ``tf.data`` and a
SavedModel served by TF Serving (which links the TensorFlow Text ops).

The pipeline mirrors the Rust ``tokenizers`` library behind ``BertTokenizerFast`` step by step:
invalid UTF-8 is replaced (U+FFFD), special-token literals are split out, then BertNormalizer
(clean text, pad CJK, NFD + strip accents, lowercase), BertPreTokenizer (whitespace and
punctuation) and WordPiece, whose lookup is TensorFlow Text's FastWordpieceTokenizer (the
WordPiece stage of FastBertTokenizer).

Parity notes
------------
Checked against ``BertTokenizerFast(vocab_file=..., do_lower_case=True)`` (tokenizers 0.22) on
the Home Depot titles and queries (all 54,667 titles and 9,496 distinct train queries, not only
the 1,000 + 1,000 of the test) and on every Unicode code point. Each class of mismatch found, and
its fix:

* Control characters (the catalog has mojibake such as ``Men\\x89\\xdb\\xaas``). FastBertTokenizer's
  normalizer turns C0/C1 controls into word breaks; HF deletes them (Cc, Cf, Co, U+0000, U+FFFD)
  without a break, so ``men\\x89s`` is one word ``mens``. Fix: delete them with a regex first.
* Compatibility characters (``ª``, ``½``, ``™``, ``®``, ``°``, ``ﬁ``, full-width forms).
  FastBertTokenizer's ``lower_case_nfd_strip_accents`` and BertTokenizer's ``lower_case``
  case-fold with NFKC semantics (``ª`` -> ``a``, ``½`` -> ``1⁄2``); HF applies only NFD, so ``ª``
  stays ``ª`` (``##ª`` in the vocab). Fix: our own NFD (``normalize_utf8``), removal of ``\\p{Mn}``
  and ``tf.strings.lower``, in HF's order (strip accents before lowercasing: ``İ`` -> ``i``).
* Accents: NFD + removing nonspacing marks, as HF; NFC and NFD spellings of ``é`` give the same ids.
* Final sigma: ICU's lowercasing (``tf.strings.lower``) writes a word-final ``Σ`` as ``ς``; HF maps
  per character to ``σ``. Fix: ``Σ`` -> ``σ`` before lowercasing.
* Whitespace: HF maps every Unicode White_Space character (NBSP, ideographic space, U+2028, ...)
  to a space but deletes U+000B, U+000C and U+0085 first, as they are also control characters.
* Punctuation: ASCII punctuation (including ``$ + < = > ^ ` |``) and Unicode ``P*`` are words of
  their own; symbols (``©``, ``°``, ``€``, emoji) are not.
* CJK ideographs (HF's ranges, compatibility ideographs included) become words of their own;
  kana and hangul do not.
* Long words: HF gives ``[UNK]`` for a word over 100 *characters*; FastWordpieceTokenizer's limit
  is in *bytes*, so a 60-letter Cyrillic word would differ. Fix: the limit is applied by us, in
  characters, on the normalized word.
* NUL bytes: TensorFlow Text's regex_split stops at one, losing the rest of the text. Fix: NUL
  becomes U+0001 first (both are deleted by clean-text).
* Special-token literals: HF splits ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``, ``[UNK]`` written in
  the raw text out as those tokens (case-sensitive, even inside a word); ``[cls]`` or
  ``[unused0]`` are ordinary text (so no ``preserve_unused_token``). Done the same way here.
* Unicode version skew: tokenizers' category tables predate Unicode 9, while RE2 and ICU in
  TensorFlow are newer, and Rust's lowercasing newer still. About 700 code points (scripts and
  letters added since, e.g. Vithkuqi, Kawi, Latin Extended-D) are plain letters for HF but marks,
  format characters or punctuation here, or are lowercased only by HF. None is in BERT
  vocabularies, so HF always gives ``[UNK]`` for a word holding one; we map them to one placeholder
  letter (``_SKEW_PLACEHOLDER``, in no vocab), which gives the same ``[UNK]`` word. Three older
  characters changed category: U+1734 (HF strips it), U+166D and U+111C9 (HF splits them as
  punctuation).
* Pairs: truncation follows tokenizers' ``longest_first`` (not the slow tokenizer's one token at a
  time): with a budget of ``max_length - 3``, a short text is kept whole if it fits half the budget,
  else both get half and the longer one the odd token. An empty second text still gives
  ``[CLS] a [SEP] [SEP]``, as HF's batched call does (HF's single call drops an empty pair).

Length: only the first ``max_text_bytes`` bytes of a text are read (default 256 per kept token,
8 KiB at ``max_length=32``), so the work per text is bounded whatever its length; HF reads it all.
The ids differ only where those bytes hold fewer than ``max_length`` tokens, which takes words of
hundreds of characters.

``lowercase=False`` follows HF's cased setting (no NFD, no accent stripping, no lowercasing).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from tfrec import compat
from tfrec.text.model_files import ModelFiles

tf = compat.tensorflow()
import tensorflow_text as tf_text  # noqa: E402  (needs TensorFlow loaded in Keras 2 mode first)

PadTo = Literal["max_length", "batch"]
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_CHARS_PER_WORD = 100  # HF WordPiece's max_input_chars_per_word
# Bytes read per kept token by default (max_text_bytes = this x max_length): real text averages under
# 8 bytes per WordPiece, so only texts made to be costly (thousands of bytes per token) lose anything.
BYTES_PER_TOKEN_BOUND = 256
BATCH_PAD_MULTIPLE = 8  # tensor-core and XLA friendly lengths for pad_to="batch"

# Rust char::is_whitespace; U+000B, U+000C and U+0085 never get here (deleted as controls first).
_WHITESPACE = r"[\t\n\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"
# HF's clean_text deletes Cc (but tab, newline, return), Cf, Co, NUL and U+FFFD.
_CONTROL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\p{Cf}\p{Co}\x{FFFD}]"
_CJK = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
    r"\x{2B920}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
# Group 1 keeps U+111C9 (a mark in new Unicode, punctuation for HF); U+1734 is a mark for HF only.
_ACCENTS = r"(\x{111C9})|[\p{Mn}\x{1734}]"
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}\x{166D}\x{111C9}]"
_SPLIT = r"%s+|%s" % (_WHITESPACE, _PUNCTUATION)

# Code points that HF's older Unicode tables treat as plain letters but TensorFlow's newer ones do
# not (see "Unicode version skew" above); found by sweeping every code point through both.
_UNICODE_SKEW = """
61D 7FD 890-89F 8CA-8E2 9FD-9FE A76 AFA-AFF B55 C04 C3C C77 C84 D00 D3B-D3C D81 EBA ECE 180F
1885-1886 1ABF-1ACE 1B7D-1B7E 1C89 1DF6-1DFB 2C2F 2E43-2E4F 2E52-2E5D A7C0 A7CB-A7D0 A7D2 A7D4
A7D6 A7D8 A7DA-A7DC A82C A8C5 A8FF A9BD 10570-10595 105C9-105E4 10D24-10D27 10D50-10D65
10EAB-10EAD 10EFD-10EFF 10F46-10F50 10F55-10F59 10F82-10F89 11070 11073-11074 110C2-110CD 111CF
1123E 11241 1133B 11383-113C8 11438-1143F 11442-11444 11446 1144B-1144F 1145A-1145E 11660-1166C
116B9 1182F-11837 11839-1183B 11938-1193C 1193E 11943-11946 119D4-119DB 119E0 119E2 11A01-11A0A
11A33-11A38 11A3B-11A47 11A51-11A56 11A59-11A5B 11A8A-11A96 11A98-11A9C 11A9E-11AA2 11B00-11B09
11C30-11C3D 11C3F 11C41-11C45 11C70-11C71 11C92-11CA7 11CAA-11CB0 11CB2-11CB3 11CB5-11CB6
11D31-11D45 11D47 11D90-11D91 11D95 11D97 11EF3-11EF4 11EF7-11F01 11F36-11F3A 11F40 11F42-11F4F
11FFF 12FF1-12FF2 13430-13440 13447-13455 16121-16128 16D68-16D6A 16E97-16EB8 16F4F 16FE2 16FE4
1CF00-1CF46 1E000-1E02A 1E08F 1E130-1E136 1E2AE 1E2EC-1E2EF 1E4EC-1E4EF 1E944-1E94A 1E95E-1E95F
"""
_SKEW_PLACEHOLDER = "\ua000"  # YI SYLLABLE IT: a letter for every table involved, in no BERT vocab


def _code_point_class(spec: str) -> str:
    """An RE2 character class from space-separated hex code points and ranges."""
    parts = []
    for item in spec.split():
        parts.append("-".join(r"\x{%s}" % bound for bound in item.split("-")))
    return "[%s]" % "".join(parts)


_SKEW = _code_point_class(_UNICODE_SKEW)


def read_vocab(path: Union[str, Path]) -> list[str]:
    """Read a WordPiece vocab.txt (one token per line, id = line number) as transformers reads it."""
    try:
        with open(path, encoding="utf-8") as f:
            # Universal newlines then rstrip("\n"), as transformers' load_vocab reads it.
            tokens = [line.rstrip("\n") for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError("cannot read the WordPiece vocabulary %s: %s" % (path, exc)) from exc
    if not tokens:
        raise ValueError("the WordPiece vocabulary %s is empty" % path)
    return tokens


class BertTokenizerLayer(tf.keras.layers.Layer):
    """Strings (or string pairs) -> BERT input_ids, attention_mask, token_type_ids, in graph."""

    def __init__(
        self,
        vocab_path: Union[str, Path],
        *,
        lowercase: bool = True,
        max_length: int = 32,
        pad_to: PadTo = "max_length",
        max_chars_per_word: int = MAX_CHARS_PER_WORD,
        max_text_bytes: Optional[int] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if pad_to not in ("max_length", "batch"):
            raise ValueError("pad_to must be 'max_length' or 'batch', got %r" % (pad_to,))
        if not isinstance(max_length, int) or max_length < 3:
            raise ValueError("max_length must be an int >= 3 (room for [CLS] a [SEP] b [SEP]), got %r" % (max_length,))
        if max_chars_per_word < 1:
            raise ValueError("max_chars_per_word must be >= 1, got %r" % (max_chars_per_word,))
        if max_text_bytes is None:
            max_text_bytes = BYTES_PER_TOKEN_BOUND * max_length
        if not isinstance(max_text_bytes, int) or max_text_bytes < 1:
            raise ValueError("max_text_bytes must be a positive int, got %r" % (max_text_bytes,))
        self.max_text_bytes = max_text_bytes
        self.vocab_path = str(vocab_path)
        self.lowercase = bool(lowercase)
        self.max_length = max_length
        self.pad_to = pad_to
        self.max_chars_per_word = max_chars_per_word
        vocab = read_vocab(vocab_path)
        index = {token: i for i, token in enumerate(vocab)}  # a repeated token keeps its last id, as in HF
        missing = [token for token in SPECIAL_TOKENS if token not in index]
        if missing:
            raise ValueError("the vocabulary %s lacks the special token(s) %s" % (vocab_path, ", ".join(missing)))
        if any(_SKEW_PLACEHOLDER in token for token in vocab):
            raise ValueError(
                "the vocabulary %s contains U+A000, which this tokenizer reserves as its placeholder for "
                "characters newer than HF's Unicode tables" % vocab_path
            )
        self.vocab_size = len(vocab)
        self.special_ids = {token: index[token] for token in SPECIAL_TOKENS}
        self.pad_id = self.special_ids["[PAD]"]
        self.unk_id = self.special_ids["[UNK]"]
        self.cls_id = self.special_ids["[CLS]"]
        self.sep_id = self.special_ids["[SEP]"]
        self._special_pattern = "|".join(re.escape(token) for token in SPECIAL_TOKENS)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=vocab,
            suffix_indicator="##",
            # Our own limit counts characters, as HF does; 4 bytes per character never cuts earlier.
            max_bytes_per_word=4 * max_chars_per_word,
            token_out_type=tf.int32,
            unknown_token="[UNK]",
            no_pretokenization=True,
        )

    @classmethod
    def from_model_files(cls, files: ModelFiles, *, max_length: int = 32, pad_to: PadTo = "max_length") -> "BertTokenizerLayer":
        """Build from a :class:`tfrec.text.model_files.ModelFiles` (its vocab.txt and lowercase flag)."""
        return cls(files.vocab, lowercase=files.lowercase, max_length=max_length, pad_to=pad_to)

    def get_config(self) -> dict:
        """Constructor arguments, for Keras serialization."""
        config = super().get_config()
        config.update(
            vocab_path=self.vocab_path,
            lowercase=self.lowercase,
            max_length=self.max_length,
            pad_to=self.pad_to,
            max_chars_per_word=self.max_chars_per_word,
            max_text_bytes=self.max_text_bytes,
        )
        return config

    def call(self, inputs: Any) -> dict:
        """Tokenize ``texts`` ([B] strings) or a ``(first, second)`` pair of [B] string tensors."""
        if isinstance(inputs, (tuple, list)):
            if len(inputs) != 2:
                raise ValueError("pair mode takes (first, second) string tensors, got %d inputs" % len(inputs))
            return self._pair(inputs[0], inputs[1])
        return self._single(inputs)

    def tokenize(self, texts: Any) -> tf.RaggedTensor:
        """WordPiece ids of each text's first ``max_text_bytes`` bytes, without special tokens or truncation: int32 [B, (n)]."""
        texts = _as_text_vector(texts)
        # Only the first max_length pieces are kept, so reading far past them is wasted work that a
        # hostile request could make unbounded; a character cut in two becomes U+FFFD below, which
        # clean-text deletes.
        texts = tf.strings.substr(texts, 0, self.max_text_bytes)
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        # regex_split stops at a NUL byte; U+0001 is deleted by clean-text just like NUL, and still
        # breaks a special-token literal such as "[CL\x00S]" as NUL does in HF.
        texts = tf.strings.regex_replace(texts, r"\x00", "\x01")
        chunks = tf_text.regex_split(texts, self._special_pattern, self._special_pattern)  # [B, (c)]
        flat = chunks.flat_values
        special_ids = tf.fill(tf.shape(flat), tf.constant(-1, tf.int32))
        for token, token_id in self.special_ids.items():
            special_ids = tf.where(tf.equal(flat, token), token_id, special_ids)
        is_special = special_ids >= 0
        normalized = tf.where(is_special, "", self._normalize(flat))
        words = tf_text.regex_split(normalized, _SPLIT, _PUNCTUATION)  # [C, (w)]
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self.max_chars_per_word
        word_values = tf.where(too_long, "[UNK]", words.flat_values)
        pieces = words.with_values(self._wordpiece.tokenize(word_values)).merge_dims(1, 2)  # [C, (p)]
        # A special chunk has no words, so appending its id keeps every chunk's order.
        specials = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(special_ids, is_special), tf.cast(is_special, pieces.row_splits.dtype)
        )
        pieces = tf.concat([pieces, specials], axis=1)
        return chunks.with_values(pieces).merge_dims(1, 2)

    def _normalize(self, texts: tf.Tensor) -> tf.Tensor:
        """HF BertNormalizer on a flat string tensor (see Parity notes)."""
        texts = tf.strings.regex_replace(texts, _SKEW, _SKEW_PLACEHOLDER)
        texts = tf.strings.regex_replace(texts, _CONTROL, "")
        texts = tf.strings.regex_replace(texts, _WHITESPACE, " ")
        texts = tf.strings.regex_replace(texts, _CJK, r" \0 ")
        if self.lowercase:
            texts = tf_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, _ACCENTS, r"\1")
            texts = tf.strings.regex_replace(texts, "Σ", "σ")
            texts = tf.strings.lower(texts, encoding="utf-8")
        return texts

    def _single(self, texts: Any) -> dict:
        ids = self.tokenize(texts)[:, : self.max_length - 2]
        ids, segments = tf_text.combine_segments([ids], self.cls_id, self.sep_id)
        return self._pad(ids, segments)

    def _pair(self, first: Any, second: Any) -> dict:
        a, b = self.tokenize(first), self.tokenize(second)
        keep_a, keep_b = longest_first_lengths(a.row_lengths(), b.row_lengths(), self.max_length - 3)
        a = tf.ragged.boolean_mask(a, tf.ragged.range(a.row_lengths()) < tf.expand_dims(keep_a, 1))
        b = tf.ragged.boolean_mask(b, tf.ragged.range(b.row_lengths()) < tf.expand_dims(keep_b, 1))
        ids, segments = tf_text.combine_segments([a, b], self.cls_id, self.sep_id)
        return self._pad(ids, segments)

    def _pad(self, ids: tf.RaggedTensor, segments: tf.RaggedTensor) -> dict:
        if self.pad_to == "batch":
            longest = tf.reduce_max(tf.concat([ids.row_lengths(), tf.zeros([1], ids.row_splits.dtype)], 0))
            multiple = BATCH_PAD_MULTIPLE
            length = tf.minimum((longest + multiple - 1) // multiple * multiple, self.max_length)
        else:
            length = self.max_length
        input_ids, mask = tf_text.pad_model_inputs(ids, length, pad_value=self.pad_id)
        token_type_ids, _ = tf_text.pad_model_inputs(segments, length, pad_value=0)
        return {
            "input_ids": tf.cast(input_ids, tf.int32),
            "attention_mask": tf.cast(mask, tf.int32),
            "token_type_ids": tf.cast(token_type_ids, tf.int32),
        }


def longest_first_lengths(len_a: tf.Tensor, len_b: tf.Tensor, budget: int) -> tuple[tf.Tensor, tf.Tensor]:
    """How many tokens of each text to keep, per row, under tokenizers' ``longest_first`` truncation."""
    len_a, len_b = tf.cast(len_a, tf.int64), tf.cast(len_b, tf.int64)
    budget = tf.constant(budget, tf.int64)
    short = tf.minimum(len_a, len_b)
    long_keep = tf.where(short > budget, short, tf.maximum(short, budget - short))
    halve = short + long_keep > budget
    short_keep = tf.where(halve, budget // 2, short)
    long_keep = tf.where(halve, budget // 2 + budget % 2, long_keep)
    a_is_long = len_a > len_b
    keep_a = tf.where(a_is_long, long_keep, short_keep)
    keep_b = tf.where(a_is_long, short_keep, long_keep)
    fits = len_a + len_b <= budget
    return tf.where(fits, len_a, tf.minimum(keep_a, len_a)), tf.where(fits, len_b, tf.minimum(keep_b, len_b))


def _as_text_vector(texts: Any) -> tf.Tensor:
    """A [B] string tensor from [B] or [B, 1] strings; anything else is a clear error."""
    texts = tf.convert_to_tensor(texts)
    if texts.dtype != tf.string:
        raise TypeError("the tokenizer takes string tensors, got dtype %s" % texts.dtype.name)
    rank = texts.shape.rank
    if rank is None:
        return tf.reshape(texts, [-1])
    if rank == 2 and texts.shape[-1] == 1:
        return tf.squeeze(texts, axis=-1)
    if rank != 1:
        raise ValueError("the tokenizer takes a [batch] string tensor (or [batch, 1]), got shape %s" % texts.shape)
    return texts

