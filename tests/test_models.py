"""models.py: multi-label networks, class activation maps, and ImageNet weights (no download)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision import models as tv_models
from torchvision.models import _api as tv_api

from largeloss.nn import models
from largeloss.nn.models import build_model
from largeloss.utils.errors import InputError

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
                                              ("imagenet_v2", "IMAGENET1K_V2"), ("none", None),
                                              ("IMAGENET1K_V2", "IMAGENET1K_V2"),
                                              ("DEFAULT", "IMAGENET1K_V2")])
def test_weight_names_map_to_torchvision_enums(monkeypatch, weights, expected):
    """imagenet_v1 is the papers' weights: torchvision's ResNet50_Weights.IMAGENET1K_V1; the
    enum's own names (IMAGENET1K_V2, DEFAULT) are accepted too."""
    received = []

    def fake_get_model(name, weights=None):
        received.append((name, weights))
        return tv_models.resnet18(weights=None)  # small and offline; only the argument matters

    monkeypatch.setattr(models.tv_models, "get_model", fake_get_model)
    model = build_model("resnet50", weights, NUM_CLASSES)
    received = [weights for name, weights in received if name == "resnet50"]
    expected_enum = None if expected is None else tv_models.ResNet50_Weights[expected]
    assert received == [expected_enum]
    if weights == "imagenet_v1":
        assert received[0] is tv_models.ResNet50_Weights.IMAGENET1K_V1
    assert model.head.out_features == NUM_CLASSES


def test_local_torchvision_state_dict_loads_without_its_classifier(tmp_path, monkeypatch):
    """--weights PATH for a torchvision arch: every backbone tensor from the file, fc dropped."""
    torch.manual_seed(1)
    saved = tv_models.resnet18(weights=None).state_dict()  # a 1000-class ImageNet layout
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(saved, path)
    torch.manual_seed(2)
    model = build_model("torchvision:resnet18", str(path), NUM_CLASSES)  # timm has resnet18 too
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


# --- any timm or torchvision model ----------------------------------------------------------------

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm")


def check_map_logits_and_cams(model, image_size: int, map_size: int) -> None:
    """Logits B×L, a channels-first B×C×h×w map, CAMs whose spatial mean is the logits."""
    images = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        feature_map = model.feature_map(images)
        logits, cams = model(images), model.class_activation_maps(images)
    assert feature_map.shape == (2, model.head.in_features, map_size, map_size)
    assert logits.shape == (2, NUM_CLASSES) and cams.shape == (2, NUM_CLASSES, map_size, map_size)
    torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, rtol=1e-4, atol=1e-4)


@needs_timm
@pytest.mark.parametrize("arch,image_size,map_size", [
    ("vit_tiny_patch16_224", 32, 2),               # B×N×C tokens, a class token: 2×2 patches
    ("swin_tiny_patch4_window7_224", 64, 2),       # B×h×w×C (NHWC)
    ("convnext_atto.d2_in1k", 64, 2),              # a tagged timm name
])
def test_timm_models_of_every_layout_give_a_channels_first_map(arch, image_size, map_size):
    """ViT and Swin crashed: pooling assumed B×C×h×w."""
    torch.manual_seed(0)
    check_map_logits_and_cams(build_model(arch, "none", NUM_CLASSES).eval(), image_size, map_size)


@needs_timm
def test_fixed_size_timm_model_is_built_for_the_image_size_or_refuses_others():
    """An MLP-Mixer only takes the size it was built for: --image_size builds it at that size;
    built at its default (224) it refuses other sizes with the flag to pass."""
    torch.manual_seed(0)
    model = build_model("mixer_s16_224", "none", NUM_CLASSES, image_size=32).eval()
    check_map_logits_and_cams(model, 32, 2)
    with pytest.raises(InputError, match=r"takes 32×32 images only, got 48: pass --image_size 32"):
        model(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("arch,image_size,map_size", [
    ("mobilenet_v3_small", 64, 2),          # an AdaptiveAvgPool2d module; not a timm name
    ("torchvision:shufflenet_v2_x0_5", 64, 2),  # a functional mean; forced to torchvision
])
def test_torchvision_models_by_name_end_at_their_pooling(arch, image_size, map_size):
    torch.manual_seed(0)
    check_map_logits_and_cams(build_model(arch, "none", NUM_CLASSES).eval(), image_size, map_size)


def test_torchvision_model_without_a_feature_map_before_its_classifier_is_refused():
    with pytest.raises(InputError, match="squeezenet1_0: torchvision's model has no feature map"):
        build_model("squeezenet1_0", "none", NUM_CLASSES)


def test_unknown_torchvision_weight_name_lists_the_known_ones():
    with pytest.raises(InputError, match=r"--weights IMAGENET1K_V9: resnet18 has no such .*"
                                         r"'IMAGENET1K_V1'"):
        build_model("torchvision:resnet18", "IMAGENET1K_V9", NUM_CLASSES)


@needs_timm
def test_torchvision_weight_name_for_a_timm_model_is_refused():
    with pytest.raises(InputError, match="names torchvision weights; for the timm model"):
        build_model("convnext_atto", "IMAGENET1K_V2", NUM_CLASSES)


def raise_offline(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known")


@pytest.mark.parametrize("arch", ["torchvision:resnet18",
                                  pytest.param("convnext_atto.d2_in1k", marks=needs_timm)])
def test_offline_weight_download_is_one_input_error_pointing_to_weights_path(monkeypatch, arch):
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", raise_offline)  # torchvision's
    if arch.startswith("convnext"):  # timm asks huggingface_hub, whose errors are OSErrors too
        import timm
        create_model = timm.create_model
        monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **options: (
            raise_offline() if pretrained else create_model(name, **options)))
    with pytest.raises(InputError) as error:
        build_model(arch, "imagenet_v1", NUM_CLASSES)
    message = str(error.value)
    name = arch.split(":")[-1]
    assert message.startswith(f"--arch {name} --weights imagenet_v1: the pretrained weights could "
                              f"not be downloaded (<urlopen error [Errno -2] Name or service not "
                              f"known>); without a network, pass a local state-dict file with "
                              f"--weights PATH")
    assert "\n" not in message
