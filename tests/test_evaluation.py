"""Evaluation metrics on cases with known answers, and the COCO reader on the real files."""

from __future__ import annotations

import copy


import pytest
import torch

from chanattr import ChanattrError
from chanattr.coco import COCO_TO_IMAGENET, default_coco_root, box_mask, imagenet_target, read_coco, segment_mask
from chanattr.images import crop_geometry
from chanattr.evaluation import (
    PointingGame,
    cascading_randomisation,
    default_stages,
    insertion_deletion,
    map_similarity,
    pointing_hit,
    remove_top,
    roar,
)
from models_gt import RegionNet, textured
from models_gt import box_mask as rect
from conftest import TinyNet

COCO = default_coco_root()


def peaked(size: int, row: int, col: int) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[row, col] = 1.0
    return m


# -- pointing game --------------------------------------------------------------------------

def test_pointing_hit_inside_near_and_far():
    gt = rect(100, (40, 40, 20, 20))
    assert pointing_hit(peaked(100, 50, 50), gt)  # inside the box
    assert pointing_hit(peaked(100, 50, 73), gt)  # 14 px right of the box edge (col 59)
    assert not pointing_hit(peaked(100, 50, 76), gt)  # 17 px away
    assert not pointing_hit(peaked(100, 99, 99), gt)  # far corner
    assert pointing_hit(peaked(100, 99, 99), gt, tolerance=60)


def test_pointing_game_is_a_mean_over_classes():
    game = PointingGame()
    gt = rect(64, (0, 0, 10, 10))
    game.add("cat", peaked(64, 5, 5), gt)  # 1 / 1
    for _ in range(3):
        game.add("dog", peaked(64, 60, 60), gt)  # 0 / 3
    assert game.per_class() == {"cat": 1.0, "dog": 0.0}
    assert game.accuracy() == pytest.approx(0.5)  # not 1/4, the pooled rate
    lo, hi = game.interval(samples=300)
    assert 0.0 <= lo <= game.accuracy() <= hi <= 1.0


def test_pointing_bad_inputs():
    with pytest.raises(ChanattrError, match="leave this pair out"):
        pointing_hit(peaked(8, 1, 1), torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ChanattrError, match="differ in size"):
        pointing_hit(peaked(8, 1, 1), torch.ones(9, 9, dtype=torch.bool))
    with pytest.raises(ChanattrError, match="no pointing-game results"):
        PointingGame().accuracy()


# -- insertion / deletion ---------------------------------------------------------------------

def test_insertion_deletion_prefers_the_true_region():
    box = (6, 14, 20, 20)
    model = RegionNet(48, box).eval()
    x = textured(48)
    good = rect(48, box).float()[None]
    bad = 1 - good
    ins_good, curve = insertion_deletion(model, x, good, 0, mode="insertion", steps=16)
    ins_bad, _ = insertion_deletion(model, x, bad, 0, mode="insertion", steps=16)
    del_good, _ = insertion_deletion(model, x, good, 0, mode="deletion", steps=16)
    del_bad, _ = insertion_deletion(model, x, bad, 0, mode="deletion", steps=16)
    assert ins_good.item() > ins_bad.item() + 0.2
    assert del_good.item() < del_bad.item() - 0.2
    with torch.no_grad():
        p_full = model(x).softmax(1)[0, 0]
    assert curve[0, -1].item() == pytest.approx(p_full.item(), abs=1e-5)  # all inserted = the image
    assert 0.0 <= ins_good.item() <= 1.0


def test_insertion_batched_equals_one_at_a_time():
    model = TinyNet().eval()
    x = textured(16, 3, seed=1)
    s = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    auc, _ = insertion_deletion(model, x, s, [0, 1, 2], steps=8)
    for i in range(3):
        one, _ = insertion_deletion(model, x[i], s[i], i, steps=8)
        assert one.item() == pytest.approx(auc[i].item(), abs=1e-6)
    with pytest.raises(ChanattrError, match="mode"):
        insertion_deletion(model, x, s, 0, mode="sideways")


# -- sanity check ---------------------------------------------------------------------------

def test_map_similarity_known_values():
    a = torch.rand(32, 32, generator=torch.Generator().manual_seed(0))
    assert map_similarity(a, a) == pytest.approx((1.0, 1.0))
    assert map_similarity(a, 3 * a) == pytest.approx((1.0, 1.0))  # scale-free
    b = torch.rand(32, 32, generator=torch.Generator().manual_seed(1))
    ssim, rho = map_similarity(a, b)
    assert ssim < 0.2 and abs(rho) < 0.2


def _gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    model(x)[0, target].backward()
    return x.grad.abs().amax(1)


def test_cascading_randomisation_leaves_model_and_separates_methods():
    torch.manual_seed(0)
    model = TinyNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = textured(16)
    assert default_stages(model) == ["fc", "features.2", "features.0"]
    orig, stages = cascading_randomisation(model, x, 1, _gradient)
    assert [s.stage for s in stages] == ["fc", "features.2", "features.0"]
    assert stages[-1].spearman < 0.5  # the gradient depends on the weights
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(p.grad is not None for p in model.parameters())
    # an "attribution" that ignores the model passes the check perfectly (and is useless)
    _, edge = cascading_randomisation(model, x, 1, lambda m, x, t: x.abs().sum(1))
    assert all(s.ssim == pytest.approx(1.0) and s.spearman == pytest.approx(1.0) for s in edge)
    with pytest.raises(ChanattrError, match="unknown stage"):
        cascading_randomisation(model, x, 1, _gradient, stages=["nope"])


def test_reset_randomisation_is_pytorchs_default_init_and_seeded():
    from torch import nn

    from chanattr.evaluation import randomise_

    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.mul_(100.0)  # a "trained" scale that scaled re-init keeps and reset forgets
    a, b, c = (copy.deepcopy(layer) for _ in range(3))
    randomise_(a, torch.Generator().manual_seed(1), "reset")
    randomise_(b, torch.Generator().manual_seed(1), "reset")
    randomise_(c, torch.Generator().manual_seed(1), "scaled")
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, layer.weight)
    assert float(a.weight.abs().max()) <= 1 / 64**0.5 + 1e-6  # kaiming-uniform's bound for fan-in 64
    assert float(c.weight.std()) == pytest.approx(float(layer.weight.std()), rel=0.1)
    with pytest.raises(ChanattrError, match="unknown init"):
        randomise_(a, torch.Generator(), "other")


# -- ROAR ------------------------------------------------------------------------------------

def test_remove_top_removes_exactly_the_top_pixels():
    x = torch.ones(2, 3, 10, 10)
    s = torch.arange(200.0).view(2, 10, 10)
    out = remove_top(x, s, 0.3, fill=torch.tensor([0.0, 0.5, -1.0]))
    removed = out[:, 0] == 0
    assert removed.sum((1, 2)).tolist() == [30, 30]
    assert removed[:, 7:].all() and not removed[:, :7].any()  # the 30 largest values: rows 7-9
    assert out[:, 2][removed].eq(-1).all()
    seen = []
    acc = roar(lambda a, b: seen.append(float((a == 0).float().mean())) or 1.0, x, s, x, s, fractions=(0.1, 0.5))
    assert acc == {0.1: 1.0, 0.5: 1.0}
    assert seen == pytest.approx([0.1, 0.5])
    with pytest.raises(ChanattrError):
        remove_top(x, s, 1.5)


# -- COCO reader on the real files ---------------------------------------------------------------

@pytest.fixture(scope="module")
def coco():
    if not COCO.is_dir():
        pytest.skip(f"{COCO} is not on this machine")
    return read_coco(COCO)


def test_coco_reader_known_image(coco):
    assert len(coco) == 128
    im = coco["000000000009"]
    assert im.size == (640, 480)
    assert len(im.objects) == 8
    first = im.objects[0]
    assert first.name == "bowl" and first.class_id == 45
    # YOLO line "45 0.479492 0.688771 0.955609 0.5955" on 640 x 480
    assert first.box == pytest.approx((0.479492 * 640 - 0.955609 * 320, 0.688771 * 480 - 0.5955 * 240,
                                       0.479492 * 640 + 0.955609 * 320, 0.688771 * 480 + 0.5955 * 240))
    assert im.classes() == ["bowl", "broccoli", "orange"]
    assert len(coco.pairs()) == 232


def test_coco_masks_in_the_model_frame(coco):
    im = coco["000000000009"]
    # 640 x 480 -> 299 x 224 (shorter side to 224), then the centre square from x = 37
    assert crop_geometry(im.size, 224) == (299, 224, 37, 0)
    boxes = box_mask(im, "orange", 224)
    seg = segment_mask(im, "orange", coco.mask_classes, 224)
    assert boxes.shape == seg.shape == (224, 224)
    assert 0 < seg.sum() <= boxes.sum()  # the object's pixels lie inside its boxes (nearly)
    assert (seg & ~boxes).sum() < 0.05 * seg.sum()


def test_imagenet_target_stays_within_the_set():
    logits = torch.zeros(1000)
    logits[281] = 5.0  # tabby: a cat
    logits[200] = 9.0  # a dog, more probable
    assert imagenet_target(logits, "cat") == 281
    assert imagenet_target(logits, "dog") == 200
    assert all(0 <= i < 1000 for ids in COCO_TO_IMAGENET.values() for i in ids)


def test_coco_root_is_only_the_documented_search(tmp_path, monkeypatch):
    """No machine-specific path: with nothing beside the checkout or the working directory and no
    $CHANATTR_COCO, the answer is the place beside the checkout (which then does not exist)."""
    import chanattr.coco as coco

    monkeypatch.delenv("CHANATTR_COCO", raising=False)
    monkeypatch.setattr(coco, "__file__", str(tmp_path / "repo" / "chanattr" / "coco.py"))
    monkeypatch.chdir(tmp_path / "repo" if (tmp_path / "repo").mkdir() is None else tmp_path)
    assert coco.default_coco_root() == tmp_path / "shared" / "data" / "coco128"
    monkeypatch.setenv("CHANATTR_COCO", str(tmp_path))
    (tmp_path / "images").mkdir()
    assert coco.default_coco_root() == tmp_path
