"""Models: a backbone that returns a feature map, global average pooling, and a linear head; and
`predict`, which runs a model (or a part of it) over a loader.

Keeping the feature map explicit gives class activation maps (CAM = head weights applied to the
last feature map) and cached pooled features (LinearInit) from the same module for every arch.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torchvision import models as tv_models

from errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

TORCHVISION_ARCHS = {
    "resnet50": (tv_models.resnet50, tv_models.ResNet50_Weights),
    "resnet101": (tv_models.resnet101, tv_models.ResNet101_Weights),
}
WEIGHT_VERSIONS = {"imagenet_v1": "IMAGENET1K_V1", "imagenet_v2": "IMAGENET1K_V2"}
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.", "head.")


def boostlu(activations: Tensor, alpha: float) -> Tensor:
    """BoostLU (Kim et al., CVPR 2023; SPEC_PEERS §1.1): α·max(a, 0) + min(a, 0), elementwise.

    The test is strict (a > 0), so a = 0 takes the identity branch, gradient 1 (SPEC_PEERS §1.1).
    """
    return torch.where(activations > 0, alpha * activations, activations)


class MultiLabelNet(nn.Module):
    """backbone (B×3×S×S → B×C×h×w) → global average pool → Linear(C, L).

    boost_alpha ≠ 1 (BoostLU, SPEC_PEERS §1.1): the head is applied at every location (the CAM,
    bias included), BoostLU boosts the positive activations by α, and the boosted maps are
    averaged: x = mean_u BoostLU(W·F(u) + b). It is part of the model, so it acts in training,
    validation and test alike. α = 1 is the plain linear head (pooling and a 1×1 head commute).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, boost_alpha: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.boost_alpha = float(boost_alpha)

    def feature_map(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def pooled_features(self, images: Tensor) -> Tensor:
        """B×C float32 pooled features (what LinearInit caches), also under autocast."""
        return self.feature_map(images).mean(dim=(2, 3), dtype=torch.float32)

    def forward(self, images: Tensor) -> Tensor:
        """B×L float32 logits. Under --amp only the backbone runs in bf16/fp16: pooling and head
        stay in float32, because bf16 logits (8 significant bits) tie and reorder close scores
        (measured: −0.19 mAP points on digits with a bf16 head, −0.006 with this float32 one).
        With BoostLU (boost_alpha ≠ 1) the logits are the spatial mean of the boosted CAMs."""
        if self.boost_alpha != 1.0:
            return self.class_activation_maps(images).mean(dim=(2, 3))
        features = self.pooled_features(images)
        with torch.autocast(images.device.type, enabled=False):
            return self.head(features)

    def class_activation_maps(self, images: Tensor) -> Tensor:
        """B×L×h×w float32: the head applied at every position of the feature map (Zhou et al.
        2016), boosted when boost_alpha ≠ 1. Its spatial mean equals the logits in both cases.

        The boosted maps are returned because they are what the logits average (BoostLU's CAM is
        its explanation). For α > 0 the boost is increasing, so the maximal cell is the unboosted
        map's; after bilinear upsampling (pointing game) the maximal pixel can move within it."""
        feature_map = self.feature_map(images)
        with torch.autocast(images.device.type, enabled=False):
            maps = (torch.einsum("bchw,lc->blhw", feature_map.float(), self.head.weight)
                    + self.head.bias.view(1, -1, 1, 1))
            return maps if self.boost_alpha == 1.0 else boostlu(maps, self.boost_alpha)


def conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def small_cnn() -> tuple[nn.Module, int]:
    """A 5-layer CNN for the 48-px digits set: a stride-2 stem, then 24 → 12, ending in a
    12×12×128 feature map (CAM-ready)."""
    stem = [nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
            nn.ReLU(inplace=True)]
    layers = (stem + conv_block(32, 64) + [nn.MaxPool2d(2)]
              + conv_block(64, 128) + conv_block(128, 128))
    return nn.Sequential(*layers), 128


def torchvision_backbone(arch: str, weights: str) -> tuple[nn.Module, int]:
    """ResNet without avgpool and fc; imagenet_v1/v2 download through torchvision's weight enums."""
    constructor, weight_enum = TORCHVISION_ARCHS[arch]
    enum_value = weight_enum[WEIGHT_VERSIONS[weights]] if weights in WEIGHT_VERSIONS else None
    net = constructor(weights=enum_value)
    if is_local_path(weights):
        load_local_weights(net, Path(weights), arch)
    return nn.Sequential(*list(net.children())[:-2]), net.fc.in_features


class TimmFeatureMap(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net.forward_features(images)


def timm_backbone(arch: str, weights: str):
    """A timm model's forward_features, with its own normalisation constants."""
    try:
        import timm
    except ImportError:
        raise InputError(f"--arch {arch} is not resnet50/resnet101/small_cnn; other "
                         f"architectures need timm (pip install timm)") from None
    if arch not in timm.list_models():
        raise InputError(f"--arch {arch}: unknown architecture (torchvision: "
                         f"{sorted(TORCHVISION_ARCHS)}, small_cnn, or a timm model name)")
    net = timm.create_model(arch, pretrained=weights in WEIGHT_VERSIONS, num_classes=0,
                            global_pool="")
    if is_local_path(weights):
        load_local_weights(net, Path(weights), arch)
    config = net.pretrained_cfg or {}
    return (TimmFeatureMap(net), net.num_features,
            config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD))


def is_local_path(weights: str) -> bool:
    return weights not in WEIGHT_VERSIONS and weights != "none"


def load_local_weights(net: nn.Module, path: Path, arch: str) -> None:
    """Load an ImageNet state dict of `arch` from a file; its 1000-class classifier is dropped
    (and the model's own classifier, if any, is left as initialised)."""
    if not path.is_file():
        raise InputError(f"--weights {path}: no such file (expected imagenet_v1, imagenet_v2, none "
                         f"or a state-dict file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {key: value for key, value in state.items() if not key.startswith(CLASSIFIER_PREFIXES)}
    own_shapes = {key: value.shape for key, value in net.state_dict().items()}
    for key, value in state.items():
        if key in own_shapes and value.shape != own_shapes[key]:
            raise InputError(f"--weights {path} does not fit --arch {arch}: {key} has shape "
                             f"{tuple(value.shape)} in the file, {tuple(own_shapes[key])} in the model")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith(CLASSIFIER_PREFIXES)]
    if missing or unexpected:
        raise InputError(f"--weights {path} does not fit --arch {arch}: missing keys "
                         f"{missing[:5]}, unexpected keys {unexpected[:5]}")


def build_image_model(arch: str, weights: str, num_classes: int, device: torch.device,
                      channels_last: bool, boost_alpha: float = 1.0) -> MultiLabelNet:
    """build_model on `device`, in channels_last memory format when asked."""
    model = build_model(arch, weights, num_classes, boost_alpha).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_model(arch: str, weights: str, num_classes: int, boost_alpha: float = 1.0) -> MultiLabelNet:
    """`arch` in resnet50, resnet101, small_cnn or a timm name; `weights` imagenet_v1 (the papers'),
    imagenet_v2, none, or a path to a local ImageNet state dict of that arch; boost_alpha ≠ 1: the
    BoostLU head (MultiLabelNet)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if arch == "small_cnn":
        backbone, num_features = small_cnn()
        mean = std = (0.5, 0.5, 0.5)
    elif arch in TORCHVISION_ARCHS:
        backbone, num_features = torchvision_backbone(arch, weights)
    else:
        backbone, num_features, mean, std = timm_backbone(arch, weights)
    return MultiLabelNet(backbone, num_features, num_classes, mean, std, boost_alpha)


# --- running a model ------------------------------------------------------------------------------

def autocast(device: torch.device, amp: str):
    """Autocast context for the forward pass, or a no-op when --amp off."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@torch.inference_mode()
def predict(model: Callable[[Tensor], Tensor], loader, preprocess: Callable, device: torch.device,
            amp: str) -> np.ndarray:
    """N×K float32 outputs of `model` (an nn.Module or one of its methods, e.g.
    MultiLabelNet.pooled_features) over a loader of (inputs, sample ids), in dataset order; one
    host transfer at the end. Modules are put in eval mode."""
    module = getattr(model, "__self__", model)
    if isinstance(module, nn.Module):
        module.eval()
    batches, order = [], []
    for inputs, sample_ids in loader:
        inputs = preprocess(inputs.to(device, non_blocking=True), train=False)
        with autocast(device, amp):
            batches.append(model(inputs).float())
        order.append(sample_ids)
    outputs = torch.cat(batches).cpu().numpy()
    result = np.empty_like(outputs)
    result[torch.cat(order).numpy()] = outputs
    return result
