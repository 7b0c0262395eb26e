"""A hybrid CNN-transformer U-Net in the spirit of GlaViTU (Maslov et al.).

Conv encoder, transformer layers at the bottleneck, conv decoder. Attention runs inside fixed
non-overlapping windows of `window` x `window` bottleneck tokens (as in Swin), with a learned
position embedding per window cell: global attention would make every output depend on the whole
patch, so a prediction would change with where the patch happens to start. Windowed attention keeps
the network local, with a stated receptive field, and the windows line up with the global grid when
patches start at multiples of `divisor`.
"""

from __future__ import annotations

import torch
from torch import nn

from glacier_stac.models._rf import receptive_field
from glacier_stac.models.unet import UNetBase, unet_ops


class WindowTransformer(nn.Module):
    """Pre-norm transformer layers over non-overlapping windows of a (B, C, H, W) feature map."""

    def __init__(self, dim: int, window: int, depth: int = 2, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.window = window
        self.pos = nn.Parameter(torch.zeros(1, window * window, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, dim * mlp_ratio, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.window
        t = x.reshape(b, c, h // n, n, w // n, n).permute(0, 2, 4, 3, 5, 1).reshape(-1, n * n, c)
        t = t + self.pos
        for layer in self.layers:
            t = layer(t)
        t = t.reshape(b, h // n, w // n, n, n, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return t


class GlaViTU(UNetBase):
    """U-Net with a windowed transformer at the bottleneck."""

    def __init__(
        self, n_features: int, n_classes: int, base: int = 16, levels: int = 3, window: int = 4,
        depth: int = 2, heads: int = 4,
    ) -> None:
        super().__init__(n_features, n_classes, base, levels)
        dim = base * 2**levels
        if dim % heads:
            raise ValueError(f"GlaViTU bottleneck width {dim} is not divisible by heads={heads}")
        self.transformer = WindowTransformer(dim, window, depth, heads)
        self.divisor = 2**levels * window
        self.receptive_field = receptive_field(unet_ops(levels, [("window", window)]), self.divisor)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transformer(x)
