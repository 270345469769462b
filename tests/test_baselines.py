"""Every saliency method behind ``saliency()``: shapes, the ReLU6 fix in guided backprop,
RISE on a model with a known region, and the model left as found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chanattr import ChanattrError, model_state, saliency
from chanattr.baselines import METHODS, last_spatial_layer
from conftest import TinyNet
from models_gt import RegionNet, box_mask, textured


class Relu6Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "extremal"])
def test_every_method_gives_one_map_per_image(method):
    model = TinyNet().eval()
    x = textured(16, 2, seed=2)
    before = model_state(model)
    kw = {"masks": 64} if method == "rise" else {}
    maps = saliency(method, model, x, [0, 3], **kw)
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()
    assert model_state(model) == before


def test_guided_backprop_applies_its_rule_at_relu6():
    model = Relu6Net().eval()
    x = textured(12, seed=4)
    gbp = saliency("guided_backprop", model, x, 1)
    grad = saliency("gradient", model, x, 1)
    assert not torch.allclose(gbp, grad)  # Captum's own class would return the plain gradient here


def test_gradcam_uses_the_last_spatial_layer():
    assert last_spatial_layer(TinyNet().eval(), textured(16)) == "features.3"


def test_rise_and_centre_point_where_expected():
    box = (6, 14, 20, 20)
    model = RegionNet(48, box).eval()
    x = textured(48)
    r = saliency("rise", model, x, 0, masks=500)[0]
    inside = box_mask(48, box)
    assert r[inside].mean() > r[~inside].mean()
    c = saliency("centre", model, x, 0)[0]
    assert divmod(int(c.argmax()), 48) in {(23, 23), (23, 24), (24, 23), (24, 24)}


def test_unknown_method():
    with pytest.raises(ChanattrError, match="unknown method"):
        saliency("magic", TinyNet(), textured(16), 0)


def test_saliency_refuses_an_option_the_method_does_not_take(tiny):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ChanattrError, match="integrated_gradients takes no option 'step'.*steps"):
        saliency("integrated_gradients", tiny, x, 0, step=4)  # a typo of steps: was silently dropped
    with pytest.raises(ChanattrError, match="gradient takes no option 'layer'"):
        saliency("gradient", tiny, x, 0, layer="conv")
    assert saliency("integrated_gradients", tiny, x, 0, steps=4).shape == (1, 16, 16)


def test_gradcam_equals_a_hand_computation(tiny):
    """Grad-CAM at features.3: ReLU(sum_c w_c A_c), w_c the spatial mean of dy/dA_c, upsampled
    bilinearly to the input -- computed here with plain autograd."""
    import torch.nn.functional as F

    from chanattr import capture

    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([1, 3])
    ours = saliency("gradcam", tiny, x, targets, layer="features.3")
    with capture(tiny, "features.3") as acts:
        y = tiny(x).gather(1, targets[:, None]).sum()
    a = acts["features.3"]
    (g,) = torch.autograd.grad(y, a)
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    hand = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)[:, 0].detach()
    assert ours.shape == (2, 16, 16) and float(hand.abs().max()) > 0
    assert torch.allclose(ours, hand, atol=1e-5)
