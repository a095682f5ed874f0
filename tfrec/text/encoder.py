"""The pretrained BERT text encoder: raw strings in, one pooled (projected, normalized) vector out.

:func:`load_bert` builds ``transformers.TFBertModel`` from a model folder without PyTorch and
checks that every weight was loaded. :class:`TextEncoder` is a Keras layer that chains the
in-graph tokenizer, BERT, masked-mean or [CLS] pooling, an optional trainable projection and
L2 normalization, with three fine-tuning modes (frozen, top layers, full).
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Literal, Optional

from tfrec import compat
from tfrec.config.schema import TextConfig
from tfrec.text.model_files import ModelFiles, ModelFilesError, resolve_model_files
from tfrec.text.tokenizer import BertTokenizerLayer, PadTo

tf = compat.tensorflow()

Pooling = Literal["mean", "cls"]
TrainingMode = Literal["frozen", "top_layers", "full"]
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# Checkpoint entries that are not encoder weights: buffers and pre-training heads TFBertModel lacks.
_IGNORABLE_UNEXPECTED = re.compile(r"position_ids|^(bert\.)?cls\.|^(bert/)?cls/|predictions|seq_relationship")
_POOLER = re.compile(r"(^|[./])pooler[./]")


class WeightLoadingError(ValueError):
    """A checkpoint does not fit the BERT built from config.json; the message lists the keys."""


def load_bert(files: ModelFiles, *, with_pooler: bool = True) -> Any:
    """Build ``transformers.TFBertModel`` from a model folder's config.json and weights (no PyTorch)."""
    from transformers import BertConfig, TFBertModel

    try:
        config = BertConfig.from_json_file(str(files.config))
    except (OSError, ValueError) as exc:
        raise ModelFilesError("cannot read the BERT config %s: %s" % (files.config, exc)) from exc
    if getattr(config, "model_type", "bert") != "bert":
        raise ModelFilesError("%s describes a %r model; tfrec's text encoder loads BERT models" % (files.config, config.model_type))
    model = TFBertModel(config, add_pooling_layer=with_pooler)
    model(model.dummy_inputs, training=False)  # creates the variables the weights are assigned to
    if files.weights_format == "safetensors" and _safetensors_format(files.weights) != "tf":
        missing, unexpected = _load_pytorch_safetensors(model, files)
    else:
        from transformers.modeling_tf_utils import load_tf_weights

        missing, unexpected, _ = load_tf_weights(model, str(files.weights))
    unexpected = [k for k in unexpected if not _IGNORABLE_UNEXPECTED.search(k)]
    if not with_pooler:
        unexpected = [k for k in unexpected if not _POOLER.search(k)]
    pooler_missing = [k for k in missing if _POOLER.search(k)]
    missing = [k for k in missing if not _POOLER.search(k)]
    if missing or unexpected:
        raise WeightLoadingError(
            "the weights in %s do not match the BERT of %s: %d missing (%s), %d unexpected (%s)"
            % (files.weights, files.config, len(missing), _some(missing), len(unexpected), _some(unexpected))
        )
    if pooler_missing:
        warnings.warn("%s has no pooler weights; the pooler output is untrained" % files.weights, stacklevel=2)
    return model


def _safetensors_format(path: Any) -> str:
    """The ``format`` metadata of a safetensors file: "pt" (PyTorch names) or "tf" (Keras names)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as archive:
        return (archive.metadata() or {}).get("format", "pt")


def _load_pytorch_safetensors(model: Any, files: ModelFiles) -> tuple[list[str], list[str]]:
    """Assign a PyTorch-named safetensors state dict; return (missing, unexpected) keys."""
    import safetensors.numpy
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    state_dict = safetensors.numpy.load_file(str(files.weights))
    _, info = load_pytorch_state_dict_in_tf2_model(
        model,
        state_dict,
        tf_inputs=False,  # already built
        allow_missing_keys=True,  # so that missing keys are listed (and judged) here, not raised one by one
        output_loading_info=True,
        skip_logger_warnings=True,
    )
    if info["mismatched_keys"]:
        raise WeightLoadingError("shape mismatches in %s: %s" % (files.weights, _some(info["mismatched_keys"])))
    return list(info["missing_keys"]), list(info["unexpected_keys"])


def _some(keys: list, limit: int = 5) -> str:
    shown = ", ".join(str(k) for k in keys[:limit])
    return shown + (", ..." if len(keys) > limit else "") if keys else "none"


class TextEncoder(tf.keras.layers.Layer):
    """Strings [B] -> vectors [B, dim]: in-graph tokenizer, BERT, pooling, projection, L2 norm."""

    def __init__(
        self,
        files: ModelFiles,
        *,
        max_length: int = 32,
        pooling: Pooling = "mean",
        normalize: bool = True,
        projection_dim: int = 0,
        training_mode: TrainingMode = "frozen",
        trainable_layers: int = 2,
        pad_to: PadTo = "max_length",
        bert: Optional[Any] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if pooling not in ("mean", "cls"):
            raise ValueError("pooling must be 'mean' or 'cls', got %r" % (pooling,))
        if projection_dim < 0:
            raise ValueError("projection_dim must be >= 0 (0: no projection), got %r" % (projection_dim,))
        self.files = files
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.projection_dim = int(projection_dim)
        self.tokenizer = BertTokenizerLayer.from_model_files(files, max_length=max_length, pad_to=pad_to)
        # The pooler is not used (pooling reads the last hidden states), so it is not built.
        # A shared `bert` takes this encoder's trainable flags (the last encoder built sets them).
        self.bert = bert if bert is not None else load_bert(files, with_pooler=False)
        if self.tokenizer.vocab_size != self.bert.config.vocab_size:
            raise ModelFilesError(
                "%s has %d tokens but %s declares vocab_size %d"
                % (files.vocab, self.tokenizer.vocab_size, files.config, self.bert.config.vocab_size)
            )
        self.projection = None
        if self.projection_dim > 0:
            self.projection = tf.keras.layers.Dense(self.projection_dim, name="projection")
            # Built now so that its variables exist before the first call (optimizers, checkpoints);
            # the scope gives them the names a first call would ("projection/kernel:0").
            with tf.name_scope(self.projection.name):
                self.projection.build(tf.TensorShape([None, self.bert.config.hidden_size]))
        self.trainable_layers = int(trainable_layers)
        self.set_training_mode(training_mode)

    @classmethod
    def from_config_section(cls, text_cfg: TextConfig, **kwargs: Any) -> "TextEncoder":
        """Build from the ``text:`` section of a tfrec config; the other arguments (training mode, projection) pass through."""
        return cls(
            resolve_model_files(text_cfg.model_dir),
            max_length=text_cfg.max_length,
            pooling=text_cfg.pooling,
            normalize=text_cfg.normalize,
            **kwargs,
        )

    @property
    def output_dim(self) -> int:
        """Size of the vectors this encoder returns."""
        return self.projection_dim or self.bert.config.hidden_size

    @property
    def bert_trainable(self) -> bool:
        """Whether any BERT weight is trained (then dropout is active in training calls)."""
        return self.training_mode != "frozen"

    def set_training_mode(self, mode: TrainingMode, trainable_layers: Optional[int] = None) -> None:
        """Set which weights train: "frozen" (projection only), "top_layers" (top N + projection), "full"."""
        if mode not in ("frozen", "top_layers", "full"):
            raise ValueError("training mode must be 'frozen', 'top_layers' or 'full', got %r" % (mode,))
        trainable_layers = self.trainable_layers if trainable_layers is None else int(trainable_layers)
        main = self.bert.bert
        if mode == "top_layers" and not 1 <= trainable_layers <= len(main.encoder.layer):
            raise ValueError(
                "trainable_layers must be between 1 and %d (the BERT's layers), got %d"
                % (len(main.encoder.layer), trainable_layers)
            )
        self.training_mode, self.trainable_layers = mode, trainable_layers
        # Keras sets `trainable` on every nested layer (and so does `trainable = ...` on an enclosing
        # model, which overrides this mode until it is set again): open everything, then close parts.
        self.bert.trainable = mode != "frozen"
        if mode == "top_layers":
            main.embeddings.trainable = False
            first_trained = len(main.encoder.layer) - trainable_layers
            for index, layer in enumerate(main.encoder.layer):
                layer.trainable = index >= first_trained

    def call(self, texts: Any, training: Optional[bool] = None) -> tf.Tensor:
        """Encode a [B] (or [B, 1]) string tensor into float32 vectors [B, output_dim]."""
        return self.encode_tokens(self.tokenizer(texts), training=training)

    def encode_tokens(self, tokens: dict, training: Optional[bool] = None) -> tf.Tensor:
        """Encode already-tokenized inputs (input_ids, attention_mask[, token_type_ids]) into [B, dim]."""
        missing = [name for name in TOKEN_INPUTS[:2] if name not in tokens]
        if missing:
            raise ValueError("encode_tokens needs %s; got keys %s" % (", ".join(missing), sorted(tokens)))
        input_ids = tf.cast(tokens["input_ids"], tf.int32)
        mask = tf.cast(tokens["attention_mask"], tf.int32)
        token_type_ids = tokens.get("token_type_ids")
        token_type_ids = tf.zeros_like(input_ids) if token_type_ids is None else tf.cast(token_type_ids, tf.int32)
        # A frozen BERT runs in inference mode even while the layers above it train: no dropout noise
        # on features that are meant to be fixed (and cacheable).
        bert_training = training if self.bert_trainable else False
        hidden = self.bert(
            input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids, training=bert_training
        ).last_hidden_state
        vectors = self._pool(tf.cast(hidden, tf.float32), mask)
        if self.projection is not None:
            vectors = self.projection(vectors)
        vectors = tf.cast(vectors, tf.float32)  # a mixed-precision projection computes in float16
        if self.normalize:
            vectors = tf.math.l2_normalize(vectors, axis=-1)
        return vectors

    def _pool(self, hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = tf.cast(mask, hidden.dtype)[:, :, None]
        total = tf.reduce_sum(hidden * weights, axis=1)
        # sentence-transformers clamps the count at 1e-9; only an all-padding row reaches it.
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1e-9)

    def get_config(self) -> dict:
        """Constructor arguments (the model folder by path), for Keras serialization."""
        config = super().get_config()
        config.update(
            model_dir=str(self.files.dir),
            max_length=self.tokenizer.max_length,
            pooling=self.pooling,
            normalize=self.normalize,
            projection_dim=self.projection_dim,
            training_mode=self.training_mode,
            trainable_layers=self.trainable_layers,
            pad_to=self.tokenizer.pad_to,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> "TextEncoder":
        """Rebuild from :meth:`get_config` output (reloads the pretrained weights from model_dir)."""
        config = dict(config)
        files = resolve_model_files(config.pop("model_dir"))
        return cls(files, **config)
