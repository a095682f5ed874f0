"""The model and version manager of the development server: what TF Serving's core does, in Python.

* Models are the subfolders of an export folder that hold integer version folders, or the models of a
  TF Serving ``models.config`` text proto (base paths, version policies, version labels).
* A version is loaded with ``tf.saved_model.load``, its warm-up records are replayed (a failing record
  fails the load), and only then is it AVAILABLE; versions the policy no longer wants are unloaded
  after that, so a model never stops serving during a swap. A version that appears after the first
  poll is loaded only once its files have been quiet for one poll interval (a copy may be in
  progress); one that fails is retried while any file under it changes and for ``retry_seconds``
  after (status "retrying"), then left "failed" until its files change again. The policy falls
  back to the versions that did load.
* Requests arrive as TF Serving protos (``PredictRequest``, ``RegressionRequest``, ...) and are
  validated before anything runs; failures raise :class:`RequestError` carrying a gRPC status code name.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterable, Mapping, Optional, Sequence

import numpy as np

from tfrec import compat
from tfrec.serving.savedmodel import REGRESS_METHOD, read_warmup, version_folders

tf = compat.tensorflow()
log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
REGRESS_SIGNATURE = "regress"
REGRESS_OUTPUT = "outputs"
SERVE_TAG = "serve"


class RequestError(Exception):
    """A request that cannot be answered, with the gRPC status code name TF Serving would use."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    """An INVALID_ARGUMENT error."""
    return RequestError("INVALID_ARGUMENT", message)


def not_found(message: str) -> RequestError:
    """A NOT_FOUND error."""
    return RequestError("NOT_FOUND", message)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request (checked before any tensor is materialised)."""

    max_batch_size: int = 1024
    max_string_bytes: int = 64 << 10
    max_elements: int = 4 << 20  # a TensorProto may declare a shape far larger than the values it sends
    max_total_string_bytes: int = 4 << 20  # all strings of a request as the model would see them (contexts repeated)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_string_bytes", "max_elements", "max_total_string_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError("%s must be >= 1, got %r" % (name, getattr(self, name)))


# ---------------------------------------------------------------------------------------------
# Which models, which versions


@dataclass(frozen=True)
class ModelSource:
    """One served model: where its versions live, which of them to serve, and its version labels."""

    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: Mapping[str, int] = field(default_factory=dict)

    def wanted(self, candidates: Iterable[int]) -> list[int]:
        """The versions this policy serves among ``candidates`` (newest first)."""
        ordered = sorted(set(candidates), reverse=True)
        if self.policy == "all":
            return ordered
        if self.policy == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[: max(1, self.num_versions)]


def discover_models(export_dir: Path, names: Optional[Sequence[str]] = None) -> list[ModelSource]:
    """Models of an export folder: its subfolders holding at least one integer version folder."""
    export_dir = Path(export_dir)
    found = [ModelSource(p.name, p) for p in sorted(export_dir.iterdir())
             if p.is_dir() and not p.name.startswith(".") and version_folders(p)]
    return found if names is None else [m for m in found if m.name in set(names)]


def read_model_config(path: Path, export_dir: Optional[Path] = None) -> list[ModelSource]:
    """The models of a TF Serving ``models.config`` (text ModelServerConfig with a model_config_list)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(path)
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError("%s is not a ModelServerConfig text proto: %s" % (path, exc)) from exc
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError("%s has no model_config_list (custom_model_config is not supported)" % path)
    sources = []
    for model in config.model_config_list.config:
        if not model.name:
            raise ValueError("%s: a model config has no name" % path)
        sources.append(_source_of(model, path, export_dir))
    if len({s.name for s in sources}) != len(sources):
        raise ValueError("%s names a model twice: %s" % (path, [s.name for s in sources]))
    return sources


def _source_of(model: Any, config_path: Path, export_dir: Optional[Path]) -> ModelSource:
    base = Path(model.base_path or model.name)
    if not base.is_absolute():
        base = config_path.parent / base
    if not base.is_dir() and export_dir is not None and (Path(export_dir) / model.name).is_dir():
        # configs written for the docker image say /models/<name>; here the export folder holds it
        base = Path(export_dir) / model.name
    if not base.is_dir():
        raise ValueError("model %r: base_path %s is not a folder" % (model.name, model.base_path))
    policy = model.model_version_policy.WhichOneof("policy_choice") or "latest"
    num_versions = model.model_version_policy.latest.num_versions or 1
    versions = tuple(model.model_version_policy.specific.versions)
    if policy == "specific" and not versions:
        raise ValueError("model %r: model_version_policy specific lists no versions" % model.name)
    return ModelSource(model.name, base, policy, num_versions, versions, dict(model.version_labels))


# ---------------------------------------------------------------------------------------------
# One loaded version


def read_signature_defs(saved_model_dir: Path) -> dict[str, Any]:
    """{key: SignatureDef} of the 'serve' MetaGraph in saved_model.pb (method names included)."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(saved_model_dir) / "saved_model.pb"
    if not pb.is_file():
        raise FileNotFoundError("no saved_model.pb in %s" % saved_model_dir)
    model = saved_model_pb2.SavedModel()
    model.ParseFromString(pb.read_bytes())
    for meta_graph in model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError("%s has no MetaGraph tagged %r" % (pb, SERVE_TAG))


def register_serving_ops() -> None:
    """Register the custom ops stock TF Serving links (tensorflow-text's tokenizers); ScaNN's on purpose not."""
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:  # models without text ops load anyway; others fail with "Op type not registered"
        pass


class LoadedVersion:
    """One loaded SavedModel version: its SignatureDefs and the functions that run them."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name = name
        self.version = version
        self.path = Path(path)
        self.signature_defs = read_signature_defs(self.path)
        register_serving_ops()
        self._loaded = tf.saved_model.load(str(self.path), tags=[SERVE_TAG])
        self._functions = dict(self._loaded.signatures)

    def signature(self, key: str) -> Any:
        """The SignatureDef under ``key`` (FAILED_PRECONDITION if the model has none, like TF Serving)."""
        if key not in self.signature_defs or key not in self._functions:
            raise RequestError("FAILED_PRECONDITION", 'Serving signature key "%s" not found (model %s version %d has %s)'
                               % (key, self.name, self.version, ", ".join(sorted(self._functions)) or "none"))
        return self.signature_defs[key]

    def run(self, key: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run a signature on validated numpy inputs; TF's InvalidArgumentError -> INVALID_ARGUMENT, others INTERNAL."""
        try:
            result = self._functions[key](**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
            return {k: result[k].numpy() for k in outputs}
        except tf.errors.InvalidArgumentError as exc:
            raise invalid("model %s version %d rejected the input: %s" % (self.name, self.version, _first_line(exc.message)))
        except Exception as exc:  # the server answers, whatever the model does
            raise RequestError("INTERNAL", "model %s version %d failed: %s: %s"
                               % (self.name, self.version, type(exc).__name__, _first_line(str(exc))))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


# ---------------------------------------------------------------------------------------------
# Requests (protos in, protos out)


def dtype_name(dtype: int) -> str:
    """'DT_STRING' for a DataType enum value."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else "dtype %d" % dtype


def _shape_text(dims: Sequence[int]) -> str:
    return "[%s]" % ",".join("?" if d < 0 else str(d) for d in dims)


# The repeated field holding each dtype's values, and how many entries one element takes. TensorFlow
# repeats the last value to fill a declared shape, so a count that differs from the shape is refused:
# otherwise a few bytes on the wire could declare gigabytes of tensor.
_VALUE_FIELDS = {
    "DT_FLOAT": ("float_val", 1), "DT_DOUBLE": ("double_val", 1), "DT_INT32": ("int_val", 1),
    "DT_INT16": ("int_val", 1), "DT_INT8": ("int_val", 1), "DT_UINT8": ("int_val", 1), "DT_UINT16": ("int_val", 1),
    "DT_HALF": ("half_val", 1), "DT_BFLOAT16": ("half_val", 1), "DT_INT64": ("int64_val", 1),
    "DT_UINT32": ("uint32_val", 1), "DT_UINT64": ("uint64_val", 1), "DT_BOOL": ("bool_val", 1),
    "DT_STRING": ("string_val", 1), "DT_COMPLEX64": ("scomplex_val", 2), "DT_COMPLEX128": ("dcomplex_val", 2),
}


def _check_payload(alias: str, proto: Any, dims: Sequence[int]) -> None:
    """Refuse a TensorProto whose values do not fill its declared shape exactly (no implicit repetition)."""
    size = math.prod(dims)
    name = dtype_name(proto.dtype)
    if name not in _VALUE_FIELDS:
        raise invalid("input '%s' has dtype %s, which this server does not accept in requests" % (alias, name))
    if proto.tensor_content and name != "DT_STRING":
        itemsize = tf.dtypes.as_dtype(proto.dtype).size
        if len(proto.tensor_content) != size * itemsize:
            raise invalid("input '%s' declares shape %s (%d elements of %d bytes) but its tensor_content has %d bytes"
                          % (alias, _shape_text(dims), size, itemsize, len(proto.tensor_content)))
        return
    field_name, per_element = _VALUE_FIELDS[name]
    count = len(getattr(proto, field_name))
    if count != size * per_element:
        raise invalid("input '%s' declares shape %s (%d elements) but carries %d values in %s: send one value per element"
                      % (alias, _shape_text(dims), size, count // per_element, field_name))


def _check_tensor(alias: str, proto: Any, info: Any, limits: Limits) -> list[int]:
    """Check one input TensorProto against its TensorInfo and the limits; returns its shape."""
    if proto.dtype != info.dtype:
        raise invalid("input '%s' expects %s, got %s" % (alias, dtype_name(info.dtype), dtype_name(proto.dtype)))
    if proto.tensor_shape.unknown_rank:
        raise invalid("input '%s' has an unknown rank; send its shape" % alias)
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid("input '%s' has a negative dimension in shape %s" % (alias, _shape_text(dims)))
    if not info.tensor_shape.unknown_rank:
        want = [d.size for d in info.tensor_shape.dim]
        if len(dims) != len(want):
            raise invalid("input '%s' expects rank %d (shape %s), got rank %d (shape %s)"
                          % (alias, len(want), _shape_text(want), len(dims), _shape_text(dims)))
        if any(w >= 0 and d != w for d, w in zip(dims, want)):
            raise invalid("input '%s' expects shape %s, got %s" % (alias, _shape_text(want), _shape_text(dims)))
    if math.prod(dims) > limits.max_elements:
        raise invalid("input '%s' has %d elements, more than the %d allowed" % (alias, math.prod(dims), limits.max_elements))
    _check_payload(alias, proto, dims)
    for value in proto.string_val:
        if len(value) > limits.max_string_bytes:
            raise invalid("string of %d bytes in input '%s' exceeds max_string_bytes=%d"
                          % (len(value), alias, limits.max_string_bytes))
    return dims


def check_total_strings(total: int, limits: Limits) -> None:
    """Refuse a request whose strings, as the model would receive them, exceed max_total_string_bytes."""
    if total > limits.max_total_string_bytes:
        raise invalid("the request carries %d bytes of strings (after decoding, contexts repeated per example), more "
                      "than the %d allowed per request" % (total, limits.max_total_string_bytes))


def check_batch(sizes: Mapping[str, int], limits: Limits) -> int:
    """The common batch size of the inputs (0, > max_batch_size and mismatches are INVALID_ARGUMENT)."""
    if len(set(sizes.values())) > 1:
        raise invalid("inputs with different batch sizes: %s" % ", ".join("%s=%d" % kv for kv in sorted(sizes.items())))
    for alias, size in sorted(sizes.items()):
        if size == 0:
            raise invalid("batch of 0 in input '%s': send at least one example" % alias)
        if size > limits.max_batch_size:
            raise invalid("batch of %d in input '%s' exceeds max_batch_size=%d" % (size, alias, limits.max_batch_size))
    return next(iter(sizes.values()), 0)


def predict_inputs(signature: Any, inputs: Mapping[str, Any], limits: Limits) -> dict[str, np.ndarray]:
    """Validate a request's input TensorProtos against a SignatureDef and convert them to numpy."""
    expected = sorted(signature.inputs)
    for alias in expected:
        if alias not in inputs:
            raise invalid("missing input '%s' (the signature expects %s)" % (alias, ", ".join(expected)))
    for alias in sorted(inputs):
        if alias not in signature.inputs:
            raise invalid("unexpected input '%s' (the signature expects %s)" % (alias, ", ".join(expected)))
    shapes = {alias: _check_tensor(alias, inputs[alias], signature.inputs[alias], limits) for alias in expected}
    check_batch({a: s[0] for a, s in shapes.items() if s}, limits)
    check_total_strings(sum(len(v) for alias in expected for v in inputs[alias].string_val), limits)
    arrays = {}
    for alias in expected:
        try:
            arrays[alias] = tf.make_ndarray(inputs[alias])
        except Exception as exc:  # a TensorProto whose values do not fit its shape
            raise invalid("input '%s' is a malformed TensorProto: %s" % (alias, _first_line(str(exc))))
    return arrays


def model_spec_of(name: str, version: int, signature: str = "") -> Any:
    """A ModelSpec naming the served version (what responses carry)."""
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


def run_predict(version: LoadedVersion, request: Any, limits: Limits,
                gate: ContextManager[Any] = contextlib.nullcontext()) -> Any:
    """Answer a PredictRequest with one loaded version; the model runs inside ``gate`` (the admission queue)."""
    from tensorflow_serving.apis import predict_pb2

    key = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = version.signature(key)
    wanted = list(request.output_filter) or sorted(signature.outputs)
    for alias in wanted:
        if alias not in signature.outputs:
            raise invalid("output tensor alias not found in signature: %s (outputs are %s)"
                          % (alias, ", ".join(sorted(signature.outputs))))
    if len(set(wanted)) != len(wanted):
        raise invalid("duplicate output tensor alias in output_filter: %s" % list(request.output_filter))
    arrays = predict_inputs(signature, request.inputs, limits)
    with gate:  # validation above stays outside: only the model's work waits for a slot
        outputs = version.run(key, arrays, wanted)
    spec = model_spec_of(request.model_spec.name or version.name, version.version, key)
    response = predict_pb2.PredictResponse(model_spec=spec)
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(array))
    return response


def serialized_examples(model_input: Any, limits: Limits) -> list[bytes]:
    """The serialized tf.Examples of a RegressionRequest input (context features merged into each example)."""
    kind = model_input.WhichOneof("kind")
    if kind is None:
        raise invalid("the request has no input examples (set input.example_list or input.example_list_with_context)")
    if kind == "example_list":
        examples, context = list(model_input.example_list.examples), b""
    else:
        examples = list(model_input.example_list_with_context.examples)
        context_example = model_input.example_list_with_context.context
        _check_example_strings(context_example, "context", limits)
        # Concatenated serialized protos parse as a merge, so each example's own features win (as in TF Serving).
        context = context_example.SerializeToString()
    check_batch({kind: len(examples)}, limits)
    for i, example in enumerate(examples):
        _check_example_strings(example, "example %d" % i, limits)
    serialized = [context + e.SerializeToString() for e in examples]
    check_total_strings(sum(map(len, serialized)), limits)
    return serialized


def _check_example_strings(example: Any, where: str, limits: Limits) -> None:
    for name, feature in example.features.feature.items():
        for value in feature.bytes_list.value:
            if len(value) > limits.max_string_bytes:
                raise invalid("string of %d bytes in feature '%s' of %s exceeds max_string_bytes=%d"
                              % (len(value), name, where, limits.max_string_bytes))


def regress_signature_key(version: LoadedVersion, requested: str) -> str:
    """The signature a RegressionRequest runs: the named one, else serving_default if it regresses, else 'regress'."""
    if requested:
        return requested
    default = version.signature_defs.get(DEFAULT_SIGNATURE)
    return DEFAULT_SIGNATURE if default is not None and default.method_name == REGRESS_METHOD else REGRESS_SIGNATURE


def run_regress(version: LoadedVersion, request: Any, limits: Limits,
                gate: ContextManager[Any] = contextlib.nullcontext()) -> Any:
    """Answer a RegressionRequest with one loaded version; the model runs inside ``gate`` (the admission queue)."""
    from tensorflow_serving.apis import regression_pb2

    key = regress_signature_key(version, request.model_spec.signature_name)
    signature = version.signature(key)
    if signature.method_name != REGRESS_METHOD:
        raise invalid("Expected regression signature method_name to be %s. Was: %s (signature '%s')"
                      % (REGRESS_METHOD, signature.method_name, key))
    if len(signature.inputs) != 1 or REGRESS_OUTPUT not in signature.outputs:
        raise RequestError("FAILED_PRECONDITION", "regression signature '%s' needs one input and an output '%s', has inputs "
                           "%s and outputs %s" % (key, REGRESS_OUTPUT, sorted(signature.inputs), sorted(signature.outputs)))
    (alias,) = signature.inputs
    examples = serialized_examples(request.input, limits)
    with gate:
        values = version.run(key, {alias: np.array(examples, dtype=object)}, [REGRESS_OUTPUT])[REGRESS_OUTPUT]
    if values.ndim not in (1, 2) or values.shape[0] != len(examples) or (values.ndim == 2 and values.shape[1] != 1):
        raise invalid("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got %s"
                      % list(values.shape))
    spec = model_spec_of(request.model_spec.name or version.name, version.version, key)
    response = regression_pb2.RegressionResponse(model_spec=spec)
    for value in values.reshape(-1):
        response.result.regressions.add(value=float(value))
    return response


def model_metadata(version: LoadedVersion, request: Any) -> Any:
    """Answer a GetModelMetadataRequest (metadata_field 'signature_def' only, as TF Serving)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    fields = list(request.metadata_field)
    if not fields:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field (only 'signature_def' is supported)")
    for name in fields:
        if name != "signature_def":
            raise invalid("Metadata field %s is not supported (only 'signature_def')" % name)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in version.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=model_spec_of(version.name, version.version))
    response.metadata["signature_def"].Pack(signature_map)
    return response


def replay_warmup(version: LoadedVersion, limits: Limits) -> int:
    """Run every warm-up record of a version (predict and regress logs); the first failure raises."""
    logs = read_warmup(version.path)
    for i, record in enumerate(logs):
        kind = record.WhichOneof("log_type")
        try:
            if kind == "predict_log":
                run_predict(version, record.predict_log.request, limits)
            elif kind == "regress_log":
                run_regress(version, record.regress_log.request, limits)
            else:
                raise ValueError("this server replays predict_log and regress_log records only")
        except RequestError as exc:
            raise RuntimeError("warm-up record %d (%s) failed: %s: %s" % (i, kind, exc.code, exc.message)) from exc
        except ValueError as exc:
            raise RuntimeError("warm-up record %d (%s) failed: %s" % (i, kind, exc)) from exc
    return len(logs)


# ---------------------------------------------------------------------------------------------
# The manager


@dataclass
class VersionState:
    """What happened to one version: START, LOADING, AVAILABLE or END (with the error if its load failed).

    ``retry`` is set for failed loads: "retrying" while the version's files changed recently (it is
    loaded again once they are quiet), "failed" once they have been still for the retry window.
    """

    state: str
    error: str = ""
    retry: str = ""


@dataclass
class _Watch:
    """What the poller saw of one version folder that is not serving."""

    snapshot: tuple  # (relative path, size, mtime_ns) of the folder and everything under it
    changed_at: float  # wall-clock time of the last change seen (the newest mtime at first sight)
    cause: str = ""  # the error of the last failed load
    tried: Optional[tuple] = None  # the snapshot that load read
    tried_at: float = 0.0
    backoff: float = 0.0  # wait before retrying files that did not change since the last failure


@dataclass
class _Model:
    source: ModelSource
    available: dict[int, LoadedVersion] = field(default_factory=dict)
    states: dict[int, VersionState] = field(default_factory=dict)
    watches: dict[int, _Watch] = field(default_factory=dict)


RETRY_SECONDS = 60.0
FIRST_RETRY_SECONDS = 1.0  # unchanged files are retried after 1 s, 2 s, 4 s, ... (a filesystem may hide a write)


def _snapshot(path: Path) -> tuple:
    """(relative path, size, mtime_ns) of a folder and every file and folder under it, sorted."""
    entries = []
    for root, _, files in os.walk(path):
        for entry in [root] + [os.path.join(root, f) for f in files]:
            try:
                st = os.stat(entry)
            except OSError:  # removed while we looked: the next poll sees what replaced it
                continue
            entries.append((os.path.relpath(entry, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def _failure_text(cause: str, retry: str, retry_seconds: float) -> str:
    if retry == "retrying":
        return "%s (retrying: its files changed less than %g s ago, a copy may still be in progress)" % (cause, retry_seconds)
    return "%s (failed: its files have not changed for %g s; it is loaded again when they change)" % (cause, retry_seconds)


class ModelManager:
    """Loads the models' versions, swaps them as new versions appear, and answers requests as protos.

    ``retry_seconds``: how long after the last change of its files a failed version is still retried.
    """

    def __init__(self, export_dir: Optional[Path] = None, model_config_file: Optional[Path] = None,
                 models: Optional[Sequence[str]] = None, limits: Limits = Limits(),
                 retry_seconds: float = RETRY_SECONDS) -> None:
        if export_dir is None and model_config_file is None:
            raise ValueError("give an export_dir or a model_config_file")
        if not retry_seconds >= 0:
            raise ValueError("retry_seconds must be >= 0, got %r" % (retry_seconds,))
        self.export_dir = Path(export_dir) if export_dir is not None else None
        if self.export_dir is not None and not self.export_dir.is_dir():
            raise ValueError("export_dir %s is not a folder" % self.export_dir)
        self.limits = limits
        self.retry_seconds = float(retry_seconds)
        self._names = list(models) if models is not None else None
        self._configured = read_model_config(Path(model_config_file), self.export_dir) if model_config_file else None
        if self._configured is not None and self._names is not None:
            self._configured = [s for s in self._configured if s.name in set(self._names)]
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._poll_lock = threading.Lock()  # one poll at a time (the poller thread and explicit calls)
        self._polled = False  # the first poll loads what is there; later versions must be quiet for a poll first

    # -- versions --------------------------------------------------------------------------

    def sources(self) -> list[ModelSource]:
        """The models to serve now (the config's, or the export folder's current subfolders)."""
        if self._configured is not None:
            return list(self._configured)
        return discover_models(self.export_dir, self._names)

    def poll(self) -> None:
        """One pass over every model: load the versions the policy wants, then unload the ones it no longer wants."""
        with self._poll_lock:
            for source in self.sources():
                try:
                    self._poll_model(source)
                except Exception:  # one model's trouble must not stop the others from updating
                    log.exception("polling model %s failed", source.name)
            self._polled = True

    def _poll_model(self, source: ModelSource) -> None:
        with self._lock:
            model = self._models.setdefault(source.name, _Model(source))
        on_disk = version_folders(source.base_path)
        for v in set(model.watches) - set(on_disk):
            del model.watches[v]
        ready = {v for v, path in on_disk.items() if v in model.available or self._ready(model, v, path)}
        while True:
            wanted = source.wanted(ready)
            to_load = [v for v in wanted if v not in model.available]
            if not to_load:
                break
            for v in to_load:  # a failure changes what is ready, so the policy is applied again
                if not self._load(model, v, on_disk[v]):
                    ready.discard(v)
        for v in sorted(set(model.available) - set(wanted)):
            self._unload(model, v)

    def _ready(self, model: _Model, version: int, path: Path) -> bool:
        """Whether a version that is not serving may be loaded now: files quiet since the last poll, a retry due."""
        now = time.time()
        snapshot = _snapshot(path)
        watch = model.watches.get(version)
        if watch is None:
            newest = max((entry[2] for entry in snapshot), default=0) / 1e9
            watch = model.watches[version] = _Watch(snapshot, min(now, newest))
            quiet = not self._polled  # at start, load what is there (a failure is retried like any other)
        else:
            quiet = snapshot == watch.snapshot
            if not quiet:
                watch.snapshot, watch.changed_at = snapshot, now
        state = model.states.get(version)
        failed = state is not None and state.error != ""
        if not quiet:
            with self._lock:
                if state is None:
                    model.states[version] = VersionState("START")
                elif failed and state.retry != "retrying":
                    model.states[version] = VersionState("END", _failure_text(watch.cause, "retrying", self.retry_seconds),
                                                         "retrying")
            return False
        if not failed or snapshot != watch.tried:
            return True
        if now - watch.changed_at >= self.retry_seconds:
            if state.retry != "failed":
                with self._lock:
                    model.states[version] = VersionState("END", _failure_text(watch.cause, "failed", self.retry_seconds),
                                                         "failed")
                log.error("%s version %d failed: its files have not changed for %g s (%s)",
                          model.source.name, version, self.retry_seconds, watch.cause)
            return False
        return now - watch.tried_at >= watch.backoff

    def _load(self, model: _Model, version: int, path: Path) -> bool:
        name = model.source.name
        watch = model.watches.get(version) or _Watch(_snapshot(path), time.time())
        with self._lock:
            retrying = version in model.states and model.states[version].error != ""
            if not retrying:  # a retry keeps reporting the last failure until it succeeds
                model.states[version] = VersionState("LOADING")
        log.info("%s %s version %d from %s", "retrying" if retrying else "loading", name, version, path)
        try:
            loaded = LoadedVersion(name, version, path)
            records = replay_warmup(loaded, self.limits)
        except Exception as exc:  # any failure keeps the previous versions serving
            now = time.time()
            blind = watch.tried == watch.snapshot  # nothing changed since the previous failure
            watch.backoff = watch.backoff * 2 if blind and watch.backoff else FIRST_RETRY_SECONDS
            watch.tried, watch.tried_at = watch.snapshot, now
            watch.cause = "%s: %s" % (type(exc).__name__, _first_line(str(exc)) or repr(exc))
            retry = "retrying" if now - watch.changed_at < self.retry_seconds else "failed"
            with self._lock:
                model.states[version] = VersionState("END", _failure_text(watch.cause, retry, self.retry_seconds), retry)
            log.error("%s version %d failed to load (the versions already serving stay; %s): %s",
                      name, version, retry, watch.cause)
            return False
        with self._lock:
            model.available[version] = loaded
            model.states[version] = VersionState("AVAILABLE")
            model.watches.pop(version, None)
        log.info("%s version %d is AVAILABLE (%d warm-up records replayed)", name, version, records)
        return True

    def _unload(self, model: _Model, version: int) -> None:
        with self._lock:
            # requests already holding this version finish on it; it is freed when they let go
            model.available.pop(version, None)
            model.states[version] = VersionState("END")
        log.info("unloaded %s version %d", model.source.name, version)

    def missing(self) -> dict[str, str]:
        """{model: why} for every model without an AVAILABLE version (empty when all serve)."""
        sources = self.sources()
        out = {name: "no such model in %s" % (self.export_dir or "the model config")
               for name in (self._names or []) if name not in {s.name for s in sources}}
        with self._lock:
            models = dict(self._models)
        for source in sources:
            model = models.get(source.name)
            if model is None or not model.available:
                states = sorted(model.states.items()) if model else []
                errors = ["version %d: %s" % (v, s.error) for v, s in states if s.error]
                errors += ["version %d: waiting for its files to stop changing" % v for v, s in states if s.state == "START"]
                out[source.name] = "; ".join(errors) or "no version folder under %s" % source.base_path
        return out

    def status(self) -> dict[str, dict[int, dict[str, str]]]:
        """{model: {version: {"state": ...}}}, plus "error" and "retry" ("retrying" or "failed") for failed loads."""
        with self._lock:
            return {name: {v: ({"state": s.state, "error": s.error, "retry": s.retry} if s.error else {"state": s.state})
                           for v, s in sorted(m.states.items())} for name, m in sorted(self._models.items())}

    def close(self) -> None:
        """Drop every loaded version."""
        with self._lock:
            for model in self._models.values():
                model.available.clear()

    # -- requests --------------------------------------------------------------------------

    def _model(self, name: str) -> _Model:
        if not name:
            raise invalid("model_spec.name is empty")
        with self._lock:
            model = self._models.get(name)
            served = sorted(self._models)
        if model is None:
            raise not_found("Servable not found for request: model '%s' is not served here (serving: %s)"
                            % (name, ", ".join(served)))
        return model

    def resolve(self, spec: Any) -> LoadedVersion:
        """The loaded version a ModelSpec asks for: a version, a version label, or the latest AVAILABLE one."""
        model = self._model(spec.name)
        choice = spec.WhichOneof("version_choice")
        with self._lock:
            available = dict(model.available)
        if choice == "version_label":
            label = spec.version_label
            if label not in model.source.labels:
                raise not_found("model '%s' has no version label '%s' (labels: %s)"
                                % (spec.name, label, ", ".join(sorted(model.source.labels)) or "none"))
            number = model.source.labels[label]
        elif choice == "version":
            number = spec.version.value
        else:
            if not available:
                raise not_found("Servable not found for request: model '%s' has no AVAILABLE version" % spec.name)
            return available[max(available)]
        if number not in available:
            raise not_found("Servable not found for request: model '%s' version %d is not AVAILABLE (available: %s)"
                            % (spec.name, number, ", ".join(map(str, sorted(available))) or "none"))
        return available[number]

    def predict(self, request: Any, gate: ContextManager[Any] = contextlib.nullcontext()) -> Any:
        """Answer a PredictRequest (the model runs inside ``gate``)."""
        return run_predict(self.resolve(request.model_spec), request, self.limits, gate)

    def regress(self, request: Any, gate: ContextManager[Any] = contextlib.nullcontext()) -> Any:
        """Answer a RegressionRequest (the model runs inside ``gate``)."""
        return run_regress(self.resolve(request.model_spec), request, self.limits, gate)

    def metadata(self, request: Any) -> Any:
        """Answer a GetModelMetadataRequest."""
        return model_metadata(self.resolve(request.model_spec), request)

    def model_status(self, request: Any) -> Any:
        """Answer a GetModelStatusRequest: every version this server has seen, or the one asked for."""
        from tensorflow_serving.apis import get_model_status_pb2

        spec = request.model_spec
        model = self._model(spec.name)
        choice = spec.WhichOneof("version_choice")
        with self._lock:
            states = dict(model.states)
        if choice == "version_label":
            if spec.version_label not in model.source.labels:
                raise not_found("model '%s' has no version label '%s'" % (spec.name, spec.version_label))
            states = {v: s for v, s in states.items() if v == model.source.labels[spec.version_label]}
        elif choice == "version":
            states = {v: s for v, s in states.items() if v == spec.version.value}
        if not states:
            raise not_found("Could not find version %s of model '%s'"
                            % (spec.version.value if choice == "version" else spec.version_label, spec.name)
                            if choice else "model '%s' has no versions yet" % spec.name)
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, s in sorted(states.items(), reverse=True):
            state = get_model_status_pb2.ModelVersionStatus.State.Value(s.state)
            entry = response.model_version_status.add(version=v, state=state)
            entry.status.error_code = 2 if s.error else 0  # tensorflow.error.Code UNKNOWN / OK
            entry.status.error_message = s.error
        return response
