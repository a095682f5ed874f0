"""The ``tfrec tune`` trial for search (``tune.target: ranker``): train the ranker head, score held-out train queries.

What a trial sees, and why:

* **Training judgments only; the valid split is never read.** :func:`trial_objective` keeps the
  catalog and the train judgments and drops valid; :class:`RankerTrialObjective` has no way to be
  given it. The train queries are split (seeded by ``run.seed``, ``tune.holdout_fraction``) into
  a fit part and a holdout part; trials are scored on the holdout part, so the valid report of
  ``tfrec train`` with the tuned config stays an estimate untouched by the search.
* **As many lists as the real ranker.** ``tfrec train`` trains its ranker on the
  ``ranking.holdout_fraction`` share of the train queries (the rest trains the two towers). A
  trial's head trains on the same number of queries, taken from the fit part; the other fit
  queries play the towers' queries (their products form the id vocabulary when
  ``ranking.product_id``). Epochs, learning rate and dropout then transfer to the real run.
* **Zero-shot vectors instead of fine-tuned towers.** Fine-tuning the two towers takes ~25 min
  per trial on CPU, so a trial uses the frozen MiniLM vectors (cached by
  :func:`tfrec.text.catalog.catalog_text_features`) for both the head's "dense" and "zero"
  inputs, and retrieves each list's unjudged candidates (and the holdout's end-to-end candidates)
  with z(MiniLM) + ``retrieval.lexical_weight`` (default 1) * z(BM25). The head's
  hyperparameters are thus tuned on weaker dense features than the trained run gives it.
* **One loss per trial.** ``ranking.loss`` is trained (search it with a choice);
  ``ranking.candidate_losses``, which ``tfrec train`` picks from on valid, is not used.
* **The run's training path.** A trial's head trains through
  :func:`tfrec.search.ranker_training.train_ranker_head`, as ``tfrec train``'s heads do.
* **Every searchable key is honoured.** :data:`TUNABLE_KEYS` lists the keys a trial reads;
  ``tfrec tune`` refuses any other key in ``tune.space`` (:data:`UNTUNABLE` says why for the
  ranker's own keys that a trial cannot honour, such as ``ranking.dense_weight``).

Metrics on the holdout queries (every one maximized), with the conventions of
:mod:`tfrec.evaluation.search`: ``ndcg@10`` / ``ndcg@5`` re-rank NDCG of the judged products
(ties share their mean discount), ``mrr`` the reciprocal rank of the first judged product with
relevance >= ``evaluation.positive_relevance`` in that order, ``e2e_ndcg@10`` the NDCG@10 of the
top ``retrieval.top_k`` candidates re-ordered by the head.

Everything that does not depend on a trial's values (query split, vectors, lexical index,
candidates, features of the lists) is computed once per process and reused by later trials.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from tfrec import compat
from tfrec.baselines.search import MiniLMBaseline
from tfrec.config.loader import LoadedConfig
from tfrec.config.quoting import quote_value
from tfrec.config.schema import Config, TextConfig
from tfrec.data.datasets import load_data
from tfrec.data.slices import slice_search_data
from tfrec.data.tables import Catalog, Judgments, SearchData
from tfrec.evaluation import search as ev
from tfrec.lexical import LexicalIndex, LexicalScorer
from tfrec.search.hybrid import CatalogScorer, HybridWeights
from tfrec.search.models import catalog_features
from tfrec.search.ranker_data import CandidateLists, candidate_lists, head_inputs, judged_lists, training_lists
from tfrec.search.ranker_training import train_ranker_head
from tfrec.search.stages.queries import rank_candidates, split_queries
from tfrec.training.trainer import Trainer
from tfrec.text.fusion import CatalogFeatureLookup
from tfrec.training.tuning import check_space, run_tuning

tf = compat.tensorflow()

RANKER_METRICS = ("ndcg@10", "ndcg@5", "mrr", "e2e_ndcg@10")
# The BM25 weight of a trial's candidate retrieval when retrieval.lexical_weight is null
# (tfrec train would choose it on valid, which a trial must not read): z(MiniLM) + z(BM25).
DEFAULT_LEXICAL_WEIGHT = 1.0
# Config keys a ranker trial reads: searching one of them changes what a trial computes.
TUNABLE_KEYS = (
    "ranking.list_size", "ranking.negatives", "ranking.holdout_fraction", "ranking.loss", "ranking.epochs",
    "ranking.batch_size", "ranking.learning_rate", "ranking.hidden_units", "ranking.interaction_dim",
    "ranking.cross_layers", "ranking.dropout", "ranking.product_id", "ranking.id_dropout",
    "retrieval.top_k", "retrieval.lexical_weight", "retrieval.query_max_terms", "run.seed", "evaluation.positive_relevance",
)
# Ranker keys (and their sub-keys) a trial cannot honour, and why; tfrec tune refuses to search them.
UNTUNABLE = {
    "ranking.dense_weight": "a trial has no fine-tuned two towers (zero-shot MiniLM vectors stand in for them), so the "
                            "weight of their score in the final ranking cannot be tuned here; tfrec train chooses it on the "
                            "tuning half of valid when it is null",
    "ranking.candidate_losses": "a trial trains ranking.loss only; search ranking.loss with a choice instead",
    "ranking.cross_encoder": "a trial trains the feature ranker, not the cross-encoder",
}
_CACHED_SETUPS = 3  # list setups kept (a search over list_size / negatives / top_k makes several)

log = logging.getLogger(__name__)


@dataclass
class RankerLists:
    """The arrays of one list setup: training lists and inputs, holdout judged and candidate lists."""

    fit_lists: CandidateLists
    fit_inputs: dict
    vocabulary: Optional[list[str]]
    holdout: ev.SearchEvalSet
    judged: CandidateLists
    judged_inputs: dict
    candidates: np.ndarray  # [Q_holdout, K] hybrid zero-shot top-k
    candidate_inputs: dict


def holdout_metrics(es: ev.SearchEvalSet, judged_scores: np.ndarray, ranked_top: np.ndarray) -> dict[str, float]:
    """Re-rank NDCG@10/@5 and MRR of judged products by ``judged_scores``, end-to-end NDCG@10 of ``ranked_top``.

    ``judged_scores`` align with ``es.products``; ``ranked_top`` [Q, K] are catalog rows best first
    (-1 empty); fewer than 10 columns count as empty slots. NDCG gives tied scores their mean
    discount; MRR keeps tied products in catalog-row order.
    """
    judged_scores = np.asarray(judged_scores, np.float64)
    query = es.query_of_judgment()
    order = np.lexsort((-judged_scores, query))
    rank = np.arange(len(order)) - es.offsets[query[order]]
    width = max(int(np.diff(es.offsets).max(initial=0)), 1)
    reranked = np.full((es.n_queries, width), -1, np.int64)
    reranked[query[order], rank] = es.products[order]
    top = np.asarray(ranked_top)
    if top.shape[1] < 10:
        top = np.concatenate([top, np.full((len(top), 10 - top.shape[1]), -1, top.dtype)], axis=1)
    return {
        "ndcg@10": ev.rerank_ndcg(es, judged_scores, 10)[0],
        "ndcg@5": ev.rerank_ndcg(es, judged_scores, 5)[0],
        "mrr": ev.mrr(es, reranked),
        "e2e_ndcg@10": ev.end_to_end_ndcg(es, top, 10)[0],
    }


def predict_scores(head: Any, inputs: dict, batch_size: int = 256) -> np.ndarray:
    """Scores [n, L] of a head over list inputs, in eager batches.

    Not ``Model.predict``: each trial's new head would trace a new predict function, and after a
    few trials TensorFlow warns about retracing on every one.
    """
    n = len(inputs["lexical"])
    parts = [head({k: v[s : s + batch_size] for k, v in inputs.items()}, training=False).numpy() for s in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, inputs["lexical"].shape[1]), np.float32)


class RankerTrialObjective:
    """``objective(config, trial_epochs) -> metrics``: trains the config's ranker head, scores the holdout queries."""

    metrics = RANKER_METRICS
    epochs_key = "ranking.epochs"

    def __init__(
        self, catalog: Catalog, train: Judgments, text_cfg: TextConfig, *, holdout_fraction: float, seed: int, progress: bool = True
    ) -> None:
        self.catalog, self.train, self.text_cfg, self.progress = catalog, train, text_cfg, progress
        self.titles = catalog.text().astype(str)
        self.ids = catalog.ids.astype(str)
        self.fit, self.holdout = split_queries(train, holdout_fraction, seed)
        self.fit_queries = np.unique(self.fit.queries.astype(str))
        self.holdout_queries = np.unique(self.holdout.queries.astype(str))
        if not len(self.fit_queries) or not len(self.holdout_queries):
            raise ValueError(
                "tune.holdout_fraction=%g of %d training queries leaves %d to fit and %d to score trials; both must be >= 1"
                % (holdout_fraction, len(self.fit_queries) + len(self.holdout_queries), len(self.fit_queries), len(self.holdout_queries))
            )
        self.n_train_queries = len(self.fit_queries) + len(self.holdout_queries)
        # The ranker's share of the fit queries is a prefix of one fixed order, so trials that differ
        # only in ranking.holdout_fraction share their queries.
        self._fit_order = np.random.default_rng(seed + 2).permutation(self.fit_queries)
        self._index: Optional[LexicalIndex] = None
        self._lexical: dict[int, tuple[CatalogScorer, Any]] = {}  # query_max_terms -> (scorer, pair features)
        self._encoder: Any = None
        self._catalog_zero: Optional[np.ndarray] = None
        self._query_zero: dict[str, np.ndarray] = {}
        self._candidates: dict[tuple, dict[str, np.ndarray]] = {}
        self._setups: OrderedDict[tuple, RankerLists] = OrderedDict()

    # -- what the search may vary ---------------------------------------------------------------

    @staticmethod
    def untunable_reason(key: str) -> Optional[str]:
        """Why a search over ``key`` would be refused (None: a trial honours it)."""
        if key in TUNABLE_KEYS:
            return None
        reason = next((why for k, why in UNTUNABLE.items() if key == k or key.startswith(k + ".")), None)
        if reason:
            what = "%s cannot be tuned by a ranker trial: %s" % (key, reason)
        else:
            what = "a ranker trial does not read %s (searching it would only spend trials)" % key
        return "%s. Tunable keys: %s" % (what, ", ".join(TUNABLE_KEYS))

    def ranker_queries(self, ranking_holdout_fraction: float) -> np.ndarray:
        """The fit queries whose lists train the head: as many as tfrec train's ranker gets (at least 1)."""
        n = int(round(self.n_train_queries * ranking_holdout_fraction))
        return self._fit_order[: min(len(self._fit_order), max(1, n))]

    # -- trial-independent parts, computed once ---------------------------------------------------

    def _ensure_vectors(self) -> None:
        if self._encoder is not None:
            return
        if self.progress:
            log.info("trial features: zero-shot MiniLM vectors of %d products (cached), lexical index ..." % len(self.titles))
        minilm = MiniLMBaseline(list(self.titles), self.text_cfg, progress=self.progress)
        self._encoder, self._catalog_zero = minilm, minilm.catalog_vectors
        # Vocabulary from the training queries, like tfrec train's index (valid queries stay unseen).
        self._index = LexicalIndex.build(list(self.titles), list(np.unique(self.train.queries.astype(str))))

    def _lexical_for(self, max_terms: int) -> tuple[CatalogScorer, Any]:
        """(hybrid scorer, pair-features function) reading the first ``max_terms`` words of a query (retrieval.query_max_terms)."""
        if max_terms not in self._lexical:
            self._ensure_vectors()
            lexical = LexicalScorer(self._index, max_query_terms=max_terms)
            self._lexical[max_terms] = (CatalogScorer(self._catalog_zero, self._catalog_zero, lexical),
                                        tf.function(lexical.pair_features, reduce_retracing=True))
        return self._lexical[max_terms]

    def _vectors(self, queries: np.ndarray) -> np.ndarray:
        self._ensure_vectors()
        missing = [q for q in dict.fromkeys(queries.tolist()) if q not in self._query_zero]
        if missing:
            for q, v in zip(missing, self._encoder.encode(missing)):
                self._query_zero[q] = v
        return np.stack([self._query_zero[q] for q in queries.tolist()]).astype(np.float32)

    def _top(self, queries: np.ndarray, lexical_weight: float, top_k: int, max_terms: int) -> np.ndarray:
        cache = self._candidates.setdefault((lexical_weight, top_k, max_terms), {})
        missing = np.array([q for q in queries.tolist() if q not in cache], dtype=object).astype(str)
        if len(missing):
            q_zero = self._vectors(missing)
            scorer, _ = self._lexical_for(max_terms)
            rows, _ = scorer.top_k(q_zero, q_zero, missing, HybridWeights(1.0, lexical_weight, 0.0), top_k)
            cache.update(zip(missing.tolist(), rows))
        return np.stack([cache[q] for q in queries.tolist()])

    def _inputs(self, lists: CandidateLists, queries: np.ndarray, max_terms: int, columns: Optional[CatalogFeatureLookup]) -> dict:
        q_zero = self._vectors(queries)
        catalog = self._catalog_zero
        _, pair_features = self._lexical_for(max_terms)
        return head_inputs(lists, queries, q_zero, q_zero, catalog, catalog, self.ids, self.titles, pair_features,
                           catalog_columns=columns)

    def lists_for(self, cfg: Config) -> RankerLists:
        """The lists and head inputs of a config's list setup (cached: trials usually share one)."""
        rc, top_k, max_terms = cfg.ranking, min(cfg.retrieval.top_k, len(self.titles)), cfg.retrieval.query_max_terms
        lexical_weight = cfg.retrieval.lexical_weight if cfg.retrieval.lexical_weight is not None else DEFAULT_LEXICAL_WEIGHT
        key = (cfg.run.seed, rc.holdout_fraction, rc.list_size, rc.negatives, rc.product_id, top_k, lexical_weight,
               cfg.evaluation.positive_relevance, max_terms, tuple(cfg.data.catalog.numeric_columns),
               tuple(cfg.data.catalog.categorical_columns))
        if key in self._setups:
            self._setups.move_to_end(key)
            return self._setups[key]
        ranker_queries = self.ranker_queries(rc.holdout_fraction)
        in_ranker = np.isin(self.fit.queries.astype(str), ranker_queries)
        ranker = Judgments(self.fit.queries[in_ranker], self.fit.products[in_ranker], self.fit.labels[in_ranker])
        ranker_es = ev.SearchEvalSet.from_judgments(ranker, cfg.evaluation.positive_relevance)
        holdout_es = ev.SearchEvalSet.from_judgments(self.holdout, cfg.evaluation.positive_relevance)
        r_queries, h_queries = ranker_es.queries.astype(str), holdout_es.queries.astype(str)
        fit_lists = training_lists(
            ranker_es, self._top(r_queries, lexical_weight, top_k, max_terms), list_size=rc.list_size, negatives=rc.negatives,
            seed=cfg.run.seed,
        )
        judged = judged_lists(holdout_es)
        candidates = self._top(h_queries, lexical_weight, top_k, max_terms)
        # Products of the other fit queries (the towers' share in tfrec train), never the ranker's own.
        vocabulary = sorted(set(self.ids[np.unique(self.fit.products[~in_ranker])])) if rc.product_id else None
        columns = catalog_features(cfg, self.catalog)
        setup = RankerLists(
            fit_lists=fit_lists,
            fit_inputs=self._inputs(fit_lists, r_queries, max_terms, columns),
            vocabulary=vocabulary,
            holdout=holdout_es,
            judged=judged,
            judged_inputs=self._inputs(judged, h_queries, max_terms, columns),
            candidates=candidates,
            candidate_inputs=self._inputs(candidate_lists(candidates), h_queries, max_terms, columns),
        )
        if self.progress:
            log.info("trial lists: %d training lists (width %d), %d holdout queries, top %d candidates"
                % (len(fit_lists.rows), fit_lists.rows.shape[1], holdout_es.n_queries, top_k))
        self._setups[key] = setup
        while len(self._setups) > _CACHED_SETUPS:
            self._setups.popitem(last=False)
        return setup

    # -- one trial ----------------------------------------------------------------------------

    def train_head(self, cfg: Config, setup: RankerLists, epochs: Optional[int] = None) -> Any:
        """A ranker head of ``cfg`` trained on the setup's lists for ``epochs`` (None: ``ranking.epochs``), as tfrec train trains one."""
        rc = cfg.ranking
        # A bare trainer: a trial is cheap to rerun, so no checkpoints, TensorBoard or progress bar.
        trainer = Trainer(seed=cfg.run.seed, progress=False)
        head, _ = train_ranker_head(cfg, trainer, setup.fit_inputs, setup.fit_lists, setup.vocabulary, loss=rc.loss,
                                    learning_rate=rc.learning_rate, epochs=rc.epochs if epochs is None else epochs,
                                    catalog=self.catalog)
        return head

    def score(self, head: Any, setup: RankerLists) -> dict[str, float]:
        """The holdout metrics of a trained head."""
        judged_scores = predict_scores(head, setup.judged_inputs)[setup.judged.mask]
        e2e_scores = predict_scores(head, setup.candidate_inputs)
        return holdout_metrics(setup.holdout, judged_scores, rank_candidates(setup.candidates, e2e_scores))

    def __call__(self, cfg: Config, trial_epochs: Optional[int] = None) -> dict[str, float]:
        """Train ``cfg``'s ranker head (``trial_epochs`` or ``ranking.epochs``) and return its holdout metrics."""
        setup = self.lists_for(cfg)
        return self.score(self.train_head(cfg, setup, trial_epochs), setup)


def trial_objective(loaded: LoadedConfig) -> RankerTrialObjective:
    """The ranker trial objective over ``loaded``'s (sliced) data, valid dropped."""
    cfg = loaded.config
    if cfg.data.prepared:
        raise loaded.error("data.prepared", "tfrec tune tries rankers on judgments in memory; point the config at the "
                                            "judgment files instead (unset data.prepared)")
    data = load_data(loaded)
    if not isinstance(data, SearchData):
        raise loaded.error("data.dataset", "tfrec tune searches the search ranker; %s is a recommendation dataset" % quote_value(cfg.data.dataset))
    dc = cfg.data
    data = slice_search_data(data, max_train_queries=dc.max_train_queries, max_valid_queries=dc.max_valid_queries,
                             max_products=dc.max_products, seed=cfg.run.seed)  # the slice tfrec train uses
    return RankerTrialObjective(
        data.catalog, data.train, cfg.text, holdout_fraction=cfg.tune.holdout_fraction, seed=cfg.run.seed, progress=cfg.train.progress
    )


def tune_search(loaded: LoadedConfig, out_dir: Union[Path, Callable[[], Path]]) -> dict:
    """Run (or resume) ``loaded``'s search over the search ranker (``tfrec tune``); see :func:`tfrec.training.tuning.run_tuning`.

    ``out_dir`` may be a function that creates the folder: it is called only once the data has
    loaded and passed its checks, so a config the data makes impossible leaves no folder behind.
    """
    check_space(loaded)  # cheap checks first: a bad space fails before any data is read
    objective = trial_objective(loaded)
    return run_tuning(loaded, out_dir() if callable(out_dir) else out_dir, objective=objective)
