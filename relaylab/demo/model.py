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


def fit(make, x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int, batch_size: int, lr: float,
        progress: bool = False, desc: str = "training") -> nn.Module:
    """The model `make()` returns, trained on (x, y) with Adam and cross-entropy in shuffled mini-batches: seeded
    (weights and order), deterministic algorithms, the global RNG and torch's settings left as they were; in eval
    mode. The demo's CNN and the poisoning benchmark's models are trained with it."""
    from tqdm.auto import tqdm

    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            model = make()
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            order = torch.Generator().manual_seed(seed)
            model.train()
            for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
                permutation = torch.randperm(len(x), generator=order)
                for start in range(0, len(x), batch_size):
                    batch = permutation[start:start + batch_size]
                    loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        finally:
            torch.use_deterministic_algorithms(deterministic)
    return model.eval()
