import pytest
import torch
from torch import nn

from chanattr import (
    ChanattrError,
    LayerHooks,
    LayerNotFoundError,
    capture,
    edit,
    frozen,
    get_layer,
    list_layers,
    model_state,
    preserved,
)


def test_get_layer_by_dotted_name(tiny):
    assert get_layer(tiny, "features.2") is tiny.features[2]
    with pytest.raises(LayerNotFoundError, match="close names: features.2") as info:
        get_layer(tiny, "features.22")
    assert "\n" not in str(info.value)


def test_get_layer_real_model(lite0):
    assert isinstance(get_layer(lite0.model, "blocks.5.0.conv_pwl"), nn.Conv2d)
    with pytest.raises(LayerNotFoundError, match="blocks.5.0.conv_pwl"):
        get_layer(lite0.model, "blocks.5.0.conv_pw1")


def test_list_layers_shapes_and_channels(tiny):
    before = model_state(tiny)
    infos = {i.name: i for i in list_layers(tiny, torch.zeros(2, 3, 16, 16))}
    assert infos["features.2"].shape == (2, 16, 8, 8) and infos["features.2"].channels == 16
    assert infos["fc"].shape == (2, 5) and infos["fc"].channels == 5
    assert infos["features"].kind == "Sequential"
    assert model_state(tiny) == before


def test_list_layers_counts_repeated_calls(twice):
    infos = {i.name: i for i in list_layers(twice, torch.zeros(1, 3, 8, 8))}
    assert infos["conv"].calls == 2


def test_capture_equals_manual_forward(tiny):
    x = torch.randn(2, 3, 16, 16)
    with capture(tiny, ["features.0", "features.2"]) as acts:
        tiny(x)
    with torch.no_grad():
        expected = tiny.features[0](x)
    assert torch.allclose(acts["features.0"], expected)


def test_capture_is_safe_with_inplace_relu(tiny):
    # features.0 (a conv) feeds an in-place ReLU: the captured output must keep its negatives
    x = torch.randn(2, 3, 16, 16)
    with capture(tiny, "features.0") as acts:
        y = tiny(x)
    assert (acts["features.0"] < 0).any()
    assert torch.allclose(y, tiny(x))  # the network's output is unchanged by capturing


def test_capture_inplace_relu_itself_and_gradients(tiny):
    x = torch.randn(2, 3, 16, 16)
    with capture(tiny, ["features.1", "features.3"]) as acts:
        y = tiny(x)[:, 0].sum()
    assert (acts["features.1"] >= 0).all()
    (g,) = torch.autograd.grad(y, acts["features.3"])  # the graph runs through the stored tensor
    assert g.shape == acts["features.3"].shape and g.abs().sum() > 0


def test_edit_replaces_output_and_is_removed_after(tiny):
    x = torch.randn(2, 3, 16, 16)
    reference = tiny(x)
    with edit(tiny, {"features.3": lambda a: torch.zeros_like(a)}) as hooks:
        y = tiny(x)
    assert torch.allclose(y, tiny.fc.bias.expand_as(y))
    assert hooks.outputs == {}  # edit keeps no activations alive
    assert torch.allclose(tiny(x), reference)


def test_edit_masks_channels_with_inplace_relu(tiny):
    mask = torch.zeros(1, 8, 1, 1)
    mask[:, :3] = 1
    x = torch.randn(1, 3, 16, 16)
    with LayerHooks(tiny, {"features.1": lambda a: a * mask}) as hooks:
        tiny(x)
    assert hooks["features.1"][:, 3:].abs().sum() == 0 and hooks["features.1"][:, :3].abs().sum() > 0


def test_hooks_many_forward_passes(tiny):
    with capture(tiny, "fc") as acts:
        a = tiny(torch.zeros(1, 3, 8, 8)).detach()
        b = tiny(torch.ones(1, 3, 8, 8)).detach()
        assert torch.allclose(acts["fc"], b)
    assert not torch.allclose(a, b)


def test_hooks_removed_after_exception(tiny):
    before = model_state(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(tiny, ["features.0", "fc"]):
            raise RuntimeError("boom")
    assert model_state(tiny) == before
    with pytest.raises(RuntimeError):
        with edit(tiny, {"fc": lambda a: a.view(-1, 999)}):  # fails inside the forward pass
            tiny(torch.zeros(1, 3, 8, 8))
    assert model_state(tiny) == before


def test_unknown_layer_registers_nothing(tiny):
    before = model_state(tiny)
    with pytest.raises(LayerNotFoundError):
        with capture(tiny, ["fc", "fc2"]):
            pass
    assert model_state(tiny) == before


def test_module_called_twice_is_refused_or_picked(twice):
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ChanattrError, match="runs more than once"):
        with capture(twice, "conv"):
            twice(x)
    with capture(twice, "conv", call=1) as acts:
        twice(x)
        twice(x)  # the call count restarts with every forward pass
    with torch.no_grad():
        assert torch.allclose(acts["conv"], twice.conv(twice.conv(x)))


def test_tuple_and_dict_outputs_are_read_and_edited_at_an_element():
    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, x * 2

    class Named(nn.Module):
        def forward(self, x):
            return {"hidden": x - 1, "attn": None}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.named = Pair(), Named()

        def forward(self, x):
            a, b = self.pair(x)
            return a + b + self.named(x)["hidden"]

    net, x = Net(), torch.ones(2, 3)
    with capture(net, ["pair", "pair:1", "named"], detach=True) as acts:
        net(x)
    assert torch.equal(acts["pair"], x + 1) and torch.equal(acts["pair:1"], x * 2)  # first tensor, element 1
    assert torch.equal(acts["named"], x - 1)  # a dict's first tensor
    with edit(net, {"pair:1": lambda t: torch.zeros_like(t), "named:hidden": lambda t: 10 * t}):
        y = net(x)
    assert torch.equal(y, (x + 1) + 0 + 10 * (x - 1))  # only the named elements changed
    with pytest.raises(ChanattrError, match="no element 'attention'.*hidden, attn"):
        with capture(net, "named:attention"):
            net(x)
    with pytest.raises(ChanattrError, match="element 'attn' .* is NoneType, not a tensor"):
        with capture(net, "named:attn"):
            net(x)
    assert get_layer(net, "pair:1") is net.pair


def test_input_port_reads_and_edits_a_module_input():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    x = torch.randn(5, 3)
    with capture(net, "2", port="input", detach=True) as acts:
        y = net(x)
    assert torch.allclose(acts["2"], torch.relu(net[0](x)))
    with edit(net, {"2": lambda t: torch.zeros_like(t)}, port="input"):
        assert torch.allclose(net(x), net[2].bias.expand(5, 1))
    assert torch.allclose(net(x), y)  # hooks gone


def test_preserved_and_frozen_restore_the_model(tiny):
    tiny.features[0].weight.requires_grad_(False)
    tiny.fc.train()
    before = model_state(tiny)
    with frozen(tiny):
        assert not any(p.requires_grad for p in tiny.parameters())
        assert not any(m.training for m in tiny.modules())
    assert model_state(tiny) == before
    with pytest.raises(ValueError):
        with preserved(tiny):
            tiny.train()
            raise ValueError
    assert model_state(tiny) == before


def test_heads_port_recomputes_torch_multihead_attention_exactly():
    """port="heads" on nn.MultiheadAttention: the recomputed per-head context, projected, gives
    the module's own output (batch first or not); zeroing head 1 equals the projection of the
    context with that head's slice zeroed."""
    from chanattr.hooks import mha_context

    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = mha

            def forward(self, x):
                return self.attn(x, x, x, need_weights=False)[0]

        net = Block().eval()
        x = torch.randn(3, 5, 8)
        with torch.no_grad():
            y = net(x)
            with edit(net, {"attn": lambda c: c}, port="heads"):
                assert torch.allclose(net(x), y, atol=1e-6)
            with edit(net, {"attn": lambda c: torch.cat([c[..., :4], torch.zeros_like(c[..., 4:])], -1)},
                      port="heads"):
                cut = net(x)
            ctx = mha_context(mha, x, x, x)
            ctx[..., 4:] = 0
            want = nn.functional.linear(ctx, mha.out_proj.weight, mha.out_proj.bias)
            assert torch.allclose(cut, want if batch_first else want.transpose(0, 1), atol=1e-6)
