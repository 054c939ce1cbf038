"""models.py: multi-label networks, class activation maps, and ImageNet weights (no download)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torchvision import models as tv_models

import models
from errors import InputError
from models import build_model

# The offline ImageNet weights beside the repository (../shared/weights, see its README).
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "shared" / "weights"
TIMM_LITE0 = WEIGHTS_DIR / "tf_efficientnet_lite0_timm_from_pypi.pth"
ORIGINAL_LITE0 = WEIGHTS_DIR / "efficientnet-lite0-57934424.pth"  # efficientnet_pytorch key names
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
NUM_CLASSES = 5

needs_lite0_weights = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None or not TIMM_LITE0.is_file(),
    reason=f"needs timm and the offline weights {TIMM_LITE0}")


@pytest.mark.parametrize("arch,image_size,map_size", [("small_cnn", 48, 12), ("resnet50", 64, 2)])
def test_build_model_gives_batch_by_classes_logits_and_cams_average_to_them(arch, image_size,
                                                                             map_size):
    torch.manual_seed(0)
    model = build_model(arch, "none", NUM_CLASSES).eval()
    images = torch.randn(3, 3, image_size, image_size)
    with torch.no_grad():
        logits = model(images)
        cams = model.class_activation_maps(images)
    assert logits.shape == (3, NUM_CLASSES) and logits.dtype == torch.float32
    assert cams.shape == (3, NUM_CLASSES, map_size, map_size)
    # Global average pooling then a linear head = the spatial mean of the CAMs (Zhou et al. 2016).
    torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, rtol=1e-4, atol=1e-5)
    assert model.head.out_features == NUM_CLASSES


def test_small_cnn_ignores_the_weights_flag():
    """small_cnn has no ImageNet weights: the default imagenet_v1 must not download anything."""
    model = build_model("small_cnn", "imagenet_v1", NUM_CLASSES)
    assert model.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("weights,expected", [("imagenet_v1", "IMAGENET1K_V1"),
                                              ("imagenet_v2", "IMAGENET1K_V2"), ("none", None)])
def test_weight_names_map_to_torchvision_enums(monkeypatch, weights, expected):
    """imagenet_v1 is the papers' weights: torchvision's ResNet50_Weights.IMAGENET1K_V1."""
    received = []

    def fake_resnet50(weights=None):
        received.append(weights)
        return tv_models.resnet18(weights=None)  # small and offline; only the argument matters

    monkeypatch.setitem(models.TORCHVISION_ARCHS, "resnet50",
                        (fake_resnet50, tv_models.ResNet50_Weights))
    model = build_model("resnet50", weights, NUM_CLASSES)
    expected_enum = None if expected is None else tv_models.ResNet50_Weights[expected]
    assert received == [expected_enum]
    if weights == "imagenet_v1":
        assert received[0] is tv_models.ResNet50_Weights.IMAGENET1K_V1
    assert model.head.out_features == NUM_CLASSES


def test_local_torchvision_state_dict_loads_without_its_classifier(tmp_path, monkeypatch):
    """--weights PATH for a torchvision arch: every backbone tensor from the file, fc dropped."""
    monkeypatch.setitem(models.TORCHVISION_ARCHS, "resnet18",
                        (tv_models.resnet18, tv_models.ResNet18_Weights))
    torch.manual_seed(1)
    saved = tv_models.resnet18(weights=None).state_dict()  # a 1000-class ImageNet layout
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(saved, path)
    torch.manual_seed(2)
    model = build_model("resnet18", str(path), NUM_CLASSES)
    loaded = model.backbone.state_dict()  # nn.Sequential of the ResNet children: "0." is conv1
    torch.testing.assert_close(loaded["0.weight"], saved["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["7.1.bn2.running_var"], saved["layer4.1.bn2.running_var"],
                               rtol=0, atol=0)
    assert model.head.weight.shape == (NUM_CLASSES, 512)


@needs_lite0_weights
def test_offline_efficientnet_weights_load_into_timm_arch():
    state = torch.load(TIMM_LITE0, map_location="cpu", weights_only=True)
    model = build_model("tf_efficientnet_lite0", str(TIMM_LITE0), NUM_CLASSES).eval()
    net_state = model.backbone.net.state_dict()
    torch.testing.assert_close(net_state["conv_stem.weight"], state["conv_stem.weight"],
                               rtol=0, atol=0)
    backbone_keys = [key for key in state if key not in CLASSIFIER_KEYS]
    assert set(backbone_keys) <= set(net_state)
    for key in backbone_keys:  # every pretrained tensor, not only the stem
        torch.testing.assert_close(net_state[key], state[key], rtol=0, atol=0, msg=key)
    assert model.head.in_features == state["classifier.weight"].shape[1]
    assert model.head.out_features == NUM_CLASSES
    assert model.mean == pytest.approx((0.5, 0.5, 0.5))  # the model's own normalisation
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()


@pytest.mark.skipif(importlib.util.find_spec("timm") is None or not ORIGINAL_LITE0.is_file(),
                    reason=f"needs timm and the offline weights {ORIGINAL_LITE0}")
def test_state_dict_with_other_key_names_is_refused_naming_the_file():
    """The efficientnet_pytorch original (_conv_stem, _blocks.N, _fc) does not fit timm's names."""
    with pytest.raises(InputError, match="does not fit --arch tf_efficientnet_lite0") as error:
        build_model("tf_efficientnet_lite0", str(ORIGINAL_LITE0), NUM_CLASSES)
    assert str(ORIGINAL_LITE0) in str(error.value)


def resnet18_state() -> dict:
    return tv_models.resnet18(weights=None).state_dict()


def narrow_lite0_state() -> dict:
    """The real lite0 tensors with a stem of 16 instead of 32 filters (a differently sized
    variant of the same architecture, like wide_resnet50_2 weights for resnet50)."""
    state = torch.load(TIMM_LITE0, map_location="cpu", weights_only=True)
    state["conv_stem.weight"] = state["conv_stem.weight"][:16]
    return state


WRONG_SHAPE_CASES = {
    "resnet18-for-resnet50": ("resnet50", resnet18_state, False),
    "resnet18-for-lite0": ("tf_efficientnet_lite0", resnet18_state, True),  # shares bn1.* keys
    "narrow-lite0-for-lite0": ("tf_efficientnet_lite0", narrow_lite0_state, True),
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPE_CASES))
def test_state_dict_of_another_arch_sharing_key_names_is_refused_naming_the_file(tmp_path, case):
    arch, make_state, needs_lite0 = WRONG_SHAPE_CASES[case]
    if needs_lite0 and (importlib.util.find_spec("timm") is None or not TIMM_LITE0.is_file()):
        pytest.skip(f"needs timm and {TIMM_LITE0}")
    wrong_file = tmp_path / f"{case}.pth"
    torch.save(make_state(), wrong_file)
    with pytest.raises(InputError, match=f"does not fit --arch {arch}") as error:
        build_model(arch, str(wrong_file), NUM_CLASSES)
    assert str(wrong_file) in str(error.value)


def test_missing_weights_file_is_refused_naming_it(tmp_path):
    missing = tmp_path / "no_such_weights.pth"
    with pytest.raises(InputError, match="no such file") as error:
        build_model("resnet50", str(missing), NUM_CLASSES)
    assert str(missing) in str(error.value)


def test_unknown_arch_is_an_input_error():
    with pytest.raises(InputError, match="--arch resnet_does_not_exist"):
        build_model("resnet_does_not_exist", "none", NUM_CLASSES)
