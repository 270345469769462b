import numpy as np
import pytest
import torch
from PIL import Image

from chanattr import SAMPLES, ChanattrError, load_image, prepare_image, prepare_images
from chanattr.models import Preprocessing

PRE = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("name", SAMPLES)
def test_bundled_samples(name):
    img = load_image(name)
    assert img.mode == "RGB" and min(img.size) > 200


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (40, 60), dtype=np.uint16))
        assert img.mode.startswith("I;16")
    else:
        img = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("I;16", "CMYK") else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (60, 40)


def test_sixteen_bit_keeps_its_range(tmp_path):
    arr = np.full((10, 10), 65535, dtype=np.uint16)
    arr[:, :5] = 0
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    rgb = np.asarray(load_image(path))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 9].tolist() == [255, 255, 255]


def test_prepare_resizes_short_side_and_centre_crops():
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 20:60] = 255  # the centre square is white, the sides black
    prepared = prepare_image(Image.fromarray(arr), PRE)
    assert prepared.input.shape == (3, 32, 32) and prepared.rgb.shape == (3, 32, 32)
    assert prepared.rgb.dtype == torch.float32
    assert prepared.rgb.min() > 0.95  # only the white centre survives the crop
    assert torch.allclose(prepared.input, (prepared.rgb - 0.5) / 0.25)
    assert torch.allclose(PRE.denormalize(prepared.input), prepared.rgb, atol=1e-6)


def test_prepare_images_unique_names():
    names = [p.name for p in prepare_images(["chelsea", "chelsea", "coffee"], PRE)]
    assert names == ["chelsea", "chelsea-2", "coffee"]


def test_bad_images(tmp_path):
    with pytest.raises(ChanattrError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ChanattrError, match="not an image file"):
        load_image(text)
    with pytest.raises(ChanattrError, match="is a folder"):
        load_image(tmp_path)
