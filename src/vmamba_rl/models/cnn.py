"""The conventional baseline: a small CNN depth encoder with VMambaVisualEncoder's contract."""

from __future__ import annotations

import torch
from torch import nn


class CNNVisualEncoder(nn.Module):
    """(N, C, H, W) or (B, K, C, H, W), uint8 or float -> (..., out_features).

    Conv 3x3 stride 2 + ReLU per channel entry (DrQ-like), then flatten -> Linear -> LayerNorm.
    """

    def __init__(
        self,
        in_chans: int,
        img_size: tuple[int, int],
        out_features: int,
        channels: list[int] | tuple[int, ...] = (32, 64, 64),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 3, stride=2, padding=1), nn.ReLU()]
            c = ch
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, in_chans, *img_size)).numel()
        self.head = nn.Sequential(nn.Linear(n_flat, out_features), nn.LayerNorm(out_features))
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return self.head(self.convs(x).flatten(1)).view(*lead, -1)
