"""Rock glaciers as their own class (issue 14): the vocabulary grows, four-class checkpoints keep working.

A checkpoint carries its own class list; its output index is the `Label` code, so its classes must be
the vocabulary's first ones. Shipped checkpoints (four classes) predict, score and feed the store as
before; a five-class checkpoint predicts rock glaciers, which metrics score on their own and never as
glacier area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_models import _randomise_bn

from glacier_stac import metrics, train
from glacier_stac.baselines import ndsi_threshold
from glacier_stac.infer import predict
from glacier_stac.labels import BASE_CLASSES, CLASSES, Label
from glacier_stac.models import get_model
from glacier_stac.models.checkpoint import Checkpoint, load, save

SHIPPED = Path(__file__).resolve().parents[1] / "glacier_stac" / "checkpoints"
FEATS = ["B03", "B08", "B11"]


def _cube(n: int = 64) -> xr.DataArray:
    rng = np.random.default_rng(0)
    data = rng.uniform(0.05, 0.6, (len(FEATS), n, n)).astype(np.float32)
    return xr.DataArray(data, dims=("feature", "y", "x"),
                        coords={"feature": FEATS, "y": 4995.0 - 10.0 * np.arange(n), "x": 5.0 + 10.0 * np.arange(n)})


def test_vocabulary_appends_rock_glacier_after_the_base_classes() -> None:
    assert Label.ROCK_GLACIER == 4 and CLASSES[4] == "rock_glacier"
    assert BASE_CLASSES == ("background", "clean_ice", "debris_ice", "water")
    assert Label.ROCK_GLACIER not in metrics.GLACIER


def test_checkpoint_classes_must_be_a_prefix_of_the_vocabulary() -> None:
    kw = dict(model="cnn5", state_dict={}, features=FEATS, mean=[0.0] * 3, std=[1.0] * 3, receptive_field=3)
    assert Checkpoint(**kw).classes == list(BASE_CLASSES)  # a checkpoint without the field: four classes
    assert Checkpoint(**kw, classes=list(CLASSES)).classes == list(CLASSES)
    for bad in (["background", "clean_ice", "water"], ["clean_ice", "background"], ["background"],
                [*BASE_CLASSES, "moraine"]):
        with pytest.raises(ValueError, match="must be the first classes of"):
            Checkpoint(**kw, classes=bad)


@pytest.mark.parametrize(("name", "classes"), [("unet", CLASSES), ("optical_unet", BASE_CLASSES)])
def test_shipped_checkpoints_load_with_their_classes(name: str, classes) -> None:
    """The default unet predicts rock glaciers (trained on every regime); the optical baseline keeps four."""
    ck = load(SHIPPED / f"{name}.pt")
    assert ck.classes == list(classes)
    ck.build_model()  # the weights fit the head


def test_five_class_checkpoint_predicts_rock_glacier_codes(tmp_path: Path) -> None:
    net = get_model("cnn5", len(FEATS), len(CLASSES))
    ck = Checkpoint.from_model(net, "cnn5", FEATS, [0.3] * 3, [0.2] * 3, classes=list(CLASSES))
    ck = load(save(ck, tmp_path / "five.pt"))
    assert ck.classes == list(CLASSES)
    out = predict(_cube(), ck).compute(scheduler="sync")
    assert list(out["class"].values) == list(CLASSES)
    assert out["classes"].attrs["flag_values"] == [0, 1, 2, 3, 4]
    assert out["classes"].attrs["flag_meanings"].split()[-1] == "rock_glacier"
    # the glacier probability sums clean and debris-covered ice only: rock glaciers are not glacier area
    p = out["probability"]
    np.testing.assert_allclose(out["glacier_probability"], p.sel({"class": ["clean_ice", "debris_ice"]}).sum("class"),
                               rtol=1e-6)
    # four-class models keep four channels and four flags
    ck4 = Checkpoint.from_model(get_model("cnn5", len(FEATS), 4), "cnn5", FEATS, [0.3] * 3, [0.2] * 3)
    out4 = predict(_cube(), ck4).compute(scheduler="sync")
    assert out4["classes"].attrs["flag_values"] == [0, 1, 2, 3] and out4.sizes["class"] == 4


def test_ndsi_baseline_keeps_the_base_classes() -> None:
    out = ndsi_threshold(_cube()).compute(scheduler="sync")
    assert list(out["class"].values) == list(BASE_CLASSES)


def test_metrics_score_rock_glaciers_apart_from_glaciers() -> None:
    true = np.zeros((40, 40), np.uint8)
    true[5:15, 5:15] = Label.CLEAN_ICE
    true[20:30, 20:30] = Label.ROCK_GLACIER
    pred = true.copy()
    pred[20:30, 20:25] = Label.BACKGROUND  # half the rock glacier missed
    s = metrics.summary(metrics.evaluate(pred, true))
    assert s["iou_rock_glacier"] == pytest.approx(0.5)
    assert s["iou_overall"] == pytest.approx(1.0)  # not glacier area: missing it costs the glacier nothing
    pred2 = true.copy()
    pred2[true == Label.ROCK_GLACIER] = Label.DEBRIS_ICE  # called glacier: a glacier false positive
    s2 = metrics.summary(metrics.evaluate(pred2, true))
    assert s2["iou_overall"] == pytest.approx(0.5) and s2["iou_rock_glacier"] == 0.0
    assert np.isnan(metrics.summary(metrics.evaluate(np.zeros_like(true), np.zeros_like(true)))["iou_rock_glacier"])


def test_training_classes_follow_the_truth() -> None:
    feats = _cube(8)
    four = train.Region("a", feats, np.array([[0, 1], [2, 3]], np.uint8).repeat(4, 0).repeat(4, 1))
    five = train.Region("b", feats, np.where(four.labels == 3, 4, four.labels).astype(np.uint8))
    assert train.classes_for([four]) == list(BASE_CLASSES)
    assert train.classes_for([four, five]) == list(CLASSES)
    with pytest.raises(ValueError, match="label code 4 .rock_glacier. outside the model's classes"):
        train.classes_for([five], BASE_CLASSES)
    with pytest.raises(ValueError, match="must be the first classes"):
        train.classes_for([four], ["background", "water"])


def test_outlines_class_column_rasterises_rock_glaciers() -> None:
    import geopandas as gpd
    from odc.geo.geobox import GeoBox
    from shapely.geometry import box

    gb = GeoBox.from_bbox((0, 0, 400, 400), "EPSG:32632", resolution=10)
    g = gpd.GeoDataFrame({"kind": ["glacier", "Rock glacier", "debris"]},
                         geometry=[box(0, 0, 100, 100), box(200, 200, 300, 300), box(0, 300, 50, 400)],
                         crs="EPSG:32632")
    lab = train.labels_from_outlines(g, gb, class_column="kind")
    assert set(np.unique(lab)) == {0, 1, 2, 4}
    assert (lab == Label.ROCK_GLACIER).sum() == 100


def test_store_flags_follow_the_writing_models_classes(tmp_path: Path) -> None:
    """A store written by a four-class model lists four flags; a rock-glacier model writing later widens them."""
    import dask
    import zarr

    from glacier_stac import store
    from glacier_stac.testing import predictions as P

    region = P.Region(1, 128)
    cube = P.cube(region)

    def write(ck: Checkpoint, year: int) -> None:
        run_id = store.record_run(tmp_path / "s.zarr", {"test": True})
        wp = store.write(predict(cube, ck), year, tmp_path / "s.zarr", run_id=run_id, tile_px=128)
        dask.compute(*wp.tasks, scheduler="sync")

    def flags() -> tuple[list[int], list[str]]:
        root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
        (zone,) = [g for _, g in root.groups()]
        a = zone["classes"].attrs
        return list(a["flag_values"]), a["flag_meanings"].split()

    write(P.checkpoint(), 2022)
    assert flags() == ([0, 1, 2, 3], list(BASE_CLASSES))
    net = get_model("cnn5", len(P.FEATURES), len(CLASSES))
    five = Checkpoint.from_model(net, "cnn5", list(P.FEATURES), [0.0] * len(P.FEATURES), [1.0] * len(P.FEATURES),
                                 classes=list(CLASSES))
    write(five, 2023)
    assert flags() == ([0, 1, 2, 3, 4], list(CLASSES))


def test_fine_tuning_grows_a_four_class_head_keeping_its_rows() -> None:
    """A shipped four-class model fine-tuned with rock glaciers starts from its own weights: the new
    class gets a fresh row in the head, the old classes keep theirs."""
    import torch

    torch.manual_seed(0)
    four = get_model("cnn5", len(FEATS), 4)
    five = get_model("cnn5", len(FEATS), 5)
    fresh = {k: v.clone() for k, v in five.state_dict().items()}
    train._load_grown(five, four.state_dict())
    for k, v in four.state_dict().items():
        got = five.state_dict()[k]
        if v.dim() == 0:  # BatchNorm's counters
            assert got == v
            continue
        torch.testing.assert_close(got[: v.shape[0]], v)
        if got.shape != v.shape:  # the head: the rock-glacier row is the fresh one
            torch.testing.assert_close(got[v.shape[0]:], fresh[k][v.shape[0]:])
    with pytest.raises(ValueError, match="does not fit"):  # fewer inputs than the checkpoint's: nothing to keep
        train._load_grown(get_model("cnn5", len(FEATS) - 1, 5), four.state_dict())


@pytest.mark.parametrize("model", ["cnn5", "unet"])
def test_four_class_twin_of_a_five_class_model_keeps_its_classes(model: str) -> None:
    """The four-class twin (issue 14's 'no worse than without the class') fine-tuned from the same five-class
    checkpoint drops only the rock-glacier row of the head: its logits for the four base classes are the
    five-class model's, so both arms of the comparison start from the same weights."""
    import torch

    torch.manual_seed(0)
    five = get_model(model, len(FEATS), 5).eval()
    four = get_model(model, len(FEATS), 4)
    train._load_grown(four, five.state_dict())
    four.eval()
    x = torch.randn(2, len(FEATS), 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(four(x), five(x)[:, :4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("model", "kw"), [("cnn5", {}), ("unet", {}),
                                          ("unet", {"subclass_branch": 8, "subclass_levels": 2})])
def test_fine_tuning_with_appended_features_starts_where_the_checkpoint_was(model: str, kw: dict) -> None:
    """Derived features appended to a shipped model's inputs (issue 13) start with zero weight: the grown
    model's probabilities equal the old model's on the old features, whatever the new features hold (the
    rock-glacier branch too, which reads the features between the decoder's output and its context)."""
    import torch

    torch.manual_seed(0)
    old = get_model(model, len(FEATS), 5, **kw).eval()
    if kw:
        _randomise_bn(old)
        torch.nn.init.normal_(old.subclass[-1].weight, std=2.0)  # a branch that says something
    grown = get_model(model, len(FEATS) + 2, 5, **kw)
    train._load_grown(grown, old.state_dict(), len(FEATS))
    grown.eval()
    x = torch.randn(2, len(FEATS), 32, 32)
    extra = 5 * torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grown(torch.cat([x, extra], 1)), old(x), atol=1e-5, rtol=1e-5)
    ckpt = Checkpoint.from_model(old, model, FEATS, [0.0] * 3, [1.0] * 3, classes=list(CLASSES))
    with pytest.raises(ValueError, match="may only be appended"):
        region = train.Region("a", _cube(8), np.zeros((8, 8), np.uint8))
        train.train([region], [region], features=["B08", "B03", "B11"], init=ckpt, epochs=1, steps_per_epoch=1)


def _pred(labels: np.ndarray, prob: np.ndarray) -> xr.Dataset:
    h, w = labels.shape
    return xr.Dataset(
        {"probability": (("y", "x"), prob.astype(np.float32)), "classes": (("y", "x"), labels.astype(np.uint8)),
         "valid": (("y", "x"), np.ones((h, w), bool))},
        coords={"y": 5_100_000 - 10.0 * (np.arange(h) + 0.5), "x": 400_000 + 10.0 * (np.arange(w) + 0.5)},
    ).rio.write_crs("EPSG:32632")


@pytest.mark.parametrize("chunks", [None, 32])
def test_outlines_keep_rock_glaciers_in_their_own_layer(chunks: int | None) -> None:
    """Rock glacier pixels never join a glacier outline, even where the glacier classes' probabilities
    add up over the threshold; they come out as their own layer (`primeclass`), seam-free."""
    import rioxarray  # noqa: F401

    from glacier_stac import obia

    lab = np.zeros((96, 96), np.uint8)
    lab[8:40, 8:40] = Label.CLEAN_ICE
    lab[50:80, 40:70] = Label.ROCK_GLACIER
    prob = np.where(lab == Label.CLEAN_ICE, 0.9, 0.05)
    prob[50:80, 40:70] = 0.55  # clean + debris outweigh it together, but the model called it a rock glacier
    ds = _pred(lab, prob)
    ds = ds.chunk({"y": chunks, "x": chunks}) if chunks else ds
    glaciers = obia.outlines(ds)
    assert len(glaciers) == 1 and glaciers["n_px"].iloc[0] == 32 * 32
    rock = obia.rock_glacier_outlines(ds)
    assert list(rock["primeclass"]) == ["rock_glacier"] and rock["n_px"].iloc[0] == 30 * 30
    assert rock["area_km2"].iloc[0] == pytest.approx(0.09, rel=0.01)
    assert not rock.geometry.iloc[0].intersects(glaciers.geometry.iloc[0])
    four = _pred(np.where(lab == Label.ROCK_GLACIER, 0, lab), prob)  # a four-class model: an empty layer
    assert len(obia.rock_glacier_outlines(four)) == 0


def test_inventory_keeps_rock_glaciers_in_their_own_layer() -> None:
    """The inventory's glacier outlines of a year hold no rock glacier; its rock-glacier layer holds them."""
    import rioxarray  # noqa: F401

    from glacier_stac import inventory

    lab = np.zeros((96, 96), np.uint8)
    lab[8:40, 8:40] = Label.CLEAN_ICE
    lab[50:80, 40:70] = Label.ROCK_GLACIER
    prob = np.where(lab == Label.CLEAN_ICE, 0.9, 0.05)
    prob[50:80, 40:70] = 0.55
    ds = _pred(lab, prob).expand_dims(year=[2022])
    glaciers = inventory.outlines_for(ds, 2022)
    rock = inventory.rock_glaciers_for(ds, 2022)
    assert glaciers["n_px"].sum() == 32 * 32  # glacier area: the ice only
    assert list(rock["primeclass"]) == ["rock_glacier"] and rock["n_px"].sum() == 30 * 30


def _accuracy_benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_twin_comparison_fails_where_the_class_costs_glacier_or_debris() -> None:
    """Issue 14's 'no worse than without the class' as the benchmark checks it: each figure strict, a loss
    in any one (here the debris median, then the worst false-debris share) fails that check only."""
    acc = _accuracy_benchmark()

    def rows(model: str, debris: list[float], false_share: list[float]) -> list[dict]:
        nan = float("nan")
        return [{"world": f"w{i}", "model": model, "iou_overall": 0.9, "iou_debris": d, "false_debris_km2": f,
                 "false_debris_share": f, "front_m": nan, "iou_rock_glacier": nan, "false_rock_glacier_km2": 0.0}
                for i, (d, f) in enumerate(zip(debris, false_share, strict=True))]

    tie = acc.twin_comparison(rows("five", [0.7, 0.5, 0.6], [0.01, 0.02, 0.03])
                              + rows("four", [0.7, 0.5, 0.6], [0.01, 0.02, 0.03]), "five", "four")
    assert all(tie["checks"].values()) and tie["worlds"] == 3
    worse = acc.twin_comparison(rows("five", [0.7, 0.5, 0.6], [0.01, 0.02, 0.05])
                                + rows("four", [0.7, 0.5, 0.65], [0.01, 0.02, 0.03]), "five", "four")
    failed = sorted(k for k, ok in worse["checks"].items() if not ok)
    assert failed == ["false_debris_share_worst_vs_four", "iou_debris_median_vs_four"]
    assert worse["paired"]["iou_debris_paired_diff_median"] == 0.0
    assert worse["paired"]["false_debris_share_default_better_worlds"] == 0
