"""A small vision transformer trained on Fashion-MNIST: the real trained transformer the unit
spaces (hidden units, heads, tokens) are measured on, since no pretrained ViT can be downloaded
here.

Architecture: timm's ``VisionTransformer`` (so module names are timm's: ``blocks.2.attn``,
``blocks.2.mlp.act``, ...), 28 x 28 greyscale input, 7 x 7 patches (16 patch tokens and a class
token), 64 hidden units, 4 blocks of 4 heads, MLP ratio 2; about 0.14 M parameters. Training:
AdamW (lr 1e-3, weight decay 0.05, cosine schedule), batch 128, ``--epochs`` over the 60 000
training images, no augmentation; accuracy on the 10 000 test images. Each seed's test accuracy
goes to ``results/fmnist_vit.jsonl`` (keyed by the settings and the code version, so the table
reports every seed and their spread); the weights of ``--save-seed`` are written to
``weights/fmnist_vit.pt`` (state dict, about 0.6 MB, committed).

Data: Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), as roar.py.

    python experiments/fmnist_vit.py --seeds 0 1 2 --threads 1     # train, log, save seed 0
    python experiments/fmnist_vit.py --table-only

Use it: ``chanattr channels IMAGE --model experiments/fmnist_vit.py:fmnist_vit --input-size 28
--mean 0.286 --std 0.353 --layer blocks.2 --unit hidden ...`` or ``fmnist_vit()`` in Python.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
WEIGHTS = HERE / "weights" / "fmnist_vit.pt"
LOG = HERE / "results" / "fmnist_vit.jsonl"
MEAN, STD = 0.286, 0.353  # Fashion-MNIST's pixel mean and standard deviation
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
ARCH = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


def build() -> nn.Module:
    """The architecture with fresh weights (seeded by the caller)."""
    import timm

    return timm.models.vision_transformer.VisionTransformer(**ARCH)


def fmnist_vit() -> nn.Module:
    """The trained network (``weights/fmnist_vit.pt``), in eval mode: inputs 1 x 28 x 28,
    normalised by ``MEAN`` / ``STD``; 10 Fashion-MNIST classes (``CLASSES``)."""
    model = build()
    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"{WEIGHTS} not found: run python experiments/fmnist_vit.py to train it")
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(normalise(x[s : s + batch])).argmax(1) == y[s : s + batch]).sum())
                    for s in range(0, len(x), batch))
    return right / len(x)


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=f"seed {seed}", mininterval=10)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 128):
            idx = order[s : s + 128]
            loss = nn.functional.cross_entropy(model(normalise(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return model.eval()


def main(argv=None) -> int:
    from _common import append_record, code_version, library_versions, settings_key, read_records
    from roar import DATA, load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--save-seed", type=int, default=0, help="the seed whose weights are written (default 0)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"arch": ARCH, "epochs": args.epochs, "optimiser": "adamw 1e-3 wd 0.05 onecycle", "batch": 128,
                "code": code_version(["experiments/fmnist_vit.py"]), "versions": library_versions(("torch", "timm"))}
    key = settings_key(settings)
    done, _ = read_records(LOG, {key})
    if not args.table_only:
        x, y = load(args.data, "train", 60000)
        xt, yt = load(args.data, "test", 10000)
        for seed in args.seeds:
            if any(r["seed"] == seed for r in done) and not (seed == args.save_seed and not WEIGHTS.is_file()):
                continue
            start = time.perf_counter()
            model = train(x, y, args.epochs, seed)
            acc = accuracy(model, xt, yt)
            rec = {"key": key, "seed": seed, "test_accuracy": acc, "train_accuracy_first_10k": accuracy(model, x[:10000], y[:10000]),
                   "seconds": time.perf_counter() - start, "parameters": sum(p.numel() for p in model.parameters()),
                   "settings": settings}
            if seed == args.save_seed:
                WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), WEIGHTS)
                rec["weights"] = str(WEIGHTS.relative_to(HERE.parent))
            append_record(LOG, rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "settings"}), flush=True)
        done, _ = read_records(LOG, {key})
    accs = sorted(r["test_accuracy"] for r in done)
    if accs:
        t = torch.tensor(accs)
        print(f"Fashion-MNIST ViT ({args.epochs} epochs), test accuracy over {len(accs)} seeds: "
              f"{100 * t.mean():.2f} % +- {100 * t.std(unbiased=False):.2f} (min {100 * t.min():.2f}, max {100 * t.max():.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
