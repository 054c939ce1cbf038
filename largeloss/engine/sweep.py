"""A sweep in one pass (issue 20): the K linear heads of a sweep trained together on cached features.

    python main.py --dataset coco --train_mode linear --loss an --mod_scheme LL-R,LL-Ct,LL-Cp \\
        --sweep_delta_rel 0.1,0.2,0.3,0.4,0.5 --out_dir runs/coco_sweep  # 15 heads, one pass
    python scripts/reproduce.py --dataset coco --sweep_delta_rel --setting linear

Every head is the `--train_mode linear` run its configuration describes, trained with the others:
the K heads are one stacked nn.Linear(D, K·L) (head k: output rows k·L … (k+1)·L − 1), so each
step reads its batch of features once and makes one B×D · D×(K·L) product instead of K small ones.
The methods sit side by side in a methods.stacked.MethodStack: each keeps its own state (LL-Cp's
relabels) and its own schedule (k from its own Δrel and the epoch); the step minimises the sum of
the K losses, whose gradient on head k's rows is head k's own. One Adam over the stacked tensors
updates each element as the separate run's Adam would (its moments are per element, the step count
is shared, weight decay is 0), so no optimiser state passes between heads
(tests/test_sweep.py checks each head against its separate run). Evaluation: one forward of the
val (each epoch) and test features for all heads, AP of all K·L columns at once.

Each head has its own run folder, written as the separate run writes it: config.json (that head's
configuration, plus a `sweep` key naming the sweep's folders), metrics.jsonl/csv, best.pt (its
best-val epoch's head and method state) and results.json. The training step, the epoch's
divergence checks, the checkpoints and results are train.py's. A head that diverges stops the
sweep (exit 3) with the error in every head's folder, as each separate run would have stopped.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from largeloss.data import splits
from largeloss.data.splits import ExperimentData
from largeloss.engine import analysis, features
from largeloss.engine.run_folder import RunFolder
from largeloss.engine.train import (Phase, Run, TrainState, build_method, build_optimizer, check_train_mode,
                                    evaluate_scores, load_best, record_epoch, start_run, summary_writer_class,
                                    train_one_epoch, training_set_logits, with_expected_num_pos,
                                    write_results, write_run_header)
from largeloss.experiment.config import Config
from largeloss.methods.registry import declared_hyper_parameters
from largeloss.methods.stacked import MethodStack
from largeloss.nn.models import new_linear_head, predict
from largeloss.utils.errors import InputError

# What may differ between the heads of a sweep: the method and its hyper-parameters, the folder.
HEAD_FIELDS = frozenset({"loss", "mod_scheme", "method", "delta_rel", "out_dir", "overwrite"})


@dataclass
class SweepHead:
    """One head: its run (configuration, method, folder), its view of the phase (`phase.model`
    an nn.Linear(D, L) holding a copy of its rows, for checkpoints), its progress and its unobserved
    entries before training (the denominator of modified_fraction, as train_phase takes it)."""
    run: Run
    phase: Phase
    num_unobserved: int
    state: TrainState = field(default_factory=TrainState)


def check_sweep_configs(configs: list[Config]) -> None:
    """InputError unless every configuration is a --train_mode linear run and they differ only in
    HEAD_FIELDS and method hyper-parameters (one stacked head: same data, batches, lr, epochs,
    seed), each in its own folder."""
    if not configs:
        raise InputError("a sweep needs at least one head")
    for config in configs:
        if config.train_mode != "linear":
            raise InputError(f"a sweep trains its heads together on cached features: --train_mode "
                             f"linear only, not {config.train_mode} (end-to-end training gives "
                             f"each head its own backbone, which one pass cannot share)")
    varying = HEAD_FIELDS | declared_hyper_parameters()
    first = configs[0].to_dict()
    for config in configs[1:]:
        differing = sorted(key for key, value in config.to_dict().items()
                           if key not in varying and value != first[key])
        if differing:
            raise InputError(f"the heads of a sweep share everything but the method's flags; "
                             f"{config.out_dir} differs from {configs[0].out_dir} in "
                             f"{', '.join(differing)}")
    folders = [str(config.out_dir) for config in configs]
    if len(set(folders)) < len(folders):
        raise InputError(f"the heads of a sweep need one folder each, got {folders}")


def stacked_linear_head(num_features: int, num_classes: int, num_heads: int,
                        seed: int) -> nn.Linear:
    """nn.Linear(D, K·L): K copies of models.new_linear_head(D, L, seed), the head every
    separate linear run starts from."""
    head = new_linear_head(num_features, num_classes, seed)
    stacked = nn.Linear(num_features, num_classes * num_heads)
    with torch.no_grad():
        stacked.weight.copy_(head.weight.repeat(num_heads, 1))
        stacked.bias.copy_(head.bias.repeat(num_heads))
    return stacked


def copy_rows(source: nn.Linear, target: nn.Linear, rows: slice, into_stack: bool) -> None:
    """Head rows between the stacked head (`source` or `target`, the K·L-wide one) and one head."""
    with torch.no_grad():
        if into_stack:
            target.weight[rows].copy_(source.weight)
            target.bias[rows].copy_(source.bias)
        else:
            target.weight.copy_(source.weight[rows])
            target.bias.copy_(source.bias[rows])


def head_rows(index: int, num_classes: int) -> slice:
    return slice(index * num_classes, (index + 1) * num_classes)


def build_heads(run: Run, configs: list[Config], phase: Phase) -> list[SweepHead]:
    """Each head's run (its configuration as start_run resolves it, its method, its folder) and
    its view of the phase."""
    logger_class = summary_writer_class(run.config.logger)
    num_features = phase.model.in_features
    heads = []
    for config in configs:
        config = with_expected_num_pos(config, run.data)
        folder = RunFolder(config.out_dir, writes=run.world.is_main)
        logger = (logger_class(log_dir=str(folder.path))
                  if logger_class is not None and run.world.is_main else None)
        head_run = dataclasses.replace(run, config=config, folder=folder, logger=logger,
                                       method=build_method(config, run.data, run.device))
        module = nn.Linear(num_features, run.data.num_classes).to(run.device)
        tag = f"[{config.method} Δrel {config.delta_rel:g}] "
        heads.append(SweepHead(head_run, dataclasses.replace(phase, model=module, forward=module,
                                                              tag=tag),
                               max(head_run.method.labels.num_unobserved, 1)))
    return heads


def fit_sweep(configs: list[Config], data: ExperimentData | None = None) -> list[dict]:
    """Train the heads of `configs` together (module docstring); each head's results.json dict.
    data: the features when already in memory, else loaded (and cached) as a linear run does."""
    check_sweep_configs(configs)
    for config in configs:
        check_train_mode(config)
    run = start_run(configs[0], data)
    if run.world.size > 1:
        raise InputError("a sweep runs in one process (its heads share one device): not under "
                         "torchrun")
    model = stacked_linear_head(features.features_of(run.data.train).shape[1],
                                run.data.num_classes, len(configs), configs[0].seed).to(run.device)
    phase = Phase("linear", model, model, run.loaders, features.no_preprocess, None,
                  configs[0].linear_epochs, save_last=False)
    heads = build_heads(run, configs, phase)
    stack = MethodStack([head.run.method for head in heads], run.data.num_classes)
    phase.optimizer = build_optimizer([{"params": list(model.parameters()),
                                        "lr": run.config.linear_lr}],
                                      stack, "adam", run.config.linear_lr)
    for head in heads:
        head.phase.optimizer = phase.optimizer
    splits.warn_classes_without_positives(run.data)
    analysis.check_analysis_inputs(run.data, False, False)
    sweep_record = {"folders": [str(config.out_dir) for config in configs], "command": sys.argv}
    for index, head in enumerate(heads):
        write_run_header(head.run, sweep={**sweep_record, "index": index})
    for epoch in range(1, phase.epochs + 1):
        sweep_epoch(run, phase, stack, heads, epoch)
    return test_best_heads(run, phase, heads)


def sweep_epoch(run: Run, phase: Phase, stack: MethodStack, heads: list[SweepHead],
                epoch: int) -> None:
    """One epoch of every head: train_one_epoch on the stacked head, each method's end_epoch on
    its block of one eval pass over the training set (run only if one asks), one val forward,
    then each head's metrics row, best.pt and summary line (train.record_epoch)."""
    shared = train_one_epoch(phase, stack, epoch, run.device, run.config.log_every, run.world)
    loss_sums, modified_counts = stack.take_epoch_totals()
    num_steps = max(len(phase.loaders["train"]), 1)
    logits_of_training_set = functools.cache(lambda: training_set_logits(run, phase))
    stack.end_epoch(epoch, logits_of_training_set)
    scores = predict(phase.model, phase.loaders["val"], phase.preprocess, run.device, "off",
                     run.world)
    val = evaluate_scores(scores, run.data.val, len(heads))
    for index, head in enumerate(heads):
        method = head.run.method
        row = {"phase": phase.name, "epoch": epoch, "train_loss": loss_sums[index] / num_steps,
               "modified": modified_counts[index], "seconds": shared["seconds"],
               "images_per_s": shared["images_per_s"],
               "modified_fraction": modified_counts[index] / head.num_unobserved,
               "relabeled": method.num_relabeled, "val_map": val[index]["map"]}
        copy_rows(phase.model, head.phase.model, head_rows(index, run.data.num_classes), False)
        record_epoch(head.run, head.phase, head.state, row)


def test_best_heads(run: Run, phase: Phase, heads: list[SweepHead]) -> list[dict]:
    """Each head's best-val rows and method state back in place, one forward of the test features
    for all heads, each head's results.json (train.write_results)."""
    for index, head in enumerate(heads):
        load_best(head.run, head.phase)
        copy_rows(head.phase.model, phase.model, head_rows(index, run.data.num_classes), True)
    scores = predict(phase.model, phase.loaders["test"], phase.preprocess, run.device, "off",
                     run.world)
    tests = evaluate_scores(scores, run.data.test, len(heads))
    return [write_results(head.run, head.phase, head.state, test)
            for head, test in zip(heads, tests)]
