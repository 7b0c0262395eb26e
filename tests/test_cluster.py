"""cluster.py on real worker processes: plugins installed, a model built once per worker process, torch
threads sized to the worker, read errors of worker processes gathered on the client; the Kubernetes
spec checked as data (no Kubernetes here), and clear errors for clusters that cannot be had.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from dask.system import CPU_COUNT
from rasterio.windows import Window
from stackstac.raster_spec import RasterSpec

from glacier_stac import cluster, infer, reader
from glacier_stac.models import get_model
from glacier_stac.models.checkpoint import Checkpoint, save

FEATS = ["B03", "B08", "B11"]


def small_cube(h: int = 256, w: int = 256, chunk: int = 64) -> xr.DataArray:
    """A random cube on the global 10 m lattice cut into 16 chunks: 16 model tasks."""
    a = np.random.default_rng(1).normal(size=(len(FEATS), h, w)).astype(np.float32)
    x = (50_016 + 0.5 + np.arange(w)) * 10.0
    y = -(-679_008 + 0.5 + np.arange(h)) * 10.0
    return xr.DataArray(da.from_array(a, chunks=(-1, chunk, chunk)), dims=("feature", "y", "x"),
                        coords={"feature": FEATS, "y": y, "x": x})


def small_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = get_model("cnn5", len(FEATS), 4)
    return save(Checkpoint.from_model(model, "cnn5", FEATS, [0.0] * 3, [1.0] * 3), path)


@pytest.fixture(scope="module")
def client():
    """One single-threaded worker process, as `connect` makes it: its share of the cores is all of them,
    where the nanny's OMP_NUM_THREADS=1 alone would leave torch on one core."""
    with cluster.connect(cluster.ClusterSpec(workers=1, threads_per_worker=1, memory_limit="2GiB",
                                             block_cache_mb=32)) as c:
        yield c


def test_plugins_installed_on_worker_processes_with_torch_threads_sized(client):
    reports = cluster.workers(client)
    assert len(reports) == 1 and reports[0].pid != os.getpid()  # a real process, not this one
    share = CPU_COUNT  # the cores (affinity/cgroup-aware) for the worker's one thread
    assert all(r.torch_threads == share for r in reports), reports
    # what torch really uses inside the worker process
    assert set(client.run(torch.get_num_threads).values()) == {share}
    assert all(r.block_cache_bytes == 32 * 2**20 for r in reports)
    assert not cluster.has_gpu_workers(client)


def test_model_built_once_per_worker_process(client, tmp_path):
    path = small_checkpoint(tmp_path / "m.pt")
    cube = small_cube()
    before = {r.address: r.models_built for r in cluster.workers(client)}
    ds = infer.predict(cube, path, patch=64)
    layers = ds.probability.data.__dask_graph__().layers
    n_tasks = sum(len(layer) for name, layer in layers.items() if name.startswith("predict-"))
    got = client.compute(ds.probability.data).result()
    after = {r.address: r.models_built for r in cluster.workers(client)}
    built = {a: after[a] - before[a] for a in after}
    assert n_tasks >= 8, n_tasks  # enough tasks that a per-task build could not hide
    assert all(n <= 1 for n in built.values()) and sum(built.values()) >= 1, built
    # same numbers as in this process
    local = infer.predict(cube, path, patch=64, models=infer.ModelCache()).probability.compute(scheduler="threads")
    np.testing.assert_allclose(got, local, rtol=1e-5, atol=1e-6)


def test_read_errors_gathered_from_worker_processes(client, tmp_path):
    def read_missing(url: str) -> int:
        """A task (shipped by value): read an asset that is not there, recorded no-data in the worker's log."""
        spec = RasterSpec(epsg=32606, bounds=(500000, 6799360, 500640, 6800000), resolutions_xy=(10, 10))
        r = reader.CogReader(url=url, spec=spec, resampling=rasterio.enums.Resampling.nearest,
                             dtype=np.dtype("float32"), fill_value=np.float32(np.nan))
        assert np.isnan(r.read(Window(0, 0, 8, 8))).all()
        return os.getpid()

    url = (tmp_path / "gone" / "B03.tif").as_uri() + "?sig=SECRET"
    pid = client.submit(read_missing, url, pure=False).result()
    assert pid != os.getpid()
    assets = reader.asset_table({url: ("item-7", "B03")})
    errs = [e for e in cluster.read_errors(client, assets) if "gone" in e["asset"]]
    assert len(errs) == 1 and (errs[0]["item"], errs[0]["asset_key"]) == ("item-7", "B03")
    assert "SECRET" not in str(errs) and errs[0]["error"]
    # recorded in the worker process, not here
    assert not [e for e in reader.process_state().errors.records() if "gone" in e["asset"]]
    assert sum(r.read_errors for r in cluster.workers(client)) >= 1


def test_state_pickles_as_the_receiving_process_state():
    """A cache or reader state inside a task is never a copy: it stands for the process's own."""
    assert pickle.loads(pickle.dumps(reader.ReaderState())) is reader.process_state()
    assert pickle.loads(pickle.dumps(infer.ModelCache())) is infer.process_models()
    assert reader.process_state() is reader.process_state()


def test_scheduler_kind_installs_plugins_and_leaves_the_cluster_running():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as lc:
        with cluster.connect(cluster.ClusterSpec(kind="scheduler", scheduler=lc.scheduler_address)) as c:
            (r,) = cluster.workers(c)
            assert r.torch_threads >= 1 and r.block_cache_bytes > 0
            assert cluster.has_gpu_workers(c)
        with Client(lc) as again:  # still there after the context closed
            assert len(again.scheduler_info()["workers"]) == 1


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"kind": "cloud"}, "cluster kind must be one of"),
    ({"kind": "scheduler"}, "needs the scheduler's address"),
    ({"scheduler": "tcp://h:8786"}, "only used with kind 'scheduler'"),
    ({"workers": 0}, "workers must be an integer >= 1"),
    ({"threads_per_worker": 2.5}, "threads_per_worker must be an integer"),
    ({"gpu_workers": -1}, "gpu_workers must be an integer >= 0"),
    ({"memory_limit": "lots"}, "not a size like"),
])
def test_bad_cluster_specs_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        cluster.ClusterSpec(**kwargs)


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(cluster.ClusterError, match="no Dask scheduler answered at tcp://127.0.0.1:9"), \
            cluster.connect(cluster.ClusterSpec(kind="scheduler", scheduler="tcp://127.0.0.1:9")):
        pass


def test_kubernetes_spec_cpu_and_gpu_groups():
    spec = cluster.ClusterSpec(kind="kubernetes", workers=6, threads_per_worker=3, memory_limit="10GiB",
                               gpu_workers=2, image="registry.example:5000/team/glacier-stac:1.2.3",
                               namespace="ice", name="run-7")
    ks = cluster.kubernetes_spec(spec)
    c = ks.cluster
    assert c["kind"] == "DaskCluster" and c["apiVersion"] == "kubernetes.dask.org/v1"
    assert c["metadata"]["name"] == "run-7" and c["metadata"]["namespace"] == "ice"
    worker = c["spec"]["worker"]
    assert worker["replicas"] == 6
    (box,) = worker["spec"]["containers"]
    assert box["image"] == "registry.example:5000/team/glacier-stac:1.2.3"
    args = box["args"]
    assert args[args.index("--nthreads") + 1] == "3" and args[args.index("--memory-limit") + 1] == "10GiB"
    assert "--resources" not in args and "nvidia.com/gpu" not in str(box["resources"])
    assert c["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == "run-7"
    gpu = ks.gpu_worker
    assert gpu is not None and gpu["replicas"] == 2
    (gbox,) = gpu["spec"]["containers"]
    assert gbox["image"] == "registry.example:5000/team/glacier-stac:1.2.3-cuda"
    assert gbox["args"][gbox["args"].index("--resources") + 1] == "GPU=1"
    assert gbox["resources"]["limits"]["nvidia.com/gpu"] == "1"
    keys = [e for e in box["env"] if "KEY" in e["name"]]  # credentials come from Secrets, never as literals
    assert keys and all("secretKeyRef" in e.get("valueFrom", {}) and "value" not in e for e in keys)
    no_gpu = cluster.kubernetes_spec(cluster.ClusterSpec(kind="kubernetes", workers=1))
    assert no_gpu.gpu_worker is None


def test_kubernetes_without_config_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not cluster.kube_config_available()
    with pytest.raises(cluster.ClusterError, match="needs a Kubernetes configuration"), \
            cluster.connect(cluster.ClusterSpec(kind="kubernetes")):
        pass
    (tmp_path / "present").write_text("apiVersion: v1\nkind: Config\n")
    assert cluster.kube_config_available({"KUBECONFIG": str(tmp_path / "present")})
