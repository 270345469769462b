"""Unit spaces beyond channels: hidden units, attention heads and tokens of transformers, with
planted ground truth; layouts; models and layers that return tuples, dicts, ModelOutputs."""

import pytest
import torch
from torch import nn

from chanattr import ChanattrError, UnitSpace, model_state, unit_extremal_perturbation
from chanattr.channel_rankings import rank_by_ablation, rank_by_taylor
from models_gt import DECOY_HEADS, DECOYS, JOINT, JOINT_HEADS, DictViT, PlantedViT, textured


@pytest.mark.parametrize("unit, joint, decoys, count", [
    ("hidden", JOINT, DECOYS, 16), ("tokens", JOINT, DECOYS, 16), ("heads", JOINT_HEADS, DECOY_HEADS, 8)])
def test_each_unit_space_finds_its_planted_joint_units(unit, joint, decoys, count):
    """Class 0 rests jointly on 4 units of the kind (saturated, redundant) beside decoys that
    add alone: gradient x activation and single-unit ablation rank the decoys first; the unit
    optimiser keeps 3 of the joint units (the best attainable set of 3), on both images."""
    model = PlantedViT(unit).eval()
    layer = "blocks.0.attn" if unit == "heads" else "blocks.0"
    x = textured(16, 2)
    before = model_state(model)
    space = UnitSpace(model, x, layer, unit=unit)
    assert space.num_units == count and space.layout == "ntc"
    for ranking in (rank_by_taylor(space, 0), rank_by_ablation(space, 0)):  # the easy answers fail
        assert set(ranking[:, :3].flatten().tolist()) == set(decoys)
    r = unit_extremal_perturbation(model, x, 0, layer, [3 / count], unit=unit, progress=False)
    for i in range(2):
        assert set(r.kept_units(i, 0)) < set(joint)
    assert r.binary_reward.min() > 7.5
    assert r.info["unit"] == unit and r.info["units"] == count and r.masks.shape == (2, 1, count)
    assert model_state(model) == before


def test_token_and_hidden_spaces_split_the_model_and_the_class_token_is_kept():
    model = PlantedViT("tokens").eval()
    x = textured(16, 1)
    tokens = UnitSpace(model, x, "blocks.0", unit="tokens")
    assert tokens.path == "split" and tokens.kind.prefix == 1
    assert tokens.info()["prefix_tokens"] == 1 and tokens.num_units == 16
    with_cls = UnitSpace(model, x, "blocks.0", unit="tokens", class_token=True)
    assert with_cls.num_units == 17
    # unit 0 is the first patch token: removing it changes token 1 of the sequence, not the class token
    keep = torch.ones(1, 16)
    keep[0, 0] = 0
    mixed = tokens._mix(tokens.activation, keep, torch.tensor([0]))
    assert torch.equal(mixed[0, 0], tokens.activation[0, 0]) and mixed[0, 1].abs().sum() == 0
    heads = UnitSpace(model, x, "blocks.0.attn", unit="heads")
    assert heads.path == "full" and heads.kind.site.name == "blocks.0.attn.proj" and heads.info()["head_dim"] == 2


def test_mean_baseline_averages_over_positions_per_unit_kind():
    model = PlantedViT("hidden").eval()
    x = textured(16, 1)
    hidden = UnitSpace(model, x, "blocks.0", unit="hidden", baseline="mean")
    a = hidden.activation
    assert torch.allclose(hidden.baseline, a.mean(1, keepdim=True))  # over the tokens, per hidden unit
    from models_gt import PlantedConvNet

    conv = UnitSpace(PlantedConvNet().eval(), textured(16, 1), "features.2", baseline="mean")
    assert torch.allclose(conv.baseline, conv.activation.mean((2, 3), keepdim=True))  # over the pixels


def test_units_that_do_not_fit_the_layer_are_refused_with_what_would_work():
    from models_gt import PlantedConvNet

    conv, x = PlantedConvNet().eval(), textured(16, 1)
    with pytest.raises(ChanattrError, match="not an attention module with heads"):
        UnitSpace(conv, x, "features.2", unit="heads")
    with pytest.raises(ChanattrError, match="unit 'hidden' needs .*use --unit channels, or give --layout"):
        UnitSpace(conv, x, "features.2", unit="hidden")
    with pytest.raises(ChanattrError, match="unit 'tokens' needs a token sequence"):
        UnitSpace(conv, x, "features.2", unit="tokens")
    with pytest.raises(ChanattrError, match="unknown unit 'neurons': use channels, hidden, heads, tokens"):
        UnitSpace(conv, x, "features.2", unit="neurons")
    vit = PlantedViT().eval()
    with pytest.raises(ChanattrError, match="returns tokens x hidden .*use --unit hidden"):
        UnitSpace(vit, x, "blocks.0")
    # an explicit layout overrides the detection (hidden on a channels-first map read as channels last)
    space = UnitSpace(conv, x, "features.2", unit="hidden", layout="nhwc")
    assert space.num_units == space.activation.shape[-1]
    with pytest.raises(ChanattrError, match="unknown layout 'nth'"):
        UnitSpace(conv, x, "features.2", layout="nth")


def test_rank3_output_of_an_unknown_model_asks_for_the_layout():
    class Seq(nn.Module):  # N x 5 x 4 from a module of no known type, in a model without tokens
        def __init__(self):
            super().__init__()
            self.body = nn.Identity()
            self.head = nn.Linear(20, 2)

        def forward(self, x):
            return self.head(self.body(x.view(x.shape[0], 5, -1)[..., :4]).flatten(1))

    class Unknown(nn.Module):
        def forward(self, x):
            return x

    m = Seq().eval()
    m.body = Unknown()
    x = torch.randn(2, 1, 4, 5)
    with pytest.raises(ChanattrError, match="cannot tell how layer 'body'.*--layout nchw"):
        UnitSpace(m, x, "body")
    assert UnitSpace(m, x, "body", layout="nchw").num_units == 5
    assert UnitSpace(m, x, "body", unit="hidden", layout="ntc").num_units == 4


def test_dict_output_models_and_tuple_output_layers():
    """The logits come from the dict's 'logits'; a layer that returns a tuple is read at its
    first tensor (or NAME:0); the same joint units are found as on the plain model."""
    model, x = DictViT().eval(), textured(16, 2)
    before = model_state(model)
    for layer in ("block", "block:0"):
        r = unit_extremal_perturbation(model, x, 0, layer, [3 / 16], unit="hidden", progress=False)
        assert set(r.kept_units(0, 0)) < set(JOINT) and r.binary_reward.min() > 7.5
    r = unit_extremal_perturbation(model, x, 0, "block", [3 / 16], unit="hidden", output="logits", progress=False)
    assert set(r.kept_units(1, 0)) < set(JOINT)
    assert model_state(model) == before
    with pytest.raises(ChanattrError, match="no element 'scores': use one of hidden_states, logits"):
        unit_extremal_perturbation(model, x, 0, "block", [0.2], unit="hidden", output="scores", progress=False)
    with pytest.raises(ChanattrError, match="no element 3: use one of 0, 1"):
        unit_extremal_perturbation(model, x, 0, "block:3", [0.2], unit="hidden", progress=False)


def test_any_output_for_pixels_prunegrad_and_saliency():
    """The pixel method, PruneGrad and the saliency baselines explain the same logits whether
    the model returns them bare, in a dict, or in a tuple (picked by index or a function)."""
    from chanattr import extremal_perturbation, prunegrad, saliency
    from models_gt import random_conv

    torch.manual_seed(0)
    plain = random_conv().eval()

    class AsDict(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = plain

        def forward(self, x):
            return {"features": x.mean((2, 3)), "logits": self.net(x)}

    class AsTuple(AsDict):
        def forward(self, x):
            return x.mean((2, 3)), self.net(x)

    x = textured(16, 1)
    ref = saliency("gradient", plain, x, 1)
    assert torch.allclose(saliency("gradient", AsDict(), x, 1), ref)
    assert torch.allclose(saliency("gradient", AsTuple(), x, 1, output=1), ref)
    assert torch.allclose(saliency("gradient", AsTuple(), x, 1, output=lambda out: out[1]), ref)
    assert torch.allclose(prunegrad(AsDict(), x, 1).saliency, prunegrad(plain, x, 1).saliency)
    a = extremal_perturbation(plain, x, 1, [0.1], preset="paper", iterations=3, progress=False)
    b = extremal_perturbation(AsDict(), x, 1, [0.1], preset="paper", iterations=3, progress=False)
    assert torch.equal(a.masks, b.masks)
    with pytest.raises(ChanattrError, match="returns tuple|output"):
        saliency("gradient", AsTuple(), x, 1, output=5)


def test_gradcam_on_a_transformer_reshapes_patch_tokens_to_their_grid():
    """A ViT whose hidden unit 0 is each patch's brightness and whose class 0 is the sum of unit
    0 over the patch tokens: Grad-CAM (at the token layer, class token dropped) must light
    exactly the bright patches, in grid order (token t at row t // 4, column t % 4)."""
    from chanattr import saliency

    class BrightViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 4, 4, stride=4)
            self.cls_token = nn.Parameter(torch.full((1, 1, 4), 5.0))  # large: must not leak into the map
            self.blocks = nn.Sequential(nn.Identity(), nn.Identity())
            with torch.no_grad():
                self.patch_embed.weight.zero_()
                self.patch_embed.weight[0].fill_(1 / 48)
                self.patch_embed.bias.zero_()

        def forward(self, x):
            t = self.patch_embed(x).flatten(2).transpose(1, 2)
            t = self.blocks(torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1))
            return torch.stack([t[:, 1:, 0].sum(1), t[:, 0, 0]], 1)

    bright = [2, 9, 15]
    x = torch.zeros(1, 3, 16, 16)
    for t in bright:
        x[0, :, 4 * (t // 4): 4 * (t // 4) + 4, 4 * (t % 4): 4 * (t % 4) + 4] = 1.0
    cam = saliency("gradcam", BrightViT().eval(), x, 0)[0]
    per_patch = cam.view(4, 4, 4, 4).mean((1, 3)).flatten()  # the mean over each patch, token order
    assert set(per_patch.argsort(descending=True)[:3].tolist()) == set(bright)
    others = [t for t in range(16) if t not in bright]
    assert per_patch[others].max() < 0.5 * per_patch[bright].min()


def test_prunegrad_on_token_layers_prunes_hidden_units():
    """At a token layer, PruneGrad's channels are the hidden units (the last dimension), kept or
    pruned over every token; with GELU modules found by type in a timm ViT, every MLP is pruned."""
    from chanattr import prunegrad

    model, x = PlantedViT("hidden").eval(), textured(16, 2)
    r = prunegrad(model, x, 0, keep=0.25, granularity="channel", layers=["blocks.0"])
    kept = r.kept["blocks.0"]
    assert kept.shape == (2, 16) and set(kept.unique().tolist()) <= {0.0, 1.0}
    assert r.kept_fraction["blocks.0"].tolist() == [0.25, 0.25]  # 4 of 16 hidden units, whole
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3, depth=2).eval()
    r = prunegrad(vit, torch.randn(1, 3, 32, 32), 1, keep=0.3)
    assert r.info["layers"] == ["blocks.0.mlp.act", "blocks.1.mlp.act"] and r.kept["blocks.1.mlp.act"].shape == (1, 768)


def test_pool_is_the_transpose_of_expand_for_every_kind():
    """<expand(k), v> = <k, pool(v)> for random k and v: each kind's pooling (used by the
    activation-norm ranking) sums exactly what its mask covers."""
    cases = [(PlantedViT("hidden"), "blocks.0", "hidden", {}), (PlantedViT("hidden"), "blocks.0", "tokens", {}),
             (PlantedViT("hidden"), "blocks.0", "tokens", {"class_token": True}),
             (PlantedViT("heads"), "blocks.0.attn", "heads", {})]
    from models_gt import PlantedConvNet

    cases.append((PlantedConvNet(), "features.2", "channels", {}))
    for model, layer, unit, options in cases:
        space = UnitSpace(model.eval(), textured(16, 2), layer, unit=unit, **options)
        k = torch.rand(2, space.num_units)
        v = torch.randn_like(space.activation)
        lhs = (space.kind.expand(k) * v).flatten(1).sum(1)
        lhs = lhs - (space.kind.expand(torch.zeros_like(k)) * v).flatten(1).sum(1)  # tokens: prefix always 1
        assert torch.allclose(lhs, (k * space.kind.pool(v)).sum(1), atol=1e-4), unit


def test_a_function_of_the_output_as_the_target():
    """target=fn(output) -> N scores: a segmentation model's class-1 score averaged over a box.
    The class-1 map is each pixel's fine detail, everywhere, so only the target function ties
    the explanation to the box: the preserve mask at the box's area must find the box. For a
    class index written as a function the methods give what the index gives."""
    from chanattr import extremal_perturbation, prunegrad
    from models_gt import PlantedConvNet, box_mask

    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
            self.detail = nn.Conv2d(3, 1, 3, padding=1, bias=False)
            self.detail.weight.data = lap.expand(1, 3, 3, 3).clone() / 3

        def forward(self, x):
            d = self.detail(x) ** 2
            return {"masks": torch.cat([torch.ones_like(d), d], 1)}  # N x 2 x H x W

    box = (4, 14, 10, 10)
    inside = box_mask(32, box)

    def class1_in_box(out):
        return out["masks"][:, 1][:, inside].mean(1)

    r = extremal_perturbation(Segmenter().eval(), textured(32, 1), class1_in_box, [100 / 32**2], progress=False)
    found = r.binary_masks()[0, 0] > 0.5
    iou = (found & inside).sum() / (found | inside).sum()
    assert iou > 0.5, float(iou)
    # a class index written as a function: the same results as the index
    model, x = PlantedConvNet().eval(), textured(16, 1)
    a = unit_extremal_perturbation(model, x, 0, "features.2", [0.1875], iterations=0, progress=False)
    b = unit_extremal_perturbation(model, x, lambda out: out[:, 0], "features.2", [0.1875], iterations=0,
                                   progress=False)
    assert torch.equal(a.masks, b.masks)
    assert torch.allclose(prunegrad(model, x, lambda out: out[:, 0]).saliency, prunegrad(model, x, 0).saliency)


def test_a_unit_as_the_target_finds_its_evidence():
    """unit_target_model: what drives channel 0 of ``energy`` (the detail inside a box), while the
    class rests on the whole image: the preserve mask at the box's area finds the box."""
    from chanattr import extremal_perturbation
    from chanattr.targets import unit_target_model
    from models_gt import UNIT_BOX, UnitBoxNet, box_mask

    net = UnitBoxNet().eval()
    before = model_state(net)
    x = textured(32, 1)
    r = extremal_perturbation(unit_target_model(net, "energy", 0), x, 0, [100 / 32**2], progress=False)
    found, inside = r.binary_masks()[0, 0] > 0.5, box_mask(32, UNIT_BOX)
    assert (found & inside).sum() / (found | inside).sum() > 0.5
    assert model_state(net) == before
    with pytest.raises(ChanattrError, match="has channels 0..1; got 5"):
        unit_target_model(net, "energy", 5)(x)


def test_prunegrad_prunes_whole_heads():
    """granularity="heads": every attention module's heads are scored by their summed Taylor
    contributions and whole heads kept or zeroed; on the planted ViT (class 0 on heads 1, 4, 5, 6
    jointly, decoys 0, 3, 7) keeping half the heads keeps the network's prediction."""
    from chanattr import prunegrad

    model, x = PlantedViT("heads").eval(), textured(16, 2)
    r = prunegrad(model, x, 0, keep=0.5, granularity="heads", criterion="signed")
    kept = r.kept["blocks.0.attn"]
    assert kept.shape == (2, 8) and r.kept_fraction["blocks.0.attn"].tolist() == [0.5, 0.5]
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    # the pruned network is the network with exactly those heads zeroed
    space = UnitSpace(model, x, "blocks.0.attn", unit="heads")
    want = space.target_scores(kept, torch.arange(2), torch.tensor([0, 0]))
    assert torch.allclose(r.pruned_logit, want, atol=1e-5)
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                              mlp_dim=64, num_classes=5).eval()
    r = prunegrad(tv, torch.randn(1, 3, 32, 32), 1, keep=0.5, granularity="heads")
    assert list(r.kept) == ["encoder.layers.encoder_layer_0.self_attention",
                            "encoder.layers.encoder_layer_1.self_attention"]
    assert r.saliency.shape == (1, 32, 32)
