"""pipeline.run: configs that name their errors, per-tile work equal to one big predict, resume from the store.

Runs the real chain on the session's world (rustac STAC API on loopback -> search -> cube -> predict_tile
-> Zarr store -> OBIA -> inventory) on real Dask worker processes, with the shipped cnn5 checkpoint to
keep it quick. The client process is SIGKILLed mid-run and the run started again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from glacier_stac import catalog, cube, infer, pipeline, store
from glacier_stac.testing.worlds import WorldDir

CNN5 = str(Path(pipeline.__file__).parent / "checkpoints" / "cnn5.pt")


def _raw(url: str, out: Path, years=(2021, 2022), bbox=None, **run) -> dict:
    return {"run": {"years": list(years), "checkpoint": CNN5, "tiles_in_flight": 2, **run},
            "aoi": {"bbox": bbox}, "catalog": {"url": url},
            "store": {"url": str(out / "preds.zarr")}, "inventory": {"url": str(out / "inventory.parquet")}}


def _bbox(world_dir: Path) -> list[float]:
    b = WorldDir(world_dir).aoi().geometry.boundingbox
    return [b.left, b.bottom, b.right, b.top]


@pytest.mark.parametrize("patch, message", [
    ({"run": {"years": [2021], "tiles_in_flight": 0}}, "run.tiles_in_flight must be >= 1, got 0"),
    ({"run": {"years": "twenty"}}, "run.years must be"),
    ({"run": {"years": [2035]}}, "run.years: .*2035"),
    ({"run": {"yeras": [2021]}}, r"unknown key\(s\) \['run.yeras'\]"),
    ({"run": {"years": [2021], "views": 3}}, "run.views must be 1, 2, 4 or 8 .*got 3"),
    ({"run": {"years": [2021], "checkpoint": "/nope.pt"}}, "run.checkpoint '/nope.pt' is not a file"),
    ({"aoi": {"bbox": [1, 2, 3]}}, r"aoi.bbox must be \[minx, miny, maxx, maxy\]"),
    ({"aoi": {"bbox": "1,2,3,4", "file": "x.gpkg"}}, "give exactly one of aoi.bbox, aoi.file, aoi.inventory"),
    ({"catalog": {"max_cloud": 150}}, "catalog.max_cloud must be within 0..100, got 150"),
    ({"cluster": {"kind": "yarn"}}, r"\[cluster\]: cluster kind must be one of .*'yarn'"),
    ({"cluster": {"workers": 0}}, r"\[cluster\]: cluster workers must be an integer >= 1, got 0"),
    ({"store": {"url": ""}}, "store.url is required"),
    ({"store": {"keep_features": "yes"}}, "store.keep_features must be bool, got 'yes'"),
    ({"storage": {}}, r"unknown section\(s\) \['storage'\]"),
])
def test_config_errors_name_the_key_and_value(tmp_path, patch, message):
    raw = {"run": {"years": [2021], "checkpoint": CNN5}, "aoi": {"bbox": "-147.1,61.1,-147.0,61.2"},
           "store": {"url": str(tmp_path / "s.zarr")}}
    for sec, vals in patch.items():
        raw.setdefault(sec, {}).update(vals)
    with pytest.raises(pipeline.ConfigError, match=message):
        pipeline.parse_config(raw)


def test_config_file_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "run.toml").write_text(
        '[run]\nyears = "2021-2022"\ncheckpoint = "cnn5"\n[aoi]\nbbox = "-147.1,61.1,-147.0,61.2"\n'
        '[store]\nurl = "out/preds.zarr"\n[inventory]\nurl = "out"\n')
    cfg = pipeline.load_config(tmp_path / "run.toml")
    assert cfg.years == (2021, 2022)
    assert cfg.store == str(tmp_path / "out" / "preds.zarr")
    assert cfg.inventory == str(tmp_path / "out" / "inventory.parquet")
    assert cfg.checkpoint.endswith("cnn5.pt")
    (tmp_path / "bad.toml").write_text("[run\nyears=")
    with pytest.raises(pipeline.ConfigError, match="not valid TOML"):
        pipeline.load_config(tmp_path / "bad.toml")


def test_predict_tile_equals_predict_over_a_larger_cube():
    """One tile predicted from its context alone is the same as that tile inside a whole-region predict."""
    import dask.array as da
    import xarray as xr

    from glacier_stac.models.checkpoint import load

    ckpt = load(CNN5)
    m = infer.tile_margin(ckpt)
    rng = np.random.default_rng(1)
    row0, col0 = -678_912 - 100, 49_152 - 100  # a region starting 100 px before a tile corner
    h = w = 1024 + 200
    a = rng.normal(size=(len(ckpt.features), h, w)).astype(np.float32)
    x = (col0 + 0.5 + np.arange(w)) * 10.0
    y = -(row0 + 0.5 + np.arange(h)) * 10.0
    big = xr.DataArray(da.from_array(a, chunks=(-1, 300, 300)), dims=("feature", "y", "x"),
                       coords={"feature": ckpt.features, "y": y, "x": x})
    whole = infer.predict(big, ckpt)["probability"][:, 100:1124, 100:1124].values
    ctx = big.isel(y=slice(100 - m, 1124 + m), x=slice(100 - m, 1124 + m))
    tile = infer.predict_tile(ctx, ckpt, margin=m)
    assert tile.sizes == {"class": 4, "y": 1024, "x": 1024}
    assert tile.attrs["computed_over_output"] <= 1.3
    assert np.allclose(tile["probability"].values, whole, atol=1e-5)
    with pytest.raises(ValueError, match="less than the"):
        infer.predict_tile(ctx.isel(y=slice(1, -1), x=slice(1, -1)), ckpt, margin=m - 1)
    # test-time views turn each patch: the tile's patch is the whole predict's, so they agree with views too
    whole2 = infer.predict(big, ckpt, views=2)["probability"][:, 100:1124, 100:1124].values
    tile2 = infer.predict_tile(ctx, ckpt, margin=m, views=2)
    assert tile2.attrs["views"] == 2
    assert np.allclose(tile2["probability"].values, whole2, atol=1e-5)
    # and the views changed something (this model is saturated on noise: compared in log probability)
    assert np.abs(np.log(tile2["probability"].values + 1e-30) - np.log(whole + 1e-30)).max() > 1e-2


def test_run_views_reach_the_config_for_every_count_infer_takes(tmp_path):
    raw = {"run": {"years": [2021], "checkpoint": CNN5}, "aoi": {"bbox": "-147.1,61.1,-147.0,61.2"},
           "store": {"url": str(tmp_path / "s.zarr")}}
    assert pipeline.parse_config(raw).views == 1
    for n in infer.VIEWS:
        raw["run"]["views"] = n
        assert pipeline.parse_config(raw).views == n


def _arrays(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and "_glacier_stac" not in p.parts}


@pytest.fixture(scope="module")
def client():
    from glacier_stac.cluster import ClusterSpec, connect

    with connect(ClusterSpec(workers=2, threads_per_worker=1)) as c:
        yield c


@pytest.fixture(scope="module")
def full_run(world_dir, rustac_url, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    cfg = pipeline.parse_config(_raw(rustac_url, out, bbox=_bbox(world_dir)))
    rep = pipeline.run_on(client, cfg)
    return cfg, rep, out


def test_run_maps_every_tile_year_and_writes_store_inventory_report(full_run, world_dir, rustac_url):
    cfg, rep, out = full_run
    plan = pipeline.make_plan(cfg)
    assert rep.counts()["failed"] == 0, rep.to_dict()["failures"]
    assert rep.counts()["done"] + rep.counts()["empty"] == len(plan.tiles) * 2
    assert rep.years_complete == [2021, 2022]
    ds = store.open_predictions(cfg.store, aoi=cfg.aoi, years=[2021, 2022])
    assert ds.attrs["complete"]
    # the tile-by-tile result equals one predict over the whole world's cube (no seams between tiles)
    gb = WorldDir(world_dir).grid()
    found = catalog.search(catalog.load_aoi(cfg.aoi), [2022], catalog=rustac_url, missing="record")
    whole = infer.predict(cube.build(found, gb.pad(64), 2022), cfg.checkpoint)["classes"].values[64:-64, 64:-64]
    got = store.open_predictions(cfg.store, aoi=gb.extent, years=[2022])["classes"].sel(year=2022).values
    assert got.shape == whole.shape
    agree = (got == whole).mean()
    assert agree > 0.999, f"tile-wise and whole-region classes agree on {agree:.4%} of pixels"
    report = json.loads((out / "run-report.json").read_text())
    assert report["counts"]["done"] == rep.counts()["done"] and report["wall_s"] > 0
    import geopandas as gpd

    inv = gpd.read_parquet(out / "inventory.parquet")
    assert sorted(set(inv["year"].astype(int))) == [2021, 2022]
    assert (inv["area_km2"] > 0).all()


def test_the_inventory_has_elevations_and_obia_rules_from_features_kept_in_the_store(full_run, world_dir,
                                                                                      rustac_url):
    """`glacier-stac run` outlines from the store alone: the features OBIA reads are kept beside the predictions,
    so the inventory has elevations and OBIA's terrain, thermal and SAR rules are on, as with the cube in hand."""
    import geopandas as gpd

    from glacier_stac import inventory, obia

    cfg, _, out = full_run
    plan = pipeline.make_plan(cfg)
    m = plan.margin
    for unit in plan.tiles:  # each tile's stored features are its own cube's (as the tile was mapped), packed
        ctx = unit.geobox.pad(m)
        aoi = catalog.load_aoi(ctx.extent.to_crs("EPSG:4326").geom.__geo_interface__)
        found = catalog.search(aoi, [2022], catalog=rustac_url, missing="record")
        if not any(found.for_year(2022).values()):
            continue
        want_cube = cube.build(found, ctx, 2022).isel(y=slice(m, -m), x=slice(m, -m))
        ds = store.open_predictions(cfg.store, aoi=unit.geobox.extent, years=[2022]).sel(year=2022)
        for name in ("elevation", "slope", "ndsi", "lwir11", "vv_db"):
            want = want_cube.sel(feature=name).values
            got = ds[name].values
            ok = np.isfinite(want)
            assert np.array_equal(np.isfinite(got), ok), f"{unit.key.id} {name}: no data must match the cube's"
            if ok.any():
                err = np.abs(got[ok] - want[ok]).max()
                assert err <= store.FEATURE_PACKING[name].scale / 2 + 1e-3, f"{unit.key.id} {name}: off by {err}"
    gb = WorldDir(world_dir).grid()
    found = catalog.search(catalog.load_aoi(cfg.aoi), [2022], catalog=rustac_url, missing="record")
    whole = cube.build(found, gb, 2022)
    inv = gpd.read_parquet(out / "inventory.parquet")
    assert inv[["zmin_m", "zmed_m", "zmax_m"]].notna().all().all(), "every glacier has elevations"
    assert (inv["zmin_m"] <= inv["zmed_m"]).all() and (inv["zmed_m"] <= inv["zmax_m"]).all()
    lo, hi = np.nanmin(whole.sel(feature="elevation").values), np.nanmax(whole.sel(feature="elevation").values)
    assert inv["zmin_m"].min() >= lo - 1 and inv["zmax_m"].max() <= hi + 1
    used = inventory.metadata(out / "inventory.parquet")["years"]["2022"]["obia"]["features"]
    assert set(obia.USED_FEATURES) & set(whole["feature"].values) <= set(used), used


def test_rerun_redoes_nothing(full_run, client):
    cfg, _, out = full_run
    before = _arrays(Path(cfg.store))
    inv_bytes = (out / "inventory.parquet").read_bytes()
    rep = pipeline.run_on(client, cfg)
    c = rep.counts()
    assert c["done"] == 0 and c["failed"] == 0 and c["skipped"] >= 1
    assert all(v["skipped"] for v in rep.inventory.values())
    assert _arrays(Path(cfg.store)) == before
    assert (out / "inventory.parquet").read_bytes() == inv_bytes


def test_client_killed_mid_run_resumes_to_identical_outputs(full_run, world_dir, rustac_url, tmp_path):
    cfg_ref, _, _ = full_run
    raw = _raw(rustac_url, tmp_path, years=(2021, 2022), bbox=_bbox(world_dir), tiles_in_flight=1)
    # the clean run's cluster shape: torch's intra-op threads follow it, and float sums with them
    raw["cluster"] = {"workers": 2, "threads_per_worker": 1}
    lines = [f"[{sec}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in vals.items()) for sec, vals in raw.items()]
    (tmp_path / "run.toml").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "glacier_stac.cli", "run", str(tmp_path / "run.toml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    done = tmp_path / "preds.zarr" / "_glacier_stac" / "done"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list(done.rglob("*.json")) and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its local cluster, all at once
    proc.wait(timeout=60)
    n_done = len(list(done.rglob("*.json")))
    total = len(pipeline.make_plan(cfg_ref).tiles) * 2
    assert 1 <= n_done < total, f"killed after {n_done} of {total} tile-years"
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{n_done} already done" in res.stdout
    assert _arrays(tmp_path / "preds.zarr") == _arrays(Path(cfg_ref.store))


def test_worker_killed_mid_run_gives_identical_outputs(full_run, world_dir, rustac_url, tmp_path):
    """SIGKILL the worker process that is computing a tile: the nanny restarts it, the scheduler reruns the
    task, the idempotent write lands once, and the store equals a clean run's byte for byte."""
    import threading
    from dataclasses import replace

    from glacier_stac.cluster import ClusterSpec, connect

    cfg_ref, _, _ = full_run
    cfg = replace(pipeline.parse_config(_raw(rustac_url, tmp_path, bbox=_bbox(world_dir), tiles_in_flight=1)),
                  inventory=None, report=str(tmp_path / "report.json"))
    killed = []
    with connect(ClusterSpec(workers=2, threads_per_worker=1)) as c:
        pids = c.run(os.getpid)
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(rep=pipeline.run_on(c, cfg)))
        th.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed and th.is_alive():
            # a tile's task: its predict task, or (CPU-only clusters) the one task running the whole tile
            busy = [w for w, keys in c.processing().items()
                    if any("predict-tile" in str(k) or "run_tile_task" in str(k) for k in keys)]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.05)
        th.join(timeout=900)
    assert killed, "no worker was seen computing a tile"
    rep = out["rep"]
    assert rep.counts()["failed"] == 0, rep.to_dict()["failures"]
    assert _arrays(tmp_path / "preds.zarr") == _arrays(Path(cfg_ref.store))


def test_the_deployed_config_is_a_valid_run_config(monkeypatch):
    """deploy/config/global.toml (the ConfigMap of the Kubernetes run) parses with the runner's environment."""
    cfg_path = Path(__file__).resolve().parents[1] / "deploy" / "config" / "global.toml"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(pipeline.ConfigError, match="DASK_SCHEDULER_ADDRESS"):
        pipeline.load_config(cfg_path)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://glacier-stac-scheduler:8786")
    cfg = pipeline.load_config(cfg_path)
    assert cfg.reference and cfg.store.startswith("s3://") and cfg.cluster.scheduler.endswith(":8786")
    assert Path(cfg.checkpoint).is_file()


def _fails_first(marker: str) -> int:
    """Fails on its first run (a file marks that it ran), succeeds on the next: a task Dask must retry."""
    p = Path(marker)
    if not p.exists():
        p.write_text("ran")
        raise OSError("transient")
    return 1


def test_task_attempts_count_dask_retries_not_requests(tmp_path):
    """The report's attempts come from the scheduler's transition log: a task that fails once and is retried
    ran twice, one that never fails ran once, and with no retries a failure is final after one attempt."""
    from distributed import wait

    from glacier_stac.cluster import ClusterSpec, connect, task_attempts

    with connect(ClusterSpec(workers=1, threads_per_worker=1, processes=False)) as c:
        flaky = c.submit(_fails_first, str(tmp_path / "a"), retries=1, pure=False)
        steady = c.submit(_fails_first, str(tmp_path / "a"), retries=1, pure=False)
        wait([flaky])
        wait([steady])
        assert flaky.result() == 1 and task_attempts(c, [flaky.key]) == 2
        assert task_attempts(c, [steady.key]) == 1
        assert task_attempts(c, [flaky.key, steady.key]) == 2  # a tile's graph: its most-tried task
        final = c.submit(_fails_first, str(tmp_path / "b"), retries=0, pure=False)
        wait([final])
        assert final.status == "error" and task_attempts(c, [final.key]) == 1


def test_cpu_only_tiles_run_as_one_task_gpu_clusters_keep_the_routed_graph(world_dir, rustac_url, tmp_path,
                                                                            monkeypatch):
    """Without GPU workers a tile-year is one task (its graph run inside by the synchronous scheduler, or on the
    worker thread's share of the cores); with them the graph keeps its GPU=1 predict task apart. All write the
    same bytes."""
    import dask

    from glacier_stac.models.checkpoint import load as load_checkpoint

    inner_threads = []
    real_compute = dask.compute

    def spy(*args, **kw):
        inner_threads.append(kw.get("num_workers", 1) if kw.get("scheduler") == "threads" else kw.get("scheduler"))
        return real_compute(*args, **kw)

    stores = {}
    for kind, resources in (("cpu", None), ("cpu-threads", None), ("gpu", {"GPU": 1})):
        monkeypatch.setattr(pipeline, "tile_threads", lambda kind=kind: 3 if kind == "cpu-threads" else 1)
        monkeypatch.setattr(pipeline.dask, "compute", spy)
        cfg = pipeline.parse_config(_raw(rustac_url, tmp_path / kind, years=(2022,), bbox=_bbox(world_dir)))
        plan = pipeline.make_plan(cfg)
        unit = plan.tiles[0]
        run_id = store.record_run(store.Location.of(cfg.store), {"config": cfg.describe()})
        task = pipeline.tile_graph(unit, 2022, cfg, catalog.open_catalog(rustac_url), run_id, plan.margin,
                                   load_checkpoint(cfg.checkpoint).digest(), resources)
        graph = task.__dask_graph__()
        if resources is None:
            assert len(graph) == 1 and str(next(iter(graph))).startswith("run_tile_task"), list(graph)[:3]
        else:
            assert len(graph) > 10
            assert any((lay.annotations or {}).get("resources") == {"GPU": 1} for lay in graph.layers.values())
        with dask.config.set(scheduler="sync"):
            rec = dask.compute(task, optimize_graph=False)[0]
        assert rec.valid_px > 0
        stores[kind] = _arrays(Path(cfg.store))
    assert stores["cpu"] and stores["cpu"] == stores["gpu"] == stores["cpu-threads"]
    assert inner_threads.count("sync") == 1 and 3 in inner_threads, inner_threads  # one-task tiles' inner graphs


def test_routed_tile_graphs_never_share_a_key(world_dir, rustac_url, tmp_path):
    """On GPU clusters each tile's graph is submitted as it is (its predict task routed to a GPU worker), all to one
    scheduler: two tiles whose model tasks had one key name would get one tile's prediction for both."""
    from glacier_stac.models.checkpoint import load as load_checkpoint

    cfg = pipeline.parse_config(_raw(rustac_url, tmp_path, years=(2022,), bbox=_bbox(world_dir)))
    plan = pipeline.make_plan(cfg)
    assert len(plan.tiles) >= 2
    run_id = store.record_run(store.Location.of(cfg.store), {"config": cfg.describe()})
    digest = load_checkpoint(cfg.checkpoint).digest()
    graphs = [pipeline.tile_graph(u, 2022, cfg, catalog.open_catalog(rustac_url), run_id, plan.margin, digest,
                                  {"GPU": 1}).__dask_graph__() for u in plan.tiles[:2]]
    model = [{k for k in g if "predict-tile" in str(k)} for g in graphs]
    assert all(model), "each routed graph has its model task"
    assert not (model[0] & model[1]), f"two tiles share model task keys: {model[0] & model[1]}"


def test_kept_features_cost_no_second_read(world_dir, rustac_url, tmp_path, monkeypatch):
    """The features kept beside the predictions are the cube blocks the model read (one graph per tile-year,
    shared keys): keeping them adds no COG read, and nothing is read while the graph is built."""
    import dask

    from glacier_stac import reader
    from glacier_stac.models.checkpoint import load as load_checkpoint

    calls = []
    real = reader.CogReader.read

    def counted(self, window, **kw):
        calls.append(1)
        return real(self, window, **kw)

    monkeypatch.setattr(reader.CogReader, "read", counted)
    reads = {}
    for keep in (False, True):
        raw = _raw(rustac_url, tmp_path / str(keep), years=(2022,), bbox=_bbox(world_dir))
        raw["store"]["keep_features"] = keep
        cfg = pipeline.parse_config(raw)
        plan = pipeline.make_plan(cfg)
        run_id = store.record_run(store.Location.of(cfg.store), {"config": cfg.describe()})
        task = pipeline.tile_graph(plan.tiles[0], 2022, cfg, catalog.open_catalog(rustac_url), run_id, plan.margin,
                                   load_checkpoint(cfg.checkpoint).digest())
        assert not calls, f"{len(calls)} reads while the tile's graph was built"
        with dask.config.set(scheduler="sync"):
            rec = dask.compute(task, optimize_graph=False)[0]
        assert rec.valid_px > 0
        reads[keep] = len(calls)
        calls.clear()
    assert reads[False] > 0 and reads[True] == reads[False], reads


def test_one_task_tiles_use_the_worker_threads_share_of_the_cores():
    """A one-task tile's inner graph runs on the cores the model plugin gives each worker thread (torch's
    share), so reading does not leave them idle; off a worker, one thread."""
    from glacier_stac.cluster import ClusterSpec, connect, workers

    assert pipeline.tile_threads() == 1
    with connect(ClusterSpec(workers=1, threads_per_worker=1, processes=False)) as c:
        share = workers(c)[0].torch_threads
        assert share >= 1
        assert c.submit(pipeline.tile_threads, pure=False).result() == share


def test_dry_run_estimates_from_the_measured_figures_of_the_runs_checkpoint(world_dir, rustac_url, tmp_path):
    """`--dry-run` prices a run from the scaling benchmark of its own checkpoint (the README's capacity estimate
    uses the same `estimate`): core-seconds per tile = worker seconds x its cores, reading x the remote factor."""
    import json

    res = tmp_path / "results"
    res.mkdir()
    (res / "scaling.json").write_text(json.dumps({"checkpoint": "cnn5.pt", "seconds_per_tile": 5.0, "workers": 1,
                                                  "machine": {"cpus": 2}}))
    (res / "scaling-unet.json").write_text(json.dumps({
        "checkpoint": "unet.pt", "seconds_per_tile": 9.0, "workers": 2, "machine": {"cpus": 8},
        "per_tile_s": {"model_only": 3.0, "wall_x_workers": 9.0}}))
    unet = pipeline.measured_per_tile(pipeline.DEFAULT_CHECKPOINT, res)
    assert (unet.seconds_per_tile, unet.cores_per_worker, unet.model_share) == (9.0, 4.0, 1 / 3), unet
    assert pipeline.measured_per_tile("elsewhere/cnn5.pt", res).seconds_per_tile == 5.0
    assert pipeline.measured_per_tile("mine.pt", res).seconds_per_tile == 5.0  # no result of its own: scaling.json
    assert pipeline.measured_per_tile("mine.pt", tmp_path / "none") == pipeline.Measured()

    cfg = pipeline.parse_config(_raw(rustac_url, tmp_path / "dry", years=(2021, 2022), bbox=_bbox(world_dir)))
    d = pipeline.dry_run(cfg, unet)
    todo = d["tile_years_todo"]
    assert todo == d["tiles"] * 2 and d["seconds_per_tile_measured"] == 9.0
    core_s = 9.0 * 4.0
    assert d["estimate"]["core_seconds_per_tile"] == {"reading": round(core_s * 2 / 3 * 2.0, 2),
                                                      "model_on_cpu": round(core_s / 3, 2)}
    assert d["cpu_hours_estimate"] == round(todo * (core_s * 2 / 3 * 2.0 + core_s / 3) / 3600, 2)
    assert d["cost_usd_estimate"] > 0 and d["estimate"]["limit"] in ("readers", "gpus", "network")



def _history_checkpoint(feats: list[str], mean: list[float], std: list[float], path: Path) -> Path:
    """A small cnn5 checkpoint with seeded weights reading `feats` (history features among them)."""
    import torch

    from glacier_stac.models import get_model
    from glacier_stac.models.checkpoint import Checkpoint, save

    torch.manual_seed(0)
    return save(Checkpoint.from_model(get_model("cnn5", len(feats), 4), "cnn5", feats, mean, std,
                                      required_features=["elevation"]), path)


def test_a_checkpoint_reading_history_features_gets_the_earlier_seasons(world_dir, rustac_url, client, tmp_path,
                                                                        monkeypatch):
    """A run searches and joins the seasons before each year that its checkpoint's history features read
    (`cube.history_for`), of the sensors those come from only (no SAR, and the static DEM once): a tile's
    stored classes equal one predict over the whole world's cube with those seasons joined, and differ from
    the one without them."""
    feats = ["snow_persistence_hist", "lst_max_anomaly_hist", "elevation"]
    path = _history_checkpoint(feats, [0.5, -2.0, 1000.0], [0.5, 5.0, 800.0], tmp_path / "history.pt")
    cfg = pipeline.parse_config(_raw(rustac_url, tmp_path, years=(2022,), bbox=_bbox(world_dir),
                                     checkpoint=str(path)))
    searches, real_search = [], catalog.search

    def search(*args, **kw):  # the real search, its arguments noted
        searches.append((args[1], kw.get("more_years")))
        return real_search(*args, **kw)

    monkeypatch.setattr(catalog, "search", search)
    rep = pipeline.run_on(client, cfg)
    assert rep.counts()["failed"] == 0, rep.to_dict()["failures"]
    assert searches and all(s == ([2022], {"sentinel-2": [2020, 2021], "landsat": [2020, 2021]}) for s in searches)
    monkeypatch.setattr(catalog, "search", real_search)
    gb = WorldDir(world_dir).grid()
    found = catalog.search(catalog.load_aoi(cfg.aoi), [2021, 2022], catalog=rustac_url, missing="record")
    got = store.open_predictions(cfg.store, aoi=gb.extent, years=[2022])["classes"].sel(year=2022).values

    def whole(history: int) -> np.ndarray:
        data = cube.build(found, gb.pad(64), 2022, history=history)
        return infer.predict(data, path)["classes"].values[64:-64, 64:-64]

    joined, alone = whole(cube.history_for(feats)), whole(0)
    assert (joined != alone).mean() > 0.001, "the earlier season must change this model's map, or nothing is tested"
    agree = (got == joined).mean()
    assert agree > 0.999, f"the run's classes agree with the joined cube's on {agree:.4%} of pixels"


def test_the_dry_run_counts_the_seasons_a_history_checkpoint_reads(world_dir, rustac_url, tmp_path):
    """A checkpoint reading history features makes each tile-year read the seasons before it of the sensors
    they come from: the dry run says how many and prices their bytes."""
    path = _history_checkpoint(["snow_persistence_hist", "elevation"], [0.5, 1000.0], [0.5, 800.0],
                               tmp_path / "history.pt")
    raw = _raw(rustac_url, tmp_path / "dry", years=(2022,), bbox=_bbox(world_dir))
    plain = pipeline.dry_run(pipeline.parse_config(raw), pipeline.Measured())
    raw["run"]["checkpoint"] = str(path)
    joined = pipeline.dry_run(pipeline.parse_config(raw), pipeline.Measured())
    assert (plain["history_seasons"], joined["history_seasons"]) == (0, cube.HISTORY_YEARS)
    # Sentinel-2 and Landsat are read for the year and the two before it; SAR and the DEM once
    assert plain["bytes_to_read_estimate"] < joined["bytes_to_read_estimate"] < 3 * plain["bytes_to_read_estimate"]


def test_a_tile_cube_computes_only_the_features_the_checkpoint_and_obia_read(tmp_path):
    from glacier_stac import obia

    raw = {"run": {"years": [2021], "checkpoint": CNN5}, "aoi": {"bbox": "-147.1,61.1,-147.0,61.2"},
           "store": {"url": str(tmp_path / "s.zarr")}}
    cfg = pipeline.parse_config(raw)
    feats = ["B03", "lst_max_anomaly", "lst_max_anomaly_hist", "not_made_by_any_sensor"]
    keep = pipeline.cube_features(cfg, feats)
    assert set(keep) == {"B03", "lst_max_anomaly", "lst_max_anomaly_hist"} | set(obia.USED_FEATURES)
    assert "lst_lit_anomaly" not in keep and "lst_max_lit_anomaly" not in keep  # no one reads them
    raw["store"]["keep_features"] = False
    assert pipeline.cube_features(pipeline.parse_config(raw), feats) == ["B03", "lst_max_anomaly",
                                                                        "lst_max_anomaly_hist"]
    assert "lst_lit_anomaly" in pipeline.cube_features(cfg, [*feats, "lst_lit_anomaly"])
