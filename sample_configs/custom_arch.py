"""A user's own architecture, referenced from custom.yaml as ``custom_arch.py:small_vgg``.

The factory is called with ``num_classes=`` (read from the weights) because it accepts it.
"""

from __future__ import annotations

from torch import nn


class SmallVGG(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.body(x))


def small_vgg(num_classes: int = 10) -> SmallVGG:
    return SmallVGG(num_classes)
