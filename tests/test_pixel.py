import pytest
import torch

from chanattr import ChanattrError, model_state
from chanattr.evaluation import area_curve, extremal_score, top_fraction
from chanattr.extremal import Schedule, area_loss, area_reference, reward
from chanattr.perturbations import BlurPyramid, gaussian_blur
from chanattr.pixel import extremal_perturbation
from chanattr.smooth_mask import SmoothMask

from models_gt import RegionNet, box_mask, textured

SIZE = 48
# top, left, height, width: 400 px = 17 % of the image; centred left to right, so that the
# model responds to the same region in the mirrored input (the optimiser mirrors every other step)
BOX = (6, 14, 20, 20)
AREA = 400 / SIZE**2


@pytest.fixture(scope="module")
def region():
    torch.manual_seed(0)
    return RegionNet(SIZE, BOX).eval()


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def top_pixels(mask: torch.Tensor, area: float) -> torch.Tensor:
    return top_fraction(mask[None], torch.tensor([area]))[0].bool()


def test_reward_simple_and_contrastive():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    t = torch.tensor([1, 0])
    assert reward(logits, t, "simple").tolist() == [3.0, 5.0]
    assert reward(logits, t, "contrastive").tolist() == [1.0, 5.0]


def test_area_reference_and_loss():
    ref = area_reference(torch.tensor([0.25, 0.5]), 8)
    assert ref.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]
    perfect = torch.tensor([[0, 1, 0, 0, 0, 0, 0, 1.0]])
    assert area_loss(perfect, ref[:1]).item() == 0
    distinct = torch.linspace(0.3, 1.0, 8)[None]  # sorted already: the two largest should be 1
    expected = ((distinct - ref[:1]) ** 2).mean()
    assert area_loss(distinct.flip(1), ref[:1]).item() == pytest.approx(expected.item())
    # ties are compared with their mean reference (0.25 here), not broken by memory order
    assert area_loss(torch.ones(1, 8), ref[:1]).item() == pytest.approx(0.75**2)
    tied = torch.ones(1, 8, requires_grad=True)
    area_loss(tied, ref[:1]).sum().backward()
    assert torch.allclose(tied.grad, tied.grad[0, 0].expand_as(tied.grad))


def test_blur_pyramid_ends_and_interpolation():
    x = textured(16, 2)
    pyr = BlurPyramid(x, levels=5, max_sigma=3.0)
    idx = torch.tensor([0, 1])
    ones, zeros = torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    assert torch.allclose(pyr.apply(ones, idx), x, atol=1e-6)
    assert torch.allclose(pyr.apply(zeros, idx), gaussian_blur(x, 3.0), atol=1e-5)
    half = pyr.apply(torch.full((2, 1, 16, 16), 0.125), idx)  # halfway between levels 0 and 1
    assert torch.allclose(half, 0.5 * (gaussian_blur(x, 3.0) + gaussian_blur(x, 2.25)), atol=1e-5)


def test_smooth_mask_is_smooth_bounded_and_local():
    sm = SmoothMask((64, 64), step=4, sigma=6)
    p = torch.zeros(1, *sm.grid)
    p[0, 8, 8] = 1.0  # one bump near the centre (34 px, 34 px)
    m = sm.upsample(sm.work_mask(p))[0, 0]
    assert m.max() <= 1 and m.min() >= 0
    assert m[34, 34] > 0.9 and m[5, 5] < 1e-3 and m[34, 60] < 1e-3
    full = sm.upsample(sm.work_mask(torch.ones(1, *sm.grid)))
    assert full.min() > 0.99  # the smooth max of all-one bumps is just below 1


def test_preserve_finds_the_region(region):
    x = textured(SIZE)
    before = model_state(region)
    r = extremal_perturbation(region, x, 0, [AREA], iterations=150, progress=False)
    assert model_state(region) == before
    assert r.masks.shape == (1, 1, SIZE, SIZE) and r.masks.min() >= 0 and r.masks.max() <= 1
    assert iou(top_pixels(r.masks[0, 0], AREA), box_mask(SIZE, BOX)) >= 0.7
    assert r.reward_history.shape == (r.iterations, 1, 1) and r.area_history.shape == (r.iterations, 1, 1)


def test_preserve_finds_three_separate_regions():
    """Evidence in three places: the search's unions of three blobs (search_parts=3) start the
    mask on all three, and the kept pixels cover most of each box."""
    boxes = [(3, 3, 10, 10), (3, 35, 10, 10), (35, 19, 10, 10)]
    model = RegionNet(SIZE, boxes).eval()
    area = 3 * 100 / SIZE**2
    r = extremal_perturbation(model, textured(SIZE), 0, [area], preset="fast", iterations=60, progress=False)
    top = top_pixels(r.masks[0, 0], area)
    for b in boxes:
        inside = box_mask(SIZE, b)
        assert float((top & inside).sum() / inside.sum()) >= 0.5, b


def test_delete_finds_the_region(region):
    x = textured(SIZE)
    r = extremal_perturbation(region, x, 0, [AREA], variant="delete", iterations=150, progress=False)
    assert iou(top_pixels(r.masks[0, 0], AREA), box_mask(SIZE, BOX)) >= 0.7
    with torch.no_grad():
        assert r.final_reward[0, 0] < region(x)[0, 0]  # the region removed, the logit falls


def test_area_constraint_holds_for_several_areas(region):
    areas = [0.05, 0.15, 0.3]
    r = extremal_perturbation(region, textured(SIZE), 0, areas, iterations=120, progress=False)
    for a, actual in zip(areas, r.mask_area()[0].tolist()):
        assert abs(actual - a) <= 0.2 * a


def test_batched_equals_one_at_a_time(region):
    x = textured(SIZE, 2, seed=3)
    # the feathered preset's masks from a 3 x 3 search: the same property, faster
    kw = dict(preset="feathered", schedule=Schedule(iterations=40, search_side=3, search_parts=1, min_iterations=30,
                                                    stall=25), progress=False)
    both = extremal_perturbation(region, x, [0, 1], [0.1, 0.2], **kw)
    for i in range(2):
        one = extremal_perturbation(region, x[i], i, [0.1, 0.2], **kw)
        assert torch.allclose(both.masks[i], one.masks[0], atol=1e-4)
    again = extremal_perturbation(region, x, [0, 1], [0.1, 0.2], **kw)
    assert torch.equal(both.masks, again.masks)  # deterministic


def test_dual_fade_and_contrastive_are_what_they_say(region):
    """Each reported binary reward recomputed by hand from the returned mask: dual is the
    preserved input's reward minus the deleted input's; fade multiplies the input by the mask
    (removed pixels at the model's zero); contrastive subtracts the best other logit (class 1
    of this model is the constant 1). Swapping any two options would break these equalities."""
    x = textured(SIZE)
    kw = dict(preset="fast", iterations=10, progress=False)  # hard edges: the rewards are the plain scores

    def binary(r):
        return r.binary_masks()[0, 0][None, None]

    r = extremal_perturbation(region, x, 0, [AREA], variant="dual", **kw)
    keep = binary(r)
    kept = float(extremal_score(region, x, keep[0], 0, [AREA])[0, 0])
    removed = float(extremal_score(region, x, keep[0], 0, [AREA], variant="delete")[0, 0])
    assert float(r.binary_reward[0, 0]) == pytest.approx(kept - removed, abs=1e-3)
    assert kept > removed  # the region kept scores higher than the region removed

    r = extremal_perturbation(region, x, 0, [AREA], perturbation="fade", **kw)
    assert float(r.binary_reward[0, 0]) == pytest.approx(float(region(x * binary(r)).detach()[0, 0]), abs=1e-4)
    blurred = float(extremal_score(region, x, binary(r)[0], 0, [AREA])[0, 0])
    assert abs(blurred - float(r.binary_reward[0, 0])) > 1e-3  # fade is not blur (9.603 against 9.610 here)

    r = extremal_perturbation(region, x, 0, [AREA], reward="contrastive", **kw)
    simple = float(extremal_score(region, x, binary(r)[0], 0, [AREA])[0, 0])
    assert float(r.binary_reward[0, 0]) == pytest.approx(simple - 1.0, abs=1e-3)


def test_extremal_score_and_area_curve(region):
    x = textured(SIZE)
    perfect = box_mask(SIZE, BOX).float()[None, None]
    wrong = perfect.flip(-1).flip(-2)
    s = extremal_score(region, x, torch.cat([perfect, wrong], 1), 0, [AREA, AREA])
    assert s[0, 0] > s[0, 1]
    d = extremal_score(region, x, torch.cat([perfect, wrong], 1), 0, [AREA, AREA], variant="delete")
    assert d[0, 0] < d[0, 1]
    curve = area_curve(region, x, torch.cat([perfect, wrong], 1), 0, [0.02, AREA, 0.5])
    assert curve.shape == (1, 3) and curve[0, 1] >= s[0, 0] - 1e-5


def test_top_fraction_exact_count():
    m = torch.rand(3, 10, 10)
    keep = top_fraction(m, torch.tensor([0.0, 0.123, 1.0]))
    assert keep.flatten(1).sum(1).tolist() == [0, 12, 100]
    assert keep[1].flatten()[m[1].flatten().argmax()] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(areas=[0.0]), "outside \\(0, 1\\)"),
    (dict(areas=[1.2]), "outside \\(0, 1\\)"),
    (dict(variant="keep"), "unknown variant"),
    (dict(reward="best"), "unknown reward"),
    (dict(perturbation="noise"), "unknown perturbation"),
])
def test_bad_arguments(region, kwargs, match):
    args = dict(areas=[0.1], iterations=2, progress=False) | kwargs
    before = model_state(region)
    with pytest.raises(ChanattrError, match=match):
        extremal_perturbation(region, textured(SIZE), 0, **args)
    assert model_state(region) == before


def test_saliency_peaks_inside_a_blob_at_the_border():
    """The saliency sums the binary top-a masks and smooths with zero outside the image: a
    blob in the corner peaks inside the blob, not at the corner pixel (a reflected border
    would put the peak on the edge), and soft masks below 0.5 still count by their order."""
    from chanattr.pixel import PixelResult

    m = torch.zeros(1, 2, 40, 40)
    m[0, 0, :10, :10] = 0.3
    m[0, 1, :16, :16] = 0.4
    r = PixelResult(masks=m, areas=torch.tensor([100 / 1600, 256 / 1600], dtype=torch.float64),
                    targets=torch.tensor([0]), variant="preserve", reward_kind="simple", reward_history=None,
                    area_history=None, final_reward=None, binary_reward=None, iterations=1, seconds=0.0, info={})
    row, col = divmod(int(r.saliency(sigma=3)[0].argmax()), 40)
    assert 2 <= row <= 9 and 2 <= col <= 9
    # the binary masks: exactly round(a * H * W) ones per area, on the highest soft values
    hard = r.binary_masks()
    assert hard.shape == m.shape and hard.flatten(2).sum(2).tolist() == [[100.0, 256.0]]
    assert bool((hard[0, 0, :10, :10] == 1).all()) and bool((hard[0, 1, :16, :16] == 1).all())


def test_smooth_mask_matches_the_papers_formula():
    """The paper's form (every bump in the smooth max) against a direct evaluation of
    sum_j g_j softmax_j(20 g), g_j = p_j k(|u - c_j| / sigma), at the working grid (exact up to
    the far bumps' k(2.5) = 3.4e-4) and at every pixel after bilinear upsampling from the
    half-step grid (interpolation error only)."""
    from chanattr.smooth_mask import smooth_max_mask

    torch.manual_seed(0)
    sm = SmoothMask((40, 40), step=2.5, sigma=5.0, padding="none")
    p = torch.rand(3, sm.num_params)
    p[1] *= 0.3  # low values: where the far bumps' share of the denominator matters most
    p[2] = 1.0
    direct = smooth_max_mask(p, sm.centres, sm.points, 5.0)
    assert (sm.work_mask(p) - direct).abs().max() < 1e-4
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(40) + 0.5, indexing="ij")
    pixels = smooth_max_mask(p, sm.centres, torch.stack([ys, xs], -1).reshape(-1, 2), 5.0)
    error = (sm.upsample(sm.work_mask(p)).flatten(1) - pixels).abs()
    assert error.mean() < 0.02 and error.max() < 0.1  # iid parameters: the roughest field there is
    # the windowed form leaves the far bumps out of the denominator: larger at low values
    windowed = SmoothMask((40, 40), step=2.5, sigma=5.0, padding="none")
    windowed.far = None
    assert (windowed.work_mask(p[1:2]) - direct[1:2]).max() > 0.01


def test_paper_preset_is_the_papers_schedule():
    from chanattr.extremal import PRESETS

    s = PRESETS["paper"]
    assert (s.iterations, s.optimiser, s.lr, s.momentum, s.start, s.harden, s.jitter) == (
        800, "sgd", 0.01, 0.9, "ones", 1.0, True)
    assert s.weight_at(0) == 300 and s.weight_at(100) == pytest.approx(300 * 1.0035**100)
    assert not s.early_stop


@pytest.mark.parametrize("preset", ["paper", "fast-from-input"])
def test_gradient_phase_alone_finds_the_region(region, preset):
    """No search: the paper preset starts at 1 everywhere, the fast preset here from the whole
    input; the gradient steps alone must move the mask onto the planted region."""
    from dataclasses import replace
    from chanattr.extremal import preset_schedule

    x = textured(SIZE)
    if preset == "paper":
        r = extremal_perturbation(region, x, 0, [AREA], preset="paper", iterations=150, progress=False)
        assert r.iterations == 150  # no early stop
    else:
        schedule = replace(preset_schedule("fast"), start="input")
        r = extremal_perturbation(region, x, 0, [AREA], schedule=schedule, progress=False)
    assert iou(top_pixels(r.masks[0, 0], AREA), box_mask(SIZE, BOX)) >= 0.7


def test_area_margin_counts_the_frame(region):
    """TorchRay's constraint counts a frame of sigma px around the image: the visible mask then
    covers about (1 + 2 sigma / H)^2 = 1.4 times more than without it."""
    x = textured(SIZE)
    kw = dict(preset="paper", iterations=150, progress=False)
    ours = extremal_perturbation(region, x, 0, [AREA], **kw)
    framed = extremal_perturbation(region, x, 0, [AREA], area_margin=21 * SIZE / 224, **kw)
    assert framed.masks.shape == ours.masks.shape == (1, 1, SIZE, SIZE)
    # 150 of the paper's 800 iterations: the area weight has grown 1.7x of its 16x, so the
    # masks are still shrinking (0.23 and 0.32 here, for 0.17); the frame's effect is already plain
    assert float(framed.mask_area()) > 1.25 * float(ours.mask_area())


def test_search_alone_and_its_score(region):
    x = textured(SIZE)
    r = extremal_perturbation(region, x, 0, [AREA], preset="fast", iterations=0, progress=False)
    assert r.iterations == 0 and r.reward_history.shape == (0, 1, 1)
    assert r.binary_reward[0, 0] == pytest.approx(float(extremal_score(region, x, r.masks, 0, [AREA])[0, 0]), abs=1e-3)
    with pytest.raises(ChanattrError, match="at least 1"):
        extremal_perturbation(region, x, 0, [AREA], preset="paper", iterations=0, progress=False)


def test_extremal_score_feathered_and_probability(region):
    """The probability is the softmax of the same perturbed logits; feathering softens the
    kept region's edge, which this model reads as detail (a squared Laplacian): a hard-edged
    box scores higher than the same box feathered, and the feathered score falls with sigma."""
    x = textured(SIZE)
    box = box_mask(SIZE, BOX).float()[None, None]
    logit = extremal_score(region, x, box, 0, [AREA])
    prob = extremal_score(region, x, box, 0, [AREA], output="probability")
    other = extremal_score(region, x, box, 1, [AREA])
    assert float(prob) == pytest.approx(float(torch.softmax(torch.cat([logit, other], 1), 1)[0, 0]), rel=1e-4)
    feathered = [float(extremal_score(region, x, box, 0, [AREA], feather=f)) for f in (0.0, 1.0, 3.0)]
    assert feathered[0] == pytest.approx(float(logit))
    assert feathered[0] > feathered[1] > feathered[2]
    with pytest.raises(ChanattrError, match="feather"):
        extremal_score(region, x, box, 0, [AREA], feather=-1)


def test_the_search_shows_progress_when_asked(capsys):
    """The disc search (the first part of a fast run) and the unit spaces' greedy search show a
    progress bar when progress is on, and nothing when it is off."""
    from chanattr import unit_extremal_perturbation
    from models_gt import PlantedConvNet, region_net, textured

    net = region_net().eval()
    x = textured(48, 1)
    extremal_perturbation(net, x, 0, [0.1], iterations=0, progress=True)
    assert "extremal (preserve): search" in capsys.readouterr().err
    extremal_perturbation(net, x, 0, [0.1], iterations=0, progress=False)
    assert "search" not in capsys.readouterr().err
    unit_extremal_perturbation(PlantedConvNet().eval(), textured(16, 1), 0, "features.2", [0.2], iterations=0,
                               progress=True)
    assert "channels at features.2: greedy search" in capsys.readouterr().err


def test_feather_softens_what_the_model_sees(region):
    """``feather=f``: the model sees every keep mask blurred by a Gaussian of f px (the score
    ``extremal_score(feather=f)`` reads), the search's candidates included; its masks score at
    least as well as the hard-edged preset's under that feathered score, and still overlap the region."""
    from chanattr.pixel import PixelSpace

    x = textured(SIZE)
    space = PixelSpace(region, x, feather=2.0)
    keep = box_mask(SIZE, BOX).float().flatten()[None]
    seen = space.perturb(keep, torch.tensor([0]))
    # the extremal score's perturbation: the feathered mask mixes the photo and its most blurred copy
    soft = gaussian_blur(keep.view(1, 1, SIZE, SIZE), 2.0)
    assert torch.allclose(seen, x * soft + gaussian_blur(x, space.max_blur) * (1 - soft), atol=1e-5)
    assert not torch.allclose(seen, PixelSpace(region, x).perturb(keep, torch.tensor([0])), atol=1e-3)
    r = extremal_perturbation(region, x, 0, [AREA], feather=2.0, progress=False)
    hard = extremal_perturbation(region, x, 0, [AREA], progress=False)
    assert r.info["feather"] == 2.0
    scores = [float(extremal_score(region, x, m.masks, 0, [AREA], feather=2.0)) for m in (r, hard)]
    assert scores[0] >= scores[1]
    assert iou(top_pixels(r.masks[0, 0], AREA), box_mask(SIZE, BOX)) >= 0.7
    with pytest.raises(ChanattrError, match="feather"):
        extremal_perturbation(region, x, 0, [AREA], feather=-1.0, iterations=2, progress=False)


def test_run_rows_give_the_plain_score_beside_the_feathered_one(region):
    """``chanattr run explain --feather``: the row's ``score`` stays the hard-edged extremal score
    and ``feathered_score`` is the optimised one, each equal to ``extremal_score`` of the masks."""
    from argparse import Namespace
    from types import SimpleNamespace

    from chanattr.run_methods import explain

    x = textured(SIZE)
    args = Namespace(areas=[AREA], preset="fast", variant="preserve", perturbation="blur", reward="simple",
                     iterations=5, seed=0, feather=2.0, search_side=None, search_parts=None)
    out = explain(SimpleNamespace(model=region), x, torch.tensor([0]), args)[0]
    masks = torch.from_numpy(out.arrays["masks"]).float()[None]
    row = out.rows[0]
    assert row["score"] == pytest.approx(float(extremal_score(region, x, masks, 0, [AREA])), abs=1e-3)
    assert row["feathered_score"] == pytest.approx(float(extremal_score(region, x, masks, 0, [AREA], feather=2.0)),
                                                   abs=1e-3)
    assert abs(row["score"] - row["feathered_score"]) > 0.1


def test_feathered_preset(region):
    """The feathered preset: the fast preset's masks seen with a 4 px (at 224 px) feathered edge,
    a smaller search, at most 80 steps; an explicit feather= overrides its own."""
    from chanattr.extremal import PRESETS

    s = PRESETS["feathered"]
    assert (s.iterations, s.start, s.search_side, s.search_parts, s.harden) == (80, "search", 5, 2, 0.0)
    x = textured(SIZE)
    r = extremal_perturbation(region, x, 0, [AREA], preset="feathered", progress=False)
    assert r.info["feather"] == pytest.approx(4.0 * SIZE / 224) and r.iterations <= 80
    assert iou(top_pixels(r.masks[0, 0], AREA), box_mask(SIZE, BOX)) >= 0.7
    assert extremal_perturbation(region, x, 0, [AREA], preset="feathered", feather=0.0, iterations=2,
                                 progress=False).info["feather"] == 0.0
