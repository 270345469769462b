"""What a new user runs into: greyscale models, phone photos, small images, bad folders and
devices, models fixed to one input size, an unresponsive target, figure labels, help text."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

HERE = Path(__file__).parent
GREY = ["--model", f"{HERE / 'models_gt.py'}:grey_net", "--input-size", "28", "--mean", "0.5", "--std", "0.5",
        "--no-progress"]
PLANTED = ["--model", f"{HERE / 'models_gt.py'}:PlantedConvNet", "--input-size", "16", "--no-progress"]


def test_greyscale_model_from_the_command_line_and_the_api(run_cli, tmp_path):
    code, _, err = run_cli("explain", "chelsea", *GREY, "--areas", "0.2", "--iterations", "3", "--out",
                           tmp_path / "e")
    assert code == 0, err
    assert np.load(tmp_path / "e" / "masks.npz")["input"].shape == (1, 28, 28)
    code, _, err = run_cli("channels", "chelsea", *GREY, "--layer", "3", "--areas", "0.25", "--iterations", "3",
                           "--out", tmp_path / "c")
    assert code == 0, err
    code, _, err = run_cli("invert", "chelsea", *GREY, "--layer", "3", "--from", tmp_path / "c", "--iterations",
                           "2", "--out", tmp_path / "i")  # the Fourier image, one channel
    assert code == 0, err
    assert np.load(tmp_path / "i" / "inversions.npz")["subset"].shape == (1, 28, 28)


def test_phone_photo_is_turned_upright(tmp_path):
    from chanattr import load_image

    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: the camera was turned; the photo shows rotated 90 degrees
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (20, 40)


def test_small_image_is_upscaled_with_a_one_line_warning(run_cli, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    code, _, err = run_cli("predict", str(tmp_path / "s.png"), *PLANTED[:-1])
    assert code == 0 and "warning: s is 12 x 10 px: upscaled to the model's 16 px input" in err
    assert err.count("\n") == 1


def test_bad_output_folder_and_failed_runs_leave_nothing(run_cli, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli("explain", "chelsea", *PLANTED, "--out", tmp_path / "file" / "sub")
    assert code == 2 and "cannot create the output folder" in err and err.count("\n") == 1
    code, _, err = run_cli("channels", "chelsea", *PLANTED, "--layer", "features.99", "--out", tmp_path / "new" / "x")
    assert code == 2 and not (tmp_path / "new").exists()  # the folders it made are gone again


@pytest.mark.parametrize("device, match", [("mps", "MPS is not available"), ("tpu", "unknown device"),
                                           ("cuda:7", "cuda")])
def test_devices_one_line(run_cli, tmp_path, device, match):
    code, _, err = run_cli("predict", "chelsea", *PLANTED[:-1], "--device", device)
    assert code == 2 and match in err and err.count("\n") == 1


def test_model_fixed_to_one_input_size(run_cli):
    code, _, err = run_cli("predict", "chelsea", "--model", "timm:vit_tiny_patch16_224", "--random-weights",
                           "--input-size", "160")
    assert code == 2 and "does not take 3 x 160 x 160 inputs" in err and err.count("\n") == 1


def test_unresponsive_target_is_warned(run_cli, tmp_path):
    model = ["--model", f"{HERE / 'models_gt.py'}:constant_net", "--input-size", "16", "--no-progress"]
    code, _, err = run_cli("explain", "chelsea", *model, "--areas", "0.2", "--iterations", "2", "--out", tmp_path)
    assert code == 0 and "does not respond to it" in err


def test_threads_and_defaults_in_help(run_cli, capsys):
    with pytest.raises(SystemExit):
        run_cli("channels", "--help")
    text = capsys.readouterr().out
    assert "--threads N" in text and "(default 0.02 0.05 0.1)" in text and "(default zero)" not in text.replace(
        "zero (default)", "")
    code, _, err = run_cli("predict", "chelsea", *PLANTED[:-1], "--threads", "1")
    assert code == 0, err


def test_figure_labels_follow_the_options():
    from chanattr.plotting import plot_channels, plot_explain

    rgb, masks = torch.rand(3, 16, 16), torch.rand(2, 16, 16)
    fig = plot_explain(rgb, masks, [0.1, 0.2], torch.rand(2, 3, 16, 16), perturbation="fade")
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "rest faded" in titles and "blurred" not in titles
    fig = plot_channels(torch.rand(1, 8), [0.25], variant="delete")
    assert "removed" in " ".join(ax.get_title() for ax in fig.axes)


def test_unfinished_demo_is_resumed_without_overwrite(tmp_path, monkeypatch):
    """An interrupted demo (no report.html) left files behind; rerunning it replaced nothing and
    refused. Now only a finished demo (report.html) needs --overwrite."""
    import chanattr.demo as demo
    from chanattr import ChanattrError

    (tmp_path / "explain").mkdir()
    (tmp_path / "explain" / "masks.npz").write_bytes(b"partial")

    class Reached(Exception):
        pass

    def stop(*a, **k):
        raise Reached

    monkeypatch.setattr("chanattr.models.load_model", stop)
    with pytest.raises(Reached):  # got past the folder checks to the work itself
        demo.run_demo(tmp_path)
    (tmp_path / "report.html").write_text("done")
    with pytest.raises(ChanattrError, match="report.html already exists"):
        demo.run_demo(tmp_path)


def test_a_module_run_twice_is_chosen_on_the_command_line(run_cli, tmp_path):
    """The error named only the API's call=; NAME#k now names the run everywhere."""
    twice = ["--model", f"{HERE / 'conftest.py'}:TwiceNet", "--input-size", "16", "--no-progress"]
    code, _, err = run_cli("channels", "chelsea", *twice, "--layer", "conv", "--areas", "0.34", "--iterations", "2",
                           "--out", tmp_path / "a")
    assert code == 2 and "conv#0, conv#1" in err and err.count("\n") == 1
    code, _, err = run_cli("channels", "chelsea", *twice, "--layer", "conv#1", "--areas", "0.34", "--iterations",
                           "2", "--out", tmp_path / "b")
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["layer"] == "conv#1"
    code, _, err = run_cli("invert", "chelsea", *twice, "--layer", "conv#1", "--from", tmp_path / "b",
                           "--iterations", "2", "--param", "pixel", "--out", tmp_path / "c")
    assert code == 0, err
    code, out, _ = run_cli("layers", *twice[:-1])
    assert "conv#0 .. conv#1" in out
