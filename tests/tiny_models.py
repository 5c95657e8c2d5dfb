"""Small models for tests (referenced as ``tests/tiny_models.py:factory`` architectures)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv(5x5) -> ReLU -> maxpool -> conv(3x3, stride 2) -> ReLU -> GAP -> Linear -> Linear."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 5, padding=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 12)
        self.fc2 = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        x = self.gap(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def tiny_net(num_classes: int = 3) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(num_classes)


def tiny_gray_net(num_classes: int = 3) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(num_classes, in_channels=1)


class NaNOnRed(TinyNet):
    """TinyNet whose logits are NaN on mostly-red images (class ``a`` of the test folders)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        red = x[:, 0].mean((1, 2)) > x[:, 1:].mean((1, 2, 3)) + 0.3
        return torch.where(red[:, None], torch.full_like(out, float("nan")), out)


def nan_on_red(num_classes: int = 3) -> NaNOnRed:
    torch.manual_seed(0)
    return NaNOnRed(num_classes)
