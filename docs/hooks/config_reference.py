"""MkDocs hook: the configuration reference, generated from tfrec/config/schema.py.

The schema's dataclasses, defaults, bounds, choices and comments are read with ``ast`` (nothing
is imported, so building the docs never loads TensorFlow). A page that holds the marker
``<!-- config-reference -->`` gets one table per config section in its place.
"""
from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

MARKER = "<!-- config-reference -->"
SCHEMA = Path(__file__).resolve().parents[2] / "tfrec" / "config" / "schema.py"

# What a key means where schema.py has no comment for it (a schema comment, when present, wins).
MEANINGS: dict[str, str] = {
    "run.name": "Prefix of the run folder: `<output_dir>/<name>-<UTC time>/`.",
    "run.output_dir": "Folder the run folders go to (relative to where tfrec runs; `--run-dir` names one folder instead).",
    "run.seed": "Seed of every seeded choice: slices, query splits, shuffles, bootstrap.",
    "data.dataset": "Which reader: a built-in dataset, `search-csv` (your catalog + judgments) or `interactions-csv` (your catalog + interaction log).",
    "data.max_valid_queries": "See `data.max_train_queries` (0 = every valid query).",
    "data.max_products": "See `data.max_train_queries` (0 = the whole catalog).",
    "data.period": "Which of the `data.periods` parts this run reads (from 1).",
    "data.catalog.path": "The catalog file, relative to `data.dir`.",
    "data.catalog.id_column": "Column holding each product's id (unique, non-empty; judgments and interactions name products by it).",
    "data.catalog.text_columns": "Columns whose text describes a product; joined with a space, in this order, into the text BERT and BM25 read. A product needs text in at least one of them.",
    "data.catalog.numeric_columns": "Numeric columns fused into the product tower and the ranker (standardized with the catalog's statistics, plus a missing flag; an empty field is missing).",
    "data.catalog.categorical_columns": "Categorical columns fused into the product tower and the ranker (an embedding per value, with an out-of-vocabulary row).",
    "data.catalog.encoding": "Text encoding of the file (a UTF-8 byte-order mark is accepted).",
    "data.judgments.train": "Judgments the models train on, relative to `data.dir`.",
    "data.judgments.valid": "Judgments every system is evaluated on, relative to `data.dir` (also used, half of them, to choose the hybrid weights and the ranker).",
    "data.judgments.query_column": "Column holding the query text.",
    "data.judgments.product_column": "Column holding the judged product's id (must be in the catalog).",
    "data.judgments.label_column": "Column holding the graded relevance label.",
    "data.judgments.label_min": "Smallest allowed label; labels outside `[label_min, label_max]` are errors (or dropped with `strict: false`).",
    "data.judgments.label_max": "Largest allowed label.",
    "data.judgments.encoding": "Text encoding of the judgment files.",
    "data.interactions.path": "The interaction log, relative to `data.dir`.",
    "data.interactions.user_column": "Column holding the user (or session) id.",
    "data.interactions.item_column": "Column holding the item id (must be in the catalog).",
    "data.interactions.timestamp_column": "Column holding when it happened: integer seconds or an ISO 8601 date/time; it orders each user's history.",
    "data.interactions.rating_column": "Optional column holding a rating (a number); null: none.",
    "data.interactions.encoding": "Text encoding of the log.",
    "text.max_length": "Tokens of a product text BERT reads (queries: `retrieval.query_max_length`).",
    "text.pooling": "How token vectors become one text vector: mean over tokens, or the [CLS] token.",
    "text.normalize": "L2-normalize text vectors (cosine scores).",
    "text.encode_batch_size": "Texts per batch when the catalog is encoded.",
    "train.early_stopping_metric": "`ndcg@10`, `recall@K` or `mrr` of the two towers on the ranker's held-out train queries (never valid).",
    "train.tensorboard": "Write TensorBoard logs under `runs/<run>/tensorboard/<model>/`.",
    "train.progress": "Show training progress (a bar on a terminal, periodic lines otherwise).",
    "train.checkpoint.enabled": "Write checkpoints during training.",
    "train.checkpoint.every_steps": "Training steps between checkpoints.",
    "train.checkpoint.keep": "Checkpoints kept (older ones are deleted).",
    "train.augmentation.enabled": "Augment training queries.",
    "retrieval.trainable_layers": "With `text_training: top_layers`: how many of BERT's top layers fine-tune.",
    "retrieval.query_max_length": "Tokens of a query BERT reads.",
    "retrieval.epochs": "Two-tower training epochs.",
    "retrieval.batch_size": "Pairs per training batch (global, over all replicas); the in-batch softmax's candidates.",
    "retrieval.remove_accidental_hits": "Do not count a batch's other copies of the positive product as negatives.",
    "retrieval.hard_negative_depth": "See `retrieval.hard_negatives`.",
    "retrieval.id_embedding_dim": "Size of the product-id embedding.",
    "retrieval.id_dropout": "Share of training examples whose id embedding is dropped, so the text path learns to stand alone (cold products).",
    "retrieval.zero_shot_weight": "See `retrieval.lexical_weight`.",
    "ranking.loss": "The ranker's listwise loss (TF-Ranking); `mse` is a pointwise baseline.",
    "ranking.epochs": "Ranker training epochs.",
    "ranking.batch_size": "Lists per training batch.",
    "ranking.learning_rate": "The ranker's learning rate.",
    "ranking.hidden_units": "Hidden layers of the ranker's MLP.",
    "ranking.cross_layers": "See `ranking.interaction_dim`.",
    "ranking.dropout": "Dropout in the ranker's MLP.",
    "ranking.id_dropout": "See `ranking.product_id`.",
    "ranking.cross_encoder.enabled": "Train the cross-encoder too (slow on CPU; for accelerators).",
    "ranking.cross_encoder.epochs": "Cross-encoder training epochs.",
    "ranking.cross_encoder.max_length": "Tokens of `[CLS] query [SEP] title [SEP]` the cross-encoder reads.",
    "recommendation.item_id": "See `recommendation.item_text`.",
    "recommendation.id_dropout": "Share of training items whose id embedding is dropped, so the text path learns to stand alone (cold items).",
    "recommendation.transformer_layers": "Blocks of the `transformer` encoder.",
    "recommendation.transformer_heads": "Attention heads of the `transformer` encoder.",
    "recommendation.dropout": "Dropout in the history encoder.",
    "recommendation.epochs": "Most training epochs (early stopping may stop sooner).",
    "recommendation.batch_size": "Training examples per batch.",
    "recommendation.learning_rate": "Learning rate.",
    "recommendation.temperature": "Softmax temperature over cosine scores.",
    "recommendation.sampling_correction": "logQ correction of in-batch negatives by each item's training frequency (`softmax: in_batch`).",
    "recommendation.refit": "See `recommendation.patience`.",
    "recommendation.top_k": "Items the `recommender` and `similar_items` exports return per request.",
    "recommendation.multitask.rating_weight": "Weight of the rating loss (squared error).",
    "recommendation.multitask.retrieval_weight": "Weight of the retrieval loss (softmax over every title).",
    "recommendation.multitask.experts": "Experts of the `mmoe` mixture.",
    "recommendation.multitask.expert_units": "Units per expert.",
    "recommendation.multitask.patience": "See `recommendation.multitask.holdout_fraction`.",
    "evaluation.ks": "Cut-offs K of Recall@K (search) and of the recommendation metrics; each must be at most the catalog size.",
    "evaluation.bootstrap_resamples": "Resamples of the paired bootstrap intervals.",
    "tune.algorithm": "keras-tuner search: random, Hyperband or Bayesian optimization.",
    "tune.max_trials": "Most trials the search runs.",
    "tune.objective": "Metric each trial is scored by on the held-out train queries (higher is better).",
    "tune.directory": "The tuner's folder inside the run folder; an interrupted search resumes from it.",
    "tune.space[].key": "The dotted config key this dimension sets, e.g. `ranking.learning_rate`.",
    "tune.space[].type": "A float or int range, or a list of choices (`values`).",
    "tune.space[].min": "Lower end of a float/int range.",
    "tune.space[].max": "Upper end of a float/int range.",
    "tune.space[].step": "Step of the range (null: continuous floats, step 1 for ints).",
    "tune.space[].sampling": "How a range is sampled: linear or log scale.",
    "tune.space": "The search space: a list of entries, each one dimension (see `tune.space[]` below).",
}


@dataclass(frozen=True)
class Key:
    """One config key: dotted name, type, default, bounds and what it means."""

    name: str
    type: str
    default: str
    bounds: str
    doc: str


@dataclass(frozen=True)
class Section:
    """One config section: its dotted path, the class docstring and its keys."""

    path: str
    doc: str
    keys: list[Key]


def _comments(source: str) -> dict[int, str]:
    """Comment text by line number (1-based), from the tokenizer."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _default(value: ast.expr | None, source: str) -> tuple[str, str]:
    """(default, bounds) of a field's right-hand side."""
    if value is None:
        return "", ""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        if value.func.id == "_bounded":
            default = ast.get_source_segment(source, value.args[0])
            kw = {k.arg: ast.literal_eval(k.value) for k in value.keywords}
            low, high = kw.get("min"), kw.get("max")
            parts = []
            if low is not None:
                parts.append("> %g" % low if kw.get("exclusive_min") else ">= %g" % low)
            if high is not None:
                parts.append("<= %g" % high)
            return default, ", ".join(parts)
        if value.func.id == "field":
            for k in value.keywords:
                if k.arg == "default_factory":
                    factory = k.value
                    if isinstance(factory, ast.Lambda):
                        return ast.get_source_segment(source, factory.body), ""
                    if isinstance(factory, ast.Name) and factory.id in ("list", "dict"):
                        return "[]" if factory.id == "list" else "{}", ""
                    return "", ""  # a nested section
                if k.arg == "default":
                    return ast.get_source_segment(source, k.value), ""
    return ast.get_source_segment(source, value), ""


def _doc_for(node: ast.AnnAssign, comments: dict[int, str]) -> str:
    """The comment block right above a field plus its trailing comment."""
    lines = []
    line = node.lineno - 1
    while line in comments:
        lines.insert(0, comments[line])
        line -= 1
    trailing = comments.get(node.end_lineno or node.lineno)
    if trailing and not trailing.startswith("noqa"):
        lines.append(trailing)
    return " ".join(lines)


def read_schema(path: Path = SCHEMA) -> list[Section]:
    """Every section reachable from ``Config``, in the order a config file lists them."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    comments = _comments(source)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    sections: list[Section] = []

    def walk(class_name: str, prefix: str) -> None:
        node = classes[class_name]
        keys, nested = [], []
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            annotation = ast.get_source_segment(source, item.annotation)
            name = item.target.id
            if annotation in classes:
                nested.append((annotation, "%s.%s" % (prefix, name) if prefix else name))
                continue
            element = annotation[len("list["):-1] if annotation.startswith("list[") else ""
            if element in classes:
                nested.append((element, "%s.%s[]" % (prefix, name)))
            default, bounds = _default(item.value, source)
            keys.append(Key(name, annotation, default, bounds, _doc_for(item, comments)))
        if prefix:
            sections.append(Section(prefix, (ast.get_docstring(node) or "").strip(), keys))
        for child, child_prefix in nested:
            walk(child, child_prefix)

    walk("Config", "")
    return sections


def _literals(source: str) -> dict[str, str]:
    """Module-level ``Name = Literal[...]`` aliases, so tables show the choices."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            segment = ast.get_source_segment(source, node.value) or ""
            if segment.startswith("Literal["):
                out[node.targets[0].id] = segment
    return out


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and angle brackets outside code spans kept as text, not HTML."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    plain = [part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;") for part in parts]
    return "".join(plain).replace("|", "\\|")


def _yaml(default: str) -> str:
    """A default as a config file would spell it (null, true, unquoted words)."""
    try:
        value = ast.literal_eval(default)
    except (ValueError, SyntaxError):
        return default
    return json.dumps(value) if not isinstance(value, str) or not value.strip() or value != value.strip() else value


def _type(annotation: str, aliases: dict[str, str]) -> str:
    for alias, literal in aliases.items():
        annotation = annotation.replace(alias, literal)
    optional = annotation.startswith("Optional[")
    if optional:
        annotation = annotation[len("Optional["):-1]
    if annotation.startswith("Literal[") and annotation.endswith("]"):
        annotation = "one of " + ", ".join(v.strip().strip('"') for v in annotation[len("Literal["):-1].split(","))
    elif annotation.startswith("list[Literal["):
        annotation = "list of " + ", ".join(v.strip().strip('"') for v in annotation[len("list[Literal["):-2].split(","))
    return annotation + (" or null" if optional else "")


# Schema comments that point at places a reader of the docs does not have.
REWRITES = {" (see REMOVED_VALUES)": "", "(README, search section)": "(see Benchmarks)"}


def meaning(section: Section, key: Key) -> str:
    """What a key means: its schema comment, else the supplement above; plus its bounds."""
    text = key.doc or MEANINGS.get("%s.%s" % (section.path, key.name), "")
    for old, new in REWRITES.items():
        text = text.replace(old, new)
    if key.bounds:
        text = ("%s (%s)" % (text, key.bounds)) if text else "(%s)" % key.bounds
    return text


def render(path: Path = SCHEMA) -> str:
    """Markdown tables of every section and key of the schema."""
    aliases = _literals(path.read_text(encoding="utf-8"))
    out = []
    for section in read_schema(path):
        out.append("### `%s`\n" % section.path)
        if section.doc:
            out.append(section.doc.replace("``", "`") + "\n")
        if not section.keys:
            continue
        out.append("| key | type | default | meaning |")
        out.append("| --- | --- | --- | --- |")
        for key in section.keys:
            out.append("| `%s.%s` | %s | `%s` | %s |" % (
                section.path, key.name, _cell(_type(key.type, aliases)), _cell(_yaml(key.default)), _cell(meaning(section, key))))
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs hook signature)
    """Replace the marker with the generated tables."""
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
