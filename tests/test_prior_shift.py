"""The debris prior a class-weighted model carries, divided back out (issue 13's false debris).

Training weighs the rare classes up, so the trained model's debris probability holds a larger prior than
the world's. `train.shift_priors` adds a log-prior shift to a class's logit in the class head's bias;
`train.choose_prior_shift` picks its size on validation regions by median and worst glacier and debris IoU,
among the shifts that keep false debris within a cap when one is given.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from test_models import _randomise_bn

from glacier_stac import train
from glacier_stac.infer import predict
from glacier_stac.labels import CLASSES, Label
from glacier_stac.models import get_model
from glacier_stac.models.checkpoint import Checkpoint, load, save

FEATS = ["B03", "B08", "B11"]


def _cube(n: int = 48, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    coords = {"feature": FEATS, "y": 4995.0 - 10.0 * np.arange(n), "x": 5.0 + 10.0 * np.arange(n)}
    return xr.DataArray(rng.normal(0, 1, (len(FEATS), n, n)).astype(np.float32), dims=("feature", "y", "x"),
                        coords=coords)


@pytest.mark.parametrize("branch", [0, 8])
def test_a_shifted_checkpoint_predicts_the_shifted_probabilities(branch: int, tmp_path) -> None:
    """Through the real inference path, the calibrated checkpoint's probabilities are the original's with
    debris weighed by e**shift and renormalised; the input checkpoint is untouched; the shift is recorded,
    survives saving, and a second shift adds to the first (a plain U-Net, and one with a rock-glacier branch)."""
    torch.manual_seed(0)
    n_cls = len(CLASSES) if branch else 4
    net = get_model("unet", len(FEATS), n_cls, **({"subclass_branch": branch} if branch else {}))
    _randomise_bn(net)
    torch.nn.init.normal_(net.head.weight, std=3.0)
    kw = {"subclass_branch": branch} if branch else {}
    ck = Checkpoint.from_model(net, "unet", FEATS, [0.0] * 3, [1.0] * 3, model_kwargs=kw,
                               classes=list(CLASSES[:n_cls]))
    before = ck.state_dict["head.bias"].clone()
    shifted = train.shift_priors(ck, {"debris_ice": -1.5})
    torch.testing.assert_close(ck.state_dict["head.bias"], before, atol=0, rtol=0)
    cube = _cube()
    p0 = predict(cube, ck).compute(scheduler="sync")["probability"].values
    p1 = predict(cube, shifted).compute(scheduler="sync")["probability"].values
    want = train.shift_probability(p0, Label.DEBRIS_ICE, -1.5)
    np.testing.assert_allclose(p1, want, atol=2e-5)
    assert (p1[Label.DEBRIS_ICE] < p0[Label.DEBRIS_ICE]).mean() > 0.99
    again = load(save(train.shift_priors(shifted, {"debris_ice": 0.5}), tmp_path / "c.pt"))
    assert again.metrics["prior_shift"] == {"debris_ice": -1.0}
    p2 = predict(cube, again).compute(scheduler="sync")["probability"].values
    np.testing.assert_allclose(p2, train.shift_probability(p0, Label.DEBRIS_ICE, -1.0), atol=2e-5)


def test_shift_priors_names_what_it_cannot_shift() -> None:
    net = get_model("unet", len(FEATS), len(CLASSES), subclass_branch=8)
    ck = Checkpoint.from_model(net, "unet", FEATS, [0.0] * 3, [1.0] * 3, model_kwargs={"subclass_branch": 8},
                               classes=list(CLASSES))
    with pytest.raises(ValueError, match="'snow'.*not a class"):
        train.shift_priors(ck, {"snow": -1.0})
    cnn = Checkpoint.from_model(get_model("cnn5", 3, 4), "cnn5", FEATS, [0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="'cnn5' has no class head bias"):
        train.shift_priors(cnn, {"debris_ice": -1.0})


def test_a_subclass_shift_moves_its_odds_within_the_parent_alone(tmp_path) -> None:
    """Rock glaciers are a subclass of background read by a branch: shifting them by -1 divides their odds
    against the rest of background by e, through the real inference path; background + rock glacier and
    every other class keep the head's probabilities; the branch of the input checkpoint is untouched."""
    torch.manual_seed(1)
    net = get_model("unet", len(FEATS), len(CLASSES), subclass_branch=8)
    _randomise_bn(net)
    torch.nn.init.normal_(net.subclass[-1].weight, std=2.0)
    ck = Checkpoint.from_model(net, "unet", FEATS, [0.0] * 3, [1.0] * 3, model_kwargs={"subclass_branch": 8},
                               classes=list(CLASSES))
    key = "subclass.1.bias"
    before = ck.state_dict[key].clone()
    shifted = load(save(train.shift_priors(ck, {"rock_glacier": -1.0}), tmp_path / "rg.pt"))
    torch.testing.assert_close(ck.state_dict[key], before, atol=0, rtol=0)
    torch.testing.assert_close(shifted.state_dict["head.bias"], ck.state_dict["head.bias"], atol=0, rtol=0)
    assert shifted.metrics["prior_shift"] == {"rock_glacier": -1.0}
    cube = _cube()
    p0 = predict(cube, ck).compute(scheduler="sync")["probability"].values.astype(np.float64)
    p1 = predict(cube, shifted).compute(scheduler="sync")["probability"].values.astype(np.float64)
    bg, rg = Label.BACKGROUND, Label.ROCK_GLACIER
    np.testing.assert_allclose(p1[bg] + p1[rg], p0[bg] + p0[rg], atol=2e-5)
    others = [c for c in range(len(CLASSES)) if c not in (bg, rg)]
    np.testing.assert_allclose(p1[others], p0[others], atol=2e-5)
    ok = (p0[rg] > 1e-4) & (p0[bg] > 1e-4) & (p1[rg] > 1e-4) & (p1[bg] > 1e-4)
    assert ok.mean() > 0.5
    odds0, odds1 = np.log(p0[rg][ok] / p0[bg][ok]), np.log(p1[rg][ok] / p1[bg][ok])
    np.testing.assert_allclose(odds1 - odds0, -1.0, atol=2e-3)
    # the chooser's simulation of a shift is what the shifted checkpoint predicts
    np.testing.assert_allclose(train.shift_subclass_probability(p0, rg, -1.0), p1, atol=2e-5)
    with pytest.raises(ValueError, match="'rock_glacier'.*subclass"):
        train.choose_prior_shift([p0.astype(np.float32)], [np.zeros(p0.shape[1:], np.uint8)], "rock_glacier")


def _rock_glacier_worlds(n: int = 48) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two worlds: one with a rock glacier the branch is fairly sure of (0.7 against 0.3 background), one
    without any where it invents a patch it is less sure of (0.6 against 0.4)."""
    probs, truths = [], []
    for sure, has in ((0.7, True), (0.6, False)):
        truth = np.zeros((n, n), np.uint8)
        prob = np.zeros((len(CLASSES), n, n), np.float32)
        prob[Label.BACKGROUND] = 0.9
        prob[Label.CLEAN_ICE] = 0.1
        patch = (slice(8, 24), slice(8, 24)) if has else (slice(30, 38), slice(30, 38))
        prob[Label.CLEAN_ICE][patch] = 0.0
        prob[Label.ROCK_GLACIER][patch], prob[Label.BACKGROUND][patch] = sure, 1.0 - sure
        if has:
            truth[patch] = Label.ROCK_GLACIER
        probs.append(prob)
        truths.append(truth)
    return probs, truths


def test_a_subclass_shift_is_chosen_by_its_own_iou_and_what_it_invents() -> None:
    """The rock-glacier shift is chosen by rock-glacier IoU where they occur and pooled over every world:
    unshifted, the patch invented in the world without any costs the pooled IoU; -0.5 (below log(0.6 / 0.4))
    takes it off and keeps the sure one (log(0.7 / 0.3) = 0.85); -1 loses that too. Glacier never moves."""
    probs, truths = _rock_glacier_worlds()
    fit = train.choose_subclass_shift(probs, truths, "rock_glacier", shifts=(0.0, -0.5, -1.0), res=10.0)
    assert fit.shift == -0.5
    f0, f5, f1 = fit.figures[0.0], fit.figures[-0.5], fit.figures[-1.0]
    assert f0["iou_median"] == f0["iou_worst"] == 1.0  # where they occur, unshifted is perfect ...
    assert f0["iou_pooled"] == pytest.approx(256 / (256 + 64))  # ... but 64 px are invented elsewhere
    assert f0["false_km2_worst"] == pytest.approx(64 * 100 / 1e6) and f5["false_km2_total"] == 0.0
    assert f5["criterion"] == 1.0 > f0["criterion"] > f1["criterion"]
    assert f1["iou_worst"] == 0.0
    for s in (0.0, -0.5, -1.0):  # the split inside background never turns a pixel into glacier or out of it
        for prob in probs:
            shifted = train.shift_subclass_probability(prob, Label.ROCK_GLACIER, s)
            np.testing.assert_allclose(shifted[Label.CLEAN_ICE], prob[Label.CLEAN_ICE])
            np.testing.assert_allclose(shifted[Label.BACKGROUND] + shifted[Label.ROCK_GLACIER],
                                       prob[Label.BACKGROUND] + prob[Label.ROCK_GLACIER], atol=1e-6)
    with pytest.raises(ValueError, match="'debris_ice'.*not a subclass"):
        train.choose_subclass_shift(probs, truths, "debris_ice")
    assert train.fittable_prior("rock_glacier") == Label.ROCK_GLACIER
    with pytest.raises(ValueError, match="'rock_glacier'.*false-debris cap"):
        train.fittable_prior("rock_glacier", max_false_debris=0.02)


def _overpainting(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A glacier with a debris tongue; the model calls debris sure on the tongue and, less sure (0.6 against
    0.4 background), on a 6 px band of moraine around it."""
    truth = np.zeros((n, n), np.uint8)
    truth[8:40, 8:56] = Label.CLEAN_ICE
    truth[40:56, 20:44] = Label.DEBRIS_ICE
    prob = np.zeros((4, n, n), np.float32)
    prob[0] = 0.95
    prob[1][truth == Label.CLEAN_ICE] = 0.95
    prob[0][truth == Label.CLEAN_ICE] = 0.05
    band = np.zeros((n, n), bool)
    band[40:62, 14:50] = True
    band &= truth == Label.BACKGROUND
    prob[2][band], prob[0][band] = 0.6, 0.4
    prob[2][truth == Label.DEBRIS_ICE], prob[0][truth == Label.DEBRIS_ICE] = 0.9, 0.05
    prob[3] = 1 - prob[:3].sum(0)
    return prob, truth


def test_the_shift_chosen_undoes_an_overpainted_debris_prior() -> None:
    """Debris painted on the moraine: a shift below log(0.4 / 0.6) takes it back off (and keeps the tongue,
    sure at 0.9), so the chosen shift is the first on the grid that does, and the figures say why."""
    prob, truth = _overpainting()
    fit = train.choose_prior_shift([prob], [truth], "debris_ice", shifts=(0.0, -0.25, -0.5, -1.0, -4.0))
    assert fit.shift == -0.5  # log(0.4/0.6) = -0.405: -0.25 is not enough; -1.0 ties, and is further from 0
    assert fit.figures[0.0]["iou_debris_median"] < 0.5 and fit.figures[-0.5]["iou_debris_median"] == 1.0
    crit = {k: f["criterion"] for k, f in fit.figures.items()}
    assert crit[-0.5] == crit[-1.0] > crit[-4.0]  # -4 loses the tongue too
    glacier = np.isin(truth, (Label.CLEAN_ICE, Label.DEBRIS_ICE)).sum()
    moraine = (prob[2] == np.float32(0.6)).sum()
    assert fit.figures[0.0]["false_debris_share_worst"] == pytest.approx(moraine / glacier)  # reported ...
    assert fit.figures[-0.5]["false_debris_share_worst"] == 0.0 == fit.figures[-0.5]["false_debris_share_median"]


def test_a_calibrated_model_is_left_as_it_is() -> None:
    """Probabilities that already fit the truth: no shift does better, so none is chosen."""
    prob, truth = _overpainting()
    prob[2][(truth == Label.BACKGROUND)] = 0.0
    prob[0][(truth == Label.BACKGROUND)] = 1.0
    prob[3] = np.clip(1 - prob[:3].sum(0), 0, None)
    fit = train.choose_prior_shift([prob], [truth], "debris_ice", shifts=(-1.0, -0.5, 0.0, 0.5))
    assert fit.shift == 0.0 and fit.figures[0.0]["iou_debris_median"] == 1.0


def test_the_criterion_weighs_the_worst_region_as_much_as_the_median() -> None:
    """Issue 13's four figures alike; a region without debris has no debris IoU and does not count for it."""
    f = train.prior_figures([0.9, 0.8, 0.95, 0.97], [0.7, 0.2, 0.9, float("nan")])
    assert f["iou_overall_median"] == pytest.approx(0.925) and f["iou_overall_worst"] == 0.8
    assert f["iou_debris_median"] == 0.7 and f["iou_debris_worst"] == 0.2
    assert f["criterion"] == pytest.approx((0.925 + 0.8 + 0.7 + 0.2) / 4)
    g = train.prior_figures([0.9, 0.8, 0.95, 0.97], [0.7, 0.2, 0.9, float("nan")], [0.01, 0.05, 0.02, 0.0])
    assert g["criterion"] == f["criterion"]  # ... and kept out of the criterion
    assert g["false_debris_share_median"] == pytest.approx(0.015) and g["false_debris_share_worst"] == 0.05


def _rim_over_doubtful_debris(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A debris tongue whose lower half the model doubts (0.65 debris, 0.35 background) beside a two-pixel
    moraine rim it is surer of (0.7 against 0.3), and one moraine pixel it is certain of (0.99): every shift
    that takes the rim off takes the doubtful tongue off too, so the IoU criterion keeps both."""
    prob, truth = _overpainting(n)
    prob[2][truth == Label.BACKGROUND], prob[0][truth == Label.BACKGROUND] = 0.0, 0.95
    doubtful = np.zeros((n, n), bool)
    doubtful[48:56, 20:44] = True
    prob[2][doubtful], prob[0][doubtful] = 0.65, 0.35
    rim = np.zeros((n, n), bool)
    rim[56:58, 20:44] = True
    prob[2][rim], prob[0][rim] = 0.7, 0.3
    prob[2][60, 2], prob[0][60, 2] = 0.99, 0.005
    prob[3] = np.clip(1 - prob[:3].sum(0), 0, None)
    return prob, truth


def test_a_false_debris_cap_trades_doubtful_debris_for_the_rim() -> None:
    """Uncapped, the criterion keeps the rim (its IoU pays less for it than for the doubtful half tongue);
    with issue 13's 2 % cap only shifts below log(0.3 / 0.7) compete, and the best of them is taken; a cap no
    shift meets takes the least false debris and says so."""
    prob, truth = _rim_over_doubtful_debris()
    shifts = (0.0, -0.5, -1.0, -4.0)
    free = train.choose_prior_shift([prob], [truth], "debris_ice", shifts=shifts)
    assert free.shift == 0.0 and free.cap_met and free.max_false_debris is None
    assert free.figures[0.0]["false_debris_share_worst"] > 0.02
    capped = train.choose_prior_shift([prob], [truth], "debris_ice", shifts=shifts, max_false_debris=0.02)
    assert capped.shift == -1.0 and capped.cap_met and capped.max_false_debris == 0.02
    assert capped.figures[-1.0]["false_debris_share_worst"] <= 0.02 < capped.figures[-0.5]["false_debris_share_worst"]
    assert capped.figures[-1.0]["criterion"] > capped.figures[-4.0]["criterion"]  # -4 loses the sure tongue too
    unmet = train.choose_prior_shift([prob], [truth], "debris_ice", shifts=shifts, max_false_debris=0.0)
    assert not unmet.cap_met and unmet.shift == -1.0  # the certain pixel outlives every shift: of the least
    assert unmet.figures[-4.0]["false_debris_share_worst"] == unmet.figures[-1.0]["false_debris_share_worst"] > 0
    # false debris (-1 and -4), the better criterion
