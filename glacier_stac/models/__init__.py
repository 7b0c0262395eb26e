"""Segmentation models and their registry.

Every model maps (batch, n_features, H, W) normalised features to (batch, n_classes, H, W) logits and
declares two integers that inference relies on:
- `receptive_field`: conservative width in pixels; no input farther than `receptive_field // 2` from
  an output pixel can change it;
- `divisor`: input height/width must be multiples of it, and patches starting at multiples of it see
  the same pooling/window phase (so overlapping patches agree exactly).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from glacier_stac.labels import CLASSES
from glacier_stac.models.cnn5 import CNN5
from glacier_stac.models.glavitu import GlaViTU
from glacier_stac.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {"cnn5": CNN5, "unet": UNet, "glavitu": GlaViTU}
DEFAULT_MODEL = "unet"


def get_model(name: str, n_features: int, n_classes: int = len(CLASSES), **kw) -> nn.Module:
    """Build a registered model by name (kwargs are the model's own, e.g. base=16, levels=3)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    if n_features < 1 or n_classes < 2:
        raise ValueError(f"a model needs n_features >= 1 and n_classes >= 2, got {n_features}, {n_classes}")
    try:
        model = MODELS[name](n_features, n_classes, **kw)
    except TypeError as e:
        raise ValueError(f"bad arguments for model {name!r}: {e}") from e
    return model


__all__ = ["CLASSES", "DEFAULT_MODEL", "MODELS", "get_model", "CNN5", "UNet", "GlaViTU"]
