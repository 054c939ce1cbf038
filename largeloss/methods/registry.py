"""Training methods as objects: each owns the state it keeps across batches, the trainer calls it.

A method is built from the training split's labels and its hyper-parameters, computes the batch
loss from logits and sample ids (through its own pure, tested function in losses.py or
peer_losses.py), and keeps what
outlives a batch: the observed labels with LL-Cp's permanent relabels, ROLE's label estimator.
The trainer never asks which method it runs; it calls

    output = method.loss_of_batch(logits, sample_ids, epoch, flipped)
                                                       # LossOutput: loss, modified, relabel;
                                                       # loss() gets `flipped` if needs_flips
    method.after_step(sample_ids, output)              # LL-Cp writes its relabels here
    method.end_epoch(epoch, training_set_logits)       # methods that relabel from a pass over
                                                       # the training set call the function
    method.parameter_groups()                          # ROLE's θ and its learning-rate multiplier
    method.state_dict() / method.load_state_dict()     # saved in every checkpoint

A method that declares needs_pseudo_labels gets the run's pseudo_labels.PseudoLabels
(--pseudo_labels DIR, docs/pseudo_labels.md) as the keyword `pseudo_labels` of its __init__.

Adding a method: one subclass of `Method`, decorated with `@register`, its tests and a README row.
`--loss` offers every registered method without `base_loss`; `--mod_scheme` offers those that
modify a base loss (the large-loss schemes modify `an`, APL modifies `em`).

The methods after the LL paper (BoostLU's head is a model option, --boostlu_alpha; EM, EM+APL, Hill,
SPLC, GR) wrap the pure maths of peer_losses.py (docs/methods.md); the vision-language pseudo-label
methods and CRISP (GPR, VLPL, CRISP-Eq7) are in vlp.py (docs/vlp_methods.md), registered by the
package's top level.

    import torch, methods
    observed = torch.tensor([[1, 0, 0], [0, 1, 0]])              # N×L in {-1, 0, +1}
    method = methods.build("LL-Ct", observed, delta_rel=20.0)
    logits = torch.randn(2, 3, requires_grad=True)                # B×L from your model
    output = method.loss(logits, torch.tensor([0, 1]), epoch=2)
    output.loss.backward()
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from largeloss.data.pseudo_labels import PseudoLabels
from largeloss.methods import losses, peer_losses
from largeloss.methods.label_stores import LabelEstimator, LabelStore, build_label_store
from largeloss.methods.losses import LLCP_RELABEL, LossOutput, ll_num_modified, to_observed
from largeloss.utils.errors import InputError

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


# What `build` offers when the caller gives nothing (the values it has always defaulted to); the
# other hyper-parameters default to the authors' values in each class's __init__.
DEFAULT_HYPER_PARAMETERS = {"delta_rel": 0.0, "expected_num_pos": None, "seed": 0,
                            "estimator_lr_mult": 10.0}


def declared_hyper_parameters() -> set[str]:
    """Every hyper-parameter name some registered method takes."""
    return {name for cls in METHODS.values() for name in cls.hyper_parameters}


def chosen_hyper_parameters(name: str, hyper: dict | None = None, **named) -> dict:
    """The hyper-parameters of method `name` out of everything offered (`named` over `hyper` over
    DEFAULT_HYPER_PARAMETERS), checked; a keyword no registered method takes is a TypeError."""
    cls = method_class(name)
    unknown = sorted(set(named) - declared_hyper_parameters())
    if unknown:
        raise TypeError(f"unknown hyper-parameter(s) {unknown}; methods take "
                        f"{sorted(declared_hyper_parameters())}")
    offered = {**DEFAULT_HYPER_PARAMETERS, **(hyper or {}), **named}
    chosen = {key: offered[key] for key in cls.hyper_parameters if key in offered}
    cls.check_hyper_parameters(chosen)
    return chosen


def build(name: str, observed, true_labels=None, *, device: torch.device | str = "cpu",
          hyper: dict | None = None, unknown: float = 0,
          pseudo_labels: PseudoLabels | None = None, **named) -> Method:
    """The method `name` for a training split.

    Args:
        observed: the training split's observed labels: N×L in {-1, 0, +1} (numpy or tensor), a
            SparseLabels (label sets too large for an N×L matrix), or a ready label store
            (label_stores.build_label_store decides).
        true_labels: N×L in {0, 1} or None; given only to methods that declare needs_true_labels.
        hyper: every hyper-parameter the caller holds (e.g. Config.method_hyper_parameters():
            delta_rel, expected_num_pos, seed, estimator_lr_mult, num_epochs, em_alpha, ...).
        unknown: the value marking unknown entries of a dense `observed`: 0 (labels in
            {-1, 0, +1}), NaN (labels in {0, 1, NaN}, as mlcpl) or an ignore index such as -100
            (labels in {0, 1, -100}, as torchmetrics); converted here by losses.to_observed.
        pseudo_labels: the run's pseudo_labels.PseudoLabels (--pseudo_labels), on `device`; given
            to a method that declares needs_pseudo_labels (as the keyword `pseudo_labels` of its
            __init__), refused with the reason (InputError) when missing for one or given to
            another.
        named: hyper-parameters by keyword (delta_rel=20.0), over `hyper`.
    Each method takes the ones it declares in `hyper_parameters`; those not offered take the
    method's defaults (the authors'). A value the method cannot run with is a ValueError.
    """
    cls = method_class(name)
    check_pseudo_labels_given(name, pseudo_labels is not None)
    chosen = chosen_hyper_parameters(name, hyper, **named)
    if unknown != 0:
        observed = to_observed(observed, unknown)
    if cls.needs_pseudo_labels:
        chosen["pseudo_labels"] = pseudo_labels
    return cls(observed, true_labels if cls.needs_true_labels else None, device=device, **chosen)


def check_pseudo_labels_given(name: str, given: bool) -> None:
    """InputError when method `name` needs pseudo-labels and none are given, or is given some it
    would not use (a run folder must not claim a configuration it did not run)."""
    cls = method_class(name)
    if cls.needs_pseudo_labels and not given:
        raise InputError(f"method {name} trains on vision-language pseudo-labels: pass "
                         f"--pseudo_labels DIR, a <name>.pl folder made once by "
                         f"scripts/make_pseudo_labels.py (docs/pseudo_labels.md)")
    if given and not cls.needs_pseudo_labels:
        users = [other for other, user in METHODS.items() if user.needs_pseudo_labels]
        raise InputError(f"--pseudo_labels: method {name} does not use pseudo-labels (those that "
                         f"do: {', '.join(users) or 'none registered'})")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def refuse_dense_state(labels: LabelStore, name: str, dense_bytes_per_entry: int) -> None:
    """A method keeping `dense_bytes_per_entry` > 0 bytes of N×L state cannot run on a store that
    holds only the labelled entries (whose point is that N×L does not fit): InputError with the
    memory it would need."""
    if dense_bytes_per_entry and not labels.holds_every_entry:
        num_images, num_classes = labels.num_images, labels.num_classes
        needed = num_images * num_classes * dense_bytes_per_entry
        raise InputError(f"--loss {name} keeps an N×L estimator: {_count(num_images)} × "
                         f"{_count(num_classes)} × {dense_bytes_per_entry} bytes = "
                         f"{_size(needed)}; not with sparse labels (--dataset openimages)")


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
            on a store holding only the labelled entries, whose point is that N×L does not fit).
        composes_with_boostlu: the BoostLU paper trains it with its head (--boostlu_alpha).
        schedule_spans_the_run: its schedule needs the run's epoch count T (hyper-parameter
            num_epochs), so it cannot follow LinearInit, whose two phases each restart the count,
            and a --resume cannot extend it with --epochs (its first epochs ran another schedule).
        needs_pseudo_labels: trains on a pseudo-label folder (--pseudo_labels DIR); its __init__
            takes the keyword `pseudo_labels` (a pseudo_labels.PseudoLabels on its device).
        needs_flips: its loss() takes the keyword `flipped` (B bool: True where the row's training
            image was horizontally flipped this step; None when no flip was drawn, e.g. a head on
            cached features), to match pseudo-labels to the flipped image (docs/pseudo_labels.md).
        uses_training_set_pass: its end_epoch asks for the N×L logits of the training set (the
            trainer refuses at start a run whose N×L float32 scores would not fit in memory).
    """
    name: ClassVar[str]
    base_loss: ClassVar[str | None] = None
    needs_true_labels: ClassVar[bool] = False
    needs_observed_negatives: ClassVar[bool] = False
    needs_expected_num_pos: ClassVar[bool] = False
    modifies_entries: ClassVar[bool] = False
    hyper_parameters: ClassVar[tuple[str, ...]] = ()
    dense_bytes_per_entry: ClassVar[int] = 0
    composes_with_boostlu: ClassVar[bool] = False
    schedule_spans_the_run: ClassVar[bool] = False
    needs_pseudo_labels: ClassVar[bool] = False
    needs_flips: ClassVar[bool] = False
    uses_training_set_pass: ClassVar[bool] = False

    def __init__(self, observed, true_labels=None, *, device: torch.device | str = "cpu"):
        self.labels = build_label_store(observed, device)
        refuse_dense_state(self.labels, self.name, self.dense_bytes_per_entry)
        self.true_labels = (None if true_labels is None
                            else torch.as_tensor(np.asarray(true_labels), device=device))
        if self.needs_true_labels and true_labels is None:
            raise InputError(f"--loss {self.name} needs clean training labels (custom data: "
                             f"train_clean.csv; OpenImages has none)")
        self.check_labels(self.labels.labelled_values())

    @classmethod
    def check_labels(cls, observed: Tensor) -> None:
        """Refuse training labels this method cannot learn from (InputError with the reason)."""
        if cls.needs_observed_negatives and not bool((observed == -1).any()):
            raise InputError(f"--loss {cls.name} needs observed negatives, and the training labels "
                             f"have none (prepare them with --num_neg > 0)")

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        """Raise ValueError, naming the flag, for a value the method cannot run with. `hyper` holds
        the declared hyper-parameters that were offered (the others take __init__'s defaults)."""

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        """The loss on a batch. logits: B×L; sample_ids: B training-set rows on the logits'
        device; epoch: 1-based, counted within the training phase. No host sync. Each method
        calls its own pure loss function (losses.py, peer_losses.py)."""
        raise NotImplementedError

    def loss_of_batch(self, logits: Tensor, sample_ids: Tensor, epoch: int,
                      flipped: Tensor | None = None) -> LossOutput:
        """What the engine calls each step: loss(), given `flipped` (B bool or None) when the
        method declares needs_flips."""
        if self.needs_flips:
            return self.loss(logits, sample_ids, epoch, flipped=flipped)
        return self.loss(logits, sample_ids, epoch)

    def _true_rows(self, sample_ids: Tensor) -> Tensor | None:
        return None if self.true_labels is None else self.true_labels[sample_ids]

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

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.bce_loss(logits, self._true_rows(sample_ids))


@register
class BCELabelSmoothing(Method):
    """Full-label BCE with label smoothing ε = 0.1."""
    name = "bce_ls"
    needs_true_labels = True

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.bce_ls_loss(logits, self._true_rows(sample_ids))


@register
class IgnoreUnobservedPositives(Method):
    """IUN: observed positives and true negatives; unobserved positives ignored (uses clean labels)."""
    name = "iun"
    needs_true_labels = True

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.iun_loss(logits, self.labels.rows(sample_ids), self._true_rows(sample_ids))


@register
class IgnoreUnobserved(Method):
    """IU: observed positives and observed negatives only."""
    name = "iu"
    needs_observed_negatives = True

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.iu_loss(logits, self.labels.rows(sample_ids))


@register
class AssumeNegative(Method):
    """AN: every unobserved label is a negative."""
    name = "an"
    composes_with_boostlu = True

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.an_loss(logits, self.labels.rows(sample_ids))


@register
class AssumeNegativeLabelSmoothing(Method):
    """AN-LS: AN with label smoothing ε = 0.1."""
    name = "an_ls"

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.an_ls_loss(logits, self.labels.rows(sample_ids))


@register
class WeakAssumeNegative(Method):
    """WAN: AN with negatives down-weighted by 1/(L−1)."""
    name = "wan"

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.wan_loss(logits, self.labels.rows(sample_ids))


@register
class ExpectedPositiveRegularisation(Method):
    """EPR: observed positives plus the expected-positive regulariser (k per image)."""
    name = "epr"
    needs_expected_num_pos = True
    hyper_parameters = ("expected_num_pos",)

    def __init__(self, observed, true_labels=None, *, device="cpu", expected_num_pos: float):
        super().__init__(observed, true_labels, device=device)
        self.expected_num_pos = expected_num_pos

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.epr_loss(logits, self.labels.rows(sample_ids), self.expected_num_pos)


@register
class OnlineLabelEstimation(Method):
    """ROLE: the classifier and an N×L label estimator θ teach each other (docs/methods.md). θ trains at
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

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.role_loss(logits, self.labels.rows(sample_ids), self.estimator(sample_ids),
                                self.expected_num_pos)

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
    (docs/methods.md §LL schedule); Δrel in percent per epoch."""
    base_loss = "an"
    modifies_entries = True
    hyper_parameters = ("delta_rel",)
    composes_with_boostlu = True

    def __init__(self, observed, true_labels=None, *, device="cpu", delta_rel: float):
        super().__init__(observed, true_labels, device=device)
        if delta_rel < 0:
            raise ValueError(f"delta_rel must be >= 0 (percent per epoch), got {delta_rel}")
        self.delta_rel = delta_rel

    llcp_relabel = "above"  # LL-R / LL-Ct relabel nothing; LL-Cp takes it as a hyper-parameter

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return losses.large_loss(logits, self.labels.rows(sample_ids), self.name, epoch,
                                 self.delta_rel, self.llcp_relabel)


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
    """LL-Cp: the entries above the threshold become observed positives for good.

    llcp_relabel "above" (the LL paper): the candidates strictly above the k-th largest loss; "modified":
    every modified candidate, loss ≥ it (BoostLU's code; docs/methods.md §LL-R, LL-Ct, LL-Cp)."""
    name = "LL-Cp"
    hyper_parameters = ("delta_rel", "llcp_relabel")

    def __init__(self, observed, true_labels=None, *, device="cpu", delta_rel: float,
                 llcp_relabel: str = "above"):
        super().__init__(observed, true_labels, device=device, delta_rel=delta_rel)
        self.llcp_relabel = llcp_relabel

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        super().check_hyper_parameters(hyper)
        _require(hyper.get("llcp_relabel", "above") in LLCP_RELABEL,
                 f"--llcp_relabel must be one of {LLCP_RELABEL}, got {hyper.get('llcp_relabel')!r}")

    def after_step(self, sample_ids: Tensor, output: LossOutput) -> None:
        self.labels.apply_relabel(sample_ids, output.relabel)

    def check_batch_size(self, batch_size: int) -> None:
        """LL-Cp relabels the candidates strictly above the k-th largest loss: with k = 1 per batch
        (e.g. pascal's B=16, L=20, Δrel=0.1) nothing is ever relabeled and LL-Cp acts as LL-Ct."""
        num_classes = self.labels.num_classes
        k = ll_num_modified("LL-Cp", 2, self.delta_rel, batch_size, num_classes)
        if k <= 1 and self.llcp_relabel == "above":
            warnings.warn(f"LL-Cp with --delta_rel {self.delta_rel:g}, batch {batch_size} and "
                          f"{num_classes} classes modifies k = {k} entry per batch; only entries "
                          f"strictly above the k-th largest loss are relabeled, so none will be and "
                          f"LL-Cp behaves like LL-Ct (raise --delta_rel to get k >= 2, or "
                          f"relabel every modified entry as BoostLU's code: --llcp_relabel modified)")



# --- after the LL paper (docs/methods.md): the maths is peer_losses.py's ----------------------------

@register
class EntropyMaximisation(Method):
    """EM (Zhou et al., ECCV 2022): −log p on positives, −α·H(p) on unobserved entries (docs/methods.md
    §EM); observed negatives get BCE (an extension). The loss can be negative."""
    name = "em"
    hyper_parameters = ("em_alpha",)

    def __init__(self, observed, true_labels=None, *, device="cpu",
                 em_alpha: float = peer_losses.EM_ALPHA):
        super().__init__(observed, true_labels, device=device)
        self.em_alpha = em_alpha

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        alpha = hyper.get("em_alpha", peer_losses.EM_ALPHA)
        _require(alpha >= 0, f"--em_alpha must be >= 0, got {alpha}")

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return peer_losses.em_loss(logits, self.labels.rows(sample_ids), alpha=self.em_alpha)


@register
class AsymmetricPseudoLabelling(EntropyMaximisation):
    """EM+APL (Zhou et al., ECCV 2022): EM, plus soft pseudo-negatives from a pass over the training
    set after epochs T_w … T−1, scored β·BCE(x, s) with s = p at labelling (docs/methods.md §EM+APL).

    The pseudo-negatives live in their own N×L store (soft targets float32 + mask bool, 5 bytes per
    entry: COCO 26 MB), never in the ±1 observed labels, and go into every checkpoint. `modified`
    counts the pseudo-negatives a batch scores. T is num_epochs, the run's --epochs."""
    name = "APL"
    base_loss = "em"
    hyper_parameters = ("em_alpha", "apl_beta", "apl_warmup_epochs", "apl_proportion", "num_epochs")
    schedule_spans_the_run = True
    dense_bytes_per_entry = 5  # the N×L soft pseudo-negatives (float32) and their mask
    uses_training_set_pass = True  # the pseudo-labelling pass (end_epoch)

    def __init__(self, observed, true_labels=None, *, device="cpu",
                 em_alpha: float = peer_losses.EM_ALPHA, apl_beta: float = peer_losses.APL_BETA,
                 apl_warmup_epochs: int = peer_losses.APL_WARMUP_EPOCHS,
                 apl_proportion: float = peer_losses.APL_PROPORTION,
                 num_epochs: int = peer_losses.APL_NUM_EPOCHS):
        super().__init__(observed, true_labels, device=device, em_alpha=em_alpha)
        self.apl_beta, self.warmup_epochs, self.num_epochs = apl_beta, apl_warmup_epochs, num_epochs
        shape = self.labels.observed.shape
        self.pseudo_targets = torch.zeros(shape, dtype=torch.float32, device=device)
        self.pseudo_mask = torch.zeros(shape, dtype=torch.bool, device=device)
        self.num_per_pass = peer_losses.apl_num_per_pass(
            peer_losses.apl_unobserved_counts(self.labels.observed), warmup_epochs=apl_warmup_epochs,
            num_epochs=num_epochs, proportion=apl_proportion).to(device)

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        super().check_hyper_parameters(hyper)
        warmup = hyper.get("apl_warmup_epochs", peer_losses.APL_WARMUP_EPOCHS)
        num_epochs = hyper.get("num_epochs", peer_losses.APL_NUM_EPOCHS)
        _require(0 < warmup < num_epochs,
                 f"--apl_warmup_epochs must be between 1 and the run's epochs − 1 (APL labels after "
                 f"epochs T_w … T−1), got {warmup} with {num_epochs} epochs")
        proportion = hyper.get("apl_proportion", peer_losses.APL_PROPORTION)
        _require(0 < proportion <= 1, f"--apl_proportion must be in (0, 1], got {proportion}")
        beta = hyper.get("apl_beta", peer_losses.APL_BETA)
        _require(beta >= 0, f"--apl_beta must be >= 0, got {beta}")

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return peer_losses.em_loss(logits, self.labels.rows(sample_ids), alpha=self.em_alpha,
                                   pseudo_targets=self.pseudo_targets[sample_ids],
                                   pseudo_mask=self.pseudo_mask[sample_ids], beta=self.apl_beta)

    def end_epoch(self, epoch: int, training_set_logits: Callable[[], Tensor]) -> None:
        """The pseudo-labelling pass after epochs T_w … T−1 (none after T: its labels would never
        be used); its labels count from the next epoch."""
        if not peer_losses.apl_pass_after_epoch(epoch, warmup_epochs=self.warmup_epochs,
                                                num_epochs=self.num_epochs):
            return
        probs = torch.sigmoid(training_set_logits().detach().to(self.pseudo_targets.device))
        self.pseudo_targets, self.pseudo_mask = peer_losses.apl_pass(
            probs, self.labels.observed, self.pseudo_targets, self.pseudo_mask, self.num_per_pass)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pseudo_targets": self.pseudo_targets.cpu(),
                "pseudo_mask": self.pseudo_mask.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state["pseudo_mask"].shape != self.pseudo_mask.shape:
            raise ValueError(f"APL's pseudo-labels in the checkpoint have shape "
                             f"{tuple(state['pseudo_mask'].shape)}, expected "
                             f"{tuple(self.pseudo_mask.shape)}")
        device = self.pseudo_mask.device
        self.pseudo_targets = state["pseudo_targets"].to(device=device, dtype=torch.float32)
        self.pseudo_mask = state["pseudo_mask"].to(device=device, dtype=torch.bool)


def _check_reduction(hyper: dict) -> None:
    _require(hyper.get("reduction", peer_losses.FOCAL_REDUCTION) in ("mean", "sum"),
             f"--reduction must be mean or sum, got {hyper.get('reduction')!r}")


def _check_focal(hyper: dict, default_gamma: float) -> None:
    """Hill's and SPLC's focal weight (1 − p)^γ: γ < 0 would weight confident positives most."""
    gamma = hyper.get("focal_gamma", default_gamma)
    _require(0 <= gamma < math.inf, f"--focal_gamma must be a finite number >= 0, got {gamma}")


@register
class Hill(Method):
    """Hill (Zhang et al., 2021): focal-margin positives, (λ − p)·p² on every other entry
    (docs/methods.md §Hill)."""
    name = "hill"
    hyper_parameters = ("hill_lambda", "focal_margin", "focal_gamma", "reduction")

    def __init__(self, observed, true_labels=None, *, device="cpu",
                 hill_lambda: float = peer_losses.HILL_LAMBDA,
                 focal_margin: float = peer_losses.HILL_MARGIN,
                 focal_gamma: float = peer_losses.HILL_GAMMA,
                 reduction: str = peer_losses.FOCAL_REDUCTION):
        super().__init__(observed, true_labels, device=device)
        self.arguments = {"lam": hill_lambda, "margin": focal_margin, "gamma": focal_gamma,
                          "reduction": reduction}

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        _check_reduction(hyper)
        _check_focal(hyper, peer_losses.HILL_GAMMA)
        lam = hyper.get("hill_lambda", peer_losses.HILL_LAMBDA)  # (λ − p)·p² with λ < 0 rewards
        _require(0 <= lam < math.inf, f"--hill_lambda must be a finite number >= 0 (the "  # p → 1
                 f"authors' 1.5), got {lam}")

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return peer_losses.hill_loss(logits, self.labels.rows(sample_ids), **self.arguments)


@register
class SelfPacedLossCorrection(Method):
    """SPLC (Zhang et al., 2021): focal margin loss; from epoch 2 on, unobserved entries with
    σ(x) > τ count as positives in their batch, never stored (docs/methods.md §SPLC)."""
    name = "splc"
    modifies_entries = True
    hyper_parameters = ("splc_tau", "focal_margin", "focal_gamma", "reduction")

    def __init__(self, observed, true_labels=None, *, device="cpu",
                 splc_tau: float = peer_losses.SPLC_TAU,
                 focal_margin: float = peer_losses.SPLC_MARGIN,
                 focal_gamma: float = peer_losses.SPLC_GAMMA,
                 reduction: str = peer_losses.FOCAL_REDUCTION):
        super().__init__(observed, true_labels, device=device)
        self.arguments = {"tau": splc_tau, "margin": focal_margin, "gamma": focal_gamma,
                          "reduction": reduction}

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        _check_reduction(hyper)
        _check_focal(hyper, peer_losses.SPLC_GAMMA)
        tau = hyper.get("splc_tau", peer_losses.SPLC_TAU)
        _require(0 < tau < 1, f"--splc_tau is a probability threshold in (0, 1), got {tau}")

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return peer_losses.splc_loss(logits, self.labels.rows(sample_ids), epoch, **self.arguments)


@register
class GeneralizedRobustLoss(Method):
    """GR loss (Chen et al., IJCAI 2024): −log p on positives; unobserved entries weighted
    v(p̄)·[k̂(p̄)·L1 + (1 − k̂(p̄))·L2], soft label k̂ and weight v on epoch schedules over the run's
    --epochs T (docs/methods.md §GR)."""
    name = "gr"
    hyper_parameters = ("num_epochs", "gr_beta", "gr_alpha", "gr_q2", "gr_q3", "gr_schedule",
                        "gr_observed_negatives")
    schedule_spans_the_run = True

    def __init__(self, observed, true_labels=None, *, device="cpu",
                 num_epochs: int = peer_losses.GR_NUM_EPOCHS, gr_beta=peer_losses.GR_BETA,
                 gr_alpha=peer_losses.GR_ALPHA, gr_q2: float = peer_losses.GR_Q2,
                 gr_q3: float = peer_losses.GR_Q3, gr_schedule: str = "reference",
                 gr_observed_negatives: str = "bce"):
        super().__init__(observed, true_labels, device=device)
        self.arguments = {"num_epochs": num_epochs, "beta": tuple(map(float, gr_beta)),
                          "alpha": tuple(map(float, gr_alpha)), "q2": gr_q2, "q3": gr_q3,
                          "reference_off_by_one": gr_schedule == "reference",
                          "observed_negatives": gr_observed_negatives}

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        beta = tuple(hyper.get("gr_beta", peer_losses.GR_BETA))
        alpha = tuple(hyper.get("gr_alpha", peer_losses.GR_ALPHA))
        _require(len(beta) == 4, f"--gr_beta is W0 W_T B0 B_T, got {beta}")
        _require(len(alpha) == 4 and min(alpha[1], alpha[3]) > 0,
                 f"--gr_alpha is MU0 SIGMA0 MU_T SIGMA_T with both σ > 0, got {alpha}")
        _require(min(hyper.get("gr_q2", 0.0), hyper.get("gr_q3", 0.0)) >= 0,
                 "--gr_q2 and --gr_q3 must be >= 0")
        _require(hyper.get("gr_schedule", "reference") in ("reference", "aligned"),
                 f"--gr_schedule must be reference or aligned, got {hyper.get('gr_schedule')!r}")
        _require(hyper.get("gr_observed_negatives", "bce") in ("bce", "ignore"),
                 "--gr_observed_negatives must be bce or ignore")

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        return peer_losses.gr_loss(logits, self.labels.rows(sample_ids), epoch, **self.arguments)
