"""Five-layer fully convolutional CNN: the classic per-pixel baseline (no pooling, small context)."""

from __future__ import annotations

import torch
from torch import nn

from glacier_stac.models._rf import receptive_field


class CNN5(nn.Module):
    """Four 3x3 conv + BatchNorm + ReLU layers and a 3x3 classifier: 11 px receptive field."""

    divisor = 1  # no pooling: any input size works

    def __init__(self, n_features: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = n_features
        for _ in range(4):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.Conv2d(c, n_classes, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.receptive_field = receptive_field([("conv", 3)] * 5, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
