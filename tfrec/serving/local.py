"""Predictions from an export folder in this process: the serving clients' interface without a server.

``LocalClient(export_dir)`` loads a model's newest version (``tf.saved_model.load``) the first time
it is used and answers ``predict`` / ``predict_batched`` / ``regress`` like
:class:`tfrec.serving.grpc_client.GrpcClient`, so ``SearchService(LocalClient("export"), catalog)``
searches an export without TF Serving or ``tfrec serve``. Requests go through the development
server's own checks (:mod:`tfrec.serving.models`), so a request this client accepts is one the
server accepts too, and failures raise the same :class:`ServingError` (``NOT_FOUND`` for an
unknown model or version, ``INVALID_ARGUMENT`` for a bad input).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from tfrec import compat  # noqa: F401  (first: Keras 2 mode before TensorFlow loads)
from tfrec.serving.grpc_client import BatchedPredict, ServingError, as_input_arrays, check_version_label
from tfrec.serving.models import LoadedVersion, Limits, RequestError, discover_models, run_predict, run_regress
from tfrec.serving.savedmodel import version_folders
from tfrec.serving.tensors import decode, from_tensor_proto, make_example, to_tensor_proto


class LocalClient(BatchedPredict):
    """An export folder's SavedModels, loaded in-process on first use (newest version unless ``version=``)."""

    def __init__(self, export_dir: Union[str, Path], max_batch_size: int = 1024, max_string_bytes: int = 64 << 10,
                 models: Optional[Sequence[str]] = None) -> None:
        folder = Path(export_dir)
        if not folder.is_dir():
            raise FileNotFoundError("export folder %s not found: export a run first (tfrec export --run RUN --export-dir %s)"
                                    % (folder, folder))
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1, got %r" % (max_batch_size,))
        self.export_dir = folder
        self.max_batch_size = int(max_batch_size)
        self.limits = Limits(max_batch_size=self.max_batch_size, max_string_bytes=int(max_string_bytes),
                             max_elements=max(4 << 20, self.max_batch_size))
        self._bases = {m.name: m.base_path for m in discover_models(folder, models)}
        if not self._bases:
            wanted = " named %s" % ", ".join(models) if models else ""
            raise FileNotFoundError("no models%s in %s: expected <model>/<integer version>/saved_model.pb there"
                                    % (wanted, folder))
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._newest: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "LocalClient(%r)" % str(self.export_dir)

    def __enter__(self) -> "LocalClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Drop the loaded models (their memory is freed once nothing else holds them)."""
        with self._lock:
            self._loaded.clear()
            self._newest.clear()

    @property
    def models(self) -> list[str]:
        """The model names of the export folder."""
        return sorted(self._bases)

    def versions(self, model: str) -> list[int]:
        """The model's version numbers on disk, oldest first."""
        return sorted(version_folders(self._base(model, "versions")))

    def _base(self, model: str, method: str) -> Path:
        if model not in self._bases:
            raise ServingError("NOT_FOUND", "model %r is not in %s (models there: %s)"
                               % (model, self.export_dir, ", ".join(self.models)), model, method)
        return self._bases[model]

    def load(self, model: str, version: Optional[int] = None, label: Optional[str] = None, method: str = "load") -> LoadedVersion:
        """The loaded version of ``model`` (the newest when this client first used it, unless ``version`` names one)."""
        if label is not None:
            raise ValueError("LocalClient serves version numbers, not labels (label=%r): labels live in a server's "
                             "models.config; pass version= here, or serve the export and use GrpcClient/RestClient" % label)
        check_version_label(version, None)
        base = self._base(model, method)
        with self._lock:  # one load per version, even when batches arrive from several threads
            chosen = self._newest.get(model) if version is None else int(version)
            if chosen is None or (model, chosen) not in self._loaded:
                folders = version_folders(base)
                if not folders:
                    raise ServingError("NOT_FOUND", "model %r has no version folders in %s" % (model, base), model, method)
                chosen = max(folders) if chosen is None else chosen
                if chosen not in folders:
                    raise ServingError("NOT_FOUND", "model %r has no version %d in %s (versions: %s)"
                                       % (model, chosen, base, ", ".join(map(str, sorted(folders)))), model, method)
                if (model, chosen) not in self._loaded:
                    self._loaded[(model, chosen)] = LoadedVersion(model, chosen, folders[chosen])
                if version is None:
                    self._newest[model] = chosen
            return self._loaded[(model, chosen)]

    def predict(self, model: str, inputs: Mapping[str, Any], signature: str = "serving_default", version: Optional[int] = None,
                label: Optional[str] = None, output_filter: Optional[Sequence[str]] = None,
                timeout: Optional[float] = None) -> dict[str, np.ndarray]:
        """One Predict call: {input name: array-like} -> {output name: numpy array} (strings as str); ``timeout`` is ignored."""
        from tensorflow_serving.apis import predict_pb2

        loaded = self.load(model, version, label, "Predict")
        # The server's request path (protos in, protos out) checks names, dtypes, shapes and limits the same way.
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        for name, value in as_input_arrays(inputs).items():
            request.inputs[name].CopyFrom(to_tensor_proto(value))
        if output_filter:
            request.output_filter.extend(output_filter)
        try:
            response = run_predict(loaded, request, self.limits)
        except RequestError as err:
            raise ServingError(err.code, err.message, model, "Predict") from None
        return {name: decode(from_tensor_proto(proto)) for name, proto in response.outputs.items()}

    def regress(self, model: str, examples: Sequence[Mapping[str, Any]], signature: str = "regress",
                version: Optional[int] = None, label: Optional[str] = None, timeout: Optional[float] = None) -> np.ndarray:
        """One Regress call over tf.Examples built from feature dicts -> float32 [len(examples)]."""
        from tensorflow_serving.apis import regression_pb2

        if not examples:
            raise ValueError("regress needs at least one example, got %r" % (examples,))
        loaded = self.load(model, version, label, "Regress")
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        for features in examples:
            request.input.example_list.examples.add().CopyFrom(make_example(features))
        try:
            response = run_regress(loaded, request, self.limits)
        except RequestError as err:
            raise ServingError(err.code, err.message, model, "Regress") from None
        return np.asarray([r.value for r in response.result.regressions], dtype=np.float32)
