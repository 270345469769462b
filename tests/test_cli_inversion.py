"""The invert, visualize and demo commands, end to end (small models and few steps)."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


HERE = Path(__file__).parent
PLANTED = ["--model", f"{HERE / 'models_gt.py'}:PlantedConvNet", "--input-size", "16", "--no-progress"]


def test_invert_from_a_channels_folder(run_cli, tmp_path):
    ch = tmp_path / "ch"
    assert run_cli("channels", "chelsea", *PLANTED, "--layer", "features.2", "--areas", "0.1875",
               "--iterations", "150", "--target", "0", "--out", ch)[0] == 0
    out = tmp_path / "inv"
    code, stdout, err = run_cli("invert", "chelsea", *PLANTED, "--layer", "features.2", "--from", ch,
                            "--iterations", "5", "--param", "pixel", "--out", out)
    assert code == 0, err
    data = np.load(out / "inversions.npz")
    assert sorted(data["channels"].tolist()) == [3, 7, 11]
    for key in ("original", "all", "subset", "rest"):
        assert data[key].shape == (3, 16, 16) and data[key].dtype == np.float32
        assert 0 <= data[key].min() and data[key].max() <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"all": 16, "subset": 3, "rest": 13}
    assert (out / "inversion.png").stat().st_size > 5_000


def test_invert_all_and_explicit_channels(run_cli, tmp_path):
    code, _, err = run_cli("invert", "coffee", *PLANTED, "--layer", "features.0", "--channels", "all",
                       "--iterations", "3", "--out", tmp_path / "a")
    assert code == 0, err
    assert set(np.load(tmp_path / "a" / "inversions.npz").files) == {"original", "all", "channels", "unit"}
    code, _, err = run_cli("invert", "coffee", *PLANTED, "--layer", "features.0", "--channels", "1,2",
                       "--iterations", "3", "--out", tmp_path / "b")
    assert code == 0, err
    assert np.load(tmp_path / "b" / "inversions.npz")["channels"].tolist() == [1, 2]


@pytest.mark.parametrize("extra, match", [
    (["--channels", "1,x"], "--channels takes auto, all or indices"),
    (["--channels", "99"], "within 0..7"),
    (["--from", "/nonexistent"], "channels.npz not found"),
    (["--area", "2"], "outside (0, 1)"),
])
def test_invert_bad_input(run_cli, tmp_path, extra, match):
    code, _, err = run_cli("invert", "chelsea", *PLANTED, "--layer", "features.0", *extra, "--iterations", "2",
                       "--out", tmp_path)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_invert_from_another_layer_is_refused(run_cli, tmp_path):
    ch = tmp_path / "ch"
    run_cli("channels", "chelsea", *PLANTED, "--layer", "features.2", "--iterations", "5", "--out", ch)
    code, _, err = run_cli("invert", "chelsea", *PLANTED, "--layer", "features.0", "--from", ch,
                       "--out", tmp_path / "inv")
    assert code == 2 and "pass --layer features.2" in err


def test_visualize_grid(run_cli, tmp_path):
    code, out, err = run_cli("visualize", *PLANTED, "--layer", "features.2", "--channels", "3,7",
                         "--iterations", "4", "--out", tmp_path)
    assert code == 0, err
    data = np.load(tmp_path / "visualizations.npz")
    assert data["images"].shape == (2, 3, 16, 16) and data["channels"].tolist() == [3, 7]
    assert (tmp_path / "channels.png").stat().st_size > 5_000
    code, _, err = run_cli("visualize", *PLANTED, "--layer", "features.2", "--out", tmp_path / "x")
    assert code == 2 and "--channels" in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    from chanattr.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    path = run_demo(out, overwrite=True, explain_iterations=4, channel_iterations=10, invert_iterations=3,
                    explorer_iterations=2, progress=False, preset="feathered")  # its smaller search
    return path


def test_demo_report_is_self_contained(demo_report):
    page = demo_report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    explorer = (demo_report.parent / "explorer.html").read_text()
    assert explorer.count('type="radio"') == 3 and "<script" not in explorer and "explorer.html" in page
    for folder, files in (("explain", ["masks.npz", "summary.json", "explain.png"]),
                          ("channels", ["channels.npz", "summary.json", "channels.png"]),
                          ("invert", ["inversions.npz", "summary.json", "inversion.png"])):
        for f in files:
            assert (demo_report.parent / folder / f).is_file()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium) for a headless render")
def test_demo_report_renders_in_chromium(demo_report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000", f"--screenshot={shot}",
         demo_report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (3000, 1200)
    # the embedded figures rendered: many rows are far from plain white
    busy_rows = (img.std(axis=1) > 20).sum()
    assert busy_rows > 800


def test_prunegrad_command_and_invert_from_its_channels(run_cli, tmp_path):
    pg = tmp_path / "pg"
    code, stdout, err = run_cli("prunegrad", "chelsea", "coffee", *PLANTED[:-1], "--target", "0",
                            "--keep", "0.2", "--granularity", "channel", "--out", pg)
    assert code == 0, err
    for name in ("chelsea", "coffee"):
        data = np.load(pg / name / "saliency.npz")
        assert data["saliency"].shape == (16, 16) and data["saliency"].dtype == np.float32
        assert int(data["target"]) == 0 and data["input"].shape == (3, 16, 16)
        summary = json.loads((pg / name / "summary.json").read_text())
        assert summary["keep"] == 0.2 and summary["granularity"] == "channel"
        ch = summary["channel_attribution"]
        assert ch["layer"] == data["kept_layers"][-1]
        assert len(ch["channels"]) == int(data["kept_counts"][-1]) > 0
        assert len(ch["channel_curve"]["k"]) == len(ch["channel_curve"]["kept"])
        assert (pg / name / "prunegrad.png").stat().st_size > 5_000
    layer = str(np.load(pg / "chelsea" / "saliency.npz")["kept_layers"][-1])
    kept = json.loads((pg / "chelsea" / "summary.json").read_text())["channel_attribution"]["channels"]
    assert {3, 7, 11} <= set(kept)  # the planted channels carry class 0
    out = tmp_path / "inv"
    code, _, err = run_cli("invert", "chelsea", *PLANTED, "--layer", layer, "--from", pg / "chelsea",
                       "--iterations", "3", "--param", "pixel", "--out", out)
    assert code == 0, err
    assert sorted(np.load(out / "inversions.npz")["channels"].tolist()) == sorted(kept)


@pytest.mark.parametrize("extra, match", [(["--keep", "0"], "outside (0, 1]"), (["--keep", "1.5"], "outside (0, 1]"),
                                          (["--layers", "nope"], "nope")])
def test_prunegrad_command_bad_input(run_cli, tmp_path, extra, match):
    code, _, err = run_cli("prunegrad", "chelsea", *PLANTED[:-1], *extra, "--out", tmp_path / "x")
    assert code == 2 and match in err and err.count("\n") == 1


def test_seeded_weights_and_invert_from_checks_the_network_and_image(run_cli, tmp_path):
    """--seed makes a freshly initialised model the same network each time (it was drawn anew by
    every command, so channels then invert --from silently mixed two networks); invert --from
    refuses a folder made with another network or another image."""
    model = ["--model", f"{HERE / 'models_gt.py'}:random_conv", "--input-size", "16", "--no-progress"]
    ch = tmp_path / "ch"
    assert run_cli("channels", "chelsea", *model, "--seed", "1", "--layer", "2", "--areas", "0.25",
                   "--iterations", "5", "--out", ch)[0] == 0
    summary = json.loads((ch / "summary.json").read_text())
    assert summary["seed"] == 1 and len(summary["model_fingerprint"]) == 12
    inv = ["--layer", "2", "--from", ch, "--iterations", "2", "--param", "pixel"]
    code, _, err = run_cli("invert", "chelsea", *model, "--seed", "2", *inv, "--out", tmp_path / "a")
    assert code == 2 and "another network" in err
    code, _, err = run_cli("invert", "coffee", *model, "--seed", "1", *inv, "--out", tmp_path / "b")
    assert code == 2 and "another image" in err
    code, _, err = run_cli("invert", "chelsea", *model, "--seed", "1", *inv, "--out", tmp_path / "c")
    assert code == 0, err


def test_load_model_seed_gives_the_same_network():
    from chanattr import load_model

    spec = f"{HERE / 'models_gt.py'}:random_conv"
    a, b, c = (load_model(spec, input_size=16, seed=s) for s in (3, 3, 4))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_prunegrad_writes_channels_when_the_last_module_runs_twice(run_cli, tmp_path):
    """The last pruned module runs twice: channels.npz comes from the last module that runs once
    (it was not written at all), and the summary reports the pruned network's own logit and the
    kept fraction of every pruned site."""
    model = ["--model", f"{HERE / 'models_gt.py'}:ReusedActNet", "--input-size", "16"]
    code, _, err = run_cli("prunegrad", "chelsea", *model, "--keep", "0.3", "--out", tmp_path)
    assert code == 0, err
    assert np.load(tmp_path / "channels.npz")["layer"].item() == "act1"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["channel_attribution"]["layer"] == "act1"
    assert set(summary["kept_fraction_per_layer"]) == {"act1", "act2#0", "act2#1"}
    assert summary["criterion"] == "abs" and summary["pruned_layers"] == ["act1", "act2"]
    assert isinstance(summary["pruned_target_logit"], float) and 0 <= summary["pruned_target_probability"] <= 1


def test_visualize_from_refuses_another_network(run_cli, tmp_path):
    model = ["--model", f"{HERE / 'models_gt.py'}:random_conv", "--input-size", "16", "--no-progress"]
    ch = tmp_path / "ch"
    assert run_cli("channels", "chelsea", *model, "--seed", "1", "--layer", "2", "--areas", "0.25",
                   "--iterations", "3", "--out", ch)[0] == 0
    code, _, err = run_cli("visualize", *model, "--seed", "5", "--layer", "2", "--from", ch, "--iterations", "2",
                           "--out", tmp_path / "v")
    assert code == 2 and "another network" in err
