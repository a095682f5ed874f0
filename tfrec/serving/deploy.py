"""TensorFlow Serving deployment files for an export folder.

``write_deployment_files(dest, models)`` writes five files, all from this module so that they stay
in sync with each other and with the export:

* ``models.config``: a ``ModelServerConfig`` text proto, one ``config`` per model with its version
  policy and the ``stable``/``canary`` version labels;
* ``batching.config`` (``BatchingParameters``) and ``monitoring.config`` (``MonitoringConfig``:
  Prometheus metrics on the REST port);
* ``docker-compose.yml``: ``tensorflow/serving`` pinned to the TF version the exports are built
  with, the export folder mounted read-only at ``/models``, the configs at ``/config``, ports
  published on 127.0.0.1 only;
* ``kubernetes.yaml``: a ConfigMap with the three configs, a Deployment (readiness probe on the
  model status endpoint, resources) and a Service.

The committed ``serving/`` files are this module's output for :data:`DEFAULT_MODELS`
(``python -m tfrec.serving.deploy serving/`` regenerates them; a test checks they match).
``tfrec export`` writes the same files into the export folder from its real versions
(``write_export_deployment_files(export_dir)``), reading which run each version comes from (its
export marker): two versions of one run are one model, never labelled stable and canary.

Version labels, as TF Serving applies them (``ServerCore::UpdateModelVersionLabelMap``):

* labels are checked *before* the versions they name are loaded, so a server that starts with
  labels in its config needs ``--allow_version_labels_for_unavailable_models=true`` (set here);
* even with that flag, a running server rejects *moving* a label to a version that is not loaded
  yet; the reload fails and the server keeps its previous config. On a live server, roll a new
  version out in two steps: first list it under ``versions`` keeping the old labels, then, once
  ``GET /v1/models/<name>`` shows it AVAILABLE, move the labels (the file this module writes).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from tfrec.files import write_bytes_atomic

IMAGE = "tensorflow/serving:2.20.0"  # the TF minor version the exports (and tensorflow-text ops) are built with
GRPC_PORT = 8500
REST_PORT = 8501
MODELS_BASE = "/models"
CONFIG_DIR = "/config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_MODELS: dict[str, list[int]] = {"search_retrieval": [1, 2], "search_ranker": [1, 2]}
READINESS_MODEL = "search_retrieval"
APP = "tfrec-serving"

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
MONITORING_CONFIG = "monitoring.config"
COMPOSE_FILE = "docker-compose.yml"
KUBERNETES_FILE = "kubernetes.yaml"
FILES = (MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG, COMPOSE_FILE, KUBERNETES_FILE)

REGENERATE = "python -m tfrec.serving.deploy"
Runs = Optional[Mapping[str, Mapping[int, str]]]  # {model: {version: the run it was exported from}}


@dataclass(frozen=True)
class Batching:
    """Server-side batching of concurrent requests (TF Serving's ``BatchingParameters``)."""

    # A ranker request carries a whole candidate list (top_k = 100 rows) as one task, and TF
    # Serving rejects a task larger than max_batch_size: keep it above the largest request.
    max_batch_size: int = 256
    # Small next to the ~8 ms a MiniLM query costs on CPU: waits just long enough to merge
    # requests that arrive together, without adding visible latency to a lone one.
    batch_timeout_micros: int = 2000
    # One batch thread per core: on a small CPU box more threads only contend with the
    # intra-op threads of the batches already running.
    num_batch_threads: int = 2
    # Bounded queue: under overload, reject quickly (UNAVAILABLE) rather than queue for seconds.
    max_enqueued_batches: int = 32

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            if getattr(self, name) < 1:
                raise ValueError("batching %s must be >= 1, got %r" % (name, getattr(self, name)))
        if self.batch_timeout_micros < 0:
            raise ValueError("batching batch_timeout_micros must be >= 0, got %r" % (self.batch_timeout_micros,))


@dataclass(frozen=True)
class Server:
    """How the server process runs: image, ports, threads, polling, resources."""

    image: str = IMAGE
    grpc_port: int = GRPC_PORT
    rest_port: int = REST_PORT
    bind_host: str = "127.0.0.1"  # docker-compose publishes ports on this host address only
    threads: int = 2  # tensorflow intra-/inter-op threads: the cores a small CPU box gives it
    config_poll_seconds: int = 60  # re-read models.config this often (new versions, moved labels)
    cpu_request: str = "2"
    cpu_limit: str = "2"
    memory_request: str = "2Gi"
    memory_limit: str = "4Gi"
    replicas: int = 2
    readiness_model: str = READINESS_MODEL
    batching: Batching = field(default_factory=Batching)

    def __post_init__(self) -> None:
        if self.grpc_port == self.rest_port:
            raise ValueError("gRPC and REST ports must differ, both are %d" % self.grpc_port)
        if self.threads < 1 or self.config_poll_seconds < 1 or self.replicas < 1:
            raise ValueError("threads, config_poll_seconds and replicas must be >= 1, got %r" % (self,))


def _header(comment: str, extra: Sequence[str] = ()) -> str:
    lines = [
        "Generated by tfrec.serving.deploy; do not edit by hand.",
        "Regenerate: %s DEST [--export-dir EXPORT_DIR]  (tfrec export writes them into the export folder)." % REGENERATE,
        *extra,
    ]
    return "".join("%s %s\n" % (comment, line) if line else "%s\n" % comment for line in lines)


def _check_models(models: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    if not models:
        raise ValueError("no models to serve (an empty export?)")
    checked: dict[str, list[int]] = {}
    for name, versions in models.items():
        if not name or not all(c.isalnum() or c in "_-." for c in name):
            raise ValueError("model name %r: use letters, digits, '_', '-' or '.'" % (name,))
        vs = sorted({int(v) for v in versions})
        if not vs or vs[0] < 1:
            raise ValueError("model %r needs positive integer versions, got %r" % (name, list(versions)))
        checked[name] = vs
    return checked


def version_plan(versions: Sequence[int], canary: bool = True,
                 runs: Optional[Mapping[int, str]] = None) -> tuple[list[int], dict[str, int]]:
    """(versions to serve, {label: version}): the newest is canary, the newest of another run stable.

    ``runs`` ({version: run}) tells versions exported from the same run apart: they are one model, so
    a rerun of an export never becomes its own canary. Versions without a known run count as distinct.
    """
    vs = sorted({int(v) for v in versions})
    if not vs:
        raise ValueError("a model needs at least one version")
    runs = runs or {}
    newest = vs[-1]
    others = [v for v in vs[:-1] if not runs.get(newest) or runs.get(v) != runs[newest]]
    if canary and others:
        return [others[-1], newest], {"stable": others[-1], "canary": newest}
    return [newest], {"stable": newest}


def models_config(models: Mapping[str, Sequence[int]], base: str = MODELS_BASE, canary: bool = True,
                  runs: Runs = None) -> str:
    """``ModelServerConfig`` text proto: per model its base path, version policy and labels."""
    checked = _check_models(models)
    out = [_header("#", [
        "Models and versions: the newest version is labelled canary and the newest one exported from",
        "another run stable (both loaded); without such a version the newest is stable (two versions of",
        "one run are the same model). TF Serving checks labels before it",
        "loads versions: run it with --allow_version_labels_for_unavailable_models=true. A running server",
        "rejects moving a label to a version it has not loaded yet: on a live server list the new version",
        "first, move the labels once it is AVAILABLE (see tfrec/serving/deploy.py).",
    ]), "model_config_list {\n"]
    for name, versions in checked.items():
        served, labels = version_plan(versions, canary, (runs or {}).get(name))
        out += ["  config {\n", '    name: "%s"\n' % name, '    base_path: "%s/%s"\n' % (base.rstrip("/"), name),
                '    model_platform: "tensorflow"\n']
        if len(served) >= 2:
            out.append("    model_version_policy { specific { %s } }\n" % " ".join("versions: %d" % v for v in served))
        else:
            out.append("    model_version_policy { latest { num_versions: 1 } }\n")
        out += ['    version_labels { key: "%s" value: %d }\n' % (label, v) for label, v in labels.items()]
        out.append("  }\n")
    out.append("}\n")
    return "".join(out)


def batching_config(batching: Optional[Batching] = None) -> str:
    """``BatchingParameters`` text proto (used with --enable_batching)."""
    b = batching or Batching()
    return _header("#", [
        "Server-side batching, sized for a small CPU box (2 cores): one batch thread per core, a 2 ms",
        "wait to merge requests that arrive together, max_batch_size above the largest single request",
        "(a ranker request is a whole candidate list, top_k rows), a bounded queue that sheds load.",
        "No padding: every input of the search exports is [batch]. A recommender whose history input is",
        "[batch, length] must not be batched with pad_variable_length_inputs (TF Serving pads with the",
        "first element of the tensor, a real item id): give it per-model batching parameters instead.",
    ]) + (
        "max_batch_size { value: %d }\n"
        "batch_timeout_micros { value: %d }\n"
        "num_batch_threads { value: %d }\n"
        "max_enqueued_batches { value: %d }\n"
        "pad_variable_length_inputs: false\n"
    ) % (b.max_batch_size, b.batch_timeout_micros, b.num_batch_threads, b.max_enqueued_batches)


def monitoring_config(path: str = PROMETHEUS_PATH) -> str:
    """``MonitoringConfig`` text proto: Prometheus metrics served on the REST port at ``path``."""
    if not path.startswith("/"):
        raise ValueError("the Prometheus path must start with '/', got %r" % (path,))
    return _header("#", ["Prometheus metrics on the REST port: GET http://HOST:REST_PORT%s" % path]) + (
        'prometheus_config {\n  enable: true\n  path: "%s"\n}\n' % path
    )


def server_args(server: Optional[Server] = None) -> list[str]:
    """The ``tensorflow_model_server`` flags both the compose file and the Deployment use."""
    s = server or Server()
    return [
        "--port=%d" % s.grpc_port,
        "--rest_api_port=%d" % s.rest_port,
        "--model_config_file=%s/%s" % (CONFIG_DIR, MODELS_CONFIG),
        "--model_config_file_poll_wait_seconds=%d" % s.config_poll_seconds,
        "--allow_version_labels_for_unavailable_models=true",
        "--enable_batching=true",
        "--batching_parameters_file=%s/%s" % (CONFIG_DIR, BATCHING_CONFIG),
        "--monitoring_config_file=%s/%s" % (CONFIG_DIR, MONITORING_CONFIG),
        "--tensorflow_intra_op_parallelism=%d" % s.threads,
        "--tensorflow_inter_op_parallelism=%d" % s.threads,
    ]


class _Dumper(yaml.SafeDumper):
    """Safe YAML dumper: multi-line strings as literal blocks (readable ConfigMap data), no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _yaml(documents: Sequence[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def compose_file(export_source: str = ".", server: Optional[Server] = None) -> str:
    """docker-compose.yml: the pinned image, the export mounted read-only at /models, local-only ports."""
    s = server or Server()
    service = {
        "image": s.image,
        "entrypoint": ["tensorflow_model_server"],
        "command": server_args(s),
        "ports": ["%s:%d:%d" % (s.bind_host, p, p) for p in (s.grpc_port, s.rest_port)],
        "volumes": [
            {"type": "bind", "source": export_source, "target": MODELS_BASE, "read_only": True},
            {"type": "bind", "source": ".", "target": CONFIG_DIR, "read_only": True},
        ],
        "deploy": {"resources": {"limits": {"cpus": s.cpu_limit, "memory": s.memory_limit.replace("Gi", "G")}}},
        "restart": "unless-stopped",
    }
    return _header("#", [
        "TF Serving for the tfrec exports: docker compose up -d, then",
        "  curl http://127.0.0.1:%d/v1/models/%s   (gRPC on 127.0.0.1:%d)" % (s.rest_port, s.readiness_model, s.grpc_port),
        "The export folder (%s, relative to this file) is mounted read-only at %s; the configs" % (export_source, MODELS_BASE),
        "beside this file at %s. Ports are published on %s only: put a proxy in front to expose them."
        % (CONFIG_DIR, s.bind_host),
    ]) + _yaml([{"services": {"tfserving": service}}])


def kubernetes_manifest(models: Mapping[str, Sequence[int]], server: Optional[Server] = None, canary: bool = True,
                        runs: Runs = None) -> str:
    """kubernetes.yaml: ConfigMap (the three configs), Deployment (probes, resources) and Service."""
    s = server or Server()
    checked = _check_models(models)
    # An export without the retrieval model (a recommender-only one) probes its first model.
    probed = s.readiness_model if s.readiness_model in checked else sorted(checked)[0]
    labels = {"app": APP}
    status_probe = {"httpGet": {"path": "/v1/models/%s" % probed, "port": s.rest_port}}
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "%s-config" % APP, "labels": labels},
        "data": {
            MODELS_CONFIG: models_config(checked, canary=canary, runs=runs),
            BATCHING_CONFIG: batching_config(s.batching),
            MONITORING_CONFIG: monitoring_config(),
        },
    }
    container = {
        "name": "tfserving",
        "image": s.image,
        "command": ["tensorflow_model_server"],
        "args": server_args(s),
        "ports": [{"name": "grpc", "containerPort": s.grpc_port}, {"name": "rest", "containerPort": s.rest_port}],
        # The REST server starts only after the initial versions are loaded, and the status
        # endpoint answers 404 until the model is known: a 200 means it can serve.
        "readinessProbe": {**status_probe, "periodSeconds": 10, "failureThreshold": 3},
        # Loading BERT-sized models and replaying warm-up takes a while on a cold node.
        "startupProbe": {**status_probe, "periodSeconds": 10, "failureThreshold": 30},
        "livenessProbe": {"tcpSocket": {"port": s.grpc_port}, "periodSeconds": 20, "failureThreshold": 3},
        "resources": {
            "requests": {"cpu": s.cpu_request, "memory": s.memory_request},
            "limits": {"cpu": s.cpu_limit, "memory": s.memory_limit},
        },
        "volumeMounts": [
            {"name": "export", "mountPath": MODELS_BASE, "readOnly": True},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP, "labels": labels},
        "spec": {
            "replicas": s.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(s.rest_port), "prometheus.io/path": PROMETHEUS_PATH,
                }},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "export", "persistentVolumeClaim": {"claimName": "%s-export" % APP, "readOnly": True}},
                        {"name": "config", "configMap": {"name": "%s-config" % APP}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": APP, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [{"name": "grpc", "port": s.grpc_port, "targetPort": "grpc"},
                      {"name": "rest", "port": s.rest_port, "targetPort": "rest"}],
        },
    }
    return _header("#", [
        "kubectl apply -f kubernetes.yaml. The export volume is a placeholder: create a PersistentVolumeClaim",
        "named %s-export holding the export folder (<model>/<version>/ as tfrec export writes it)," % APP,
        "or replace it with your storage. The ConfigMap carries models.config: regenerate and re-apply it",
        "after an export (the server re-reads it every %d s)." % s.config_poll_seconds,
    ]) + _yaml([config_map, deployment, service])


def scan_export(export_dir: Path) -> dict[str, list[int]]:
    """{model: sorted versions} of an export folder (integer version folders holding a SavedModel)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError("export folder %s does not exist" % export_dir)
    models: dict[str, list[int]] = {}
    for model_dir in sorted(p for p in export_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # Hidden ".N.tmp-*" folders are versions still being written; TF Serving ignores them too.
        versions = sorted(
            int(v.name) for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and int(v.name) > 0
            and ((v / "saved_model.pb").is_file() or (v / "saved_model.pbtxt").is_file())
        )
        if versions:
            models[model_dir.name] = versions
    return models


def deployment_files(
    models: Mapping[str, Sequence[int]],
    export_source: str = ".",
    server: Optional[Server] = None,
    canary: bool = True,
    runs: Runs = None,
) -> dict[str, str]:
    """{file name: text} of the five deployment files (nothing written); ``runs``: {model: {version: run}}."""
    s = server or Server()
    checked = _check_models(models)
    return {
        MODELS_CONFIG: models_config(checked, canary=canary, runs=runs),
        BATCHING_CONFIG: batching_config(s.batching),
        MONITORING_CONFIG: monitoring_config(),
        COMPOSE_FILE: compose_file(export_source, s),
        KUBERNETES_FILE: kubernetes_manifest(checked, s, canary=canary, runs=runs),
    }


def write_deployment_files(
    dest: Path,
    models: Mapping[str, Sequence[int]],
    export_source: str = ".",
    server: Optional[Server] = None,
    canary: bool = True,
    runs: Runs = None,
) -> list[Path]:
    """Write the five deployment files into ``dest`` atomically; ``export_source`` is the export folder relative to ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in deployment_files(models, export_source, server, canary, runs).items():
        path = dest / name
        write_bytes_atomic(path, text.encode("utf-8"))
        paths.append(path)
    return paths


def write_export_deployment_files(export_dir: Path, canary: bool = True) -> list[Path]:
    """Write the deployment files into an export folder for the versions it holds (and the runs they come from)."""
    # lazy: writing deployment files needs no TensorFlow
    from tfrec.serving.publish import version_runs

    return write_deployment_files(export_dir, scan_export(export_dir), canary=canary, runs=version_runs(export_dir))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tfrec.serving.deploy DEST [--export-dir DIR]``: write the deployment files."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Write TF Serving deployment files.")
    parser.add_argument("dest", type=Path, help="folder to write the files into (serving/ for the committed ones)")
    parser.add_argument("--export-dir", type=Path, default=None,
                        help="read models and versions from this export folder (default: search_retrieval and "
                             "search_ranker, versions 1 and 2, export folder ../export)")
    parser.add_argument("--no-canary", action="store_true", help="serve only the newest version of each model")
    args = parser.parse_args(argv)
    runs = None
    if args.export_dir is None:
        models, source = DEFAULT_MODELS, "../export"
    else:
        # lazy: writing deployment files needs no TensorFlow
        from tfrec.serving.publish import version_runs

        models, runs = scan_export(args.export_dir), version_runs(args.export_dir)
        if not models:
            parser.error("no <model>/<version>/saved_model.pb under %s" % args.export_dir)
        source = os.path.relpath(args.export_dir.resolve(), args.dest.resolve())
    for path in write_deployment_files(args.dest, models, source, canary=not args.no_canary, runs=runs):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
