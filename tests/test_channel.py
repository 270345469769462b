import pytest
import torch

from chanattr import ChanattrError, LayerNotFoundError, model_state
from chanattr.units.space import ChannelSpace, channel_curve, channel_extremal_perturbation, class_channels
from chanattr.split import split_at

from models_gt import PLANTED, PlantedConvNet, PlantedMLP, PlantedResNet, textured

AREA = len(PLANTED) / 16
CASES = [(PlantedConvNet, "features.2"), (PlantedResNet, "block.conv2")]


@pytest.mark.parametrize("make, layer", CASES)
@pytest.mark.parametrize("variant", ["preserve", "delete"])
def test_planted_channels_are_found(make, layer, variant):
    model = make().eval()
    before = model_state(model)
    x = textured(16, 2)
    r = channel_extremal_perturbation(model, x, 0, layer, [AREA], variant=variant, iterations=150, progress=False)
    assert model_state(model) == before
    assert r.masks.shape == (2, 1, 16) and r.info["path"] == "split"
    for i in range(2):
        assert sorted(r.kept_channels(i, 0)) == PLANTED
        assert r.ranking()[i, :3].sort().values.tolist() == PLANTED


def test_split_and_full_paths_agree():
    model = PlantedResNet().eval()
    x = textured(16, 2, seed=1)
    kw = dict(iterations=30, progress=False)
    split = channel_extremal_perturbation(model, x, [0, 1], "block.conv2", [0.25, 0.5], **kw)
    full = channel_extremal_perturbation(model, x, [0, 1], "block.conv2", [0.25, 0.5], split="full", **kw)
    assert split.info["path"] == "split" and full.info["path"] == "full"
    assert torch.allclose(split.masks, full.masks, atol=1e-4)


def test_split_carries_the_skip_connection():
    model = PlantedResNet().eval()
    x = textured(16, 3)
    split, reason = split_at(model, "block.conv2", x)
    assert split is not None, reason
    activation, others = split.prefix(x)
    assert len(others) == 1 and others[0].shape == (3, 16, 16, 16)  # the block's input, for the skip
    assert torch.allclose(split.suffix(activation, others), model(x), atol=1e-5)


def test_unsplittable_model_falls_back_to_full_path():
    class Branchy(PlantedConvNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 1.0
            return super().forward(x)

    model = Branchy().eval()
    r = channel_extremal_perturbation(model, textured(16), 0, "features.2", [AREA], iterations=100, progress=False)
    assert r.info["path"] == "full" and "torch.fx" in r.info["split_reason"]
    assert sorted(r.kept_channels()) == PLANTED


def test_vector_layer_and_mean_baseline():
    model = PlantedMLP().eval()
    x = textured(8, 2)
    r = channel_extremal_perturbation(model, x, 0, "hidden", [AREA], iterations=150, progress=False)
    assert sorted(r.kept_channels()) == PLANTED
    with pytest.raises(ChanattrError, match="baseline 'mean' needs positions"):
        channel_extremal_perturbation(model, x, 0, "hidden", [AREA], baseline="mean", iterations=2, progress=False)


def test_baselines_mix_as_documented():
    model = PlantedConvNet().eval()
    x = textured(16, 2)
    space = ChannelSpace(model, x, "features.2", baseline="mean")
    a = space.activation
    keep = torch.zeros(2, 16)
    keep[:, 0] = 1
    mixed = space._mix(a, keep, torch.arange(2))
    assert torch.allclose(mixed[:, 0], a[:, 0])
    assert torch.allclose(mixed[:, 1], a[:, 1].mean((1, 2), keepdim=True).expand_as(a[:, 1]))
    dataset_mean = torch.full((16,), 0.5)
    space = ChannelSpace(model, x, "features.2", baseline=dataset_mean[:, None, None])
    assert torch.allclose(space._mix(a, keep, torch.arange(2))[:, 1], torch.full_like(a[:, 1], 0.5))
    with pytest.raises(ChanattrError, match="does not fit"):
        ChannelSpace(model, x, "features.2", baseline=torch.zeros(5))


def test_channel_curve_ends_and_order():
    model = PlantedConvNet().eval()
    x = textured(16, 2)
    space = ChannelSpace(model, x, "features.2")
    good = torch.tensor(PLANTED + [c for c in range(16) if c not in PLANTED])
    curve = channel_curve(space, good, 0, ks=[0, 3, 16])
    with torch.no_grad():
        full = model(x)[:, 0]
    assert torch.allclose(curve.kept[:, 2], full, atol=1e-5) and torch.allclose(curve.full, full, atol=1e-5)
    assert torch.allclose(curve.removed[:, 0], full, atol=1e-5)
    assert torch.allclose(curve.kept[:, 0], curve.baseline, atol=1e-5)
    bad = good.flip(0)
    worse = channel_curve(space, bad, 0, ks=[3])
    assert (curve.kept[:, 1] > worse.kept[:, 0]).all()
    assert (curve.removed[:, 1] < worse.removed[:, 0]).all()


def test_class_channels_mean_and_spread():
    masks = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 1.0]])
    out = class_channels(masks, [7, 7, 2])
    assert out[7]["count"] == 2 and out[7]["mean"].tolist() == [0.5, 0.0] and out[7]["std"].tolist() == [0.5, 0.0]
    assert out[2]["mean"].tolist() == [0.5, 1.0]


def test_bad_layer_and_outputs():
    model = PlantedConvNet().eval()
    before = model_state(model)
    with pytest.raises(LayerNotFoundError, match="features.2"):
        channel_extremal_perturbation(model, textured(16), 0, "features.22", [0.1], progress=False)
    with pytest.raises(ChanattrError, match="outside"):
        channel_extremal_perturbation(model, textured(16), 0, "features.2", [1.5], progress=False)
    assert model_state(model) == before


def test_channels_that_matter_only_jointly_are_found_where_taylor_and_ablation_fail():
    """A planted set that defeats the easy answers: gradient x activation and single-channel
    ablation both put the decoys first; the channel optimiser's kept set is 3 of the joint
    channels, and its reward is the best attainable (about 7.95, against 3 for the decoys)."""
    from chanattr.channel_rankings import rank_by_ablation, rank_by_taylor
    from models_gt import DECOYS, JOINT, JointChannelNet

    model = JointChannelNet().eval()
    x = textured(16, 2)
    space = ChannelSpace(model, x, "features.1")
    for ranking in (rank_by_taylor(space, 0), rank_by_ablation(space, 0)):
        assert set(ranking[:, :3].flatten().tolist()) == set(DECOYS)
    r = channel_extremal_perturbation(model, x, 0, "features.1", [3 / 16], progress=False)
    for i in range(2):
        assert set(r.kept_channels(i, 0)) < set(JOINT)
    assert r.binary_reward.min() > 7.5
    # the search alone already finds it (iterations=0: no gradient step)
    alone = channel_extremal_perturbation(model, x, 0, "features.1", [3 / 16], iterations=0, progress=False)
    assert alone.iterations == 0 and set(alone.kept_channels(0, 0)) < set(JOINT)
    # the previous default (the whole activation, then Adam under a growing penalty) does not
    from dataclasses import replace
    from chanattr.units.space import CHANNEL_SCHEDULE

    old = replace(CHANNEL_SCHEDULE, start="input", harden=1.0)
    r_old = channel_extremal_perturbation(model, x, 0, "features.1", [3 / 16], schedule=old, progress=False)
    assert r_old.binary_reward.max() < 4


def test_channel_search_delete_finds_the_joint_set():
    """delete: removing 2 of the joint channels at once brings class 0 down (s = 2 < 2.5)
    by far more than removing 2 decoys (-2): the greedy removal path must pass through them."""
    from models_gt import JOINT, JointChannelNet

    model = JointChannelNet().eval()
    r = channel_extremal_perturbation(model, textured(16), 0, "features.1", [2 / 16], variant="delete",
                                      iterations=0, progress=False)
    assert set(r.kept_channels(0, 0)) < set(JOINT)


def test_a_given_space_decides_baseline_and_split_and_must_fit_the_input():
    """With ``space=``, the space's baseline is the one used and recorded (it was recorded as
    'zero' whatever the space had); a different baseline, split, layer or input is refused."""
    model = PlantedConvNet().eval()
    x = textured(16, 2)
    space = ChannelSpace(model, x, "features.2", baseline="mean")
    kw = dict(iterations=2, progress=False, space=space)
    r = channel_extremal_perturbation(model, x, 0, "features.2", [AREA], **kw)
    assert r.info["baseline"] == "mean" and r.info["path"] == space.path
    assert channel_extremal_perturbation(model, x, 0, "features.2", [AREA], baseline="mean", **kw).info[
        "baseline"] == "mean"
    with pytest.raises(ChanattrError, match="baseline 'zero' differs"):
        channel_extremal_perturbation(model, x, 0, "features.2", [AREA], baseline="zero", **kw)
    with pytest.raises(ChanattrError, match="split 'full' differs"):
        channel_extremal_perturbation(model, x, 0, "features.2", [AREA], split="full", **kw)
    with pytest.raises(ChanattrError, match="not the input the space was built on"):
        channel_extremal_perturbation(model, textured(16, 2, seed=9), 0, "features.2", [AREA], **kw)
    with pytest.raises(ChanattrError, match="built for layer"):
        channel_extremal_perturbation(model, x, 0, "features.0", [AREA], **kw)
