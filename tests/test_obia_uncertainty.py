"""Area uncertainty (boundary-type-dependent buffer + the model's doubt) and OBIA's bounded whole-scene passes:
canonical renumbering in row blocks, divides from per-glacier windows."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from glacier_stac import inventory, obia
from glacier_stac.labels import Label

RES = 10.0


def _ds(labels: np.ndarray) -> xr.Dataset:
    """A one-year prediction Dataset (UTM 6N, 10 m) from a label array."""
    h, w = labels.shape
    glacier = np.isin(labels, (Label.CLEAN_ICE, Label.DEBRIS_ICE))
    return xr.Dataset(
        {"probability": (("y", "x"), np.where(glacier, 0.9, 0.05).astype(np.float32)),
         "classes": (("y", "x"), labels.astype(np.uint8)),
         "valid": (("y", "x"), np.ones((h, w), bool))},
        coords={"y": 6_800_000 - RES * (np.arange(h) + 0.5), "x": 500_000 + RES * (np.arange(w) + 0.5)},
    ).rio.write_crs("EPSG:32606")


def _square(cls: int, prob: float = 0.95, n: int = 60, side: int = 30) -> tuple[np.ndarray, np.ndarray]:
    labels = np.full((n, n), Label.BACKGROUND, np.uint8)
    a = (n - side) // 2
    labels[a:a + side, a:a + side] = cls
    p = np.where(labels != Label.BACKGROUND, prob, 0.05).astype(np.float32)
    return labels, p


def _outline(labels: np.ndarray, p: np.ndarray, unc: obia.Uncertainty = obia.Uncertainty()):
    ds = _ds(labels)
    ds["probability"] = (("y", "x"), p)
    h, w = labels.shape  # a gentle slope and no temperature reading: isolated debris is kept (keep_debris)
    feats = xr.DataArray(np.stack([np.full((h, w), 1000.0), np.full((h, w), 10.0)]).astype(np.float32),
                         dims=("feature", "y", "x"), coords={"feature": ["elevation", "slope"], "y": ds.y, "x": ds.x})
    got = obia.outlines(ds, feats, uncertainty=unc)
    assert len(got) == 1
    return got.iloc[0]


def test_debris_margins_get_the_wider_buffer():
    """Same outline, sure pixels: a debris-covered margin's uncertainty is the ±1 px buffer, twice the clean ±½ px."""
    clean = _outline(*_square(Label.CLEAN_ICE))
    debris = _outline(*_square(Label.DEBRIS_ICE))
    assert clean.margin_debris_frac == 0.0 and debris.margin_debris_frac == 1.0
    assert clean.area_unc_class_km2 == 0.0 and debris.area_unc_class_km2 == 0.0  # no doubted pixel
    side_m = 30 * RES
    assert clean.area_unc_margin_km2 == pytest.approx(4 * side_m * RES / 2 / 1e6, rel=0.01)  # perimeter x ½ px
    assert debris.area_unc_margin_km2 == pytest.approx(2 * clean.area_unc_margin_km2, rel=0.01)
    assert debris.area_unc_km2 == pytest.approx(debris.area_unc_margin_km2, rel=1e-6)


def test_doubted_pixels_inside_and_beside_the_glacier_count_within_the_ring_only():
    """The class term is k x pixel area x (D_in + D_out) / 2: glacier pixels under doubt_high, and possibly-ice
    pixels within ring_px of the glacier; possibly-ice pixels farther away do not count."""
    labels, p = _square(Label.CLEAN_ICE, prob=0.6)  # all 900 pixels doubted
    unc = obia.Uncertainty(k=2.0)
    got = _outline(labels, p, unc)
    assert got.doubt_px == pytest.approx(900 / 2)
    assert got.area_unc_class_km2 == pytest.approx(2.0 * 450 * RES * RES / 1e6, rel=1e-3)
    assert got.area_unc_km2 == pytest.approx(np.hypot(got.area_unc_margin_km2, got.area_unc_class_km2), rel=1e-3)
    labels, p = _square(Label.CLEAN_ICE)
    p[15:45, 45:47] = 0.4  # two columns right next to the glacier: possibly ice (60 px)
    p[15:45, 55:57] = 0.4  # two columns 10 px away: beyond the ring
    near = _outline(labels, p)
    assert near.doubt_px == pytest.approx(60 / 2)


def test_area_uncertainty_method_is_in_the_metadata(tmp_path):
    """The stated method, with its parameters (debris buffer, k), is written into the GeoParquet metadata."""
    labels, p = _square(Label.DEBRIS_ICE)
    ds = _ds(labels)
    ds["probability"] = (("y", "x"), p)
    path = tmp_path / "inv.parquet"
    inventory.add_year(path, 2021, ds.expand_dims(year=[2021]))
    meta = inventory.metadata(path)
    text = meta["area_uncertainty"]
    assert "debris-covered margins" in text and f"k = {obia.Uncertainty().k:g}" in text and "quadrature" in text
    assert meta["years"]["2021"]["uncertainty"]["debris_margin_px"] == 1.0
    inv = inventory.read(path)
    assert (inv.area_unc_km2 >= inv.area_unc_margin_km2).all()


def test_uncertainty_rejects_bad_parameters():
    with pytest.raises(ValueError, match="clean_margin_px"):
        obia.Uncertainty(clean_margin_px=1.0, debris_margin_px=0.5)
    with pytest.raises(ValueError, match="doubt_low"):
        obia.Uncertainty(doubt_low=0.8, doubt_high=0.7)
    with pytest.raises(ValueError, match="ring_px"):
        obia.Uncertainty(k=-1.0)


def _canonical_reference(lab: np.ndarray) -> tuple[np.ndarray, int]:
    """The former whole-scene implementation (np.unique with inverse), the truth for the blocked one."""
    values, first, inverse = np.unique(lab.ravel(), return_index=True, return_inverse=True)
    positive = values > 0
    order = np.argsort(first[positive], kind="stable")
    rank = np.empty(order.size, np.int32)
    rank[order] = np.arange(1, order.size + 1, dtype=np.int32)
    lut = np.zeros(values.size, np.int32)
    lut[positive] = rank
    return lut[inverse].reshape(lab.shape), int(order.size)


def test_canonical_in_row_blocks_equals_the_whole_scene_renumbering(monkeypatch):
    """Labels spread over many row blocks (a label's first pixel in a later block than others' later pixels)
    renumber exactly as the whole-scene sort did."""
    rng = np.random.default_rng(5)
    lab = rng.integers(0, 40, size=(97, 53)) * (rng.random((97, 53)) < 0.3)
    lab[lab == 7] = 0  # a gap in the label values
    monkeypatch.setattr(obia, "BLOCK_PX", 200)  # ~4 rows a block: 25 blocks
    got, n = obia.canonical(lab)
    want, m = _canonical_reference(lab)
    assert n == m and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    assert obia.canonical(np.zeros((3, 4), np.int64))[1] == 0


def test_divides_from_glacier_windows_pick_a_nearest_reference_within_reach():
    """Every glacier pixel goes to a reference glacier at the globally shortest distance, if within max_m."""
    rng = np.random.default_rng(2)
    gid = np.zeros((120, 140), np.int32)
    gid[10:60, 10:70] = 1
    gid[70:110, 30:130] = 2
    refr = np.zeros_like(gid)
    for k in range(1, 6):
        y, x = rng.integers(0, 110), rng.integers(0, 130)
        refr[y:y + 8, x:x + 9] = k
    grid = obia.Grid(obia.CRS.from_epsg(32606), obia.Affine(RES, 0, 0, 0, -RES, 0), gid.shape)
    max_m = 200.0
    _, ref_of = obia.split_by_divides(gid, refr, grid, max_m)
    dist = {k: ndimage.distance_transform_edt(refr != k) * RES for k in range(1, 6)}
    best = np.min(np.stack(list(dist.values())), axis=0)
    ice = gid > 0
    assert ((ref_of > 0) == (ice & (best <= max_m))).all()
    for k in range(1, 6):
        at = ref_of == k
        np.testing.assert_allclose(dist[k][at], best[at])


def _with_probability(labels: np.ndarray, p: np.ndarray) -> xr.Dataset:
    ds = _ds(labels)
    ds["probability"] = (("y", "x"), p)
    return ds


def _grown(extra: int, cls: int = Label.CLEAN_ICE) -> tuple[obia.Previous, xr.Dataset]:
    """(earlier year 2 years back, this year): a 30 px square of sure clean ice (its OBIA outline), then the same
    square grown `extra` px to the east by sure ice of class `cls`."""
    labels, p = _square(Label.CLEAN_ICE)
    before = obia.outlines(_with_probability(labels, p)).geometry
    grown_labels, grown_p = labels.copy(), p.copy()
    grown_labels[15:45, 45:45 + extra] = cls
    grown_p[15:45, 45:45 + extra] = 0.95
    return obia.Previous(before, 2), _with_probability(grown_labels, grown_p)


def test_new_ice_beyond_a_front_advance_counts_whole_in_the_class_term():
    """With an earlier year of the inventory: this year's ice farther from the earlier glaciers than a front
    advances in the years between counts whole (D_new), not half; a gain within that reach does not; clean
    ice is never cut from the outline for it."""
    unc = obia.Uncertainty(k=2.0)  # Rules().advance_m_yr = 25 m/yr, 2 years apart: reach 5 px + 1
    before, now = _grown(12)
    plain = obia.outlines(now, uncertainty=unc).iloc[0]
    got = obia.outlines(now, uncertainty=unc, previous=before).iloc[0]
    assert plain.geometry.equals(got.geometry) and plain.new_px == 0
    labels, _ = _square(Label.CLEAN_ICE)
    far = ndimage.distance_transform_edt(labels == Label.BACKGROUND) > 6  # beyond the disk of radius reach_px
    want = int((far & (np.asarray(now["probability"].values) >= 0.5)).sum())
    assert want == 30 * 6 and got.new_px == want
    assert got.doubt_px == pytest.approx(want)  # sure pixels, sure rock around: the new pixels alone, whole
    assert got.area_unc_class_km2 == pytest.approx(2.0 * want * RES * RES / 1e6, rel=1e-3)
    assert obia.outlines(now, previous=obia.Previous(before.outlines, 6)).iloc[0].new_px == 0  # reach 16 px
    near_before, near_now = _grown(5)
    assert obia.outlines(near_now, previous=near_before).iloc[0].new_px == 0


def test_previous_year_bad_input_is_named():
    before, now = _grown(12)
    with pytest.raises(ValueError, match="years_apart"):
        obia.Previous(before.outlines, 0)
    with pytest.raises(ValueError, match="with a CRS"):
        obia.Previous(before.outlines.set_crs(None, allow_override=True), 2)
    with pytest.raises(ValueError, match="advance_m_yr"):
        obia.Rules(advance_m_yr=-1.0)


def test_debris_beyond_a_front_advance_from_the_earlier_glaciers_is_dropped():
    """A debris tongue grown 12 px beyond the earlier year's outline (2 years back): the part beyond a front's
    reach (25 m/yr: 6 px) is dropped from the outline with `drop_new_debris`, the rest kept; growth within reach
    is kept whole; without the earlier year, or the rule (the default), nothing is dropped."""
    rules = obia.Rules(drop_new_debris=True)
    before, now = _grown(12, cls=Label.DEBRIS_ICE)
    assert obia.outlines(now, rules=rules).iloc[0].n_px == 900 + 30 * 12
    assert obia.outlines(now, previous=before).iloc[0].n_px == 900 + 30 * 12
    got = obia.outlines(now, rules=rules, previous=before)
    assert len(got) == 1 and got.iloc[0].n_px == 900 + 30 * 6
    assert got.attrs["obia"]["debris_new_dropped_px"] == 30 * 6
    near_before, near_now = _grown(5, cls=Label.DEBRIS_ICE)
    assert obia.outlines(near_now, rules=rules, previous=near_before).iloc[0].n_px == 900 + 30 * 5


def test_annual_update_reads_the_earlier_year_from_the_inventory(tmp_path):
    """`add_year` takes the inventory's nearest earlier year (its outlines, not its predictions) and the new ice
    enters the year's class uncertainty; the first year has none; the method says so."""
    labels, p = _square(Label.CLEAN_ICE)
    _, now = _grown(12)
    both = xr.concat([_with_probability(labels, p).expand_dims(year=[2019]), now.expand_dims(year=[2021])],
                     dim="year")
    path = tmp_path / "inv.parquet"
    inventory.add_year(path, 2019, both)
    inventory.add_year(path, 2021, both)
    inv = inventory.read(path).set_index("year")
    unc = obia.Uncertainty()
    assert inv.loc[2019, "area_unc_class_km2"] == 0.0
    assert inv.loc[2021, "area_unc_class_km2"] == pytest.approx(unc.k * 30 * 6 * RES * RES / 1e6, rel=0.02)
    assert "D_new" in inventory.metadata(path)["area_uncertainty"]
    alone = tmp_path / "alone.parquet"  # the same year without an earlier one: no new-ice term
    inventory.add_year(alone, 2021, both)
    assert inventory.read(alone).area_unc_class_km2.iloc[0] == 0.0


def _thermal_reference(lwir, elevation, ground, band_m=100.0, min_samples=20):
    """The former implementation (one whole-scene scan per elevation band), the truth for the one-pass one."""
    ok = ground & np.isfinite(lwir) & np.isfinite(elevation)
    out = np.full(lwir.shape, np.nan, np.float32)
    if ok.sum() < min_samples:
        return out
    band = np.full(lwir.shape, np.iinfo(np.int32).min, np.int32)
    band[ok] = np.floor(elevation[ok] / band_m)
    centres, medians = [], []
    for b in np.unique(band[ok]):
        temps = lwir[band == b]
        if temps.size >= min_samples:
            centres.append((b + 0.5) * band_m)
            medians.append(float(np.median(temps)))
    if not centres:
        return out
    here = np.isfinite(lwir) & np.isfinite(elevation)
    out[here] = lwir[here] - np.interp(elevation[here], centres, medians).astype(np.float32)
    return out


def test_thermal_anomaly_in_one_pass_equals_the_per_band_scans(monkeypatch):
    """Bands spread over many row blocks, gaps, NaNs and bands under min_samples: the one-pass grouping gives the
    same anomaly, bit for bit, as one scan of the scene per band."""
    rng = np.random.default_rng(11)
    h, w = 90, 70
    elevation = (np.linspace(200, 1900, h)[:, None] + rng.normal(0, 150, (h, w))).astype(np.float32)
    elevation[rng.random((h, w)) < 0.02] = np.nan
    lwir = (290 - 0.0065 * elevation + rng.normal(0, 2, (h, w))).astype(np.float32)
    lwir[rng.random((h, w)) < 0.03] = np.nan
    ground = rng.random((h, w)) < 0.6
    ground[:, :40] &= elevation[:, :40] < 1500  # thin upper bands: some under min_samples
    monkeypatch.setattr(obia, "BLOCK_PX", 300)  # ~4 rows a block
    got = obia.thermal_anomaly(lwir, elevation, ground)
    want = _thermal_reference(lwir, elevation, ground)
    assert np.isfinite(want).sum() > 0.9 * h * w
    np.testing.assert_array_equal(got, want)
    assert np.isnan(obia.thermal_anomaly(lwir, elevation, np.zeros_like(ground))).all()

