"""Everything `distributed`: where the work runs, and what each worker process keeps between tasks.

`connect(ClusterSpec(...))` yields a `Client` on a local cluster sized to the machine, on an existing
scheduler, or on a Kubernetes cluster made by the dask-kubernetes operator (a CPU worker group, plus a
GPU worker group offering the Dask resource GPU=1 that `infer` tasks ask for). On every worker it
installs two worker plugins that hold the per-process state the I/O seam and inference use:

- `ReaderPlugin`: the process's `reader.ReaderState` (the decoded-block cache shared by every reader
  and thread, sized here; the read-error log, forwarded to the scheduler's event log so
  `read_errors(client)` gathers what every worker saw, even a worker that has since died);
- `ModelPlugin`: the process's `infer.ModelCache` (a model is built once per worker process, not per
  task) and torch's threads sized to the worker's share of the cores.

`reader.py` and `infer.py` never import this module (nor `distributed`): they take that state as
objects passed in, and fall back to one lazily made default per process, the very object the plugins
hold and configure on a worker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dask.system import CPU_COUNT
from dask.utils import parse_bytes
from distributed import WorkerPlugin

from glacier_stac import k8s
from glacier_stac.reader import READ_ERROR_TOPIC, gdal_cache_bytes, label_errors

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

Kind = Literal["local", "scheduler", "kubernetes"]
KINDS: tuple[str, ...] = ("local", "scheduler", "kubernetes")
READER_PLUGIN = "glacier-stac-reader"
MODEL_PLUGIN = "glacier-stac-models"


class ClusterError(RuntimeError):
    """A cluster that cannot be reached or made; the message says what is missing."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where the work runs.

    local: a LocalCluster of worker processes on this machine (`workers`/`threads_per_worker` default
    to distributed's split of the cores; `gpu_workers > 0` makes every local worker offer GPU=1).
    scheduler: an existing scheduler at `scheduler` (tcp://host:8786). kubernetes: a DaskCluster named
    `name` in `namespace` from the manifests of `k8s.py` (`workers` CPU workers, `gpu_workers` GPU
    workers, `image` as "repository[:tag]", the GPU image being "<tag>-cuda").
    """

    kind: Kind = "local"
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None  # per worker, e.g. "4GiB"; None: distributed's share of the machine
    scheduler: str | None = None
    gpu_workers: int = 0
    image: str | None = None
    namespace: str = "glacier-stac"
    name: str = "glacier-stac"  # the Kubernetes DaskCluster
    processes: bool = True  # local: worker processes (False: threads of this process, for debugging)
    dashboard: bool = False
    block_cache_mb: int | None = None  # decoded COG blocks kept per worker; None: GLACIER_STAC_GDAL_CACHE_MB or 256

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cluster kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "scheduler" and not self.scheduler:
            raise ValueError("cluster kind 'scheduler' needs the scheduler's address (e.g. tcp://host:8786)")
        if self.kind != "scheduler" and self.scheduler:
            raise ValueError(f"a scheduler address ({self.scheduler}) is only used with kind 'scheduler', "
                             f"not {self.kind!r}")
        for key in ("workers", "threads_per_worker", "block_cache_mb"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"cluster {key} must be an integer >= 1, got {v!r}")
        if not isinstance(self.gpu_workers, int) or isinstance(self.gpu_workers, bool) or self.gpu_workers < 0:
            raise ValueError(f"cluster gpu_workers must be an integer >= 0, got {self.gpu_workers!r}")
        if self.memory_limit is not None:
            try:
                parse_bytes(self.memory_limit)
            except (ValueError, TypeError) as e:
                raise ValueError(f"cluster memory_limit {self.memory_limit!r} is not a size like '4GiB'") from e

    def block_cache_bytes(self) -> int:
        """Bytes of decoded blocks each worker keeps, decided here on the client."""
        return gdal_cache_bytes(self.block_cache_mb)


# --------------------------------------------------------------------------- worker plugins


class ReaderPlugin(WorkerPlugin):
    """Holds a worker process's reader state: sizes its block cache, forwards its read errors to the
    scheduler's event log (`read_errors` gathers them there), and empties the cache on teardown."""

    name = READER_PLUGIN
    idempotent = True  # registering it again (a second connect to the same scheduler) changes nothing

    def __init__(self, block_cache_bytes: int) -> None:
        self.block_cache_bytes = block_cache_bytes
        self.state: Any = None
        self._forward: Any = None

    def setup(self, worker: Any) -> None:
        from glacier_stac import reader

        self.state = reader.process_state()
        self.state.blocks.resize(self.block_cache_bytes)
        self._forward = functools.partial(worker.log_event, READ_ERROR_TOPIC)
        # one slot: in-process workers (processes=False) share the state and would log each error twice
        self.state.errors.forward = self._forward

    def teardown(self, worker: Any) -> None:
        if self.state is not None:
            if self.state.errors.forward is self._forward:
                self.state.errors.forward = None
            self.state.blocks.clear()


class ModelPlugin(WorkerPlugin):
    """Holds a worker process's model cache and gives torch the worker's share of the cores.

    Why: a worker with N threads runs N forwards at once; each with every core would oversubscribe
    the machine N-fold. The model is built on the first task that needs it and kept for the next ones.
    """

    name = MODEL_PLUGIN
    idempotent = True

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores  # the cores this worker process may use; None: all it sees (a pod's CPU limit)
        self.models: Any = None
        self.torch_threads = 0

    def setup(self, worker: Any) -> None:
        import torch

        from glacier_stac import infer

        self.models = infer.process_models()
        self.torch_threads = max(1, (self.cores or CPU_COUNT) // max(1, worker.state.nthreads))
        torch.set_num_threads(self.torch_threads)

    def teardown(self, worker: Any) -> None:
        if self.models is not None:
            self.models.clear()


def install(client: Client, spec: ClusterSpec | None = None, cores_per_worker: int | None = None) -> None:
    """Install the worker plugins on every worker of `client`'s cluster, present and future.
    `cores_per_worker`: when several worker processes share one machine, the cores each may use."""
    spec = spec or ClusterSpec()
    client.register_plugin(ReaderPlugin(spec.block_cache_bytes()), name=READER_PLUGIN)
    client.register_plugin(ModelPlugin(cores_per_worker), name=MODEL_PLUGIN)


# --------------------------------------------------------------------------- what workers report


@dataclass(frozen=True)
class WorkerReport:
    """What one worker process holds (for reports and tests)."""

    address: str
    pid: int
    nthreads: int
    torch_threads: int  # 0 when the model plugin is not installed
    models_built: int  # models this process built since it started
    models_cached: int
    block_cache_bytes: int  # the cache's limit
    read_errors: int  # records in this process's log


def _report(dask_worker: Any) -> dict[str, Any]:
    reader_plugin = dask_worker.plugins.get(READER_PLUGIN)
    model_plugin = dask_worker.plugins.get(MODEL_PLUGIN)
    state = getattr(reader_plugin, "state", None)
    models = getattr(model_plugin, "models", None)
    return {"address": dask_worker.address, "pid": os.getpid(), "nthreads": dask_worker.state.nthreads,
            "torch_threads": getattr(model_plugin, "torch_threads", 0),
            "models_built": models.builds if models is not None else 0,
            "models_cached": len(models) if models is not None else 0,
            "block_cache_bytes": state.blocks.max_bytes if state is not None else 0,
            "read_errors": len(state.errors) if state is not None else 0}


def workers(client: Client) -> list[WorkerReport]:
    """One report per worker, in address order."""
    got = client.run(_report)
    return [WorkerReport(**got[a]) for a in sorted(got)]


def read_errors(client: Client, assets: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Unreadable assets recorded on the cluster's workers, oldest first (from the scheduler's event log,
    so a worker that died since still counts); `assets` (a cube's `attrs["assets"]`) names each one's
    item and asset key."""
    return label_errors([dict(msg) for _, msg in client.get_events(READ_ERROR_TOPIC)], assets)


def _attempts_on_scheduler(dask_scheduler: Any, keys: Sequence[Any]) -> int:
    wanted = set(keys)
    counts: dict[Any, int] = {}
    for t in dask_scheduler.transition_log:
        if t.finish == "processing" and t.key in wanted:
            counts[t.key] = counts.get(t.key, 0) + 1
    return max(counts.values(), default=0)


def task_attempts(client: Client, keys: Sequence[Any]) -> int:
    """How many times the most-tried of `keys` was sent to a worker, from the scheduler's transition log
    (1: ran once; 1 + n: retried n times, or rerun after its worker died). Why: Dask's retries are what
    make a failing tile "retried"; counting requests at the data server cannot tell them from GDAL's own."""
    return int(client.run_on_scheduler(_attempts_on_scheduler, keys=list(keys)))


def has_gpu_workers(client: Client) -> bool:
    """True when some worker offers the Dask resource GPU (then inference tasks should ask for it)."""
    info = client.scheduler_info(n_workers=-1)
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in info.get("workers", {}).values())


# --------------------------------------------------------------------------- Kubernetes


@dataclass(frozen=True)
class KubeSpec:
    """The operator resources a `kubernetes` ClusterSpec becomes: the DaskCluster and, with GPU workers,
    the worker spec of its `gpu` DaskWorkerGroup (named `<cluster>-gpu`, as in deploy/k8s/)."""

    cluster: dict[str, Any]
    gpu_worker: dict[str, Any] | None


def _image(image: str | None) -> dict[str, str]:
    """k8s.Settings fields for "repository[:tag]" (a port in the registry host is not a tag)."""
    if not image:
        return {}
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return {"image_repo": image}
    return {"image_repo": repo, "version": tag}


def _set_arg(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def kubernetes_spec(spec: ClusterSpec) -> KubeSpec:
    """The manifests for `spec`, from the same records as deploy/k8s/ (k8s.py), without contacting Kubernetes."""
    s = k8s.Settings(namespace=spec.namespace, cluster=spec.name, cpu_workers=spec.workers or 1,
                     gpu_workers=spec.gpu_workers, **_image(spec.image))
    cluster, gpu_group = k8s.dask_cluster(s)
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    if spec.threads_per_worker is not None:
        worker["args"] = _set_arg(worker["args"], "--nthreads", str(spec.threads_per_worker))
    if spec.memory_limit is not None:
        worker["args"] = _set_arg(worker["args"], "--memory-limit", spec.memory_limit)
    return KubeSpec(cluster, gpu_group["spec"]["worker"] if spec.gpu_workers > 0 else None)


def kube_config_available(environ: Mapping[str, str] | None = None) -> bool:
    """A kube config file (KUBECONFIG or ~/.kube/config) or an in-cluster service account is present."""
    env = os.environ if environ is None else environ
    files = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p] or [str(Path.home() / ".kube" / "config")]
    if any(Path(p).is_file() for p in files):
        return True
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and Path(
        "/var/run/secrets/kubernetes.io/serviceaccount/token").is_file()


@contextlib.contextmanager
def _kubernetes(spec: ClusterSpec) -> Iterator[Any]:
    if not kube_config_available():
        raise ClusterError("cluster kind 'kubernetes' needs a Kubernetes configuration: none found in KUBECONFIG, "
                           "~/.kube/config or an in-cluster service account (use kind 'scheduler' with the address "
                           "of a running scheduler, or 'local')")
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as e:
        raise ClusterError("cluster kind 'kubernetes' needs dask-kubernetes (pip install dask-kubernetes)") from e
    ks = kubernetes_spec(spec)
    cluster = KubeCluster(name=spec.name, namespace=spec.namespace, custom_cluster_spec=ks.cluster,
                          shutdown_on_close=True, quiet=True)
    try:
        if ks.gpu_worker is not None:
            cluster.add_worker_group("gpu", custom_spec=ks.gpu_worker)
        yield cluster
    finally:
        cluster.close()


# --------------------------------------------------------------------------- connect


@contextlib.contextmanager
def connect(spec: ClusterSpec | None = None) -> Iterator[Client]:
    """A client on the cluster `spec` describes, with the worker plugins installed; closed on exit
    (a local or Kubernetes cluster made here is shut down, an existing scheduler is left running)."""
    from distributed import Client, LocalCluster

    spec = spec or ClusterSpec()
    if spec.kind == "local":
        kwargs: dict[str, Any] = {}
        if spec.memory_limit is not None:
            kwargs["memory_limit"] = spec.memory_limit
        if spec.gpu_workers:
            kwargs["resources"] = {"GPU": 1}
        # the scheduler's HTTP server (health, metrics) always starts: on a free port, so that several
        # clusters on one machine never fight over 8787; the dashboard is served on it only when asked
        with LocalCluster(n_workers=spec.workers, threads_per_worker=spec.threads_per_worker,
                          processes=spec.processes, dashboard_address=":0",
                          scheduler_kwargs={"dashboard": spec.dashboard}, silence_logs=logging.WARNING,
                          **kwargs) as lc, Client(lc) as client:
            # the workers share this machine's cores: torch in each gets its share, not all of them
            install(client, spec, cores_per_worker=max(1, CPU_COUNT // max(1, len(lc.workers))))
            yield client
    elif spec.kind == "scheduler":
        try:
            client = Client(spec.scheduler, timeout="30s")
        except OSError as e:
            raise ClusterError(f"no Dask scheduler answered at {spec.scheduler}: {e}") from e
        with client:
            install(client, spec)
            yield client
    else:
        with _kubernetes(spec) as kc, Client(kc) as client:
            install(client, spec)
            yield client
