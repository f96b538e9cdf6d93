"""The demo's small CNN for 32×32 grey digits, referenced in its model spec as `relaylab.demo.model:digits_cnn`.

Small enough to train on two CPU cores in seconds, deep enough to have several conv layers to inspect. Layers are
named like torchvision's (`features.0` … `classifier.2`) so the explorer's layer views look the same for both.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, n_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),  # features.0: 32×32
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),  # features.3: 16×16
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),  # features.6: 8×8
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 2 * 2, 64),  # classifier.0
            nn.ReLU(),
            nn.Linear(64, n_classes),  # classifier.2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def digits_cnn(n_classes: int = 10, in_channels: int = 1) -> DigitsCNN:
    return DigitsCNN(n_classes, in_channels)
