"""Domain randomisation: absolute levels move per patch, the contrasts that map ice stay."""

from __future__ import annotations

import numpy as np

from glacier_stac import train

FEATS = ["B03", "B11", "ndsi", "lwir11", "lst_anomaly", "elevation", "vv_db", "lwir11_max", "lst_max_anomaly",
         "lst_max_anomaly_hist", "snow_persistence_hist"]
MEAN = [0.3, 0.1, 0.2, 280.0, -2.0, 1500.0, -12.0, 284.0, -2.0, -1.0, 0.3]
STD = [0.2, 0.1, 0.4, 8.0, 4.0, 800.0, 4.0, 8.0, 4.0, 4.0, 0.4]


def _patch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    raw = np.stack([rng.uniform(0.05, 0.9, (16, 16)), rng.uniform(0.01, 0.3, (16, 16)), rng.uniform(-1, 1, (16, 16)),
                    rng.uniform(260, 300, (16, 16)), rng.uniform(-15, 2, (16, 16)), rng.uniform(0, 3000, (16, 16)),
                    rng.uniform(-25, -5, (16, 16)), rng.uniform(265, 305, (16, 16)),
                    rng.uniform(-15, 5, (16, 16)), rng.uniform(-15, 5, (16, 16)),
                    rng.uniform(0, 1, (16, 16))]).astype(np.float32)
    m, s = np.asarray(MEAN, np.float32)[:, None, None], np.asarray(STD, np.float32)[:, None, None]
    return raw, (raw - m) / s


def test_randomise_shifts_levels_and_keeps_contrasts() -> None:
    raw, x = _patch(np.random.default_rng(0))
    m, s = np.asarray(MEAN)[:, None, None], np.asarray(STD)[:, None, None]
    out = train.randomise(x, FEATS, MEAN, STD, np.random.default_rng(1)) * s + m
    d = out - raw
    assert abs(np.median(d[5])) > 10.0, "the absolute elevation moved"
    assert np.std(d[5]) < 0.1 * 800.0, "by one offset for the whole patch"
    ratio = out[0] / raw[0]
    assert np.std(ratio) < 0.1 and abs(np.median(ratio) - 1.0) > 1e-3, "one gain on a reflectance band"
    assert np.std(d[3]) < 1.0, "one thermal offset per patch"
    assert np.std(d[2]) < 0.1 and abs(np.median(d[2])) < 0.05, "band ratios are not shifted"
    # the warmest scene is the same sensor: the same offset, and its anomaly the same contrast gain
    assert abs(np.median(d[7]) - np.median(d[3])) < 0.2
    gain = np.median(out[4] / raw[4])
    assert abs(gain - 1.0) > 1e-3 and abs(np.median(out[8] / raw[8]) - gain) < 0.02
    # earlier seasons' anomaly: the same contrast gain (one sensor, one calibration); persistence is a fraction
    assert abs(np.median(out[9] / raw[9]) - gain) < 0.02
    assert np.std(d[10]) < 0.1 and abs(np.median(d[10])) < 0.05
    assert not np.shares_memory(out, x)


def test_randomise_is_deterministic_per_generator_and_differs_between_patches() -> None:
    _, x = _patch(np.random.default_rng(0))
    a = train.randomise(x, FEATS, MEAN, STD, np.random.default_rng(5))
    b = train.randomise(x, FEATS, MEAN, STD, np.random.default_rng(5))
    c = train.randomise(x, FEATS, MEAN, STD, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.allclose(a, c)
