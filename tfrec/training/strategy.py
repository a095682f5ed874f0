"""tf.distribute strategies from ``train.distribute``: default, mirrored, multi_worker, tpu and auto.

Create the strategy first thing in a training process: ``split_logical_cpus`` and ``multi_worker``
both need TensorFlow's runtime not to have started yet (no tensor, op or device listing before).
Then build variables, optimizers, metrics and caches inside ``strategy.scope()``. Batch sizes in
the config are global; ``per_replica_batch`` and ``scaled_learning_rate`` make the split explicit.
"""
from __future__ import annotations

import glob
import json
import math
import os
import socket
from collections.abc import Mapping
from typing import Any, Optional

from tfrec import compat
from tfrec.config.schema import DistributeConfig

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu", "auto")
LR_RULES = ("none", "linear", "sqrt")
# MultiWorkerMirroredStrategy runs "chief" and "worker" tasks; other jobs (ps, evaluator) are not training replicas.
TF_CONFIG_JOBS = ("chief", "worker")
# Environment variables that name a Cloud TPU (read by TPUClusterResolver or set by Colab).
TPU_ENV_VARS = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG", "COLAB_TPU_ADDR")
# Device files of TPUs attached to this VM (v2-v4: /dev/accel*, v5e and later: /dev/vfio/*).
TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
_GRPC_PROBE_TIMEOUT_S = 5.0
_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
)


class StrategyError(compat.CompatibilityError):
    """A distribution strategy cannot be built here (no TPU, bad TF_CONFIG, unknown device, too late).

    A CompatibilityError: the command line reports it as an error of the setup, not of tfrec.
    """


def split_logical_cpus(n: int) -> None:
    """Split the host CPU into ``n`` logical devices (for mirrored runs and tests without GPUs)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError("split_logical_cpus needs a whole number of devices >= 1, got %r" % (n,))
    tf = compat.tensorflow()
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return  # already split this way: calling twice is harmless
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError as exc:
        raise StrategyError(
            "split_logical_cpus(%d) must run before TensorFlow's runtime starts (before any tensor, op or "
            "tf.config.list_logical_devices call in this process); it already started: %s" % (n, exc)
        ) from exc


def make_strategy(cfg: DistributeConfig) -> Any:
    """Build the ``tf.distribute.Strategy`` that ``cfg.strategy`` names (see DistributeConfig)."""
    builders = {
        "default": _default,
        "mirrored": _mirrored,
        "multi_worker": _multi_worker,
        "tpu": _tpu,
        "auto": _auto,
    }
    if cfg.strategy not in builders:
        raise ValueError("train.distribute.strategy must be one of %s, got %r" % (", ".join(STRATEGIES), cfg.strategy))
    return builders[cfg.strategy](cfg)


def describe(strategy: Any) -> dict:
    """Summarise a strategy for logs and metrics.json: kind, replicas, devices, workers and a note."""
    tf = compat.tensorflow()
    kind = _kind(strategy, tf)
    devices = _devices(strategy, kind, tf)
    return {
        "kind": kind,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": devices,
        "workers": _workers(strategy, kind),
        "note": _note(kind, devices),
    }


def scaled_learning_rate(lr: float, replicas: int, rule: str) -> float:
    """Scale a one-replica learning rate to ``replicas`` replicas: none, linear (x n) or sqrt (x sqrt n)."""
    if not lr > 0:
        raise ValueError("learning rate must be > 0, got %r" % (lr,))
    _check_replicas(replicas)
    if rule == "none":
        return float(lr)
    if rule == "linear":
        return float(lr) * replicas
    if rule == "sqrt":
        return float(lr) * math.sqrt(replicas)
    raise ValueError("learning_rate_scaling must be one of %s, got %r" % (", ".join(LR_RULES), rule))


def per_replica_batch(global_batch: int, replicas: int) -> int:
    """Split a global batch evenly over replicas (an uneven split would weight replicas unequally)."""
    _check_replicas(replicas)
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError("global batch size must be a whole number >= 1, got %r" % (global_batch,))
    if global_batch % replicas:
        raise ValueError(
            "global batch size %d does not split evenly over %d replicas: use a multiple of %d (e.g. %d)"
            % (global_batch, replicas, replicas, max(replicas, global_batch // replicas * replicas))
        )
    return global_batch // replicas


def parse_tf_config(env: Mapping[str, str] = os.environ) -> dict:
    """Read and validate ``$TF_CONFIG`` for multi-worker training: {"cluster": {...}, "task": {...}}."""
    raw = env.get("TF_CONFIG", "")
    if not raw.strip():
        raise StrategyError(
            "strategy multi_worker needs $TF_CONFIG, the JSON naming every worker and this process's task, "
            "e.g. TF_CONFIG='%s' (index 1 on the second machine)" % _TF_CONFIG_EXAMPLE
        )
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StrategyError("TF_CONFIG is not valid JSON (%s): %r" % (exc, raw)) from exc

    def bad(why: str) -> StrategyError:
        return StrategyError("TF_CONFIG %s: %r (expected e.g. %s)" % (why, raw, _TF_CONFIG_EXAMPLE))

    if not isinstance(parsed, dict) or not isinstance(parsed.get("cluster"), dict):
        raise bad("needs a \"cluster\" object")
    cluster = parsed["cluster"]
    unknown = sorted(set(cluster) - set(TF_CONFIG_JOBS))
    if unknown:
        raise bad("has jobs %s; multi_worker trains with %s only" % (unknown, " and ".join(TF_CONFIG_JOBS)))
    if not cluster.get("worker") and not cluster.get("chief"):
        raise bad("names no workers in \"cluster\"")
    seen: set[str] = set()
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise bad("job %r must be a non-empty list of \"host:port\" addresses" % job)
        for address in addresses:
            if not _is_host_port(address):
                raise bad("address %r of job %r is not \"host:port\" with a port in 1..65535" % (address, job))
            if address in seen:
                raise bad("address %r appears twice" % address)
            seen.add(address)
    if len(cluster.get("chief", [])) > 1:
        raise bad("has %d chiefs; at most one" % len(cluster["chief"]))

    task = parsed.get("task")
    if not isinstance(task, dict):
        raise bad("needs a \"task\" object with \"type\" and \"index\"")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise bad("task type %r is not a job of the cluster (%s)" % (task_type, ", ".join(sorted(cluster))))
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise bad("task index %r is not in 0..%d for job %r" % (index, len(cluster[task_type]) - 1, task_type))
    return {"cluster": {job: list(cluster[job]) for job in cluster}, "task": {"type": task_type, "index": index}}


def _check_replicas(replicas: int) -> None:
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError("replica count must be a whole number >= 1, got %r" % (replicas,))


def _is_host_port(address: Any) -> bool:
    if not isinstance(address, str):
        return False
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535)


def _default(cfg: DistributeConfig) -> Any:
    tf = compat.tensorflow()
    if tf.distribute.has_strategy():
        # get_strategy() would hand back the enclosing strategy, not the default one.
        raise StrategyError("make_strategy(default) was called inside another strategy's scope; call it outside")
    return tf.distribute.get_strategy()


def _mirrored(cfg: DistributeConfig) -> Any:
    tf = compat.tensorflow()
    if cfg.devices:
        return tf.distribute.MirroredStrategy(devices=_local_devices(cfg.devices, tf))
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy(devices=[d.name for d in gpus])
    # No GPU: every logical CPU (several after split_logical_cpus), else the one CPU; describe() says which.
    cpus = tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[d.name for d in cpus])


def _local_devices(names: list[str], tf: Any) -> list[str]:
    available = {}
    for device in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(device.name)
        available[(spec.device_type, spec.device_index)] = device.name
    chosen: list[str] = []
    for name in names:
        try:
            spec = tf.DeviceSpec.from_string(name)
        except (ValueError, TypeError) as exc:
            raise StrategyError("unknown device %r in train.distribute.devices: %s" % (name, exc)) from exc
        key = ((spec.device_type or "").upper(), spec.device_index if spec.device_index is not None else 0)
        if key not in available:
            raise StrategyError(
                "unknown device %r in train.distribute.devices; this process has %s (CPU devices beyond the first "
                "exist only after split_logical_cpus)" % (name, ", ".join(sorted(available.values())))
            )
        if available[key] in chosen:
            raise StrategyError("device %r is named twice in train.distribute.devices" % name)
        chosen.append(available[key])
    return chosen


def _multi_worker(cfg: DistributeConfig) -> Any:
    tf = compat.tensorflow()
    parse_tf_config(os.environ)
    # RING runs collectives over gRPC on any device; AUTO lets TF pick NCCL between GPUs.
    implementation = tf.distribute.experimental.CommunicationImplementation
    chosen = implementation.AUTO if tf.config.list_physical_devices("GPU") else implementation.RING
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=chosen),
        )
    except (RuntimeError, ValueError) as exc:
        raise StrategyError(
            "could not start multi_worker (create it first thing in the process, before any TensorFlow op, "
            "and only once): %s" % exc
        ) from exc


def _tpu_target(cfg: DistributeConfig, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The ``tpu`` argument for TPUClusterResolver and, for error messages, where it came from."""
    if cfg.tpu:
        return cfg.tpu, "train.distribute.tpu=%r" % cfg.tpu
    named = [v for v in TPU_ENV_VARS[:3] if env.get(v)]
    if named:
        return None, "$%s=%r" % (named[0], env[named[0]])  # TPUClusterResolver reads these itself
    if env.get("COLAB_TPU_ADDR"):
        return "grpc://" + env["COLAB_TPU_ADDR"], "$COLAB_TPU_ADDR=%r" % env["COLAB_TPU_ADDR"]
    attached = [path for pattern in TPU_DEVICE_GLOBS for path in glob.glob(pattern)]
    if attached:
        return "local", "the TPU attached to this VM (%s)" % attached[0]
    return None, "train.distribute.tpu (empty), $%s and %s (none set or present)" % (
        ", $".join(TPU_ENV_VARS), ", ".join(TPU_DEVICE_GLOBS))


def locate_tpu(cfg: DistributeConfig, env: Mapping[str, str]) -> Optional[tuple[Optional[str], str]]:
    """(target for TPUClusterResolver, what pointed at it) when settings, environment or device files announce a TPU, else None.

    It only looks, never connects: asking the resolver blindly waits on cloud metadata servers
    that do not answer off Google Cloud.
    """
    return _tpu_target(cfg, env) if _tpu_plausible(cfg, env) else None


def _tpu_plausible(cfg: DistributeConfig, env: Mapping[str, str]) -> bool:
    if cfg.tpu or any(env.get(v) for v in TPU_ENV_VARS):
        return True
    return any(glob.glob(pattern) for pattern in TPU_DEVICE_GLOBS)


def _probe_grpc(target: str) -> None:
    # Connecting to a grpc:// address with nothing behind it retries for minutes: fail fast instead.
    host, _, port = target[len("grpc://"):].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("%r is not grpc://host:port" % target)
    with socket.create_connection((host, int(port)), timeout=_GRPC_PROBE_TIMEOUT_S):
        pass


def _tpu(cfg: DistributeConfig) -> Any:
    tf = compat.tensorflow()
    target, tried = _tpu_target(cfg, os.environ)
    try:
        if target and target.startswith("grpc://"):
            _probe_grpc(target)
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=target)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except Exception as exc:  # the resolver raises ValueError, OSError, URLError, NotFoundError, ...
        raise StrategyError(
            "no TPU found at %s (%s: %s): use strategy auto/default on this machine"
            % (tried, type(exc).__name__, exc)
        ) from exc


def _auto(cfg: DistributeConfig) -> Any:
    tf = compat.tensorflow()
    if _tpu_plausible(cfg, os.environ):
        try:
            return _tpu(cfg)
        except StrategyError:
            pass  # auto falls back quietly; describe() shows what was chosen
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy(devices=[d.name for d in tf.config.list_logical_devices("GPU")])
    return _default(cfg)


def _kind(strategy: Any, tf: Any) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.OneDeviceStrategy):
        return "one_device"
    # The default strategy's class is private; its name is the stable way to recognise it.
    if type(strategy).__name__ == "_DefaultDistributionStrategy":
        return "default"
    return type(strategy).__name__


def _devices(strategy: Any, kind: str, tf: Any) -> list[str]:
    if kind == "default":
        # The default strategy has no device list; ops land on the first GPU, else the CPU.
        first = tf.config.list_logical_devices("GPU")[:1] or tf.config.list_logical_devices("CPU")[:1]
        return [d.name for d in first]
    return [str(d) for d in strategy.extended.worker_devices]


def _workers(strategy: Any, kind: str) -> int:
    if kind == "multi_worker":
        spec = strategy.cluster_resolver.cluster_spec()
        return sum(spec.num_tasks(job) for job in TF_CONFIG_JOBS if job in spec.jobs)
    if kind == "tpu":
        return int(strategy.extended.num_hosts)
    return 1


def _note(kind: str, devices: list[str]) -> str:
    cpu_only = bool(devices) and all(":CPU:" in d.upper() for d in devices)
    if kind == "mirrored" and cpu_only and len(devices) > 1:
        return "no GPU: mirrored over %d logical CPU devices sharing the host's cores" % len(devices)
    if kind == "mirrored" and cpu_only:
        return "one CPU device: mirrored runs one replica (split_logical_cpus(n) before TF starts gives n CPU devices)"
    if kind == "default":
        return "one device: %s" % (devices[0] if devices else "?")
    return ""
