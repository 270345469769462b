"""chanattr's methods as Captum attribution classes: Captum's shapes and target conventions,
additional_forward_args, and Captum's own metrics and visualisation run on them."""

import torch
from captum.attr import visualization
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from chanattr import Schedule, extremal_perturbation, model_state, prunegrad
from chanattr.captum import ExtremalPerturbation, LayerExtremalPerturbation, PruneGrad
from models_gt import JOINT, PlantedConvNet, PlantedViT, textured

QUICK = dict(schedule=Schedule(start="input", iterations=3, harden=0.0))


def perturb(inputs):
    noise = 0.05 * torch.randn_like(inputs)
    return noise, inputs - noise


def test_extremal_perturbation_class_shapes_targets_and_captum_metrics():
    model, x = PlantedConvNet().eval(), textured(16, 2)
    before = model_state(model)
    ep = ExtremalPerturbation(model)
    a = ep.attribute(x, target=[0, 1], areas=[0.2], **QUICK)
    assert a.shape == x.shape
    ref = extremal_perturbation(model, x, [0, 1], [0.2], progress=False, **QUICK).saliency()
    assert torch.allclose(a[:, 0], ref) and torch.equal(a[:, 0], a[:, 2])
    assert torch.equal(ep.attribute((x,), target=torch.tensor([0, 1]), areas=[0.2], **QUICK)[0], a)  # tuple in/out
    inf = infidelity(model, perturb, x, a, target=torch.tensor([0, 1]), n_perturb_samples=4)
    assert inf.shape == (2,) and torch.isfinite(inf).all()
    sens = sensitivity_max(lambda inp, target: ep.attribute(inp, target=target, areas=[0.2], **QUICK), x,
                           target=torch.tensor([0, 1]), n_perturb_samples=2)
    assert sens.shape == (2,) and torch.isfinite(sens).all()
    fig, _ = visualization.visualize_image_attr(a[0].permute(1, 2, 0).numpy(), method="heat_map", use_pyplot=False)
    assert fig is not None
    assert model_state(model) == before


def test_layer_class_spreads_unit_masks_over_the_layer_output():
    model, x = PlantedViT("hidden").eval(), textured(16, 1)
    lep = LayerExtremalPerturbation(model, model.blocks[0], unit="hidden")  # the module itself, or its name
    out = lep.attribute(x, target=0, areas=[3 / 16])
    assert out.shape == (1, 17, 16)  # tokens x hidden, as the layer returns
    masks = lep.attribute(x, target=0, areas=[3 / 16], return_masks=True)
    top = set(masks[0, 0].argsort(descending=True)[:3].tolist())
    assert top < set(JOINT)
    assert torch.allclose(out[0, 5], masks[0].mean(0))  # every token carries the hidden units' values


def test_prunegrad_class_and_additional_forward_args():
    class Scaled(nn.Module):  # a model with a second input, as Captum's additional_forward_args feed it
        def __init__(self):
            super().__init__()
            self.net = PlantedConvNet()

        def forward(self, x, scale):
            return self.net(x) * scale

    model, x = Scaled().eval(), textured(16, 2)
    pg = PruneGrad(model).attribute(x, target=0, additional_forward_args=(2.0,), keep=0.5)
    ref = prunegrad(model.net, x, 0, keep=0.5).gradient.abs()
    assert pg.shape == x.shape and torch.allclose(pg, 2.0 * ref, atol=1e-6)
    inf = infidelity(lambda inp, s: model(inp, s), perturb, x, pg, additional_forward_args=(2.0,), target=0,
                     n_perturb_samples=4)
    assert torch.isfinite(inf).all()


def test_the_classes_as_quantus_explain_funcs():
    """Quantus's robustness metric calls the explanation again on perturbed inputs
    (explain_func): PruneGrad and the extremal perturbation both serve; its faithfulness metric
    scores their maps."""
    import numpy as np
    import quantus

    from models_gt import random_conv

    torch.manual_seed(0)
    model, x, y = random_conv().eval(), textured(16, 2), np.array([0, 1])

    def explain_pg(model, inputs, targets, **_):
        t = torch.as_tensor(inputs, dtype=torch.float32)
        return PruneGrad(model).attribute(t, target=torch.as_tensor(targets).long(), keep=0.5).sum(1, True).numpy()

    def explain_ep(model, inputs, targets, **_):
        t = torch.as_tensor(inputs, dtype=torch.float32)
        return ExtremalPerturbation(model).attribute(t, target=torch.as_tensor(targets).long(), areas=[0.2],
                                                     **QUICK)[:, :1].numpy()

    for explain in (explain_pg, explain_ep):
        a = explain(model, x.numpy(), y)
        sens = quantus.MaxSensitivity(nr_samples=2, disable_warnings=True, display_progressbar=False)(
            model=model, x_batch=x.numpy(), y_batch=y, a_batch=a, explain_func=explain, device="cpu",
            channel_first=True)
        faith = quantus.FaithfulnessCorrelation(nr_runs=5, subset_size=16, perturb_baseline="black",
                                                disable_warnings=True, display_progressbar=False)(
            model=model, x_batch=x.numpy(), y_batch=y, a_batch=a, device="cpu", channel_first=True)
        assert len(sens) == 2 and np.isfinite(sens).all() and np.isfinite(faith).all()
