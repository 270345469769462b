import pytest
import torch

from chanattr import ChanattrError, capture, model_state, prepare_image
from chanattr.models import Preprocessing
from inversion import InversionSettings, feature_loss, invert, plot_channel_grid, plot_inversions, visualize_channels
from inversion.invert import channel_mask

SMALL = Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the bundled model on a 64 px crop
EXACT = dict(transforms=False, lambda_alpha=0.0, lambda_tv=0.0, lr=0.05)


@pytest.fixture(scope="module")
def chelsea64():
    return prepare_image("chelsea", SMALL)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_inverting_the_stem_gives_back_the_photo(lite0, chelsea64):
    before = model_state(lite0.model)
    settings = InversionSettings(param="pixel", iterations=150, **EXACT)
    r = invert(lite0.model, chelsea64.input[None], "conv_stem", list(range(32)), SMALL, settings=settings,
               progress=False)
    assert model_state(lite0.model) == before
    assert r.images.shape == (1, 3, 64, 64) and r.images.min() >= 0 and r.images.max() <= 1
    assert pearson(r.images[0], chelsea64.rgb) >= 0.8
    assert r.info["path"] == "split"


def test_selected_channels_are_matched_and_the_rest_are_free(lite0, chelsea64):
    x = chelsea64.input[None]
    subset = list(range(0, 16))
    settings = InversionSettings(param="pixel", iterations=120, **EXACT)
    r = invert(lite0.model, x, "blocks.1", subset, SMALL, settings=settings, progress=False)
    start = torch.full_like(r.images, 0.5)  # roughly where the optimisation starts
    with capture(lite0.model, "blocks.1", detach=True) as ref:
        lite0.model(x)
    target, c = ref["blocks.1"], ref["blocks.1"].shape[1]
    sel = channel_mask(subset, c)[None]
    rest = 1 - sel
    with capture(lite0.model, "blocks.1", detach=True) as acts:
        lite0.model(SMALL.normalize(r.images))
    got = acts["blocks.1"]
    with capture(lite0.model, "blocks.1", detach=True) as acts0:
        lite0.model(SMALL.normalize(start))
    err_sel = feature_loss(got, target, sel).sqrt().item()
    err_rest = feature_loss(got, target, rest).sqrt().item()
    err_start = feature_loss(acts0["blocks.1"], target, sel).sqrt().item()
    assert r.relative_error.item() == pytest.approx(err_sel, rel=1e-3)
    # Bound: the optimisation removes at least 3/4 of the initial mismatch on the selected
    # channels, and matches them at least twice as well as the unconstrained ones.
    assert err_sel < 0.25 * err_start
    assert err_sel < 0.5 * err_rest


def test_masked_loss_ignores_unselected_channels():
    torch.manual_seed(0)
    target = torch.randn(2, 6, 4, 4)
    act = torch.randn(2, 6, 4, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]] * 2, dtype=torch.float)
    other = target.clone()
    other[:, mask[0] == 0] = torch.randn_like(other[:, mask[0] == 0]) * 100
    l1 = feature_loss(act, target, mask)
    (g1,) = torch.autograd.grad(l1.sum(), act)
    l2 = feature_loss(act, other, mask)
    (g2,) = torch.autograd.grad(l2.sum(), act)
    assert torch.allclose(l1, l2) and torch.allclose(g1, g2)
    assert (g1[:, mask[0] == 0] == 0).all()


def test_same_seed_same_image(lite0, chelsea64):
    x = chelsea64.input[None]
    kw = dict(settings=InversionSettings(param="fourier", iterations=8), progress=False)
    a = invert(lite0.model, x, "blocks.2", [0, 1, 2], SMALL, seed=3, **kw)
    b = invert(lite0.model, x, "blocks.2", [0, 1, 2], SMALL, seed=3, **kw)
    c = invert(lite0.model, x, "blocks.2", [0, 1, 2], SMALL, seed=4, **kw)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_channel_masks_and_bad_input(lite0, chelsea64):
    assert channel_mask([1, 3], 5).tolist() == [0, 1, 0, 1, 0]
    assert channel_mask(torch.tensor([True, False]), 2).tolist() == [1, 0]
    with pytest.raises(ChanattrError, match="within 0..4"):
        channel_mask([7], 5)
    with pytest.raises(ChanattrError, match="no channels selected"):
        invert(lite0.model, chelsea64.input[None], "conv_stem", [], SMALL, iterations=1, progress=False)
    with pytest.raises(ChanattrError, match="unknown parameterisation"):
        invert(lite0.model, chelsea64.input[None], "conv_stem", [0], SMALL, iterations=1, param="cppn",
               progress=False)


def test_visualize_raises_the_channel(lite0, chelsea64):
    before = model_state(lite0.model)
    v = visualize_channels(lite0.model, "blocks.2", [5, 9], SMALL, iterations=24, progress=False)
    assert model_state(lite0.model) == before
    assert v.images.shape == (2, 3, 64, 64)
    with capture(lite0.model, "blocks.2", detach=True) as acts:
        lite0.model(chelsea64.input[None])
    natural = acts["blocks.2"][0, [5, 9]].flatten(1).mean(1)
    assert (v.activation > natural).all()
    with pytest.raises(ChanattrError, match="channels 0..39"):
        visualize_channels(lite0.model, "blocks.2", [40], SMALL, iterations=1, progress=False)


def test_figures(chelsea64):
    img = chelsea64.rgb
    fig = plot_inversions(img, {"all": img, "subset": img, "rest": img}, {"all": 10, "subset": 2, "rest": 8}, 10)
    assert len(fig.axes) == 4 and "2 of 10" in fig.axes[2].get_title()
    fig = plot_channel_grid(torch.stack([img] * 5), [f"#{i}" for i in range(5)], cols=3)
    assert sum(1 for ax in fig.axes if ax.images) == 5


def test_channel_mask_says_which_meaning():
    with pytest.raises(ChanattrError, match="could be a mask or channel indices"):
        channel_mask([0, 1, 1, 0], 4)  # was read as the indices {0, 1}
    assert channel_mask([0, 1, 1, 0], 4, kind="mask").tolist() == [0, 1, 1, 0]
    assert channel_mask([0, 1, 1, 0], 4, kind="indices").tolist() == [1, 1, 0, 0]
    assert channel_mask([0.0, 0.5, 1.0, 0.0], 4).tolist() == [0, 0.5, 1, 0]
    with pytest.raises(ChanattrError, match="in \\[0, 1\\]"):
        channel_mask([0.0, 2.0, 1.0, 0.0], 4)


def test_natural_prior_is_mahendran_and_vedaldis_formula():
    """(lambda_alpha / 2 sum |x - m|^6 + lambda_tv / 2 sum (dx^2 + dy^2)) / ||x0 - m||^2 on the
    [0, 255] scale, m the data mean (not the image's own: an image uniformly at another grey
    than the data mean pays the alpha-norm; it paid nothing before)."""
    from inversion import alpha_norm, natural_prior, total_variation

    mean = (0.5, 0.5, 0.5)
    grey = torch.full((1, 3, 4, 4), 0.6)
    assert float(alpha_norm(grey, mean)) == pytest.approx(48 * (0.1 * 255) ** 6, rel=1e-5)
    assert float(total_variation(grey)) == pytest.approx(0.0, abs=1e-3)
    ramp = torch.linspace(0, 1, 4).view(1, 1, 1, 4).expand(1, 3, 4, 4)  # steps of 255 / 3 along x
    assert float(total_variation(ramp)) == pytest.approx(3 * 4 * 3 * 85.0**2, rel=1e-4)
    x0 = torch.rand(1, 3, 4, 4)
    energy = float(((255 * (x0 - 0.5)) ** 2).sum())
    expected = (8e-10 / 2 * float(alpha_norm(ramp, mean)) + 10 / 2 * float(total_variation(ramp))) / energy
    assert float(natural_prior(ramp, x0, mean)) == pytest.approx(expected, rel=1e-5)
    assert float(natural_prior(ramp, x0, mean, lambda_alpha=0, lambda_tv=0)) == 0


def test_transforms_are_applied_to_the_original_alike(lite0, chelsea64, monkeypatch):
    """Each step draws one transform and applies it to the candidate and the original: the
    feature target of a step is the transformed original's (it was the untransformed one).
    Checked by recording what the layer sees: with the candidate set to the original itself,
    every step's loss is 0 when aligned."""
    import importlib

    inv = importlib.import_module("inversion.invert")  # the module (the package exports a function of that name)
    losses = []
    real = inv.feature_loss

    def spy(a, t, m):
        out = real(a, t, m)
        losses.append(float(out.detach().max()))
        return out

    monkeypatch.setattr(inv, "feature_loss", spy)

    class Original:  # a "parameterisation" that is the original photo, fixed
        params = [torch.zeros(1, requires_grad=True)]

        def image(self):
            return (SMALL.denormalize(chelsea64.input[None]) + 0 * self.params[0]).clamp(0, 1)

        def after_step(self):
            pass

    monkeypatch.setattr(inv, "make_image", lambda *a, **k: Original())
    kw = dict(param="pixel", iterations=4, lambda_alpha=0.0, lambda_tv=0.0, jitter=8, rotate=10)
    invert(lite0.model, chelsea64.input[None], "blocks.1", [0, 1, 2], SMALL,
           settings=InversionSettings(**kw), progress=False)
    assert max(losses[:4]) < 1e-6
    losses.clear()
    invert(lite0.model, chelsea64.input[None], "blocks.1", [0, 1, 2], SMALL,
           settings=InversionSettings(align_transforms=False, **kw), progress=False)
    assert max(losses[:4]) > 1e-2  # the transformed photo against the untransformed original


def test_fourier_default_settings_match_the_selected_channels(lite0, chelsea64):
    """The README's setting (Lucent's Fourier image, transforms aligned, Mahendran and Vedaldi's
    regularisers): the selected channels end far closer to the original's than where it starts."""
    from inversion.param import make_image

    x = chelsea64.input[None]
    subset = list(range(0, 16))
    r = invert(lite0.model, x, "blocks.1", subset, SMALL, iterations=60, progress=False)
    with capture(lite0.model, "blocks.1", detach=True) as ref:
        lite0.model(x)
    torch.manual_seed(0)
    start = make_image("fourier", tuple(x.shape), x.device).image().detach()
    with capture(lite0.model, "blocks.1", detach=True) as acts:
        lite0.model(SMALL.normalize(start))
    sel = channel_mask(subset, ref["blocks.1"].shape[1])[None]
    err_start = feature_loss(acts["blocks.1"], ref["blocks.1"], sel).sqrt().item()
    assert r.info["param"] == "fourier"
    assert r.relative_error.item() < 0.6 * err_start


@pytest.mark.parametrize("layer, unit, subset", [("blocks.0", "hidden", list(range(8))),
                                                 ("blocks.1.attn", "heads", [1]), ("blocks.0", "tokens", [0, 5, 10])])
def test_transformer_units_are_inverted_on_the_selected_units_only(layer, unit, subset):
    """Inversion at a ViT's token layers: the selected hidden units / head / tokens are matched,
    the rest left free (the same bounds as for channels)."""
    import timm

    from chanattr import UnitSpace
    from chanattr.models import Preprocessing

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2,
                                                           num_heads=4, num_classes=3).eval()
    pre = Preprocessing(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = pre.normalize(torch.rand(1, 3, 16, 16))
    settings = InversionSettings(param="pixel", iterations=150, **EXACT)
    r = invert(vit, x, layer, subset, pre, settings=settings, progress=False, unit=unit)
    assert r.info["unit"] == unit

    def errors(images):
        space = UnitSpace(vit, pre.normalize(images), layer, unit=unit)
        ref = UnitSpace(vit, x, layer, unit=unit)
        sel = torch.zeros(1, ref.num_units)
        sel[0, subset] = 1
        w = ref.kind.expand(sel)
        if unit == "tokens":  # the class token is not a unit: leave it out of both
            w, rest = w.clone(), ref.kind.expand(1 - sel).clone()
            w[:, 0], rest[:, 0] = 0, 0
        else:
            rest = ref.kind.expand(1 - sel)
        return (feature_loss(space.activation, ref.activation, w).sqrt().item(),
                feature_loss(space.activation, ref.activation, rest).sqrt().item())

    err_sel, err_rest = errors(r.images)
    err_start, _ = errors(torch.full_like(r.images, 0.5))
    assert r.relative_error.item() == pytest.approx(err_sel, rel=1e-3)
    assert err_sel < 0.25 * err_start and err_sel < 0.5 * err_rest


def test_visualising_transformer_units_raises_their_activation():
    """Activation maximisation of hidden units, a head and tokens of a random timm ViT (a model
    built for one input size: the transforms' size changes are undone): the right shapes, and
    the hidden units' mean activation rises."""
    import timm

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2,
                                                           num_heads=4, num_classes=3).eval()
    pre = Preprocessing(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    start = visualize_channels(vit, "blocks.1", [3, 7], pre, iterations=1, unit="hidden", progress=False)
    v = visualize_channels(vit, "blocks.1", [3, 7], pre, iterations=60, unit="hidden", lr=0.1, progress=False)
    assert v.images.shape == (2, 3, 16, 16) and (v.activation > start.activation).all()
    for layer, unit in (("blocks.1.attn", "heads"), ("blocks.0", "tokens")):
        assert visualize_channels(vit, layer, [1], pre, iterations=2, unit=unit, progress=False).images.shape == (
            1, 3, 16, 16)
