"""Loading configs: defaults -> YAML file (and the files it extends) -> ``--set`` overrides.

Every value is type-checked against :mod:`tfrec.config.schema`; an error names the key and the
layer (file or override) it came from. The resolved config is what a run saves next to its
outputs, and loading that file again reproduces the run's configuration.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from tfrec import compat
from tfrec.config.quoting import quote_value, shorten
from tfrec.config.schema import BUILTIN_DATASETS, REMOVED_KEYS, REMOVED_VALUES, Config
from tfrec.config.yaml_bounded import YAMLTooLarge, load_yaml
from tfrec.version import __version__

DEFAULTS = "defaults"
_MAX_EXTENDS_DEPTH = 8
_MAIN_FILE = ""  # key under which `sources` remembers the file given to load_config
# The first line of every config that save_config writes (a run's config.yaml, best_config.yaml).
_RESOLVED_HEADER = "# Resolved tfrec "


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible; says key and source."""

    def __init__(self, source: str, key: str, message: str):
        # Sources (a whole --set argument) and keys come from the user and may be any length.
        self.source, self.key = shorten(source), shorten(key)
        super().__init__("%s: %s: %s" % (self.source, self.key, message) if key else "%s: %s" % (self.source, message))


@dataclasses.dataclass
class _Layer:
    source: str
    values: dict
    resolved: bool = False  # written by save_config: every key, as an earlier run resolved it


# ----------------------------------------------------------------------------- reading layers


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(str(path), "", "config file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), "", "not UTF-8 text (%s)" % err.reason) from None


def _read_yaml(path: Path, text: str) -> dict:
    try:
        data = load_yaml(text)
    except YAMLTooLarge as err:
        raise ConfigError(str(path), "", str(err)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = " at line %d, column %d" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), "", "invalid YAML%s: %s" % (where, shorten(problem))) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a mapping of sections at the top, got %s" % type(data).__name__)
    return data


def _file_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[_Layer]:
    """Return the layers of a file, the files it ``extends`` first."""
    resolved = path.resolve()
    if resolved in seen:
        raise ConfigError(str(path), "extends", "circular: %s" % " -> ".join(str(p) for p in (*seen, resolved)))
    if len(seen) >= _MAX_EXTENDS_DEPTH:
        raise ConfigError(str(path), "extends", "more than %d levels of extends" % _MAX_EXTENDS_DEPTH)
    text = _read_text(path)
    data = _read_yaml(path, text)
    base = data.pop("extends", None)
    layers: list[_Layer] = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(str(path), "extends", "expected a file path, got %s" % quote_value(base))
        layers = _file_layers(path.parent / base, (*seen, resolved))
    layers.append(_Layer(str(path), data, resolved=text.startswith(_RESOLVED_HEADER)))
    return layers


def _override_layer(override: str) -> _Layer:
    """Parse one ``a.b=c`` override; the value is read as YAML (``64``, ``[10, 100]``, ``null``)."""
    source = "--set %s" % override
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(source, "", "expected KEY=VALUE with a dotted key, e.g. retrieval.batch_size=64")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YAMLTooLarge as err:
        raise ConfigError(source, "", str(err)) from None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text; the type check decides
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return _Layer(source, nested)


# ----------------------------------------------------------------------------- merging


def _leaves(values: Mapping, prefix: str = "") -> Iterable[str]:
    for key, value in values.items():
        dotted = "%s%s" % (prefix, key)
        if isinstance(value, dict) and value:
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted


def _merge(base: dict, over: Mapping) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value  # lists and scalars replace, they do not append
    return merged


# ----------------------------------------------------------------------------- removed keys


def _parent(values: dict, dotted: str) -> tuple[Optional[dict], str]:
    """The mapping that would hold ``dotted`` in a layer's values (None if the layer has no such path), and the key's name."""
    *parents, name = dotted.split(".")
    node: Any = values
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), name


def _check_removed(layer: _Layer) -> None:
    """Refuse a removed key or value (schema.REMOVED_KEYS / REMOVED_VALUES), saying what to use instead.

    A resolved config (save_config) holds every key of the release that wrote it: removed keys are
    dropped there, since they never changed what that run did.
    """
    for dotted, advice in REMOVED_KEYS.items():
        parent, name = _parent(layer.values, dotted)
        if parent is None or name not in parent:
            continue
        if layer.resolved:
            del parent[name]
            continue
        raise ConfigError(layer.source, dotted, "was removed: %s" % advice)
    for (dotted, value), advice in REMOVED_VALUES.items():
        parent, name = _parent(layer.values, dotted)
        if parent is not None and parent.get(name) == value:
            raise ConfigError(layer.source, dotted, "%s was removed: %s" % (quote_value(value), advice))


# ----------------------------------------------------------------------------- typed building


def _source_of(sources: Mapping[str, str], key: str) -> str:
    """The layer that set ``key`` or, failing that, its closest parent."""
    key = key.split("[", 1)[0]  # a list element comes from the layer that set the list
    probe = key
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    for dotted, source in sources.items():  # a parent key reported: any child's source will do
        if dotted.startswith(key + "."):
            return source
    # A default nobody set: the loaded file is what the user can change to fix it.
    return sources.get(_MAIN_FILE, DEFAULTS)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of %s" % ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list of %s" % _type_name(typing.get_args(tp)[0])
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, sources: Mapping[str, str]) -> Any:
    def fail() -> ConfigError:
        return ConfigError(_source_of(sources, key), key, "expected %s, got %s" % (_type_name(tp), quote_value(value)))

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail()
        return _build(tp, value, key + ".", sources)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, sources)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise fail()
        return value
    if origin is list:
        if not isinstance(value, list):
            raise fail()
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, "%s[%d]" % (key, i), sources) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise TypeError("unsupported schema type %r at %s" % (tp, key))


def _check_bounds(value: Any, meta: Mapping, key: str, sources: Mapping[str, str]) -> None:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("exclusive_min") and value == low)):
        rel = ">" if meta.get("exclusive_min") else ">="
        raise ConfigError(_source_of(sources, key), key, "must be %s %s, got %s" % (rel, low, quote_value(value)))
    if high is not None and value > high:
        raise ConfigError(_source_of(sources, key), key, "must be <= %s, got %s" % (high, quote_value(value)))


def _yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _build(cls: type, values: Mapping, prefix: str, sources: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            key = prefix + str(name)
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = " (did you mean %r?)" % close[0] if close else " (known: %s)" % ", ".join(fields)
            raise ConfigError(_source_of(sources, key), key, "unknown key" + hint)
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            key = prefix + name
            value = values[name]
            if f.metadata.get("scalars_as_text") and isinstance(value, list):
                # YAML reads `[0.1, 0.2]` as numbers; these fields hold YAML text, parsed later where the type is known.
                value = [_yaml_text(v) if isinstance(v, (bool, int, float)) or v is None else v for v in value]
            kwargs[name] = _coerce(value, hints[name], key, sources)
            if kwargs[name] is not None and f.metadata:
                _check_bounds(kwargs[name], f.metadata, key, sources)
    instance = cls(**kwargs)
    if hasattr(instance, "problems"):
        for name, message in instance.problems():
            key = prefix + name
            raise ConfigError(_source_of(sources, key), key, message)
    return instance


# ----------------------------------------------------------------------------- public API


@dataclasses.dataclass
class LoadedConfig:
    """A typed config together with the layer that set each key, for error messages."""

    config: Config
    sources: dict[str, str]
    path: str | None

    def error(self, key: str, message: str) -> ConfigError:
        """Build a ConfigError for ``key`` naming the file or override that set it."""
        return ConfigError(_source_of(self.sources, key), key, message)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, resolve_data_dir: bool = True) -> LoadedConfig:
    """Load a config: schema defaults, then ``path`` (and what it extends), then overrides."""
    layers: list[_Layer] = _file_layers(Path(path)) if path is not None else []
    layers += [_override_layer(o) for o in overrides]
    merged: dict = {}
    sources: dict[str, str] = {_MAIN_FILE: str(path)} if path is not None else {}
    for layer in layers:
        _check_removed(layer)
        merged = _merge(merged, layer.values)
        for dotted in _leaves(layer.values):
            sources[dotted] = layer.source
    config = _build(Config, merged, "", sources)
    loaded = LoadedConfig(config, sources, str(path) if path is not None else None)
    if resolve_data_dir:
        _resolve_data_dir(loaded)
    return loaded


def data_dir_candidates(dataset: str, cwd: Path | None = None) -> list[tuple[str, Path]]:
    """Where a built-in dataset is looked for, in order: $TFREC_DATA_DIR, ./data, ../shared/datasets."""
    cwd = cwd or Path.cwd()
    candidates = []
    env_dir = compat.data_dir_from_environment()
    if env_dir:
        candidates.append(("$TFREC_DATA_DIR", Path(env_dir) / dataset))
    candidates.append(("./data", cwd / "data" / dataset))
    candidates.append(("../shared/datasets", cwd.parent / "shared" / "datasets" / dataset))
    return candidates


def _resolve_data_dir(loaded: LoadedConfig) -> None:
    data = loaded.config.data
    if data.dir:
        folder = Path(data.dir).expanduser()
        if not folder.is_dir():
            raise loaded.error("data.dir", "folder %s not found" % folder.resolve())
        data.dir = str(folder.resolve())
        return
    if data.dataset not in BUILTIN_DATASETS:
        raise loaded.error("data.dir", "is required for dataset %s" % quote_value(data.dataset))
    candidates = data_dir_candidates(data.dataset)
    for label, folder in candidates:
        if folder.is_dir():
            data.dir = str(folder.resolve())
            loaded.sources["data.dir"] = "%s (found via %s)" % (loaded.sources.get("data.dataset", DEFAULTS), label)
            return
    looked = ", ".join("%s" % folder for _, folder in candidates)
    raise loaded.error(
        "data.dir",
        "dataset %s not found; looked in %s. Set $TFREC_DATA_DIR or data.dir, or see `tfrec data download --help`"
        % (quote_value(data.dataset), looked),
    )


def config_to_dict(config: Config) -> dict:
    """Return the config as plain data (what YAML files hold)."""
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """Render the config as YAML text that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None, allow_unicode=True)


def save_config(loaded: LoadedConfig, path: str | Path) -> Path:
    """Write the resolved config (with a header naming its layers) so the run can be reproduced."""
    path = Path(path)
    layers = list(dict.fromkeys(v for k, v in loaded.sources.items() if k != _MAIN_FILE))
    header = ["%s%s configuration: load it with `tfrec train --config %s`." % (_RESOLVED_HEADER, __version__, path.name)]
    header += ["# Layers: defaults" + "".join(" -> %s" % s for s in layers)]
    path.write_text("\n".join(header) + "\n" + dump_config(loaded.config), encoding="utf-8")
    return path
