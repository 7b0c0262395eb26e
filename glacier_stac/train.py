"""Training: labels on the cube's grid, patch sampling, the training loop, per-epoch validation.

Regions are whole scenes (a cube computed into memory and its label raster). Validation is always on
other regions, or on a spatially separate block of the same scene with a gap wider than a patch,
never on random pixels of a scene the model trains on. Patches are drawn more often along glacier
edges and on debris-covered ice, where mapping is hard; flips and rotations augment them.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import torch
import xarray as xr
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject
from scipy import ndimage
from torch import nn

from glacier_stac import cube as cubes
from glacier_stac import metrics
from glacier_stac.infer import classes_from_probability, normalise, pick_device
from glacier_stac.labels import BASE_CLASSES, CLASSES, PARENT, ROCK_GLACIER_NAMES, Label
from glacier_stac.models import get_model
from glacier_stac.models.checkpoint import Checkpoint
from glacier_stac.sensors import SENTINEL2

log = logging.getLogger(__name__)
IGNORE = 255

OPTICAL_FEATURES = SENTINEL2.features


@dataclass
class Region:
    """One scene to learn from or score on: features in memory and the truth on the same grid."""

    name: str
    features: xr.DataArray  # (feature, y, x) float32, computed
    labels: np.ndarray  # (y, x) uint8 Label codes, IGNORE where unknown

    def crop(self, ys: slice, xs: slice, name: str) -> Region:
        return Region(name, self.features.isel(y=ys, x=xs), self.labels[ys, xs])


# --------------------------------------------------------------------------- labels


def labels_from_raster(path: str | Path, geobox: GeoBox) -> np.ndarray:
    """A label raster (e.g. the synthetic truth) resampled onto `geobox` with nearest neighbour."""
    out = np.full(geobox.shape, IGNORE, dtype=np.uint8)
    with rasterio.open(path) as src:
        reproject(rasterio.band(src, 1), out, dst_transform=geobox.affine, dst_crs=geobox.crs.to_wkt(),
                  resampling=Resampling.nearest, dst_nodata=IGNORE)
    return out


def labels_from_outlines(outlines, geobox: GeoBox, class_column: str | None = None) -> np.ndarray:
    """Rasterise RGI/GLIMS-style glacier outlines onto `geobox`.

    Without `class_column` every polygon is clean ice; with it, values "debris"/"debris-covered"/2
    mark debris-covered ice, "water"/3 water and "rock glacier"/"rock_glacier"/"rockglacier"/4 rock
    glaciers. Background elsewhere.
    """
    if outlines.crs is None:
        raise ValueError("glacier outlines have no CRS")
    g = outlines.to_crs(geobox.crs.to_wkt())
    codes = np.full(len(g), int(Label.CLEAN_ICE))
    if class_column is not None:
        if class_column not in g.columns:
            raise ValueError(f"outlines have no column {class_column!r}; columns: {list(g.columns)}")
        v = g[class_column].astype(str).str.lower()
        codes[v.str.startswith("debris").to_numpy() | (v == "2").to_numpy()] = Label.DEBRIS_ICE
        codes[(v == "water").to_numpy() | (v == "3").to_numpy()] = Label.WATER
        codes[v.str.strip().isin(ROCK_GLACIER_NAMES).to_numpy()] = Label.ROCK_GLACIER
    order = np.argsort(codes, kind="stable")  # debris and water drawn over clean ice
    shapes = [(g.geometry.iloc[i], int(codes[i])) for i in order if g.geometry.iloc[i] is not None]
    if not shapes:
        return np.zeros(geobox.shape, np.uint8)
    return rasterize(shapes, out_shape=geobox.shape, transform=geobox.affine, fill=0, dtype="uint8")


def classes_for(regions: Sequence[Region], classes: Sequence[str] | None = None) -> list[str]:
    """The output classes of a model trained on `regions`: the four base ones, plus rock glaciers when
    any region's truth has them (a prefix of `labels.CLASSES`, so the output index is the Label code)."""
    if classes is not None:
        names = [str(c) for c in classes]
        if names != list(CLASSES[:len(names)]) or len(names) < len(BASE_CLASSES):
            raise ValueError(f"classes {names} must be the first classes of {list(CLASSES)} (at least "
                             f"{list(BASE_CLASSES)}), in that order")
    else:
        top = max((int(r.labels[r.labels != IGNORE].max(initial=0)) for r in regions), default=0)
        names = list(CLASSES[:max(len(BASE_CLASSES), top + 1)])
    for r in regions:
        ok = r.labels != IGNORE
        top = int(r.labels[ok].max(initial=0))
        if top >= len(names):
            raise ValueError(f"region {r.name} has label code {top} ({CLASSES[top] if top < len(CLASSES) else '?'}) "
                             f"outside the model's classes {names}")
    return names


# --------------------------------------------------------------------------- sampling


def near(mask: np.ndarray, reach_px: int) -> np.ndarray:
    """Pixels within `reach_px` of `mask` (Chebyshev distance): a square dilation as a separable, fast maximum
    filter."""
    return ndimage.maximum_filter(mask.astype(np.uint8), size=2 * reach_px + 1) > 0


def front_zone(labels: np.ndarray, reach_px: int = 8, sea_ice: np.ndarray | None = None) -> np.ndarray:
    """Ice-free, water-free pixels the model confuses with calving glacier ice: the sea ice, mélange
    and icebergs between a calving front and open water. The truth labels them background, so they are
    found as background within `reach_px` of both glacier ice and water (the fjord in front of a
    calving front); `sea_ice` (e.g. the generator's Surface.SEA_ICE) adds known sea ice anywhere."""
    ice = np.isin(labels, metrics.GLACIER)
    water = labels == Label.WATER
    zone = (labels == Label.BACKGROUND) & near(ice, reach_px) & near(water, reach_px)
    if sea_ice is not None:
        if sea_ice.shape != labels.shape:
            raise ValueError(f"sea_ice mask of shape {sea_ice.shape} does not match labels {labels.shape}")
        zone |= sea_ice.astype(bool) & ~ice & (labels != IGNORE)
    return zone


def sample_weights(labels: np.ndarray, edge_weight: float = 4.0, debris_weight: float = 4.0,
                   front_weight: float = 4.0, sea_ice: np.ndarray | None = None,
                   front: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel sampling weight: more on glacier edges, debris-covered ice and rock glaciers (both
    look like the rock around them in optics, so the model must see many of them), and on the sea ice
    and mélange before calving fronts (`front_zone`: bright, cold and rough like glacier ice, so models
    paint the glacier out over them and the front lands ~1 km off). `front`: that zone when the caller
    already has it."""
    ice = np.isin(labels, metrics.GLACIER)
    edge = ndimage.binary_dilation(metrics.edges(ice), iterations=3)
    w = (1.0 + edge_weight * edge + debris_weight * np.isin(labels, (Label.DEBRIS_ICE, Label.ROCK_GLACIER))
         + front_weight * (front_zone(labels, sea_ice=sea_ice) if front is None else front))
    return np.where(labels == IGNORE, 0.0, w)


def sample_patches(labels: np.ndarray, n: int, patch: int, rng: np.random.Generator,
                   weights: np.ndarray | None = None, **kw) -> np.ndarray:
    """(n, 2) top-left corners of patches whose centres are drawn by `sample_weights` (or `weights`, the
    same computed once per region: the training loop draws one patch at a time)."""
    h, w = labels.shape
    if h < patch or w < patch:
        raise ValueError(f"region of {h}x{w} px is smaller than the {patch} px training patch")
    wts = sample_weights(labels, **kw) if weights is None else weights
    wts = wts[patch // 2: h - patch + patch // 2 + 1, patch // 2: w - patch + patch // 2 + 1]
    p = wts.ravel() / wts.sum()
    idx = rng.choice(p.size, size=n, p=p)
    return np.stack(np.unravel_index(idx, wts.shape), axis=1)


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
    """Random flips and 90° rotations (aspect is not rotated with them: it is a weak feature here);
    `extra` (y, x) arrays (per-pixel loss weights) get the same flip and rotation as the labels."""
    k = int(rng.integers(4))
    arrs = [np.rot90(a, k, axes=(-2, -1)) for a in (x, y, *extra)]
    if rng.random() < 0.5:
        arrs = [a[..., ::-1] for a in arrs]
    return tuple(np.ascontiguousarray(a) for a in arrs)


# --------------------------------------------------------------------------- domain randomisation

REFLECTANCE = ("B02", "B03", "B04", "B08", "B11", "B12")


def randomise(x: np.ndarray, features: Sequence[str], mean: Sequence[float], std: Sequence[float],
              rng: np.random.Generator) -> np.ndarray:
    """Perturb one normalised (feature, y, x) patch as another place, season or sensor would.

    Why: a model trained on one climate learns its absolute levels (how bright, how warm, how high);
    these vary between regimes while the contrasts that map ice do not. Per patch: one illumination /
    atmosphere gain on all reflectances (band ratios unchanged) and a small gain per band, a thermal
    calibration/weather offset and a scaled debris thermal contrast, SAR calibration offsets, a shift of
    the absolute elevation (a valley floor at 200 m or 4000 m), and sensor noise.
    """
    x = x.copy()
    idx = {f: i for i, f in enumerate(features)}

    def shift(f: str, add: float = 0.0, gain: float = 1.0) -> None:
        i = idx.get(f)
        if i is None:
            return
        raw = x[i] * std[i] + mean[i]
        x[i] = ((raw * gain + add) - mean[i]) / std[i]

    g = rng.uniform(0.8, 1.2)
    for f in REFLECTANCE:
        shift(f, gain=g * rng.uniform(0.97, 1.03))
    dt, k = rng.uniform(-6.0, 6.0), rng.uniform(0.6, 1.4)  # one thermal offset and contrast for all its features
    shift("lwir11", add=dt)
    shift("lwir11_max", add=dt)
    shift("lst_anomaly", gain=k)
    shift("lst_max_anomaly", gain=k)
    shift("lst_max_anomaly_hist", gain=k)  # the same contrast, seen in earlier seasons
    for f in ("vv_db", "vh_db"):
        shift(f, add=rng.uniform(-1.5, 1.5))
    shift("elevation", add=rng.uniform(-1500.0, 1500.0))
    x += rng.normal(0.0, 0.03, x.shape).astype(np.float32)
    return x


# --------------------------------------------------------------------------- normalisation and batches


def normalisation(regions: Sequence[Region], features: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-feature mean and std over all valid pixels of the training regions."""
    means, stds = [], []
    for f in features:
        v = np.concatenate([r.features.sel(feature=f).values.ravel() for r in regions])
        v = v[np.isfinite(v)]
        m, s = (float(v.mean()), float(v.std())) if v.size else (0.0, 1.0)
        means.append(m)
        stds.append(s if s > 1e-6 else 1.0)
    return means, stds


def snow_zone(region: Region, feature: str = "snow_persistence") -> np.ndarray:
    """Ground off the glaciers that was snow-covered in some acquisition (seasonal snow, snowfields):
    bright and cold like clean ice in a composite, so models call it glacier in high, dry regimes (issue
    13: on the worst world most of the false glacier was such snow). Empty when the region lacks the
    feature (an optical-only or older feature set)."""
    if feature not in region.features.feature.values:
        return np.zeros(region.labels.shape, bool)
    snow = np.nan_to_num(region.features.sel(feature=feature).values) > 0
    return snow & (region.labels == Label.BACKGROUND)


def thermal_bare_snow_zone(region: Region) -> np.ndarray:
    """The part of `snow_zone` that every usable Landsat scene saw snow-free (`landsat_count` > 0,
    `landsat_snow` 0): the optics and the SAR saw snow, the thermal saw bare ground. A glacier's
    accumulation area is snow in the thermal scenes too, so this ground is not glacier; models miss it
    where a single optical scene saw snow high above the snowline (issue 13: most of the false glacier
    on the never-used seeds 801-802). Empty when the region lacks the thermal snow count."""
    have = set(region.features.feature.values)
    if not {"landsat_snow", "landsat_count"} <= have:
        return np.zeros(region.labels.shape, bool)
    seen = np.nan_to_num(region.features.sel(feature="landsat_count").values) > 0
    bare = np.nan_to_num(region.features.sel(feature="landsat_snow").values, nan=1.0) == 0
    return snow_zone(region) & seen & bare


def edge_band(labels: np.ndarray, reach_px: int = 10) -> np.ndarray:
    """Both sides of the glacier edge, `reach_px` deep: the ground just outside (moraines and debris-strewn
    slopes that models paint as debris-covered ice past the edge: issue 13's worst worlds had all their false
    debris within 100 m of a glacier) and the ice just inside (the debris-covered margins). Weighting one side
    alone moves the edge: the outside alone cost debris IoU on the margins."""
    ice = np.isin(labels, metrics.GLACIER)
    return ((near(ice, reach_px) & (labels == Label.BACKGROUND))
            | (near(~ice & (labels != IGNORE), reach_px) & ice))


def forefield_zone(region: Region, reach_px: int = 10, feature: str = "lst_max_anomaly",
                   warm_k: float = -1.0) -> np.ndarray:
    """Ice-free ground within `reach_px` of a glacier that reads nearly as warm as bare ground at its elevation
    (`feature` above `warm_k` K): fresh forefield and moraines, debris-coloured but with no ice beneath, where
    models paint debris-covered ice past the edge (issue 13: a third of the worst world's false debris read
    warmer than -0.5 K, where 3 % of true debris does). Empty when the region lacks the feature."""
    if feature not in region.features.feature.values:
        return np.zeros(region.labels.shape, bool)
    with np.errstate(invalid="ignore"):
        warm = region.features.sel(feature=feature).values > warm_k  # NaN (no thermal): not warm
    ice = np.isin(region.labels, metrics.GLACIER)
    return warm & near(ice, reach_px) & (region.labels == Label.BACKGROUND)


def pixel_weights(region: Region, front: np.ndarray, front_loss_weight: float = 4.0,
                  snow_loss_weight: float = 0.0, margin_loss_weight: float = 0.0,
                  forefield_loss_weight: float = 0.0, bare_snow_loss_weight: float = 0.0) -> np.ndarray:
    """Per-pixel loss weight: 1, plus `front_loss_weight` on the sea ice before calving fronts (`front`, from
    `front_zone`), `snow_loss_weight` on snow-covered ground off the glaciers (`snow_zone`),
    `bare_snow_loss_weight` more on the part of it the thermal saw bare (`thermal_bare_snow_zone`),
    `margin_loss_weight` on both sides of their edges (`edge_band`) and `forefield_loss_weight` on the warm
    ice-free ground beside them (`forefield_zone`)."""
    w = 1.0 + front_loss_weight * front
    if snow_loss_weight:
        w = w + snow_loss_weight * snow_zone(region)
    if bare_snow_loss_weight:
        w = w + bare_snow_loss_weight * thermal_bare_snow_zone(region)
    if margin_loss_weight:
        w = w + margin_loss_weight * edge_band(region.labels)
    if forefield_loss_weight:
        w = w + forefield_loss_weight * forefield_zone(region)
    return w.astype(np.float32)


def class_weights(regions: Sequence[Region], n_classes: int, power: float = 0.5) -> torch.Tensor:
    """Inverse class frequency to `power` (square root by default) as the sampler serves it, mean 1 over
    present classes; a lower power trades a rare class's recall for fewer false alarms of it.

    Frequencies are counted with the sampling weights, so a class that `sample_weights` already
    oversamples (debris) is not upweighted twice: that double push made models paint debris onto
    the ice-free moraines that look like it.
    """
    counts = np.zeros(n_classes)
    for r in regions:
        ok = r.labels != IGNORE
        counts += np.bincount(r.labels[ok].ravel(), weights=sample_weights(r.labels)[ok].ravel(),
                              minlength=n_classes)[:n_classes]
    w = np.where(counts > 0, np.maximum(counts, 1) ** -float(power), 0.0)
    w = w / w[w > 0].mean()
    return torch.tensor(w, dtype=torch.float32)


# --------------------------------------------------------------------------- the loop


def train(train_regions: Sequence[Region], val_regions: Sequence[Region], *, model: str = "unet",
          features: Sequence[str] | None = None, required: Sequence[str] | None = None, epochs: int = 10,
          steps_per_epoch: int = 40, batch_size: int = 8, patch: int = 128, lr: float = 2e-3, seed: int = 0,
          model_kwargs: dict | None = None, device: str | None = None, data: str = "", command: str = "",
          progress: bool = True, domain_randomisation: bool = False,
          classes: Sequence[str] | None = None, init: Checkpoint | None = None, freeze_init: bool = False,
          front_loss_weight: float = 4.0, class_weight_power: float = 0.5,
          snow_loss_weight: float = 0.0, margin_loss_weight: float = 0.0,
          forefield_loss_weight: float = 0.0, bare_snow_loss_weight: float = 0.0) -> tuple[Checkpoint, list[dict]]:
    """Train a registered model; returns the best checkpoint (by validation glacier IoU) and history.

    `domain_randomisation` perturbs each training patch (`randomise`) so absolute levels specific to
    the training worlds' climate carry less weight than the contrasts that hold everywhere.
    `classes`: the output classes (default: `classes_for` the training regions: rock glaciers only
    when the truth has them, so a model of glacier-only worlds keeps the four base classes).
    `init`: fine-tune this checkpoint (its model, features and normalisation) instead of starting from
    random weights; a head with fewer classes keeps its rows and the new classes' rows start fresh, so a
    shipped four-class model learns rock glaciers without relearning glaciers; a head with more classes
    than the truth has drops the extra rows (the four-class twin of a five-class model, issue 14);
    `model_kwargs` given with `init` are added to the checkpoint's (a subclass branch on a four-class model).
    `freeze_init`: train only the tensors `init` lacks (a rock-glacier branch); the rest, BatchNorm
    statistics included, stays `init`'s exactly, so the model keeps what `init` decided on its classes.
    `front_loss_weight`: extra loss weight on the sea ice and mélange before calving fronts
    (`front_zone`), beside their oversampling, so the front is not painted out over them (issue 13).
    `class_weight_power`: the loss's class weights are inverse frequency to this power (`class_weights`).
    `snow_loss_weight`: extra loss weight, and as much extra draw weight, on snow-covered ground off the
    glaciers (`snow_zone`), the false glacier of high and dry regimes (issue 13). `margin_loss_weight`: extra
    loss weight on both sides of the glacier edges (`edge_band`), where false debris and missed margins lie.
    `forefield_loss_weight`: extra loss weight on the warm ice-free ground beside the glaciers (`forefield_zone`).
    `bare_snow_loss_weight`: extra loss and draw weight on the snow the thermal saw bare (`thermal_bare_snow_zone`)."""
    if not train_regions:
        raise ValueError("no training regions")
    if not val_regions:
        raise ValueError("no validation regions: validate on other regions (see spatial_split)")
    if init is not None:
        model, kw_init = init.model, dict(init.model_kwargs)
        if features is not None and list(features)[: len(init.features)] != init.features:
            raise ValueError(f"features {list(features)} do not extend those of the checkpoint fine-tuned "
                             f"({init.features}): new features may only be appended")
        features, model_kwargs = list(features or init.features), {**kw_init, **(model_kwargs or {})}
    if freeze_init and (init is None or list(features or ()) != init.features):
        raise ValueError("freeze_init trains only what the init checkpoint lacks: it needs init, and the "
                         "init's features unchanged (appended features would change its outputs)")
    feats = list(features or cubes.FEATURES)
    for r in (*train_regions, *val_regions):
        missing = [f for f in feats if f not in r.features.feature.values]
        if missing:
            raise ValueError(f"region {r.name} lacks features {missing}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = pick_device(device)
    kw = dict(model_kwargs or {})
    names = classes_for([*train_regions, *val_regions], classes)
    net = get_model(model, len(feats), len(names), **kw)
    if patch % net.divisor:
        raise ValueError(f"patch {patch} px is not a multiple of {model}'s divisor {net.divisor}")
    if init is not None:
        _load_grown(net, init.state_dict, len(init.features))
        added = feats[len(init.features):]  # appended features: their own normalisation, zero weights
        extra = normalisation(train_regions, added) if added else ([], [])
        mean, std = list(init.mean) + extra[0], list(init.std) + extra[1]
    else:
        mean, std = normalisation(train_regions, feats)
    net.to(dev)
    arrays = [normalise(r.features.sel(feature=feats).values, mean, std) for r in train_regions]
    cw = class_weights(train_regions, len(names), class_weight_power).to(dev)
    loss_fn = nn.CrossEntropyLoss(weight=cw, ignore_index=IGNORE, reduction="none")
    fronts = [front_zone(r.labels) for r in train_regions]  # weights the loss and the draw
    pixel_w = [pixel_weights(r, f, front_loss_weight, snow_loss_weight, margin_loss_weight, forefield_loss_weight,
                             bare_snow_loss_weight)
               for r, f in zip(train_regions, fronts, strict=True)]
    bare = ([thermal_bare_snow_zone(r) for r in train_regions] if bare_snow_loss_weight
            else [np.zeros(r.labels.shape, bool) for r in train_regions])
    draw_w = [sample_weights(r.labels, front=f) + (snow_loss_weight * snow_zone(r) if snow_loss_weight else 0)
              + bare_snow_loss_weight * b for r, f, b in zip(train_regions, fronts, bare, strict=True)]
    if bare_snow_loss_weight and progress:
        log.info("thermal-bare snow: %d px in %d training regions", sum(int(b.sum()) for b in bare), len(bare))
    fresh = _fresh_modules(net, init.state_dict) if freeze_init else []
    if freeze_init:
        if not fresh:
            raise ValueError(f"freeze_init: model {model!r} {kw} has nothing the init checkpoint lacks to train")
        net.requires_grad_(False)
        for m in fresh:
            m.requires_grad_(True)
    opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    history: list[dict] = []
    best: tuple[float, Checkpoint] | None = None
    for epoch in range(1, epochs + 1):
        net.train(not freeze_init)  # frozen: the init's BatchNorm statistics, not the batch's
        for m in fresh:
            m.train()
        t0, losses = time.perf_counter(), []
        for _ in range(steps_per_epoch):
            xs, ys, ws = [], [], []
            for _ in range(batch_size):
                ri = int(rng.integers(len(arrays)))
                (y0, x0), = sample_patches(train_regions[ri].labels, 1, patch, rng, weights=draw_w[ri])
                x, y, pw = augment(arrays[ri][:, y0:y0 + patch, x0:x0 + patch],
                                   train_regions[ri].labels[y0:y0 + patch, x0:x0 + patch], rng,
                                   pixel_w[ri][y0:y0 + patch, x0:x0 + patch])
                if domain_randomisation:
                    x = randomise(x, feats, mean, std, rng)
                xs.append(x)
                ys.append(y)
                ws.append(pw)
            xb = torch.from_numpy(np.stack(xs)).to(dev)
            yb = torch.from_numpy(np.stack(ys).astype(np.int64)).to(dev)
            opt.zero_grad(set_to_none=True)
            wb = torch.from_numpy(np.stack(ws)).to(dev)
            loss = weighted_loss(loss_fn(net(xb), yb), yb, wb, cw)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        ckpt = Checkpoint.from_model(
            net.cpu(), model, feats, mean, std, model_kwargs=kw, patch_size=patch,
            required_features=list(required) if required else None, data=data, seed=seed, command=command,
            classes=names)
        net.to(dev)
        scores = [metrics.summary(score(ckpt, r)) for r in val_regions]
        with warnings.catch_warnings():  # a score can be NaN in every region (no calving front there)
            warnings.simplefilter("ignore", RuntimeWarning)
            val = {k: float(np.nanmean([s[k] for s in scores])) for k in scores[0]}
        rec = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, **val}
        history.append(rec)
        if progress:
            log.info("epoch %d/%d loss %.4f val IoU %.3f (debris %.3f) boundary %.1f m [%.1fs]", epoch, epochs,
                     rec["loss"], val["iou_overall"], val["iou_debris"], val["boundary_m"], rec["seconds"])
        key = val["iou_overall"] + val["iou_debris"]
        if len(names) > Label.ROCK_GLACIER and np.isfinite(val["iou_rock_glacier"]):
            key += val["iou_rock_glacier"]
        if best is None or key > best[0]:
            ckpt.metrics = {"validation": val, "epoch": epoch}
            best = (key, ckpt)
    assert best is not None
    best[1].metrics["history"] = history
    return best[1], history


def weighted_loss(per_pixel: torch.Tensor, y: torch.Tensor, pixel_w: torch.Tensor,
                  class_w: torch.Tensor) -> torch.Tensor:
    """Mean class-weighted cross-entropy with per-pixel weights on top: sum(w_px * loss) / sum(w_px * w_class),
    which is `CrossEntropyLoss(weight=class_w)`'s mean when every pixel weight is 1; ignored pixels count 0."""
    ok = y != IGNORE
    wc = class_w[torch.where(ok, y, 0)] * ok
    return (per_pixel * pixel_w).sum() / (wc * pixel_w).sum().clamp_min(1e-12)


def _fresh_modules(net: nn.Module, state: dict[str, torch.Tensor]) -> list[nn.Module]:
    """The outermost submodules of `net` none of whose tensors are in `state` (what `_load_grown` left fresh)."""
    out: list[nn.Module] = []
    for name, m in net.named_modules():
        own = m.state_dict()
        if name and own and not any(f"{name}.{k}" in state for k in own) and not any(m in o.modules() for o in out):
            out.append(m)
    return out


def widen_features(value: torch.Tensor, at: int, places: Sequence[int], n_features: int) -> torch.Tensor:
    """A weight (out, in, ...) whose input columns `at`.. read `len(places)` features, rewritten to read
    `n_features`: old feature i's column moves to `at + places[i]`, the other features' columns are 0 (the model
    computes what it did, whatever they hold), the columns after the features follow them."""
    n_old = len(places)
    out = value.new_zeros((value.shape[0], value.shape[1] - n_old + n_features, *value.shape[2:]))
    out[:, :at] = value[:, :at]
    out[:, [at + i for i in places]] = value[:, at:at + n_old]
    out[:, at + n_features:] = value[:, at + n_old:]
    return out


def _load_grown(net: nn.Module, state: dict[str, torch.Tensor], n_features: int | None = None) -> None:
    """Load weights into `net`; a tensor whose first dimension grew (a head with more classes) keeps the
    old rows and its own fresh ones for the rest, one whose first dimension shrank (a head without the
    trailing classes: the four-class twin of a five-class model, issue 14) keeps the rows of the classes
    it still has; one whose second dimension grew (the first layer, with
    input features appended) keeps the old columns and gets zeros for the new ones, so the grown model
    computes what the old one did until training gives the new features weight (`n_features`: the state's
    feature count; the new columns go after its features, wherever the model's `feature_columns` puts them:
    the rock-glacier branch reads the features between the decoder's output and its context). Any other
    mismatch is an error naming the tensor."""
    own = net.state_dict()
    columns = net.feature_columns() if hasattr(net, "feature_columns") else {}
    for k, v in state.items():
        if k not in own:
            raise ValueError(f"checkpoint tensor {k!r} is not in the model")
        if own[k].shape == v.shape:
            own[k] = v.clone()
        elif own[k].dim() == v.dim() and own[k].shape[1:] == v.shape[1:]:  # the head: classes added or dropped
            n = min(own[k].shape[0], v.shape[0])
            own[k][:n] = v[:n]
        elif (own[k].dim() == v.dim() >= 2 and own[k].shape[0] == v.shape[0] and own[k].shape[2:] == v.shape[2:]
              and own[k].shape[1] > v.shape[1]):
            # appended features: the old ones keep their places (a model without `feature_columns`: the
            # weight's first columns), the new ones' columns come after them at 0
            at, n_old = (columns[k], n_features) if k in columns and n_features is not None else (0, v.shape[1])
            own[k] = widen_features(v, at, range(n_old), n_old + own[k].shape[1] - v.shape[1])
        else:
            raise ValueError(f"checkpoint tensor {k!r} of shape {tuple(v.shape)} does not fit {tuple(own[k].shape)}")
    net.load_state_dict(own)


def predict_labels(ckpt: Checkpoint, features: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """(class map, valid mask) of a checkpoint over an in-memory cube, through the real inference path."""
    from glacier_stac.infer import predict

    out = predict(features, ckpt).compute(scheduler="threads")
    return out["classes"].values, out["valid"].values


def score(ckpt: Checkpoint, region: Region) -> dict:
    """Full metrics of a checkpoint on a region (pixels without truth or inputs are not scored)."""
    klass, valid = predict_labels(ckpt, region.features)
    res = abs(float(region.features.x[1] - region.features.x[0]))
    return metrics.evaluate(klass, region.labels, valid & (region.labels != IGNORE), res=res)


# --------------------------------------------------------------------------- class priors

PRIOR_SHIFTS = tuple(float(s) for s in np.round(np.arange(-2.0, 1.01, 0.25), 2))  # the grid fit_prior_shift tries


@dataclass(frozen=True)
class PriorFit:
    """A class's log-prior shift chosen on validation regions, with every candidate's figures."""

    klass: str
    shift: float
    figures: dict[float, dict[str, float]]  # shift -> `prior_figures`: median and worst IoU and the criterion
    max_false_debris: float | None = None  # the cap on worst false debris the shift was chosen under
    cap_met: bool = True  # False: no shift kept false debris within the cap; the least was taken


def shift_probability(prob: np.ndarray, index: int, shift: float) -> np.ndarray:
    """(class, y, x) probabilities with class `index` weighed by e**shift and renormalised (NaN stays NaN):
    what adding `shift` to that class's logit does (`shift_priors`)."""
    p = prob.astype(np.float32, copy=True)
    p[index] *= np.float32(np.exp(shift))
    return p / p.sum(axis=0, keepdims=True)


def prior_figures(glacier_iou: Sequence[float], debris_iou: Sequence[float],
                  false_debris: Sequence[float] = ()) -> dict[str, float]:
    """Median and worst glacier and debris IoU over regions (NaN-aware: a region without debris has no
    debris IoU) and their mean, the criterion a prior shift is chosen by: issue 13's four figures alike.
    `false_debris` (shares of glacier area, `metrics.evaluate`) is reported beside them, median and worst,
    and left out of the criterion: it falls with every shift against debris, whatever the IoU pays."""
    g, d = np.asarray(glacier_iou, float), np.asarray(debris_iou, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {"iou_overall_median": float(np.nanmedian(g)), "iou_overall_worst": float(np.nanmin(g)),
               "iou_debris_median": float(np.nanmedian(d)), "iou_debris_worst": float(np.nanmin(d))}
    out["criterion"] = float(np.nanmean(list(out.values())))
    if len(false_debris):
        out["false_debris_share_median"] = float(np.median(false_debris))
        out["false_debris_share_worst"] = float(np.max(false_debris))
    return out


def fittable_prior(klass: str, max_false_debris: float | None = None) -> int:
    """The index of class `klass` if `fit_prior_shift` can fit its prior: a head class by `choose_prior_shift`,
    a subclass (`labels.PARENT`) by `choose_subclass_shift`, which has no false-debris cap (a subclass's shift
    cannot move debris), so a cap asked for one is refused by name. Callers that must predict or draw worlds
    first check here before that work."""
    index = CLASSES.index(klass)
    if index in PARENT and max_false_debris is not None:
        raise ValueError(f"prior fit for {klass!r}: a subclass's shift moves its odds within the parent and cannot "
                         "move debris; a false-debris cap does not apply to it")
    return index


def choose_prior_shift(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], klass: str,
                       shifts: Sequence[float] = PRIOR_SHIFTS, res: float = 10.0,
                       max_false_debris: float | None = None) -> PriorFit:
    """The shift of class `klass`'s log-prior that maximises `prior_figures`' criterion over the regions'
    (class, y, x) probabilities and truths; ties go to the shift nearest 0 (no change without evidence).
    With `max_false_debris` (a share of glacier area, issue 13's 2 %), only shifts whose worst region keeps
    false debris within it compete; when none does, the one with the least worst false debris is taken and
    the fit says the cap was not met. A subclass is refused: its shift moves its odds within the parent, which
    glacier and debris IoU do not see (`choose_subclass_shift` fits it).

    Why: class-weighted loss and debris-first patch sampling train a model on a world with more debris
    than there is; its probabilities carry that prior, and it paints debris on the moraines beside the
    tongues. Dividing the prior back out is the logit adjustment, its size measured on validation worlds.
    The IoU criterion alone keeps the debris a little wide (the figures pay little for a moraine rim that
    an inventory pays for in false glacier area), so the cap states the inventory's limit outright."""
    index = CLASSES.index(klass)
    if index in PARENT:
        raise ValueError(f"prior fit for {klass!r}: a subclass's shift moves its odds within the parent, and this "
                         "criterion (glacier and debris IoU) does not see it; fit it with `choose_subclass_shift`")
    figs = {}
    for s in shifts:
        g, d, fd = [], [], []
        for prob, truth in zip(probs, truths, strict=True):
            pred = classes_from_probability(shift_probability(prob, index, s) if s else prob)
            m = metrics.summary(metrics.evaluate(pred, truth, truth != IGNORE, res=res))
            g.append(m["iou_overall"])
            d.append(m["iou_debris"])
            fd.append(m["false_debris_share"])
        figs[float(s)] = prior_figures(g, d, fd)
    within = [s for s in figs
              if max_false_debris is None or figs[s]["false_debris_share_worst"] <= max_false_debris]
    if within:
        best = max(within, key=lambda s: (figs[s]["criterion"], -abs(s)))
    else:
        best = min(figs, key=lambda s: (figs[s]["false_debris_share_worst"], -figs[s]["criterion"], abs(s)))
    return PriorFit(klass, best, figs, max_false_debris, bool(within))


def shift_subclass_probability(prob: np.ndarray, index: int, shift: float) -> np.ndarray:
    """(class, y, x) probabilities with subclass `index`'s odds against the rest of its parent (`labels.PARENT`)
    weighed by e**shift, their sum and every other class kept: what `shift_priors` does to a branch's bias."""
    par = int(PARENT[Label(index)])
    p = prob.astype(np.float32, copy=True)
    total = p[par] + p[index]
    sub = p[index] * np.float32(np.exp(shift))
    with np.errstate(invalid="ignore", divide="ignore"):
        p[index] = np.where(sub + p[par] > 0, total * sub / (sub + p[par]), 0.0)
    p[par] = total - p[index]
    return p


def subclass_figures(iou: Sequence[float], inter_px: Sequence[int], union_px: Sequence[int],
                     false_km2: Sequence[float]) -> dict[str, float]:
    """Median and worst subclass IoU over the regions that hold it (NaN elsewhere), its IoU pooled over every
    region (intersections over unions summed, so what is invented where there is none counts), and their
    mean, the criterion; false area (km², predicted where the truth has none) reported beside them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {"iou_median": float(np.nanmedian(iou)), "iou_worst": float(np.nanmin(iou)),
               "iou_pooled": float(np.sum(inter_px) / max(int(np.sum(union_px)), 1))}
    out["criterion"] = float(np.nanmean(list(out.values())))
    out["false_km2_median"] = float(np.median(false_km2))
    out["false_km2_worst"] = float(np.max(false_km2))
    out["false_km2_total"] = float(np.sum(false_km2))
    return out


def choose_subclass_shift(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], klass: str = "rock_glacier",
                          shifts: Sequence[float] = PRIOR_SHIFTS, res: float = 10.0) -> PriorFit:
    """The shift of subclass `klass`'s logit within its parent (a branch's bias, `shift_priors`) that maximises
    `subclass_figures`' criterion over the regions; ties go to the shift nearest 0.

    Why: a subclass's shift cannot move glacier or debris (it only splits its parent), so `choose_prior_shift`'s
    criterion is blind to it; the subclass's own IoU where it occurs, with its pooled IoU so that rock glacier
    invented in ranges that have none (the maritime demo's) costs as much as rock glacier missed, is not."""
    index = CLASSES.index(klass)
    if index not in PARENT:
        raise ValueError(f"subclass prior fit for {klass!r}: not a subclass (labels.PARENT); fit it with "
                         "`choose_prior_shift`")
    px_km2 = res * res / 1e6
    figs = {}
    for s in shifts:
        iou, inter, union, false = [], [], [], []
        for prob, truth in zip(probs, truths, strict=True):
            pred = classes_from_probability(shift_subclass_probability(prob, index, s) if s else prob) == index
            ok, true = truth != IGNORE, truth == index
            i, u = int((pred & true & ok).sum()), int(((pred | true) & ok).sum())
            inter.append(i)
            union.append(u)
            iou.append(i / u if true.any() else float("nan"))
            false.append(float((pred & ~true & ok).sum()) * px_km2)
        figs[float(s)] = subclass_figures(iou, inter, union, false)
    best = max(figs, key=lambda s: (figs[s]["criterion"], -abs(s)))
    return PriorFit(klass, best, figs)


def fit_prior_shift(ckpt: Checkpoint, regions: Sequence[Region], klass: str = "debris_ice",
                    shifts: Sequence[float] = PRIOR_SHIFTS, max_false_debris: float | None = None) -> PriorFit:
    """`choose_prior_shift` (a subclass: `choose_subclass_shift`) over a checkpoint's probabilities on validation
    regions (predicted once each, through the real inference path)."""
    from glacier_stac.infer import predict

    if klass not in ckpt.classes:
        raise ValueError(f"checkpoint {ckpt.model!r} has no class {klass!r} (classes {ckpt.classes})")
    index = fittable_prior(klass, max_false_debris)
    probs = [predict(r.features, ckpt).compute(scheduler="threads")["probability"].values for r in regions]
    res = abs(float(regions[0].features.x[1] - regions[0].features.x[0])) if regions else 10.0
    if index in PARENT:
        return choose_subclass_shift(probs, [r.labels for r in regions], klass, shifts, res=res)
    return choose_prior_shift(probs, [r.labels for r in regions], klass, shifts, res=res,
                              max_false_debris=max_false_debris)


def _subclass_bias(ckpt: Checkpoint) -> str:
    """State-dict key of the subclass branch's output bias (the logit of subclass-within-parent,
    `models.unet.UNet.subclass`'s last layer): the rock-glacier prior lives there, as the others in the head."""
    keys = [k for k in ckpt.state_dict if re.fullmatch(r"subclass\.\d+\.bias", k)]
    if not keys:
        raise ValueError(f"checkpoint model {ckpt.model!r} has no subclass branch: its subclass has no logit to shift")
    return max(keys, key=lambda k: int(k.split(".")[1]))


def shift_priors(ckpt: Checkpoint, shifts: Mapping[str, float]) -> Checkpoint:
    """A checkpoint whose class head adds `shifts` (class name -> log-prior shift) to those classes' logits,
    recorded (accumulated) in its metrics' `prior_shift`; the input is left as it was.

    The shift lives in the weights (the head's bias), so every reader of the checkpoint, old or new, and
    every probability it writes (`glacier_probability`, OBIA's thresholds) see the same calibrated model.
    A subclass of a branch (rock glaciers inside background) shifts its logit within the parent: its odds
    against the parent's remainder move by e**shift and the parent's total stays as the head gave it."""
    bias = ckpt.state_dict.get("head.bias")
    if bias is None:
        raise ValueError(f"checkpoint model {ckpt.model!r} has no class head bias ('head.bias'): a prior shift "
                         "needs the U-Net's head")
    state = dict(ckpt.state_dict)
    state["head.bias"] = bias.detach().clone()
    done = dict(ckpt.metrics.get("prior_shift", {}))
    for name, s in shifts.items():
        if name not in ckpt.classes:
            raise ValueError(f"prior shift for {name!r}: not a class of the checkpoint ({ckpt.classes})")
        i = ckpt.classes.index(name)
        if i < bias.shape[0]:
            state["head.bias"][i] += float(s)
        else:  # a subclass (`labels.PARENT`): its logit within the parent is the branch's last bias
            key = _subclass_bias(ckpt)
            state[key] = state[key].detach().clone() + float(s)
        done[name] = round(done.get(name, 0.0) + float(s), 6)
    return replace(ckpt, state_dict=state, metrics={**ckpt.metrics, "prior_shift": done})


def soup(ckpts: Sequence[Checkpoint], weights: Sequence[float] | None = None) -> Checkpoint:
    """The weighted average of checkpoints fine-tuned from one parent (a "model soup", Wortsman et al. 2022):
    two fine-tunes of the same model sit in one basin, and their mean is often better than either out of
    their training distribution; it costs nothing at inference, unlike an ensemble.

    Every checkpoint must be the same model (architecture, kwargs, classes) on the same normalisation; one may
    read features another lacks (a feature added since): the input convolutions' columns are matched by
    feature name, and a checkpoint without a feature counts its column as 0 (it ignored that input). The
    result reads the union of features in the first's order then the others'; its provenance is the last's."""
    if not ckpts:
        raise ValueError("a soup needs at least one checkpoint")
    w = [1.0 / len(ckpts)] * len(ckpts) if weights is None else [float(x) for x in weights]
    if len(w) != len(ckpts) or any(x < 0 for x in w) or not np.isclose(sum(w), 1.0):
        raise ValueError(f"soup weights must be one non-negative weight per checkpoint summing to 1, got {w}")
    first = ckpts[0]
    for c in ckpts[1:]:
        for what in ("model", "model_kwargs", "classes", "nan_fill", "divisor"):
            if getattr(c, what) != getattr(first, what):
                raise ValueError(f"soup: checkpoints differ in {what} ({getattr(first, what)!r} vs "
                                 f"{getattr(c, what)!r}): only fine-tunes of one model can be averaged")
        if set(c.state_dict) != set(first.state_dict):
            raise ValueError("soup: checkpoints have different parameters (not one architecture)")
    features = list(dict.fromkeys(f for c in ckpts for f in c.features))
    for c in ckpts:
        if c.features != [f for f in features if f in c.features]:
            raise ValueError(f"soup: features in another order ({c.features} against {features})")
    norm: dict[str, tuple[float, float]] = {}
    for c in ckpts:
        for f, m, sd in zip(c.features, c.mean, c.std, strict=True):
            if f in norm and not np.allclose(norm[f], (m, sd)):
                raise ValueError(f"soup: feature {f!r} is normalised differently ({norm[f]} vs {(m, sd)})")
            norm.setdefault(f, (m, sd))

    net = get_model(first.model, len(features), len(first.classes), **first.model_kwargs)
    columns = net.feature_columns() if hasattr(net, "feature_columns") else {}

    def widened(c: Checkpoint, key: str, value: torch.Tensor) -> torch.Tensor:
        """A weight that reads the features with a column per soup feature (0 for those `c` does not read)."""
        if key not in columns or len(c.features) == len(features):
            return value
        return widen_features(value, columns[key], [features.index(f) for f in c.features], len(features))

    state = {}
    for key, ref in first.state_dict.items():
        parts = [widened(c, key, c.state_dict[key]) for c in ckpts]
        if any(p.shape != parts[0].shape for p in parts):
            raise ValueError(f"soup: parameter {key!r} has shapes {[tuple(p.shape) for p in parts]}")
        state[key] = (sum(x * p.double() for x, p in zip(w, parts, strict=True)).to(ref.dtype)
                      if ref.is_floating_point() else parts[-1].clone())
    last = ckpts[-1]
    req = [f for c in ckpts for f in (c.required_features or [])]
    return replace(last, state_dict=state, features=features, mean=[norm[f][0] for f in features],
                   std=[norm[f][1] for f in features],
                   required_features=list(dict.fromkeys(req)) if all(c.required_features for c in ckpts) else None,
                   metrics={"soup": {"weights": w}})


def spatial_split(region: Region, fraction: float = 0.3, gap: int = 64) -> tuple[Region, Region]:
    """Train on the west, validate on the east, with `gap` pixels between so no patch straddles both."""
    w = region.labels.shape[1]
    cut = int(w * (1 - fraction))
    if cut - gap < 64 or w - cut < 64:
        raise ValueError(f"region {region.name} ({w} px wide) is too narrow to split for validation")
    return (region.crop(slice(None), slice(0, cut - gap), f"{region.name}-west"),
            region.crop(slice(None), slice(cut, w), f"{region.name}-east"))


def write_model_card(ckpt: Checkpoint, path: Path) -> Path:
    """A short model card next to a checkpoint: command, seed, data, metrics."""
    val = ckpt.metrics.get("validation", {})
    lines = [
        f"# Model card: `{path.stem}`", "",
        f"- model: `{ckpt.model}` {json.dumps(ckpt.model_kwargs)}; receptive field {ckpt.receptive_field} px",
        f"- classes ({len(ckpt.classes)}): {', '.join(ckpt.classes)}",
        f"- features ({len(ckpt.features)}): {', '.join(ckpt.features)}",
        f"- required inputs: {', '.join(ckpt.required)}",
        f"- trained by: `{ckpt.command}`", f"- seed: {ckpt.seed}", f"- data: {ckpt.data}",
        f"- created: {ckpt.created}, glacier_stac {ckpt.version}", "",
        "## Validation (held-out regions)", "",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in val.items()], "",
        "Synthetic worlds only: expect lower scores on real imagery until fine-tuned on real labels.",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
