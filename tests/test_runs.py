"""chanattr run: datasets sharded over torchrun's processes, resumable; class-level unit masks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from chanattr.class_units import class_unit_mask
from chanattr.runs import read_item, read_results
from chanattr.items import read_items
from chanattr.units.space import unit_extremal_perturbation

HERE = Path(__file__).parent
JOINT = ["--model", f"{HERE / 'models_gt.py'}:JointChannelNet", "--input-size", "16", "--threads", "1",
         "--no-progress", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six small photos in a folder (the bundled samples, two of them also turned)."""
    from chanattr.images import load_image

    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        load_image(name).resize((40, 40)).save(folder / f"{name}.png")
    for name in ("chelsea", "rocket"):
        load_image(name).resize((40, 40)).rotate(90).save(folder / f"{name}_turned.jpg")
    return folder


def _torchrun(*argv) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "chanattr",
           *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def _same_items(a: Path, b: Path) -> None:
    items = json.loads((a / "manifest.json").read_text())["items"]
    assert items == json.loads((b / "manifest.json").read_text())["items"]
    for ident in items:
        x, y = np.load(a / "items" / f"{ident}.npz"), np.load(b / "items" / f"{ident}.npz")
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            if k != "_rows":
                assert np.array_equal(x[k], y[k]), (ident, k)
        assert _timeless(json.loads(str(x["_rows"]))) == _timeless(json.loads(str(y["_rows"])))


def _timeless(rows: list[dict]) -> list[dict]:
    """Rows without their timing (seconds), the one column that differs between two runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_two_processes_give_the_results_of_one(run_cli, photos, tmp_path):
    """One torchrun launch checks both kinds of work: the per-image masks (items) and the class
    mask (rewards and gradients summed over the processes)."""
    args = ["--images", photos, "--layer", "features.1", "--areas", "0.2", "0.3", "--iterations", "20",
            "--batch-images", "4", "--class", "0", *JOINT]
    code, out, err = run_cli("run", "class-channels", *args, "--out", tmp_path / "one")
    assert code == 0, err
    assert "6 items (0 finished earlier), 1 process(es)" in out and "class mask" in out
    two = _torchrun("run", "class-channels", *args, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    _same_items(tmp_path / "one", tmp_path / "two")
    rows = read_results(tmp_path / "one")
    assert _timeless(rows) == _timeless(read_results(tmp_path / "two"))
    assert len(rows) == 12 and {r["area"] for r in rows} == {0.2, 0.3}
    assert all(r["unit"] == "channels" and r["units"] == len(r["kept"]) and r["target"] == 0 for r in rows)
    # the joint channels of the planted model: 3 of them at area 0.2 (3 of 16 channels)
    assert all(set(r["kept"]) < {2, 5, 9, 13} for r in rows if r["area"] == 0.2)
    a, b = np.load(tmp_path / "one" / "class_channels.npz"), np.load(tmp_path / "two" / "class_channels.npz")
    for k in ("masks", "image_mean", "image_std"):
        assert np.array_equal(a[k], b[k]), k
    assert a["masks"].shape == (2, 16) and a["image_mean"].shape == (2, 16)
    summary = json.loads((tmp_path / "two" / "class_summary.json").read_text())
    assert summary["images"] == 6 and summary["processes"] == 2 and set(summary["areas"][0]["kept"]) < {2, 5, 9, 13}
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["method"] == "class-channels" and manifest["run"]["processes"] == 2
    assert manifest["settings"]["layer"] == "features.1" and manifest["code"] and manifest["model"]["fingerprint"]
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "two" / "processes").glob("rank-*.json"))]
    assert [s["items_computed"] for s in stats] == [4, 2] and all(s["peak_memory_mib"] > 0 for s in stats)


def test_killed_run_resumes_without_losing_or_repeating(run_cli, photos, tmp_path):
    slow = ["--model", f"{HERE / 'models_gt.py'}:SlowJointChannelNet", *JOINT[2:]]
    args = ["--images", photos, "--layer", "features.1", "--areas", "0.2", "--iterations", "15",
            "--batch-images", "2", *slow]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "chanattr", "run", "channels", *map(str, args), "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "items").glob("[!.]*.npz")):  # a finished item, not a .tmp
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.stem for p in (out / "items").glob("[!.]*.npz"))
    assert 1 <= len(done) < 6, "the kill should land half-way"
    assert not (out / "results.parquet").exists()
    ids = json.loads((out / "manifest.json").read_text())["items"]
    finished = [i for b in (ids[s : s + 2] for s in range(0, 6, 2)) if set(b) <= set(done) for i in b]
    stamps = {i: (out / "items" / f"{i}.npz").stat().st_mtime_ns for i in finished}
    code, text, err = run_cli("run", "channels", *args, "--out", out)  # the same command resumes
    assert code == 0, err
    assert f"({len(finished)} finished earlier)" in text
    for i, stamp in stamps.items():  # finished batches are not redone (a half-written batch is, whole)
        assert (out / "items" / f"{i}.npz").stat().st_mtime_ns == stamp
    assert not list((out / "items").glob(".*"))  # no half-written file left
    code, _, err = run_cli("run", "channels", *args, "--out", tmp_path / "whole")
    assert code == 0, err
    _same_items(out, tmp_path / "whole")
    rows = read_results(out)
    assert sorted(r["item"] for r in rows) == sorted(r["item"] for r in read_results(tmp_path / "whole"))
    assert len(rows) == len({r["item"] for r in rows}) == 6


def test_changed_settings_are_refused_unless_overwrite(run_cli, photos, tmp_path):
    args = ["--images", photos, "--layer", "features.1", "--iterations", "5", *JOINT, "--out", tmp_path / "r"]
    assert run_cli("run", "channels", *args, "--areas", "0.2")[0] == 0
    code, out, _ = run_cli("run", "channels", *args, "--areas", "0.2")  # the same: all finished, nothing redone
    assert code == 0 and "(6 finished earlier)" in out
    code, _, err = run_cli("run", "channels", *args, "--areas", "0.3")
    assert code == 2 and "differs in settings (areas: [0.2] -> [0.3])" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run_cli("run", "channels", *args, "--areas", "0.3", "--overwrite")
    assert code == 0 and "(0 finished earlier)" in out
    assert {r["area"] for r in read_results(tmp_path / "r")} == {0.3}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    code, _, err = run_cli("run", "channels", *args[:-1], tmp_path / "mine", "--areas", "0.2")
    assert code == 2 and "holds no run" in err


def test_merge_and_unfinished_runs(run_cli, photos, tmp_path):
    args = ["--images", photos, *JOINT, "--score-areas", "0.1", "--out", tmp_path]
    assert run_cli("run", "gradient", *args)[0] == 0
    rows = read_results(tmp_path)
    assert len(rows) == 6 and all(r["area"] == 0.1 and np.isfinite(r["score"]) for r in rows)
    (tmp_path / "results.parquet").unlink()
    code, out, _ = run_cli("merge", tmp_path)
    assert code == 0 and "6 rows" in out and read_results(tmp_path) == rows  # the same files, merged again
    next((tmp_path / "items").glob("*.npz")).unlink()
    code, _, err = run_cli("merge", tmp_path)
    assert code == 2 and "1 of 6 items" in err and "run the same command again" in err


def test_items_from_a_list_and_from_coco(run_cli, photos, tmp_path):
    (tmp_path / "list.txt").write_text(f"# two photos\n{photos / 'coffee.png'}\nchelsea\n")
    assert [it.id for it in read_items(str(tmp_path / "list.txt")).items] == ["coffee", "chelsea"]
    # a COCO-style folder: two photos with a cat box (COCO class 0 here), one with a box outside the crop
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "boxes").mkdir()
    (coco / "boxes_classes.yaml").write_text("names:\n  0: cat\n  1: person\n")
    for name, line in [("a", "0 0.5 0.5 0.4 0.4"), ("b", "0 0.25 0.25 0.2 0.2\n1 0.5 0.5 0.2 0.2"),
                       ("c", "0 0.1 0.5 0.1 0.2")]:
        Image.open(photos / "chelsea.png").resize((80, 40) if name == "c" else (40, 40)).save(
            coco / "images" / f"{name}.jpg")  # c is wide: its centre crop leaves out the left quarter
        (coco / "boxes" / f"{name}.txt").write_text(line)
    source = read_items(f"coco:{coco}", input_size=32)
    assert [it.id for it in source.items] == ["a-cat", "b-cat"]  # person has no ImageNet class; c's cat is cropped
    code, _, err = run_cli("run", "gradcam", "--images", f"coco:{coco}", "--model",
                           f"{HERE / 'models_gt.py'}:tiny_imagenet", "--input-size", "32", "--no-progress",
                           "--score-areas", "0.2", "--out", tmp_path / "run")
    assert code == 0, err
    rows = read_results(tmp_path / "run")
    assert [r["class"] for r in rows] == ["cat", "cat"]
    assert all(281 <= r["target"] <= 285 for r in rows)  # the most probable of ImageNet's cats
    assert all(isinstance(r["hit_box"], bool) and 0 <= r["point_row"] < 32 for r in rows)
    a = read_item(tmp_path / "run", source.items[0])[0]["saliency"]
    row, col = divmod(int(np.argmax(a)), 32)
    assert (rows[0]["point_row"], rows[0]["point_col"]) == (row, col)
    # the cat box of photo a covers 0.3-0.7 of the 32 px input: pixels 10..21 (centres inside it)
    dr, dc = max(0, 10 - row, row - 21), max(0, 10 - col, col - 21)
    assert rows[0]["hit_box"] == (dr * dr + dc * dc <= 15 * 15)


class NoiseAndClass(nn.Module):
    """Class 0 = 3 min(a0, a1, a2) + the sum of the other units of ``features`` (16 units, the
    input itself). Every image carries the class on units 0-2 (1 each) and has its own noise
    unit (5) among units 3-10: each image alone is best kept by its noise unit (5.2 > 3 with 3
    units), the class as a whole by units 0-2 (3 per image, against at most 2.1 on average)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x):
        a = self.features(x).flatten(1)
        s = 3 * a[:, :3].min(1).values + a[:, 3:].sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def _noise_and_class_images(n: int = 8) -> torch.Tensor:
    x = torch.full((n, 16, 1, 1), 0.1)
    x[:, :3] = 1.0
    for i in range(n):
        x[i, 3 + i] = 5.0
    return x


def test_class_mask_finds_the_shared_units_the_per_image_masks_miss():
    model, x = NoiseAndClass().eval(), _noise_and_class_images()
    shared = class_unit_mask(model, x, 0, "features", [3 / 16])
    assert set(shared.kept_units(0, 0)) == {0, 1, 2}
    assert float(shared.binary_reward[0, 0]) == pytest.approx(3.0)
    per_image = unit_extremal_perturbation(model, x, 0, "features", [3 / 16])
    assert (per_image.binary_reward[:, 0] > 3.0).all()  # alone, each image is better served by its noise unit
    mean = per_image.masks[:, 0].mean(0)
    assert set(mean.argsort(descending=True)[:3].tolist()) != {0, 1, 2}  # averaging them does not find the class
    assert shared.masks.shape == (1, 1, 16) and shared.info["images"] == 8


def test_class_channels_run_and_invert_from_it(run_cli, photos, tmp_path):
    args = ["--images", photos, "--layer", "features.1", "--areas", "0.2", "--iterations", "15", "--class", "0",
            *JOINT]
    code, out, err = run_cli("run", "class-channels", *args, "--out", tmp_path / "one")
    assert code == 0 and "class mask" in out, err
    summary = json.loads((tmp_path / "one" / "class_summary.json").read_text())
    assert summary["images"] == 6 and set(summary["areas"][0]["kept"]) < {2, 5, 9, 13}
    code, out, err = run_cli("invert", "chelsea", "--layer", "features.1", "--from", tmp_path / "one",
                             "--iterations", "3", *JOINT[:4], "--no-progress", "--out", tmp_path / "inv")
    assert code == 0, err
    inv = json.loads((tmp_path / "inv" / "summary.json").read_text())
    assert sorted(inv["subset"]) == sorted(summary["areas"][0]["kept"])
    code, _, err = run_cli("run", "class-channels", *args, "--rows-only", "--out", tmp_path / "two")
    assert code == 2 and "drop --rows-only" in err


def test_report_explorer_of_a_channels_folder(run_cli, tmp_path):
    folder = tmp_path / "ch"
    model = JOINT[:4]
    code, _, err = run_cli("channels", "chelsea", *model, "--layer", "features.1", "--areas", "0.2", "--iterations",
                           "10", "--target", "0", "--no-progress", "--out", folder)
    assert code == 0, err
    code, out, err = run_cli("report", folder, *model, "--vis-iterations", "4", "--invert-iterations", "4",
                             "--iterations", "10", "--units", "3")
    assert code == 0, err
    page = (folder / "explorer.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert page.count('type="radio"') == 2  # the model's two classes, the folder's target first (checked)
    assert 'id="c0" checked' in page and ">0 (" in page
    # per unit: its mask value, the logit without it, its activation and visualisation images
    assert page.count("data:image/png;base64,") == 2 * (1 + 1 + 3 * 2)
    summary = json.loads((folder / "summary.json").read_text())
    kept = summary["areas"][0]["channels"]
    assert f"<tr><td>{kept[0]}</td><td>" in page
    code, _, err = run_cli("report", folder, *model)
    assert code == 2 and "--overwrite" in err


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Chromium (Debian package chromium) for a headless render")
def test_report_explorer_renders_in_chromium(run_cli, tmp_path):
    folder = tmp_path / "ch"
    model = JOINT[:4]
    assert run_cli("channels", "chelsea", *model, "--layer", "features.1", "--areas", "0.2", "--iterations", "5",
                   "--target", "0", "--no-progress", "--out", folder)[0] == 0
    assert run_cli("report", folder, *model, "--vis-iterations", "4", "--invert-iterations", "4",
                   "--iterations", "5")[0] == 0
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [shutil.which("chromium") or shutil.which("chromium-browser"), "--headless", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400", f"--screenshot={shot}",
         (folder / "explorer.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (1400, 1000)
    assert (img.std(axis=1) > 20).sum() > 300  # the photo, the inversion and the units' images rendered


@pytest.mark.parametrize("method, options, arrays, columns", [
    ("explain", ["--areas", "0.1", "0.3", "--iterations", "3", "--search-side", "5", "--search-parts", "1",
                 "--feather", "2"],
     {"masks": (2, 16, 16), "saliency": (16, 16)},
     {"final_reward", "iterations", "feathered_score"}),
    ("prunegrad", ["--keep", "0.5", "--score-areas", "0.1", "0.3"], {"saliency": (16, 16)}, {"pruned_logit"}),
    ("invert", ["--layer", "features.1", "--channels", "2,5,9", "--iterations", "2"],
     {"inversion": (3, 16, 16), "kept": (3,)}, {"relative_error", "kept"}),
    ("rise", ["--rise-masks", "16", "--score-areas", "0.2"], {"saliency": (16, 16)}, set()),
])
def test_every_method_runs_over_a_folder(run_cli, photos, tmp_path, method, options, arrays, columns):
    code, _, err = run_cli("run", method, "--images", photos, *JOINT, "--batch-images", "3", *options,
                           "--out", tmp_path)
    assert code == 0, err
    rows = read_results(tmp_path)
    items = read_items(str(photos)).items
    per_item = len(rows) // len(items)
    assert len(rows) == per_item * len(items) and {r["item"] for r in rows} == {it.id for it in items}
    assert columns <= set(rows[0]) and all(r["target"] == r["target"] for r in rows)
    for it in items:
        saved, _ = read_item(tmp_path, it)
        assert {k: v.shape for k, v in saved.items()} == arrays
    if "score" in rows[0]:
        assert all(np.isfinite(r["score"]) for r in rows)
    if "feathered_score" in rows[0]:  # explain --feather: the plain extremal score beside the optimised one
        assert json.loads((tmp_path / "manifest.json").read_text())["settings"]["feather"] == 2.0


@pytest.mark.parametrize("target, match", [("cat", "class index or auto"), ("7", "outside the model's 2 classes")])
def test_a_bad_target_is_one_line_before_any_work(run_cli, photos, tmp_path, target, match):
    code, _, err = run_cli("run", "gradcam", "--images", photos, *JOINT, "--target", target, "--out", tmp_path)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list((tmp_path / "items").glob("*.npz"))


def test_search_options_go_with_the_fast_preset(run_cli, tmp_path):
    code, _, err = run_cli("explain", "chelsea", *JOINT, "--preset", "paper", "--search-side", "5", "--out", tmp_path)
    assert code == 2 and "paper preset has none" in err


def test_report_explorer_of_a_run_item(run_cli, photos, tmp_path):
    args = ["--images", photos, "--layer", "features.1", "--areas", "0.2", "--iterations", "5", *JOINT]
    assert run_cli("run", "channels", *args, "--out", tmp_path / "run")[0] == 0
    code, out, err = run_cli("report", tmp_path / "run", *JOINT[:4], "--item", "coffee", "--vis-iterations", "0",
                             "--invert-iterations", "0", "--iterations", "5", "--units", "2")
    assert code == 0, err
    page = (tmp_path / "run" / "explorer-coffee.html").read_text()
    kept = next(r["kept"] for r in read_results(tmp_path / "run") if r["item"] == "coffee")
    assert f"<tr><td>{kept[0]}</td><td>" in page or f"<tr><td>{kept[1]}</td><td>" in page
    code, _, err = run_cli("report", tmp_path / "run", *JOINT[:4], "--item", "nope")
    assert code == 2 and "no item 'nope'" in err


def test_report_explorer_of_a_transformers_hidden_units(run_cli, tmp_path):
    vit = ["--model", f"{HERE / 'models_gt.py'}:PlantedViT", "--input-size", "16", "--no-progress"]
    assert run_cli("channels", "chelsea", *vit, "--layer", "blocks.0", "--unit", "hidden", "--areas", "0.2",
                   "--iterations", "5", "--target", "0", "--out", tmp_path / "h")[0] == 0
    code, _, err = run_cli("report", tmp_path / "h", *vit[:4], "--vis-iterations", "0", "--invert-iterations", "0",
                           "--iterations", "5", "--units", "3", "--top-classes", "1")
    assert code == 0, err
    page = (tmp_path / "h" / "explorer.html").read_text()
    assert page.count('alt="activation ') == 3  # hidden units over the 4 x 4 patch grid


def test_ranks_and_devices_come_from_torchruns_environment(monkeypatch):
    from chanattr.distributed import Processes, process_device, processes_from_environment
    from chanattr.errors import ChanattrError

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert processes_from_environment() == Processes(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    procs = processes_from_environment()
    assert procs == Processes(3, 4, 1) and procs.distributed and not procs.main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert process_device("auto", procs) == "cuda:1" and process_device("cuda", procs) == "cuda:1"
    assert process_device("cpu", procs) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device("auto", procs) == "cpu"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ChanattrError, match="outside"):
        processes_from_environment()


def test_a_run_can_key_its_code_version_on_the_files_it_runs(photos, tmp_path):
    from chanattr.cli import build_parser, model_from_args
    from chanattr.distributed import Processes
    from chanattr.errors import ChanattrError
    from chanattr.run_methods import method_function
    from chanattr.runs import code_version, run_items

    args = build_parser().parse_args(["run", "gradient", "--images", str(photos), "--out", str(tmp_path), *JOINT])
    lm = model_from_args(args)
    source = read_items(str(photos))
    files = ["chanattr/baselines.py", "chanattr/runs.py"]
    run_items("gradient", method_function("gradient"), args, lm, source, tmp_path, Processes(), device="cpu",
              progress=False, code_files=files)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["code"] == code_version(files) != code_version() and manifest["code_files"] == files
    with pytest.raises(ChanattrError, match="the files its code version covers"):
        run_items("gradient", method_function("gradient"), args, lm, source, tmp_path, Processes(), device="cpu",
                  progress=False)
    with pytest.raises(ChanattrError, match="not found"):
        code_version(["chanattr/nope.py"])
