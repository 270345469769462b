import torch
import pytest
from torch import nn

from chanattr import ChanattrError, load_model, prepare_image
from chanattr.models import Preprocessing

USER_MODEL = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

def not_a_model():
    return 42
"""


def top1(lm, name):
    x = prepare_image(name, lm.preprocessing).input[None]
    with torch.no_grad():
        return int(lm.model(x).argmax())


def test_default_model_is_real_and_offline(lite0):
    assert not lite0.model.training
    assert lite0.preprocessing == Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert len(lite0.class_names) == 1000 and lite0.class_names[967] == "espresso"
    assert 281 <= top1(lite0, "chelsea") <= 285  # a cat
    assert top1(lite0, "coffee") == 967  # espresso


def test_torchvision_random_weights_only_when_asked():
    lm = load_model("torchvision:resnet18", random_weights=True)
    assert isinstance(lm.model, nn.Module) and not lm.model.training
    assert len(lm.class_names) == 1000 and lm.preprocessing.mean == (0.485, 0.456, 0.406)


def test_pretrained_weights_offline_give_a_clear_error(monkeypatch):
    import torchvision
    from urllib.error import URLError

    def offline(*args, **kwargs):
        if kwargs.get("weights") is not None:
            raise URLError("Name or service not known")
        return torchvision.models.resnet18()

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(ChanattrError, match="--weights PATH"):
        load_model("torchvision:resnet18")


def test_timm_weights_not_cached_and_offline_is_a_clear_error(monkeypatch):
    import chanattr.models as models
    import timm

    real_create = timm.create_model

    def create(name, pretrained=False, **kw):
        if pretrained:
            raise RuntimeError("not in the local cache")
        return real_create(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", create)
    monkeypatch.setattr(models, "_online", lambda host, timeout=3.0: False)
    with pytest.raises(ChanattrError, match="--random-weights"):
        load_model("timm:resnet18")


def test_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = load_model("torchvision:resnet18", random_weights=True).model
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    lm = load_model("torchvision:resnet18", weights=path)
    for a, b in zip(source.state_dict().values(), lm.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ChanattrError, match="does not fit"):
        load_model("torchvision:resnet34", weights=path)
    with pytest.raises(ChanattrError, match="not found"):
        load_model("torchvision:resnet18", weights=tmp_path / "missing.pt")


def test_user_factory_from_file_with_preprocessing_and_labels(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(USER_MODEL)
    lm = load_model(f"{f}:make", input_size=64, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert lm.preprocessing == Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert lm.class_names == ["0", "1", "2"]
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    assert load_model(f"{f}:make", labels=labels).class_names == ["cat", "dog", "bird"]
    labels.write_text("cat\ndog\n")
    with pytest.raises(ChanattrError, match="2 names but the model has 3 outputs"):
        load_model(f"{f}:make", labels=labels)
    with pytest.raises(ChanattrError, match="not a torch.nn.Module"):
        load_model(f"{f}:not_a_model")
    with pytest.raises(ChanattrError, match="no function"):
        load_model(f"{f}:missing")


def test_user_factory_from_module(tmp_path, monkeypatch):
    (tmp_path / "mypkg_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    lm = load_model("mypkg_models:make")
    assert len(lm.class_names) == 3


@pytest.mark.parametrize("name, match", [
    ("nope", "unknown model"),
    ("torchvision:resnet1888", "close names: resnet18"),
    ("timm:efficientnet_litex", "timm has no model"),
    ("no/such/file.py:make", "model file not found"),
])
def test_bad_model_names(name, match):
    with pytest.raises(ChanattrError, match=match):
        load_model(name, random_weights=True)


def test_check_target(lite0):
    assert lite0.check_target(5) == 5
    with pytest.raises(ChanattrError, match="outside this model's classes 0..999"):
        lite0.check_target(1000)


def test_fingerprint_is_cached_until_a_tensor_changes():
    import torch

    from chanattr import load_model

    lm = load_model("tests/models_gt.py:random_conv", seed=3)
    first = lm.fingerprint()
    assert lm.fingerprint() == first  # cached: the same tensors, unwritten
    p = next(lm.model.parameters())
    saved = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)  # an in-place write bumps the version counter
    assert lm.fingerprint() != first
    with torch.no_grad():
        p.copy_(saved)
    assert lm.fingerprint() == first
