"""Writing SavedModels the way TensorFlow Serving expects them.

* Versions are integer folders (``<export_dir>/<model>/<version>/``), one more than the largest
  present; each is written to a hidden temporary folder and renamed into place, so a server
  polling the folder never sees half a model, and a version is never overwritten. The models of
  one export share one version and are published together (``tfrec.serving.publish``).
* ``assets.extra/tf_serving_warmup_requests`` holds a few ``PredictionLog`` records that TF
  Serving replays before it marks the version available (a failing record fails the load).
* TF2's ``tf.saved_model.save`` tags every signature as a Predict signature; TF Serving's Regress
  API only accepts ``tensorflow/serving/regress`` signatures, so those method names are set in
  ``saved_model.pb`` after saving (and the fingerprint is written again to match).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from tfrec import compat
from tfrec.log import verbose
from tfrec.serving.tensors import make_example, to_tensor_proto

tf = compat.tensorflow()

PREDICT_METHOD = "tensorflow/serving/predict"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many


def version_folders(model_dir: Path) -> dict[int, Path]:
    """{version: folder} of a model's integer version folders ({} if the model folder does not exist)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def next_version(model_dir: Path) -> int:
    """One more than the largest integer version folder (1 for a new model)."""
    return max(version_folders(model_dir), default=0) + 1


def folder_mb(path: Path) -> float:
    """Size of a folder in MB."""
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 1)


def predict_log(model_name: str, inputs: Mapping[str, Any], signature: str = "serving_default") -> Any:
    """A PredictionLog holding one PredictRequest (a warm-up record)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(to_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def regress_log(model_name: str, examples: Sequence[Mapping[str, Any]], signature: str = "regress") -> Any:
    """A PredictionLog holding one RegressionRequest over tf.Examples built from feature dicts."""
    from tensorflow_serving.apis import prediction_log_pb2, regression_pb2

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for features in examples:
        request.input.example_list.examples.add().CopyFrom(make_example(features))
    return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


def write_warmup(saved_model_dir: Path, logs: Sequence[Any]) -> Path:
    """Write PredictionLog records to ``assets.extra/tf_serving_warmup_requests``."""
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError("%d warm-up records; TF Serving reads at most %d" % (len(logs), MAX_WARMUP_RECORDS))
    path = Path(saved_model_dir) / WARMUP_DIR / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup(saved_model_dir: Path) -> list[Any]:
    """The PredictionLog records of a SavedModel's warm-up file ([] if it has none)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(saved_model_dir) / WARMUP_DIR / WARMUP_FILE
    if not path.is_file():
        return []
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def set_method_names(saved_model_dir: Path, methods: Mapping[str, str]) -> None:
    """Set the method name of signatures in ``saved_model.pb`` (e.g. regress) and refresh the fingerprint."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(saved_model_dir) / "saved_model.pb"
    model = saved_model_pb2.SavedModel()
    model.ParseFromString(pb.read_bytes())
    for meta_graph in model.meta_graphs:
        for key, method in methods.items():
            if key not in meta_graph.signature_def:
                raise ValueError("no signature %r in %s (has %s)" % (key, saved_model_dir, ", ".join(meta_graph.signature_def)))
            meta_graph.signature_def[key].method_name = method
    pb.write_bytes(model.SerializeToString())
    fingerprint = Path(saved_model_dir) / "fingerprint.pb"
    if fingerprint.is_file():
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

        fingerprint.write_bytes(fingerprinting.CreateFingerprintDef(str(saved_model_dir)))


def write_saved_model(
    module: Any,
    folder: Path,
    signatures: Mapping[str, Any],
    warmup: Iterable[Any] = (),
    methods: Optional[Mapping[str, str]] = None,
    extra_files: Optional[Mapping[str, bytes]] = None,
    options: Optional[Any] = None,
) -> Path:
    """Write ``module`` as a SavedModel into ``folder`` (signatures, method names, warm-up file, extra files)."""
    folder = Path(folder)
    with _without_keras_metadata_notices(), compat.keras_saves_without_traces():
        tf.saved_model.save(module, str(folder), signatures=dict(signatures), options=options)
    if methods:
        set_method_names(folder, methods)
    logs = list(warmup)
    if logs:
        write_warmup(folder, logs)
    for rel, data in (extra_files or {}).items():
        target = folder / WARMUP_DIR / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder



# Notices tf.saved_model.save logs about Keras' own revival metadata, which nothing reads: TF
# Serving loads the signatures, and tfrec rebuilds a run's models from its config and weights.
# * tfrec's subclassed models take vocabularies, catalog tables and encoders, so Keras stores an
#   empty config for each ("Model's `__init__()` arguments contain non-serializable objects");
# * the two-tower model carries its training loss, a TFRS Retrieval task that never runs in an
#   export and holds no variables ("Skipping full serialization of TF-Keras layer ... not built").
_KERAS_METADATA_NOTICES = ("arguments contain non-serializable objects", "Skipping full serialization of TF-Keras layer")


class _KerasMetadataNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in _KERAS_METADATA_NOTICES)


@contextlib.contextmanager
def _without_keras_metadata_notices() -> Iterator[None]:
    """Drop the notices above from TensorFlow's logger during a save (``--verbose`` keeps them)."""
    if verbose():
        yield
        return
    logger, notices = logging.getLogger("tensorflow"), _KerasMetadataNotices()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)
