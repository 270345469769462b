import pytest
import torch
from torch import nn

from chanattr import ChanattrError, model_state
from chanattr.prunegrad import activation_layers, prunegrad

from models_gt import PlantedResNet, textured


class Tiny(nn.Module):
    """x (N x 3 x 1 x 1) -> 1x1 conv (3 hidden units) -> ReLU -> linear (2 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU()
        self.out = nn.Linear(3, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]]).view(3, 3, 1, 1))
            self.hidden.bias.zero_()
            self.out.weight.copy_(torch.tensor([[1.0, 1.0, -1.0], [0.5, 0.5, 0.5]]))
            self.out.bias.zero_()

    def forward(self, x):
        return self.out(self.act(self.hidden(x)).flatten(1))


def test_prunes_exactly_the_least_important_neurons_by_hand():
    model = Tiny().eval()
    x = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    # a = (1, 2, 3); dy0/da = (1, 1, -1); |a * g| = (1, 2, 3): keeping one neuron keeps the third
    r = prunegrad(model, x, 0, keep=1 / 3)
    assert r.kept["act"].tolist() == [[0.0, 0.0, 1.0]]
    # through the pruned network y0 = -a3 = -3 x3, so the input gradient is (0, 0, -3)
    assert r.gradient.flatten().tolist() == [0.0, 0.0, -3.0]
    assert r.saliency.flatten().tolist() == [3.0]
    # keeping two: the second and third (scores 2 and 3): gradient (0, 2, -3)
    r = prunegrad(model, x, 0, keep=2 / 3)
    assert r.kept["act"].tolist() == [[0.0, 1.0, 1.0]]
    assert r.gradient.flatten().tolist() == [0.0, 2.0, -3.0]


def test_keep_one_is_the_plain_gradient():
    model = PlantedResNet().eval()
    x = textured(16, 2)
    r = prunegrad(model, x, [0, 1], keep=1.0)
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xi).gather(1, torch.tensor([[0], [1]])).sum(), xi)
    assert torch.allclose(r.gradient, g, atol=1e-6)
    assert torch.allclose(r.saliency, g.abs().amax(1))


def test_batched_equals_one_at_a_time_and_model_left_as_found():
    model = PlantedResNet().eval()
    model.fc.train()
    before = model_state(model)
    x = textured(16, 3, seed=2)
    both = prunegrad(model, x, [0, 1, 2], keep=0.2)
    assert model_state(model) == before
    for i in range(3):
        one = prunegrad(model, x[i], i, keep=0.2)
        assert torch.allclose(both.saliency[i], one.saliency[0], atol=1e-6)
        for site in both.kept:
            assert torch.equal(both.kept[site][i], one.kept[site][0])


def test_modules_called_twice_are_hooked_at_each_run():
    import torchvision

    model = torchvision.models.resnet18(num_classes=4).eval()
    r = prunegrad(model, torch.randn(1, 3, 32, 32), 1, granularity="channel")
    assert "layer1.0.relu#0" in r.kept and "layer1.0.relu#1" in r.kept and "relu" in r.kept
    total = sum(k.shape[1] for k in r.kept.values())
    kept = sum(int(k.sum()) for k in r.kept.values())
    assert kept == round(0.15 * total)  # a global fraction of all channels
    assert set(torch.cat([k.flatten() for k in r.kept.values()]).tolist()) <= {0.0, 1.0}


def test_layer_scope_keeps_the_fraction_in_every_layer():
    model = PlantedResNet().eval()
    r = prunegrad(model, textured(16), 0, keep=0.25, scope="layer", granularity="channel")
    for k in r.kept.values():
        assert int(k.sum()) == round(0.25 * k.shape[1])


def test_activation_layers_and_explicit_layers():
    model = PlantedResNet().eval()
    assert activation_layers(model) == ["block.relu", "block.out"]
    r = prunegrad(model, textured(16), 0, layers=["block.conv2"])
    assert list(r.kept) == ["block.conv2"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(keep=0.0), "outside \\(0, 1\\]"),
    (dict(keep=1.5), "outside \\(0, 1\\]"),
    (dict(granularity="filter"), "unknown granularity"),
    (dict(scope="all"), "unknown scope"),
    (dict(layers=["block.conv3"]), "block.conv2"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ChanattrError, match=match):
        prunegrad(PlantedResNet().eval(), textured(16), 0, **kwargs)


def test_signed_criterion_keeps_only_supporting_neurons():
    """Tiny: a = (1, 2, 3), dy0/da = (1, 1, -1): a dy/da = (1, 2, -3). abs keeps the third (it
    suppresses class 0: |-3| is the largest); signed keeps the second, which supports it."""
    model = Tiny().eval()
    x = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    assert prunegrad(model, x, 0, keep=1 / 3).kept["act"].tolist() == [[0.0, 0.0, 1.0]]
    r = prunegrad(model, x, 0, keep=1 / 3, criterion="signed")
    assert r.kept["act"].tolist() == [[0.0, 1.0, 0.0]]
    assert r.gradient.flatten().tolist() == [0.0, 2.0, 0.0]
    # the pruned networks' own target logits: abs leaves -a3 = -3, signed a2 = 2 (whole network: 0)
    assert prunegrad(model, x, 0, keep=1 / 3).pruned_logit.tolist() == [-3.0]
    assert r.pruned_logit.tolist() == [2.0] and r.logit.tolist() == [0.0]
    assert r.info["criterion"] == "signed" and float(r.kept_fraction["act"]) == pytest.approx(1 / 3)
    with pytest.raises(ChanattrError, match="criterion"):
        prunegrad(model, x, 0, criterion="relu")


def test_default_layers_by_type_name_skip_gates_and_refuse_functional_only():
    class OwnGELU(nn.Module):  # timm and Hugging Face ship their own GELU classes
        def forward(self, x):
            return torch.nn.functional.gelu(x)

    OwnGELU.__name__ = "GELU"

    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.act = OwnGELU()
            self.gate = nn.Sigmoid()  # squeeze-excitation's gate: not a neuron
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a = self.act(self.conv(x))
            return self.fc((a * self.gate(a.mean((2, 3), keepdim=True))).mean((2, 3)))

    model = Gated().eval()
    x = torch.randn(1, 3, 4, 4)
    r = prunegrad(model, x, 0, keep=0.5)
    assert r.info["layers"] == ["act"] and set(r.kept) == {"act"}
    assert prunegrad(model, x, 0, keep=0.5, layer_types=["Sigmoid"]).info["layers"] == ["gate"]

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean((2, 3))

    with pytest.raises(ChanattrError, match="called as functions.*--layers"):
        prunegrad(Functional().eval(), x, 0)
    assert prunegrad(Functional().eval(), x, 0, layers=["conv"]).info["layers"] == ["conv"]


def test_global_scope_reports_kept_fraction_per_layer():
    model = PlantedResNet().eval()
    r = prunegrad(model, textured(16, 2), 0, keep=0.15)
    layer = prunegrad(model, textured(16, 2), 0, keep=0.15, scope="layer")
    assert set(r.kept_fraction) == {"block.relu", "block.out"}
    assert all(f.shape == (2,) for f in r.kept_fraction.values())
    for f in layer.kept_fraction.values():
        assert torch.allclose(f, torch.full((2,), 0.15), atol=0.01)
