"""Models forward-pass with the right shapes, state honest receptive fields, and checkpoints round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glacier_stac.labels import Label
from glacier_stac.models import CLASSES, MODELS, get_model
from glacier_stac.models.checkpoint import Checkpoint, load, save

FEATS = ["B03", "B08", "B11", "elevation", "slope"]


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so eval mode is not an identity by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_classes_follow_labels():
    assert tuple(lab.name.lower() for lab in Label) == CLASSES
    assert len(CLASSES) == 5  # rock_glacier (issue 14) after the four of the shipped checkpoints


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_on_cpu(name):
    model = get_model(name, len(FEATS), len(CLASSES)).eval()
    side = 2 * max(model.divisor, 16)
    with torch.inference_mode():
        out = model(torch.randn(2, len(FEATS), side, side))
    assert out.shape == (2, len(CLASSES), side, side)
    assert torch.isfinite(out).all()
    assert model.receptive_field % 2 == 1 and model.receptive_field > 1


@pytest.mark.parametrize("name", ["unet", "glavitu"])
def test_size_divisibility_is_enforced(name):
    model = get_model(name, 3, 4).eval()
    with pytest.raises(ValueError, match="divisible by"):
        model(torch.randn(1, 3, model.divisor * 2 + 1, model.divisor * 2))


@pytest.mark.parametrize(("name", "n_classes", "kw"),
                         [(n, 4, {}) for n in sorted(MODELS)]
                         + [("unet", 5, {"subclass_branch": 4}),
                            ("unet", 5, {"subclass_branch": 4, "subclass_levels": 4})])
def test_receptive_field_is_conservative_and_real(name, n_classes, kw):
    """No input beyond receptive_field // 2 changes an output, at every pooling/window phase tried (the
    rock-glacier branch of the U-Net included: it widens the reach)."""
    torch.manual_seed(0)
    model = get_model(name, 2, n_classes, **kw).eval()
    _randomise_bn(model)
    radius = model.receptive_field // 2
    d = model.divisor
    side = _round(2 * radius + 3 * d + 8, d)
    x = torch.randn(1, 2, side, side, requires_grad=True)
    out = model(x)
    centre = _round(side // 2, d)
    reach = 0
    for phase in sorted({0, 1, d // 2, d - 1}):
        r = c = centre + phase
        (g,) = torch.autograd.grad(out[0, :, r, c].sum(), x, retain_graph=True)
        rows, cols = np.nonzero(g.abs().sum(dim=(0, 1)).numpy() > 0)
        reach = max(reach, np.abs(rows - r).max(), np.abs(cols - c).max())
    assert reach <= radius, f"{name}: an input {reach} px away changes the output, stated radius {radius}"
    assert reach >= radius // 3, f"{name}: stated radius {radius} px is far from the real reach {reach} px"


def _round(n: int, m: int) -> int:
    return -(-n // m) * m


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*cnn5"):
        get_model("resnet", 3, 4)
    with pytest.raises(ValueError, match="bad arguments for model 'unet'"):
        get_model("unet", 3, 4, depth=7)


def _ckpt(name="unet", **kw) -> Checkpoint:
    torch.manual_seed(1)
    model = get_model(name, len(FEATS), 4, base=8)
    _randomise_bn(model)
    return Checkpoint.from_model(model, name, FEATS, [0.1] * 5, [2.0] * 5, model_kwargs={"base": 8},
                                 data="synthetic seed 3", seed=3, command="pytest", metrics={"iou": 0.5}, **kw)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    ck = _ckpt()
    path = save(ck, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # a plain dict: no code is unpickled
    assert isinstance(raw, dict) and raw["features"] == FEATS
    back = load(path)
    for f in ("features", "mean", "std", "nan_fill", "receptive_field", "patch_size", "classes", "model",
              "model_kwargs", "data", "seed", "command", "metrics", "created", "version", "divisor"):
        assert getattr(back, f) == getattr(ck, f), f
    assert back.digest() == ck.digest()
    x = torch.randn(1, len(FEATS), 32, 32)
    with torch.inference_mode():
        assert torch.equal(ck.build_model()(x), back.build_model()(x))


def test_checkpoint_feature_mismatch_errors():
    ck = _ckpt()
    assert ck.check_features(["x", *FEATS]) == [1, 2, 3, 4, 5]  # extra features are fine by default
    with pytest.raises(ValueError, match=r"missing \['slope'\]"):
        ck.check_features(FEATS[:-1])
    with pytest.raises(ValueError, match=r"extra \['ndsi'\]"):
        ck.check_features([*FEATS, "ndsi"], exact=True)
    with pytest.raises(ValueError, match="misordered.*B08!=B03@0"):
        ck.check_features(["B08", "B03", "B11", "elevation", "slope"], exact=True)
    ck.check_features(FEATS, exact=True)


def test_checkpoint_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable glacier_stac checkpoint"):
        load(tmp_path / "junk.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a glacier_stac checkpoint"):
        load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="5 features but 4 means"):
        Checkpoint(model="unet", state_dict={}, features=FEATS, mean=[0] * 4, std=[1] * 5, receptive_field=3)
    with pytest.raises(ValueError, match="std must be positive"):
        Checkpoint(model="unet", state_dict={}, features=FEATS, mean=[0] * 5, std=[1, 1, 0, 1, 1], receptive_field=3)
    ck = _ckpt()
    ck.model_kwargs = {"base": 16}
    with pytest.raises(ValueError, match="do not fit model 'unet'"):
        ck.build_model()
