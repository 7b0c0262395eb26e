"""One-command GPU check: `infer.predict` on CUDA (fp16 autocast, channels_last, pinned transfers, batch
sized to the device) against the same cube on CPU (fp32).

    python benchmarks/gpu_check.py [--size 4096] [--model unet]

Prints throughput (output Mpx/s, CPU and GPU), the GPU's peak allocated memory, the batch size picked
for the device, and the largest |probability difference| GPU vs CPU (target <= 1e-3); exits 1 when
the agreement misses it. Without CUDA it says so, checks the CPU path on a small cube (probabilities
sum to one, bit-identical across two chunkings) and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dask
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from inference_throughput import make_checkpoint, make_cube  # noqa: E402

from glacier_stac import infer  # noqa: E402

TOLERANCE = 1e-3


def _predict(cube, ckpt, device: str) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=1 if device == "cuda" else None):
        prob = infer.predict(cube, ckpt, device=device).probability.values
    return prob, time.perf_counter() - t0


def cpu_path(ckpt) -> None:
    """The CPU path the tests hold, on a small cube: probabilities sum to 1, chunk-invariant."""
    cube = make_cube(512, 256)
    a, t = _predict(cube, ckpt, "cpu")
    b, _ = _predict(cube.chunk({"y": 512, "x": 512}), ckpt, "cpu")
    ok = np.isfinite(a[0])
    total = np.abs(np.nansum(a, axis=0)[ok] - 1).max()
    diff = float(np.nanmax(np.abs(a - b)))
    print(f"cpu: 512 x 512 px in {t:.1f} s ({0.262144 / t:.3f} Mpx/s), |sum p - 1| {total:.1e}, "
          f"chunk invariance {diff:.1e}")
    if total > 1e-5 or diff > 1e-5:
        raise SystemExit("CPU path FAILED")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="cube side on the GPU (px)")
    ap.add_argument("--cpu-size", type=int, default=1024, help="cube side compared with the CPU (px)")
    ap.add_argument("--model", default="unet")
    args = ap.parse_args()
    ckpt = make_checkpoint(args.model)
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    cpu_path(ckpt)
    if not torch.cuda.is_available():
        print("no CUDA device on this machine: GPU checks skipped (CPU path checked above)")
        return
    dev = torch.device("cuda")
    grid = infer.make_grid(ckpt)
    print(f"device: {torch.cuda.get_device_name(dev)}, "
          f"{torch.cuda.get_device_properties(dev).total_memory / 2**30:.1f} GiB; batch for "
          f"{grid.patch} px patches (up to {grid.max_patch} px with a folded edge): "
          f"{infer.device_batch_size(dev, grid.max_patch)}")
    # agreement: the same cube on CPU (fp32) and GPU (fp16 autocast, channels_last)
    small = make_cube(args.cpu_size, 1024, seed=1)
    small = small.copy(data=small.data.persist())
    p_cpu, t_cpu = _predict(small, ckpt, "cpu")
    _predict(small, ckpt, "cuda")  # warm-up: model cache, cuDNN autotuning
    p_gpu, t_gpu_small = _predict(small, ckpt, "cuda")
    diff = float(np.nanmax(np.abs(p_cpu - p_gpu)))
    same_valid = bool((np.isnan(p_cpu) == np.isnan(p_gpu)).all())
    # throughput on a larger cube, chunks of 2048 px (4 patches a chunk: batches fill the device)
    big = make_cube(args.size, 2048, seed=2)
    big = big.copy(data=big.data.persist())
    torch.cuda.reset_peak_memory_stats(dev)
    _, t_gpu = _predict(big, ckpt, "cuda")
    peak = torch.cuda.max_memory_allocated(dev) / 2**30
    mpx = args.size**2 / 1e6
    print(f"cpu  : {args.cpu_size} px in {t_cpu:.2f} s = {args.cpu_size**2 / 1e6 / t_cpu:.3f} Mpx/s")
    print(f"gpu  : {args.cpu_size} px in {t_gpu_small:.2f} s; {args.size} px in {t_gpu:.2f} s = "
          f"{mpx / t_gpu:.2f} Mpx/s, peak allocated {peak:.2f} GiB")
    print(f"agreement: max |p_gpu - p_cpu| = {diff:.2e} (target <= {TOLERANCE:g}), same valid pixels: {same_valid}")
    if diff > TOLERANCE or not same_valid:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
