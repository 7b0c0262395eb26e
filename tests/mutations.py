"""Break the code the way each invariant forbids and check that the suite notices.

Each `Mutation` replaces one exact snippet of production code, runs the tests named for it, and
expects at least one of them to FAIL. The mutant lives in a private copy of the working tree (tracked
and untracked files, not ignored ones) that the tests import from, so the shared tree and anyone
working in it never see it. A mutation whose snippet is not found is itself a failure (the code
moved: update the mutation, do not drop it). The report names the first failing test and why.

    python tests/mutations.py                 # all mutations
    python tests/mutations.py -k chunk        # those whose name contains "chunk"
    python tests/mutations.py --list

New invariants (store atomicity, seam-free polygons, idempotent updates, ...) add their mutations to
MUTATIONS in the same form.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """One deliberate defect: in `path`, `old` becomes `new`; some test in `tests` must fail."""

    name: str
    invariant: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root


MUTATIONS: list[Mutation] = [
    Mutation(
        name="front-door-log-redaction-removed",
        invariant="no secret in any log record",
        path="glacier_stac/redact.py",
        old="        logging.setLogRecordFactory(_redacting(factory))",
        new="        pass",
        tests=("tests/test_front_door.py::test_signed_hrefs_that_fail_never_reach_logs_records_or_errors",),
    ),
    Mutation(
        name="front-door-leading-minus-bbox",
        invariant="the README's western-hemisphere bbox is an AOI, not an option",
        path="glacier_stac/cli.py",
        old='@catalog_app.command("search", context_settings={"ignore_unknown_options": True})',
        new='@catalog_app.command("search")',
        tests=("tests/test_front_door.py::test_bad_input_exit_2_named_no_traceback_no_secret_nothing_left"
               "[search bbox west reversed]",),
    ),
    Mutation(
        name="front-door-make-valid-dropped",
        invariant="invalid outlines are repaired the same way in every command",
        path="glacier_stac/grid.py",
        old="        fixed = make_valid(g)",
        new="        fixed = g",
        tests=("tests/test_front_door.py::test_bowtie_is_repaired_and_planned_whole",),
    ),
    Mutation(
        name="front-door-future-years-accepted",
        invariant="years no sensor has seen are refused, the same way everywhere",
        path="glacier_stac/catalog.py",
        old="    future = [int(y) for y in ys if y > this_year]",
        new="    future = []",
        tests=("tests/test_front_door.py::test_bad_input_exit_2_named_no_traceback_no_secret_nothing_left"
               "[generate years 2035]",),
    ),
    Mutation(
        name="front-door-train-out-checked-late",
        invariant="output paths are checked before the work",
        path="glacier_stac/cli.py",
        old='        check_out_file(out, "--out")\n        _check_device(device)',
        new='        _check_device(device)',
        tests=("tests/test_front_door.py::test_bad_input_exit_2_named_no_traceback_no_secret_nothing_left"
               "[train out under file]",),
    ),
    Mutation(
        name="front-door-read-error-reason-dropped",
        invariant="a read error records its underlying reason",
        path="glacier_stac/reader.py",
        old='"error": redact(error_reason(error))[:500]',
        new='"error": redact(str(error))[:500]',
        tests=("tests/test_front_door.py::test_truncated_cog_records_the_underlying_reason",),
    ),
    Mutation(
        name="front-door-untagged-dem-holes",
        invariant="undeclared -9999 DEM holes are holes, not sea",
        path="glacier_stac/synthetic/user.py",
        old="            holes = np.isin(raw, UNTAGGED_NODATA) | (raw < LOWEST_EARTH_M)",
        new="            holes = np.zeros(raw.shape, bool)",
        tests=("tests/test_front_door.py::test_render_repairs_outlines_and_fills_untagged_dem_holes",),
    ),
    # entries are added by each invariant's tests; see the module docstring
    Mutation(
        name="obia-label-per-chunk",
        invariant="no seams (3)",
        path="glacier_stac/obia.py",
        old="    pairs = _face_pairs(lab, ry[1:-1], rx[1:-1])\n",
        new="    pairs = np.zeros((0, 2), np.int64)\n",
        tests=("tests/test_obia.py::test_label_joins_objects_across_chunks",
               "tests/test_obia.py::test_seam_free_byte_identical_whatever_the_chunking"),
    ),
    Mutation(
        name="obia-mmu-ignored",
        invariant="RGI minimum mapping unit",
        path="glacier_stac/obia.py",
        old="    small_glacier = area < mmu_m2\n",
        new="    small_glacier = area < 0\n",
        tests=("tests/test_obia.py::test_minimum_mapping_unit",),
    ),
    Mutation(
        name="inventory-update-lock-removed",
        invariant="concurrent annual updates lose nothing (4)",
        path="glacier_stac/locking.py",
        old="                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
        new="                pass\n",
        tests=("tests/test_inventory.py::test_two_processes_updating_at_once",),
    ),
    Mutation("chunk-anchored-patch-grid", "2. chunk invariance", "glacier_stac/infer.py",
             "    gy0, gx0 = origin[0] + r0, origin[1] + c0  # global index of the core's first pixel",
             "    origin = (-r0, -c0)  # MUTANT: tiles anchored at the chunk's core, not the global lattice\n"
             "    gy0, gx0 = origin[0] + r0, origin[1] + c0",
             ("tests/test_infer.py::test_chunk_invariance_unet",)),
    Mutation("margin-below-radius-unet", "3. no seams", "glacier_stac/infer.py",
             "    radius = ckpt.receptive_field // 2\n    if margin is None:",
             "    radius = ckpt.receptive_field // 6\n    if margin is None:",
             ("tests/test_infer.py::test_no_seams_tiles_match_one_forward_pass[unet]",)),
    Mutation("margin-below-radius-glavitu", "3. no seams", "glacier_stac/infer.py",
             "    radius = ckpt.receptive_field // 2\n    if margin is None:",
             "    radius = ckpt.receptive_field // 6\n    if margin is None:",
             ("tests/test_infer.py::test_no_seams_tiles_match_one_forward_pass[glavitu]",)),
    Mutation("search-reads-a-pixel", "1. laziness", "glacier_stac/catalog.py",
             "            items = [normalise_item(i, allow_local=local_ok, sensor=sensor) for i in found]\n",
             "            items = [normalise_item(i, allow_local=local_ok, sensor=sensor) for i in found]\n"
             "            import rasterio  # MUTANT: the search opens an asset and reads a pixel\n"
             "            for _a in [a for i in items[:1] for a in i.assets.values() if a.href.endswith('.tif')][:1]:\n"
             "                with rasterio.open(_a.href) as _src:\n"
             "                    _src.read(1, window=((0, 1), (0, 1)))\n",
             ("tests/test_cube_world.py::test_search_and_build_read_no_pixels",)),
    Mutation("reader-zero-fill", "6. clear failure (never a silent zero)", "glacier_stac/reader.py",
             "return np.full((window.height, window.width), self.fill_value, dtype=self.dtype)",
             "return np.zeros((window.height, window.width), dtype=self.dtype)  # MUTANT: zeros, not no-data",
             ("tests/test_cube_world.py::test_missing_asset_is_recorded_nodata",)),
    Mutation("build-reads-eagerly", "1. laziness", "glacier_stac/cube.py",
             "    cube = cube.rio.write_crs(geobox.crs.to_wkt()).rio.write_transform(geobox.affine)\n",
             "    cube = cube.rio.write_crs(geobox.crs.to_wkt()).rio.write_transform(geobox.affine)\n"
             "    cube.isel(x=slice(0, 1), y=slice(0, 1)).compute(scheduler='sync')  # MUTANT: an eager read\n",
             ("tests/test_cube_units.py::test_real_pc_items_give_a_correct_lazy_graph",)),
    Mutation("metadata-ip-literal-removed", "6. clear failure (href security)", "glacier_stac/catalog.py",
             '"metadata", "169.254.169.254", "fd00:ec2::254")', '"metadata", "fd00:ec2::254")',
             ("tests/test_catalog.py::test_metadata_and_link_local_refused_even_for_local_catalogs",)),
    Mutation("link-local-check-removed", "6. clear failure (href security)", "glacier_stac/catalog.py",
             "if ip.is_link_local or (not allow_local", "if (not allow_local",
             ("tests/test_catalog.py::test_metadata_and_link_local_refused_even_for_local_catalogs",)),
    Mutation("pickled-reader-keeps-token", "6. clear failure (no token in graphs)", "glacier_stac/reader.py",
             'return {"url": self.unsigned_url, "spec": self.spec,', 'return {"url": self.url, "spec": self.spec,',
             ("tests/test_reader.py::test_gdal_cloud_settings_travel_with_the_reader",)),
    Mutation("scl-thin-cirrus-usable", "cloud masking", "glacier_stac/sensors.py",
             "SCL_INVALID = (0, 1, 3, 8, 9, 10)", "SCL_INVALID = (0, 1, 3, 8, 9)",
             ("tests/test_cube_world.py::test_values_equal_direct_rasterio_reads",
              "tests/test_cube_units.py::test_scl_classes_masked_are_esas_clouds_shadows_and_bad_pixels")),
    Mutation("terrain-nondeterministic", "7. figures over many worlds (reproducible worlds)",
             "glacier_stac/synthetic/terrain.py",
             "    phase = rng.uniform(0, 2 * np.pi, amp.shape)",
             "    phase = np.random.default_rng().uniform(0, 2 * np.pi, amp.shape)  # MUTANT: not from the seed",
             ("tests/test_synthetic_render.py::test_generated_terrain_same_seed_same_world",)),
    Mutation("gpu-group-without-resources-flag", "deploy: GPU work lands on GPU workers", "glacier_stac/k8s.py",
             '        args += ["--resources", ",".join(f"{k}={v}" for k, v in g.dask_resources)]',
             "        pass  # MUTANT: the GPU worker group no longer offers GPU=1 to Dask",
             ("tests/test_deploy.py::test_gpu_worker_groups",)),
    Mutation("k8s-quantity-int", "deploy: manifests pass the CRD schemas", "glacier_stac/k8s.py",
             'memory_limit="24Gi", gpus="1"),', 'memory_limit="24Gi", gpus=1),  # MUTANT: int quantity',
             ("tests/test_deploy.py::test_dask_kinds_match_crd_schemas",)),
    Mutation("dask-job-runner-restarts", "deploy: a failed run is final and visible", "glacier_stac/k8s.py",
             '    return {\n        "restartPolicy": "Never",', '    return {\n        "restartPolicy": "OnFailure",',
             ("tests/test_deploy.py::test_dask_job_runners_never_restart",)),
    Mutation("annual-update-overlaps", "deploy: one annual update at a time", "glacier_stac/k8s.py",
             '"concurrencyPolicy": "Forbid",', '"concurrencyPolicy": "Allow",',
             ("tests/test_deploy.py::test_annual_update_never_overlaps_and_fails_once",)),
    Mutation("literal-credentials", "deploy: credentials by Secret reference only", "glacier_stac/k8s.py",
             "[ref.spec() for ref in s.secrets]", '[{"name": ref.env, "value": "changeme"} for ref in s.secrets]',
             ("tests/test_deploy.py::test_credentials_only_by_secret_reference",)),
    Mutation("committed-yaml-stale", "deploy: committed YAML is what the code generates",
             "deploy/k8s/10-daskcluster.yaml", "        - GPU=1\n", "        - GPU=2\n",
             ("tests/test_deploy.py::test_committed_yaml_is_what_the_code_generates",)),
    Mutation(
        name="imports-product-on-synthetic",
        invariant="imports run one way: the product never imports synthetic/",
        path="glacier_stac/metrics.py",
        old="from glacier_stac.labels import Label\n",
        new="from glacier_stac.synthetic.world import Label\n",
        tests=("tests/test_imports.py",),
    ),
    Mutation(
        name="imports-circle-glaciers-world",
        invariant="imports run one way: no circles",
        path="glacier_stac/synthetic/glaciers.py",
        old="from glacier_stac.synthetic.config import Surface, WorldConfig\n",
        new="from glacier_stac.synthetic.world import Surface, WorldConfig\n",
        tests=("tests/test_imports.py",),
    ),
    Mutation(
        name="store-rewrites-done-tiles",
        invariant="idempotent, resumable writes (4)",
        path="glacier_stac/store.py",
        old="            if key.id in done:\n",
        new="            if False:\n",
        tests=("tests/test_store.py::test_rerun_skips_done_tiles_and_never_rewrites",),
    ),
    Mutation(
        name="store-undone-tiles-read-as-zero",
        invariant="clear failure, never a silent zero (6)",
        path="glacier_stac/store.py",
        old="    for name, fill in ((PROBABILITY, np.nan), (CLASSES_VAR, NODATA_CLASS), (VALID, False),\n",
        new="    for name, fill in ((PROBABILITY, 0.0), (CLASSES_VAR, 0), (VALID, False),\n",
        tests=("tests/test_store.py::test_unwritten_tiles_are_refused_or_nodata_never_zero",),
    ),
    Mutation(
        name="store-incomplete-year-visible",
        invariant="a reader never sees a half-written year as done (4)",
        path="glacier_stac/store.py",
        old="    if bad and complete_only:\n",
        new="    if False:\n",
        tests=("tests/test_store.py::test_unwritten_tiles_are_refused_or_nodata_never_zero",),
    ),
    Mutation(
        name="store-provenance-not-redacted",
        invariant="no secrets in outputs",
        path="glacier_stac/store.py",
        old="items={k: sorted(redact(str(i)) for i in v if \"://\" not in str(i))",
        new="items={k: sorted(str(i) for i in v)",
        tests=("tests/test_store.py::test_no_secret_reaches_the_store",),
    ),
    Mutation(
        name="inventory-zone-merge-disabled",
        invariant="a glacier crossing a UTM zone boundary is one polygon in the inventory",
        path="glacier_stac/obia.py",
        old="    edges = _touching_pieces(pieces, res)\n",
        new="    edges = []\n",
        tests=("tests/test_inventory_store.py::test_glacier_across_a_utm_zone_boundary_is_one_polygon",
               "tests/test_inventory_store.py::test_merge_zones_joins_only_the_same_reference_glacier"),
    ),
    Mutation(
        name="inventory-zone-merge-ignores-reference",
        invariant="pieces across a zone boundary are joined only when they are the same reference glacier",
        path="glacier_stac/obia.py",
        old='        if has_ref and pieces["ref_id"].iat[i] != pieces["ref_id"].iat[j]:',
        new='        if False:',
        tests=("tests/test_inventory_store.py::test_merge_zones_joins_only_the_same_reference_glacier",),
    ),
    Mutation(
        name="inventory-store-first-zone-only",
        invariant="every zone of the store holding the year is outlined",
        path="glacier_stac/inventory.py",
        old="for z in with_year]",
        new="for z in with_year[:1]]",
        tests=("tests/test_inventory_store.py::test_glacier_across_a_utm_zone_boundary_is_one_polygon",),
    ),
    Mutation(
        name="inventory-store-missing-year-unnamed",
        invariant="a year the store does not hold is refused naming the year and the years it holds",
        path="glacier_stac/inventory.py",
        old="        if not with_year:\n",
        new="        if not with_year and False:\n",
        tests=("tests/test_inventory_store.py::test_store_path_errors_name_the_problem",),
    ),
    Mutation("edge-patch-cut-drops-context", "2. chunk invariance / no seams: cut edge patches keep the margin",
             "glacier_stac/infer.py",
             "        return max(p0, a // q * q - m), min(p1, -(-b // q) * q + m)",
             "        return max(p0, a // q * q - m // 2), min(p1, -(-b // q) * q + m // 2)",
             ("tests/test_infer.py::test_edge_patches_cut_to_the_region_give_the_full_patches_numbers",)),
    Mutation("edge-patch-cut-off-phase", "2. chunk invariance: cut edge patches start on the pooling phase",
             "glacier_stac/infer.py",
             "        q = math.gcd(s, m)\n",
             "        q = 1\n",
             ("tests/test_infer.py::test_edge_patches_cut_to_the_region_give_the_full_patches_numbers",)),
    Mutation("edge-patch-not-cut", "cost: edge patches of an off-lattice region are cut to it",
             "glacier_stac/infer.py",
             "        computed += sum(b - a for a, b in (grid.span(k, lo_, hi_)"
             " for k in grid.owners(pos, pos + c, lo_, hi_)))",
             "        computed += len(grid.tiles(pos, pos + c)) * grid.patch",
             ("tests/test_infer.py::test_off_lattice_demo_region_cost",)),
    Mutation(
        name="model-cache-per-task",
        invariant="a model is built once per worker process, not per task",
        path="glacier_stac/infer.py",
        old="            hit = self._models.get(key)\n",
        new="            hit = None\n",
        tests=("tests/test_cluster.py::test_model_built_once_per_worker_process",
               "tests/test_infer.py::test_model_is_loaded_once_per_process"),
    ),
    Mutation(
        name="read-errors-not-gathered-from-workers",
        invariant="6. clear failure: read errors of worker processes reach the client",
        path="glacier_stac/cluster.py",
        old="        self.state.errors.forward = self._forward\n",
        new="        pass\n",
        tests=("tests/test_cluster.py::test_read_errors_gathered_from_worker_processes",),
    ),
    Mutation(
        name="torch-threads-not-sized-to-worker",
        invariant="a worker's forwards share its cores (no N-fold oversubscription)",
        path="glacier_stac/cluster.py",
        old="        torch.set_num_threads(self.torch_threads)\n",
        new="        pass\n",
        tests=("tests/test_cluster.py::test_plugins_installed_on_worker_processes_with_torch_threads_sized",),
    ),
    Mutation(
        name="reader-state-pickled-by-value",
        invariant="per-process state is never copied into tasks",
        path="glacier_stac/reader.py",
        old="        return (process_state, ())\n",
        new="        return (ReaderState, ())\n",
        tests=("tests/test_cluster.py::test_state_pickles_as_the_receiving_process_state",),
    ),
    Mutation(
        name="regime-thermal-ignored",
        invariant="7. worlds of every regime: Landsat follows the regime's lapse rate, not the maritime one",
        path="glacier_stac/synthetic/render.py",
        old="prep.debris_field, world.config.physics.thermal)",
        new="prep.debris_field)",
        tests=("tests/test_synthetic_regimes.py::test_rendered_landsat_uses_the_regime_climate",),
    ),
    Mutation(
        name="regime-heights-not-mapped",
        invariant="7. worlds of every regime: heights, ELA and ice in the regime's range",
        path="glacier_stac/synthetic/glaciers.py",
        old="    if (regime.base_m, regime.vertical_scale) != (0.0, 1.0):\n",
        new="    if False:\n",
        tests=("tests/test_synthetic_regimes.py::test_height_ranges_and_ela",),
    ),
    Mutation(
        name="regime-sar-polarisations-ignored",
        invariant="7. worlds of every regime: Arctic Sentinel-1 is HH/HV",
        path="glacier_stac/synthetic/render.py",
        old="    co, cross = world.config.physics.polarizations",
        new='    co, cross = "vv", "vh"',
        tests=("tests/test_synthetic_regimes.py::test_sensors_and_season_follow_the_regime",),
    ),
    Mutation(
        name="regime-sea-ice-not-drifted",
        invariant="7. worlds of every regime: Arctic fjords carry sea ice",
        path="glacier_stac/synthetic/glaciers.py",
        old="    if regime.sea_ice > 0:\n",
        new="    if False:\n",
        tests=("tests/test_synthetic_regimes.py::test_sea_and_calving_only_where_the_regime_has_a_coast",),
    ),
    Mutation(
        name="lapse-fit-not-robust",
        invariant="derived features: bare-ground lapse fit ignores debris and shade (biweight IRLS)",
        path="glacier_stac/cube.py",
        old="    for _ in range(8):\n        sw = w.sum()",
        new="    for _ in range(1):\n        sw = w.sum()",
        tests=("tests/test_cube_derived.py::test_lapse_fit_is_robust_to_debris_on_the_low_ground",),
    ),
    Mutation(
        name="lst-anomaly-fits-snow-too",
        invariant="derived features: the lapse line is fitted on snow-free, water-free ground only",
        path="glacier_stac/cube.py",
        old="    ok = (ndsi[lat] < 0.2) & (ndwi[lat] < 0.2) & np.isfinite(t) & np.isfinite(z)",
        new="    ok = np.isfinite(ndsi[lat]) & np.isfinite(t) & np.isfinite(z)",
        tests=("tests/test_cube_derived.py::test_snow_and_water_are_not_ground",),
    ),
    Mutation(
        name="snowline-split-off-by-one-bin-side",
        invariant="derived features: the snowline is the optimal split of snow below / bare land above",
        path="glacier_stac/cube.py",
        old="    err = np.concatenate([[0], np.cumsum(hs)]) + np.concatenate([np.cumsum(hn[::-1])[::-1], [0]])",
        new="    err = np.concatenate([[0], np.cumsum(hn)]) + np.concatenate([np.cumsum(hs[::-1])[::-1], [0]])",
        tests=("tests/test_cube_derived.py::test_snowline_splits_snow_from_bare_land",),
    ),
    Mutation(
        name="randomise-elevation-not-shifted",
        invariant="domain randomisation moves the absolute elevation per patch",
        path="glacier_stac/train.py",
        old='    shift("elevation", add=rng.uniform(-1500.0, 1500.0))',
        new="    rng.uniform(-1500.0, 1500.0)",
        tests=("tests/test_train_randomise.py::test_randomise_shifts_levels_and_keeps_contrasts",),
    ),
    Mutation(
        name="predict-tile-keys-collide",
        invariant="tiles of one run never share results (key names unique per graph)",
        path="glacier_stac/infer.py",
        old='token=f"predict-tile-{ckpt.model}"',
        new='name=f"predict-tile-{ckpt.model}"',
        tests=("tests/test_pipeline.py::test_routed_tile_graphs_never_share_a_key",),
    ),
    Mutation(
        name="pipeline-redoes-done-tiles",
        invariant="resumable from the store (4)",
        path="glacier_stac/pipeline.py",
        old="            if unit.key.id in plan.done.get(year, ()):\n",
        new="            if False:\n",
        tests=("tests/test_pipeline.py::test_rerun_redoes_nothing",),
    ),
    Mutation(
        name="pipeline-unreadable-asset-recorded-done",
        invariant="a tile whose assets fail is retried, then recorded failed, never done with no-data (6)",
        path="glacier_stac/pipeline.py",
        old='on_read_error="raise",',
        new='on_read_error="nodata",',
        tests=("tests/test_fault_tolerance.py::test_a_tile_whose_assets_fail_is_retried_then_failed_others_complete"
               "_rerun_retries_only_it",),
    ),
    Mutation(
        name="pipeline-failing-tile-not-retried",
        invariant="a failing tile is retried before it is recorded failed",
        path="glacier_stac/pipeline.py",
        old="fut = client.compute(task, retries=cfg.retries, optimize_graph=False)",
        new="fut = client.compute(task, retries=0, optimize_graph=False)",
        tests=("tests/test_fault_tolerance.py::test_a_tile_whose_assets_fail_is_retried_then_failed_others_complete"
               "_rerun_retries_only_it",),
    ),
    Mutation(
        name="pipeline-redoes-done-tiles-after-scheduler-restart",
        invariant="resumable from the store, not the scheduler's memory (4)",
        path="glacier_stac/pipeline.py",
        old="            if unit.key.id in plan.done.get(year, ()):\n",
        new="            if False:\n",
        tests=("tests/test_fault_tolerance.py::test_scheduler_killed_mid_run_rerun_finishes_identical_recomputing"
               "_only_unfinished",),
    ),
    Mutation(
        name="deploy-inventory-not-mounted",
        invariant="the runners write the inventory to a persistent volume, not the pod's disk",
        path="glacier_stac/k8s.py",
        old='        mounts.append({"name": "inventory", "mountPath": inventory})\n',
        new="",
        tests=("tests/test_deploy.py::test_runners_write_the_inventory_to_a_persistent_volume",),
    ),
    Mutation("edge-remainder-not-folded", "cost: a thin region-edge remainder is computed by its neighbour's patch",
             "glacier_stac/infer.py",
             "        f0, f1 = first < self.fold, last < self.fold\n",
             "        f0, f1 = False, False\n",
             ("tests/test_infer.py::test_off_lattice_demo_region_cost",)),
    Mutation("edge-patch-full-not-cut", "cost: edge patches are cut to the region (the model sees less padding)",
             "glacier_stac/infer.py",
             "        return max(p0, a // q * q - m), min(p1, -(-b // q) * q + m)",
             "        return p0, p1",
             ("tests/test_infer.py::test_off_lattice_demo_region_cost",)),
    Mutation("fold-decided-per-chunk", "cost: which patch computes a pixel depends on the region, not on the "
             "chunk asking (the numbers do not show it; the plan's cost must be what the model sees)",
             "glacier_stac/infer.py",
             "    ry, rx = ((extent.y0, extent.y1), (extent.x0, extent.x1)) if extent is not None else "
             "((-math.inf, math.inf),) * 2",
             "    ry, rx = (gy0, gy0 + h), (gx0, gx0 + w)",
             ("tests/test_infer.py::test_folded_edge_remainders_same_bytes_whatever_the_chunking",)),
    Mutation("folded-remainder-left-empty", "6. never a silent gap: a folded remainder's pixels are predicted",
             "glacier_stac/infer.py",
             "        a = (k - 1) * s if self.owner(k - 1, lo, hi) == k else k * s - self._lo",
             "        a = k * s - self._lo",
             ("tests/test_infer.py::test_folded_edge_remainders_same_bytes_whatever_the_chunking",)),
    Mutation("region-predict-lends-whole-blocks", "15. a region-wide predict's memory does not grow with the "
             "region: a neighbour lends only strips of halo width, never its whole block",
             "glacier_stac/infer.py",
             "    return {_way(dy, dx): _edge(a, dy, dx, halo) for dy, dx in ways}",
             "    return {_way(dy, dx): a for dy, dx in ways}",
             ("tests/test_infer.py::test_region_predict_reads_each_block_inside_its_model_task_and_borrows_only_strips",)),
    Mutation("halo-strip-is-a-view", "15. a halo strip is a copy: a view keeps the whole neighbour block alive",
             "glacier_stac/infer.py",
             "    return block[:, _side(dy, halo[0], block.shape[1]), _side(dx, halo[1], block.shape[2])].copy()",
             "    return block[:, _side(dy, halo[0], block.shape[1]), _side(dx, halo[1], block.shape[2])]",
             ("tests/test_infer.py::test_region_predict_reads_each_block_inside_its_model_task_and_borrows_only_strips",)),
    Mutation("batchnorm-fold-drops-batchnorm", "inference models compute the trained function (BatchNorm folded, "
             "not dropped)",
             "glacier_stac/models/inference.py",
             "                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()",
             "                seq[i], seq[i + 1] = conv, nn.Identity()",
             ("tests/test_infer.py::test_models_built_for_inference_give_the_same_probabilities[unet]",)),
    Mutation("store-model-computed-per-array", "writing a tile computes its prediction once (one model task per "
             "tile shared by the three arrays)",
             "glacier_stac/store.py",
             "    pb, cb, vb = (a.to_delayed(optimize_graph=False) for a in (prob, cls, val))",
             "    pb, cb, vb = (a.to_delayed() for a in (prob, cls, val))",
             ("tests/test_store.py::test_write_runs_the_model_once_per_tile",)),
    Mutation("store-unwritable-path-traceback", "clear failure: an unwritable store path is a StoreError (6)",
             "glacier_stac/store.py",
             "                p.mkdir(parents=True, exist_ok=True)\n",
             "                pass\n",
             ("tests/test_store.py::test_bad_stores_get_clear_errors",)),
    Mutation("store-layout-version-unchecked", "a store of another layout version is refused, naming it (6)",
             "glacier_stac/store.py",
             '    if attrs.get("layout_version") != LAYOUT_VERSION:\n',
             "    if False:\n",
             ("tests/test_store.py::test_bad_stores_get_clear_errors",)),
    Mutation("store-run-config-not-redacted", "no signed URL or token reaches the store",
             "glacier_stac/store.py",
             "    body = redact(json.dumps(",
             "    body = (json.dumps(",
             ("tests/test_store.py::test_signed_url_catalog_leaves_no_token_in_the_store",)),
    Mutation("capacity-readme-behind-the-estimate", "the README's capacity figures are pipeline.estimate's output "
             "from the recorded per-tile figures and CostAssumptions (issue 12)",
             "glacier_stac/pipeline.py",
             "    usd_per_cpu_node_hour: float = 0.90",
             "    usd_per_cpu_node_hour: float = 1.20",
             ("tests/test_capacity_estimate.py",)),
    # issue 14: rock glaciers as their own class
    Mutation("checkpoint-classes-any-order", "a checkpoint's output index is the Label code: its classes are a "
             "prefix of the vocabulary",
             "glacier_stac/models/checkpoint.py",
             "        if len(self.classes) < 2 or self.classes != list(CLASSES[:len(self.classes)]):\n",
             "        if len(self.classes) < 2:\n",
             ("tests/test_rock_glacier_classes.py::test_checkpoint_classes_must_be_a_prefix_of_the_vocabulary",)),
    Mutation("appended-features-start-random", "features appended to a fine-tuned model start with zero weight: "
             "the grown model begins where the checkpoint was (issue 13)",
             "glacier_stac/train.py",
             "    out = value.new_zeros((value.shape[0], value.shape[1] - n_old + n_features, *value.shape[2:]))\n",
             "    out = torch.randn((value.shape[0], value.shape[1] - n_old + n_features, *value.shape[2:]))\n",
             ("tests/test_rock_glacier_classes.py::test_fine_tuning_with_appended_features_starts_where_the_checkpoint_was",)),
    Mutation("twin-head-starts-fresh", "the four-class twin fine-tuned from a five-class checkpoint keeps the "
             "checkpoint's rows for the classes it has: both arms of issue 14's comparison start from the same weights",
             "glacier_stac/train.py",
             "            n = min(own[k].shape[0], v.shape[0])\n",
             "            n = v.shape[0] if own[k].shape[0] > v.shape[0] else 0\n",
             ("tests/test_rock_glacier_classes.py::test_four_class_twin_of_a_five_class_model_keeps_its_classes",)),
    Mutation("twin-false-debris-higher-is-better", "issue 14's twin check: more false debris than the "
             "four-class twin is a loss, not a gain",
             "benchmarks/accuracy.py",
             '("iou_debris_worst", 1), ("false_debris_share_worst", -1))',
             '("iou_debris_worst", 1), ("false_debris_share_worst", 1))',
             ("tests/test_rock_glacier_classes.py::test_twin_comparison_fails_where_the_class_costs_glacier_or_debris",)),
    Mutation("snow-persistence-over-every-scene", "snow persistence counts usable acquisitions only: a clouded "
             "scene is no observation of bare ground (issue 13)",
             "glacier_stac/cube.py",
             "        n += ok\n",
             "        n += 1\n",
             ("tests/test_cube_units.py::test_snow_persistence_counts_snow_over_usable_acquisitions_only",)),
    Mutation("snow-persistence-silent-zero", "a pixel without a usable acquisition has no snow persistence (NaN), "
             "not a silent zero that reads as bare ground",
             "glacier_stac/cube.py",
             "return np.where(n > 0, snow / n, np.float32(np.nan))",
             "return np.where(n > 0, snow / n, np.float32(0))",
             ("tests/test_cube_units.py::test_snow_persistence_counts_snow_over_usable_acquisitions_only",)),
    Mutation("world-cache-keyed-on-cube-features", "a cached world is redrawn when what draws it changes, not "
             "when a sensor only gains or renames a cube feature",
             "glacier_stac/synthetic/writer.py",
             'CUBE_SIDE = ("features", "kernel", "count_feature")',
             "CUBE_SIDE = ()",
             ("tests/test_synthetic_physics.py::test_a_cached_world_is_redrawn_when_what_draws_it_changes_not_when_a_cube_feature_is_added",)),
    Mutation("world-cache-blind-to-sensor-bands", "a cached world drawn with other band scales is redrawn",
             "glacier_stac/synthetic/writer.py",
             "    h.update(repr((drawn, sensors.SCL",
             "    h.update(repr(([], sensors.SCL",
             ("tests/test_synthetic_physics.py::test_a_cached_world_is_redrawn_when_what_draws_it_changes_not_when_a_cube_feature_is_added",)),
    Mutation("rock-glacier-counted-as-glacier", "rock glaciers are never glacier area (RGI keeps them out)",
             "glacier_stac/metrics.py",
             "GLACIER = (Label.CLEAN_ICE, Label.DEBRIS_ICE)  #",
             "GLACIER = (Label.CLEAN_ICE, Label.DEBRIS_ICE, Label.ROCK_GLACIER)  #",
             ("tests/test_rock_glacier_classes.py::test_metrics_score_rock_glaciers_apart_from_glaciers",)),
    Mutation("ndsi-baseline-grows-with-the-vocabulary", "the NDSI baseline keeps the four base classes",
             "glacier_stac/baselines.py",
             "from glacier_stac.labels import BASE_CLASSES, Label",
             "from glacier_stac.labels import CLASSES as BASE_CLASSES, Label",
             ("tests/test_rock_glacier_classes.py::test_ndsi_baseline_keeps_the_base_classes",)),
    Mutation("training-classes-ignore-the-truth", "a model of worlds with rock glaciers predicts them",
             "glacier_stac/train.py",
             "        names = list(CLASSES[:max(len(BASE_CLASSES), top + 1)])",
             "        names = list(BASE_CLASSES)",
             ("tests/test_rock_glacier_classes.py::test_training_classes_follow_the_truth",)),
    Mutation("moraine-labelled-rock-glacier", "worlds without rock glaciers are byte for byte what they were; "
             "the truth carries rock glaciers exactly",
             "glacier_stac/synthetic/world.py",
             "        out[s == Surface.ROCK_GLACIER] = Label.ROCK_GLACIER",
             "        out[s >= Surface.MORAINE] = Label.ROCK_GLACIER",
             ("tests/test_rock_glaciers.py::test_regimes_without_rock_glaciers_are_byte_identical",)),
    Mutation("rock-glacier-front-gentle", "rock glaciers have a steep front and lateral margins",
             "glacier_stac/synthetic/rock_glaciers.py",
             "FRONT_DEG = 38.0",
             "FRONT_DEG = 12.0",
             ("tests/test_rock_glaciers.py::test_lobe_has_a_steep_front_and_transverse_ridges",)),
    Mutation("rock-glacier-as-warm-as-rock", "rock glaciers are a few kelvin cooler than the rock around them",
             "glacier_stac/synthetic/spectra.py",
             "        t[rg] = (th.rock_t0 - th.rock_glacier_dt - th.lapse * z + 9.0 * lit)[rg]",
             "        t[rg] = (th.rock_t0 - th.lapse * z + 9.0 * lit)[rg]",
             ("tests/test_rock_glaciers.py::test_rock_glaciers_are_scree_in_optics_and_a_few_kelvin_cooler",)),
    Mutation("rock-glacier-creep-per-scene", "creep changes the radar texture between years, not within one",
             "glacier_stac/synthetic/render.py",
             'rng_for(world.config.seed, None, f"creep-{acq.year}")',
             'rng_for(world.config.seed, acq, f"creep-{acq.year}")',
             ("tests/test_rock_glaciers.py::test_creep_changes_the_radar_texture_between_years_not_within_one",)),
    Mutation("render-class-column-ignored", "synthetic render draws rock glaciers from a class column",
             "glacier_stac/synthetic/user.py",
             "    rock_geoms = [g for g, rock in classed if rock]",
             "    rock_geoms = []",
             ("tests/test_rock_glaciers.py::test_render_draws_rock_glaciers_from_a_class_column",)),
    Mutation("obia-rock-glacier-joins-glacier", "outlines never count rock glaciers as glacier area",
             "glacier_stac/obia.py",
             "                 & (pred[CLASSES_VAR] != Label.ROCK_GLACIER))",
             "                 )",
             ("tests/test_rock_glacier_classes.py::test_outlines_keep_rock_glaciers_in_their_own_layer",)),
    Mutation("inventory-rock-glacier-layer-is-glaciers", "the inventory keeps rock glaciers in their own layer",
             "glacier_stac/inventory.py",
             "    layers = [obia.rock_glacier_outlines(p, _features_for(features, p, several), rules) for p in parts]",
             "    layers = [obia.outlines(p, _features_for(features, p, several), rules) for p in parts]",
             ("tests/test_rock_glacier_classes.py::test_inventory_keeps_rock_glaciers_in_their_own_layer",)),
    Mutation("sensor-kernel-by-name", "a sensor is one record: its `kernel` field, not its name, picks the cube's "
             "per-tile kernel (a second optical sensor needs no table entry)",
             "glacier_stac/cube.py",
             "            KERNELS[sensor.kernel](*args, out=view, **params)",
             '            KERNELS[{"sentinel-2": "optical", "sentinel-1": "sar", "landsat": "thermal", '
             '"copdem": "dem"}[sensor.name]](*args, out=view, **params)',
             ("tests/test_sensors.py::test_landsat_oli_is_one_record_read_by_the_optical_kernel_with_its_own_mask",)),
    Mutation("sensor-mask-decoder-fixed", "a sensor's mask band is decoded as its record says (QA bits, SCL classes)",
             "glacier_stac/cube.py",
             '        params["usable"] = sensor.usable',
             '        params["usable"] = S.scl_valid',
             ("tests/test_sensors.py::test_landsat_oli_is_one_record_read_by_the_optical_kernel_with_its_own_mask",)),
    Mutation("normalise-ignores-searched-record", "every asset the searching record reads passes the href check, "
             "whichever record of the collection searched it",
             "glacier_stac/catalog.py",
             '    sensor = sensor or S.BY_COLLECTION.get(d.get("collection", ""))',
             '    sensor = S.BY_COLLECTION.get(d.get("collection", ""))',
             ("tests/test_sensors.py::test_every_asset_the_searched_record_reads_is_checked",)),
    Mutation("sensor-record-shape-unchecked", "clear failure: a sensor record its kernel cannot fill is refused "
             "when declared",
             "glacier_stac/sensors.py",
             "        if (n_data, len(self.features)) != (kind.data_bands, kind.features):",
             "        if False:",
             ("tests/test_sensors.py::test_a_record_the_cube_could_not_use_is_refused_when_declared",)),
    Mutation("obia-debris-weak-link-ignored", "OBIA: a debris tongue parted from its clean ice by a dip under "
             "the threshold stays joined to it (hysteresis)",
             "glacier_stac/obia.py",
             '    debris["touches_ice"] = _flags(nd, pairs[:, 0] if pairs.size else pairs)[1:] | linked_to_ice(',
             '    debris["touches_ice"] = _flags(nd, pairs[:, 0] if pairs.size else pairs)[1:] & linked_to_ice(',
             ("tests/test_obia_rules.py::test_cold_steep_debris_joined_to_ice_through_weak_pixels_is_kept",)),
    Mutation("obia-debris-edge-of-data-ignored", "OBIA: cold debris cut by the edge of the data is not judged "
             "isolated",
             "glacier_stac/obia.py",
             '    context = debris["touches_ice"].to_numpy(bool) | debris["at_edge"].to_numpy(bool)',
             '    context = debris["touches_ice"].to_numpy(bool)',
             ("tests/test_obia_rules.py::test_cold_debris_cut_by_the_edge_of_the_data_is_kept",)),
    Mutation("obia-unknown-temperature-drops-debris", "OBIA: a rule that cannot be evaluated does not drop",
             "glacier_stac/obia.py",
             "(cold & (gentle | context)) | (np.isnan(anomaly) & gentle)",
             "(cold & (gentle | context))",
             ("tests/test_obia_rules.py::test_unknown_temperature_is_no_reason_to_drop_gentle_debris",)),
    Mutation("obia-holes-filled-whatever-the-confidence", "OBIA: holes closed off only by doubtful ice are not "
             "filled",
             "glacier_stac/obia.py",
             "            if prob is not None and small.any():",
             "            if False:",
             ("tests/test_obia_rules.py::test_hole_closed_off_only_by_doubtful_ice_is_not_filled",)),
    Mutation("obia-mmu-per-piece-of-a-reference-glacier", "OBIA: the MMU applies to a reference glacier's pieces "
             "together",
             "glacier_stac/obia.py",
             "    groups = reference_groups(gid, ng, refr) if refr is not None else None",
             "    groups = None",
             ("tests/test_obia_rules.py::test_mmu_applies_to_the_pieces_of_one_reference_glacier_together",)),
    Mutation("store-zone-creation-races", "writers creating one zone at once all succeed (same bytes)",
             "glacier_stac/store.py",
             "    except zarr.errors.ContainsArrayError:  # created by another writer",
             "    except ZeroDivisionError:  # created by another writer",
             ("tests/test_store.py::test_writers_creating_one_zone_at_once_all_succeed",)),
    Mutation("store-half-created-zone-used", "a zone is used only once all its arrays and coordinates are stored",
             "glacier_stac/store.py",
             '            if name not in root or not root[name].attrs.get("complete"):\n',
             "            if name not in root:\n",
             ("tests/test_store.py::test_writers_creating_one_zone_at_once_all_succeed",)),
    Mutation("obia-debris-margin-narrow-buffer", "area uncertainty: debris-covered margins get the wider buffer",
             "glacier_stac/obia.py",
             "            + f * area_uncertainty_m2(geoms, res, unc.debris_margin_px))",
             "            + f * area_uncertainty_m2(geoms, res, unc.clean_margin_px))",
             ("tests/test_obia_uncertainty.py::test_debris_margins_get_the_wider_buffer",)),
    Mutation("obia-doubt-ring-counts-sure-rock", "area uncertainty: only possibly-ice pixels beside a glacier count",
             "glacier_stac/obia.py",
             "    d_out = int((ring & (gid[win] == 0) & valid[win] & (p >= unc.doubt_low)).sum())",
             "    d_out = int((ring & (gid[win] == 0) & valid[win]).sum())",
             ("tests/test_obia_uncertainty.py::test_doubted_pixels_inside_and_beside_the_glacier_count_within_the_ring_only",)),
    Mutation("obia-uncertainty-sources-added-linearly", "area uncertainty: independent sources add in quadrature",
             "glacier_stac/obia.py",
             "    return np.hypot(margin, cls), margin, cls",
             "    return margin + cls, margin, cls",
             ("tests/test_obia_uncertainty.py::test_doubted_pixels_inside_and_beside_the_glacier_count_within_the_ring_only",)),
    Mutation("obia-new-ice-within-reach-counted", "area uncertainty: only new ice beyond a front's advance "
             "since the earlier year is doubted", "glacier_stac/obia.py",
             "    return obj & ~near[oy:oy + obj.shape[0], ox:ox + obj.shape[1]]",
             "    return obj & ~near[:obj.shape[0], :obj.shape[1]]",
             ("tests/test_obia_uncertainty.py::test_new_ice_beyond_a_front_advance_counts_whole_in_the_class_term",)),
    Mutation("obia-new-ice-counted-half", "area uncertainty: new ice beyond a front's advance counts whole",
             "glacier_stac/obia.py",
             '            "doubt_px": (d_in + d_out) / 2 + d_new, "new_px": d_new}',
             '            "doubt_px": (d_in + d_out + d_new) / 2, "new_px": d_new}',
             ("tests/test_obia_uncertainty.py::test_new_ice_beyond_a_front_advance_counts_whole_in_the_class_term",)),
    Mutation("inventory-earlier-year-not-read", "the annual update reads the earlier year from the inventory: "
             "the new-ice uncertainty term (D_new) counts ice farther from it than a front advances",
             "glacier_stac/inventory.py",
             "        outl = _outlines_of(parts, features, rules, ref, uncertainty, earlier_outlines(old, year))",
             "        outl = _outlines_of(parts, features, rules, ref, uncertainty, None)",
             ("tests/test_obia_uncertainty.py::test_annual_update_reads_the_earlier_year_from_the_inventory",)),
    Mutation("obia-thermal-bands-not-grouped", "the one-pass thermal reference groups temperatures by band",
             "glacier_stac/obia.py",
             "    code, temp = code[order], temp[order]",
             "    code, temp = code[order], temp",
             ("tests/test_obia_uncertainty.py::test_thermal_anomaly_in_one_pass_equals_the_per_band_scans",)),
    Mutation("obia-hole-outside-reference-filled", "a hole mostly outside every reference glacier stays open "
             "(the gap between glaciers the reference keeps apart)", "glacier_stac/obia.py",
             "                small &= 2 * np.bincount(hl[outside[sl]], minlength=nh + 1) <= size\n",
             "                pass\n",
             ("tests/test_obia_rules.py::test_hole_outside_every_reference_glacier_stays_open",)),
    Mutation("obia-new-debris-kept", "OBIA with Rules.drop_new_debris on (off by default): debris beyond a "
             "front's advance onto ground the earlier year saw ice-free is dropped", "glacier_stac/obia.py",
             "        debris_lab, nd, debris_new = drop_new_debris(debris_lab, earlier)",
             "        debris_new = 0",
             ("tests/test_obia_uncertainty.py::test_debris_beyond_a_front_advance_from_the_earlier_glaciers_is_dropped",)),
    Mutation("obia-canonical-block-offset-lost", "blocked renumbering equals the whole-scene raster order",
             "glacier_stac/obia.py",
             "            first[values] = np.minimum(first[values], nz[at] + rows.start * row)",
             "            first[values] = np.minimum(first[values], nz[at])",
             ("tests/test_obia_uncertainty.py::test_canonical_in_row_blocks_equals_the_whole_scene_renumbering",)),
    Mutation("obia-divide-window-too-small", "divides from glacier windows see every reference pixel within reach",
             "glacier_stac/obia.py",
             "    reach = int(np.ceil(max_m / grid.res)) + 1",
             "    reach = 1",
             ("tests/test_obia_uncertainty.py::test_divides_from_glacier_windows_pick_a_nearest_reference_within_reach",)),
    Mutation("demo-world-off-lattice", "the demo's world fills the fewest tiles of the global lattice",
             "glacier_stac/demo.py",
             "    offset = 0.0 if n_tiles % 2 == 0 else tile_m / 2",
             "    offset = tile_m / 4",
             ("tests/test_demo.py::test_demo_world_fills_the_fewest_tiles",)),
    Mutation("sea-ice-not-oversampled", "sea ice and melange before a calving front are sampled more (issue 13)",
             "glacier_stac/train.py",
             "         + front_weight * (front_zone(labels, sea_ice=sea_ice) if front is None else front))",
             "         + 0.0 * (front_zone(labels, sea_ice=sea_ice) if front is None else front))",
             ("tests/test_train_units.py::test_sample_weights_rise_on_sea_ice_before_a_calving_front",)),
    Mutation("front-loss-weight-dropped", "the loss counts sea-ice pixels before a front more (issue 13)",
             "glacier_stac/train.py",
             "    return (per_pixel * pixel_w).sum() / (wc * pixel_w).sum().clamp_min(1e-12)",
             "    return per_pixel.sum() / wc.sum().clamp_min(1e-12)",
             ("tests/test_train_units.py::test_front_loss_weight_counts_sea_ice_more_and_matches_plain_ce_at_one",)),
    Mutation("footprint-read-zero-fill", "a window past an asset reads the fill outside it, as the whole warp does "
             "(issue 12)", "glacier_stac/reader.py",
             "            out = np.full((window.height, window.width), self.fill_value, dtype=self.dtype)",
             "            out = np.zeros((window.height, window.width), dtype=self.dtype)",
             ("tests/test_pipeline_reads.py",)),
    Mutation("footprint-read-no-margin", "the footprint read keeps the resampling kernel's reach (issue 12)",
             "glacier_stac/reader.py",
             "    wc1 = min(w0 + int(window.width), int(np.ceil(c1)) + 2)",
             "    wc1 = min(w0 + int(window.width), int(np.ceil(c1 - 2 * mx / dst.a)) - 1)",
             ("tests/test_pipeline_reads.py",)),
    Mutation("edge-split-frame-not-warped", "a window past an asset's edge: the frame around the inner part is "
             "the warper's values, not the fill (issue 12)", "glacier_stac/reader.py",
             "                data[rows[0]:rows[1], cols[0]:cols[1]] = src.read(1, window=strip, out_dtype=out)",
             "                data[rows[0]:rows[1], cols[0]:cols[1]] = self.fill_value",
             ("tests/test_reader.py::test_same_crs_reads_equal_the_warper",)),
    Mutation("tile-inner-graph-one-thread", "a one-task tile's inner graph runs on the worker thread's share of "
             "the cores, as its model does (issue 12)", "glacier_stac/pipeline.py",
             "    return max(1, int(getattr(plugin, \"torch_threads\", 1) or 1))",
             "    return 1",
             ("tests/test_pipeline.py::test_one_task_tiles_use_the_worker_threads_share_of_the_cores",)),
    Mutation("retry-reports-gdal-cached-missing", "a retried read records the server's answer, not GDAL's cached "
             "'does not exist' (issue 12)", "glacier_stac/reader.py",
             "        if GDAL_CACHED_MISSING in now and GDAL_CACHED_MISSING not in first:",
             "        if False:",
             ("tests/test_fault_tolerance.py::test_a_retry_in_the_same_process_reports_the_urls_first_reason",)),
    Mutation("dry-run-other-checkpoints-figures", "a dry run prices a run from its own checkpoint's measured "
             "per-tile seconds (issue 12)", "glacier_stac/pipeline.py",
             'key=lambda f: (f[1].get("checkpoint") != name, f[0].name != "scaling.json")',
             'key=lambda f: (False, f[0].name != "scaling.json")',
             ("tests/test_pipeline.py::test_dry_run_estimates_from_the_measured_figures_of_the_runs_checkpoint",)),
    Mutation("gpu-tile-fused-into-one-task", "GPU clusters keep the tile's GPU=1 predict task routed (issue 12)",
             "glacier_stac/pipeline.py",
             "    if task is None or resources is not None:  # GPU workers",
             "    if task is None:  # GPU workers",
             ("tests/test_pipeline.py::test_cpu_only_tiles_run_as_one_task_gpu_clusters_keep_the_routed_graph",)),
    Mutation("cpu-tile-many-tasks", "a CPU-only tile is one task (issue 12)", "glacier_stac/pipeline.py",
             "    if task is None or resources is not None:  # GPU workers",
             "    if True:  # GPU workers",
             ("tests/test_pipeline.py::test_cpu_only_tiles_run_as_one_task_gpu_clusters_keep_the_routed_graph",)),
    Mutation(
        name="rock-glaciers-not-joined-across-zones",
        invariant="a rock glacier cut by a UTM zone boundary is one polygon",
        path="glacier_stac/inventory.py",
        old="    return obia.merge_rock_glacier_zones(layers, obia.grid_of(parts[0]).res)",
        new="    return gpd.GeoDataFrame(pd.concat([obia.to_wgs84(g) for g in layers], ignore_index=True), crs=4326)",
        tests=("tests/test_rock_glacier_layer.py::test_rock_glacier_across_a_zone_boundary_is_one_polygon",),
    ),
    Mutation(
        name="update-drops-rock-glacier-layer",
        invariant="each annual update saves the rock-glacier layer",
        path="glacier_stac/inventory.py",
        old=("        _add_rock_glacier_year(rock_glacier_path(path), year, _rock_glaciers_of(parts, features, rules), "
             "region)\n"),
        new="",
        tests=("tests/test_rock_glacier_layer.py::test_each_update_saves_the_rock_glacier_layer",),
    ),
    Mutation(
        name="interrupted-update-duplicates-rock-glaciers",
        invariant="an update redone after a crash leaves no duplicate rows",
        path="glacier_stac/inventory.py",
        old="        old = old[old[\"year\"] != year]\n",
        new="        old = old.copy()\n",
        tests=("tests/test_rock_glacier_layer.py::test_an_interrupted_update_leaves_no_duplicate_rock_glaciers",),
    ),
    Mutation(
        name="world-drawn-without-lock",
        invariant="two processes drawing the same world take turns, never writing over each other",
        path="glacier_stac/synthetic/writer.py",
        old="    with locked(root):\n",
        new="    if True:\n",
        tests=("tests/test_synthetic_render.py::test_generate_takes_turns_with_another_process_drawing_the_same_world",),
    ),
    Mutation(
        name="class-weight-power-ignored",
        invariant="the loss's class weights are inverse frequency to the power asked for",
        path="glacier_stac/train.py",
        old="    w = np.where(counts > 0, np.maximum(counts, 1) ** -float(power), 0.0)\n",
        new="    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)\n",
        tests=("tests/test_train_units.py::test_class_weights_follow_inverse_frequency_to_a_power",),
    ),
    Mutation(
        name="class-map-plain-argmax",
        invariant="a subclass is decided inside its parent: whether a pixel is glacier does not hang on how "
                  "non-glacier ground splits into background and rock glacier",
        path="glacier_stac/infer.py",
        old="        top[par] += p[c]\n",
        new="        top[par] = p[par]\n",
        tests=("tests/test_rock_glacier_branch.py::test_class_map_decides_the_parent_before_its_subclass",),
    ),
    Mutation(
        name="branch-competes-with-every-class",
        invariant="the rock-glacier branch only splits background's probability: the glacier classes' and "
                  "water's stay the four-class head's",
        path="glacier_stac/models/unet.py",
        old="                          par + F.logsigmoid(share)], dim=1)\n",
        new="                          share], dim=1)\n",
        tests=("tests/test_rock_glacier_branch.py::test_branch_splits_background_and_keeps_the_other_classes",),
    ),
    Mutation(
        name="frozen-model-batchnorm-drifts",
        invariant="training the branch alone changes no tensor of the frozen four-class model (BatchNorm "
                  "statistics included)",
        path="glacier_stac/train.py",
        old="        net.train(not freeze_init)  # frozen: the init's BatchNorm statistics, not the batch's\n",
        new="        net.train()\n",
        tests=("tests/test_rock_glacier_branch.py::test_freeze_init_trains_the_branch_alone_and_keeps_the_class_map",),
    ),
    Mutation(
        name="branch-receptive-field-unstated",
        invariant="a model's stated receptive field covers its rock-glacier branch",
        path="glacier_stac/models/unet.py",
        old='            ops = ops + [("conv", 3), ("conv", 3)]\n',
        new="",
        tests=("tests/test_models.py::test_receptive_field_is_conservative_and_real",),
    ),
    Mutation(
        name="pipeline-keeps-no-features",
        invariant="a run's inventory has elevations and OBIA's rules from features kept in the store",
        path="glacier_stac/pipeline.py",
        old="items={k: v.split(\",\") for k, v in data.attrs.get(\"items\", {}).items()}, features=core)",
        new="items={k: v.split(\",\") for k, v in data.attrs.get(\"items\", {}).items()})",
        tests=("tests/test_pipeline.py::test_the_inventory_has_elevations_and_obia_rules_from_features_kept_in_the_store",),
    ),
    Mutation(
        name="obia-ignores-stored-features",
        invariant="OBIA reads the features a store keeps beside the predictions",
        path="glacier_stac/obia.py",
        old="        return {f: v for f, v in kept.items() if np.isfinite(v).any()}\n",
        new="        return {}\n",
        tests=("tests/test_pipeline.py::test_the_inventory_has_elevations_and_obia_rules_from_features_kept_in_the_store",),
    ),
    Mutation(
        name="kept-features-of-undone-tiles-shown",
        invariant="a reader never sees a half-written tile's values as data (kept features too)",
        path="glacier_stac/store.py",
        old="    for name, fill in ((PROBABILITY, np.nan), (CLASSES_VAR, NODATA_CLASS), (VALID, False),\n"
            "                       *((n, np.nan) for n in kept)):\n",
        new="    for name, fill in ((PROBABILITY, np.nan), (CLASSES_VAR, NODATA_CLASS), (VALID, False)):\n",
        tests=("tests/test_store.py::test_kept_features_round_trip_packed_with_no_data_kept",),
    ),
    Mutation(
        name="kept-feature-overwrites-store-variable",
        invariant="kept features never overwrite the store's own arrays",
        path="glacier_stac/store.py",
        old="        if name in RESERVED:\n",
        new="        if False:\n",
        tests=("tests/test_store.py::test_kept_features_added_to_a_zone_written_without_them_and_bad_ones_refused",),
    ),
    Mutation(
        name="snow-zone-includes-glacier-snow",
        invariant="the extra loss weight falls on snow off the glaciers only",
        path="glacier_stac/train.py",
        old="    return snow & (region.labels == Label.BACKGROUND)\n",
        new="    return snow & (region.labels != IGNORE)\n",
        tests=("tests/test_train_units.py::test_loss_weights_rise_on_snow_off_glaciers_and_on_both_sides_of_their_edges",),
    ),
    Mutation(
        name="bare-snow-zone-ignores-thermal-snow",
        invariant="the thermal-bare snow weight falls only where every thermal scene saw the ground snow-free",
        path="glacier_stac/train.py",
        old="    return snow_zone(region) & seen & bare\n",
        new="    return snow_zone(region) & seen\n",
        tests=("tests/test_train_units.py::test_thermal_bare_snow_zone_is_off_glacier_snow_every_thermal_scene_saw_bare",),
    ),
    Mutation(
        name="bare-snow-weight-ignored",
        invariant="the thermal-bare snow loss weight reaches the pixel weights",
        path="glacier_stac/train.py",
        old="        w = w + bare_snow_loss_weight * thermal_bare_snow_zone(region)\n",
        new="        w = w + 0 * thermal_bare_snow_zone(region)\n",
        tests=("tests/test_train_units.py::test_thermal_bare_snow_zone_is_off_glacier_snow_every_thermal_scene_saw_bare",),
    ),
    Mutation(
        name="false-debris-counts-clean-ice",
        invariant="false debris is predicted debris on ground the truth calls ice-free, not a class error on ice",
        path="glacier_stac/metrics.py",
        old="((p == Label.DEBRIS_ICE) & ~tg).sum()",
        new="((p == Label.DEBRIS_ICE) & (t != Label.DEBRIS_ICE)).sum()",
        tests=("tests/test_metrics.py::test_false_debris_is_predicted_debris_off_every_glacier_per_glacier_area",),
    ),
    Mutation(
        name="margin-loss-weight-ignored",
        invariant="the ground just outside the glaciers weighs what was asked",
        path="glacier_stac/train.py",
        old="        w = w + margin_loss_weight * edge_band(region.labels)\n",
        new="        w = w + margin_loss_weight * edge_band(region.labels, reach_px=3)\n",
        tests=("tests/test_train_units.py::test_loss_weights_rise_on_snow_off_glaciers_and_on_both_sides_of_their_edges",),
    ),
    Mutation(
        name="edge-band-one-sided",
        invariant="the edge band weighs both sides of the glacier edge alike (one side alone moves the edge)",
        path="glacier_stac/train.py",
        old="            | (near(~ice & (labels != IGNORE), reach_px) & ice))\n",
        new="            | (near(~ice & (labels != IGNORE), reach_px) & ice & False))\n",
        tests=("tests/test_train_units.py::test_loss_weights_rise_on_snow_off_glaciers_and_on_both_sides_of_their_edges",),
    ),
    Mutation(
        name="kept-features-read-on-the-client",
        invariant="kept features cost no second read and nothing is read while a tile's graph is built",
        path="glacier_stac/pipeline.py",
        old="                                       x=slice(margin, data.sizes[\"x\"] - margin)) if kept else None\n",
        new="                                       x=slice(margin, data.sizes[\"x\"] - margin)).compute() "
            "if kept else None\n",
        tests=("tests/test_pipeline.py::test_kept_features_cost_no_second_read",),
    ),
    Mutation(
        name="warmest-counts-clouded-scenes",
        invariant="a clouded or no-data observation is never a pixel's warmest",
        path="glacier_stac/cube.py",
        old="    for v, ok in zip(values, _observed(values, valid), strict=True):\n",
        new="    for v, ok in zip(values, _observed(values, [np.ones(o.shape, bool) for o in valid]), strict=True):\n",
        tests=("tests/test_cube_units.py::test_warmest_is_the_largest_usable_observation",),
    ),
    Mutation(
        name="thermal-warmest-is-the-median",
        invariant="the warmest scene keeps the one that saw seasonal-snow ground bare",
        path="glacier_stac/cube.py",
        old="    out[1:2] = warmest(values, ok, decoding)\n",
        new="    out[1:2] = out[:1]\n",
        tests=("tests/test_cube_units.py::test_thermal_features_keep_the_scene_that_saw_the_ground_bare",),
    ),
    Mutation(
        name="randomise-warmest-own-offset",
        invariant="one thermal calibration offset per patch for every thermal feature",
        path="glacier_stac/train.py",
        old="    shift(\"lwir11_max\", add=dt)\n",
        new="    shift(\"lwir11_max\", add=rng.uniform(-6.0, 6.0))\n",
        tests=("tests/test_train_randomise.py",),
    ),
    Mutation(
        name="randomise-warm-anomaly-own-gain",
        invariant="one thermal contrast gain per patch for both temperature anomalies",
        path="glacier_stac/train.py",
        old="    shift(\"lst_max_anomaly\", gain=k)\n",
        new="    shift(\"lst_max_anomaly\", gain=rng.uniform(0.6, 1.4))\n",
        tests=("tests/test_train_randomise.py",),
    ),
    Mutation(
        name="warm-anomaly-from-the-median",
        invariant="lst_max_anomaly is the warmest scene's anomaly, not the median's again",
        path="glacier_stac/cube.py",
        old="    Derived(\"lst_max_anomaly\", (\"lwir11_max\", \"elevation\", \"ndsi\", \"ndwi\", \"landsat_snow\"), "
            "lst_anomaly, LAPSE),\n",
        new="    Derived(\"lst_max_anomaly\", (\"lwir11\", \"elevation\", \"ndsi\", \"ndwi\", \"landsat_snow\"), "
            "lst_anomaly, LAPSE),\n",
        tests=("tests/test_cube_derived.py::test_tile_features_carry_the_derived_features_after_the_sensors",),
    ),
    Mutation(
        name="derived-fit-on-the-tile-alone",
        invariant="a tile's lapse line and snowline are fitted on its own and its neighbours' samples pooled",
        path="glacier_stac/cube.py",
        old="near = [(samples, i, j)] if whole else [(samples, a, b) for a in range(max(i - 1, 0), min(i + 2, ny))",
        new="near = [(samples, i, j)] if True else [(samples, a, b) for a in range(max(i - 1, 0), min(i + 2, ny))",
        tests=("tests/test_cube_world.py::test_a_sliver_tile_gets_the_fit_of_the_ground_around_it",),
    ),
    Mutation(
        name="derived-fit-whole-tiles-pool-too",
        invariant="a whole tile fits its derived features on itself: computing it reads no neighbour",
        path="glacier_stac/cube.py",
        old="            whole = (h, w) == (tile_px, tile_px)\n",
        new="            whole = False\n",
        tests=("tests/test_cube_world.py::test_a_whole_tile_fits_on_itself_and_a_cut_one_on_its_neighbours_too",),
    ),
    Mutation(
        name="lapse-fit-takes-ground-under-thermal-snow",
        invariant="ground a thermal scene saw under snow (QA) is not bare ground for the lapse fit",
        path="glacier_stac/cube.py",
        old="np.isfinite(t) & np.isfinite(z)\n    if snow is not None:\n        ok &= snow[lat] == 0\n",
        new="np.isfinite(t) & np.isfinite(z)\n    if snow is not None:\n        ok &= snow[lat] >= 0\n",
        tests=("tests/test_cube_derived.py::test_ground_under_snow_in_a_thermal_scene_is_not_bare_ground",),
    ),
    Mutation(
        name="thermal-snow-counts-unusable-scenes",
        invariant="the thermal snow count is of usable scenes only (a clouded scene's flags say nothing)",
        path="glacier_stac/cube.py",
        old="        out[2] += snowy(q[0]) & good\n",
        new="        out[2] += snowy(q[0])\n",
        tests=("tests/test_cube_derived.py::test_thermal_kernel_counts_the_usable_scenes_flagged_snow",),
    ),
    Mutation(
        name="cube-thermal-snow-never-decoded",
        invariant="the cube counts the thermal scenes whose mask flags snow (the lapse fit leaves them out)",
        path="glacier_stac/cube.py",
        old="            params[\"snowy\"] = sensor.snowy  # and where it flags snow or ice\n",
        new="            params[\"snowy\"] = lambda q: np.zeros(q.shape, bool)\n",
        tests=("tests/test_cube_world.py::test_thermal_snow_counts_the_scenes_whose_qa_flags_snow",),
    ),
    Mutation(
        name="derived-fit-pools-one-sample",
        invariant="every neighbouring tile's sample enters the pooled fit, not only the first one's",
        path="glacier_stac/cube.py",
        old="    return {n: by_name[n].fit.solve(np.concatenate([s[n] for s in samples], axis=1)) for n in samples[0]}",
        new="    return {n: by_name[n].fit.solve(np.concatenate([s[n] for s in samples[:1]], axis=1))"
            " for n in samples[0]}",
        tests=("tests/test_cube_world.py::test_a_sliver_tile_gets_the_fit_of_the_ground_around_it",),
    ),
    Mutation(
        name="history-not-joined",
        invariant="a history feature joins the earlier seasons, not this season alone",
        path="glacier_stac/cube.py",
        old="            out[i] = h.reduce(out[i], e[j])\n",
        new="            out[i] = out[i]\n",
        tests=("tests/test_cube_history.py",),
    ),
    Mutation(
        name="history-season-without-observation-erases",
        invariant="a season with no observation leaves the history features as they were",
        path="glacier_stac/cube.py",
        old="    History(\"snow_persistence_hist\", \"snow_persistence\", np.fmin),\n",
        new="    History(\"snow_persistence_hist\", \"snow_persistence\", np.minimum),\n",
        tests=("tests/test_cube_history.py::test_ground_bare_in_any_earlier_season_is_in_the_history_features",),
    ),
    Mutation(
        name="pipeline-forgets-history",
        invariant="a run searches and joins the earlier seasons its checkpoint reads",
        path="glacier_stac/pipeline.py",
        old="    history = cube.history_for(ckpt.features)",
        new="    history = 0",
        tests=("tests/test_pipeline.py::test_a_checkpoint_reading_history_features_gets_the_earlier_seasons",),
    ),
    Mutation(
        name="randomise-history-anomaly-own-gain",
        invariant="one thermal contrast gain per patch for every temperature anomaly, earlier seasons' too",
        path="glacier_stac/train.py",
        old="    shift(\"lst_max_anomaly_hist\", gain=k)  # the same contrast, seen in earlier seasons\n",
        new="",
        tests=("tests/test_train_randomise.py",),
    ),
    Mutation(
        name="dry-run-ignores-history-seasons",
        invariant="the dry run prices the earlier seasons a history checkpoint reads",
        path="glacier_stac/pipeline.py",
        old="        seasons = 1 + (history if rec.name in again and rec.per_acquisition else 0)\n",
        new="        seasons = 1\n",
        tests=("tests/test_pipeline.py::test_the_dry_run_counts_the_seasons_a_history_checkpoint_reads",),
    ),
    Mutation(
        name="prior-shift-wrong-sign",
        invariant="a prior shift moves the class's logit the way it says (the calibrated model is the one fitted)",
        path="glacier_stac/train.py",
        old="        state[\"head.bias\"][i] += float(s)\n",
        new="        state[\"head.bias\"][i] -= float(s)\n",
        tests=("tests/test_prior_shift.py::test_a_shifted_checkpoint_predicts_the_shifted_probabilities",),
    ),
    Mutation(
        name="prior-shift-edits-the-input-checkpoint",
        invariant="calibrating writes a new checkpoint; the one it was fitted on is left as it was",
        path="glacier_stac/train.py",
        old="    state[\"head.bias\"] = bias.detach().clone()\n",
        new="    state[\"head.bias\"] = bias\n",
        tests=("tests/test_prior_shift.py::test_a_shifted_checkpoint_predicts_the_shifted_probabilities",),
    ),
    Mutation(
        name="prior-shift-ties-away-from-zero",
        invariant="no shift without evidence: ties go to the shift nearest 0",
        path="glacier_stac/train.py",
        old="    best = max(figs, key=lambda s: (figs[s][\"criterion\"], -abs(s)))\n",
        new="    best = max(figs, key=lambda s: (figs[s][\"criterion\"], abs(s)))\n",
        tests=("tests/test_prior_shift.py",),
    ),
    Mutation(
        name="prior-shift-criterion-median-only",
        invariant="a prior shift is chosen by the worst region as well as the median",
        path="glacier_stac/train.py",
        old="\"iou_debris_worst\": float(np.nanmin(d))}\n",
        new="\"iou_debris_worst\": float(np.nanmedian(d))}\n",
        tests=("tests/test_prior_shift.py",),
    ),
    Mutation(
        name="history-earlier-seasons-keep-everything",
        invariant="a tile-year holds only the two features of each earlier season its join reads",
        path="glacier_stac/cube.py",
        old="        out.append((y, build(items, geobox, y, sensors=sensors, keep=sources, **kw)))\n",
        new="        out.append((y, build(items, geobox, y, sensors=sensors, **kw)))\n",
        tests=("tests/test_cube_history.py",),
    ),
    Mutation(
        name="history-join-skipped-in-tile-task",
        invariant="the tile task joins the earlier seasons it is handed",
        path="glacier_stac/cube.py",
        old="    if post.seasons:\n",
        new="    if False:\n",
        tests=("tests/test_cube_history.py",),
    ),
    Mutation(
        name="pipeline-history-searches-every-sensor",
        invariant="the seasons before the year are searched only for the sensors the history features come from",
        path="glacier_stac/pipeline.py",
        old="plan.margin, digest, resources, store_lock, history, again)",
        new="plan.margin, digest, resources, store_lock, history)",
        tests=("tests/test_pipeline.py::test_a_checkpoint_reading_history_features_gets_the_earlier_seasons",),
    ),
    Mutation(
        name="forefield-zone-cold-ground",
        invariant="the forefield weight falls on warm ice-free ground beside the glaciers, not on the cold",
        path="glacier_stac/train.py",
        old="        warm = region.features.sel(feature=feature).values > warm_k  # NaN (no thermal): not warm\n",
        new="        warm = region.features.sel(feature=feature).values < warm_k  # NaN (no thermal): not warm\n",
        tests=("tests/test_train_units.py::test_forefield_zone_is_warm_ice_free_ground_beside_the_glaciers",),
    ),
    Mutation(
        name="forefield-weight-ignored",
        invariant="the forefield loss weight reaches the pixel weights",
        path="glacier_stac/train.py",
        old="        w = w + forefield_loss_weight * forefield_zone(region)\n",
        new="        w = w + 0 * forefield_zone(region)\n",
        tests=("tests/test_train_units.py::test_forefield_zone_is_warm_ice_free_ground_beside_the_glaciers",),
    ),
    Mutation(
        name="obia-thermal-ground-under-snow",
        invariant="OBIA's thermal reference leaves out ground a thermal scene saw under snow",
        path="glacier_stac/obia.py",
        old="    return background & ~(snow > 0)\n",
        new="    return background\n",
        tests=("tests/test_obia_rules.py::test_ground_a_thermal_scene_saw_under_snow_is_no_thermal_reference",),
    ),
    Mutation(
        name="obia-snow-count-not-read",
        invariant="OBIA reads (and the pipeline keeps) the thermal scenes' snow count",
        path="glacier_stac/obia.py",
        old='"lwir11", "landsat_snow", "vv_db"',
        new='"lwir11", "vv_db"',
        tests=("tests/test_obia_rules.py::test_ground_a_thermal_scene_saw_under_snow_is_no_thermal_reference",),
    ),
    Mutation(
        name="grown-branch-features-at-end",
        invariant="a feature added to a model with a rock-glacier branch gets its column beside the branch's "
                  "other features, not at the weight's end",
        path="glacier_stac/models/unet.py",
        old="            cols[\"subclass.0.0.weight\"] = self.head.in_channels\n",
        new="            pass\n",
        tests=("tests/test_rock_glacier_classes.py::test_fine_tuning_with_appended_features_starts_where_the_checkpoint_was",),
    ),
    Mutation(
        name="soup-columns-by-position",
        invariant="a soup matches a part's feature columns by name",
        path="glacier_stac/train.py",
        old="[features.index(f) for f in c.features], len(features))\n",
        new="list(range(len(c.features))), len(features))\n",
        tests=("tests/test_soup.py::test_a_part_without_a_feature_ignores_it_in_the_soup",),
    ),
    Mutation(
        name="soup-equal-weights",
        invariant="a soup averages its parts by the weights given",
        path="glacier_stac/train.py",
        old="        state[key] = (sum(x * p.double() for x, p in zip(w, parts, strict=True)).to(ref.dtype)\n",
        new="        state[key] = (sum(p.double() / len(parts) for p in parts).to(ref.dtype)\n",
        tests=("tests/test_soup.py",),
    ),
    Mutation(
        name="views-not-turned-back",
        invariant="each test-time view's probabilities are turned back onto the patch before they are averaged",
        path="glacier_stac/infer.py",
        old="            p = _unview(torch.softmax(logits.float(), dim=1), turns, flip)\n",
        new="            p = torch.softmax(logits.float(), dim=1)\n",
        tests=("tests/test_infer.py::test_all_eight_views_make_the_prediction_turn_with_its_input",),
    ),
    Mutation(
        name="views-count-ignored-by-predict",
        invariant="predict averages the number of views it is asked for",
        path="glacier_stac/infer.py",
        old="lambda b: forward_probabilities(model, b, dev, views)",
        new="lambda b: forward_probabilities(model, b, dev)",
        tests=("tests/test_infer.py::test_predict_averages_the_views_of_each_patch_whatever_the_chunking",),
    ),
    Mutation(
        name="views-repeat-one-view",
        invariant="the views are distinct symmetries of the patch",
        path="glacier_stac/infer.py",
        old="(0, False), (0, True), (2, True), (2, False), (1, False), (1, True), (3, False), (3, True))[:n]",
        new="(0, False),) * n",
        tests=("tests/test_infer.py::test_dihedral_views_are_distinct_symmetries_and_bad_counts_are_refused",),
    ),
    Mutation(
        name="views-count-ignored-by-predict-tile",
        invariant="a tile predicted alone averages the views the run asks for, as the whole predict does",
        path="glacier_stac/infer.py",
        old="                             views=views,\n",
        new="\n",
        tests=("tests/test_pipeline.py::test_predict_tile_equals_predict_over_a_larger_cube",),
    ),
    Mutation(
        name="run-views-not-read",
        invariant="run.views in a run config reaches the run",
        path="glacier_stac/pipeline.py",
        old="checkpoint=ckpt, views=views,",
        new="checkpoint=ckpt,",
        tests=("tests/test_pipeline.py::test_run_views_reach_the_config_for_every_count_infer_takes",),
    ),
    Mutation(
        name="lit-anomaly-without-the-sun",
        invariant="the lit anomaly's bare ground is fitted on slope and aspect too, so shade reads as ground",
        path="glacier_stac/cube.py",
        old="    return np.stack([elev, np.cos(s), np.sin(s) * aspect_cos, np.sin(s) * aspect_sin])\n",
        new="    return np.stack([elev, np.zeros_like(s), np.zeros_like(s), np.zeros_like(s)])\n",
        tests=("tests/test_cube_derived.py::test_shaded_ground_reads_as_ground_once_the_fit_knows_the_sun",),
    ),
    Mutation(
        name="lit-anomaly-samples-thermal-snow",
        invariant="ground a thermal scene saw under snow is not in the lit anomaly's bare-ground sample",
        path="glacier_stac/cube.py",
        old="""    ok = (ndsi[lat] < 0.2) & (ndwi[lat] < 0.2) & np.isfinite(t) & np.all(np.isfinite(x), axis=0)
    if snow is not None:
        ok &= snow[lat] == 0
""",
        new="""    ok = (ndsi[lat] < 0.2) & (ndwi[lat] < 0.2) & np.isfinite(t) & np.all(np.isfinite(x), axis=0)
""",
        tests=("tests/test_cube_derived.py::test_lit_anomaly_on_flat_empty_snowy_and_pooled_tiles",),
    ),
]


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored) copied under `dest`."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_one(m: Mutation, timeout: float = 900.0) -> tuple[bool, str]:
    """(caught, detail): apply the mutation in a private copy of the tree and run its tests there."""
    original = (ROOT / m.path).read_text()
    n = original.count(m.old)
    if n != 1:
        return False, f"snippet found {n} times in {m.path} (expected exactly once)"
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        (tree / m.path).write_text(original.replace(m.old, m.new, 1))
        path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "240"}  # COLUMNS: untruncated failure lines
        where = subprocess.run([sys.executable, "-c", "import glacier_stac; print(glacier_stac.__file__)"],
                               cwd=tree, env=env, capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(tree)):
            return False, f"the copy does not import its own glacier_stac (got {where!r})"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider",
                                   *m.tests], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"tests ran past {timeout:.0f} s"
        dt = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines() or [""]
    failed = [ln for ln in lines if ln.startswith("FAILED ")]
    detail = re.sub(r"\s+", " ", failed[0][len("FAILED "):])[:240] if failed else lines[-1]
    # exit code 1 = tests failed; 0 = all passed (mutant survived); others = collection/usage errors
    return proc.returncode == 1, f"pytest rc={proc.returncode} in {dt:.0f} s: {detail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only mutations whose name contains this")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.invariant:30s} {m.path} -> {' '.join(m.tests)}")
        return 0
    survived = []
    for m in chosen:
        caught, detail = run_one(m)
        print(f"{'caught  ' if caught else 'SURVIVED'} {m.name}: {detail}", flush=True)
        if not caught:
            survived.append(m.name)
    print(f"{len(chosen) - len(survived)}/{len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
