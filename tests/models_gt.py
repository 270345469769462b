"""Ground-truth models for tests: outputs that provably depend on a known region or channel set."""

from __future__ import annotations

import torch
from torch import nn


class RegionNet(nn.Module):
    """Class 0 responds to fine detail (squared Laplacian) inside one rectangle only (or
    inside each of several).

    Blurring the rectangle lowers the logit; blurring elsewhere hardly changes it. Class 1
    is a constant. ``box`` = (top, left, height, width) in pixels, or a list of them.
    """

    def __init__(self, size: int, box, outside: float = 0.02) -> None:
        super().__init__()
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.detail = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.detail.weight.data = lap.expand(1, 3, 3, 3).clone() / 3
        weight = torch.full((1, 1, size, size), outside)
        for top, left, h, w in [box] if isinstance(box[0], int) else box:
            weight[..., top : top + h, left : left + w] = 1.0
        self.register_buffer("where", weight / weight.sum())
        self.head = nn.Linear(1, 2)
        self.head.weight.data = torch.tensor([[1.5], [0.0]])  # logit about 10 on unit noise
        self.head.bias.data = torch.tensor([0.0, 1.0])

    def forward(self, x):
        energy = (self.detail(x) ** 2 * self.where).sum((1, 2, 3))
        return self.head(energy[:, None])


def box_mask(size: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top : top + h, left : left + w] = True
    return m


def textured(size: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


PLANTED = [3, 7, 11]


def _planted_head(channels: int, classes: int = 3) -> nn.Linear:
    fc = nn.Linear(channels, classes)
    with torch.no_grad():
        fc.weight.fill_(0.01)
        fc.weight[0, PLANTED] = 1.0  # class 0 rests on the planted channels
        fc.weight[1] = 0.05
        fc.bias.zero_()
    return fc


class PlantedConvNet(nn.Module):
    """A plain conv stack; class 0 depends (almost) only on channels ``PLANTED`` of
    ``features.2`` (16 channels, each about 1 on any input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        with torch.no_grad():
            self.features[2].weight.mul_(0.01)
            self.features[2].bias.fill_(1.0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _planted_head(16)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.out = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.out(x + self.conv2(self.relu(self.conv1(x))))


class PlantedResNet(nn.Module):
    """A residual block with in-place ReLUs; class 0 depends (almost) only on channels
    ``PLANTED`` of ``block.conv2`` (16 channels). The skip connection jumps over it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = Block(16)
        with torch.no_grad():
            self.stem.weight.mul_(0.01)
            self.stem.bias.zero_()
            self.block.conv2.weight.mul_(0.01)
            self.block.conv2.bias.fill_(1.0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _planted_head(16)

    def forward(self, x):
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


class PlantedMLP(nn.Module):
    """A vector (N x C) layer: class 0 depends on units ``PLANTED`` of ``hidden``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flat = nn.Flatten()
        self.hidden = nn.Linear(3 * 8 * 8, 16)
        with torch.no_grad():
            self.hidden.weight.mul_(0.01)
            self.hidden.bias.fill_(1.0)
        self.act = nn.ReLU()
        self.fc = _planted_head(16)

    def forward(self, x):
        return self.fc(self.act(self.hidden(self.flat(x))))


def region_net() -> RegionNet:
    """Factory for the command-line tests (``--model tests/models_gt.py:region_net``)."""
    return RegionNet(48, (6, 14, 20, 20))


JOINT = [2, 5, 9, 13]
DECOYS = [0, 7, 11]


class JointChannelNet(nn.Module):
    """Class 0 rests on channels ``JOINT`` of ``features.1`` (16 channels, each about 1) only
    together: 8 sigmoid(10 (s - 2.5)), s their sum -- saturated at the full input (s = 4), so
    their gradient is about 0 and removing any one of them changes nothing -- beside decoys
    ``DECOYS`` that add 1 each alone. With 3 channels kept the best set is 3 of ``JOINT``
    (about 7.95); the decoys, which gradient x activation and single-channel ablation rank
    first, give 3. With 4: 3 of ``JOINT`` and a decoy (8.95)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.mul_(0.01)
            self.features[0].bias.fill_(1.0)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        a = self.pool(self.features(x)).flatten(1)
        y0 = 8 * torch.sigmoid(10 * (a[:, JOINT].sum(1) - 2.5)) + a[:, DECOYS].sum(1)
        return torch.stack([y0, torch.ones_like(y0)], 1)


def random_conv() -> nn.Module:
    """A small conv net with fresh random weights on every call (no seed of its own): for the
    command line's --seed (``--model tests/models_gt.py:random_conv``)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


class ReusedActNet(nn.Module):
    """Two ReLUs, the last one a module used twice in the forward pass (``act2``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a = self.act1(self.conv1(x))
        b = self.act2(self.conv2(a))
        return self.fc(self.act2(b - 0.1).mean((2, 3)))


def grey_net() -> nn.Module:
    """A one-channel (greyscale) classifier, 28 x 28 like Fashion-MNIST's
    (``--model tests/models_gt.py:grey_net --input-size 28 --mean 0.5 --std 0.5``)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def constant_net() -> nn.Module:
    """A head that ignores its input (all logits 0), like a random ViT head with zeroed weights."""

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    return Constant()


# --- transformers ---------------------------------------------------------------------------

#: heads of ``PlantedViT.blocks.0.attn`` (8 heads of 2 dimensions) that class 0 rests on jointly,
#: and decoy heads that add alone
JOINT_HEADS = [1, 4, 5, 6]
DECOY_HEADS = [0, 3, 7]


class Attention(nn.Module):
    """timm's attention in miniature: ``num_heads``, ``qkv``, ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * (c // self.num_heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)

    def forward(self, x):
        return self.attn(x)


class PlantedViT(nn.Module):
    """A one-block vision transformer on 16 x 16 inputs: 4 x 4 patches give 16 patch tokens
    after a class token, 16 hidden dimensions, 8 heads of 2. Every hidden value of every token
    is about 1 (the patch embedding is nearly constant; every value vector is about 1, so every
    head's output is too, whatever it attends to; ``proj`` is the identity).

    Class 0 rests on units of one kind (``readout``), read from ``blocks.0``'s output over the
    patch tokens: ``"hidden"``: s_d = the mean over tokens of hidden dimension d; ``"tokens"``:
    s_t = the mean over hidden dimensions of token t; ``"heads"``: s_h = the mean of head h's two
    dimensions. Class 0 = 8 sigmoid(10 (sum of s over the joint units - 2.5)) + the sum over the
    decoys, as ``JointChannelNet``: the joint units matter only together (saturated, redundant)
    and gradient x activation and single-unit ablation rank the decoys first. Joint and decoys:
    ``JOINT`` / ``DECOYS`` (16 hidden dimensions or tokens), ``JOINT_HEADS`` / ``DECOY_HEADS``."""

    def __init__(self, readout: str = "hidden") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.readout = readout
        self.patch_embed = nn.Conv2d(3, 16, 4, stride=4)
        self.cls_token = nn.Parameter(torch.ones(1, 1, 16))
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, 16))
        self.blocks = nn.Sequential(ViTBlock(16, 8))
        attn = self.blocks[0].attn
        with torch.no_grad():
            self.patch_embed.weight.mul_(0.01)
            self.patch_embed.bias.fill_(1.0)
            attn.qkv.weight.mul_(0.1)
            attn.qkv.bias[32:].fill_(1.0)  # values about 1
            attn.qkv.weight[32:].zero_()
            attn.proj.weight.copy_(torch.eye(16))
            attn.proj.bias.zero_()
        self.joint, self.decoys = (JOINT_HEADS, DECOY_HEADS) if readout == "heads" else (JOINT, DECOYS)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        out = self.blocks(t)[:, 1:]
        if self.readout == "hidden":
            s = out.mean(1)
        elif self.readout == "tokens":
            s = out.mean(2)
        else:
            s = out.mean(1).view(out.shape[0], 8, 2).mean(2)
        y0 = 8 * torch.sigmoid(10 * (s[:, self.joint].sum(1) - 2.5)) + s[:, self.decoys].sum(1)
        return torch.stack([y0, torch.ones_like(y0)], 1)


class DictViT(nn.Module):
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


def planted_vit_heads() -> nn.Module:
    """``PlantedViT("heads")``, for the command line."""
    return PlantedViT("heads")


class Energy(nn.Module):
    """Fine detail (squared Laplacian) per pixel, weighted by a fixed map per output channel."""

    def __init__(self, where: torch.Tensor) -> None:
        super().__init__()
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.detail = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.detail.weight.data = lap.expand(1, 3, 3, 3).clone() / 3
        self.register_buffer("where", where)

    def forward(self, x):
        return self.detail(x) ** 2 * self.where


UNIT_BOX = (4, 14, 10, 10)


class UnitBoxNet(nn.Module):
    """``energy`` has 2 channels: channel 0 is the fine detail inside ``UNIT_BOX`` only, channel 1
    the detail everywhere; the class head reads channel 1 only. So channel 0's evidence is the
    box, and the class's is the whole image (32 x 32 inputs)."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        where = torch.ones(1, 2, size, size)
        where[:, 0] = box_mask(size, UNIT_BOX).float()
        self.energy = Energy(where)
        self.head = nn.Linear(1, 3)

    def forward(self, x):
        return self.head(self.energy(x)[:, 1:].mean((2, 3)))


class BoxSegmenter(nn.Module):
    """A segmentation model in torchvision's style: {"out": N x 2 x H x W}, class 1 = detail."""

    def __init__(self) -> None:
        super().__init__()
        self.energy = Energy(torch.ones(1, 1, 1, 1))

    def forward(self, x):
        d = self.energy(x)
        return {"out": torch.cat([torch.ones_like(d), d], 1)}


class SlowJointChannelNet(JointChannelNet):
    """``JointChannelNet`` taking 30 ms more per forward pass: a run slow enough to kill half-way."""

    def forward(self, x):
        import time

        time.sleep(0.03)
        return super().forward(x)


def tiny_imagenet() -> nn.Module:
    """A small random conv net with 1000 outputs (ImageNet's classes): for COCO items, whose
    targets are ImageNet classes (``--model tests/models_gt.py:tiny_imagenet``)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000))
