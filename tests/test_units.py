"""Unit spaces beyond channels: hidden units, attention heads and tokens of transformers, with
planted ground truth; layouts; models and layers that return tuples, dicts, ModelOutputs."""

import pytest
import torch
from torch import nn

from chanattr import ChanattrError, UnitSpace, model_state, unit_extremal_perturbation
from chanattr.channel_rankings import rank_by_ablation, rank_by_taylor
from models_gt import DECOY_HEADS, DECOYS, JOINT, JOINT_HEADS, PlantedViT, textured


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


class DictModel(nn.Module):
    """A Hugging Face-like model: a block that returns a tuple, a model that returns a dict."""

    def __init__(self):
        super().__init__()
        self.inner = PlantedViT("hidden")
        self.block = TupleBlock(self.inner.blocks[0])

    def forward(self, x):
        inner = self.inner
        t = inner.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([inner.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + inner.pos_embed
        out = self.block(t)[0][:, 1:]
        s = out.mean(1)
        y0 = 8 * torch.sigmoid(10 * (s[:, JOINT].sum(1) - 2.5)) + s[:, DECOYS].sum(1)
        return {"hidden_states": out, "logits": torch.stack([y0, torch.ones_like(y0)], 1)}


class TupleBlock(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x), None


def test_dict_output_models_and_tuple_output_layers():
    """The logits come from the dict's 'logits'; a layer that returns a tuple is read at its
    first tensor (or NAME:0); the same joint units are found as on the plain model."""
    model, x = DictModel().eval(), textured(16, 2)
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
