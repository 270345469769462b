"""ROAR (remove and retrain, Hooker et al. 2019) on Fashion-MNIST.

A small CNN is trained on Fashion-MNIST; each method attributes every training and test
image (target: the base model's predicted class, not the true label, whose
attribution pattern would leak the label into the removal mask); the top k % of pixels by attribution are replaced by the
dataset mean; a fresh CNN (same seed, same schedule) is retrained on the modified training
set and tested on the modified test set. A method whose top pixels matter more makes the
accuracy fall faster than the random ranking does. Prints a markdown table of test accuracy.

Data: Debian's ``dataset-fashion-mnist`` package (``sudo apt-get install
dataset-fashion-mnist`` puts the four idx files in /usr/share/datasets/fashion-mnist), or
``--data DIR`` holding the same four files.

    pip install -e ".[bench]"
    python experiments/roar.py --threads 2

Defaults keep it to about half an hour on 2 CPU cores: the first 10,000 training and 2,000
test images, 3 epochs per training. Extremal perturbation is left out here: one
optimisation per image for 12,000 images does not fit that budget.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from chanattr import saliency
from chanattr.evaluation import roar

from _common import append_record, code_version, library_versions, read_records, settings_key

DATA = Path("/usr/share/datasets/fashion-mnist")
HERE = Path(__file__).resolve().parent
CODE = ["experiments/roar.py", "chanattr/evaluation/roar.py", "chanattr/baselines.py", "chanattr/prunegrad.py"]
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
METHODS = ["random", "gradient", "gradient_x_input", "integrated_gradients", "guided_backprop", "gradcam", "prunegrad"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data: Path, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    img, lab = (data / f for f in FILES[split])
    if not img.exists() or not lab.exists():
        raise SystemExit(f"roar: {img} not found. Install Debian's dataset-fashion-mnist package "
                         f"(sudo apt-get install dataset-fashion-mnist) or pass --data DIR with the four idx files.")
    x = torch.from_numpy(read_idx(img)[:count].copy()).float().div(255)[:, None]
    y = torch.from_numpy(read_idx(lab)[:count].copy()).long()
    return x, y


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.cat([model(b).argmax(1) for b in x.split(1000)]).eq(y).float().mean())


def attribute(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> torch.Tensor:
    if method == "random":
        return torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(1))
    kw = {"steps": 16} if method == "integrated_gradients" else {}
    return torch.cat([saliency(method, model, x[s : s + batch], y[s : s + batch], **kw)
                      for s in range(0, len(x), batch)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--fill", choices=["mean", "background"], default="mean",
                    help="what a removed pixel becomes: the dataset mean (Hooker et al.) or the background (black)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="one retraining per seed in every cell; the table gives mean and sd over them")
    ap.add_argument("--log", type=Path, default=HERE / "results" / "roar.jsonl",
                    help="per (method, fraction, seed) accuracies, keyed by every setting and the code: "
                         "a rerun skips what is there")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x_tr, y_tr = load(args.data, "train", args.train)
    x_te, y_te = load(args.data, "test", args.test)
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std  # the dataset mean is 0 after this
    fill = 0.0 if args.fill == "mean" else float(-mean / std)  # background: a black pixel
    base = train(x_tr, y_tr, args.epochs)
    base_acc = accuracy(base, x_te, y_te)
    print(f"roar: base model test accuracy {base_acc:.3f}", file=sys.stderr, flush=True)

    key = settings_key({"train": args.train, "test": args.test, "epochs": args.epochs, "fill": args.fill,
                        "code": code_version(CODE), "versions": library_versions()})
    rows, stale = read_records(args.log, {key})
    done = {(r["method"], r["fraction"], r["seed"]): r["accuracy"] for r in rows}
    with torch.no_grad():
        p_tr = torch.cat([base(b).argmax(1) for b in x_tr.split(1000)])
        p_te = torch.cat([base(b).argmax(1) for b in x_te.split(1000)])
    for method in tqdm(args.methods, desc="roar"):
        todo = [(f, s) for f in args.fractions for s in args.seeds if (method, f, s) not in done]
        if not todo:
            continue
        s_tr, s_te = attribute(method, base, x_tr, p_tr), attribute(method, base, x_te, p_te)
        for seed in args.seeds:
            fractions = [f for f, s in todo if s == seed]
            if not fractions:
                continue

            def train_and_test(a: torch.Tensor, b: torch.Tensor, seed: int = seed) -> float:
                return accuracy(train(a, y_tr, args.epochs, seed=seed), b, y_te)

            for f, acc in roar(train_and_test, x_tr, s_tr, x_te, s_te, fractions, fill=fill).items():
                done[(method, f, seed)] = acc
                append_record(args.log, {"key": key, "method": method, "fraction": f, "seed": seed, "accuracy": acc})
            print(f"roar: {method} seed {seed} done", file=sys.stderr, flush=True)
    print(report(done, args.methods, args.fractions, args.seeds))
    print(f"\nTest accuracy (%) after retraining, mean and sd over {len(args.seeds)} retrainings (seeds "
          f"{', '.join(map(str, args.seeds))}) per cell; lower = the removed pixels mattered more. No pixels removed: "
          f"{100 * base_acc:.1f} %. {args.train} training / {args.test} test images of Fashion-MNIST, "
          f"{args.epochs} epochs per training, removed pixels set to the {'dataset mean' if args.fill == 'mean' else 'background (black)'}, target = the base model's prediction; "
          f"{time.perf_counter() - start:.0f} s, {torch.get_num_threads()} thread(s)"
          + (f"; {stale} logged results of other settings or code not used" if stale else "") + ".")
    return 0


def report(done: dict, methods, fractions, seeds) -> str:
    """Mean (sd) per cell, and which methods differ from random by more than their spread."""
    lines = ["| method | " + " | ".join(f"{100 * f:g} % removed" for f in fractions) + " | mean |",
             "|---|" + "---|" * (len(fractions) + 1)]
    means = {}
    for method in methods:
        cells, per_seed = [], []
        for f in fractions:
            vals = [done[(method, f, s)] for s in seeds if (method, f, s) in done]
            cells.append(f"{100 * np.mean(vals):.1f} ({100 * np.std(vals):.1f})" if vals else "-")
        for s in seeds:
            vals = [done[(method, f, s)] for f in fractions if (method, f, s) in done]
            if len(vals) == len(fractions):
                per_seed.append(np.mean(vals))
        if per_seed:
            means[method] = (np.mean(per_seed), np.std(per_seed))
        overall = f"{100 * means[method][0]:.1f} ({100 * means[method][1]:.1f})" if method in means else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {overall} |")
    if "random" in means:
        r, rs = means["random"]
        apart = [m for m, (v, s) in means.items() if m != "random" and abs(v - r) > s + rs]
        lines.append("")
        lines.append("Mean over the fractions differs from the random ranking by more than the two spreads (sd over "
                     "seeds) added: " + (", ".join(apart) if apart else "none") + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
