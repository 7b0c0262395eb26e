"""A rock-glacier branch beside a four-class model (issue 14: the class must not cost glacier accuracy).

Rock glaciers are a kind of non-glacier ground (`labels.PARENT`): the class map decides among the other
classes first, the rock glacier's probability counted in background's, and only then between background
and rock glacier. The U-Net's `subclass_branch` splits the four-class head's background probability with
a branch of its own; trained alone (`freeze_init`) on a frozen four-class model, the five-class model's
class map is the four-class model's wherever that one did not say background.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from test_models import _randomise_bn

from glacier_stac import train
from glacier_stac.infer import classes_from_probability, predict
from glacier_stac.labels import CLASSES, NODATA_CLASS, Label
from glacier_stac.models import get_model
from glacier_stac.models.checkpoint import Checkpoint

FEATS = ["B03", "B08", "B11"]


def test_class_map_decides_the_parent_before_its_subclass() -> None:
    """Background and rock glacier together outweigh clean ice: not glacier, and of the two rock glacier."""
    p = np.array([[0.25, 0.40, 0.0, 0.0, 0.35],  # plain argmax: clean ice; nested: rock glacier
                  [0.40, 0.30, 0.0, 0.0, 0.30],  # background
                  [0.05, 0.60, 0.0, 0.0, 0.35],  # clean ice (0.60 > 0.40)
                  [0.10, 0.05, 0.0, 0.5, 0.35],  # water (0.5 > 0.45)
                  [np.nan] * 5], np.float32).T.reshape(5, 1, 5)
    assert classes_from_probability(p)[0].tolist() == [Label.ROCK_GLACIER, Label.BACKGROUND, Label.CLEAN_ICE,
                                                         Label.WATER, NODATA_CLASS]
    four = p[:4]  # a four-class model: the plain argmax
    assert classes_from_probability(four)[0].tolist() == [1, 0, 1, 3, NODATA_CLASS]


@pytest.mark.parametrize("levels", [1, 4])
def test_branch_splits_background_and_keeps_the_other_classes(levels: int) -> None:
    """The branch model grown from a four-class U-Net gives that model's probabilities for the glacier
    classes and water, and background + rock glacier = its background: the class maps agree (a branch
    reading the full-resolution features only, and one reading every decoder level)."""
    torch.manual_seed(0)
    four = get_model("unet", len(FEATS), 4)
    torch.nn.init.normal_(four.head.weight, std=5.0)  # a random model that calls every class somewhere
    five = get_model("unet", len(FEATS), len(CLASSES), subclass_branch=8, subclass_levels=levels)
    train._load_grown(five, four.state_dict())
    torch.nn.init.normal_(five.subclass[-1].weight, std=3.0)  # a branch with opinions: some pixels flip
    torch.nn.init.zeros_(five.subclass[-1].bias)
    four.eval(), five.eval()
    x = torch.randn(2, len(FEATS), 64, 64)
    with torch.no_grad():
        p4, p5 = torch.softmax(four(x), 1), torch.softmax(five(x), 1)
    torch.testing.assert_close(p5[:, 1:4], p4[:, 1:4], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p5[:, 0] + p5[:, 4], p4[:, 0], atol=1e-6, rtol=1e-5)
    k4 = np.stack([classes_from_probability(p.numpy()) for p in p4])
    k5 = np.stack([classes_from_probability(p.numpy()) for p in p5])
    assert (k5 == Label.ROCK_GLACIER).any() and (k5 == Label.BACKGROUND).any()
    assert (p5.numpy().argmax(1) != k5).any()  # where a plain argmax would have called the split background glacier
    np.testing.assert_array_equal(np.where(k5 == Label.ROCK_GLACIER, Label.BACKGROUND, k5), k4)


def test_subclass_branch_needs_a_last_class_with_a_parent() -> None:
    with pytest.raises(ValueError, match="class water has none"):
        get_model("unet", 3, 4, subclass_branch=8)
    with pytest.raises(ValueError, match="subclass_levels must be 1..4"):
        get_model("unet", 3, 5, subclass_branch=8, subclass_levels=5)


def _region(name: str, seed: int, n: int = 64) -> train.Region:
    """Features that say where the classes are: rock glaciers a cooler patch of bare ground."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((n, n), np.uint8)
    lab[8:30, 8:30] = Label.CLEAN_ICE
    lab[36:56, 36:56] = Label.ROCK_GLACIER
    lab[40:60, 4:20] = Label.DEBRIS_ICE
    feats = rng.normal(0, 0.05, (len(FEATS), n, n)).astype(np.float32)
    feats[0] += 0.6 * (lab == Label.CLEAN_ICE) + 0.3 * (lab == Label.DEBRIS_ICE)
    feats[2] -= 0.4 * (lab == Label.ROCK_GLACIER)
    coords = {"feature": FEATS, "y": 4995.0 - 10.0 * np.arange(n), "x": 5.0 + 10.0 * np.arange(n)}
    return train.Region(name, xr.DataArray(feats, dims=("feature", "y", "x"), coords=coords), lab)


def test_freeze_init_trains_the_branch_alone_and_keeps_the_class_map() -> None:
    """Training the branch on a frozen four-class checkpoint changes none of its tensors (BatchNorm
    statistics included) and the five-class class map, through the real inference path, is the
    four-class one outside background."""
    torch.manual_seed(1)
    net = get_model("unet", len(FEATS), 4)
    _randomise_bn(net)
    four = Checkpoint.from_model(net, "unet", FEATS, [0.0] * 3, [1.0] * 3)
    tr, va = [_region("a", 0), _region("b", 1)], [_region("c", 2)]
    five, _ = train.train(tr, va, init=four, freeze_init=True, model_kwargs={"subclass_branch": 8}, epochs=2,
                          steps_per_epoch=3, batch_size=2, patch=32, progress=False)
    assert five.classes == list(CLASSES) and five.model_kwargs["subclass_branch"] == 8
    for k, v in four.state_dict.items():
        torch.testing.assert_close(five.state_dict[k], v, atol=0, rtol=0, msg=f"frozen tensor {k} changed")
    assert any(k.startswith("subclass.") for k in five.state_dict)
    cube = va[0].features
    k4 = predict(cube, four).compute(scheduler="sync")["classes"].values
    k5 = predict(cube, five).compute(scheduler="sync")["classes"].values
    np.testing.assert_array_equal(np.where(k5 == Label.ROCK_GLACIER, Label.BACKGROUND, k5), k4)


def test_freeze_init_needs_something_new_to_train() -> None:
    four = Checkpoint.from_model(get_model("unet", len(FEATS), 4), "unet", FEATS, [0.0] * 3, [1.0] * 3)
    r = _region("a", 0)
    with pytest.raises(ValueError, match="needs init"):
        train.train([r], [r], freeze_init=True, features=FEATS, epochs=1, steps_per_epoch=1, patch=32)
    r4 = train.Region("a4", r.features, np.where(r.labels == Label.ROCK_GLACIER, 0, r.labels).astype(np.uint8))
    with pytest.raises(ValueError, match="nothing the init checkpoint lacks"):  # the same four-class model again
        train.train([r4], [r4], init=four, freeze_init=True, epochs=1, steps_per_epoch=1, patch=32)
