"""Training methods as objects: each owns the state it keeps across batches, the trainer calls it.

A method is built from the training split's labels and its hyper-parameters, computes the batch
loss from logits and sample ids (through the pure, tested `losses.compute_loss`), and keeps what
outlives a batch: the observed labels with LL-Cp's permanent relabels, ROLE's label estimator.
The trainer never asks which method it runs; it calls

    output = method.loss(logits, sample_ids, epoch)    # LossOutput: loss, modified, relabel
    method.after_step(sample_ids, output)              # LL-Cp writes its relabels here
    method.end_epoch(epoch, training_set_logits)       # methods that relabel from a pass over
                                                       # the training set call the function
    method.parameter_groups()                          # ROLE's θ and its learning-rate multiplier
    method.state_dict() / method.load_state_dict()     # saved in every checkpoint

Adding a method: one subclass of `Method`, decorated with `@register`, its tests and a README row.
`--loss` offers every registered method without `base_loss`; `--mod_scheme` offers those that
modify a base loss (the large-loss schemes modify `an`).

    import torch, methods
    observed = torch.tensor([[1, 0, 0], [0, 1, 0]])              # N×L in {-1, 0, +1}
    method = methods.build("LL-Ct", observed, delta_rel=20.0)
    logits = torch.randn(2, 3, requires_grad=True)                # B×L from your model
    output = method.loss(logits, torch.tensor([0, 1]), epoch=2)
    output.loss.backward()
"""
from __future__ import annotations

import warnings
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from errors import InputError
from losses import LabelEstimator, LossOutput, ObservedLabelStore, compute_loss, ll_num_modified
from sparse_labels import SparseLabelStore

METHODS: dict[str, type[Method]] = {}


def register(method_class: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its `name` (CLI, scripts, checks)."""
    if method_class.name in METHODS and METHODS[method_class.name] is not method_class:
        raise ValueError(f"a method named {method_class.name!r} is registered already")
    METHODS[method_class.name] = method_class
    return method_class


def base_losses() -> tuple[str, ...]:
    """The names `--loss` accepts: methods that stand on their own."""
    return tuple(name for name, cls in METHODS.items() if cls.base_loss is None)


def schemes() -> tuple[str, ...]:
    """The names `--mod_scheme` accepts: methods that modify a base loss."""
    return tuple(name for name, cls in METHODS.items() if cls.base_loss is not None)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}")
    return METHODS[name]


def build(name: str, observed, true_labels=None, *, device: torch.device | str = "cpu",
          delta_rel: float = 0.0, expected_num_pos: float | None = None, seed: int = 0,
          estimator_lr_mult: float = 10.0) -> Method:
    """The method `name` for a training split.

    Args:
        observed: N×L in {-1, 0, +1}, the training split's observed labels, or a ready
            sparse_labels.SparseLabelStore (label sets too large for an N×L matrix), used as is.
        true_labels: N×L in {0, 1} or None; given only to methods that declare needs_true_labels.
        delta_rel, expected_num_pos, seed, estimator_lr_mult: the hyper-parameters; each method
            takes the ones it declares in `hyper_parameters`.
    """
    cls = method_class(name)
    offered = {"delta_rel": delta_rel, "expected_num_pos": expected_num_pos, "seed": seed,
               "estimator_lr_mult": estimator_lr_mult}
    hyper_parameters = {key: offered[key] for key in cls.hyper_parameters}
    return cls(observed, true_labels if cls.needs_true_labels else None, device=device,
               **hyper_parameters)


def label_store(observed, device, name: str, dense_bytes_per_entry: int):
    """A SparseLabelStore as is (refused for a method keeping `dense_bytes_per_entry` > 0 bytes
    of N×L state: InputError with the memory it would need), else an ObservedLabelStore."""
    if not isinstance(observed, SparseLabelStore):
        return ObservedLabelStore(observed, device)
    if dense_bytes_per_entry:
        num_images, num_classes = observed.num_images, observed.num_classes
        needed = num_images * num_classes * dense_bytes_per_entry
        raise InputError(f"--loss {name} keeps an N×L estimator: {_count(num_images)} × "
                         f"{_count(num_classes)} × {dense_bytes_per_entry} bytes = "
                         f"{_size(needed)}; not with sparse labels (--dataset openimages)")
    return observed


def _count(number: int) -> str:
    return f"{number / 1e6:.2g}M" if number >= 1e6 else str(number)


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{num_bytes} bytes"


class Method:
    """A training method: the observed labels of the training set and the loss on a batch.

    Class attributes a subclass sets:
        name: the CLI name. base_loss: the loss it modifies (--mod_scheme), None for a loss.
        needs_true_labels: trains on clean labels (upper bounds, IUN).
        needs_observed_negatives: cannot train without observed negatives (IU).
        needs_expected_num_pos: needs k, the expected positives per image (EPR, ROLE).
        modifies_entries: reports LL modifications (--track_train's corrections.json).
        hyper_parameters: the keyword arguments of __init__ that `build` passes.
        dense_bytes_per_entry: bytes of N×L state the method keeps besides the labels (refused
            on a SparseLabelStore, whose point is that N×L does not fit).
    """
    name: ClassVar[str]
    base_loss: ClassVar[str | None] = None
    needs_true_labels: ClassVar[bool] = False
    needs_observed_negatives: ClassVar[bool] = False
    needs_expected_num_pos: ClassVar[bool] = False
    modifies_entries: ClassVar[bool] = False
    hyper_parameters: ClassVar[tuple[str, ...]] = ()
    dense_bytes_per_entry: ClassVar[int] = 0

    def __init__(self, observed, true_labels=None, *, device: torch.device | str = "cpu"):
        self.labels = label_store(observed, device, self.name, self.dense_bytes_per_entry)
        self.true_labels = (None if true_labels is None
                            else torch.as_tensor(np.asarray(true_labels), device=device))
        if self.needs_true_labels and true_labels is None:
            raise InputError(f"--loss {self.name} needs clean training labels (custom data: "
                             f"train_clean.csv; OpenImages has none)")
        self.check_labels(self.labels.values if isinstance(self.labels, SparseLabelStore)
                          else self.labels.observed)  # the labelled entries, or all of them

    @classmethod
    def check_labels(cls, observed: Tensor) -> None:
        """Refuse training labels this method cannot learn from (InputError with the reason)."""
        if cls.needs_observed_negatives and not bool((observed == -1).any()):
            raise InputError(f"--loss {cls.name} needs observed negatives, and the training labels "
                             f"have none (prepare them with --num_neg > 0)")

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        """The loss on a batch. logits: B×L; sample_ids: B training-set rows on the logits'
        device; epoch: 1-based, counted within the training phase. No host sync."""
        return compute_loss(self.name, logits, self.labels.rows(sample_ids),
                            true_labels=self._true_rows(sample_ids), epoch=epoch,
                            check_values=False, **self._loss_arguments(sample_ids))

    def _true_rows(self, sample_ids: Tensor) -> Tensor | None:
        return None if self.true_labels is None else self.true_labels[sample_ids]

    def _loss_arguments(self, sample_ids: Tensor) -> dict:
        """Extra keyword arguments of compute_loss for this method."""
        return {}

    def after_step(self, sample_ids: Tensor, output: LossOutput) -> None:
        """Called after each optimiser step with the step's output."""

    def end_epoch(self, epoch: int, training_set_logits: Callable[[], Tensor]) -> None:
        """Called after each training epoch, before evaluation. training_set_logits() returns the
        N×L float32 logits of the whole training set in dataset order (eval mode, no flip, on the
        method's device); it costs a pass over the training set, so call it only when needed."""

    def check_batch_size(self, batch_size: int) -> None:
        """Warn about a batch size with which the method cannot act as intended."""

    def parameter_groups(self, base_lr: float) -> list[dict]:
        """Optimiser parameter groups of what the method trains itself (none by default)."""
        return []

    @property
    def num_relabeled(self) -> int:
        """Entries turned into observed positives so far (one host sync: once per epoch)."""
        return self.labels.num_relabeled

    def state_dict(self) -> dict:
        return {"store": self.labels.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.labels.load_state_dict(state["store"])


# --- Cole et al. (CVPR 2021) ------------------------------------------------------------------------

@register
class BCE(Method):
    """Full-label BCE on the clean labels: the upper bound."""
    name = "bce"
    needs_true_labels = True


@register
class BCELabelSmoothing(Method):
    """Full-label BCE with label smoothing ε = 0.1."""
    name = "bce_ls"
    needs_true_labels = True


@register
class IgnoreUnobservedPositives(Method):
    """IUN: observed positives and true negatives; unobserved positives ignored (uses clean labels)."""
    name = "iun"
    needs_true_labels = True


@register
class IgnoreUnobserved(Method):
    """IU: observed positives and observed negatives only."""
    name = "iu"
    needs_observed_negatives = True


@register
class AssumeNegative(Method):
    """AN: every unobserved label is a negative."""
    name = "an"


@register
class AssumeNegativeLabelSmoothing(Method):
    """AN-LS: AN with label smoothing ε = 0.1."""
    name = "an_ls"


@register
class WeakAssumeNegative(Method):
    """WAN: AN with negatives down-weighted by 1/(L−1)."""
    name = "wan"


@register
class ExpectedPositiveRegularisation(Method):
    """EPR: observed positives plus the expected-positive regulariser (k per image)."""
    name = "epr"
    needs_expected_num_pos = True
    hyper_parameters = ("expected_num_pos",)

    def __init__(self, observed, true_labels=None, *, device="cpu", expected_num_pos: float):
        super().__init__(observed, true_labels, device=device)
        self.expected_num_pos = expected_num_pos

    def _loss_arguments(self, sample_ids: Tensor) -> dict:
        return {"expected_num_pos": self.expected_num_pos}


@register
class OnlineLabelEstimation(Method):
    """ROLE: the classifier and an N×L label estimator θ teach each other (SPEC §5). θ trains at
    estimator_lr_mult × the phase's learning rate, without weight decay."""
    name = "role"
    needs_expected_num_pos = True
    hyper_parameters = ("expected_num_pos", "seed", "estimator_lr_mult")
    dense_bytes_per_entry = 12  # θ in float32 and Adam's two moments

    def __init__(self, observed, true_labels=None, *, device="cpu", expected_num_pos: float,
                 seed: int, estimator_lr_mult: float):
        super().__init__(observed, true_labels, device=device)
        self.expected_num_pos = expected_num_pos
        self.estimator_lr_mult = estimator_lr_mult
        self.estimator: nn.Module = LabelEstimator(observed, seed).to(device)

    def _loss_arguments(self, sample_ids: Tensor) -> dict:
        return {"expected_num_pos": self.expected_num_pos,
                "estimator_logits": self.estimator(sample_ids)}

    def parameter_groups(self, base_lr: float) -> list[dict]:
        return [{"params": list(self.estimator.parameters()),
                 "lr": base_lr * self.estimator_lr_mult, "weight_decay": 0.0}]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.estimator.load_state_dict(state["estimator"])


# --- Kim et al. (CVPR 2022): the large-loss schemes on top of AN ------------------------------------

class LargeLoss(Method):
    """AN whose largest unobserved losses are modified, k per batch growing with the epoch
    (SPEC §4); Δrel in percent per epoch."""
    base_loss = "an"
    modifies_entries = True
    hyper_parameters = ("delta_rel",)

    def __init__(self, observed, true_labels=None, *, device="cpu", delta_rel: float):
        super().__init__(observed, true_labels, device=device)
        if delta_rel < 0:
            raise ValueError(f"delta_rel must be >= 0 (percent per epoch), got {delta_rel}")
        self.delta_rel = delta_rel

    def _loss_arguments(self, sample_ids: Tensor) -> dict:
        return {"delta_rel": self.delta_rel}


@register
class LargeLossRejection(LargeLoss):
    """LL-R: the large losses are left out of the loss."""
    name = "LL-R"


@register
class LargeLossCorrectionTemporary(LargeLoss):
    """LL-Ct: the large-loss entries are treated as positives in this batch."""
    name = "LL-Ct"


@register
class LargeLossCorrectionPermanent(LargeLoss):
    """LL-Cp: the entries above the threshold become observed positives for good."""
    name = "LL-Cp"

    def after_step(self, sample_ids: Tensor, output: LossOutput) -> None:
        self.labels.apply_relabel(sample_ids, output.relabel)

    def check_batch_size(self, batch_size: int) -> None:
        """LL-Cp relabels the candidates strictly above the k-th largest loss: with k = 1 per batch
        (e.g. pascal's B=16, L=20, Δrel=0.1) nothing is ever relabeled and LL-Cp acts as LL-Ct."""
        num_classes = self.labels.num_classes
        k = ll_num_modified("LL-Cp", 2, self.delta_rel, batch_size, num_classes)
        if k <= 1:
            warnings.warn(f"LL-Cp with --delta_rel {self.delta_rel:g}, batch {batch_size} and "
                          f"{num_classes} classes modifies k = {k} entry per batch; only entries "
                          f"strictly above the k-th largest loss are relabeled, so none will be and "
                          f"LL-Cp behaves like LL-Ct (raise --delta_rel to get k >= 2)")

