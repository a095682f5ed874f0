"""keras-tuner searches over a config (``tfrec tune``): the space from ``tune.space``, one trial = one config.

A trial's config is the search's base config (the loaded file with its ``--set`` overrides, saved
once as ``base_config.yaml`` in the tuner project) plus the trial's values as ``--set`` overrides,
so every value a trial tries passes the same type and bound checks as a user's override. An
*objective* ``(config, trial_epochs) -> {metric: value}``, given by the caller (the search ranker's
is :class:`tfrec.search.tuning.RankerTrialObjective`), trains and scores one config; every
metric is maximized. ``trial_epochs`` is Hyperband's ``tuner/epochs`` and ``None`` for the other
algorithms (the config's own epochs count).

The tuner project lives in ``tune.directory/<run name>-<target>-<algorithm>`` (relative to the
working directory, like ``run.output_dir``) and is never overwritten: a rerun reloads the finished
trials, re-runs a trial that was interrupted and only runs what ``tune.max_trials`` still allows. A
rerun with a config that changes what trials compute is refused (it would mix incomparable scores).
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import yaml

from tfrec import compat
from tfrec.config.loader import ConfigError, LoadedConfig, config_to_dict, load_config, save_config
from tfrec.config.quoting import quote_value
from tfrec.config.schema import Config, TuneParam
from tfrec.log import progress_bars
from tfrec.runs import RunFolder, write_json

kt = compat.keras_tuner()
log = logging.getLogger(__name__)

Objective = Callable[[Config, Optional[int]], Mapping[str, float]]

BASE_CONFIG = "base_config.yaml"
BEST_CONFIG = RunFolder(Path()).best_config.name
RESULTS_FILE = RunFolder(Path()).tuning_results.name
# Keys keras-tuner's Hyperband adds to a trial's values (bracket bookkeeping, not config keys).
TUNER_PREFIX = "tuner/"
# Config keys that may differ between a tuner project's base config and a rerun: they change the
# budget or where things are written, not what a trial computes.
RESUMABLE_CHANGES = ("tune.max_trials", "tune.directory", "run.output_dir", "train.progress", "train.tensorboard")


# ----------------------------------------------------------------------------- the space


def _yaml_value(value: Any) -> str:
    """A value as the YAML text of a ``--set`` override (strings are YAML text already)."""
    if isinstance(value, str):
        return value  # choice values are YAML scalars as written in the config ("softmax", "[32, 16]")
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.strip()


def overrides_for(hp_values: Mapping[str, Any]) -> list[str]:
    """``key=value`` overrides of a trial's values (keras-tuner's ``tuner/*`` bookkeeping left out)."""
    return ["%s=%s" % (key, _yaml_value(value)) for key, value in hp_values.items() if not key.startswith(TUNER_PREFIX)]


def _choice_values(raw: Sequence[str]) -> list[Any]:
    """Choice values for keras-tuner: numbers when every value is one (ordered), else the YAML texts."""
    parsed = []
    for text in raw:
        try:
            parsed.append(yaml.safe_load(text))
        except yaml.YAMLError:
            return list(raw)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in parsed):
        return parsed
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in parsed):
        return [float(v) for v in parsed]
    return list(raw)


def _whole(value: float) -> bool:
    return float(value).is_integer()


def space_problems(space: Sequence[TuneParam]) -> list[tuple[str, str]]:
    """(key, message) for each structural mistake of a search space, keys like ``tune.space[1].max``."""
    problems: list[tuple[str, str]] = []
    if not space:
        problems.append(("tune.space", "is empty: declare at least one parameter, e.g. "
                                       "{key: ranking.learning_rate, type: float, min: 0.0001, max: 0.01, sampling: log}"))
    seen: dict[str, int] = {}
    for i, p in enumerate(space):
        at = "tune.space[%d]" % i
        key = p.key.strip()
        if not key:
            problems.append((at + ".key", "is required (a dotted config key such as ranking.learning_rate)"))
            continue
        if key.startswith("tune.") or key == "tune":
            problems.append((at + ".key", "%s: the tune section configures the search itself and cannot be searched" % quote_value(key)))
        if key.startswith(TUNER_PREFIX):
            problems.append((at + ".key", "%s: tuner/* names are keras-tuner's own bookkeeping" % quote_value(key)))
        if key in seen:
            problems.append((at + ".key", "%s is already searched by tune.space[%d]" % (quote_value(key), seen[key])))
        seen.setdefault(key, i)
        if p.type == "choice":
            if not p.values:
                problems.append((at + ".values", "a choice needs at least one value, got []"))
            elif len(set(p.values)) != len(p.values):
                problems.append((at + ".values", "values repeat: %s" % quote_value(p.values)))
            continue
        if not p.min < p.max:
            problems.append((at + ".max", "must be greater than min (%r), got %r" % (p.min, p.max)))
        if p.sampling == "log" and p.min <= 0:
            problems.append((at + ".min", "log sampling needs min > 0, got %r" % p.min))
        if p.step is not None and p.step <= 0:
            problems.append((at + ".step", "must be > 0, got %r" % p.step))
        if p.type == "int":
            for name in ("min", "max", "step"):
                value = getattr(p, name)
                if value is not None and not _whole(value):
                    problems.append((at + "." + name, "an int parameter needs whole numbers, got %r" % value))
        if p.values:
            problems.append((at + ".values", "only type choice takes values; %s uses min/max" % p.type))
    return problems


def hyperparameters_from_space(space: Sequence[TuneParam]) -> Any:
    """keras-tuner ``HyperParameters`` for ``tune.space`` (one named after each dotted key)."""
    problems = space_problems(space)
    if problems:
        key, message = problems[0]
        raise ValueError("%s: %s" % (key, message))
    hp = kt.HyperParameters()
    for p in space:
        key = p.key.strip()
        if p.type == "choice":
            hp.Choice(key, _choice_values(p.values))
        elif p.type == "int":
            hp.Int(key, int(p.min), int(p.max), step=int(p.step) if p.step is not None else None, sampling=p.sampling)
        else:
            hp.Float(key, float(p.min), float(p.max), step=p.step, sampling=p.sampling)
    return hp


def _space_values(p: TuneParam) -> list[Any]:
    """The values of a parameter whose validity stands for all of its range (ends, or every choice)."""
    if p.type == "choice":
        return list(p.values)
    if p.type == "int":
        return [int(p.min), int(p.max)]
    return [float(p.min), float(p.max)]


def check_space(loaded: LoadedConfig, objective: Optional[Objective] = None) -> None:
    """Raise a ConfigError (naming ``tune.space[i]`` and the config key) for a space no trial could use.

    Each choice and both ends of each range are applied to the config as overrides and checked by
    the loader, so an unknown key, a wrong type or an out-of-bounds range fails here, before any
    trial runs. With an ``objective``, also checks that it honours each key (its ``untunable_reason(key)``
    says why not, naming what it can tune), reports ``tune.objective`` (``metrics``) and that Hyperband
    does not search the epochs it sets.
    """
    tune = loaded.config.tune
    for key, message in space_problems(tune.space):
        raise loaded.error(key, message)
    with tempfile.TemporaryDirectory(prefix="tfrec-tune-") as tmp:
        base = save_config(loaded, Path(tmp) / BASE_CONFIG)
        for i, p in enumerate(tune.space):
            key = p.key.strip()
            for value in _space_values(p):
                override = "%s=%s" % (key, _yaml_value(value))
                try:
                    load_config(base, [override], resolve_data_dir=False)
                except ConfigError as err:
                    detail = str(err)[len(err.source) + 2:]  # drop the temporary file / --set source
                    raise loaded.error("tune.space[%d]" % i, "%s=%s is not a valid value: %s" % (key, _yaml_value(value), detail)) from None
    if objective is None:
        return
    untunable_reason = getattr(objective, "untunable_reason", None)
    for i, p in enumerate(tune.space):
        reason = untunable_reason(p.key.strip()) if untunable_reason is not None else None
        if reason:
            raise loaded.error("tune.space[%d]" % i, reason)
    metrics = getattr(objective, "metrics", None)
    if metrics is not None and tune.objective not in metrics:
        raise loaded.error(
            "tune.objective", "%s is not a metric of %s trials; choose one of %s" % (quote_value(tune.objective), tune.target, ", ".join(metrics))
        )
    epochs_key = getattr(objective, "epochs_key", None)
    if tune.algorithm == "hyperband" and epochs_key in {p.key.strip() for p in tune.space}:
        raise loaded.error(
            "tune.space", "%s is set by Hyperband (tuner/epochs, up to tune.max_epochs); remove it from the space" % epochs_key
        )


# ----------------------------------------------------------------------------- the tuner


class ConfigTuner(kt.engine.base_tuner.BaseTuner):
    """A keras-tuner tuner whose trial is ``objective(base config + the trial's values, epochs)``.

    A ``BaseTuner`` (not ``kt.Tuner``): the objective trains whatever it wants; the tuner only
    turns values into configs and reports the returned metrics to the oracle.
    """

    def __init__(
        self,
        oracle: Any,
        base_config: Path,
        objective: Objective,
        *,
        directory: str,
        project_name: str,
        epochs_key: Optional[str] = None,
    ) -> None:
        self.base_config = Path(base_config)
        self.trial_objective = objective
        self.epochs_key = epochs_key
        super().__init__(oracle, hypermodel=None, directory=directory, project_name=project_name, overwrite=False)

    def trial_overrides(self, values: Mapping[str, Any]) -> list[str]:
        """The overrides of a trial: its values, and Hyperband's epochs as the objective's epochs key."""
        overrides = overrides_for(values)
        if self.epochs_key and values.get(TUNER_PREFIX + "epochs") is not None:
            overrides.append("%s=%d" % (self.epochs_key, int(values[TUNER_PREFIX + "epochs"])))
        return overrides

    def trial_config(self, values: Mapping[str, Any]) -> LoadedConfig:
        """The resolved config of a trial's values."""
        return load_config(self.base_config, self.trial_overrides(values))

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Resolve the trial's config, run the objective, return its metrics (plus ``seconds``)."""
        values = trial.hyperparameters.values
        try:
            loaded = self.trial_config(values)
        except ConfigError as err:  # check_space makes this a bug: stop the search, do not count a failed trial
            raise kt.errors.FatalValueError(str(err)) from err
        epochs = values.get(TUNER_PREFIX + "epochs")
        start = time.perf_counter()
        metrics = {str(k): float(v) for k, v in dict(self.trial_objective(loaded.config, None if epochs is None else int(epochs))).items()}
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise kt.errors.FailedTrialError("the objective returned non-finite metrics %s" % bad)
        metrics["seconds"] = round(time.perf_counter() - start, 2)
        return metrics

    def on_trial_end(self, trial: Any) -> None:
        """Record the trial; say why when it failed (keras-tuner keeps the traceback in trial.json only)."""
        super().on_trial_end(trial)
        if trial.status != "COMPLETED" and trial.message:
            log.warning("trial %s %s: %s", trial.trial_id, trial.status, _last_line(trial.message))


def _last_line(message: str) -> str:
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def make_oracle(loaded: LoadedConfig, hp: Any, objective_name: str) -> Any:
    """The oracle of ``tune.algorithm``: RandomSearch, Hyperband (capped at max_trials) or BayesianOptimization."""
    tune, seed = loaded.config.tune, loaded.config.run.seed
    objective = kt.Objective(objective_name, direction="max")
    common = {"objective": objective, "hyperparameters": hp, "seed": seed}
    if tune.algorithm == "random":
        return kt.oracles.RandomSearchOracle(max_trials=tune.max_trials, **common)
    if tune.algorithm == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=tune.max_epochs, factor=3, **common)
        oracle.max_trials = tune.max_trials  # Hyperband sizes its own brackets; this caps the budget
        return oracle
    if tune.algorithm == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError as err:
            raise loaded.error(
                "tune.algorithm", "bayesian needs scipy and scikit-learn (pip install 'keras-tuner[bayesian]'): %s" % err
            ) from None
        # Half the budget random (at least 2 points) before the Gaussian process proposes values;
        # keras-tuner's default (3 per dimension) leaves small budgets with no guided trial at all.
        initial = max(2, min(3 * len(hp.space), tune.max_trials // 2))
        return kt.oracles.BayesianOptimizationOracle(max_trials=tune.max_trials, num_initial_points=initial, **common)
    raise loaded.error("tune.algorithm", "expected random, hyperband or bayesian, got %r" % tune.algorithm)


def project_name(cfg: Config) -> str:
    """The tuner project folder name: ``<run name>-<target>-<algorithm>``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.run.name).strip("-") or "run"
    return "%s-%s-%s" % (slug, cfg.tune.target, cfg.tune.algorithm)


def _flat(values: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, "%s%s." % (prefix, key)))
        else:
            out[prefix + key] = value
    return out


def prepare_project(loaded: LoadedConfig, project_dir: Path) -> Path:
    """Save the base config in a new project, or check that a resumed project was started with the same one."""
    project_dir.mkdir(parents=True, exist_ok=True)
    base = project_dir / BASE_CONFIG
    if base.is_file():
        before = _flat(config_to_dict(load_config(base, []).config))
        now = _flat(config_to_dict(loaded.config))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise ValueError(
                "tuner project %s was started with a different config (%s); its trials would not compare with "
                "new ones. Use another run.name or tune.directory, or delete the folder to start over"
                % (project_dir, ", ".join("%s: %s -> %s" % (k, quote_value(before.get(k)), quote_value(now.get(k))) for k in changed[:5]))
            )
    elif any(project_dir.iterdir()):
        raise ValueError(
            "%s is not empty but holds no %s: not a tfrec tuner project; choose another tune.directory" % (project_dir, BASE_CONFIG)
        )
    save_config(loaded, base)  # rewritten on resume: budget keys (tune.max_trials) may have grown
    return base


# ----------------------------------------------------------------------------- results


def trial_record(trial: Any, space_keys: Sequence[str]) -> dict[str, Any]:
    """One trial as plain data: id, status, searched values (and Hyperband's epochs), metrics, error."""
    values = trial.hyperparameters.values
    record: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "status": trial.status,
        "values": {k: values[k] for k in space_keys if k in values},
        "metrics": {name: trial.metrics.get_last_value(name) for name in sorted(trial.metrics.metrics)},
    }
    if TUNER_PREFIX + "epochs" in values:
        record["epochs"] = int(values[TUNER_PREFIX + "epochs"])
    if trial.status != "COMPLETED" and trial.message:
        record["message"] = _last_line(trial.message)
    return record


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


def results_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of the trials (best first, marked ``*``), as ``tfrec tune`` prints it."""
    name = results["objective"]["name"]
    keys = list(results["space"])
    trials = sorted(results["trials"], key=lambda t: -(t["metrics"].get(name) if t["metrics"].get(name) is not None else -math.inf))
    header = ["", "trial", "status", *keys, *(["epochs"] if any("epochs" in t for t in trials) else []), name, "seconds"]
    rows = [header]
    for t in trials:
        best = "*" if t["trial_id"] == results["best"]["trial_id"] else ""
        cells = [best, t["trial_id"], t["status"], *(_cell(t["values"].get(k, "")) for k in keys)]
        if header[-3] == "epochs":
            cells.append(str(t.get("epochs", "")))
        cells += [_cell(t["metrics"].get(name, "")), _cell(t["metrics"].get("seconds", ""))]
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ----------------------------------------------------------------------------- entry point


def run_tuning(loaded: LoadedConfig, out_dir: Path, *, objective: Objective) -> dict:
    """Run (or resume) the search of ``loaded``'s tune section over ``objective``; write best_config.yaml and tuning_results.json to ``out_dir``.

    The caller brings the objective (``tfrec tune`` the search ranker's: tfrec.search.tuning.tune_search).
    """
    cfg = loaded.config
    tune = cfg.tune
    check_space(loaded, objective)
    oracle = make_oracle(loaded, hyperparameters_from_space(tune.space), tune.objective)
    directory = Path(tune.directory)
    project = project_name(cfg)
    base = prepare_project(loaded, directory / project)
    space_keys = [p.key.strip() for p in tune.space]
    tuner = ConfigTuner(
        oracle, base, objective, directory=str(directory), project_name=project,
        epochs_key=getattr(objective, "epochs_key", None),
    )
    start = time.perf_counter()
    stopped = None
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keras-tuner prints its progress; stdout is for results
            tuner.search(verbose=1 if cfg.train.progress and progress_bars() else 0)
    except kt.errors.FatalError as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise
    except RuntimeError as err:  # keras-tuner gives up after 3 failed trials in a row: still write what ran
        stopped = _last_line(str(err).split("\n", 1)[0]) or "the search stopped"
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    # keras-tuner pads the best list with unfinished trials when none completed.
    best_trials = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "algorithm": tune.algorithm,
        "target": tune.target,
        "objective": {"name": tune.objective, "direction": "max"},
        "space": space_keys,
        "project_dir": str(tuner.project_dir),
        "search_seconds": round(time.perf_counter() - start, 1),
        "trials": [trial_record(t, space_keys) for t in trials],
        "best": None,
        "stopped": stopped,
    }
    if best_trials:
        best = best_trials[0]
        best_loaded = tuner.trial_config(best.hyperparameters.values)
        results["best"] = {**trial_record(best, space_keys), "overrides": tuner.trial_overrides(best.hyperparameters.values)}
        results["best_config"] = str(save_config(best_loaded, RunFolder(out_dir).best_config))
    write_json(RunFolder(out_dir).tuning_results, results)
    if stopped or not best_trials:
        raise RuntimeError("%s (each trial's error is in %s)" % (stopped or "no trial completed", RunFolder(out_dir).tuning_results))
    chosen = results["best"]  # `tfrec tune` prints results_table(results)
    log.info("best %s = %.4f (trial %s); config: %s",
             tune.objective, chosen["metrics"][tune.objective], chosen["trial_id"], results["best_config"])
    return results
