"""A small U-Net, the default model: fast on CPU, BatchNorm only (no statistics over space).

BatchNorm in eval mode is a per-pixel affine map, so the network stays local: an output pixel depends
only on inputs within its receptive field and on its phase modulo `divisor`. That locality is what
lets inference tile a continent with no seams.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glacier_stac.labels import PARENT, Label
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

    def feature_columns(self) -> dict[str, int]:
        """The weights that read the input features, each with the column of its first feature: a checkpoint
        grown by a feature (`train._load_grown`) or averaged with one that lacks it (`train.soup`) puts that
        feature's column there by name, not at the tensor's end."""
        return {"down.0.0.weight": 0}

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decode(x)[-1])

    def decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The bottleneck's and each decoder level's output, coarsest first; the last, at full resolution, is
        what the head reads."""
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
        out = [x]
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
            out.append(x)
        return out


class UNet(UNetBase):
    """Default model: 3 poolings, 16 base channels (~0.5 M parameters).

    `subclass_branch` > 0: the last class is a subclass (`labels.PARENT`: rock glaciers inside background)
    decided by a branch of that many channels of its own on the decoder's output and the input (with
    `subclass_levels` > 1 also the coarser decoder levels, projected at their own resolution and repeated
    up: the landform's context at the cost of a 1x1 convolution per level), as a share of its parent's
    probability; the head keeps the other classes. Trained alone on a frozen
    model of those classes (`train.train(freeze_init=True)`), it leaves that model's class map exactly as
    it was (issue 14: rock glaciers must not cost glacier accuracy)."""

    def __init__(self, n_features: int, n_classes: int, base: int = 16, levels: int = 3,
                 subclass_branch: int = 0, subclass_levels: int = 1) -> None:
        nested = subclass_branch > 0
        if nested and PARENT.get(Label(n_classes - 1)) is None:
            raise ValueError(f"a subclass branch needs a last class with a parent in labels.PARENT; class "
                             f"{Label(n_classes - 1).name.lower()} has none")
        if nested and not 1 <= subclass_levels <= levels + 1:
            raise ValueError(f"subclass_levels must be 1..{levels + 1} (the decoder's levels), got {subclass_levels}")
        super().__init__(n_features, n_classes - nested, base, levels)
        self.divisor = 2**levels
        ops = unet_ops(levels)
        self.subclass = None
        if nested:
            self.parent = int(PARENT[Label(n_classes - 1)])
            coarse = [base * 2**i for i in range(1, subclass_levels)]  # decoder channels above full resolution
            self.subclass_in = nn.ModuleList(nn.Conv2d(c, subclass_branch, 1) for c in coarse)
            self.subclass = nn.Sequential(
                conv_block(base + n_features + subclass_branch * bool(coarse), subclass_branch),
                nn.Conv2d(subclass_branch, 1, 1))
            nn.init.constant_(self.subclass[-1].bias, -2.0)  # rare: start near "not the subclass"
            ops = ops + [("conv", 3), ("conv", 3)]
        self.receptive_field = receptive_field(ops, self.divisor)

    def feature_columns(self) -> dict[str, int]:
        cols = super().feature_columns()
        if self.subclass is not None:  # the branch reads [decoder output, input features, coarser context]
            cols["subclass.0.0.weight"] = self.head.in_channels
        return cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subclass is None:
            return super().forward(x)
        levels = self.decode(x)
        feats = levels[-1]
        logp = F.log_softmax(self.head(feats).float(), dim=1)
        inputs = [feats, x]
        if len(self.subclass_in):
            # coarser levels projected where they are (cheap), each repeated up to the next finer one and
            # summed there: one full-resolution repeat instead of one per level (nearest repeats compose)
            ctx = None
            coarse = levels[-len(self.subclass_in) - 1:-1]  # coarsest first
            for proj, f in zip(reversed(self.subclass_in), coarse, strict=True):
                ctx = proj(f) if ctx is None else proj(f) + F.interpolate(ctx, scale_factor=2, mode="nearest")
            inputs.append(F.interpolate(ctx, scale_factor=2, mode="nearest"))
        share = self.subclass(torch.cat(inputs, dim=1)).float()  # logit of subclass-within-parent
        par = logp[:, self.parent: self.parent + 1]
        # log-probabilities (valid logits: their softmax is these probabilities): the parent's probability
        # split between itself and the subclass, every other class's as the head gave it
        return torch.cat([logp[:, : self.parent], par + F.logsigmoid(-share), logp[:, self.parent + 1:],
                          par + F.logsigmoid(share)], dim=1)
