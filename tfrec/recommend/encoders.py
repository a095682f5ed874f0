"""History encoders: a user's ordered item vectors [B, H, d] -> one user vector [B, d].

Histories are padded in front (``Sequences.padded_histories``): the newest item sits in the last
column and ``mask`` [B, H] is False on padding. Every encoder ignores padded positions entirely,
so padding a history further never changes its user vector, and an empty history gives a finite
vector (zeros for the mean; the encoders' learned "no history" state otherwise).

* ``mean``: masked mean of the item vectors (the zero-shot baseline's user, made trainable by the
  item fusion under it).
* ``gru``: a GRU over the sequence, oldest to newest; its final state.
* ``transformer``: SASRec-style causal self-attention (pre-layer-norm blocks, learned positional
  embeddings counted from the newest item, so left padding does not shift positions); the output
  at the newest position. Position t attends to positions <= t only, so the sequence output at
  each position could train next-item prediction at every step (SASRec) without leaking the future.
"""
from __future__ import annotations

from typing import Any, Optional

from tfrec import compat

tf = compat.tensorflow()

ENCODERS = ("mean", "gru", "transformer")


class MaskedMeanEncoder(tf.keras.layers.Layer):
    """Mean of the non-padded item vectors; zeros for an empty history."""

    def call(self, items: Any, mask: Any, training: Optional[bool] = None) -> Any:
        """[B, H, d] items, [B, H] bool mask -> [B, d]."""
        weights = tf.cast(mask, items.dtype)[..., None]
        return tf.reduce_sum(items * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


class GRUEncoder(tf.keras.layers.Layer):
    """A GRU over the history (padding skipped through the Keras mask); its last state."""

    def __init__(self, dim: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim, self.dropout = int(dim), float(dropout)
        self.gru = tf.keras.layers.GRU(self.dim, name="gru")
        self.drop = tf.keras.layers.Dropout(self.dropout)

    def call(self, items: Any, mask: Any, training: Optional[bool] = None) -> Any:
        """[B, H, d] items, [B, H] bool mask -> [B, dim]."""
        return self.gru(self.drop(items, training=training), mask=mask, training=training)

    def get_config(self) -> dict:
        """Constructor arguments."""
        return {**super().get_config(), "dim": self.dim, "dropout": self.dropout}


def causal_attention_mask(mask: Any) -> Any:
    """[B, H] valid-item mask -> [B, H, H] bool: query t may attend key s iff s <= t and s is an item (or s == t)."""
    length = tf.shape(mask)[1]
    causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
    allowed = causal[None, :, :] & tf.cast(mask, tf.bool)[:, None, :]
    # Each position may always see itself, so a fully padded row still has a finite softmax.
    return allowed | tf.eye(length, dtype=tf.bool)[None, :, :]


class CausalTransformerEncoder(tf.keras.layers.Layer):
    """SASRec-style causal Transformer over the history; the newest position's output."""

    def __init__(self, dim: int, max_length: int, layers: int = 2, heads: int = 2, dropout: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError("transformer encoder: dim (%d) must be a multiple of heads (%d)" % (dim, heads))
        self.dim, self.max_length, self.n_layers, self.heads, self.dropout = int(dim), int(max_length), int(layers), int(heads), float(dropout)
        self.positions = tf.keras.layers.Embedding(self.max_length, self.dim, name="positions")
        self.input_drop = tf.keras.layers.Dropout(self.dropout)
        self.blocks = []
        for i in range(self.n_layers):
            self.blocks.append({
                "attention_norm": tf.keras.layers.LayerNormalization(epsilon=1e-6, name="block%d_attention_norm" % i),
                "attention": tf.keras.layers.MultiHeadAttention(self.heads, self.dim // self.heads, dropout=self.dropout, name="block%d_attention" % i),
                "ffn_norm": tf.keras.layers.LayerNormalization(epsilon=1e-6, name="block%d_ffn_norm" % i),
                "ffn_in": tf.keras.layers.Dense(self.dim, activation="gelu", name="block%d_ffn_in" % i),
                "ffn_out": tf.keras.layers.Dense(self.dim, name="block%d_ffn_out" % i),
                "ffn_drop": tf.keras.layers.Dropout(self.dropout),
            })
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")

    def sequence(self, items: Any, mask: Any, training: Optional[bool] = None) -> Any:
        """[B, H, d] items, [B, H] mask -> [B, H, dim]: position t's state from items <= t only."""
        length = tf.shape(items)[1]
        # Position 0 is the newest item (the last column); older items beyond max_length share the last row.
        distance = tf.minimum(tf.range(length - 1, -1, -1), self.max_length - 1)
        valid = tf.cast(mask, items.dtype)[..., None]
        x = self.input_drop(items + self.positions(distance)[None, :, :], training=training) * valid
        attention_mask = causal_attention_mask(mask)
        for block in self.blocks:
            h = block["attention_norm"](x)
            x = x + block["attention"](h, h, attention_mask=attention_mask, training=training)
            h = block["ffn_norm"](x)
            x = x + block["ffn_drop"](block["ffn_out"](block["ffn_in"](h)), training=training)
            x = x * valid
        return self.final_norm(x)

    def call(self, items: Any, mask: Any, training: Optional[bool] = None) -> Any:
        """[B, H, d] items, [B, H] mask -> [B, dim] (the newest position's state)."""
        return self.sequence(items, mask, training=training)[:, -1, :]

    def get_config(self) -> dict:
        """Constructor arguments."""
        return {**super().get_config(), "dim": self.dim, "max_length": self.max_length, "layers": self.n_layers,
                "heads": self.heads, "dropout": self.dropout}


def history_encoder(kind: str, *, dim: int, max_length: int, layers: int = 2, heads: int = 2, dropout: float = 0.2) -> Any:
    """The configured encoder layer (``recommendation.encoder``)."""
    if kind == "mean":
        return MaskedMeanEncoder(name="history_mean")
    if kind == "gru":
        return GRUEncoder(dim, dropout=dropout, name="history_gru")
    if kind == "transformer":
        return CausalTransformerEncoder(dim, max_length, layers=layers, heads=heads, dropout=dropout, name="history_transformer")
    raise ValueError("unknown history encoder %r; choose one of %s" % (kind, ", ".join(ENCODERS)))
