"""Hugging Face image classifiers, offline: a tiny random ViT saved with save_pretrained into a
temporary folder (nothing downloaded), loaded with --model hf:PATH."""

import json

import numpy as np
import pytest
import torch
import transformers

from chanattr import ChanattrError, UnitSpace, load_model, model_state, unit_extremal_perturbation


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hfvit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=5,
                                    id2label={i: f"thing{i}" for i in range(5)})
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def test_hf_folder_loads_with_its_preprocessing_labels_and_logits(hf_folder):
    lm = load_model(f"hf:{hf_folder}")
    assert lm.preprocessing.input_size == 32 and lm.preprocessing.mean == (0.4, 0.5, 0.6)
    assert lm.class_names == [f"thing{i}" for i in range(5)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert lm.model(x).shape == (2, 5)  # the ModelOutput's logits
    names = [n for n, _ in lm.model.named_modules()]
    assert "vit.layers.1.attention.o_proj" in names  # layer names as in the model itself


def test_every_unit_kind_runs_on_a_hugging_face_vit(hf_folder):
    lm = load_model(f"hf:{hf_folder}")
    x = torch.randn(1, 3, 32, 32)
    before = model_state(lm.model)
    for layer, unit, count in [("vit.layers.0", "hidden", 32), ("vit.layers.0", "tokens", 16),
                               ("vit.layers.1.attention", "heads", 4), ("vit.layers.0.mlp.activation_fn", "hidden", 64)]:
        space = UnitSpace(lm.model, x, layer, unit=unit)
        r = unit_extremal_perturbation(lm.model, x, 1, layer, [0.25], unit=unit, iterations=2, space=space,
                                       progress=False)
        assert r.masks.shape == (1, 1, count) and r.info["layout"] == "ntc", (layer, unit)
    assert UnitSpace(lm.model, x, "vit.layers.1.attention", unit="heads").kind.site.name == \
        "vit.layers.1.attention.o_proj"
    assert model_state(lm.model) == before


def test_hf_command_line(hf_folder, run_cli, tmp_path):
    model = ["--model", f"hf:{hf_folder}", "--no-progress", "--iterations", "2"]
    code, out, err = run_cli("channels", "chelsea", *model, "--layer", "vit.layers.1.attention", "--unit", "heads",
                             "--areas", "0.25", "--out", tmp_path / "heads")
    assert code == 0, err
    summary = json.loads((tmp_path / "heads" / "summary.json").read_text())
    assert summary["unit"] == "heads" and summary["units"] == 4 and summary["class_name"].startswith("thing")
    code, out, err = run_cli("explain", "chelsea", "--model", f"hf:{hf_folder}", "--no-progress", "--preset", "paper",
                             "--iterations", "2", "--areas", "0.1", "--out", tmp_path / "px")
    assert code == 0, err and np.load(tmp_path / "px" / "masks.npz")["masks"].shape[-1] == 32
    code, out, err = run_cli("prunegrad", "chelsea", "--model", f"hf:{hf_folder}", "--out", tmp_path / "pg")
    assert code == 0, err
    pruned = json.loads((tmp_path / "pg" / "summary.json").read_text())["pruned_layers"]
    assert pruned == ["vit.layers.0.mlp.activation_fn", "vit.layers.1.mlp.activation_fn"]  # HF's own GELU class


def test_hf_bad_folder_and_missing_key(hf_folder, run_cli, tmp_path):
    code, _, err = run_cli("layers", "--model", f"hf:{tmp_path}")
    assert code == 2 and "needs a folder with config.json" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ChanattrError, match="no element 'scores'.*logits"):
        load_model(f"hf:{hf_folder}", output="scores")
