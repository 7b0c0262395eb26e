"""Halo-overlap inference over a lazy (feature, y, x) cube: seam-free and independent of the chunking.

The patch grid is anchored to the GLOBAL pixel lattice (the one `grid.py` anchors at UTM x=0, y=0):
tile cores are `stride` x `stride` squares starting at multiples of `stride` in global pixel
coordinates, and each patch the model sees is a tile core plus `margin` pixels of context on every
side. Because a tile's input depends only on where it is on Earth, never on which chunk asked for it,
two chunkings of the same cube compute the same patches from the same pixels and give the same
probabilities (up to float rounding inside the convolutions).

Overlapping patches are blended with a separable cosine (Hann) taper of width `blend` centred on
the tile edges, and the weights are normalised by their sum. With `margin >= receptive_field // 2`
and patch origins on multiples of the model's `divisor`, overlapping patches of a local model agree
exactly where they overlap, so the default `blend=0` (plain overlap-tile, each pixel from the patch
whose core holds it) is already seam-free and computes each output pixel about
(stride + 2 * margin)^2 / stride^2 times (`computed_over_output` gives the figure for a checkpoint and
chunking). `blend > 0` smooths models that are not exactly local, at the cost of computing the
neighbouring patches too. At a region's edges patches are cut to the region, and a tile holding only
a thin remainder of it is folded into its neighbour, whose patch grows over it (`PatchGrid.fold`);
both depend on the tile and the region, never on the chunk.

The Dask wiring lives in `predict` (and `_haloed_map`, its halo exchange: each model task reads its
own block, neighbours lend only halo-width strips, so a worker's memory does not grow with the region);
the per-block work is `predict_block`, a pure function of NumPy arrays. The model is built once per
process (`ModelCache`, keyed by the checkpoint path and mtime, or by the in-memory checkpoint's
digest); a cache can be passed in, else each process uses its own (`process_models()`), which
cluster.py's worker plugin holds on Dask workers, where it also gives torch the worker's share of the
cores. This module never imports `distributed`: which Dask resources
the model tasks ask for (GPU=1 on a cluster with GPU workers) is passed in too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr
from dask.delayed import Delayed

from glacier_stac.grid import aligned_chunks, lattice_index
from glacier_stac.labels import (
    CLASSES_VAR,
    GLACIER_CLASSES,
    GLACIER_PROBABILITY,
    NODATA_CLASS,
    PARENT,
    PROBABILITY,
    VALID,
)
from glacier_stac.models.checkpoint import Checkpoint
from glacier_stac.models.checkpoint import load as load_checkpoint
from glacier_stac.models.inference import for_inference

log = logging.getLogger(__name__)

DEFAULT_STRIDE = 1024  # tile core side; with the production 1024/2048 px chunks a tile never straddles chunks
COST_TARGET = 1.3
# region-edge remainders under half a tile are computed by the neighbouring patch: the demo's 2000 px
# region costs 1.24 model px per output px instead of 1.37, and no patch grows past 1.5 tiles
FOLD_FRACTION = 0.5


# --------------------------------------------------------------------------- the patch grid


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class PatchGrid:
    """Tiles of the global lattice: core [k*stride, (k+1)*stride) plus `margin` context each side.

    `fold`: a region's first or last tile holding fewer than `fold` px of the region is computed by
    its neighbour's patch, grown to cover it (blend 0 only). Why: a thin edge remainder would
    otherwise push a patch that is mostly margin and padding through the model; growing the
    neighbour costs the remainder's pixels only. Which patch computes a pixel depends on the tile and
    the region, never on the chunk asking, so chunk invariance holds.
    """

    stride: int
    margin: int
    blend: int = 0
    fold: int = 0

    def __post_init__(self) -> None:
        if self.stride < 1 or self.margin < 0 or self.blend < 0 or self.fold < 0:
            raise ValueError(f"bad patch grid {self}: stride >= 1, margin >= 0, blend >= 0, fold >= 0")
        if self.blend > self.stride:
            raise ValueError(f"blend {self.blend} px is wider than the patch stride {self.stride} px")
        if self.blend // 2 + self.blend % 2 > self.margin:
            raise ValueError(f"blend {self.blend} px needs a margin of at least {math.ceil(self.blend / 2)} px, "
                             f"got {self.margin}")
        if self.fold and (self.blend or self.fold > self.stride // 2):
            raise ValueError(f"fold {self.fold} px needs blend 0 and at most half the stride {self.stride} px")

    @property
    def patch(self) -> int:
        return self.stride + 2 * self.margin

    @property
    def max_patch(self) -> int:
        """Side of the largest patch the model may see (a tile grown by a folded remainder)."""
        return self.patch + self.fold

    @property
    def _lo(self) -> int:  # how far a tile's weights reach before its core
        return math.ceil(self.blend / 2)

    @property
    def _hi(self) -> int:  # how far a tile's weights reach after its core
        return self.blend // 2

    def tiles(self, g0: int, g1: int) -> range:
        """Tile indices whose weights touch global pixels [g0, g1)."""
        s = self.stride
        return range((g0 - self._hi) // s, (g1 - 1 + self._lo) // s + 1)

    def _folded(self, lo: float, hi: float) -> tuple[bool, bool]:
        """(first, last): whether the region [lo, hi)'s first / last tile is folded into its neighbour."""
        if not self.fold or lo == -math.inf or hi == math.inf:
            return False, False
        s = self.stride
        k0, k1 = int(lo) // s, (int(hi) - 1) // s
        if k1 == k0:
            return False, False
        first, last = (k0 + 1) * s - int(lo), int(hi) - k1 * s  # region pixels in the edge tiles
        f0, f1 = first < self.fold, last < self.fold
        if f0 and f1 and (k1 - k0 == 1 or (k1 - k0 == 2 and first + last > self.fold)):
            # one tile would take both: two tiles make one patch; around a middle tile, fold only the
            # thinner one so no patch grows by more than `fold`
            f0, f1 = (True, False) if k1 - k0 == 1 or first <= last else (False, True)
        return f0, f1

    def owner(self, k: int, lo: float = -math.inf, hi: float = math.inf) -> int:
        """The tile whose patch computes tile k's outputs inside the region [lo, hi)."""
        f0, f1 = self._folded(lo, hi)
        if f0 and k == int(lo) // self.stride:
            return k + 1
        if f1 and k == (int(hi) - 1) // self.stride:
            return k - 1
        return k

    def owners(self, g0: int, g1: int, lo: float = -math.inf, hi: float = math.inf) -> list[int]:
        """Tiles whose patches give outputs in [g0, g1) of the region [lo, hi), in order."""
        return sorted({self.owner(k, lo, hi) for k in self.tiles(g0, g1)})

    def segment(self, k: int, lo: float = -math.inf, hi: float = math.inf) -> tuple[int, int]:
        """Global [a, b) of the outputs tile k's patch gives inside the region (its weights' reach,
        grown by a folded neighbour); empty when k is folded into a neighbour."""
        s = self.stride
        if self.owner(k, lo, hi) != k:
            return k * s, k * s
        a = (k - 1) * s if self.owner(k - 1, lo, hi) == k else k * s - self._lo
        b = (k + 2) * s if self.owner(k + 1, lo, hi) == k else k * s + s + self._hi
        a, b = max(a, lo), min(b, hi)
        return (int(a), int(b)) if b > a else (k * s, k * s)

    def reach(self, g0: int, g1: int, lo: float = -math.inf, hi: float = math.inf) -> tuple[int, int]:
        """Pixels of input needed before g0 and after g1 to compute every tile giving outputs in [g0, g1)."""
        spans = [self.span(k, lo, hi) for k in self.owners(g0, g1, lo, hi)]
        spans = [(a, b) for a, b in spans if b > a] or [(g0, g1)]
        return max(0, g0 - min(a for a, _ in spans)), max(0, max(b for _, b in spans) - g1)

    def span(self, k: int, lo: float = -math.inf, hi: float = math.inf) -> tuple[int, int]:
        """Global [start, stop) of the input tile k needs to give its outputs inside [lo, hi) (the region).

        Why: at a region's edge most of a full patch is padding. The patch is cut to the outputs of tile
        k inside [lo, hi) plus `margin` of context, at multiples of gcd(stride, margin) (a multiple of
        the model's divisor, as both are): the cut patch starts on the same pooling phase and holds the
        whole receptive field of every output it gives, so those outputs are the full patch's. A tile
        that took a folded neighbour's outputs grows over them the same way. It depends on the tile
        and the region only, never on the chunk asking.
        """
        s, m = self.stride, self.margin
        q = math.gcd(s, m)
        a, b = self.segment(k, lo, hi)
        k0 = k - 1 if self.owner(k - 1, lo, hi) == k else k
        k1 = k + 1 if self.owner(k + 1, lo, hi) == k else k
        p0, p1 = k0 * s - m, k1 * s + s + m
        if b <= a:
            return p0, p0
        return max(p0, a // q * q - m), min(p1, -(-b // q) * q + m)

    def cut(self, lo: int, hi: int) -> tuple[int, ...]:
        """Chunk sizes of the region [lo, hi) on the tile lattice, a folded remainder merged into its
        neighbour's chunk: every patch then lies in one chunk and is computed once."""
        chunks = list(aligned_chunks(lo, hi - lo, self.stride))
        f0, f1 = self._folded(lo, hi)
        if f1:
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        if f0:
            chunks[:2] = [chunks[0] + chunks[1]]
        return tuple(chunks)

    def window(self) -> np.ndarray:
        """1-D blending weights over a patch: 1 on the core, cosine tapers across its edges, 0 beyond.

        The taper of tile k and the one of tile k+1 are cos^2 and sin^2 of the same angle, so they
        sum to one (a partition of unity); `predict_block` normalises by the sum anyway.
        """
        m, s, b = self.margin, self.stride, self.blend
        w = np.zeros(self.patch, dtype=np.float64)
        w[m:m + s] = 1.0
        if b:
            theta = 0.5 * np.pi * (np.arange(b) + 0.5) / b
            w[m - self._lo:m - self._lo + b] = np.sin(theta) ** 2
            w[m + s - self._lo:m + s - self._lo + b] = np.cos(theta) ** 2
        return w


def make_grid(ckpt: Checkpoint, patch: int | None = None, margin: int | None = None, blend: int = 0,
              extent: int | None = None, fold: int | None = None) -> PatchGrid:
    """The patch grid for a checkpoint: margins cover the receptive field, sizes respect `divisor`.

    Without `patch` the stride is DEFAULT_STRIDE, or less for a cube whose longest side (`extent`)
    is shorter, so small cubes do not push mostly padding through the model. It depends on the
    cube's shape, never on its chunking. `fold` (None: FOLD_FRACTION of the stride, 0 with blending)
    is the thickest region-edge remainder a neighbouring patch grows over (`PatchGrid`).
    """
    d = max(1, int(ckpt.divisor))
    radius = ckpt.receptive_field // 2
    if margin is None:
        margin = _round_up(max(radius, math.ceil(blend / 2)), d)
    if margin < radius:
        raise ValueError(f"patch margin {margin} px is smaller than the model's receptive-field radius "
                         f"{radius} px (receptive field {ckpt.receptive_field} px): patches would disagree")
    if margin % d:
        raise ValueError(f"patch margin {margin} px must be a multiple of the model divisor {d}")
    if patch is None:
        stride = DEFAULT_STRIDE if extent is None else min(DEFAULT_STRIDE, _round_up(max(extent, 1), d))
        stride = max(stride, _round_up(blend, d))
    else:
        stride = patch - 2 * margin
    if stride < 1 or stride % d:
        raise ValueError(f"patch {patch} px minus 2 x margin {margin} px gives a stride of {stride} px; it must be "
                         f"positive and a multiple of the model divisor {d} (e.g. patch={2 * margin + 8 * d})")
    if fold is None:
        fold = 0 if blend else int(stride * FOLD_FRACTION)
    return PatchGrid(stride, margin, blend, fold)


# --------------------------------------------------------------------------- global pixel indices


def _resolution(cube: xr.DataArray, dim: str) -> float:
    c = np.asarray(cube[dim].values, dtype=np.float64)
    if c.size >= 2:
        step = np.diff(c)
        if not np.allclose(step, step[0], rtol=0, atol=1e-6 * abs(step[0])):
            raise ValueError(f"cube coordinate {dim!r} is not regularly spaced")
        return float(abs(step[0]))
    try:
        rx, ry = cube.rio.resolution()
        return float(abs(rx if dim == "x" else ry))
    except Exception as e:
        raise ValueError(f"cannot tell the cube's {dim} resolution from one pixel and no transform: {e}") from e


def global_start(cube: xr.DataArray, dim: str) -> int:
    """Global lattice index of the cube's first pixel along `dim` (x: columns east; y: rows south)."""
    c = np.asarray(cube[dim].values, dtype=np.float64)
    descending = dim == "y" and (c.size < 2 or c[1] < c[0])  # north-up: rows grow southwards
    return lattice_index(c, _resolution(cube, dim), descending=descending, what=f"cube {dim}")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Everything `predict` decides before building the graph; cheap, reads no pixels."""

    grid: PatchGrid
    halo: tuple[int, int]  # (y, x) pixels read around each chunk
    chunks: tuple[tuple[int, ...], tuple[int, ...]]  # (y, x) core chunks the blocks run on
    start: tuple[int, int]  # global (row, col) of the cube's first pixel
    computed_px: int  # pixels pushed through the model
    output_px: int

    @property
    def computed_over_output(self) -> float:
        return self.computed_px / self.output_px


def _axis_need(chunks: Sequence[int], g0: int, grid: PatchGrid, cut: bool = True) -> tuple[int, int]:
    """(halo needed, pixels computed along this axis) for one axis of chunks; `cut`: the chunks are the
    whole region, so its edge patches are cut to it (`PatchGrid.span`), else they lie inside a larger one."""
    need, computed, pos = 0, 0, g0
    lo_, hi_ = (g0, g0 + sum(chunks)) if cut else (-math.inf, math.inf)
    for c in chunks:
        lo, hi = grid.reach(pos, pos + c, lo_, hi_)
        need = max(need, lo, hi)
        computed += sum(b - a for a, b in (grid.span(k, lo_, hi_) for k in grid.owners(pos, pos + c, lo_, hi_)))
        pos += c
    return need, computed


def plan(cube: xr.DataArray, ckpt: Checkpoint, *, halo: int | None = None, patch: int | None = None,
         margin: int | None = None, blend: int = 0, fold: int | None = None) -> Plan:
    """Patch grid, halo and chunks for inference of `ckpt` over `cube`; refuses a too-small halo."""
    grid = make_grid(ckpt, patch, margin, blend, extent=max(cube.sizes["y"], cube.sizes["x"]), fold=fold)
    start = (global_start(cube, "y"), global_start(cube, "x"))
    chunks = [tuple(cube.chunks[cube.get_axis_num(d)]) for d in ("y", "x")]
    needs, computed = [], []
    for i in range(2):
        need, comp = _axis_need(chunks[i], start[i], grid)
        if need > min(chunks[i]):
            # dask cannot borrow a halo wider than a neighbouring chunk: cut on the tile grid instead
            # (a folded edge remainder in its neighbour's chunk)
            chunks[i] = grid.cut(start[i], start[i] + sum(chunks[i]))
            need, comp = _axis_need(chunks[i], start[i], grid)
        needs.append(need)
        computed.append(comp)
    radius = ckpt.receptive_field // 2
    if halo is not None:
        if halo < radius:
            raise ValueError(f"halo {halo} px is smaller than the model's receptive-field radius {radius} px "
                             f"(receptive field {ckpt.receptive_field} px of model {ckpt.model!r})")
        if halo < max(needs):
            raise ValueError(f"halo {halo} px is smaller than the {max(needs)} px the patch grid needs "
                             f"(patch {grid.patch} px = stride {grid.stride} + 2 x margin {grid.margin}, "
                             f"blend {grid.blend}, chunks y={chunks[0][:3]}.. x={chunks[1][:3]}..)")
        needs = [halo, halo]
    shape = cube.sizes["y"] * cube.sizes["x"]
    return Plan(grid, (needs[0], needs[1]), (chunks[0], chunks[1]), start, computed[0] * computed[1], shape)


def computed_over_output(chunk_px: int, ckpt: Checkpoint, *, patch: int | None = None,
                         margin: int | None = None, blend: int = 0) -> float:
    """Model pixels computed per output pixel for square chunks of `chunk_px` on the global tile grid."""
    grid = make_grid(ckpt, patch, margin, blend)
    _, comp = _axis_need([chunk_px], 0, grid, cut=False)
    return (comp / chunk_px) ** 2


# --------------------------------------------------------------------------- model cache and device


_RUN_LOCK = threading.Lock()  # one forward at a time per process: torch already uses every core


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available (and not told otherwise), else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


Runner = tuple[torch.nn.Module, Checkpoint, torch.device]


class ModelCache:
    """Models built from checkpoints, once per process and device, kept for the tasks that follow.

    Keyed by the checkpoint file's path, mtime and size (a rewritten file is built again), or by an
    in-memory checkpoint's digest, and the device. A cache belongs to one process: pickled inside a
    task it stands for the receiving process's cache (`process_models()`), never a copy of this one.
    """

    def __init__(self) -> None:
        self._models: dict[tuple, Runner] = {}
        self._lock = threading.Lock()
        self.builds = 0  # models built so far (a cache hit builds none)
        self._token = uuid.uuid4().hex

    def get(self, ref: str | tuple[str, Checkpoint], device: str | None) -> Runner:
        """(model, checkpoint, device) for a checkpoint path or a (digest, checkpoint) pair; built on first use."""
        if isinstance(ref, tuple):
            key, ckpt = ("mem", ref[0], device), ref[1]
        else:
            st = os.stat(ref)
            key, ckpt = ("file", os.path.abspath(ref), st.st_mtime_ns, st.st_size, device), None
        with self._lock:
            hit = self._models.get(key)
            if hit is None:
                ckpt = ckpt if ckpt is not None else load_checkpoint(ref)
                dev = pick_device(device)
                hit = self._models[key] = (for_inference(ckpt.build_model(), dev), ckpt, dev)
                self.builds += 1
        return hit

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)

    def __reduce__(self) -> tuple:
        return (process_models, ())

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("glacier_stac.infer.ModelCache", self._token)


@functools.cache
def process_models() -> ModelCache:
    """This process's model cache: the one per-process default, made on first use. On a Dask worker
    cluster.py's `ModelPlugin` holds it (and sets torch's threads); without a cluster torch keeps its
    default threads and forwards are serialised (`forward_probabilities`)."""
    return ModelCache()


VIEWS = (1, 2, 4, 8)  # test-time views a prediction may average (`dihedral_views`)


def dihedral_views(n: int) -> tuple[tuple[int, bool], ...]:
    """The first `n` of the eight symmetries of a square as (quarter turns, then flip x): identity, the x
    flip, the y flip (a half turn + x flip), the half turn, then the four that swap rows and columns.
    Why these: training augments with exactly these flips and 90-degree turns (`train.augment`), so
    each view is an input the model learned, and averaging them cancels the part of an edge decision
    that depends only on which way the patch faces (see `benchmarks/results/accuracy-views.json`)."""
    if n not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {n!r}")
    return ((0, False), (0, True), (2, True), (2, False), (1, False), (1, True), (3, False), (3, True))[:n]


def _view(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return torch.flip(x, dims=(-1,)) if flip else x


def _unview(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, -turns, dims=(-2, -1)) if turns else x


def forward_probabilities(model: torch.nn.Module, batch: np.ndarray, device: torch.device,
                          views: int = 1) -> np.ndarray:
    """Softmax class probabilities for a (B, F, P, P) float32 batch of normalised inputs, averaged over
    `views` dihedral views of each patch (`dihedral_views`; 1: the patch as it is)."""
    todo = dihedral_views(views)
    # serialise forwards when one already fills the machine (torch on every core, or the one GPU);
    # with a per-thread share of the cores (inside a multi-threaded Dask worker) they run side by side
    serialise = device.type == "cuda" or torch.get_num_threads() >= (os.cpu_count() or 1)
    with _RUN_LOCK if serialise else contextlib.nullcontext(), torch.inference_mode():
        # channels_last: oneDNN's / cuDNN's NHWC kernels; models from the cache are already NHWC with
        # BatchNorm folded (`models.inference.for_inference`; the figures: inference_throughput.json
        # cpu_variants; bf16 autocast is ~20x slower on CPUs without AVX512-BF16)
        model.to(memory_format=torch.channels_last)  # a no-op when the weights already are
        if device.type == "cuda":
            # pinned host memory: the copy runs as DMA; fp16 autocast keeps probabilities within 1e-3
            # of fp32 (benchmarks/gpu_check.py checks it)
            x = torch.from_numpy(batch).pin_memory().to(device, non_blocking=True)
        else:
            x = torch.from_numpy(batch)
        prob = None
        for turns, flip in todo:
            xv = _view(x, turns, flip).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext():
                logits = model(xv)
            p = _unview(torch.softmax(logits.float(), dim=1), turns, flip)
            prob = p if prob is None else prob.add_(p)
        if len(todo) > 1:
            prob = prob.div_(len(todo))
        return prob.cpu().numpy()


ACTIVATION_BYTES_PER_PX = 640  # fp32 U-Net (base 16) forward, peak bytes per input pixel (measured: 1136^2 -> 0.62 GB)
GPU_MEMORY_FRACTION = 0.5  # of the device's free memory one batch may use (two tasks may share it)


def device_batch_size(device: torch.device, patch: int, bytes_per_px: int = ACTIVATION_BYTES_PER_PX) -> int:
    """Patches per forward: 1 on CPU, as many as fit half the free memory on CUDA (at most 32).

    Why: on CPU a batch of 4 is no faster than 4 forwards of one (`inference_throughput.py` measures
    it) but holds 4 patches' activations at once, 2.3 GB for 1136 px U-Net patches instead of 0.6 GB,
    per worker thread. A GPU needs batches to fill it; under fp16 autocast activations take half.
    """
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_patch = patch * patch * bytes_per_px / 2
    return int(max(1, min(32, GPU_MEMORY_FRACTION * free // per_patch)))


# --------------------------------------------------------------------------- the per-block work


def normalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float], fill: float = 0.0) -> np.ndarray:
    """(x - mean) / std per feature (axis 0), missing values set to `fill` (normalised units).

    Training and inference both call this, so a model sees the same numbers in both.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    mean_ = np.asarray(mean, dtype=np.float32).reshape(shape)
    scale = (1.0 / np.asarray(std, dtype=np.float64)).astype(np.float32).reshape(shape)
    z = np.subtract(x, mean_, dtype=np.float32)
    z *= scale
    np.copyto(z, np.float32(fill), where=~np.isfinite(z))
    return z


@dataclass(frozen=True)
class Extent:
    """Global pixel bounds [y0, y1) x [x0, x1) of the region being predicted (patches are cut to it)."""

    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class _Patch:
    """One tile's work inside a block: full patch origin, the (cut) input window, the core part it fills."""

    py: int
    px: int
    ay: int
    by: int
    ax: int
    bx: int
    y0: int
    y1: int
    x0: int
    x1: int


def _batches(todo: list[_Patch], size: int) -> list[list[_Patch]]:
    """Runs of at most `size` consecutive patches of one shape (kept in (ky, kx) order: sums reproducible)."""
    out: list[list[_Patch]] = []
    for t in todo:
        if out and len(out[-1]) < size and (out[-1][0].by - out[-1][0].ay, out[-1][0].bx - out[-1][0].ax) == (
                t.by - t.ay, t.bx - t.ax):
            out[-1].append(t)
        else:
            out.append([t])
    return out


def predict_block(block: np.ndarray, origin: tuple[int, int], core: tuple[int, int, int, int],
                  grid: PatchGrid, ckpt: Checkpoint,
                  forward: Callable[[np.ndarray], np.ndarray], batch_size: int = 1,
                  extent: Extent | None = None) -> np.ndarray:
    """Class probabilities (n_classes, h, w) for the core of one haloed block; NaN where invalid.

    block: (n_features, H, W) raw features in checkpoint order, NaN = missing; origin: global
    (row, col) of block[:, 0, 0]; core: (row0, col0, h, w) of the output inside the block;
    forward: (B, F, Ph, Pw) normalised inputs -> (B, C, Ph, Pw) probabilities; extent: the region,
    when given patches at its edges are cut to it (`PatchGrid.span`), else every patch is full.
    Patches are normalised batch by batch, never the whole block at once (a block-sized float32 copy).
    """
    r0, c0, h, w = core
    req = [ckpt.features.index(f) for f in ckpt.required]
    valid = np.all(np.isfinite(block[req, r0:r0 + h, c0:c0 + w]), axis=0)
    n_cls = len(ckpt.classes)
    out = np.full((n_cls, h, w), np.nan, dtype=np.float32)
    if not valid.any():
        return out
    gy0, gx0 = origin[0] + r0, origin[1] + c0  # global index of the core's first pixel
    s, m = grid.stride, grid.margin
    todo = []
    # the region: patches at its edges are cut to it, thin edge remainders folded into a neighbour
    ry, rx = ((extent.y0, extent.y1), (extent.x0, extent.x1)) if extent is not None else ((-math.inf, math.inf),) * 2
    for ky in grid.owners(gy0, gy0 + h, *ry):
        for kx in grid.owners(gx0, gx0 + w, *rx):
            py, px = ky * s - m - origin[0], kx * s - m - origin[1]  # full patch origin inside the block
            # the input this tile is computed from: the full patch, or cut to (grown over) the region
            (ay, by), (ax, bx) = grid.span(ky, *ry), grid.span(kx, *rx)
            ay, by, ax, bx = ay - origin[0], by - origin[0], ax - origin[1], bx - origin[1]
            if ay < 0 or ax < 0 or by > block.shape[1] or bx > block.shape[2]:
                raise ValueError(f"halo too small: tile ({ky}, {kx}) reaches outside the block")
            # the part of the core this tile's weights (or its grown patch) cover
            (sy0, sy1), (sx0, sx1) = grid.segment(ky, *ry), grid.segment(kx, *rx)
            y0, y1 = max(0, sy0 - origin[0] - r0), min(h, sy1 - origin[0] - r0)
            x0, x1 = max(0, sx0 - origin[1] - c0), min(w, sx1 - origin[1] - c0)
            if y1 > y0 and x1 > x0 and valid[y0:y1, x0:x1].any():  # all-missing tiles are skipped
                todo.append(_Patch(py, px, ay, by, ax, bx, y0, y1, x0, x1))
    win = grid.window().astype(np.float32)
    wsum = np.zeros((h, w), dtype=np.float32) if grid.blend else None
    if wsum is not None:
        out[:] = 0.0
    for part in _batches(todo, max(1, batch_size)):
        batch = np.empty((len(part), block.shape[0], part[0].by - part[0].ay, part[0].bx - part[0].ax), np.float32)
        for j, t in enumerate(part):
            batch[j] = normalise(block[:, t.ay:t.by, t.ax:t.bx], ckpt.mean, ckpt.std, ckpt.nan_fill)
        prob = forward(batch)
        del batch
        for t, pr in zip(part, prob, strict=True):
            y0, y1, x0, x1 = t.y0, t.y1, t.x0, t.x1
            iy, ix = slice(y0 + r0 - t.ay, y1 + r0 - t.ay), slice(x0 + c0 - t.ax, x1 + c0 - t.ax)
            if wsum is None:  # no blending: tile cores are disjoint, each pixel from one patch
                out[:, y0:y1, x0:x1] = pr[:, iy, ix]
            else:  # ordered by (ky, kx) whatever the chunking, so sums are reproducible
                sy, sx = slice(y0 + r0 - t.py, y1 + r0 - t.py), slice(x0 + c0 - t.px, x1 + c0 - t.px)
                wt = win[sy, None] * win[None, sx]
                out[:, y0:y1, x0:x1] += pr[:, iy, ix] * wt
                wsum[y0:y1, x0:x1] += wt
    if wsum is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            out /= wsum
    out[:, ~valid] = np.nan
    return out


def _block_task(block: np.ndarray, ref, device: str | None, grid: PatchGrid, halo: tuple[int, int],
                starts: tuple[np.ndarray, np.ndarray], batch_size: int | None, block_id=None,
                models: ModelCache | None = None,
                extent: Extent | None = None, views: int = 1) -> np.ndarray:
    """Dask task: global position of this block from its id, then `predict_block` with the cached model
    (each patch averaged over `views` dihedral views)."""
    model, ckpt, dev = (models if models is not None else process_models()).get(ref, device)
    iy, ix = block_id[1], block_id[2]
    h, w = block.shape[1] - 2 * halo[0], block.shape[2] - 2 * halo[1]
    origin = (int(starts[0][iy]) - halo[0], int(starts[1][ix]) - halo[1])
    if batch_size is None:
        batch_size = device_batch_size(dev, grid.max_patch)
    return predict_block(block, origin, (halo[0], halo[1], h, w), grid, ckpt,
                         lambda b: forward_probabilities(model, b, dev, views), batch_size, extent)


def _side(d: int, halo: int, n: int) -> slice:
    """Rows (or columns) of a block of `n` that the block before it (`d` = 1), beside it (0) or after
    it (-1) borrows: its first, all, or its last `halo`."""
    return slice(None) if d == 0 else slice(0, halo) if d == 1 else slice(n - halo, n)


def _edge(block: np.ndarray, dy: int, dx: int, halo: tuple[int, int]) -> np.ndarray:
    """The strip of a neighbour block that lies in the halo of a block from which it lies (dy, dx) away.

    A copy: a view would keep the whole neighbour block in the worker's memory until every block that
    borrows from it has run, which is what made a region-wide predict's memory grow with the region.
    """
    return block[:, _side(dy, halo[0], block.shape[1]), _side(dx, halo[1], block.shape[2])].copy()


class BlockGraph:
    """The tasks that make one block of a lazy array, carried inside another task (Dask does not look
    inside a plain object) and run there; the array's data nodes stay outside as that task's inputs."""

    def __init__(self, tasks: dict, key: tuple, data_keys: list) -> None:
        self.tasks, self.key, self.data_keys = tasks, key, data_keys

    def compute(self, data: Sequence) -> np.ndarray:
        from dask._task_spec import DataNode
        from dask.local import get_sync

        return get_sync({**self.tasks, **{k: DataNode(k, v) for k, v in zip(self.data_keys, data, strict=True)}},
                        self.key)


def _block_graphs(arr: da.Array) -> dict[tuple[int, int], BlockGraph]:
    """Each (iy, ix) block of a (feature, y, x) array with one feature chunk, as a `BlockGraph`."""
    from dask._task_spec import DataNode, convert_legacy_graph

    dsk = convert_legacy_graph(dict(arr.__dask_graph__()))
    out = {}
    for iy in range(len(arr.chunks[1])):
        for ix in range(len(arr.chunks[2])):
            key = (arr.name, 0, iy, ix)
            tasks, data, todo = {}, [], [key]
            while todo:
                k = todo.pop()
                if k in tasks or k in data:
                    continue
                if isinstance(dsk[k], DataNode):
                    data.append(k)
                else:
                    tasks[k] = dsk[k]
                    todo.extend(dsk[k].dependencies)
            out[(iy, ix)] = BlockGraph(tasks, key, data)
    return out


def _lend(block: BlockGraph, data: list, halo: tuple[int, int], ways: list) -> dict[int, np.ndarray]:
    """Dask task: read a block and keep only the strips its neighbours borrow (`ways`: (dy, dx) from
    each borrower to this block), keyed by `_way`; the block itself is dropped at once."""
    a = block.compute(data)
    return {_way(dy, dx): _edge(a, dy, dx, halo) for dy, dx in ways}


def _way(dy: int, dx: int) -> int:
    return (dy + 1) * 3 + dx + 1


def _haloed_block_task(task: Callable[..., np.ndarray], centre: BlockGraph, data: list, ref,
                       halo: tuple[int, int], iy: int, ix: int, *pieces: list) -> np.ndarray:
    """Dask task: read the block, grow it by its halo from the neighbours' strips (NaN where there is
    no neighbour), then `task` on it; the block exists only inside this task, so none waits in memory
    for the model."""
    hy, hx = halo
    core = centre.compute(data)
    f, h, w = core.shape
    block = np.full((f, h + 2 * hy, w + 2 * hx), np.nan, dtype=np.float32)
    block[:, hy:hy + h, hx:hx + w] = core
    del core
    for dy, dx, strip in pieces:
        ys = slice(hy, hy + h) if dy == 0 else slice(0, hy) if dy < 0 else slice(hy + h, h + 2 * hy)
        xs = slice(hx, hx + w) if dx == 0 else slice(0, hx) if dx < 0 else slice(hx + w, w + 2 * hx)
        block[:, ys, xs] = strip
    del pieces
    return task(block, ref, block_id=(0, iy, ix))


def _haloed_map(task: Callable[..., np.ndarray], data: da.Array, ref, halo: tuple[int, int], n_out: int,
                token: str, annotations: Mapping) -> da.Array:
    """(n_out, y, x) array of `task` over each (feature, y, x) block of `data` grown by `halo` (NaN
    past the array's edges); the region's edges are the only padding.

    Why not `da.map_overlap`: its halo exchange cuts every block into interior and edge pieces and
    concatenates them into a second, haloed copy before the model runs; the cheap reads, cuts and
    concatenations ran far ahead of the slow model tasks, and the blocks, pieces and copies waiting
    for it (up to 2.6 + 1.0 GB per worker for 67 Mpx) made a worker's memory grow with the region.
    Here each model task reads its own block inside itself (so no block waits for the model), and
    each neighbour lends only its strips of halo width: a task reads the neighbour and keeps just
    those (`_lend`). The price: a block with neighbours is read twice, once for itself and once to
    lend (a lazy cube's reads cost a fraction of the model on CPU; the pipeline's tiles read their
    own context and never come here).
    """
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    hy, hx = halo
    ny, nx = len(data.chunks[1]), len(data.chunks[2])
    blocks = _block_graphs(data)
    name = f"{token}-{dask.base.tokenize(task, data.name, ref, halo, n_out)}"
    lname, sname = f"halo-lend-{name}", f"halo-strip-{name}"
    near = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    dsk: dict = {}
    for (jy, jx), b in blocks.items():
        ways = [(dy, dx) for dy, dx in near if 0 <= jy - dy < ny and 0 <= jx - dx < nx]
        if ways:
            dsk[(lname, jy, jx)] = (_lend, b, list(b.data_keys), (hy, hx), ways)
            for dy, dx in ways:
                dsk[(sname, jy, jx, _way(dy, dx))] = (operator.getitem, (lname, jy, jx), _way(dy, dx))
    tasks: dict = {}
    ref_arg = ref.key if isinstance(ref, Delayed) else ref
    for (iy, ix), b in blocks.items():
        # block (iy + dy, ix + dx) lies (dy, dx) from (iy, ix): it lends its side facing (iy, ix)
        pieces = [[dy, dx, (sname, iy + dy, ix + dx, _way(dy, dx))] for dy, dx in near
                  if 0 <= iy + dy < ny and 0 <= ix + dx < nx]
        tasks[(name, 0, iy, ix)] = (_haloed_block_task, task, b, list(b.data_keys), ref_arg, (hy, hx), iy, ix,
                                    *pieces)
    graph = data.__dask_graph__()  # its data nodes (an in-memory array's) stay graph keys
    source = {k: graph[k] for k in {k for b in blocks.values() for k in b.data_keys}}
    layers = {lname: MaterializedLayer({**source, **dsk}),
              name: MaterializedLayer(tasks, annotations=dict(annotations) or None)}
    deps = {lname: set(), name: {lname}}
    if isinstance(ref, Delayed):
        layers.update(ref.dask.layers)
        deps.update(ref.dask.dependencies)
        deps[name] |= set(ref.__dask_layers__())
    chunks = ((n_out,), data.chunks[1], data.chunks[2])
    return da.Array(HighLevelGraph(layers, deps), name, chunks, meta=np.empty((0, 0, 0), dtype=np.float32))


def classes_from_probability(prob: np.ndarray) -> np.ndarray:
    """uint8 class of highest probability, a subclass (`labels.PARENT`) counted in its parent first and
    taken only where it beats the parent; NODATA_CLASS (255) where the probability is NaN."""
    ok = np.isfinite(prob[0])
    p = np.where(np.isfinite(prob), prob, -1.0)
    nested = [(int(c), int(par)) for c, par in PARENT.items() if c < p.shape[0]]
    top = p.copy() if nested else p
    for c, par in nested:
        top[par] += p[c]
        top[c] = -np.inf
    k = np.argmax(top, axis=0)
    for c, par in nested:
        k = np.where((k == par) & (p[c] > p[par]), c, k)
    k = k.astype(np.uint8)
    k[~ok] = NODATA_CLASS
    return k


# --------------------------------------------------------------------------- the Dask wiring


def _check_cube(cube: xr.DataArray) -> None:
    if not isinstance(cube, xr.DataArray):
        raise ValueError(f"cube must be an xarray.DataArray, got {type(cube).__name__}")
    if set(cube.dims) != {"feature", "y", "x"}:
        raise ValueError(f"cube dims must be ('feature', 'y', 'x'), got {cube.dims}")
    if "feature" not in cube.coords:
        raise ValueError("cube has no 'feature' coordinate naming its features")


def _resolve(checkpoint: Checkpoint | str | Path) -> tuple[Checkpoint, object]:
    """(checkpoint, reference shipped to tasks): a path for files, a keyed Delayed for in-memory ones."""
    if isinstance(checkpoint, Checkpoint):
        key = checkpoint.digest()
        return checkpoint, dask.delayed((key, checkpoint), name=f"checkpoint-{key}", traverse=False)
    path = Path(checkpoint)
    return load_checkpoint(path), str(path.resolve())


def predict(cube: xr.DataArray, checkpoint: Checkpoint | str | Path, *, halo: int | None = None,
            patch: int | None = None, batch_size: int | None = None, device: str | None = None, blend: int = 0,
            margin: int | None = None, resources: Mapping[str, float] | None = None,
            models: ModelCache | None = None, fold: int | None = None, views: int = 1) -> xr.Dataset:
    """Lazy class probabilities for a (feature, y, x) cube.

    Returns a Dataset with `probability` (class, y, x) float32 (NaN where invalid),
    `glacier_probability` (y, x) = P(clean ice) + P(debris ice), `classes` (y, x) uint8 (255 where
    invalid) and `valid` (y, x) bool, on the cube's coordinates and CRS. Nothing is computed here.
    The checkpoint's features are picked from the cube by name; a missing one is an error.
    `resources`: the Dask resources each model task asks for, e.g. {"GPU": 1} on a cluster with GPU
    workers (`cluster.has_gpu_workers`); `models`: the model cache (None: each process's own).
    `batch_size` None picks it for the device (`device_batch_size`); `fold` (None: the default) the
    thickest region-edge remainder a neighbouring patch grows over (`PatchGrid`, 0: none). `views`: test-time
    views each patch's probabilities are averaged over (`dihedral_views`: 1, 2, 4 or 8; each costs one forward).
    """
    _check_cube(cube)
    dihedral_views(views)  # a bad count fails here, before the graph is built
    ckpt, ref = _resolve(checkpoint)
    idx = ckpt.check_features(cube["feature"].values)
    cube = cube.transpose("feature", "y", "x")
    if cube.chunks is None:  # in-memory cube: cut it on the global tile grid
        cube = cube.chunk({"feature": -1, "y": aligned_chunks(global_start(cube, "y"), cube.sizes["y"], DEFAULT_STRIDE),
                           "x": aligned_chunks(global_start(cube, "x"), cube.sizes["x"], DEFAULT_STRIDE)})
    pl = plan(cube, ckpt, halo=halo, patch=patch, margin=margin, blend=blend, fold=fold)
    if pl.chunks != (cube.chunks[cube.get_axis_num("y")], cube.chunks[cube.get_axis_num("x")]):
        log.info("predict: chunks smaller than the halo; blocks cut on the %d px tile grid instead "
                 "(output keeps the cube's chunks)", pl.grid.stride)
    data = cube.data[idx] if idx != list(range(cube.sizes["feature"])) else cube.data
    hy, hx = pl.halo
    # dask cannot borrow a halo wider than a neighbouring chunk: an axis with a chunk narrower than its
    # halo becomes one chunk whose halo is no-data padding (cheap: patches with no valid pixel are skipped)
    single = (min(pl.chunks[0]) < hy, min(pl.chunks[1]) < hx)
    data = data.astype(np.float32).rechunk({0: -1, 1: -1 if single[0] else pl.chunks[0],
                                            2: -1 if single[1] else pl.chunks[1]})
    core = (data.chunks[1], data.chunks[2])
    starts = tuple(s + np.concatenate([[0], np.cumsum(c)[:-1]]) for s, c in zip(pl.start, core, strict=True))
    n_cls = len(ckpt.classes)
    annotations = {"resources": dict(resources)} if resources else {}
    log.info("predict %s: patch %d (stride %d, margin %d, blend %d), halo %s, %.3f px computed per output px",
             ckpt.model, pl.grid.patch, pl.grid.stride, pl.grid.margin, pl.grid.blend, pl.halo,
             pl.computed_over_output)
    task = functools.partial(_block_task, device=device, grid=pl.grid, halo=pl.halo, starts=starts,
                             batch_size=batch_size, models=models, views=views,
                             extent=Extent(pl.start[0], pl.start[0] + cube.sizes["y"], pl.start[1],
                                           pl.start[1] + cube.sizes["x"]))
    prob = _haloed_map(task, data, ref, pl.halo, n_cls, f"predict-{ckpt.model}", annotations)
    orig = cube.chunks
    if prob.chunks[1:] != (orig[1], orig[2]):
        prob = prob.rechunk({1: orig[1], 2: orig[2]})
    return prediction_dataset(
        prob, cube, ckpt.classes,
        {"model": ckpt.model, "checkpoint_created": ckpt.created, "patch": pl.grid.patch,
         "stride": pl.grid.stride, "margin": pl.grid.margin, "blend": pl.grid.blend, "fold": pl.grid.fold,
         "halo_y": hy, "halo_x": hx, "computed_over_output": pl.computed_over_output, "views": views})


def prediction_dataset(prob: da.Array, cube: xr.DataArray, classes: Sequence[str], attrs: dict) -> xr.Dataset:
    """The prediction Dataset every classifier returns, from lazy (class, y, x) probabilities (NaN = invalid).

    `probability`, `classes` (uint8, NODATA_CLASS where invalid), `valid` and, when the classes hold
    glacier classes, `glacier_probability`, on the cube's coordinates (less `feature`) and CRS; one
    builder so the learned models and the baselines cannot drift apart.
    """
    names = list(classes)
    klass = da.map_blocks(classes_from_probability, prob, drop_axis=0, dtype=np.uint8)
    coords = {k: v for k, v in cube.coords.items() if "feature" not in v.dims}
    ds = xr.Dataset(
        {
            PROBABILITY: (("class", "y", "x"), prob),
            CLASSES_VAR: (("y", "x"), klass, {"nodata": NODATA_CLASS, "flag_values": list(range(len(names))),
                                            "flag_meanings": " ".join(names)}),
            VALID: (("y", "x"), da.isfinite(prob[0])),
        },
        coords={**coords, "class": names},
        attrs=attrs,
    )
    glacier = [c for c in GLACIER_CLASSES if c in names]
    if glacier:
        ds[GLACIER_PROBABILITY] = ds[PROBABILITY].sel({"class": glacier}).sum("class", skipna=False)
    return ds


def tile_margin(checkpoint: Checkpoint | str | Path) -> int:
    """Context in pixels a tile's cube needs around it for `predict_tile` (the patch grid's margin)."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    return make_grid(ckpt).margin


def predict_tile(context: xr.DataArray, checkpoint: Checkpoint | str | Path, *, margin: int,
                 batch_size: int = 4, device: str | None = None, resources: Mapping[str, float] | None = None,
                 models: ModelCache | None = None, views: int = 1) -> xr.Dataset:
    """Lazy prediction of one tile core from a cube of the tile plus `margin` pixels of context each side.

    Why: a pipeline that works tile by tile reads each tile's context once and pushes exactly one
    patch (tile + 2 x margin) through the model, (1 + 2m/1024)^2 = 1.27 model px per output px for the
    U-Net, instead of the neighbours' patches a lazy `predict` over a padded cube would compute. The
    patch is the same one `predict` computes for this tile (anchored on the global lattice), so the
    result equals `predict` over any larger cube (chunk invariance holds across both).
    """
    _check_cube(context)
    dihedral_views(views)
    ckpt, ref = _resolve(checkpoint)
    grid = make_grid(ckpt)
    if margin < grid.margin:
        raise ValueError(f"tile context of {margin} px is less than the {grid.margin} px margin model "
                         f"{ckpt.model!r} needs")
    idx = ckpt.check_features(context["feature"].values)
    context = context.transpose("feature", "y", "x")
    start = (global_start(context, "y") + margin, global_start(context, "x") + margin)
    h, w = context.sizes["y"] - 2 * margin, context.sizes["x"] - 2 * margin
    if h < 1 or w < 1 or (start[0] // grid.stride != (start[0] + h - 1) // grid.stride
                          or start[1] // grid.stride != (start[1] + w - 1) // grid.stride):
        raise ValueError(f"predict_tile needs one tile of the {grid.stride} px lattice plus {margin} px each side; "
                         f"got a {context.sizes['y']} x {context.sizes['x']} px cube")
    data = context.data if isinstance(context.data, da.Array) else da.from_array(np.asarray(context.data))
    data = (data[idx] if idx != list(range(context.sizes["feature"])) else data).astype(np.float32).rechunk(-1)
    n_cls = len(ckpt.classes)
    starts = (np.array([start[0]]), np.array([start[1]]))
    annotations = {"resources": dict(resources)} if resources else {}
    with dask.annotate(**annotations):
        prob = da.map_blocks(_block_task, data, ref, device, grid, (margin, margin), starts, batch_size, models=models,
                             views=views,
                             dtype=np.float32, chunks=((n_cls,), (h,), (w,)), token=f"predict-tile-{ckpt.model}",
                             meta=np.empty((0, 0, 0), dtype=np.float32))
    core = context.isel(y=slice(margin, margin + h), x=slice(margin, margin + w))
    computed = (h + 2 * margin) * (w + 2 * margin)
    return prediction_dataset(prob, core, ckpt.classes,
                              {"model": ckpt.model, "checkpoint_created": ckpt.created, "patch": grid.patch,
                               "stride": grid.stride, "margin": grid.margin, "blend": 0, "halo_y": margin,
                               "halo_x": margin, "computed_over_output": computed / (h * w), "views": views})
