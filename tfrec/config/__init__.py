"""Configuration: typed dataclasses loaded from layered YAML (defaults -> file -> overrides)."""
from tfrec.config.loader import (
    ConfigError,
    ConfigProblem,
    LoadedConfig,
    config_to_dict,
    data_dir_candidates,
    dump_config,
    load_config,
    save_config,
)
from tfrec.config.schema import BUILTIN_DATASETS, Config

__all__ = [
    "BUILTIN_DATASETS",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "LoadedConfig",
    "config_to_dict",
    "data_dir_candidates",
    "dump_config",
    "load_config",
    "save_config",
]
