"""Run directories: where a run's resolved config, statistics and outputs live."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tfrec.config.loader import LoadedConfig, save_config

CONFIG_FILE = "config.yaml"
STATS_FILE = "data_stats.json"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def create_run_dir(loaded: LoadedConfig, now: datetime | None = None) -> Path:
    """Create ``<output_dir>/<name>-<UTC timestamp>[-n]`` and save the resolved config in it."""
    run = loaded.config.run
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    root = Path(run.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = "%s-%s" % (_slug(run.name), stamp)
    for attempt in range(1000):
        path = root / (base if attempt == 0 else "%s-%d" % (base, attempt))
        try:
            path.mkdir()
        except FileExistsError:
            continue  # two runs started in the same second: take the next free name
        save_config(loaded, path / CONFIG_FILE)
        return path
    raise RuntimeError("could not create a run directory under %s" % root)


def open_run_dir(loaded: LoadedConfig, path: Path) -> Path:
    """Use ``path`` as the run directory: create it, or reopen it (to resume) if it holds the same resolved config."""
    from tfrec.config.loader import config_to_dict, load_config

    path = Path(path)
    saved = path / CONFIG_FILE
    if saved.is_file():
        before, now = _flat(config_to_dict(load_config(saved, []).config)), _flat(config_to_dict(loaded.config))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            # Starting over is not a config change: say how to do it rather than just refusing.
            restart = (" (to start its training over, keep its config and add --restart)"
                       if "train.checkpoint.resume" in changed else "")
            raise ValueError("%s was started with another config (differs in %s): resume with the same config and --set "
                             "overrides, or pick a new --run-dir%s" % (path, ", ".join(changed[:8]), restart))
        return path
    path.mkdir(parents=True, exist_ok=True)
    save_config(loaded, saved)
    return path


def _flat(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out: dict = {}
        for key, value in tree.items():
            out.update(_flat(value, "%s%s." % (prefix, key)))
        return out
    return {prefix[:-1]: tree}


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON via a temporary file, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
