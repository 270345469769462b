"""The explain and channels commands, end to end, on small models (fast)."""

import json
from pathlib import Path

import numpy as np
import pytest

from chanattr.cli import main

HERE = Path(__file__).parent
REGION = ["--model", f"{HERE / 'models_gt.py'}:region_net", "--input-size", "48", "--no-progress"]
PLANTED = ["--model", f"{HERE / 'models_gt.py'}:PlantedConvNet", "--input-size", "16", "--no-progress"]


def test_explain_writes_masks_summary_and_figure(run_cli, tmp_path):
    code, out, err = run_cli("explain", "chelsea", "coffee", *REGION, "--areas", "0.1", "0.2", "0.3",
                         "--iterations", "12", "--target", "0", "--out", tmp_path)
    assert code == 0, err
    for name in ("chelsea", "coffee"):
        folder = tmp_path / name
        assert str(folder) in out
        data = np.load(folder / "masks.npz")
        assert data["masks"].shape == (3, 48, 48) and data["masks"].dtype == np.float32
        assert 0 <= data["masks"].min() and data["masks"].max() <= 1
        assert data["areas"].dtype == np.float32 and data["areas"].tolist() == pytest.approx([0.1, 0.2, 0.3])
        assert data["input"].shape == (3, 48, 48) and data["input"].dtype == np.float32
        assert int(data["target"]) == 0
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["target"] == 0 and summary["class_name"] == "0" and summary["variant"] == "preserve"
        assert len(summary["final_reward"]) == 3 and len(summary["mask_area"]) == 3
        assert summary["iterations"] == 12 and summary["seconds"] > 0
        assert len(summary["area_curve"]["areas"]) == len(summary["area_curve"]["best_score"])
        assert (folder / "explain.png").stat().st_size > 10_000


def test_explain_input_is_exactly_what_the_model_saw(run_cli, tmp_path):
    from chanattr import load_model, prepare_image

    code, _, _ = run_cli("explain", "astronaut", *REGION, "--areas", "0.2", "--iterations", "3", "--out", tmp_path)
    assert code == 0
    lm = load_model(f"{HERE / 'models_gt.py'}:region_net", input_size=48)
    expected = prepare_image("astronaut", lm.preprocessing).input.numpy()
    assert np.array_equal(np.load(tmp_path / "masks.npz")["input"], expected)


def test_explain_refuses_to_overwrite(run_cli, tmp_path):
    args = ["explain", "chelsea", *REGION, "--areas", "0.2", "--iterations", "2", "--out", tmp_path]
    assert run_cli(*args)[0] == 0
    code, _, err = run_cli(*args)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert run_cli(*args, "--overwrite")[0] == 0


@pytest.mark.parametrize("extra, match", [
    (["--areas", "1.5"], "outside (0, 1)"),
    (["--areas", "0"], "outside (0, 1)"),
    (["--target", "5"], "outside this model's classes 0..1"),
    (["--target", "cat"], "class index or auto"),
    (["--iterations", "0"], "at least 1"),
])
def test_explain_bad_input(run_cli, tmp_path, extra, match):
    code, _, err = run_cli("explain", "chelsea", *REGION, *extra, "--out", tmp_path)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_explain_unknown_variant_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["explain", "chelsea", "--variant", "keep", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_channels_writes_outputs(run_cli, tmp_path):
    code, out, err = run_cli("channels", "chelsea", *PLANTED, "--layer", "features.2", "--areas", "0.1875",
                         "--iterations", "150", "--target", "0", "--out", tmp_path)
    assert code == 0, err
    data = np.load(tmp_path / "channels.npz")
    assert data["masks"].shape == (1, 16) and data["masks"].dtype == np.float32
    assert str(data["layer"]) == "features.2" and int(data["target"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["path"] == "split" and summary["channels"] == 16
    area = summary["areas"][0]
    assert sorted(area["channels"]) == [3, 7, 11]  # the planted channels
    assert area["score_only_these_kept"] > area["score_these_removed"]
    curve = summary["channel_curve"]
    assert curve["k"][-1] == 16 and curve["kept"][-1] == pytest.approx(curve["full"], abs=1e-4)
    assert (tmp_path / "channels.png").stat().st_size > 10_000
    assert "split path" in out


def test_channels_bad_layer(run_cli, tmp_path):
    code, _, err = run_cli("channels", "chelsea", *PLANTED, "--layer", "features.20", "--out", tmp_path)
    assert code == 2 and "close names: features.2" in err and len(err.strip().splitlines()) == 1



def test_explain_paper_preset_is_recorded(run_cli, tmp_path):
    code, _, err = run_cli("explain", "chelsea", *REGION, "--areas", "0.2", "--preset", "paper",
                           "--iterations", "20", "--target", "0", "--out", tmp_path)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preset"] == "paper" and summary["iterations"] == 20


VIT = ["--input-size", "16", "--no-progress", "--target", "0", "--iterations", "20"]


@pytest.mark.parametrize("factory, layer, unit, planted", [
    ("PlantedViT", "blocks.0", "hidden", "JOINT"), ("planted_vit_heads", "blocks.0.attn", "heads", "JOINT_HEADS")])
def test_channels_unit_option_on_a_transformer(run_cli, tmp_path, factory, layer, unit, planted):
    import models_gt

    count = 8 if unit == "heads" else 16
    code, out, err = run_cli("channels", "chelsea", "--model", f"{HERE / 'models_gt.py'}:{factory}", *VIT,
                             "--layer", layer, "--unit", unit, "--areas", str(3 / count), "--out", tmp_path)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["unit"] == unit and summary["units"] == count and summary["layout"] == "ntc"
    assert set(summary["areas"][0]["channels"]) < set(getattr(models_gt, planted))
    data = np.load(tmp_path / "channels.npz")
    assert str(data["unit"]) == unit and data["masks"].shape == (1, count)
    assert f"{count} {unit}, ntc" in out
    # inversion reads the same format: the salient units, of the folder's kind
    code, out, err = run_cli("invert", "chelsea", "--model", f"{HERE / 'models_gt.py'}:{factory}", "--input-size",
                             "16", "--layer", layer, "--from", tmp_path, "--out", tmp_path / "inv", "--iterations",
                             "3", "--no-progress")
    assert code == 0, err
    inv = json.loads((tmp_path / "inv" / "summary.json").read_text())
    assert inv["unit"] == unit and inv["counts"]["subset"] == 3 and inv["units"] == count
    assert f"3 {unit}" in out or f"'subset': 3" in out
    # and so does visualisation (activation maximisation of the top units)
    code, out, err = run_cli("visualize", "--model", f"{HERE / 'models_gt.py'}:{factory}", "--input-size", "16",
                             "--layer", layer, "--from", tmp_path, "--top", "2", "--iterations", "2", "--out",
                             tmp_path / "vis", "--no-progress")
    assert code == 0, err
    assert f"visualised 2 {unit} of {layer}" in out and (tmp_path / "vis" / "visualizations.npz").is_file()
    code, _, err = run_cli("visualize", "--model", f"{HERE / 'models_gt.py'}:{factory}", "--input-size", "16",
                           "--layer", layer, "--from", tmp_path, "--unit", "tokens", "--out", tmp_path / "vis2")
    assert code == 2 and f"holds {unit}, not tokens" in err


def test_channels_unit_errors_and_model_output_option(run_cli, tmp_path):
    model = ["--model", f"{HERE / 'models_gt.py'}:PlantedViT", *VIT]
    code, _, err = run_cli("channels", "chelsea", *model, "--layer", "blocks.0", "--out", tmp_path / "a")
    assert code == 2 and "use --unit hidden" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("channels", "chelsea", *PLANTED, "--layer", "features.2", "--unit", "heads",
                           "--out", tmp_path / "b")
    assert code == 2 and "not an attention module with heads" in err
    assert not (tmp_path / "b").exists()  # a failed run leaves no folder
    dict_model = ["--model", f"{HERE / 'models_gt.py'}:DictViT", *VIT]
    code, out, err = run_cli("channels", "chelsea", *dict_model, "--layer", "block", "--unit", "hidden",
                             "--areas", "0.1875", "--out", tmp_path / "c")
    assert code == 0, err
    code, _, err = run_cli("channels", "chelsea", *dict_model, "--output", "scores", "--layer", "block",
                           "--unit", "hidden", "--out", tmp_path / "d")
    assert code == 2 and "no element 'scores': use one of hidden_states, logits" in err
    code, out, err = run_cli("layers", *dict_model[:4], "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["block"]["container"] == "tuple" and rows["block"]["units"] == {"hidden": 16, "tokens": 16}
    assert rows["inner.blocks.0.attn"]["units"]["heads"] == 8


def test_target_unit_and_target_region_on_the_command_line(run_cli, tmp_path):
    """--target-unit LAYER:INDEX and --target-region CLASS:TOP,LEFT,H,W explain one scalar, named
    in the summary (the search alone here: the plumbing; the API tests check what is found)."""
    common = ["--input-size", "32", "--no-progress", "--iterations", "1", "--areas", "0.1"]
    code, out, err = run_cli("explain", "chelsea", "--model", f"{HERE / 'models_gt.py'}:UnitBoxNet", *common,
                             "--target-unit", "energy:0", "--out", tmp_path / "u")
    assert code == 0, err
    assert json.loads((tmp_path / "u" / "summary.json").read_text())["class_name"] == "unit energy:0"
    code, out, err = run_cli("explain", "chelsea", "--model", f"{HERE / 'models_gt.py'}:BoxSegmenter", *common,
                             "--output", "out", "--target-region", "1:4,14,10,10", "--out", tmp_path / "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["class_name"] == "class 1 in [4, 14, 10, 10]"
    code, _, err = run_cli("explain", "chelsea", "--model", f"{HERE / 'models_gt.py'}:BoxSegmenter", *common,
                           "--output", "out", "--target-region", "1:4,14", "--out", tmp_path / "bad")
    assert code == 2 and "--target-region takes CLASS:TOP,LEFT,H,W" in err


def test_prunegrad_heads_on_the_command_line(run_cli, tmp_path):
    code, out, err = run_cli("prunegrad", "chelsea", "--model", f"{HERE / 'models_gt.py'}:planted_vit_heads",
                             "--input-size", "16", "--granularity", "heads", "--keep", "0.5", "--out", tmp_path)
    assert code == 0, err
    assert "4 heads kept at blocks.0.attn" in out
    data = np.load(tmp_path / "channels.npz")
    assert str(data["unit"]) == "heads" and data["masks"].shape == (1, 8)
