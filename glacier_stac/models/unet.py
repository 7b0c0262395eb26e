"""A small U-Net, the default model: fast on CPU, BatchNorm only (no statistics over space).

BatchNorm in eval mode is a per-pixel affine map, so the network stays local: an output pixel depends
only on inputs within its receptive field and on its phase modulo `divisor`. That locality is what
lets inference tile a continent with no seams.
"""

from __future__ import annotations

import torch
from torch import nn

from glacier_stac.models._rf import receptive_field


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def unet_ops(levels: int, bottleneck: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """Receptive-field ops of the deepest path of a U-Net with `levels` poolings."""
    down = [("conv", 3), ("conv", 3), ("pool", 2)] * levels
    mid = [("conv", 3), ("conv", 3)] + (bottleneck or [])
    up = [("up", 2), ("conv", 3), ("conv", 3)] * levels
    return down + mid + up


class UNetBase(nn.Module):
    """Conv encoder, a pluggable bottleneck, conv decoder with skip connections."""

    def __init__(self, n_features: int, n_classes: int, base: int = 16, levels: int = 3) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"U-Net levels must be at least 1, got {levels}")
        chans = [base * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.down = nn.ModuleList()
        c = n_features
        for ch in chans[:-1]:
            self.down.append(conv_block(c, ch))
            c = ch
        self.pool = nn.MaxPool2d(2)
        self.mid = conv_block(c, chans[-1])
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        for ch_hi, ch_lo in zip(reversed(chans[:-1]), reversed(chans[1:]), strict=True):
            self.ups.append(nn.ConvTranspose2d(ch_lo, ch_hi, 2, stride=2))
            self.dec.append(conv_block(2 * ch_hi, ch_hi))
        self.head = nn.Conv2d(chans[0], n_classes, 1)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(
                f"{type(self).__name__} needs input height and width divisible by {self.divisor}, "
                f"got {tuple(x.shape[-2:])}"
            )
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(self.mid(x))
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNet(UNetBase):
    """Default model: 3 poolings, 16 base channels (~0.5 M parameters)."""

    def __init__(self, n_features: int, n_classes: int, base: int = 16, levels: int = 3) -> None:
        super().__init__(n_features, n_classes, base, levels)
        self.divisor = 2**levels
        self.receptive_field = receptive_field(unet_ops(levels), self.divisor)
