"""Random-weight timm and torchvision vision transformers, Swin and ConvNeXt (tiny configs):
every method runs on them and returns the right shapes; layouts and unit counts come out right."""

import pytest
import timm
import torch
import torchvision

from chanattr import UnitSpace, extremal_perturbation, model_state, prunegrad, saliency, unit_extremal_perturbation
from chanattr.models import Preprocessing
from inversion import InversionSettings, invert


NAMES = ["timm vit", "timm swin", "timm convnext", "torchvision vit", "torchvision swin"]


def tiny_model(name: str):
    """(model, [(layer, unit, layout, count)]) with random weights."""
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                           num_heads=4, num_classes=5)
    swin = timm.models.swin_transformer.SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16,
                                                        depths=(1, 1), num_heads=(2, 4), num_classes=5)
    convnext = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5)
    tv_vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                  hidden_dim=32, mlp_dim=64, num_classes=5)
    tv_swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                                 window_size=[4, 4], num_classes=5)
    return {name: (model, sites) for name, model, sites in [
        ("timm vit", vit, [("blocks.1", "hidden", "ntc", 32), ("blocks.1", "tokens", "ntc", 16),
                           ("blocks.1.attn", "heads", "ntc", 4), ("blocks.0.mlp.act", "hidden", "ntc", 128)]),
        ("timm swin", swin, [("layers.1", "hidden", "nhwc", 32), ("layers.0.blocks.0.attn", "heads", "ntc", 2)]),
        ("timm convnext", convnext, [("stages.1", "channels", "nchw", 16)]),
        ("torchvision vit", tv_vit, [("encoder.layers.encoder_layer_1", "hidden", "ntc", 32),
                                     ("encoder.layers.encoder_layer_1", "tokens", "ntc", 16),
                                     ("encoder.layers.encoder_layer_1.self_attention", "heads", "ntc", 2)]),
        ("torchvision swin", tv_swin, [("features.3", "hidden", "nhwc", 32)]),
    ]}[name]


@pytest.mark.parametrize("name", NAMES)
def test_every_method_runs_with_the_right_shapes(name):
    model, sites = tiny_model(name)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    before = model_state(model)
    from chanattr import Schedule

    quick = Schedule(start="input", iterations=2, harden=0.0)
    for layer, unit, layout, count in sites:
        space = UnitSpace(model, x, layer, unit=unit)
        assert (space.layout, space.num_units) == (layout, count), (name, layer, unit)
        r = unit_extremal_perturbation(model, x, [0, 1], layer, [0.25, 0.5], unit=unit, schedule=quick, space=space,
                                       progress=False)
        assert r.masks.shape == (2, 2, count)
    px = extremal_perturbation(model, x, [0, 1], [0.2], preset="paper", iterations=2, progress=False)
    assert px.masks.shape == (2, 1, 32, 32)
    assert saliency("gradcam", model, x, [0, 1]).shape == (2, 32, 32)
    pg = prunegrad(model, x, [0, 1], keep=0.3)
    assert pg.saliency.shape == (2, 32, 32) and pg.info["layers"]
    layer, unit, _, count = sites[0]
    inv = invert(model, x[:1], layer, list(range(count // 4)), Preprocessing(32), unit=unit,
                 settings=InversionSettings(param="pixel", iterations=2), progress=False)
    assert inv.images.shape == (1, 3, 32, 32)
    assert model_state(model) == before


def test_swin_heads_are_masked_in_every_window_of_their_image():
    """Windowed attention folds each image's windows into the batch (4 windows of 4 x 4 tokens
    here); a head's mask value applies to that head in all of its image's windows, and only there."""
    from chanattr import UnitSpace, edit

    model, _ = tiny_model("timm swin")
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    space = UnitSpace(model, x, "layers.0.blocks.0.attn", unit="heads")
    assert space.num_units == 2 and space.fold == 4 and space.info()["site"] == "layers.0.blocks.0.attn.proj"
    idx = torch.arange(2)
    with torch.no_grad():
        assert torch.allclose(space.logits(torch.ones(2, 2), idx), model(x), atol=1e-5)
        keep = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # image 1 loses head 1 (features 8-15)

        def drop(a):
            a = a.clone()
            a[4:, :, 8:] = 0  # rows 4-7: image 1's windows
            return a

        with edit(model, {"layers.0.blocks.0.attn.proj": drop}, port="input"):
            expected = model(x)
        got = space.logits(keep, idx)
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got[1], model(x)[1], atol=1e-4)
    assert torch.allclose(got[0], model(x)[0], atol=1e-5)


def test_torchvision_swin_heads_are_refused_with_a_reason():
    from chanattr import ChanattrError, UnitSpace

    model, _ = tiny_model("torchvision swin")
    with pytest.raises(ChanattrError, match="never runs as a module"):
        UnitSpace(model.eval(), torch.randn(1, 3, 32, 32), "features.1.0.attn", unit="heads")
