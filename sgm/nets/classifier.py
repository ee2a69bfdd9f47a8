"""A small CNN classifier of 8×8 digits: the reference that judges generated digits, and its features for
the Fréchet distance (``sgm.metrics.frechet_distance(x, y, features=classifier.features)``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DigitsClassifier", "train_digits_classifier"]


class DigitsClassifier(nn.Module):
    """``(n, 1, 8, 8)`` in [-1, 1] → logits ``(n, 10)``; ``features`` is the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.silu(self.conv2(F.silu(self.conv1(x))))
        return F.silu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_digits_classifier(images: Tensor, labels: Tensor, epochs: int = 40, seed: int = 0,
                            batch_size: int = 64) -> DigitsClassifier:
    """Adam on cross-entropy with random ±1-pixel shifts (so that the classifier does not key on exact positions)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for idx in order.split(batch_size):
            x = images[idx]
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()
