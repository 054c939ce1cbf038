"""The training set's label state, indexed by sample id and owned by the method that uses it.

Every store speaks the `LabelStore` protocol: `rows(sample_ids)` gives a batch's B×L int8 labels in
{-1, 0, +1}, `apply_relabel` turns entries into observed positives for good (LL-Cp), and
`state_dict`/`load_state_dict` put the state into checkpoints. `build_label_store` makes the one a
split needs: `ObservedLabelStore` (an N×L matrix) for dense labels, `SparseLabelStore` (the labelled
entries only, CSR) for label sets too large for N×L (OpenImages). ROLE's `LabelEstimator` (N×L
logits θ) lives here too: it is label state, trained beside the model.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from largeloss.data.sparse_labels import SparseLabels


class LabelStore(Protocol):
    """What a method needs of the training set's observed labels (N images × L classes)."""
    num_classes: int
    holds_every_entry: bool  # an N×L matrix (True), or only the labelled entries (False)

    @property
    def num_images(self) -> int: ...

    @property
    def num_unobserved(self) -> int: ...

    @property
    def num_relabeled(self) -> int: ...

    def rows(self, sample_ids: Tensor) -> Tensor:
        """B×L int8 labels in {-1, 0, +1} of the batch, relabels applied; no host sync."""

    def labelled_values(self) -> Tensor:
        """The stored label values (all N·L entries, or only the labelled ones), int8."""

    def apply_relabel(self, sample_ids: Tensor, relabel: Tensor) -> None:
        """Turn the True entries of `relabel` (B×L bool) into observed positives, permanently."""

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


def build_label_store(observed, device: torch.device | str = "cpu") -> LabelStore:
    """The store for a training split's labels: `SparseLabels` (CSR, OpenImages) → SparseLabelStore;
    an N×L matrix in {-1, 0, +1} (numpy or tensor) → ObservedLabelStore. A store is used as is."""
    if hasattr(observed, "rows") and hasattr(observed, "apply_relabel"):
        return observed
    if isinstance(observed, SparseLabels):
        return SparseLabelStore.from_labels(observed, device)
    return ObservedLabelStore(observed, device)


def _segment_positions(starts: Tensor, ends: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """B×width positions starts[b] + j (0 where j is past the segment) and which are inside it."""
    positions = starts[:, None] + torch.arange(width, device=starts.device)
    inside = positions < ends[:, None]
    return positions.masked_fill(~inside, 0), inside


def _max_keys_per_row(keys: Tensor, num_classes: int) -> int:
    """The most entries any row has in a sorted key tensor (key = row·L + class); a host sync."""
    if keys.numel() == 0:
        return 0
    return int(torch.unique_consecutive(keys // num_classes, return_counts=True)[1].max())


class SparseLabelStore:
    """The observed labels of the training set in CSR form, with LL-Cp's permanent relabels kept
    as sparse additions: `losses.ObservedLabelStore`'s interface for label sets too large for an
    N×L matrix (OpenImages V3: 3.7M × 5000 = 18.5 GB as int8; ~135 MB here).

    Given labels: the CSR arrays on `device` (indptr int64, indices int32, values int8).
    Relabels: a set of int64 keys `row·L + class`, each entry relabelled to +1. Two sorted,
    disjoint key tensors hold it: `recent` (merged with each batch's few new keys) and `settled`
    (absorbs `recent` once it reaches `merge_size` keys), so a step sorts at most `merge_size`
    keys and the full set is re-sorted once per `merge_size` relabels. Memory: 8 bytes per
    relabelled entry.

    `rows` builds dense B×L rows on the device with no Python loop over rows and no host sync:
    each image's segment is read through a B×width window (width = the longest segment, known on
    the host), and padding positions scatter into a spare column L that is cut off.
    """

    holds_every_entry = False

    def __init__(self, indptr, indices, values, num_classes: int,
                 device: torch.device | str = "cpu", merge_size: int = 1 << 18):
        """indptr N+1, indices nnz, values nnz (numpy arrays or CPU tensors, validated
        beforehand by `check_sparse_labels`); merge_size: see the class docstring."""
        self.device = torch.device(device)
        self.indptr = torch.as_tensor(np.asarray(indptr, dtype=np.int64)).to(self.device)
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int32)).to(self.device)
        self.values = torch.as_tensor(np.asarray(values, dtype=np.int8)).to(self.device)
        self.num_classes = int(num_classes)
        self.merge_size = merge_size
        row_lengths = self.indptr[1:] - self.indptr[:-1]
        self._max_row_length = int(row_lengths.max()) if row_lengths.numel() else 0
        self._settled = self._recent = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._settled_width = self._recent_width = 0  # most relabels in one row, per key tensor
        self._relabeled_negatives = 0  # relabels that overrode an observed negative

    @classmethod
    def from_labels(cls, labels: SparseLabels, device: torch.device | str = "cpu",
                    **kwargs) -> SparseLabelStore:
        return cls(labels.indptr, labels.indices, labels.values, labels.num_classes, device,
                   **kwargs)

    @property
    def num_images(self) -> int:
        return self.indptr.numel() - 1

    @property
    def num_labelled(self) -> int:
        """Labelled entries given (nnz), relabels not included."""
        return self.indices.numel()

    @property
    def num_relabeled(self) -> int:
        """Entries turned into observed positives so far, each counted once (no host sync: the
        key tensors' lengths are known on the host)."""
        return self._settled.numel() + self._recent.numel()

    @property
    def num_unobserved(self) -> int:
        """N·L minus the labelled entries (given ones and relabels of unobserved entries)."""
        relabeled_unobserved = self.num_relabeled - self._relabeled_negatives
        return self.num_images * self.num_classes - self.num_labelled - relabeled_unobserved

    def labelled_values(self) -> Tensor:
        """nnz int8 in {-1, +1}: the given labelled entries (relabels not included)."""
        return self.values

    def rows(self, sample_ids: Tensor) -> Tensor:
        """B×L int8 observed labels in {-1, 0, +1} of the batch, relabels applied.

        sample_ids: B int64 row indices (moved to the store's device).
        """
        sample_ids = sample_ids.to(self.device, non_blocking=True).long()
        num_classes = self.num_classes
        dense = torch.zeros(len(sample_ids), num_classes + 1, dtype=torch.int8,
                            device=self.device)  # column L collects the padding
        if self._max_row_length:
            positions, inside = _segment_positions(self.indptr[sample_ids],
                                                   self.indptr[sample_ids + 1],
                                                   self._max_row_length)
            columns = torch.where(inside, self.indices[positions].long(), num_classes)
            dense.scatter_(1, columns, torch.where(inside, self.values[positions], 0))
        first_keys = sample_ids * num_classes
        for keys, width in ((self._settled, self._settled_width),
                            (self._recent, self._recent_width)):
            if width:
                positions, inside = _segment_positions(
                    torch.searchsorted(keys, first_keys),
                    torch.searchsorted(keys, first_keys + num_classes), width)
                columns = torch.where(inside, keys[positions] - first_keys[:, None], num_classes)
                dense.scatter_(1, columns, 1)
        return dense[:, :num_classes].contiguous()

    def apply_relabel(self, sample_ids: Tensor, relabel: Tensor) -> None:
        """Turn the True entries of `relabel` (B×L bool) into observed positives, permanently.

        An entry that is already positive (given or relabelled), or appears twice because a
        sample is twice in the batch, counts once. One host sync (the number of new relabels).
        """
        sample_ids = sample_ids.to(self.device, non_blocking=True).long()
        current = self.rows(sample_ids)
        batch_rows, classes = (relabel.to(self.device) & (current != 1)).nonzero(as_tuple=True)
        if batch_rows.numel() == 0:
            return
        keys, inverse = torch.unique(sample_ids[batch_rows] * self.num_classes + classes,
                                     return_inverse=True)
        was_negative = torch.zeros(keys.shape, dtype=torch.bool, device=self.device)
        was_negative.scatter_(0, inverse, current[batch_rows, classes] == -1)
        self._relabeled_negatives += int(was_negative.sum())
        # `keys` are disjoint from both tensors: their entries were not +1 in `current`
        self._recent = torch.sort(torch.cat([self._recent, keys])).values
        if self._recent.numel() >= self.merge_size:
            self._settled = torch.sort(torch.cat([self._settled, self._recent])).values
            self._recent = self._recent[:0]
            self._settled_width = _max_keys_per_row(self._settled, self.num_classes)
        self._recent_width = _max_keys_per_row(self._recent, self.num_classes)

    def to_dense(self) -> Tensor:
        """N×L int8 of the current labels. N·L bytes: for small sets and tests only."""
        return self.rows(torch.arange(self.num_images, device=self.device))

    def state_dict(self) -> dict[str, Tensor]:
        """Plain CPU tensors (torch.load(weights_only=True) reads them): the relabel keys, sorted,
        and what identifies the given labels (shape, nnz), which the data files hold."""
        return {"relabeled": torch.sort(torch.cat([self._settled, self._recent])).values.cpu(),
                "relabeled_negatives": torch.tensor(self._relabeled_negatives),
                "shape": torch.tensor([self.num_images, self.num_classes]),
                "num_labelled": torch.tensor(self.num_labelled)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the relabels of `state_dict()`; refuses one made for other labels."""
        shape = tuple(state["shape"].tolist())
        if shape != (self.num_images, self.num_classes):
            raise ValueError(f"the checkpoint's labels are {shape[0]}×{shape[1]}, this store's "
                             f"{self.num_images}×{self.num_classes}")
        if int(state["num_labelled"]) != self.num_labelled:
            raise ValueError(f"the checkpoint was made with {int(state['num_labelled'])} labelled "
                             f"entries, this store has {self.num_labelled}")
        keys = state["relabeled"].to(device=self.device, dtype=torch.int64)
        if keys.numel() and (bool((keys[1:] <= keys[:-1]).any()) or int(keys[0]) < 0
                             or int(keys[-1]) >= self.num_images * self.num_classes):
            raise ValueError("the checkpoint's relabel keys are not sorted, unique keys "
                             "row·L + class within the labels' shape")
        self._settled, self._recent = keys, keys[:0]
        self._settled_width = _max_keys_per_row(keys, self.num_classes)
        self._recent_width = 0
        self._relabeled_negatives = int(state["relabeled_negatives"])


def logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


class LabelEstimator(nn.Module):
    """ROLE's label estimator θ ∈ R^(N×L) over the whole training set (docs/methods.md §ROLE).

    Memory: N·L float32 values, plus two Adam moments of the same size, so 12·N·L bytes on the
    training device (COCO: 65,665 × 80 → 63 MB; OpenImages-size 1.7M × 5000 → 102 GB: too much).
    Init: observed +1 → logit(0.995), −1 → logit(0.005), unobserved → U(−logit(0.6), logit(0.6)).
    """

    def __init__(self, observed: Tensor, seed: int):
        super().__init__()
        observed = torch.as_tensor(observed)
        generator = torch.Generator().manual_seed(seed)
        bound = logit(0.6)
        init = (torch.rand(observed.shape, generator=generator) * 2 - 1) * bound
        init[observed == 1] = logit(0.995)
        init[observed == -1] = logit(0.005)
        self.logits = nn.Parameter(init)

    def forward(self, sample_ids: Tensor) -> Tensor:
        """θ rows of the batch: B×L logits."""
        return self.logits[sample_ids]


class ObservedLabelStore:
    """The observed labels of the training set, indexed by sample id, with LL-Cp's relabels.

    Owned by the main process (data-loader workers never see it), so corrections survive
    persistent workers; saved in checkpoints through `state_dict()`.
    """

    holds_every_entry = True

    def __init__(self, observed, device: torch.device | str = "cpu"):
        # a copy: LL-Cp's relabels must not write into the split's labels (or another method's)
        self.observed = torch.as_tensor(observed).to(device=device, dtype=torch.int8, copy=True)
        self._initial_positives = (self.observed == 1).sum()
        self.num_unobserved = int((self.observed == 0).sum())  # before any relabel

    @property
    def num_images(self) -> int:
        return self.observed.shape[0]

    @property
    def num_classes(self) -> int:
        return self.observed.shape[1]

    def rows(self, sample_ids: Tensor) -> Tensor:
        """B×L int8 observed labels of the batch."""
        return self.observed[sample_ids]

    def labelled_values(self) -> Tensor:
        """N×L int8: every entry (0 for unobserved)."""
        return self.observed

    def apply_relabel(self, sample_ids: Tensor, relabel: Tensor) -> None:
        """Turn the True entries of `relabel` (B×L bool) into observed positives, permanently."""
        rows = self.observed[sample_ids]
        self.observed[sample_ids] = rows.masked_fill(relabel.to(rows.device), 1)

    @property
    def num_relabeled(self) -> int:
        """Entries turned into observed positives so far (a host sync: call once per epoch)."""
        return int((self.observed == 1).sum() - self._initial_positives)

    def state_dict(self) -> dict[str, Tensor]:
        return {"observed": self.observed.cpu(), "initial_positives": self._initial_positives.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["observed"].shape != self.observed.shape:
            raise ValueError(f"observed labels in the checkpoint have shape "
                             f"{tuple(state['observed'].shape)}, expected {tuple(self.observed.shape)}")
        self.observed = state["observed"].to(device=self.observed.device, dtype=torch.int8)
        self._initial_positives = state["initial_positives"].to(self.observed.device)
