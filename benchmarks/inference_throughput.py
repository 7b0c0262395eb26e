"""Inference throughput: `infer.predict` over an in-memory cube vs the bare model over the same pixels.

    python benchmarks/inference_throughput.py [--quick] [--model unet] [--size 4096]

Reports, and writes to benchmarks/results/inference_throughput.json:
- pipeline_mpx_per_s: output megapixels per second of predict(...).compute() (probability, classes, valid);
- model_only_mpx_per_s: the bare model's forward over the same patches the pipeline pushes through it
  (same inputs, batch size and threads), counted in the same output pixels;
- ratio_vs_model_only = pipeline / model-only (target >= 0.8): what the Dask wiring, normalisation,
  blending and class maps cost on top of the model;
- computed_over_output_pixels (target <= 1.3): patch pixels through the model per output pixel, the
  price of the context margins (it is inside both timings above, so it does not lower the ratio);
- plain_model_mpx_per_s: the model over the output pixels as non-overlapping tiles with no context
  margins, for the full picture (pipeline / plain = ratio_vs_model_only / computed_over_output);
- chunk_invariance_max_abs_diff (target <= 1e-5): the same cube chunked another way;
- model_fraction_of_matmul (target >= 0.35): the model's FLOP rate (FLOPs of the forward counted by
  torch's FlopCounterMode) over a 2048 x 2048 fp32 matmul's, the matmul run on the same threads right
  before every model batch so both see the same load; median and worst over all batches;
- demo_region_computed_over_output (target <= 1.3): the demo's 2000 px region, off the 1024 px lattice
  (edge patches cut to the region, thin edge remainders folded into the neighbouring patch), and
  without folding for comparison;
- cpu_variants: one patch's forward as used (channels_last, BatchNorm folded) vs fp32 NCHW,
  channels_last alone, BN folded alone, jit.freeze (oneDNN fusion), torch.compile, batch 2, one
  thread, bf16 autocast (once); interleaved repeats, median and worst seconds, FLOP rate over a matmul
  run just before each, max |probability difference| vs fp32 NCHW;
- worker_memory: peak RSS (VmHWM) per worker of a 2-worker LocalCluster predicting 1x and 16x a
  region (cube generated on the workers), with a batch of 4 patches and the per-device batch (1 on
  CPU), and the workers' "unmanaged memory" warnings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr
from torch.utils.flop_counter import FlopCounterMode

from glacier_stac import __version__, infer
from glacier_stac.models import get_model
from glacier_stac.models.checkpoint import Checkpoint
from glacier_stac.models.inference import fold_batchnorm, for_inference

FEATURES = ["B02", "B03", "B04", "B08", "B11", "B12", "ndsi", "ndwi", "ndvi", "s2_count", "vv_db", "vh_db",
            "s1_count", "lwir11", "landsat_count", "elevation", "slope", "aspect_sin", "aspect_cos", "hillshade"]
RESULTS = Path(__file__).parent / "results" / "inference_throughput.json"


def make_cube(size: int, chunk: int, seed: int = 0) -> xr.DataArray:
    """An in-memory cube on the global lattice (origin on a 1024 px tile corner), 2 % of it missing."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(len(FEATURES), size, size)).astype(np.float32)
    a[:, : size // 50, :] = np.nan
    col0, row0 = 500 * 1024, -6632 * 1024
    x = (col0 + 0.5 + np.arange(size)) * 10.0
    y = -(row0 + 0.5 + np.arange(size)) * 10.0
    return xr.DataArray(da.from_array(a, chunks=(-1, chunk, chunk)), dims=("feature", "y", "x"),
                        coords={"feature": FEATURES, "y": y, "x": x})


def make_checkpoint(name: str) -> Checkpoint:
    torch.manual_seed(0)
    model = get_model(name, len(FEATURES), 4)
    return Checkpoint.from_model(model, name, FEATURES, [0.0] * len(FEATURES), [1.0] * len(FEATURES),
                                 data="random weights (benchmark)", seed=0,
                                 command="benchmarks/inference_throughput.py")


@dataclass
class ModelOnly:
    """The bare model over the pipeline's patches, each batch timed right after a matmul on the same threads."""

    seconds: float  # all patches
    patches: int
    flops_per_patch: float
    ratios: list[float]  # per batch: the model's FLOP rate over the matmul rate measured just before it


def model_only(cube: xr.DataArray, ckpt: Checkpoint, pl: infer.Plan, batch_size: int) -> ModelOnly:
    """The bare model (built as the model cache builds it) over the pipeline's patches, interleaved with a
    matmul before every batch, so the FLOP-rate ratio sees the same load on both sides."""
    model = ckpt.build_model()
    g = pl.grid
    z = infer.normalise(cube.values, ckpt.mean, ckpt.std, ckpt.nan_fill)
    z = np.pad(z, ((0, 0), (g.margin, g.margin), (g.margin, g.margin)), constant_values=ckpt.nan_fill)
    origins = [(ty * g.stride, tx * g.stride) for ty in range(-(-cube.sizes["y"] // g.stride))
               for tx in range(-(-cube.sizes["x"] // g.stride))]
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(torch.zeros(1, len(ckpt.features), g.patch, g.patch))
    flops = fc.get_total_flops()
    dev = infer.pick_device()
    model = for_inference(model, dev)
    total, ratios = 0.0, []
    for i in range(0, len(origins), batch_size):
        batch = np.stack([np.ascontiguousarray(z[:, r:r + g.patch, c:c + g.patch])
                          for r, c in origins[i:i + batch_size]])
        mm = matmul_gflops(reps=1, warm=False)
        t0 = time.perf_counter()
        infer.forward_probabilities(model, batch, dev)
        dt = time.perf_counter() - t0
        total += dt
        ratios.append(flops * len(batch) / dt / 1e9 / mm)
    return ModelOnly(total, len(origins), flops, ratios)


def plain_model(cube: xr.DataArray, ckpt: Checkpoint, tile: int) -> float:
    """Seconds for the bare model over the output pixels as non-overlapping tiles, no context."""
    model = ckpt.build_model()
    z = infer.normalise(cube.values, ckpt.mean, ckpt.std, ckpt.nan_fill)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for r in range(0, z.shape[1], tile):
            for c in range(0, z.shape[2], tile):
                model(torch.from_numpy(np.ascontiguousarray(z[None, :, r:r + tile, c:c + tile])))
    return time.perf_counter() - t0


def matmul_gflops(n: int = 2048, reps: int = 5, warm: bool = True) -> float:
    """fp32 GFLOP/s of an n x n matmul on torch's threads (best of `reps`, after one warm-up if `warm`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    if warm:
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def cpu_variants(ckpt: Checkpoint, patch: int, repeats: int, compile_: bool) -> dict:
    """Seconds per patch (median, worst), max |dp| vs the fp32 NCHW forward, and the FLOP rate over a
    matmul run just before each, for each way to run the model on CPU. Variants are interleaved in every
    repeat (the machine is shared: each sees the same load); bf16 autocast, ~20x slower on CPUs without
    AVX512-BF16, runs once."""
    x = torch.randn(2, len(ckpt.features), patch, patch, generator=torch.Generator().manual_seed(1))
    cl = torch.channels_last
    xc = x.contiguous(memory_format=cl)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        ckpt.build_model()(x[:1])
    flops = fc.get_total_flops()
    nthreads = torch.get_num_threads()
    with torch.inference_mode():
        base = ckpt.build_model()
        chl = ckpt.build_model().to(memory_format=cl)
        used = for_inference(ckpt.build_model())
        folded_nchw = ckpt.build_model()
        fold_batchnorm(folded_nchw)
        frozen = torch.jit.freeze(torch.jit.trace(for_inference(ckpt.build_model()), xc[:1], check_trace=False))

        def bf16(b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return base(b)

        def one_thread(b):
            torch.set_num_threads(1)
            try:
                return used(b)
            finally:
                torch.set_num_threads(nthreads)

        runs = {"fp32 NCHW (before)": lambda b: base(b), "channels_last": lambda b: chl(b.contiguous(memory_format=cl)),
                "bn_folded NCHW": lambda b: folded_nchw(b),
                "channels_last + bn_folded (used)": lambda b: used(b.contiguous(memory_format=cl)),
                "jit_freeze_onednn (+ folded, channels_last)": lambda b: frozen(b.contiguous(memory_format=cl)),
                "1_thread (used)": one_thread}
        compile_s = None
        if compile_:
            try:
                comp = torch.compile(for_inference(ckpt.build_model()))
                t0 = time.perf_counter()
                comp(xc[:1])
                compile_s = round(time.perf_counter() - t0, 1)
                runs["torch_compile (+ folded, channels_last)"] = lambda b: comp(b.contiguous(memory_format=cl))
            except Exception as e:  # no compiler toolchain, or inductor refuses: recorded, not fatal
                compile_s = f"failed: {type(e).__name__}: {str(e)[:120]}"
        ref = torch.softmax(base(x[:1]), 1)
        diff = {k: float((torch.softmax(f(x[:1]).float(), 1) - ref).abs().max()) for k, f in runs.items()}
        times: dict[str, list[float]] = {k: [] for k in [*runs, "batch_2 (used, per patch)"]}
        ratios: dict[str, list[float]] = {k: [] for k in times}
        for _ in range(repeats):
            for k, f in [*runs.items(), ("batch_2 (used, per patch)", None)]:
                mm = matmul_gflops(reps=1, warm=False)
                t0 = time.perf_counter()
                used(xc) if f is None else f(x[:1])
                dt = (time.perf_counter() - t0) / (2 if f is None else 1)
                times[k].append(dt)
                ratios[k].append(flops / dt / 1e9 / (mm / (nthreads if k.startswith("1_thread") else 1)))
        t0 = time.perf_counter()
        b16 = bf16(x[:1])
        times["bf16_autocast (once)"] = [time.perf_counter() - t0]
        diff["bf16_autocast (once)"] = float((torch.softmax(b16.float(), 1) - ref).abs().max())
    out: dict = {k: {"median_s": round(float(np.median(v)), 3), "worst_s": round(max(v), 3),
                     "max_abs_dp": diff.get(k, diff["channels_last + bn_folded (used)"]),
                     **({"fraction_of_matmul_median": round(float(np.median(ratios[k])), 3),
                         "fraction_of_matmul_worst": round(min(ratios[k]), 3)} if ratios.get(k) else {})}
                 for k, v in times.items()}
    t1, t2 = out["1_thread (used)"]["median_s"], out["channels_last + bn_folded (used)"]["median_s"]
    out["two_1_thread_workers_over_one_2_thread"] = round(2 * t2 / t1, 3)  # > 1: split the cores between workers
    out["patch_px"] = patch
    out["gflop_per_patch"] = round(flops / 1e9, 3)
    out["torch_threads"] = nthreads
    out["torch_compile_first_call_s"] = compile_s
    return out


def _rss_peak_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a forked worker inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _held(dask_worker) -> dict[str, tuple[int, float]]:
    """{task group: (chunks, MB)} a worker holds in memory now (key_split names the group)."""
    from dask.utils import key_split

    out: dict[str, tuple[int, float]] = {}
    sizes = getattr(dask_worker.data, "fast", dask_worker.data)
    for k in list(dask_worker.data.keys()):
        n, mb = out.get(key_split(k), (0, 0.0))
        out[key_split(k)] = (n + 1, mb + getattr(sizes, "weights", {}).get(k, 0) / 1e6)
    return out


class _HeldInputs:
    """Samples, every 0.25 s while a computation runs, the chunks each worker holds per task group (the
    neighbours' halos keep input chunks alive), so what makes memory grow with the region is measured."""

    def __init__(self, client) -> None:
        import threading

        self.client, self.stop = client, threading.Event()
        self.peak: dict[str, tuple[int, float]] = {}  # group: most chunks / MB one worker held at once
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.25):
            try:
                for groups in self.client.run(_held).values():
                    for g, (n, mb) in groups.items():
                        n0, mb0 = self.peak.get(g, (0, 0.0))
                        self.peak[g] = (max(n, n0), round(max(mb, mb0), 1))
            except Exception:  # noqa: BLE001 - a sample lost while a worker is busy is no result
                continue

    def __enter__(self) -> _HeldInputs:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def worker_memory(ckpt: Checkpoint, region: int, chunk: int, patch: int, batch_size: int | None) -> dict:
    """Peak RSS per worker (fresh 2-worker LocalCluster each) predicting 1x and 16x a region of `region` px."""
    from distributed import Client, LocalCluster

    out = {}
    for mult in (1, 4):
        n = region * mult
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          memory_limit="6GiB") as cluster, Client(cluster) as client:
            rng = da.random.default_rng(0)
            data = rng.standard_normal((len(FEATURES), n, n), chunks=(-1, chunk, chunk), dtype=np.float32)
            col0, row0 = 500 * 1024, -6632 * 1024
            cube = xr.DataArray(data, dims=("feature", "y", "x"),
                                coords={"feature": FEATURES, "y": -(row0 + 0.5 + np.arange(n)) * 10.0,
                                        "x": (col0 + 0.5 + np.arange(n)) * 10.0})
            client.run(lambda: __import__("glacier_stac.infer"))
            before = client.run(_rss_peak_mb)
            t0 = time.perf_counter()
            prob = infer.predict(cube, ckpt, patch=patch, batch_size=batch_size).probability.data
            with _HeldInputs(client) as held:
                da.nansum(prob, axis=(1, 2)).compute()
            dt = time.perf_counter() - t0
            peak = client.run(_rss_peak_mb)
            warned = sum("nmanaged memory" in str(msg) for recs in client.get_worker_logs().values()
                         for _, msg in recs)
        out[f"{mult * mult}x"] = {"region_px": n, "seconds": round(dt, 1),
                                  "peak_rss_mb_per_worker": sorted(round(v) for v in peak.values()),
                                  "rss_before_mb_per_worker": sorted(round(v) for v in before.values()),
                                  "unmanaged_memory_warnings": warned,
                                  "held_max_per_worker": {g: {"chunks": n, "mb": mb}
                                                          for g, (n, mb) in sorted(held.peak.items())}}
    out["peak_16x_over_1x"] = round(max(out["16x"]["peak_rss_mb_per_worker"])
                                    / max(out["1x"]["peak_rss_mb_per_worker"]), 3)  # target: about 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1024 px cube in 512 px tiles (patch 624), memory on 256 px regions "
                         "(else 4096 px, 1024 px tiles)")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=None, help="cube chunk (px); default the tile stride")
    ap.add_argument("--stride", type=int, default=None, help="patch stride (px); default the production 1024")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of each (best kept)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile among the CPU variants")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the worker-memory figure, merged into an existing --out JSON")
    args = ap.parse_args()
    if args.memory_only:
        return memory_only(args)
    size = args.size or (1024 if args.quick else 4096)
    args.repeats = args.repeats or (1 if args.quick else 3)
    stride = args.stride or (512 if args.quick else infer.DEFAULT_STRIDE)
    args.chunk = args.chunk or stride

    load0 = os.getloadavg()[0]
    ckpt = make_checkpoint(args.model)
    cube = make_cube(size, args.chunk)
    cube = cube.copy(data=cube.data.persist())
    patch = stride + 2 * infer.make_grid(ckpt).margin
    pl = infer.plan(cube, ckpt, patch=patch)
    out_px = size * size

    # warm-up: the model cache and torch's kernels, on one chunk
    with dask.config.set(scheduler="threads"):
        infer.predict(cube[:, : args.chunk, : args.chunk], ckpt, patch=patch, batch_size=args.batch_size).compute()

        # another chunking that keeps its own blocks (chunks much smaller than the patch stride would
        # be re-cut on the tile grid by `plan`, which would make this comparison trivial)
        other = cube.chunk({"y": 2 * args.chunk, "x": -1})
        assert infer.plan(other, ckpt, patch=patch).chunks != pl.chunks
        t0 = time.perf_counter()
        ds2 = infer.predict(other, ckpt, patch=patch, batch_size=args.batch_size).compute()
        t_other = time.perf_counter() - t0

        # the machine is shared: alternate pipeline and model-only runs and keep the best of each
        t_pipe = t_model = t_plain = float("inf")
        ratios: list[float] = []  # the model's FLOP rate over a matmul's, batch by batch, interleaved
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ds = infer.predict(cube, ckpt, patch=patch, batch_size=args.batch_size).compute()
            t_pipe = min(t_pipe, time.perf_counter() - t0)
            mo = model_only(cube, ckpt, pl, args.batch_size)
            t_model, n_patches, flops = min(t_model, mo.seconds), mo.patches, mo.flops_per_patch
            ratios += mo.ratios
            t_plain = min(t_plain, plain_model(cube, ckpt, pl.grid.stride))
    diff = float(np.nanmax(np.abs(ds.probability.values - ds2.probability.values)))
    same_nan = bool((np.isnan(ds.probability.values) == np.isnan(ds2.probability.values)).all())
    mm = matmul_gflops()
    from glacier_stac.grid import aligned_chunks

    demo = make_cube(2000, 1024)  # the demo world's grid: origin 872 px / 430 px into a lattice tile
    demo = demo.assign_coords(x=(49_000 + 0.5 + np.arange(2000)) * 10.0, y=(679_506 - 0.5 - np.arange(2000)) * 10.0)
    demo = demo.chunk({d: aligned_chunks(infer.global_start(demo, d), 2000, 1024) for d in ("y", "x")})
    demo_cost = infer.plan(demo, ckpt).computed_over_output
    demo_cost_unfolded = infer.plan(demo, ckpt, fold=0).computed_over_output
    variants = cpu_variants(ckpt, 496 if args.quick else pl.grid.patch, args.repeats + 2, not args.no_compile)
    memory = memory_figures(ckpt, args.quick)

    res = {
        "model": args.model,
        "cube_px": [size, size],
        "features": len(FEATURES),
        "chunk_px": args.chunk,
        "patch_px": pl.grid.patch,
        "stride_px": pl.grid.stride,
        "margin_px": pl.grid.margin,
        "receptive_field_px": ckpt.receptive_field,
        "halo_px": list(pl.halo),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "patches": n_patches,
        "pipeline_s": round(t_pipe, 3),
        "model_only_s": round(t_model, 3),
        "pipeline_mpx_per_s": round(out_px / t_pipe / 1e6, 4),
        "model_only_mpx_per_s": round(out_px / t_model / 1e6, 4),
        "ratio_vs_model_only": round(t_model / t_pipe, 4),
        "plain_model_mpx_per_s": round(out_px / t_plain / 1e6, 4),
        "computed_over_output_pixels": round(pl.computed_over_output, 4),
        "computed_over_output_chunk_1024": round(infer.computed_over_output(1024, ckpt), 4),  # production tiles
        "computed_over_output_chunk_2048": round(infer.computed_over_output(2048, ckpt), 4),
        "chunk_invariance_max_abs_diff": diff,
        "chunk_invariance_same_valid": same_nan,
        "other_chunking_s": round(t_other, 3),
        "model_gflop_per_patch": round(flops / 1e9, 3),
        "model_gflops_per_s": round(flops * n_patches / t_model / 1e9, 2),
        "matmul_gflops_per_s": round(mm, 2),
        "model_fraction_of_matmul": round(float(np.median(ratios)), 3),
        "model_fraction_of_matmul_worst": round(min(ratios), 3),
        "model_fraction_of_matmul_n": len(ratios),
        "demo_region_computed_over_output": round(demo_cost, 4),
        "demo_region_computed_over_output_unfolded": round(demo_cost_unfolded, 4),
        "cpu_variants": variants,
        "worker_memory": memory,
        "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],  # machine shared: before, after
        "device": str(infer.pick_device()),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "glacier_stac": __version__,
        "quick": args.quick,
    }
    _report(res, args.out)


TARGETS = {"ratio_vs_model_only": (">=", 0.8), "computed_over_output_chunk_1024": ("<=", 1.3),
           "model_fraction_of_matmul": (">=", 0.35), "demo_region_computed_over_output": ("<=", 1.3),
           "chunk_invariance_max_abs_diff": ("<=", 1e-5), "peak_16x_over_1x": ("<=", 1.25)}


def _report(res: dict, out: Path) -> None:
    """Print the figures against their targets (the memory ratio per batch setting) and write the JSON."""
    rows = list(res.items()) + [(f"worker_memory.{b}.peak_16x_over_1x", m["peak_16x_over_1x"])
                                for b, m in res.get("worker_memory", {}).items() if isinstance(m, dict)]
    print("| metric | value | target |\n|---|---|---|")
    for k, v in rows:
        op, tv = TARGETS.get(k.rsplit(".", 1)[-1], ("", ""))
        ok = "" if not op else (" ok" if (v >= tv if op == ">=" else v <= tv) else " MISSED")
        print(f"| {k} | {v} | {op} {tv}{ok} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {out}")


def memory_figures(ckpt: Checkpoint, quick: bool) -> dict:
    """Worker peak RSS for 1x and 16x a region that is one whole chunk (so 1x and 16x run the same chunk
    and patch size and the same batches: only the region grows), with 4 patches per batch and with
    the device's automatic batch."""
    g = infer.make_grid(ckpt)
    region = chunk = 256 if quick else 2048
    patch = (128 if quick else 1024) + 2 * g.margin  # a chunk holds 2 x 2 patches: a batch of 4 fills
    return {"patch_px": patch, "chunk_px": chunk,
            **{f"batch_{b or 'auto'}": worker_memory(ckpt, region, chunk, patch, b) for b in (4, None)}}


def memory_only(args: argparse.Namespace) -> None:
    """Just the worker-memory figure (the 16x region of the full run is 67 Mpx), merged into `--out`."""
    res = json.loads(args.out.read_text()) if args.out.exists() else {}
    load0 = os.getloadavg()[0]
    res["worker_memory"] = memory_figures(make_checkpoint(args.model), args.quick)
    res["worker_memory"]["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    _report(res, args.out)


if __name__ == "__main__":
    main()
