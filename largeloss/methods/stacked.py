"""Several methods trained side by side on one stacked head: the K heads of a sweep (issue 20).

A sweep (e.g. Δrel × LL scheme) trains K linear heads on the same features. Stacked, they are one
nn.Linear(D, K·L) whose logits B×(K·L) hold head k's B×L logits in columns k·L … (k+1)·L − 1.
`MethodStack` looks like one method to the training step (`loss_of_batch`, `after_step`,
`parameter_groups`): it gives each method its own columns and sums the K losses. Summing is exact
for the gradients: head k's weights reach only its own loss, so d(Σ_j loss_j)/d(head k) is
d(loss_k)/d(head k), and Adam's per-element update then equals the separate run's (its state is
per element, its step count the same for every head).

Each method keeps its own state (LL-Cp's relabels, its own Δrel and epoch schedule); the stack
also counts, per head and on the device, the epoch's loss sum and modified entries (read once an
epoch by the sweep engine: `take_epoch_totals`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from largeloss.methods.losses import LossOutput
from largeloss.methods.registry import Method


class MethodStack:
    """K methods on K column blocks of width `num_classes` of one B×(K·L) logit matrix."""

    def __init__(self, methods: list[Method], num_classes: int):
        if not methods:
            raise ValueError("a MethodStack needs at least one method")
        self.methods = list(methods)
        self.num_classes = num_classes
        self.last_outputs: list[LossOutput] = []
        self.loss_sums: Tensor | None = None          # K: this epoch's summed batch losses
        self.modified_counts: Tensor | None = None    # K: this epoch's modified entries

    def __len__(self) -> int:
        return len(self.methods)

    def head_logits(self, logits: Tensor) -> tuple[Tensor, ...]:
        """K views B×L of B×(K·L) logits (split: its backward is one concatenation)."""
        return logits.split(self.num_classes, dim=1)

    def loss_of_batch(self, logits: Tensor, sample_ids: Tensor, epoch: int,
                      flipped: Tensor | None = None) -> LossOutput:
        """Σ_k loss_k of head k's logits (each method's loss_of_batch, as the engine calls it);
        modified / relabel: B×(K·L), head k's in its columns."""
        outputs = [method.loss_of_batch(head, sample_ids, epoch, flipped)
                   for method, head in zip(self.methods, self.head_logits(logits))]
        self.last_outputs = outputs
        return LossOutput(loss=torch.stack([output.loss for output in outputs]).sum(),
                          modified=torch.cat([output.modified for output in outputs], dim=1),
                          relabel=torch.cat([output.relabel for output in outputs], dim=1))

    def after_step(self, sample_ids: Tensor, output: LossOutput) -> None:
        """Each method's after_step with its own output; the per-head counts (no host sync)."""
        outputs, self.last_outputs = self.last_outputs, []
        for method, head_output in zip(self.methods, outputs):
            method.after_step(sample_ids, head_output)
        losses = torch.stack([head_output.loss.detach().float() for head_output in outputs])
        modified = torch.stack([head_output.modified.sum() for head_output in outputs])
        if self.loss_sums is None:
            self.loss_sums, self.modified_counts = losses, modified
        else:
            self.loss_sums = self.loss_sums + losses
            self.modified_counts = self.modified_counts + modified

    def take_epoch_totals(self) -> tuple[list[float], list[int]]:
        """Per head: the epoch's loss sum and modified count (one host sync), then reset."""
        if self.loss_sums is None:
            return [0.0] * len(self), [0] * len(self)
        totals = self.loss_sums.tolist(), [int(count) for count in self.modified_counts.tolist()]
        self.loss_sums = self.modified_counts = None
        return totals

    def end_epoch(self, epoch: int, training_set_logits: Callable[[], Tensor]) -> None:
        """Each method's end_epoch with its own N×L block of the stacked training-set logits."""
        for index, method in enumerate(self.methods):
            method.end_epoch(epoch, self._block(training_set_logits, index))

    def _block(self, training_set_logits: Callable[[], Tensor], index: int) -> Callable[[], Tensor]:
        columns = slice(index * self.num_classes, (index + 1) * self.num_classes)
        return lambda: training_set_logits()[:, columns]

    def parameter_groups(self, base_lr: float) -> list[dict]:
        """Every method's own parameter groups (e.g. ROLE's estimator), each its own tensors."""
        return [group for method in self.methods for group in method.parameter_groups(base_lr)]
