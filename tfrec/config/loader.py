"""Loading configs: defaults -> YAML file (and the files it extends) -> ``--set`` overrides.

Every value is type-checked against :mod:`tfrec.config.schema`; an error names the key and the
layer it came from (the file, a file it ``extends``, or a ``--set`` override), and every problem
of a config is reported at once in one :class:`ConfigError`. Quoted numbers (``epochs: "2"``)
are refused: a number is written without quotes. The resolved config is what a run saves next to
its outputs, and loading that file again reproduces the run's configuration.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from tfrec import compat
from tfrec.files import is_uri
from tfrec.config.builtin import builtin_config_path, find_config, missing_config_message
from tfrec.config.quoting import QUOTE_LIMIT, quote_value, shorten
from tfrec.config.schema import BUILTIN_DATASETS, REMOVED_KEYS, REMOVED_VALUES, Config
from tfrec.config.yaml_bounded import YAMLTooLarge, load_yaml
from tfrec.version import __version__

DEFAULTS = "defaults"
_MAX_EXTENDS_DEPTH = 8
_MAIN_FILE = ""  # key under which `sources` remembers the file given to load_config
# The first line of every config that save_config writes (a run's config.yaml, best_config.yaml).
_RESOLVED_HEADER = "# Resolved tfrec "
# The longest source an error names: a file reached through the longest chain of extends.
_SOURCE_LIMIT = (_MAX_EXTENDS_DEPTH + 3) * QUOTE_LIMIT


@dataclasses.dataclass(frozen=True)
class ConfigProblem:
    """One problem of a config: where the value came from, its dotted key ("" for the file as a whole) and what is wrong."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return "%s: %s: %s" % (self.source, self.key, self.message) if self.key else "%s: %s" % (self.source, self.message)


class ConfigError(ValueError):
    """Configuration values that are unknown, of the wrong type or impossible; each problem says its key and source.

    ``problems`` lists every problem found (the first is also ``source`` / ``key``); the message
    is that one problem, or a count followed by one indented line per problem.
    """

    def __init__(self, source: str, key: str, message: str, *, more: Sequence[ConfigProblem] = ()):
        # Sources (a whole --set argument) and keys come from the user and may be any length; a source
        # may name a chain of extends files, each already cut to QUOTE_LIMIT.
        first = ConfigProblem(shorten(source, _SOURCE_LIMIT), shorten(key), message)
        self.problems: list[ConfigProblem] = [first, *more]
        self.source, self.key = first.source, first.key
        if not more:
            text = str(first)
        else:
            text = "%d problems in the config:\n%s" % (len(self.problems), "\n".join("  %s" % p for p in self.problems))
        super().__init__(text)

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem]) -> "ConfigError":
        """One error reporting every problem of ``problems`` (at least one)."""
        first, *rest = problems
        return cls(first.source, first.key, first.message,
                   more=[ConfigProblem(shorten(p.source, _SOURCE_LIMIT), shorten(p.key), p.message) for p in rest])


@dataclasses.dataclass
class _Layer:
    source: str
    values: dict
    resolved: bool = False  # written by save_config: every key, as an earlier run resolved it
    # The files whose `extends:` led here, outermost first (empty: the file given, or a --set).
    extended_by: tuple[str, ...] = ()

    @property
    def described(self) -> str:
        """The source as an error names it: a parent file says which chain of `extends:` reached it."""
        if not self.extended_by:
            return self.source
        return "%s (%s)" % (shorten(self.source), " extends ".join(shorten(p) for p in (*self.extended_by, self.source)))


class _Problems:
    """Collects every problem of a config while it loads, with the layer that set each key."""

    def __init__(self, sources: Mapping[str, str], described: Mapping[str, str]) -> None:
        self.sources, self.described = sources, described
        self.found: list[ConfigProblem] = []

    def add(self, key: str, message: str, source: Optional[str] = None) -> None:
        """Record a problem of ``key`` (its source looked up unless given)."""
        raw = source if source is not None else _source_of(self.sources, key)
        self.found.append(ConfigProblem(self.described.get(raw, raw), key, message))

    def raise_any(self) -> None:
        """Raise one ConfigError listing every problem recorded, if any."""
        if self.found:
            raise ConfigError.of(self.found)


# ----------------------------------------------------------------------------- reading layers


def _chain(extended_by: Sequence[str], path: Path) -> str:
    """How a file was reached, for its errors: "" for the file given, else " (a.yaml extends b.yaml extends c.yaml)"."""
    return " (%s)" % " extends ".join((*extended_by, str(path))) if extended_by else ""


def _read_text(path: Path, extended_by: Sequence[str] = ()) -> str:
    if not path.is_file():
        if extended_by:  # the user's file is fine: the one its `extends:` names is not there
            raise ConfigError(extended_by[-1], "extends", "%s: config file not found%s" % (path, _chain(extended_by, path)))
        raise ConfigError(str(path), "", "config file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), "", "not UTF-8 text (%s)%s" % (err.reason, _chain(extended_by, path))) from None


def _read_yaml(path: Path, text: str, extended_by: Sequence[str] = ()) -> dict:
    chain = _chain(extended_by, path)
    try:
        data = load_yaml(text)
    except YAMLTooLarge as err:
        raise ConfigError(str(path), "", str(err) + chain) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = " at line %d, column %d" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), "", "invalid YAML%s: %s%s" % (where, shorten(problem), chain)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a mapping of sections at the top, got %s%s" % (type(data).__name__, chain))
    return data


def _file_layers(path: Path, seen: tuple[Path, ...] = (), extended_by: tuple[str, ...] = ()) -> list[_Layer]:
    """Return the layers of a file, the files it ``extends`` first (``extended_by``: the files whose extends led here)."""
    resolved = path.resolve()
    if resolved in seen:
        raise ConfigError(extended_by[-1], "extends", "circular: %s" % " extends ".join((*extended_by, str(path))))
    if len(seen) >= _MAX_EXTENDS_DEPTH:
        raise ConfigError(extended_by[-1], "extends", "more than %d levels of extends%s" % (_MAX_EXTENDS_DEPTH, _chain(extended_by, path)))
    text = _read_text(path, extended_by)
    data = _read_yaml(path, text, extended_by)
    base = data.pop("extends", None)
    layers: list[_Layer] = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(str(path), "extends", "expected a file path, got %s%s" % (quote_value(base), _chain(extended_by, path)))
        layers = _file_layers(_extended_file(path, base), (*seen, resolved), (*extended_by, str(path)))
    layers.append(_Layer(str(path), data, resolved=text.startswith(_RESOLVED_HEADER), extended_by=extended_by))
    return layers


def _extended_file(path: Path, base: str) -> Path:
    """The file ``extends: base`` in ``path`` means: beside ``path``, else a built-in config by name (``extends: default``)."""
    beside = path.parent / base
    if beside.is_file():
        return beside
    return builtin_config_path(base) or beside  # neither: the missing file beside ``path`` is what the error names


def _override_layer(override: str, problems: Optional[_Problems] = None) -> Optional[_Layer]:
    """Parse one ``a.b=c`` override; the value is read as YAML (``64``, ``[10, 100]``, ``null``).

    A malformed override is recorded in ``problems`` (None: raised) and gives no layer.
    """
    source = shorten("--set %s" % override)  # the whole argument may be any length

    def bad(message: str) -> None:
        if problems is None:
            raise ConfigError(source, "", message)
        problems.add("", message, source=source)

    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        bad("expected KEY=VALUE with a dotted key, e.g. retrieval.batch_size=64")
        return None
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YAMLTooLarge as err:
        bad(str(err))
        return None
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


def _check_removed(layer: _Layer, problems: _Problems) -> None:
    """Refuse a removed key or value (schema.REMOVED_KEYS / REMOVED_VALUES), saying what to use instead.

    A resolved config (save_config) holds every key of the release that wrote it: removed keys are
    dropped there, since they never changed what that run did. Elsewhere each one is a problem, and
    is dropped too so the type checks do not report it a second time.
    """
    for dotted, advice in REMOVED_KEYS.items():
        parent, name = _parent(layer.values, dotted)
        if parent is None or name not in parent:
            continue
        del parent[name]
        if not layer.resolved:
            problems.add(dotted, "was removed: %s" % advice, source=layer.source)
    for (dotted, value), advice in REMOVED_VALUES.items():
        parent, name = _parent(layer.values, dotted)
        if parent is not None and parent.get(name) == value:
            del parent[name]
            problems.add(dotted, "%s was removed: %s" % (quote_value(value), advice), source=layer.source)


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


# What _coerce returns for a value it recorded a problem for (the field keeps its default).
_INVALID = object()


def _quoted_number(value: Any) -> bool:
    """Whether ``value`` is a string that reads as a number (``"2"``, ``'1e-3'``): a number written in quotes."""
    if not isinstance(value, str):
        return False
    try:
        float(value.strip())
    except ValueError:
        return False
    return bool(value.strip())


def _coerce(value: Any, tp: Any, key: str, problems: _Problems) -> Any:
    """``value`` checked against the schema type ``tp``; _INVALID (with the problem recorded) when it does not fit."""
    def fail() -> Any:
        message = "expected %s, got %s" % (_type_name(tp), quote_value(value))
        if tp in (int, float) and _quoted_number(value):
            # YAML reads `epochs: "2"` as text; a number is refused rather than guessed from a string.
            message += " (a quoted string: write the number without quotes)"
        problems.add(key, message)
        return _INVALID

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return fail()
        return _build(tp, value, key + ".", problems)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, problems)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            return fail()
        return value
    if origin is list:
        if not isinstance(value, list):
            return fail()
        (item_tp,) = typing.get_args(tp)
        items = [_coerce(v, item_tp, "%s[%d]" % (key, i), problems) for i, v in enumerate(value)]
        return _INVALID if any(v is _INVALID for v in items) else items
    if tp is bool:
        if not isinstance(value, bool):
            return fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            return fail()
        return value
    raise TypeError("unsupported schema type %r at %s" % (tp, key))


def _bounds_problem(value: Any, meta: Mapping) -> Optional[str]:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("exclusive_min") and value == low)):
        rel = ">" if meta.get("exclusive_min") else ">="
        return "must be %s %s, got %s" % (rel, low, quote_value(value))
    if high is not None and value > high:
        return "must be <= %s, got %s" % (high, quote_value(value))
    return None


def _yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _build(cls: type, values: Mapping, prefix: str, problems: _Problems) -> Any:
    """An instance of the schema dataclass ``cls`` from ``values``; every problem is recorded, bad fields keep their defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    before = len(problems.found)
    for name in values:
        if name not in fields:
            key = prefix + str(name)
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = " (did you mean %r?)" % close[0] if close else " (known: %s)" % ", ".join(fields)
            problems.add(key, "unknown key" + hint)
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            key = prefix + name
            value = values[name]
            if f.metadata.get("scalars_as_text") and isinstance(value, list):
                # YAML reads `[0.1, 0.2]` as numbers; these fields hold YAML text, parsed later where the type is known.
                value = [_yaml_text(v) if isinstance(v, (bool, int, float)) or v is None else v for v in value]
            value = _coerce(value, hints[name], key, problems)
            if value is _INVALID:
                continue
            bound = _bounds_problem(value, f.metadata) if value is not None and f.metadata else None
            if bound:
                problems.add(key, bound)
                continue
            kwargs[name] = value
    instance = cls(**kwargs)
    # Rules across fields only mean something once each field is valid (a bad one stands at its default).
    if hasattr(instance, "problems") and len(problems.found) == before:
        for name, message in instance.problems():
            problems.add(prefix + name, message)
    return instance


# ----------------------------------------------------------------------------- public API


@dataclasses.dataclass
class LoadedConfig:
    """A typed config together with the layer that set each key, for error messages."""

    config: Config
    sources: dict[str, str]
    path: str | None
    # A layer's source as errors name it, where that differs (a file reached through `extends:`).
    described: dict[str, str] = dataclasses.field(default_factory=dict)

    def source_of(self, key: str) -> str:
        """Where ``key``'s value came from, as errors name it: the file (and its extends chain), a --set, or defaults."""
        raw = _source_of(self.sources, key)
        return self.described.get(raw, raw)

    def problem(self, key: str, message: str) -> ConfigProblem:
        """One problem of ``key``, naming the file or override that set it."""
        return ConfigProblem(self.source_of(key), key, message)

    def error(self, key: str, message: str) -> ConfigError:
        """Build a ConfigError for ``key`` naming the file or override that set it."""
        return ConfigError(self.source_of(key), key, message)


def resolve_config(name_or_path: str | Path) -> Path:
    """The config file a ``--config`` argument names: an existing file, else a built-in config by name (``quick``)."""
    found = find_config(name_or_path)
    if found is None:
        raise ConfigError(str(name_or_path), "", missing_config_message(name_or_path))
    return found


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, resolve_data_dir: bool = True) -> LoadedConfig:
    """Load a config: schema defaults, then ``path`` (and what it extends), then overrides."""
    path = resolve_config(path) if path is not None else None
    layers: list[_Layer] = _file_layers(path) if path is not None else []
    sources: dict[str, str] = {_MAIN_FILE: str(path)} if path is not None else {}
    described = {layer.source: layer.described for layer in layers if layer.described != layer.source}
    problems = _Problems(sources, described)
    for override in overrides:
        layer = _override_layer(override, problems)
        if layer is not None:
            layers.append(layer)
    merged: dict = {}
    for layer in layers:
        _check_removed(layer, problems)
        merged = _merge(merged, layer.values)
        for dotted in _leaves(layer.values):
            sources[dotted] = layer.source
    config = _build(Config, merged, "", problems)
    loaded = LoadedConfig(config, sources, str(path) if path is not None else None, described)
    # The data folder is looked for once the keys that name it are valid; its problem joins the others.
    if resolve_data_dir and not any(p.key.startswith(("data.dir", "data.dataset")) for p in problems.found):
        try:
            _resolve_data_dir(loaded)
        except ConfigError as err:
            problems.found.extend(err.problems)
    problems.raise_any()
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
    if data.dir and is_uri(data.dir):
        return  # a remote folder: its files are checked when they are read
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
