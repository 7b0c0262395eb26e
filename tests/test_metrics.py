"""Metrics on hand-made label maps whose answers are known."""

import numpy as np
import pytest

from glacier_stac import metrics
from glacier_stac.labels import Label


def square(n=40, a=10, b=30):
    m = np.zeros((n, n), np.uint8)
    m[a:b, a:b] = Label.CLEAN_ICE
    return m


def test_perfect_prediction():
    t = square()
    s = metrics.evaluate(t, t)
    assert s["overall"]["iou"] == 1.0 and s["boundary_m"] == 0.0


def test_shifted_prediction_scores():
    t = square()
    p = np.roll(t, 2, axis=1)  # shifted 2 px = 20 m east
    s = metrics.evaluate(p, t, res=10.0)
    assert s["overall"]["iou"] == pytest.approx(18 * 20 / (22 * 20))
    assert 0 < s["boundary_m"] <= 20.0
    assert s["clean"]["precision"] == pytest.approx(18 / 20)


def test_debris_class_and_invalid_pixels_ignored():
    t = square()
    t[20:30, 10:30] = Label.DEBRIS_ICE
    p = t.copy()
    p[20:30, 10:30] = 0  # debris missed entirely
    s = metrics.evaluate(p, t)
    assert s["debris"]["iou"] == 0.0 and s["clean"]["iou"] == 1.0
    valid = np.ones_like(t, bool)
    valid[20:30] = False
    assert metrics.evaluate(p, t, valid)["overall"]["iou"] == 1.0


def test_false_debris_is_predicted_debris_off_every_glacier_per_glacier_area():
    """Issue 13's false debris: debris painted on ice-free ground, as a share of the true glacier area;
    debris put on true clean ice or on invalid pixels is not counted."""
    t = square()  # 400 px of glacier
    p = t.copy()
    p[30:32, 10:30] = Label.DEBRIS_ICE  # 40 px of moraine below the glacier called debris
    p[10:15, 10:30] = Label.DEBRIS_ICE  # clean ice called debris: a class error, not false debris
    s = metrics.evaluate(p, t)
    assert s["false_debris_share"] == pytest.approx(40 / 400)
    assert metrics.summary(s)["false_debris_share"] == s["false_debris_share"]
    valid = np.ones_like(t, bool)
    valid[31:32] = False
    assert metrics.evaluate(p, t, valid)["false_debris_share"] == pytest.approx(20 / 400)
    assert metrics.evaluate(t, t)["false_debris_share"] == 0.0


def test_front_distance():
    t = np.zeros((30, 30), np.uint8)
    t[:, :15] = Label.CLEAN_ICE
    t[:, 15:] = Label.WATER
    p = np.zeros_like(t)
    p[:, :18] = Label.CLEAN_ICE  # front 3 px too far into the fjord
    p[:, 18:] = Label.WATER
    s = metrics.evaluate(p, t, res=10.0)
    assert s["front_m"] == pytest.approx(30.0, abs=1e-6)


def test_grid_mismatch():
    with pytest.raises(ValueError, match="same grid"):
        metrics.evaluate(np.zeros((3, 3)), np.zeros((4, 4)))


def test_lake_shores_are_not_calving_fronts():
    t = np.zeros((30, 30), np.uint8)
    t[:, :15] = Label.CLEAN_ICE
    t[:, 15:] = Label.WATER  # sea reaching the map edge: a calving front
    p = t.copy()
    p[5:8, 3:6] = Label.WATER  # a lake inside the glacier: its shore is no front
    s = metrics.evaluate(p, t, res=10.0)
    assert s["front_m"] == pytest.approx(0.0, abs=1e-6)


def test_front_across_melange():
    t = np.zeros((40, 40), np.uint8)
    t[:, :15] = Label.CLEAN_ICE
    t[:, 25:] = Label.WATER  # open sea beyond 10 px of melange (background)
    p = t.copy()
    p[:, 15:17] = Label.CLEAN_ICE  # front predicted 2 px too far out
    assert metrics.evaluate(p, t, res=10.0)["front_m"] == pytest.approx(20.0, abs=1e-6)
