"""The papers' analyses (docs/analyses.md), computed from tensors the trainer already has.

    training_set_metrics   memorisation loss groups (LL Fig. 1) and label recovery (Cole Table 3)
    highest_loss_epochs    the epoch at which each loss group peaked (LL "highest loss phase")
    TrainingTracker        precision of LL modifications and the corrections of chosen images,
                           counted on the device during training (no host sync per step)
    pointing_game          CAM pointing game (LL Table 4)

Label encodings as everywhere: observed N×L in {-1, 0, +1} (+1 observed positive, 0 unobserved),
true labels N×L in {0, 1}. "False negatives" are the unobserved entries whose true label is 1.
Nothing here runs unless --track_train / --pointing_game asks for it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largeloss.data.splits import ExperimentData, Split
from largeloss.engine.metrics import average_precisions
from largeloss.utils.errors import InputError

LOSS_GROUP_KEYS = ("loss_observed_pos", "loss_true_neg", "loss_false_neg")
BATCH_LOSS_GROUP_KEYS = tuple("batch_" + key for key in LOSS_GROUP_KEYS)
# the --track_train values appended to the per-epoch summary line
SUMMARY_FIELDS = (("loss_true_neg", "TN loss"), ("loss_false_neg", "FN loss"),
                  ("train_map_clean", "train mAP"), ("modification_precision", "mod. precision"))
POINTING_CHUNK = 64  # (image, class) maps upsampled at once: bounds the memory to 64·S² floats


def check_analysis_inputs(data: ExperimentData, track_train: bool, pointing_game: bool) -> None:
    """Refuse analyses the data cannot support, before any training."""
    if track_train and data.train.true_labels is None:
        raise InputError("--track_train needs clean training labels (for custom data: "
                         "train_clean.csv, see data/README.md); drop the flag to train without it")
    if pointing_game and not has_boxes(data.test):
        raise InputError("--pointing_game needs bounding boxes on the test split (pascal and coco "
                         "get them from scripts/prepare_data.py, digits has them); this test split "
                         "has none")


def has_boxes(split: Split) -> bool:
    return split.boxes is not None and any(len(boxes) > 0 for boxes in split.boxes)


# --- memorisation and label recovery ------------------------------------------------------------

def loss_groups(logits, observed, true_labels) -> dict[str, float | None]:
    """Mean per-entry AN loss BCE(x, observed.clip(0)) over three groups of entries (LL Fig. 1).

    Args:
        logits: N×L float; observed: N×L in {-1, 0, +1} (the current store, LL-Cp relabels
            included, so the groups are what the loss currently sees); true_labels: N×L in {0, 1}.
    Returns:
        loss_observed_pos: observed == +1; loss_true_neg: observed == 0 and true == 0;
        loss_false_neg: observed == 0 and true == 1. None for an empty group. Observed
        negatives (−1) belong to no group.
    """
    logits = torch.as_tensor(logits, dtype=torch.float32)
    observed = torch.as_tensor(observed)
    truly_positive = torch.as_tensor(true_labels) == 1
    per_entry = F.binary_cross_entropy_with_logits(logits, observed.clamp(min=0).float(),
                                                   reduction="none")
    unobserved = observed == 0
    masks = {"loss_observed_pos": observed == 1, "loss_true_neg": unobserved & ~truly_positive,
             "loss_false_neg": unobserved & truly_positive}
    return {key: float(per_entry[mask].double().mean()) if mask.any() else None
            for key, mask in masks.items()}


def training_set_metrics(logits: np.ndarray, observed: np.ndarray,
                         true_labels: np.ndarray) -> dict[str, float | None]:
    """The three loss groups and `train_map_clean`, the training-set mAP (0–100) against the
    clean labels (Cole et al.'s label recovery). logits: N×L in dataset order, eval mode, no flip."""
    metrics = loss_groups(logits, observed, true_labels)
    metrics["train_map_clean"] = 100.0 * float(average_precisions(logits, true_labels).mean())
    return metrics


def highest_loss_epochs(history: list[dict], keys=LOSS_GROUP_KEYS) -> dict[str, int | None]:
    """{group: the epoch with the group's largest loss} over the last training phase's rows
    (the earliest epoch on a tie; None when the group was never measured). Groups are named
    observed_pos, true_neg, false_neg; `keys` picks the eval-pass or the during-training losses."""
    rows = [row for row in history if row.get("phase") == history[-1].get("phase")] if history else []
    peaks = {}
    for key in keys:
        measured = [(row[key], row["epoch"]) for row in rows if row.get(key) is not None]
        group = key.split("loss_", 1)[1]
        peaks[group] = max(measured, key=lambda pair: pair[0])[1] if measured else None
    return peaks


def highest_loss_phase(history: list[dict]) -> dict:
    """results.json's "highest loss phase" table: `highest_loss_epoch` from the eval pass and
    `highest_batch_loss_epoch` from the training batches, each {group: epoch}."""
    return {"highest_loss_epoch": highest_loss_epochs(history, LOSS_GROUP_KEYS),
            "highest_batch_loss_epoch": highest_loss_epochs(history, BATCH_LOSS_GROUP_KEYS)}


# --- precision of modification and corrections ----------------------------------------------------

class TrainingTracker:
    """What happens during an epoch, counted on the device and read once at its end.

    Per epoch: `modification_precision` = modified entries that are false negatives / modified
    entries (None when nothing was modified), and `false_negative_rate` = false negatives /
    unobserved entries at the start of the epoch, the precision a random choice would get;
    `batch_loss_*`: the loss groups of `loss_groups` measured on the training batches themselves
    (train mode, flipped images, the weights changing over the epoch), the curve the optimiser
    sees, free of the eval-mode BatchNorm statistics.
    For the first `num_images` training rows that have a false negative, the classes modified in
    each epoch (LL-R: rejected, LL-Ct/LL-Cp: corrected) are kept for corrections.json.
    """

    def __init__(self, true_labels: np.ndarray, observed: np.ndarray, num_images: int,
                 device: torch.device):
        self.truly_positive = torch.as_tensor(true_labels == 1, device=device)
        has_false_negative = ((observed == 0) & (true_labels == 1)).any(axis=1)
        self.samples = np.nonzero(has_false_negative)[0][:num_images]
        # sample id → row of the corrections counter; untracked samples share a spare last row
        slots = torch.full((len(true_labels),), len(self.samples), dtype=torch.long)
        slots[torch.as_tensor(self.samples, dtype=torch.long)] = torch.arange(len(self.samples))
        self.slot_of_sample = slots.to(device)
        self.num_classes = true_labels.shape[1]
        self.device = device
        self.per_epoch: dict[int, list[list[int]]] = {}
        self.begin_epoch(torch.as_tensor(observed, device=device))

    def begin_epoch(self, observed: Tensor) -> None:
        """Reset the counters; `observed` is the store at the start of the epoch (N×L)."""
        unobserved = observed == 0
        self._unobserved = unobserved.sum()
        self._false_negatives = (unobserved & self.truly_positive).sum()
        self._modified = torch.zeros((), dtype=torch.long, device=self.device)
        self._modified_false_negatives = torch.zeros((), dtype=torch.long, device=self.device)
        self._corrections = torch.zeros(len(self.samples) + 1, self.num_classes, dtype=torch.int32,
                                        device=self.device)
        self._group_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._group_counts = torch.zeros(3, dtype=torch.long, device=self.device)

    def record_step(self, sample_ids: Tensor, modified: Tensor, logits: Tensor,
                    observed: Tensor) -> None:
        """sample_ids: B on the device; modified: B×L bool from compute_loss; logits: B×L of the
        training forward pass; observed: B×L, the store's rows before this step's LL-Cp
        relabels. No host sync."""
        truly_positive = self.truly_positive[sample_ids]
        per_entry = F.binary_cross_entropy_with_logits(
            logits.detach().float(), observed.clamp(min=0).float(), reduction="none")
        unobserved = observed == 0
        groups = torch.stack([observed == 1, unobserved & ~truly_positive,
                              unobserved & truly_positive])                      # 3×B×L
        self._group_sums += (per_entry * groups).sum(dim=(1, 2))
        self._group_counts += groups.sum(dim=(1, 2))
        self._modified += modified.sum()
        self._modified_false_negatives += (modified & truly_positive).sum()
        self._corrections.index_put_((self.slot_of_sample[sample_ids],), modified.int(),
                                     accumulate=True)

    def end_epoch(self, epoch: int) -> dict[str, float | None]:
        """Read the counters (one host transfer) and keep the tracked images' modifications."""
        counts = torch.stack([self._modified, self._modified_false_negatives, self._unobserved,
                              self._false_negatives])
        values = torch.cat([counts.double(), self._group_counts.double(), self._group_sums]).tolist()
        modified, modified_fn, unobserved, false_negatives = values[:4]
        group_counts, group_sums = values[4:7], values[7:]
        changed = (self._corrections[:-1] > 0).cpu().numpy()
        self.per_epoch[epoch] = [np.nonzero(row)[0].tolist() for row in changed]
        metrics = {key: total / count if count else None
                   for key, total, count in zip(BATCH_LOSS_GROUP_KEYS, group_sums, group_counts)}
        metrics["modification_precision"] = modified_fn / modified if modified else None
        metrics["false_negative_rate"] = false_negatives / unobserved if unobserved else None
        return metrics

    def corrections(self, class_names: list[str], train: Split) -> list[dict]:
        """corrections.json: per tracked image its clean and observed positives and, per epoch,
        the classes modified."""
        image_paths = getattr(train.images, "image_paths", None)
        return [{"sample": int(sample),
                 "image": None if image_paths is None else image_paths[sample],
                 "true": [class_names[c] for c in np.nonzero(train.true_labels[sample] == 1)[0]],
                 "observed": [class_names[c] for c in np.nonzero(train.observed[sample] == 1)[0]],
                 "per_epoch": {str(epoch): [class_names[c] for c in rows[slot]]
                               for epoch, rows in sorted(self.per_epoch.items())}}
                for slot, sample in enumerate(self.samples)]

    def state_dict(self) -> dict:
        return {"per_epoch": {int(epoch): rows for epoch, rows in self.per_epoch.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.per_epoch = {int(epoch): rows for epoch, rows in state["per_epoch"].items()}


# --- class activation maps and the pointing game ---------------------------------------------------

def pointing_hits(cams: Tensor, boxes_per_image: list, true_labels,
                  image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pointing-game hits and trials per class for one batch.

    Args:
        cams: B×L×h×w class activation maps.
        boxes_per_image: B lists of (class, x0, y0, x1, y1) in [0, 1] image coordinates.
        true_labels: B×L in {0, 1}, or None (then every class with a box is a ground-truth class).
        image_size: (H, W): upsample each map bilinearly (align_corners=False) to the image and
            take the argmax pixel's centre; None: take the centre of the argmax feature-map cell.
    A trial is an (image, ground-truth class with ≥ 1 box) pair; a hit when the map's maximum
    (the first one on a tie) lies inside any box of that class, edges included.
    Returns (hits, trials), each an int64 array of length L.
    """
    num_classes = cams.shape[1]
    hits = np.zeros(num_classes, dtype=np.int64)
    trials = np.zeros(num_classes, dtype=np.int64)
    pairs = [(row, c) for row, boxes in enumerate(boxes_per_image)
             for c in sorted({int(box[0]) for box in boxes})
             if true_labels is None or true_labels[row][c] == 1]
    for start in range(0, len(pairs), POINTING_CHUNK):
        chunk = pairs[start:start + POINTING_CHUNK]
        rows = torch.tensor([row for row, _ in chunk], device=cams.device)
        classes = torch.tensor([c for _, c in chunk], device=cams.device)
        maps = cams[rows, classes].float()                                   # P×h×w
        if image_size is not None:
            maps = F.interpolate(maps[:, None], size=tuple(image_size), mode="bilinear",
                                 align_corners=False)[:, 0]
        height, width = maps.shape[-2:]
        flat = maps.flatten(1).argmax(dim=1).cpu()
        xs = ((flat % width).double() + 0.5) / width
        ys = ((flat // width).double() + 0.5) / height
        for (row, c), x, y in zip(chunk, xs.tolist(), ys.tolist()):
            trials[c] += 1
            hits[c] += inside_a_box(x, y, boxes_per_image[row], c)
    return hits, trials


def inside_a_box(x: float, y: float, boxes: list, class_index: int) -> bool:
    """Whether the point (x, y) in [0, 1] image coordinates lies in a box of `class_index`
    (edges included); boxes: (class, x0, y0, x1, y1)."""
    return any(x0 <= x <= x1 and y0 <= y <= y1
               for box_class, x0, y0, x1, y1 in boxes if int(box_class) == class_index)


def pointing_game(cams: Tensor, boxes_per_image: list, true_labels,
                  image_size: tuple[int, int] | None = None) -> tuple[list[float | None], float]:
    """(per-class hit rate in [0, 1], None for a class without trials; their mean over the classes
    with trials, NaN when there is none). Arguments as `pointing_hits`."""
    hits, trials = pointing_hits(cams, boxes_per_image, true_labels, image_size)
    return hit_rates(hits, trials)


def hit_rates(hits: np.ndarray, trials: np.ndarray) -> tuple[list[float | None], float]:
    per_class = [float(h / t) if t else None for h, t in zip(hits, trials)]
    measured = [rate for rate in per_class if rate is not None]
    return per_class, float(np.mean(measured)) if measured else math.nan


@torch.inference_mode()
def pointing_game_on_split(model: nn.Module, split: Split, loader, preprocess,
                           device: torch.device, class_names: list[str]) -> dict:
    """The pointing game of `model` on `split` (CAMs upsampled to the input size), for results.json:
    pointing_game (mean, 0–100), pointing_game_per_class ({class: 0–100 or None}),
    pointing_game_trials (image-class pairs evaluated)."""
    model.eval()
    hits = trials = 0
    for images, sample_ids in loader:
        images = preprocess(images.to(device, non_blocking=True), train=False)
        ids = sample_ids.tolist()
        batch_hits, batch_trials = pointing_hits(
            model.class_activation_maps(images), [split.boxes[i] for i in ids],
            None if split.true_labels is None else split.true_labels[ids],
            image_size=tuple(images.shape[-2:]))
        hits, trials = hits + batch_hits, trials + batch_trials
    per_class, mean = hit_rates(hits, trials)
    return {"pointing_game": 100.0 * mean,
            "pointing_game_per_class": {name: None if rate is None else 100.0 * rate
                                        for name, rate in zip(class_names, per_class)},
            "pointing_game_trials": int(np.sum(trials))}
