"""The BERT text encoder: model files, weight loading, HF equivalence, training modes, SavedModel export."""
from __future__ import annotations

import tfrec  # noqa: F401  (first: Keras 2 mode before TensorFlow)

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import homedepot_titles_and_queries
from tfrec import compat
from tfrec.config.schema import TextConfig
from tfrec.text.encoder import TextEncoder, WeightLoadingError, load_bert
from tfrec.text.model_files import ModelFilesError, default_model_dir, resolve_model_files

tf = compat.tensorflow()

EXPORT_INPUTS = [
    b"wireless noise cancelling headphones",
    b"",
    b"   ",
    "cordless drill \U0001F600\U0001F44D\U0001F3FD".encode("utf-8"),
    "電動ドリル 中文字符".encode("utf-8"),
    b"\xff\xfe bad",
    ("angle bracket " * 7200)[:100_000].encode("utf-8"),
]


@pytest.fixture(scope="module")
def bert(files):
    """MiniLM loaded once for the module; tests that change its weights load their own."""
    return load_bert(files, with_pooler=False)


@pytest.fixture(scope="module")
def encoder(files, bert):
    """The default encoder: mean pooling, L2-normalized, frozen, max_length 32."""
    return TextEncoder(files, bert=bert)


@pytest.fixture(scope="module")
def sample_texts(shared_datasets):
    """32 real product titles and 32 real queries."""
    titles, queries = homedepot_titles_and_queries(shared_datasets, 32, 32)
    return titles + queries


def _copy_model(files, dest: Path, weights: bool = True) -> Path:
    dest.mkdir()
    for path in (files.config, files.vocab, files.dir / "tokenizer_config.json"):
        shutil.copy(path, dest / path.name)
    if weights:
        shutil.copy(files.weights, dest / files.weights.name)
    return dest


def test_default_model_dir_is_the_shipped_minilm(files):
    assert default_model_dir() == files.dir
    assert files.weights.name == "model.safetensors" and files.weights_format == "safetensors"
    assert files.lowercase is True and files.vocab.name == "vocab.txt"


def test_resolve_model_files_names_what_is_missing(files, tmp_path):
    with pytest.raises(ModelFilesError, match="does not exist"):
        resolve_model_files(tmp_path / "nowhere")
    with pytest.raises(ModelFilesError, match=r"missing config\.json, vocab\.txt, model\.safetensors or tf_model\.h5"):
        resolve_model_files(tmp_path)
    folder = _copy_model(files, tmp_path / "cased", weights=False)
    (folder / "tf_model.h5").write_bytes(b"")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    resolved = resolve_model_files(str(folder))
    assert resolved.lowercase is False and resolved.weights_format == "h5"
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": "yes"}', encoding="utf-8")
    with pytest.raises(ModelFilesError, match="do_lower_case must be true or false"):
        resolve_model_files(folder)


def _hf_reference(texts, bert, files, max_length=32, pooling="mean"):
    """HF BertTokenizerFast ids -> the same TFBertModel -> numpy pooling and L2 normalization."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast(vocab_file=str(files.vocab), do_lower_case=True)
    tokens = hf(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="np")
    hidden = bert(
        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], token_type_ids=tokens["token_type_ids"]
    ).last_hidden_state.numpy()
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = tokens["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_embeddings_equal_hf_tokenizer_plus_same_bert(encoder, bert, files, sample_texts):
    ours = encoder(tf.constant(sample_texts)).numpy()
    ref = _hf_reference(sample_texts, bert, files)
    assert ours.shape == (64, 384) and ours.dtype == np.float32
    max_diff = float(np.abs(ours - ref).max())
    print("max abs diff vs HF reference: %.3g" % max_diff)
    assert max_diff < 1e-4


def test_similarity_sanity_matches_the_known_values(encoder):
    vectors = encoder(
        tf.constant(["wireless noise cancelling headphones", "bluetooth headset", "running shoes for men"])
    ).numpy()
    related, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert related == pytest.approx(0.46, abs=0.02)
    assert unrelated == pytest.approx(0.05, abs=0.03)
    assert related > unrelated + 0.3


def test_cls_pooling_differs_from_mean_and_matches_hf(encoder, bert, files, sample_texts):
    cls_encoder = TextEncoder(files, pooling="cls", bert=bert)
    texts = sample_texts[:8]
    cls_vectors, mean_vectors = cls_encoder(tf.constant(texts)).numpy(), encoder(tf.constant(texts)).numpy()
    assert np.abs(cls_vectors - mean_vectors).max() > 0.1
    np.testing.assert_allclose(cls_vectors, _hf_reference(texts, bert, files, pooling="cls"), atol=1e-4)


def test_projection_gives_the_configured_dim_and_unit_norm(files, bert):
    projected = TextEncoder(files, projection_dim=64, bert=bert)
    vectors = projected(tf.constant(["angle bracket", "", "deck over"])).numpy()
    assert vectors.shape == (3, 64) and projected.output_dim == 64
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    raw = TextEncoder(files, normalize=False, bert=bert)(tf.constant(["angle bracket"])).numpy()
    assert abs(np.linalg.norm(raw) - 1.0) > 0.01  # normalization really is optional


def test_encode_tokens_equals_encoding_strings(encoder, sample_texts):
    texts = tf.constant(sample_texts[:6])
    np.testing.assert_allclose(
        encoder.encode_tokens(encoder.tokenizer(texts)).numpy(), encoder(texts).numpy(), atol=1e-6
    )
    batch_padded = TextEncoder(encoder.files, pad_to="batch", bert=encoder.bert)
    np.testing.assert_allclose(batch_padded(texts).numpy(), encoder(texts).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="attention_mask"):
        encoder.encode_tokens({"input_ids": tf.zeros([1, 4], tf.int32)})


def _layer_of(variable) -> str:
    """'embeddings', 'layer_3', 'pooler' or 'projection' for a variable of the encoder."""
    name = variable.name
    if "projection" in name:
        return "projection"
    if "/encoder/layer_._" in name:
        return "layer_%s" % name.split("/encoder/layer_._")[1].split("/")[0]
    return "embeddings" if "/embeddings/" in name else name


def test_training_modes_give_the_expected_trainable_variables(files, bert):
    frozen = TextEncoder(files, projection_dim=16, training_mode="frozen", bert=bert)
    assert {_layer_of(v) for v in frozen.trainable_variables} == {"projection"}
    assert len(frozen.trainable_variables) == 2
    top = TextEncoder(files, projection_dim=16, training_mode="top_layers", trainable_layers=2, bert=bert)
    assert {_layer_of(v) for v in top.trainable_variables} == {"layer_4", "layer_5", "projection"}
    assert len(top.trainable_variables) == 2 * 16 + 2  # 16 variables per transformer layer
    full = TextEncoder(files, projection_dim=16, training_mode="full", bert=bert)
    assert len(full.trainable_variables) == len(bert.variables) + 2 and not full.non_trainable_variables
    with pytest.raises(ValueError, match="trainable_layers must be between 1 and 6"):
        TextEncoder(files, training_mode="top_layers", trainable_layers=7, bert=bert)
    frozen.set_training_mode("top_layers", trainable_layers=1)  # staged unfreezing
    assert {_layer_of(v) for v in frozen.trainable_variables} == {"layer_5", "projection"}
    frozen.set_training_mode("frozen")
    assert {_layer_of(v) for v in frozen.trainable_variables} == {"projection"}


def test_a_top_layers_gradient_step_changes_top_layers_only(files):
    encoder = TextEncoder(files, projection_dim=16, training_mode="top_layers", trainable_layers=2)
    by_layer = {}
    for v in encoder.variables:
        by_layer.setdefault(_layer_of(v), []).append(v)
    before = {name: [v.numpy().copy() for v in vs] for name, vs in by_layer.items()}
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.5)
    queries, titles = tf.constant(["angle bracket", "deck paint"]), tf.constant(["Angle Bracket", "DeckOver"])
    with tf.GradientTape() as tape:
        scores = tf.matmul(encoder(queries, training=True), encoder(titles, training=True), transpose_b=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy([0, 1], scores * 20, from_logits=True))
    grads = tape.gradient(loss, encoder.trainable_variables)
    assert all(g is not None for g in grads)
    optimizer.apply_gradients(zip(grads, encoder.trainable_variables))

    def changed(name):
        return any(not np.array_equal(v.numpy(), old) for v, old in zip(by_layer[name], before[name]))

    assert changed("layer_5") and changed("layer_4") and changed("projection")
    assert not changed("embeddings") and not any(changed("layer_%d" % i) for i in range(4))


def test_from_config_section_reads_the_text_section(files, bert):
    cfg = TextConfig(max_length=16, pooling="cls", normalize=False)
    encoder = TextEncoder.from_config_section(cfg, projection_dim=8, training_mode="top_layers", trainable_layers=1, bert=bert)
    assert (encoder.tokenizer.max_length, encoder.pooling, encoder.normalize) == (16, "cls", False)
    assert encoder.output_dim == 8 and encoder.training_mode == "top_layers"
    assert {_layer_of(v) for v in encoder.trainable_variables} == {"layer_5", "projection"}
    assert encoder(tf.constant(["drill"])).shape == (1, 8)
    with pytest.raises(ModelFilesError, match="does not exist"):
        TextEncoder.from_config_section(TextConfig(model_dir="/nonexistent/model"))


def test_load_bert_fails_clearly_on_missing_or_unexpected_weights(files, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    folder = _copy_model(files, tmp_path / "broken", weights=False)
    state = safetensors_numpy.load_file(str(files.weights))
    del state["encoder.layer.3.output.dense.weight"]
    state["encoder.layer.9.extra.weight"] = np.zeros([2], np.float32)
    safetensors_numpy.save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightLoadingError, match=r"1 missing \(encoder\.layer\.3\.output\.dense\.weight\), 1 unexpected \(encoder\.layer\.9"):
        load_bert(resolve_model_files(folder))


def test_load_bert_reads_tf_model_h5(files, bert, tmp_path):
    folder = _copy_model(files, tmp_path / "h5", weights=False)
    bert.save_weights(str(folder / "tf_model.h5"))  # the layout of HF's TF save_pretrained
    from_h5 = load_bert(resolve_model_files(folder), with_pooler=False)
    ids = tf.constant([[101, 7279, 21605, 102]])
    np.testing.assert_allclose(
        from_h5(input_ids=ids).last_hidden_state.numpy(), bert(input_ids=ids).last_hidden_state.numpy(), atol=1e-6
    )


_LOAD_AND_RUN = """
import base64, json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops, as TF Serving links them)
assert not {"tfrec", "transformers", "tf_keras"} & set(sys.modules), "the export needs only TF and TF Text"
texts = [base64.b64decode(t) for t in json.loads(open(sys.argv[2]).read())]
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(texts=tf.constant(texts))
np.save(sys.argv[3], out["embedding"].numpy())
"""


class _Serving(tf.Module):
    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def serve(self, texts):
        return {"embedding": self.encoder(texts, training=False)}


def test_export_runs_in_a_fresh_process_with_only_tensorflow_and_text(encoder, tmp_path):
    module = _Serving(encoder)
    export_dir = tmp_path / "export"
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([base64.b64encode(t).decode("ascii") for t in EXPORT_INPUTS]), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN, str(export_dir), str(inputs), str(tmp_path / "out.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(tmp_path / "out.npy")
    expected = encoder(tf.constant(EXPORT_INPUTS)).numpy()
    assert served.shape == (len(EXPORT_INPUTS), 384) and np.isfinite(served).all()
    np.testing.assert_allclose(served, expected, atol=1e-5)
