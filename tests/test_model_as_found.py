"""Every public entry point leaves the user's model as found: train/eval modes, requires_grad,
no .grad, no hooks, and every parameter and buffer (BatchNorm's running statistics) unchanged --
on a model left in training mode with BatchNorm and Dropout, and after an exception too."""

import pytest
import torch
from torch import nn

from chanattr import (ChannelSpace, channel_curve, channel_extremal_perturbation, extremal_perturbation,
                      list_layers, model_state, prunegrad, saliency)
from chanattr.channel_rankings import rank_by_ablation, rank_by_activation, rank_by_taylor, rank_random
from chanattr.evaluation import area_curve, extremal_score, insertion_deletion
from chanattr.models import Preprocessing


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.drop(self.features(x).mean((2, 3))))


@pytest.fixture
def model():
    m = BNNet().train()  # left in training mode, as a user mid-training would
    m.fc.weight.requires_grad_(False)  # and with one parameter frozen by the user
    return m


X = torch.randn(2, 3, 16, 16)
CALLS = {
    "extremal": lambda m: extremal_perturbation(m, X, 0, [0.2], iterations=3, progress=False),
    "extremal_paper": lambda m: extremal_perturbation(m, X, 0, [0.2], preset="paper", iterations=3, progress=False),
    "channels": lambda m: channel_extremal_perturbation(m, X, 0, "features.5", [0.25], iterations=3, progress=False),
    "channels_full": lambda m: channel_extremal_perturbation(m, X, 0, "features.5", [0.25], split="full",
                                                             iterations=3, progress=False),
    "space_and_curve": lambda m: channel_curve(ChannelSpace(m, X, "features.5"), torch.arange(8), 0),
    "rankings": lambda m: [f(ChannelSpace(m, X, "features.5"), *a) for f, a in (
        (rank_by_activation, ()), (rank_by_taylor, (0,)), (rank_by_ablation, (0,)), (rank_random, ()))],
    "prunegrad": lambda m: prunegrad(m, X, 0, keep=0.5),
    "saliency": lambda m: [saliency(k, m, X, 0, **kw) for k, kw in (
        ("gradient", {}), ("gradient_x_input", {}), ("integrated_gradients", {"steps": 4}),
        ("guided_backprop", {}), ("gradcam", {}), ("rise", {"masks": 8}), ("centre", {}))],
    "scores": lambda m: (extremal_score(m, X, torch.rand(2, 1, 16, 16), 0, [0.2]),
                         area_curve(m, X, torch.rand(2, 1, 16, 16), 0, [0.1, 0.2]),
                         insertion_deletion(m, X, torch.rand(2, 16, 16), 0, steps=4)),
    "list_layers": lambda m: list_layers(m, X),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_entry_point_leaves_the_model_as_found(model, name):
    before = model_state(model)
    CALLS[name](model)
    assert model_state(model) == before


def test_inversion_leaves_the_model_as_found(model):
    from inversion import channel_mask, invert

    pre = Preprocessing(input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    before = model_state(model)
    invert(model, X[:1], "features.5", channel_mask([0, 1], 8), pre, iterations=2, param="pixel", progress=False)
    assert model_state(model) == before


def test_model_as_found_after_an_exception(model):
    before = model_state(model)
    with pytest.raises(Exception):
        channel_extremal_perturbation(model, X, 7, "features.5", [0.25], iterations=3, progress=False)  # class 7 of 3
    with pytest.raises(Exception):
        extremal_perturbation(model, X, 7, [0.2], iterations=3, progress=False)
    assert model_state(model) == before


def test_model_state_sees_buffers_and_parameters(model):
    before = model_state(model)
    model(X)  # training mode: BatchNorm updates its running statistics
    assert model_state(model)["buffers"] != before["buffers"]
    assert model_state(model)["parameters"] == before["parameters"]
