"""Class activation maps of a trained model, overlaid on chosen test images.

    python scripts/show_cam.py runs/X/best.pt --images 0 3 7 --out cams.png

One row per image: the image with every ground-truth box, then one panel per ground-truth class with
its CAM (the head's weights applied to the last feature map, upsampled bilinearly to the image),
that class's boxes, and a cross at the map's maximum (the pointing-game point: "hit" when it lies in
a box). Works for any run folder whose dataset the checkpoint's config can load again.
"""
from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle

from largeloss.data import datasets
from largeloss.data.loading import DevicePreprocess
from largeloss.engine import analysis
from largeloss.engine.run_folder import read_checkpoint
from largeloss.nn.models import build_model
from largeloss.utils.errors import InputError


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", help="best.pt or last.pt of a run")
    parser.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="row indices in the test split (default: 0 1 2 3)")
    parser.add_argument("--out", required=True, help="image file to write (.png, .pdf, .svg)")
    parser.add_argument("--data_root", help="dataset folder, when it moved since training")
    parser.add_argument("--image_dir", help="image folder, when it moved since training")
    return parser


def load_model_and_test_split(checkpoint_path: str, data_root: str | None, image_dir: str | None):
    """(model in eval mode on the CPU, the test Split, class names) from a run's checkpoint."""
    checkpoint = read_checkpoint(checkpoint_path, "checkpoint")
    config = checkpoint["config"]  # the saved dict: only the data and model keys are needed
    data = datasets.load_data(config["dataset"], data_root or config["data_root"],
                              image_dir or config["image_dir"], config["image_size"],
                              config["digits_train_size"])
    model = build_model(config["arch"], "none", data.num_classes,
                        boost_alpha=config.get("boostlu_alpha", 1.0))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), data.test, data.class_names


@torch.inference_mode()
def image_maps(model, split, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image H×W×3 uint8, CAMs L×H×W upsampled to the image, probabilities L) of one row."""
    image, _ = split.images[index]
    preprocess = DevicePreprocess(model.mean, model.std, torch.device("cpu"))
    batch = preprocess(image[None], train=False)
    cams = model.class_activation_maps(batch)
    probs = torch.sigmoid(model(batch))[0]
    maps = F.interpolate(cams, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    return image.permute(1, 2, 0).numpy(), maps[0].numpy(), probs.numpy()


def ground_truth_classes(split, index: int) -> list[int]:
    boxes = split.boxes[index] if split.boxes is not None else []
    if split.true_labels is not None:
        return np.nonzero(split.true_labels[index] == 1)[0].tolist()
    return sorted({int(box[0]) for box in boxes})


def draw_boxes(axis, boxes, size: tuple[int, int], only_class: int | None = None) -> None:
    height, width = size
    for box_class, x0, y0, x1, y1 in boxes:
        if only_class is None or int(box_class) == only_class:
            axis.add_patch(Rectangle((x0 * width - 0.5, y0 * height - 0.5), (x1 - x0) * width,
                                     (y1 - y0) * height, fill=False, edgecolor="lime", linewidth=1.5))


def plot_cams(model, split, class_names: list[str], indices: list[int], out: str) -> None:
    rows = [(index, *image_maps(model, split, index), ground_truth_classes(split, index))
            for index in indices]
    columns = 1 + max(len(classes) for *_, classes in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.4 * columns, 2.5 * len(rows)),
                                squeeze=False)
    for axes_row, (index, image, maps, probs, classes) in zip(axes, rows):
        boxes = split.boxes[index] if split.boxes is not None else []
        axes_row[0].imshow(image)
        draw_boxes(axes_row[0], boxes, image.shape[:2])
        axes_row[0].set_title(f"test image {index}", fontsize="small")
        for axis, c in zip(axes_row[1:], classes):
            cam = maps[c]
            axis.imshow(image)
            axis.imshow((cam - cam.min()) / max(np.ptp(cam), 1e-12), cmap="jet", alpha=0.45)
            draw_boxes(axis, boxes, image.shape[:2], only_class=c)
            y, x = np.unravel_index(np.argmax(cam), cam.shape)  # the first maximum, as the game
            axis.plot(x, y, marker="x", color="white", markersize=9, markeredgewidth=2)
            verdict = ""
            if any(int(box[0]) == c for box in boxes):
                hit = analysis.inside_a_box((x + 0.5) / cam.shape[1], (y + 0.5) / cam.shape[0],
                                            boxes, c)
                verdict = ", hit" if hit else ", miss"
            axis.set_title(f"{class_names[c]}: p={probs[c]:.2f}{verdict}", fontsize="small")
        for axis in axes_row:
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        model, split, class_names = load_model_and_test_split(args.checkpoint, args.data_root,
                                                              args.image_dir)
    except InputError as error:
        print(f"show_cam: {error}", file=sys.stderr)
        return 2
    bad = [index for index in args.images if not 0 <= index < len(split)]
    if bad:
        print(f"show_cam: --images {bad} outside the test split (0 … {len(split) - 1})",
              file=sys.stderr)
        return 2
    plot_cams(model, split, class_names, args.images, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
