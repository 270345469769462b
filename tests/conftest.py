"""Shared fixtures: the real bundled model (loaded once) and small hand-built models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chanattr import load_model


@pytest.fixture
def run_cli(capsys):
    """Run the command line in this process: ``run_cli(*argv) -> (exit status, stdout, stderr)``."""
    from chanattr.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def lite0():
    """The bundled EfficientNet-Lite0 with real ImageNet weights (offline)."""
    return load_model("efficientnet_lite0")


class TinyNet(nn.Module):
    """A small conv net with in-place ReLUs, like torchvision's ResNets."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class TwiceNet(nn.Module):
    """Uses one module twice in its forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.conv(self.conv(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def twice():
    torch.manual_seed(0)
    return TwiceNet().eval()
