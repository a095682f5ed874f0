"""`tfrec train` for sequential recommendation datasets (Amazon Scientific): train, evaluate, report, save.

Stages: frozen BERT vectors of every item's text (embedding cache) -> the history model trained
with tfrec's Trainer, early-stopped on each user's newest training example and re-trained on all
training examples (:mod:`tfrec.recommend.train`) -> full-ranking evaluation on valid against the
popularity and zero-shot text baselines, split by whether the target was seen in training ->
similar items from the item tower -> metrics.json, report.md/.html and the weights ``tfrec
export`` rebuilds the model from.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tfrec import compat
from tfrec.config.loader import LoadedConfig
from tfrec.data.tables import RecommendationData, Sequences
from tfrec.recommend import train as rt

tf = compat.tensorflow()

MODEL_DIR = "recommender"
SETTINGS_FILE = "recommendation.json"
VOCABULARY_FILE = "item_vocabulary.txt"
SELECTION_METRIC = "ndcg@10"


def log(message: str) -> None:
    """Progress line on stdout (the CLI's output)."""
    print("[recommend] %s" % message, flush=True)


def _trainer(loaded: LoadedConfig, run_dir: Path, name: str, strategy: Any, *, early_stopping: bool) -> Any:
    from tfrec.training.trainer import run_trainer

    # float32 always: the full-softmax logits over the catalog and the cosine norms need it.
    return run_trainer(loaded.config, run_dir, name, strategy, mixed_precision="none",
                       early_stopping_metric=SELECTION_METRIC if early_stopping else None,
                       early_stopping_patience=loaded.config.recommendation.patience if early_stopping else 0)


def text_vectors(loaded: LoadedConfig, data: RecommendationData) -> np.ndarray:
    """Frozen BERT vectors of every catalog item's text (through the embedding cache)."""
    from tfrec.text.catalog import catalog_text_features

    vectors, stats = catalog_text_features(data.catalog.text().astype(str), loaded.config.text, progress=loaded.config.train.progress)
    log("item text vectors: %d items (%s)" % (len(vectors), stats.summary()))
    return vectors


def next_item_metrics(model: Any, sequences: Sequences, max_history: int, k: int = 10) -> dict[str, float]:
    """Full-ranking recall@k / ndcg@k of a model on (history -> next item) examples, nothing excluded."""
    from tfrec.evaluation.recommend import rank_metrics, top_k_from_vectors

    history, _ = sequences.padded_histories(max_history)
    top = top_k_from_vectors(rt.user_matrix(model, history), rt.item_matrix(model), k)
    means = rank_metrics(top, sequences.targets, [k])
    return {"recall@%d" % k: means["recall@%d" % k], "ndcg@%d" % k: means["ndcg@%d" % k]}


class RecommendationTrainer:
    """One `tfrec train` run of a sequential recommendation config."""

    def __init__(self, loaded: LoadedConfig, data: RecommendationData, run_dir: Path) -> None:
        self.loaded, self.data, self.run_dir = loaded, data, Path(run_dir)
        self.cfg = loaded.config
        self.rc = self.cfg.recommendation
        self.seconds: dict[str, float] = {}
        from tfrec.training.strategy import make_strategy

        self.strategy = make_strategy(self.cfg.train.distribute)

    def _stage(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.perf_counter() - started, 1)
        log("%s: %.1f s" % (name, self.seconds[name]))

    def run(self) -> dict:
        """Train, evaluate, report and save; returns the metrics written to metrics.json."""
        started = time.perf_counter()
        vectors = text_vectors(self.loaded, self.data) if self.rc.item_text else None
        self._stage("text vectors", started)
        model, training = self._train(vectors)
        started = time.perf_counter()
        metrics = self._evaluate(model, vectors, training)
        self._stage("evaluation", started)
        metrics["seconds"] = self.seconds
        self._save(model, metrics)
        return metrics

    # -- training ------------------------------------------------------------------------------

    def _train(self, vectors: Optional[np.ndarray]) -> tuple[Any, dict]:
        rc, seed, catalog = self.rc, self.cfg.run.seed, self.data.catalog
        rest, holdout = rt.split_newest(self.data.train)
        log("%s encoder, %s softmax, %d-d: selecting epochs on %d held-out newest training examples (%d left to train on)"
            % (rc.encoder, rc.softmax, rc.dim, len(holdout), len(rest)))
        started = time.perf_counter()
        select, result = rt.fit_recommender(
            lambda: rt.build_recommender(rc, catalog, vectors, rest, seed), rest, rc,
            _trainer(self.loaded, self.run_dir, "select", self.strategy, early_stopping=True), epochs=rc.epochs, seed=seed,
            validate=lambda m: next_item_metrics(m, holdout, rc.max_history),
        )
        best = result.best_epoch if result.best_epoch is not None else result.epochs_run - 1
        curve = [{k: round(float(v), 5) for k, v in h.items()} for h in result.history]
        info: dict = {"selection": {"epochs_run": result.epochs_run, "best_epoch": best + 1, "history": curve,
                                    "holdout_examples": len(holdout), "train_examples": len(rest),
                                    "stopped_early": result.stopped_early}}
        self._stage("training (selection)", started)
        # The Trainer validated every epoch and put the best epoch's weights back: its numbers are those.
        info["holdout"] = {k[len("val_"):]: v for k, v in curve[best].items() if k.startswith("val_")} if curve else {}
        if not rc.refit or best < 0:
            info["refit"] = False
            return select, info
        started = time.perf_counter()
        log("re-training on all %d training examples for %d epoch(s)" % (len(self.data.train), best + 1))
        model, refit = rt.fit_recommender(
            lambda: rt.build_recommender(rc, catalog, vectors, self.data.train, seed), self.data.train, rc,
            _trainer(self.loaded, self.run_dir, "refit", self.strategy, early_stopping=False), epochs=best + 1, seed=seed,
        )
        info["refit"] = True
        info["examples_per_second"] = round(refit.examples_per_second, 1)
        self._stage("training (refit)", started)
        return model, info

    # -- evaluation ----------------------------------------------------------------------------

    def _evaluate(self, model: Any, vectors: Optional[np.ndarray], training: dict) -> dict:
        from tfrec.baselines.recommend import baseline_tops
        from tfrec.evaluation.recommend import item_counts, recommendation_report, top_k_from_vectors

        rc, catalog, valid = self.rc, self.data.catalog, self.data.valid
        n_items, k = len(catalog), max(max(self.cfg.evaluation.ks), 10)
        history, _ = valid.padded_histories(rc.max_history)
        counts = item_counts(self.data.train, n_items)
        items = rt.item_matrix(model)
        # Diversity is measured on text vectors; an id-only model has none, so its own item vectors stand in.
        text = vectors if vectors is not None else items
        systems: dict = baseline_tops(self.data.train, valid, text, k, rc.max_history, exclude_history=rc.exclude_history, counts=counts)
        if vectors is None:
            systems.pop("zero_shot_text")
        name = "tfrec_%s" % rc.encoder
        systems[name] = {"top": top_k_from_vectors(rt.user_matrix(model, history), items, k, exclude=history if rc.exclude_history else None),
                         "label": "tfrec %s (text + id)" % rc.encoder, "kind": "model"}
        reference = "zero_shot_text" if "zero_shot_text" in systems else "popularity"
        self.per_user: dict = {}
        report = recommendation_report(systems, valid.targets, self.cfg.evaluation.ks, text, counts, n_items,
                                       exclude_history=rc.exclude_history, reference=reference,
                                       n_resamples=self.cfg.evaluation.bootstrap_resamples, seed=self.cfg.run.seed,
                                       per_user=self.per_user)
        seen = np.zeros(n_items, bool)
        seen[np.unique(np.concatenate([self.data.train.items, self.data.train.targets]))] = True
        report["seen_cold"] = self._seen_cold(systems, valid.targets, seen)
        report["similar_items"] = self._similar_items(items, vectors, valid, history)
        report["training"] = training
        report["model"] = name
        report["split"] = "valid"
        return report

    def _seen_cold(self, systems: dict, targets: np.ndarray, seen: np.ndarray) -> dict:
        from tfrec.evaluation.recommend import rank_metrics

        cold = ~seen[targets]
        out = {"valid_targets": int(len(targets)), "cold_targets": int(cold.sum())}
        for name, system in systems.items():
            for label, keep in (("seen", ~cold), ("cold", cold)):
                if keep.any():
                    out.setdefault(name, {})[label] = rank_metrics(system["top"][keep], targets[keep], [10])
        return out

    def _similar_items(self, items: np.ndarray, vectors: Optional[np.ndarray], valid: Sequences, history: np.ndarray) -> dict:
        """Item -> items from the item tower, checked on valid: does the newest history item's list hold the next item?"""
        from tfrec.evaluation.recommend import rank_metrics
        from tfrec.retrieval.index import build_index, search_index

        last = history[:, -1]
        known = last >= 0
        out: dict = {"examples": int(known.sum()), "note": "recall@10 of the valid target among the 10 items most similar "
                     "to the user's newest history item (the item itself excluded)"}
        for name, matrix in (("item tower", items), ("zero-shot text", vectors)):
            if matrix is None:
                continue
            index = build_index(self.cfg.retrieval.index, matrix, k=11)
            top, _ = search_index(index, matrix[last[known]], k=11)
            top = np.asarray(top).astype(np.int64)
            # Drop the query item itself from its own list (it is its own nearest neighbour).
            lists = np.array([[r for r in row if r != q][:10] for row, q in zip(top, last[known])])
            out[name] = rank_metrics(lists, valid.targets[known], [10])
        titles = self.data.catalog.text().astype(str)
        index = build_index(self.cfg.retrieval.index, items, k=6)
        top, _ = search_index(index, items[:3], k=6)
        out["samples"] = [{"item": titles[i][:80], "similar": [titles[int(j)][:80] for j in row if int(j) != i][:5]} for i, row in enumerate(np.asarray(top))]
        return out

    # -- saving --------------------------------------------------------------------------------

    def _save(self, model: Any, metrics: dict) -> None:
        from tfrec.reports.evaluation import evaluate_run

        folder = self.run_dir / MODEL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        model.save_weights(str(folder / "weights"))
        vocabulary = model.item_fusion.id_vocabulary or []
        (folder / VOCABULARY_FILE).write_text("".join(v + "\n" for v in vocabulary), encoding="utf-8")
        (self.run_dir / SETTINGS_FILE).write_text(json.dumps({"top_k": self.rc.top_k, "exclude_history": self.rc.exclude_history}, indent=2) + "\n",
                                                  encoding="utf-8")
        from tfrec.evaluation.compare import PER_QUERY_FILE, write_per_query

        # Valid has one example per user: the user ids key the rows for `tfrec compare`.
        write_per_query(self.run_dir / PER_QUERY_FILE, self.data.valid.users.astype(str), self.per_user)
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n", encoding="utf-8")
        log("report: %s" % evaluate_run(self.run_dir).html)


def report_notes(cfg: Any, metrics: dict) -> list[str]:
    """The report's notes on a recommendation run: split, model, epoch selection, cold targets, similar items."""
    rc = cfg.recommendation
    sel = metrics["training"]["selection"]
    notes = [
        "Valid split, full ranking over all %d items; one target per user; user history items %s."
        % (metrics.get("n_items", 0), "excluded" if rc.exclude_history else "NOT excluded (config recommendation.exclude_history)"),
        "Model: %s encoder over items = fusion(frozen BERT text vector, item-id embedding), %d-d, %s softmax, temperature %g."
        % (rc.encoder, rc.dim, rc.softmax, rc.temperature),
        "Epochs chosen on each user's newest training example (never valid): best epoch %d of %d run; %s."
        % (sel["best_epoch"], sel["epochs_run"], "then re-trained on all training examples" if metrics["training"]["refit"] else "no re-training"),
    ]
    sc = metrics.get("seen_cold", {})
    model = sc.get(metrics.get("model", ""), {})
    cold = model.get("cold")
    notes.append("Valid targets never seen in training (cold, reachable through their text only): %d of %d%s." % (
        sc.get("cold_targets", 0), sc.get("valid_targets", 0),
        "; model recall@10 on them %.3f, on seen targets %.3f" % (cold["recall@10"], model["seen"]["recall@10"]) if cold else ""))
    similar = metrics.get("similar_items", {})
    if "item tower" in similar:
        notes.append("Similar items (item tower, %s index): the valid target is among the 10 items most similar to the user's newest "
                     "history item for %.3f of users (zero-shot text similarity: %s)." % (
                         cfg.retrieval.index, similar["item tower"]["recall@10"],
                         "%.3f" % similar["zero-shot text"]["recall@10"] if "zero-shot text" in similar else "n/a"))
        for sample in similar.get("samples", [])[:3]:
            notes.append("Similar to '%s': %s" % (sample["item"], "; ".join(sample["similar"][:3])))
    if cfg.data.dataset == "amazon-scientific":
        notes.append("Published context (test split of a larger 8,442-user cut, so a rough guide only): UniSRec recall@10 about "
                     "0.119, MISSRec 0.128 (../shared/datasets/README.md).")
    return notes


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError("not JSON serializable: %s" % type(value).__name__)


def load_recommender(run_dir: Path) -> tuple[Any, Any, dict]:
    """Rebuild a run's trained recommender: (model, data, settings)."""
    from tfrec.config.loader import load_config
    from tfrec.data.datasets import load_data
    from tfrec.recommend.model import SequentialRecommender
    from tfrec.runs import CONFIG_FILE

    run_dir = Path(run_dir)
    needed = [run_dir / CONFIG_FILE, run_dir / SETTINGS_FILE, run_dir / MODEL_DIR / "weights.index", run_dir / MODEL_DIR / VOCABULARY_FILE]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError("%s holds no complete trained recommendation run; missing: %s" % (run_dir, ", ".join(missing)))
    loaded = load_config(run_dir / CONFIG_FILE, [])
    rc = loaded.config.recommendation
    data = load_data(loaded)
    vectors = text_vectors(loaded, data) if rc.item_text else None
    vocabulary = [v for v in (run_dir / MODEL_DIR / VOCABULARY_FILE).read_text(encoding="utf-8").split("\n") if v]
    model = SequentialRecommender(
        data.catalog.ids.astype(str), vectors, vocabulary or None, encoder=rc.encoder, dim=rc.dim, encoder_dim=rc.encoder_dim, max_history=rc.max_history,
        layers=rc.transformer_layers, heads=rc.transformer_heads, dropout=rc.dropout, id_dropout=rc.id_dropout,
        temperature=rc.temperature, softmax=rc.softmax, seed=loaded.config.run.seed,
    )
    model.user_vectors(np.full((1, rc.max_history), -1, np.int32))  # build every layer before loading
    model.load_weights(str(run_dir / MODEL_DIR / "weights")).expect_partial()
    settings = json.loads((run_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    return model, data, settings


def train_recommendation(loaded: LoadedConfig, data: RecommendationData, run_dir: Path) -> dict:
    """Train, evaluate and report a sequential recommendation config in ``run_dir``."""
    return RecommendationTrainer(loaded, data, run_dir).run()
