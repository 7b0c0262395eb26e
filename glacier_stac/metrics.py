"""Accuracy of glacier maps: per-class IoU/F1/precision/recall, edge and calving-front distances.

Glacier scores ("overall", boundary, front) count clean and debris-covered ice only; rock glaciers are
scored as their own class and never as glacier area.

Pure functions on label arrays (`Label` codes), so training, the benchmarks and the demo score maps
the same way. Distances are in metres on the map grid (CaFFe-style mean front distance for calving
fronts: the mean distance between predicted and true front pixels, both ways).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from glacier_stac.labels import Label

CLASSES = {"clean": Label.CLEAN_ICE, "debris": Label.DEBRIS_ICE, "water": Label.WATER,
           "rock_glacier": Label.ROCK_GLACIER}
GLACIER = (Label.CLEAN_ICE, Label.DEBRIS_ICE)  # glacier area; rock glaciers are not glaciers (RGI keeps them out)


def _scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    tp = float(np.sum(pred & true))
    fp = float(np.sum(pred & ~true))
    fn = float(np.sum(~pred & true))
    nan = float("nan")
    return {
        "iou": tp / (tp + fp + fn) if tp + fp + fn else nan,
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
        "support_px": tp + fn,
    }


def edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of a mask that touch the outside (4-connectivity)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def mean_edge_distance(pred_edge: np.ndarray, true_edge: np.ndarray, res: float) -> float:
    """Symmetric mean distance (m) between two sets of edge pixels; NaN when either is empty."""
    if not pred_edge.any() or not true_edge.any():
        return float("nan")
    d_to_true = ndimage.distance_transform_edt(~true_edge) * res
    d_to_pred = ndimage.distance_transform_edt(~pred_edge) * res
    return float((d_to_true[pred_edge].mean() + d_to_pred[true_edge].mean()) / 2)


def open_water(water: np.ndarray) -> np.ndarray:
    """Water connected to the map border (the sea or a fjord), not lakes enclosed by the map."""
    lab, _ = ndimage.label(water)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return np.isin(lab, border[border > 0])


def fronts(glacier: np.ndarray, water: np.ndarray, reach_px: int = 30) -> np.ndarray:
    """Calving front pixels: glacier edge pixels within `reach_px` of open water.

    The reach spans the ice melange and sea ice that usually lie between a calving front and open
    water (CaFFe counts the front as the glacier's boundary to the ocean, melange included).
    """
    sea = open_water(water)
    if not sea.any():
        return np.zeros_like(glacier, dtype=bool)
    # the ice-free ground/water connected to the sea (a lake enclosed by ice is no front)
    lab, _ = ndimage.label(~glacier)
    seaward = np.isin(lab, np.unique(lab[sea & ~glacier]))
    near = ndimage.distance_transform_edt(~sea) <= reach_px
    return edges(glacier) & ndimage.binary_dilation(seaward & (lab > 0)) & near


def evaluate(pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None, res: float = 10.0) -> dict:
    """All scores of one predicted label map against the truth (both `Label` codes, same grid)."""
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} are not on the same grid")
    valid = np.ones(true.shape, bool) if valid is None else valid.astype(bool)
    p = np.where(valid, pred, 255)
    t = np.where(valid, true, 255)
    ice = GLACIER
    out = {"overall": _scores(np.isin(p, ice), np.isin(t, ice))}
    for name, code in CLASSES.items():
        out[name] = _scores(p == code, t == code)
    pg, tg = np.isin(pred, ice) & valid, np.isin(true, ice) & valid
    out["boundary_m"] = mean_edge_distance(edges(pg), edges(tg), res)
    # both fronts are measured against the true sea: the score is about where the ice ends, not
    # about water the model may have painted elsewhere
    twater = true == Label.WATER
    out["front_m"] = mean_edge_distance(fronts(pg, twater), fronts(tg, twater), res)
    # predicted debris on ground the truth calls ice-free, per unit of true glacier area (issue 13): the
    # moraines and forefield beside the tongues that look like debris-covered ice
    out["false_debris_share"] = float(((p == Label.DEBRIS_ICE) & ~tg).sum() / max(int(tg.sum()), 1))
    out["valid_fraction"] = float(valid.mean())
    return out


def summary(scores: dict) -> dict[str, float]:
    """The headline numbers the benchmarks report."""
    return {
        "iou_overall": scores["overall"]["iou"],
        "iou_clean": scores["clean"]["iou"],
        "iou_debris": scores["debris"]["iou"],
        "iou_rock_glacier": scores["rock_glacier"]["iou"],  # NaN where neither map has any
        "f1_overall": scores["overall"]["f1"],
        "boundary_m": scores["boundary_m"],
        "front_m": scores["front_m"],
        "false_debris_share": scores["false_debris_share"],
    }
