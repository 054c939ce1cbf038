"""Models: a backbone that returns a feature map, global average pooling, and a linear head; and
`predict`, which runs a model (or a part of it) over a loader.

Keeping the feature map explicit gives class activation maps (CAM = head weights applied to the
last feature map) and cached pooled features (LinearInit) from the same module for every arch.

Architectures (--arch): small_cnn; resnet50 and resnet101 from torchvision (the papers'); any
other timm model name, tagged ones too (convnext_atto.d2_in1k); any torchvision classification
model (`torchvision.models.list_models()`) whose name timm does not take, or any with the prefix
`torchvision:` (torchvision:convnext_tiny); `timm:NAME` forces timm. Every backbone returns
B×C×h×w: channels-last maps (Swin) are permuted, token sequences (ViT, Mixer) lose their prefix
tokens (class, distillation, registers) and are laid out on their square patch grid.
"""
from __future__ import annotations

import math
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torchvision import models as tv_models
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from largeloss.utils.distributed import SINGLE_PROCESS, World, gather_blocks
from largeloss.utils.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

PAPER_TORCHVISION_ARCHS = ("resnet50", "resnet101")  # torchvision's even though timm has the names
WEIGHT_VERSIONS = {"imagenet_v1": "IMAGENET1K_V1", "imagenet_v2": "IMAGENET1K_V2"}
TIMM_PRETRAINED = ("imagenet_v1", "imagenet_v2", "DEFAULT")  # timm: the model's default tag
TORCHVISION_WEIGHT_NAME = re.compile(r"[A-Z][A-Z0-9_]*")     # IMAGENET1K_V2, DEFAULT, ...
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.", "head.")


def boostlu(activations: Tensor, alpha: float) -> Tensor:
    """BoostLU (Kim et al., CVPR 2023; docs/methods.md §BoostLU): α·max(a, 0) + min(a, 0), elementwise.

    The test is strict (a > 0), so a = 0 takes the identity branch, gradient 1.
    """
    return torch.where(activations > 0, alpha * activations, activations)


class MultiLabelNet(nn.Module):
    """backbone (B×3×S×S → B×C×h×w) → global average pool → Linear(C, L).

    boost_alpha ≠ 1 (BoostLU, docs/methods.md §BoostLU): the head is applied at every location (the CAM,
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


SMALL_CNNS = ("small_cnn", "small_cnn_gn")
SMALL_CNN_GROUPS = 8  # GroupNorm groups of small_cnn_gn


def conv_block(in_channels: int, out_channels: int, stride: int = 1,
               group_norm: bool = False) -> list[nn.Module]:
    """conv 3×3 → BatchNorm (or GroupNorm) → ReLU."""
    norm = (nn.GroupNorm(SMALL_CNN_GROUPS, out_channels) if group_norm
            else nn.BatchNorm2d(out_channels))
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False), norm,
            nn.ReLU(inplace=True)]


def small_cnn(group_norm: bool = False) -> tuple[nn.Module, int]:
    """A 5-layer CNN for the 48-px digits set: a stride-2 stem, then 24 → 12, ending in a
    12×12×128 feature map (CAM-ready).

    group_norm: GroupNorm instead of BatchNorm (`--arch small_cnn_gn`): each image is normalised
    on its own, so the outputs do not depend on how a batch is split over processes or on
    train/eval mode. It learns the digits far more slowly: full-label BCE, 400 images, 8 epochs,
    val mAP 75.5 with BatchNorm against 38.9 (39.3 at lr 3e-3, 39.1 at 1e-4) with GroupNorm, so
    the demo keeps BatchNorm."""
    stem = conv_block(3, 32, stride=2, group_norm=group_norm)
    layers = (stem + conv_block(32, 64, group_norm=group_norm) + [nn.MaxPool2d(2)]
              + conv_block(64, 128, group_norm=group_norm)
              + conv_block(128, 128, group_norm=group_norm))
    return nn.Sequential(*layers), 128


class FeatureMap(nn.Module):
    """B×3×S×S → B×C×h×w from `net`'s last features, whatever their layout.

    `net.forward_features` (timm) or, with `output_node`, `net(images)[output_node]` (a torchvision
    feature extractor) gives B×C×h×w, B×h×w×C (Swin: `net.output_fmt == "NHWC"`, or told by the
    channel count) or B×N×C tokens, of which the first `num_prefix_tokens` are dropped and the
    rest laid out on a square grid. `input_size`: the only image size the net accepts, or None.
    """

    def __init__(self, net: nn.Module, num_features: int, arch: str, num_prefix_tokens: int = 0,
                 input_size: int | None = None, output_node: str | None = None):
        super().__init__()
        self.net = net
        self.num_features, self.arch = num_features, arch
        self.num_prefix_tokens, self.input_size, self.output_node = (num_prefix_tokens, input_size,
                                                                     output_node)

    def forward(self, images: Tensor) -> Tensor:
        if self.input_size is not None and images.shape[-1] != self.input_size:
            raise InputError(f"--arch {self.arch} takes {self.input_size}×{self.input_size} images "
                             f"only, got {images.shape[-1]}: pass --image_size {self.input_size}")
        features = (self.net(images)[self.output_node] if self.output_node
                    else self.net.forward_features(images))
        if features.ndim == 3:
            tokens = features[:, self.num_prefix_tokens:]
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise InputError(f"--arch {self.arch}: {tokens.shape[1]} tokens do not form a "
                                 f"square grid, so there is no feature map to pool")
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
        if features.ndim != 4:
            raise InputError(f"--arch {self.arch}: its features have shape "
                             f"{tuple(features.shape)}, not a feature map (B×C×h×w)")
        if getattr(self.net, "output_fmt", None) == "NHWC" or features.shape[1] != self.num_features:
            features = features.permute(0, 3, 1, 2)
        return features


def torchvision_weights(arch: str, weights: str):
    """The weight enum member for --weights imagenet_v1 / imagenet_v2 / a torchvision name
    (IMAGENET1K_V2, DEFAULT, ...), or None (random init, or a local file loaded afterwards)."""
    if weights == "none" or is_local_path(weights):
        return None
    enum = tv_models.get_model_weights(arch)
    name = WEIGHT_VERSIONS.get(weights, weights)
    if name not in enum.__members__:
        raise InputError(f"--weights {weights}: {arch} has no such torchvision weights; it has "
                         f"{sorted(enum.__members__)}, or pass none or a state-dict file")
    return enum[name]


def create_or_explain(create, arch: str, weights: str) -> nn.Module:
    """create(); a failed weight download (offline, say) becomes one InputError line."""
    try:
        return create()
    except OSError as error:  # urllib's URLError, huggingface_hub's errors, a missing cache file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"--arch {arch} --weights {weights}: the pretrained weights could not be "
                         f"downloaded ({reason}); without a network, pass a local state-dict file "
                         f"with --weights PATH") from None


def torchvision_backbone(arch: str, weights: str) -> tuple[nn.Module, int]:
    """A torchvision classification model up to its global pooling.

    ResNet-like models (…, avgpool, fc) keep their nn.Sequential layout (and checkpoint keys);
    ViT gives its final tokens; others a feature extractor ending at the input of their first
    global pooling."""
    if arch not in tv_models.list_models(module=tv_models):
        raise InputError(f"--arch torchvision:{arch}: torchvision has no such classification "
                         f"model (see torchvision.models.list_models())")
    enum_value = torchvision_weights(arch, weights)
    net = create_or_explain(lambda: tv_models.get_model(arch, weights=enum_value), arch, weights)
    if is_local_path(weights):
        load_local_weights(net, Path(weights), arch)
    if [name for name, _ in net.named_children()][-2:] == ["avgpool", "fc"]:
        return nn.Sequential(*list(net.children())[:-2]), net.fc.in_features
    if isinstance(net, tv_models.VisionTransformer):
        extractor = create_feature_extractor(net, {"encoder.ln": "features"})
        return FeatureMap(extractor, net.hidden_dim, arch, num_prefix_tokens=1,
                          input_size=net.image_size, output_node="features"), net.hidden_dim
    node = pooling_input_node(net)
    if node is None or node.startswith(tuple(prefix.rstrip(".") for prefix in CLASSIFIER_PREFIXES)):
        raise InputError(f"--arch {arch}: torchvision's model has no feature map before its "
                         f"classifier; choose another architecture")
    extractor = create_feature_extractor(net, {node: "features"})
    with torch.no_grad():  # the channel count: one small eval-mode pass (BN statistics untouched)
        size = max(64, *tv_models.get_model_weights(arch).DEFAULT.meta.get("min_size", (1,)))
        num_features = extractor.eval()(torch.zeros(1, 3, size, size))["features"].shape[1]
    extractor.train()
    return FeatureMap(extractor, num_features, arch, output_node="features"), num_features


def pooling_input_node(net: nn.Module) -> str | None:
    """The graph node fed into the model's first global pooling (an AdaptiveAvgPool2d module, or
    a functional adaptive_avg_pool2d / mean), or None."""
    modules = dict(net.named_modules())
    _, nodes = get_graph_node_names(net)
    for previous, node in zip(nodes, nodes[1:]):
        function = re.sub(r"_\d+$", "", node.split(".")[-1])
        if isinstance(modules.get(node), nn.AdaptiveAvgPool2d) or function in (
                "adaptive_avg_pool2d", "mean"):
            return previous
    return None


def timm_backbone(arch: str, weights: str, image_size: int | None = None):
    """A timm model's forward_features as a B×C×h×w map, with its own normalisation constants.
    Models made for one input size (ViT, Swin, Mixer, ...) are built for `image_size` when given,
    and accept any size where timm allows it (dynamic_img_size)."""
    try:
        import timm
    except ImportError:
        raise InputError(f"--arch {arch} is not small_cnn or a torchvision model; other "
                         f"architectures need timm (pip install timm)") from None
    if not timm.is_model(arch):
        raise InputError(f"--arch {arch}: unknown architecture (small_cnn, a torchvision model "
                         f"such as resnet50 or torchvision:swin_t, or a timm model name such as "
                         f"vit_tiny_patch16_224 or convnext_atto.d2_in1k)")
    if TORCHVISION_WEIGHT_NAME.fullmatch(weights) and weights not in TIMM_PRETRAINED:
        raise InputError(f"--weights {weights} names torchvision weights; for the timm model "
                         f"{arch} use imagenet_v1 (its default pretrained tag), a tagged --arch "
                         f"such as convnext_atto.d2_in1k, none, or a state-dict PATH")
    options = {"pretrained": weights in TIMM_PRETRAINED, "num_classes": 0, "global_pool": ""}
    default_config = timm.models.get_pretrained_cfg(arch)
    fixed_size = default_config is not None and default_config.fixed_input_size
    if fixed_size and image_size:
        options["img_size"] = image_size

    def create(**extra):
        return create_or_explain(lambda: timm.create_model(arch, **options, **extra), arch, weights)

    try:
        net = create(dynamic_img_size=True) if fixed_size else create()
    except TypeError:  # this fixed-size model has no dynamic_img_size
        net = create()
    except AssertionError:  # e.g. distilled DeiT refuses global_pool="", unused by forward_features
        options.pop("global_pool")
        net = create()
    if is_local_path(weights):
        load_local_weights(net, Path(weights), arch)
    config = net.pretrained_cfg or {}
    input_size = None
    if fixed_size and not getattr(net, "dynamic_img_size", False):
        input_size = image_size or config.get("input_size", (3, 224, 224))[-1]
    backbone = FeatureMap(net, net.num_features, arch, getattr(net, "num_prefix_tokens", 0),
                          input_size)
    return (backbone, net.num_features,
            config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD))


def is_local_path(weights: str) -> bool:
    """--weights names a file: not none, imagenet_v1/v2, or a torchvision name (IMAGENET1K_V2)."""
    return (weights not in WEIGHT_VERSIONS and weights != "none"
            and not TORCHVISION_WEIGHT_NAME.fullmatch(weights))


def load_local_weights(net: nn.Module, path: Path, arch: str) -> None:
    """Load an ImageNet state dict of `arch` from a file; its 1000-class classifier is dropped
    (and the model's own classifier, if any, is left as initialised)."""
    if not path.is_file():
        raise InputError(f"--weights {path}: no such file (expected imagenet_v1, imagenet_v2, a "
                         f"torchvision weight name such as IMAGENET1K_V2 or DEFAULT, none, or a "
                         f"state-dict file)")
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
                      channels_last: bool, image_size: int | None = None,
                      boost_alpha: float = 1.0) -> MultiLabelNet:
    """build_model on `device`, in channels_last memory format when asked."""
    model = build_model(arch, weights, num_classes, image_size, boost_alpha).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_model(arch: str, weights: str, num_classes: int, image_size: int | None = None,
                boost_alpha: float = 1.0) -> MultiLabelNet:
    """`arch`: small_cnn, a torchvision or a timm name (module docstring); `weights`: imagenet_v1
    (the papers'), imagenet_v2, a torchvision weight name (IMAGENET1K_V2, DEFAULT), none, or a
    path to a local ImageNet state dict of that arch. `image_size` (S) builds timm models made for
    one input size at S; boost_alpha ≠ 1: the BoostLU head (MultiLabelNet)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    source, name = arch.split(":", 1) if arch.startswith(("timm:", "torchvision:")) else ("", arch)
    if name in SMALL_CNNS and not source:
        backbone, num_features = small_cnn(group_norm=name == "small_cnn_gn")
        mean = std = (0.5, 0.5, 0.5)
    elif source == "torchvision" or (not source and is_torchvision_first(name)):
        backbone, num_features = torchvision_backbone(name, weights)
    else:
        backbone, num_features, mean, std = timm_backbone(name, weights, image_size)
    return MultiLabelNet(backbone, num_features, num_classes, mean, std, boost_alpha)


def is_torchvision_first(arch: str) -> bool:
    """resnet50/resnet101 (the papers'), and torchvision names timm does not take."""
    if arch in PAPER_TORCHVISION_ARCHS:
        return True
    if arch not in tv_models.list_models(module=tv_models):
        return False
    try:
        import timm
    except ImportError:
        return True
    return not timm.is_model(arch)


# --- running a model ------------------------------------------------------------------------------

def autocast(device: torch.device, amp: str):
    """Autocast context for the forward pass, or a no-op when --amp off."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@torch.inference_mode()
def predict(model: Callable[[Tensor], Tensor], loader, preprocess: Callable, device: torch.device,
            amp: str, world: World = SINGLE_PROCESS) -> np.ndarray:
    """N×K float32 outputs of `model` (an nn.Module or one of its methods, e.g.
    MultiLabelNet.pooled_features) over a loader of (inputs, sample ids), in dataset order; one
    host transfer at the end. Modules are put in eval mode. With several processes each one runs
    its block of the split (distributed.EvalBatches) and every process gets all N rows."""
    module = getattr(model, "__self__", model)
    if isinstance(module, nn.Module):
        module.eval()
    batches, order = [], []
    for inputs, sample_ids in loader:
        inputs = preprocess(inputs.to(device, non_blocking=True), train=False)
        with autocast(device, amp):
            batches.append(model(inputs).float())
        order.append(sample_ids)
    if world.size > 1:  # blocks in dataset order, gathered
        outputs = gather_blocks(torch.cat(batches), loader.batch_sampler.num_rows, world)
        return outputs.cpu().numpy()
    outputs = torch.cat(batches).cpu().numpy()
    result = np.empty_like(outputs)
    result[torch.cat(order).cpu().numpy()] = outputs
    return result


def new_linear_head(num_features: int, num_classes: int, seed: int) -> nn.Linear:
    """nn.Linear(D, L) with PyTorch's default init drawn from `seed`, the global RNG untouched:
    linear mode and LinearInit's phase 1 start from the same head."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(num_features, num_classes)
