"""The embedded digits dataset: sklearn 8×8 digits drawn on a 3×3 grid, 1–4 per 48×48 canvas, with
clean labels and boxes; fixed by DIGITS_SEED (--seed changes the run, not the data)."""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from largeloss.data import formats
from largeloss.data.loading import TensorImageDataset
from largeloss.data.splits import ExperimentData, Split

DIGIT_CELL = 16          # a digit is drawn in a 16×16 cell of a 3×3 grid on a 48×48 canvas
DIGIT_GRID = 3
DIGIT_COUNTS = (1, 2, 3, 4)
DIGIT_COUNT_PROBS = (0.15, 0.35, 0.3, 0.2)
DIGITS_SEED = 2022       # the dataset is fixed; --seed changes the run, not the data


def make_digit_canvases(source_images: np.ndarray, source_labels: np.ndarray, num_images: int,
                        rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, list]:
    """Place 1–4 digits of distinct classes in random cells of a 3×3 grid.

    Args:
        source_images: M×8×8 in [0, 16] (scikit-learn digits); source_labels: M.
    Returns:
        images N×3×48×48 uint8 (coloured digits on a noisy dark background), labels N×10 uint8,
        boxes: per image a list of (class, x0, y0, x1, y1) in [0, 1] coordinates.
    """
    size = DIGIT_CELL * DIGIT_GRID
    images = np.zeros((num_images, 3, size, size), dtype=np.float32)
    labels = np.zeros((num_images, 10), dtype=np.uint8)
    boxes = []
    by_class = [np.nonzero(source_labels == digit)[0] for digit in range(10)]
    for image_index in range(num_images):
        count = rng.choice(DIGIT_COUNTS, p=DIGIT_COUNT_PROBS)
        classes = rng.choice(10, size=count, replace=False)
        cells = rng.choice(DIGIT_GRID * DIGIT_GRID, size=count, replace=False)
        image_boxes = []
        for digit, cell in zip(classes, cells):
            glyph = source_images[rng.choice(by_class[digit])] / 16.0
            glyph = np.kron(glyph, np.ones((2, 2)))                      # 16×16
            colour = rng.uniform(0.5, 1.0, size=3)
            top, left = (cell // DIGIT_GRID) * DIGIT_CELL, (cell % DIGIT_GRID) * DIGIT_CELL
            images[image_index, :, top:top + DIGIT_CELL, left:left + DIGIT_CELL] = \
                np.maximum(images[image_index, :, top:top + DIGIT_CELL, left:left + DIGIT_CELL],
                           colour[:, None, None] * glyph[None])
            labels[image_index, digit] = 1
            image_boxes.append((int(digit), left / size, top / size,
                                (left + DIGIT_CELL) / size, (top + DIGIT_CELL) / size))
        boxes.append(image_boxes)
    images += rng.uniform(0, 0.15, size=images.shape)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels, boxes


def load_digits_data(train_size: int, image_size: int) -> ExperimentData:
    """The embedded dataset: scikit-learn's bundled digits (no download), deterministic.

    Train, val and test canvases draw from disjoint pools (60/20/20 %) of the 1,797 source digits.
    Training observed labels keep one positive per image (docs/protocol.md §Observed labels).
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.RandomState(DIGITS_SEED)
    pools = np.split(rng.permutation(len(digits.target)), [1078, 1437])
    sizes = (train_size, max(train_size // 4, 50), max(train_size // 2, 100))
    splits = []
    for pool, num_images in zip(pools, sizes):
        images, labels, boxes = make_digit_canvases(digits.images[pool], digits.target[pool],
                                                    num_images, rng)
        images = torch.from_numpy(images)
        if image_size != images.shape[-1]:
            images = TF.resize(images, [image_size, image_size], antialias=True)
        splits.append((TensorImageDataset(images), labels, boxes))
    (train_images, train_labels, train_boxes), val, test = splits
    observed = formats.make_observed_labels(train_labels).astype(np.int8)
    return ExperimentData(
        train=Split(train_images, observed, train_labels, train_boxes,
                    image_ids=digits_image_ids("train", len(observed))),
        val=Split(val[0], val[1].astype(np.int8), val[1], val[2]),
        test=Split(test[0], test[1].astype(np.int8), test[1], test[2]),
        class_names=[str(digit) for digit in range(10)])


def digits_image_ids(split: str, num_images: int) -> list[str]:
    """Names for the generated canvases ("train/000000.png", ...): no file exists; pseudo-label
    folders of the digits simulation are matched to the split by them."""
    return [f"{split}/{index:06d}.png" for index in range(num_images)]
