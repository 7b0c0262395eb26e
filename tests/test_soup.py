"""Model soups (`train.soup`): fine-tunes of one model averaged into one checkpoint, a feature one part lacks
matched by name, and every mismatch named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from test_models import _randomise_bn

from glacier_stac import train
from glacier_stac.infer import predict
from glacier_stac.labels import CLASSES
from glacier_stac.models import get_model
from glacier_stac.models.checkpoint import Checkpoint, load, save

FEATS = ["B03", "B08", "B11"]
KW = {"subclass_branch": 8}


def _ckpt(feats: list[str], seed: int, **over) -> Checkpoint:
    torch.manual_seed(seed)
    net = get_model("unet", len(feats), len(CLASSES), **KW)
    _randomise_bn(net)
    ck = Checkpoint.from_model(net, "unet", feats, [0.5] * len(feats), [2.0] * len(feats), model_kwargs=dict(KW),
                               classes=list(CLASSES))
    for k, v in over.items():
        setattr(ck, k, v)
    return ck


def _cube(feats: list[str], n: int = 40, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    coords = {"feature": feats, "y": 4995.0 - 10.0 * np.arange(n), "x": 5.0 + 10.0 * np.arange(n)}
    return xr.DataArray(rng.normal(0, 1, (len(feats), n, n)).astype(np.float32), dims=("feature", "y", "x"),
                        coords=coords)


def _probs(ck: Checkpoint, cube: xr.DataArray) -> np.ndarray:
    return predict(cube, ck).compute(scheduler="sync")["probability"].values


def test_a_soup_is_the_weighted_mean_of_its_parts_and_survives_saving(tmp_path) -> None:
    a, b = _ckpt(FEATS, 0), _ckpt(FEATS, 1)
    s = load(save(train.soup([a, b], [0.25, 0.75]), tmp_path / "s.pt"))
    for k, v in s.state_dict.items():
        if v.is_floating_point():
            want = 0.25 * a.state_dict[k].double() + 0.75 * b.state_dict[k].double()
            torch.testing.assert_close(v.double(), want, atol=1e-6, rtol=1e-6)
    assert s.metrics["soup"]["weights"] == [0.25, 0.75]
    assert not np.allclose(_probs(s, _cube(FEATS)), _probs(b, _cube(FEATS)), atol=1e-3)  # a real mixture
    # a soup of one checkpoint with itself is that checkpoint, prediction for prediction
    np.testing.assert_allclose(_probs(train.soup([a, a]), _cube(FEATS)), _probs(a, _cube(FEATS)), atol=1e-6)


def test_a_part_without_a_feature_ignores_it_in_the_soup() -> None:
    """The older part reads B03 and B11, the newer also B08 (a feature added since, in the middle). Weighted
    all on the older part, the soup reads three features and predicts exactly what the older part does,
    whatever B08 holds: its columns were matched by name, and B08's is 0."""
    old, new = _ckpt(["B03", "B11"], 2), _ckpt(FEATS, 3)
    s = train.soup([new, old], [0.0, 1.0])
    assert s.features == FEATS and s.mean == [0.5] * 3
    cube = _cube(FEATS)
    want = _probs(old, cube.sel(feature=["B03", "B11"]))
    np.testing.assert_allclose(_probs(s, cube), want, atol=1e-5)
    np.testing.assert_allclose(_probs(s, cube * xr.DataArray([1.0, 9.0, 1.0], dims="feature")), want, atol=1e-5)
    half = train.soup([new, old])
    assert half.features == FEATS and not np.allclose(_probs(half, cube), want, atol=1e-3)


def test_a_soup_names_what_cannot_be_averaged() -> None:
    a = _ckpt(FEATS, 0)
    with pytest.raises(ValueError, match="classes"):
        train.soup([a, _ckpt(FEATS, 1, classes=list(CLASSES[:4]) + ["other"])])
    with pytest.raises(ValueError, match="model_kwargs"):
        train.soup([a, _ckpt(FEATS, 1, model_kwargs={"subclass_branch": 4})])
    with pytest.raises(ValueError, match="'B08' is normalised differently"):
        train.soup([a, _ckpt(FEATS, 1, mean=[0.5, 0.7, 0.5])])
    with pytest.raises(ValueError, match="another order"):
        train.soup([a, _ckpt(["B11", "B03", "B08"], 1)])
    with pytest.raises(ValueError, match="summing to 1"):
        train.soup([a, a], [0.5, 0.6])
    with pytest.raises(ValueError, match="at least one"):
        train.soup([])
