"""The search two-tower model: BERT(query) against BERT(title) fused with a product-id embedding.

Both towers share one BERT (a siamese bi-encoder, as sentence-transformers trains MiniLM), so
the pretrained query/title geometry is the starting point and the export holds one copy of the
weights. The product tower adds the id (and any catalog features) through a residual
``FeatureFusion`` that starts at zero: at step 0 the model *is* the zero-shot MiniLM.

Cold start: the id vocabulary holds training products only and every other id gets an exactly
zero id embedding, so an unseen product is scored from its title alone; ``id_dropout`` trains
that path on seen products too (../shared/datasets/README.md, the leakage trap).

Catalog features: given a ``CatalogFeatureLookup`` (the catalog's numeric and categorical
columns), the product tower looks them up by product id in-graph and fuses them too; training
pairs, catalog encoding and the exports still pass only (product_id, title). Without one the
model has exactly the variables (and numbers) it had before catalog features existed.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from tfrec import compat
from tfrec.text.encoder import TextEncoder, load_bert
from tfrec.text.fusion import CatalogFeatureLookup, FeatureFusion
from tfrec.text.model_files import ModelFiles

tf = compat.tensorflow()

import tensorflow_recommenders as tfrs  # noqa: E402  (after compat: Keras 2 mode)


class SearchRetrievalModel(tfrs.models.Model):
    """Query strings and (product_id, title) pairs -> L2-normalised vectors; in-batch softmax loss."""

    def __init__(
        self,
        files: ModelFiles,
        product_vocabulary: Sequence[str],
        *,
        query_max_length: int = 16,
        title_max_length: int = 32,
        training_mode: str = "full",
        trainable_layers: int = 2,
        temperature: float = 0.05,
        remove_accidental_hits: bool = True,
        id_embedding_dim: int = 64,
        id_dropout: float = 0.5,
        fusion_hidden_units: Sequence[int] = (256,),
        catalog_features: Optional[CatalogFeatureLookup] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError("temperature must be > 0, got %r" % (temperature,))
        bert = load_bert(files, with_pooler=False)
        common = dict(pad_to="batch", training_mode=training_mode, trainable_layers=trainable_layers, bert=bert)
        self.query_encoder = TextEncoder(files, max_length=query_max_length, name="query_encoder", **common)
        self.title_encoder = TextEncoder(files, max_length=title_max_length, name="title_encoder", **common)
        self.catalog_features = catalog_features
        self.product_fusion = FeatureFusion(
            self.title_encoder.output_dim,
            id_vocabulary=list(product_vocabulary) if len(product_vocabulary) else None,
            id_embedding_dim=id_embedding_dim,
            id_dropout=id_dropout,
            hidden_units=tuple(fusion_hidden_units),
            residual=True,
            normalize_output=True,
            seed=seed,
            name="product_fusion",
            **(catalog_features.fusion_arguments() if catalog_features is not None else {}),
        )
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=remove_accidental_hits)
        self.head_optimizer: Any = None

    @property
    def dim(self) -> int:
        """Size of the query and product vectors."""
        return self.title_encoder.output_dim

    def query_vectors(self, queries: Any, training: bool = False) -> tf.Tensor:
        """Query strings [B] -> [B, dim]."""
        return self.query_encoder(queries, training=training)

    def product_vectors(self, product_ids: Any, titles: Any, training: bool = False) -> tf.Tensor:
        """Products (id and title strings [B]) -> [B, dim]; ids outside the vocabulary take the text path."""
        return self.fuse(self.title_encoder(titles, training=training), product_ids, training=training)

    def fuse(self, title_vectors: tf.Tensor, product_ids: Any, training: bool = False) -> tf.Tensor:
        """Fuse already-encoded titles [B, dim] with the product ids [B] (and the catalog features of those ids)."""
        inputs = {"text_embedding": title_vectors}
        if self.product_fusion.id_vocabulary is not None:
            inputs["id"] = product_ids
        if self.catalog_features is not None:
            inputs.update(self.catalog_features(product_ids))
        return self.product_fusion(inputs, training=training)

    def call(self, features: dict, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """(query vectors, product vectors) of a batch of pairs."""
        return (
            self.query_vectors(features["query"], training=training),
            self.product_vectors(features["product_id"], features["title"], training=training),
        )

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        """In-batch softmax over the batch's products (plus mined negatives when the batch has them)."""
        queries, products = self(features, training=training)
        candidate_ids = features["product_id"]
        probability = features.get("sampling_probability")
        if "negative_title" in features:
            negatives = self.product_vectors(features["negative_id"], features["negative_title"], training=training)
            products = tf.concat([products, negatives], axis=0)
            candidate_ids = tf.concat([candidate_ids, features["negative_id"]], axis=0)
            if probability is not None:
                probability = tf.concat([probability, features["negative_sampling_probability"]], axis=0)
        score_mask = None
        if "query_group" in features:
            # Another positive of the same query elsewhere in the batch is not a negative for it.
            group = features["query_group"]
            n_candidates = tf.shape(products)[0]
            n_queries = tf.shape(queries)[0]
            candidate_group = tf.concat([group, tf.fill([n_candidates - n_queries], tf.constant(-1, group.dtype))], 0)
            same = tf.equal(group[:, None], candidate_group[None, :])
            score_mask = tf.logical_or(tf.logical_not(same), tf.eye(n_queries, n_candidates, dtype=tf.bool))
        return self.task(
            queries,
            products,
            sample_weight=features.get("weight"),
            candidate_sampling_probability=probability,
            candidate_ids=candidate_ids if self.task._remove_accidental_hits else None,
            compute_metrics=False,
            compute_batch_metrics=False,
            score_mask=score_mask,
        )

    def train_step(self, features: dict) -> dict:
        """One step; BERT weights and the fusion head may use different optimizers (learning rates)."""
        with tf.GradientTape() as tape:
            loss = self.compute_loss(features, training=True)
            total = loss + tf.add_n(self.losses) if self.losses else loss
        variables = self.trainable_variables
        gradients = tape.gradient(total, variables)
        if self.head_optimizer is None:
            self.optimizer.apply_gradients(zip(gradients, variables))
        else:
            head_ids = {id(v) for v in self.product_fusion.trainable_variables}
            bert = [(g, v) for g, v in zip(gradients, variables) if id(v) not in head_ids and g is not None]
            head = [(g, v) for g, v in zip(gradients, variables) if id(v) in head_ids and g is not None]
            if bert:
                self.optimizer.apply_gradients(bert)
            if head:
                self.head_optimizer.apply_gradients(head)
        return {"loss": loss}
