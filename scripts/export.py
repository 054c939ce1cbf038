"""Export a run's best checkpoint as the plain state dict of the library model it was built from.

    python scripts/export.py runs/X/best.pt --out model.pt

resnet50 / resnet101 (any torchvision ResNet-like model): loads with strict=True into
`torchvision.models.resnet50(num_classes=L)` and gives the trained model's logits (global average
pooling then the linear head, as MultiLabelNet). A timm model: loads with strict=True into
`timm.create_model(arch, num_classes=L)` (checked here); its logits equal ours where timm's head is
global average pooling then the classifier (ResNets, EfficientNets; not ViT's class token).
small_cnn: the MultiLabelNet state dict itself (`models.build_model("small_cnn", "none", L)`,
with `boost_alpha=ALPHA` for a BoostLU run). A BoostLU run (--boostlu_alpha ≠ 1) of a library model
is refused: its head is applied at every position of the feature map with positive activations
boosted before pooling, which no plain torchvision/timm classifier reproduces (logits differ by
up to 1.1); evaluate it with `main.py --eval_only` or load it with `models.build_model`.
Feed the model images normalised as the run did (ImageNet mean and std; small_cnn: 0.5, 0.5).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn
from torchvision import models as tv_models

from largeloss.engine.run_folder import read_checkpoint
from largeloss.nn.models import SMALL_CNNS, is_torchvision_first
from largeloss.utils import atomic
from largeloss.utils.errors import InputError


def export_state_dict(checkpoint: dict) -> tuple[dict, str]:
    """(state dict, what loads it) for a checkpoint of an image model."""
    config, state = checkpoint["config"], checkpoint["model"]
    if config.get("train_mode") == "linear":
        return state, f"nn.Linear (the head on cached features of {config['arch']})"
    num_classes = state["head.weight"].shape[0]
    source, name = (config["arch"].split(":", 1) if config["arch"].startswith(("timm:", "torchvision:"))
                    else ("", config["arch"]))
    boost_alpha = config.get("boostlu_alpha", 1.0)
    if name in SMALL_CNNS and not source:
        boost = f", boost_alpha={boost_alpha:g}" if boost_alpha != 1 else ""
        return state, f'models.build_model("{name}", "none", {num_classes}{boost}) (MultiLabelNet)'
    if boost_alpha != 1:
        raise InputError(f"export: a BoostLU run (--boostlu_alpha {boost_alpha:g}) has no plain "
                         f"{name} equivalent: its head is applied at every position of the "
                         f"feature map with positive activations boosted before pooling; use "
                         f"models.build_model({name!r}, 'none', {num_classes}, "
                         f"boost_alpha={boost_alpha:g}) with the checkpoint's 'model' state dict")
    if source == "torchvision" or (not source and is_torchvision_first(name)):
        net = tv_models.get_model(name, weights=None, num_classes=num_classes)
        children = [child for child, _ in net.named_children()]
        if children[-2:] != ["avgpool", "fc"]:
            raise InputError(f"export: --arch {name} is not a ResNet-like torchvision model "
                             f"(…, avgpool, fc); only those, timm models and small_cnn export")
        exported = {rename_torchvision(key, children): value for key, value in state.items()}
        what = f"torchvision.models.get_model({name!r}, num_classes={num_classes})"
    else:
        import timm  # only timm checkpoints need it
        net = timm.create_model(name, pretrained=False, num_classes=num_classes)
        classifier = net.pretrained_cfg.get("classifier", "head")
        exported = {key.removeprefix("backbone.net.").replace("head.", f"{classifier}.", 1)
                    if key.startswith("head.") else key.removeprefix("backbone.net."): value
                    for key, value in state.items()}
        what = f"timm.create_model({name!r}, num_classes={num_classes})"
    check_loads(net, exported, what)
    return exported, what


def rename_torchvision(key: str, children: list[str]) -> str:
    """backbone.<i>.rest → <i-th child>.rest; head.* → fc.*"""
    if key.startswith("head."):
        return "fc." + key.removeprefix("head.")
    index, rest = key.removeprefix("backbone.").split(".", 1)
    return f"{children[int(index)]}.{rest}"


def check_loads(net: nn.Module, state: dict, what: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f"export: the weights do not load into {what}: "
                         f"{str(error).splitlines()[0]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a best.pt (or last.pt) of a run")
    parser.add_argument("--out", required=True, help="the state-dict file to write")
    args = parser.parse_args(argv)
    try:
        if Path(args.out).resolve() == Path(args.checkpoint).resolve():
            raise InputError(f"export: --out {args.out} is the checkpoint itself; choose another "
                             f"file (the checkpoint is kept)")
        state, what = export_state_dict(read_checkpoint(args.checkpoint, "checkpoint"))
        atomic.save_torch(args.out, state)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: the state dict of {what} (load_state_dict(..., strict=True))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
