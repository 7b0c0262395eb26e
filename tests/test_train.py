"""Training end to end on the tiny test world, and the shipped checkpoint."""

from pathlib import Path

import numpy as np
import pytest

from glacier_stac import cube, metrics, train
from glacier_stac.baselines import ndsi_threshold
from glacier_stac.labels import Label
from glacier_stac.models.checkpoint import load
from glacier_stac.testing.regions import world_regions

SHIPPED = Path(__file__).parent.parent / "glacier_stac" / "checkpoints"


@pytest.fixture(scope="module")
def regions(world_dir):
    return world_regions(world_dir)


def test_world_regions_are_cubes_with_truth(regions):
    assert len(regions) == 2
    for r in regions:
        assert tuple(r.features.feature.values) == cube.FEATURES
        assert r.labels.shape == r.features.shape[1:]
        assert (r.labels == Label.DEBRIS_ICE).any() and (r.labels == Label.CLEAN_ICE).any()


def test_few_steps_beat_ndsi_on_debris(regions, tmp_path_factory):
    """Trained on one year of the test world, validated on another world (other region), scored on the
    next year: debris-covered ice is where the NDSI band ratio fails and the sensors together do not."""
    from glacier_stac.synthetic.world import WorldConfig
    from glacier_stac.synthetic.writer import generate

    val = world_regions(generate(WorldConfig(seed=11, size_km=4, years=(2022,)),
                                 tmp_path_factory.mktemp("val-world") / "w", progress=False))
    ckpt, hist = train.train(regions[:1], val, model="unet", epochs=8, steps_per_epoch=25, batch_size=8, patch=64,
                             seed=0, model_kwargs={"base": 16}, progress=False)
    assert len(hist) == 8 and hist[-1]["loss"] < hist[0]["loss"]
    test = regions[1]  # the other year, never seen in training
    learned = metrics.evaluate(*_pred(ckpt, test), res=10.0)
    out = ndsi_threshold(test.features).compute()
    base = metrics.evaluate(np.where(out["valid"].values, out["classes"].values, 0), test.labels, res=10.0)
    # measured 0.64-0.67 over training seeds 0-2; NDSI never maps debris (IoU 0)
    assert learned["debris"]["iou"] > base["debris"]["iou"] + 0.3, (learned["debris"], base["debris"])


def _pred(ckpt, region):
    klass, valid = train.predict_labels(ckpt, region.features)
    return np.where(valid, klass, 0), region.labels


def test_training_is_reproducible_by_seed(regions):
    west, east = train.spatial_split(regions[0], fraction=0.4, gap=64)
    kw = dict(model="cnn5", epochs=1, steps_per_epoch=3, batch_size=2, patch=32, progress=False)
    a, _ = train.train([west], [east], seed=5, **kw)
    b, _ = train.train([west], [east], seed=5, **kw)
    c, _ = train.train([west], [east], seed=6, **kw)
    key = next(iter(a.state_dict))
    assert np.array_equal(a.state_dict[key].numpy(), b.state_dict[key].numpy())
    assert not np.array_equal(a.state_dict[key].numpy(), c.state_dict[key].numpy())


def test_validation_must_be_other_regions(regions):
    with pytest.raises(ValueError, match="validation"):
        train.train(regions[:1], [], epochs=1)


@pytest.mark.parametrize("name", ["unet", "optical_unet"])
def test_shipped_checkpoint_loads_offline_and_maps_the_test_world(name, regions):
    path = SHIPPED / f"{name}.pt"
    ckpt = load(path)
    assert (SHIPPED / f"{name}.md").exists(), "model card missing"
    assert ckpt.seed is not None and ("glacier-stac train" in ckpt.command or "train_regimes.py" in ckpt.command)
    assert "1001" in ckpt.data  # trained on worlds whose seeds no test uses (tests use 0-99)
    r = regions[1]
    klass, valid = train.predict_labels(ckpt, r.features)
    s = metrics.evaluate(np.where(valid, klass, 0), r.labels, res=10.0)
    assert s["overall"]["iou"] > 0.8
