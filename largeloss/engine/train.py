"""The training engine: one loop for an image model and for a linear head on cached features.

    run = start_run(config)           data (images, or features for --train_mode linear), model, method
    fit(config)                       [LinearInit phase 1 →] train_phase → test_best_model
    train_phase(run, phase, state)    epochs: train_one_epoch → evaluate → record_epoch (checkpoints)
    evaluate_checkpoint(...)          --eval_only

A `Phase` says what is trained (the MultiLabelNet, or its head on features), on which batches, with
which optimiser and for how many epochs; the same step, epoch, evaluation, best-val selection and
checkpoint code serves both. The method (methods.py) computes the loss and keeps its own state; the
engine never asks which method it runs.

The training step never synchronises with the host: labels are looked up on the device by sample
index, the loss and the LL counts are accumulated as device tensors and read once per epoch (plus
one divergence check and progress update every --log_every steps).

Divergence (exit 3): the training loss is not finite, or a training logit exceeds LOGIT_LIMIT in
absolute value (a float32 sigmoid is already exactly 0 or 1 beyond |z| ≈ 17, and the loss of such a
logit on a wrong label is ≥ 1e6; Adam at --lr 1e6 gives logits of 1e13); and evaluation scores that
are not finite.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from largeloss.data import datasets, loading, splits
from largeloss.data.loading import DevicePreprocess
from largeloss.data.pseudo_labels import PseudoLabels, load_pseudo_labels
from largeloss.data.splits import ExperimentData, Split
from largeloss.engine import analysis, features, metrics
from largeloss.engine.metrics import format_masked_map, stacked_split_metrics
from largeloss.engine.resume import SavedTraining
from largeloss.engine.run_folder import RunFolder, checkpoint_num_classes, read_checkpoint
from largeloss.experiment.config import Config, config_from_dict
from largeloss.methods import registry as methods
from largeloss.methods.registry import Method
from largeloss.nn.models import autocast, build_image_model, new_linear_head, predict
from largeloss.utils.distributed import (SINGLE_PROCESS, World, barrier, gather_global_batch,
                                         init_process_group, world_from_environment)
from largeloss.utils.errors import InputError, TrainingDiverged

DISTRIBUTED_TIMEOUT_S = 600  # a collective waiting longer means a lost process: fail, not hang
LOGIT_LIMIT = 1e6  # |logit| above this: the run diverged (module docstring)
# The end-of-epoch pass over the training set holds N×L float32 scores up to three times at once
# (on the device, their host copy, the method's probabilities): one copy may take this fraction of
# the machine's RAM (OpenImages V3: 3.7M × 5,000 × 4 bytes = 74 GB is refused at start).
TRAINING_SET_PASS_RAM_FRACTION = 0.25

# --- building blocks ----------------------------------------------------------------------------

def resolve_device(name: str, world: World = SINGLE_PROCESS) -> torch.device:
    """--device; under torchrun each process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "cuda" and world.size > 1:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def check_world(config: Config, world: World, training: bool) -> None:
    """What several processes need: a global batch that splits evenly, no single-process analysis."""
    if world.size == 1 or not training:
        return
    for flag, batch_size in (("--batch_size", config.batch_size),
                             ("--linear_batch_size", config.linear_batch_size)):
        if batch_size % world.size:
            raise InputError(f"{flag} {batch_size} is the global batch; it must split evenly over "
                             f"the {world.size} processes (a multiple of {world.size})")
    if config.pointing_game:
        raise InputError("--pointing_game runs in one process only: drop it under torchrun")
    if config.sync_bn and config.device == "cpu":
        raise InputError("--sync_bn needs GPUs (SyncBatchNorm has no CPU implementation)")


def image_model_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """Backbone at `lr`, head at head_lr_mult × `lr` (the authors' recipe)."""
    return [{"params": list(model.backbone.parameters()), "lr": lr},
            {"params": list(model.head.parameters()), "lr": lr * head_lr_mult}]


def build_optimizer(groups: list[dict], method: Method | None, name: str, lr: float,
                    momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """`groups` (each with its "lr") plus the method's own parameters at their multiple of `lr`."""
    method_groups = [] if method is None else method.parameter_groups(lr)
    groups = [group for group in groups + method_groups if group["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


@dataclass
class Run:
    """What a run holds besides its training progress.

    data: splits of images, or of features (--train_mode linear).
    model: the MultiLabelNet, or the linear head on features (--train_mode linear).
    preprocess: the on-device image pipeline, or features.no_preprocess.
    loaders: train / val / test (and train_eval) batches of (inputs, sample ids).
    """
    config: Config
    device: torch.device
    data: ExperimentData
    model: nn.Module
    preprocess: Callable
    loaders: dict
    method: Method
    folder: RunFolder
    world: World = SINGLE_PROCESS
    logger: object = None  # a SummaryWriter with --logger tensorboard (on the main process)
    data_fingerprint: dict | None = None  # splits.data_fingerprint of a training run (start_run)


@dataclass
class Phase:
    """One training phase: what is trained, on which batches, how, for how long.

    name: "end_to_end" or "linear" (the metrics rows' `phase`).
    model: trained, evaluated and saved; forward: model or its torch.compile wrapper.
    best_file: the run-folder file that keeps the best-val epoch's model and method state.
    save_last: write last.pt every epoch (the linear phase does not: it is re-run instead).
    """
    name: str
    model: nn.Module
    forward: nn.Module
    loaders: dict
    preprocess: Callable
    optimizer: torch.optim.Optimizer
    epochs: int
    amp: str = "off"
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu",
                                                                                       enabled=False))
    early_stop_drop: float = 0.0
    stop_after: int | None = None
    best_file: str = "best.pt"
    save_last: bool = True
    tracker: analysis.TrainingTracker | None = None
    tag: str = ""  # which head of a sweep (sweep.py), before the summary lines

    @property
    def label(self) -> str:
        """Prefix of the summary lines."""
        return self.tag + ("linear " if self.name == "linear" else "")


@dataclass
class TrainState:
    """Progress of the current phase (epochs are counted per phase) and the run's history."""
    epoch: int = 0
    best_val_map: float = -math.inf
    best_epoch: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)

    def next_phase(self) -> None:
        self.epoch, self.best_val_map, self.best_epoch = 0, -math.inf, 0


# --- one epoch ----------------------------------------------------------------------------------

def train_one_epoch(phase: Phase, method: Method, epoch: int, device: torch.device,
                    log_every: int, world: World = SINGLE_PROCESS) -> dict:
    """One pass over the training batches. Returns train_loss, modified, seconds, images_per_s.
    With several processes each forwards its shard and the method sees the global batch."""
    loader, tracker = phase.loaders["train"], phase.tracker
    if tracker is not None:
        tracker.begin_epoch(method.labels.observed)
    phase.forward.train()
    loader.batch_sampler.set_epoch(epoch)
    flips = phase.preprocess.epoch_draws(loader.batch_sampler.seed, epoch,
                                         loader.batch_sampler.num_rows)
    loss_sum = torch.zeros((), device=device)
    logit_max = torch.zeros((), device=device)  # the largest |logit| this epoch
    modified_count = torch.zeros((), dtype=torch.long, device=device)
    num_steps = num_images = 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not sys.stderr.isatty())
    for step, (inputs, sample_ids) in enumerate(progress, start=1):
        global_size = loader.batch_sampler.global_batch_size(step - 1)
        logits, sample_ids, flipped = forward_global_batch(phase, inputs, sample_ids, global_size,
                                                           flips, device, world)
        output = method.loss_of_batch(logits, sample_ids, epoch, flipped)
        phase.optimizer.zero_grad(set_to_none=True)
        phase.scaler.scale(output.loss).backward()
        phase.scaler.step(phase.optimizer)
        phase.scaler.update()
        if tracker is not None:
            tracker.record_step(sample_ids, output.modified, logits, method.labels.rows(sample_ids))
        method.after_step(sample_ids, output)
        loss_sum += output.loss.detach()
        logit_max = torch.maximum(logit_max, logits.detach().abs().max().float())
        modified_count += output.modified.sum()
        num_steps += 1
        num_images += global_size
        if step % log_every == 0:  # one host sync every log_every steps
            loss = check_diverged(loss_sum, logit_max, epoch, step)
            report_progress(progress, world, epoch, step, len(loader), loss / num_steps,
                            num_images, time.perf_counter() - start)
    check_diverged(loss_sum, logit_max, epoch, num_steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / max(num_steps, 1), "modified": int(modified_count),
            "seconds": seconds, "images_per_s": num_images / seconds}


def report_progress(progress: tqdm, world: World, epoch: int, step: int, steps: int, loss: float,
                    num_images: int, seconds: float) -> None:
    """The loss on the progress bar on a terminal; otherwise (batch jobs) a line on stderr."""
    if not progress.disable:
        progress.set_postfix(loss=f"{loss:.4f}")
    elif world.is_main:
        eta = seconds / step * (steps - step)
        print(f"epoch {epoch} step {step}/{steps}  loss {loss:.4f}  "
              f"{num_images / max(seconds, 1e-9):.0f} img/s  eta {eta:.0f} s", file=sys.stderr,
              flush=True)


def forward_global_batch(phase: Phase, inputs: Tensor, sample_ids: Tensor, global_size: int,
                         flips: Tensor | None, device: torch.device,
                         world: World) -> tuple[Tensor, Tensor, Tensor | None]:
    """This process's shard through the model; the global batch's (m×L logits, m sample ids,
    m bool flips: True where the image was flipped, None on features, which are never flipped).
    flips: the epoch's N flip draws by sample id (None for features), so a sample's flip does not
    depend on the workers or the processes; padding rows (id −1) take row 0's, their outputs are
    dropped."""
    sample_ids = sample_ids.to(device, non_blocking=True)
    draws = None if flips is None else flips[sample_ids.clamp(min=0)]
    inputs = phase.preprocess(inputs.to(device, non_blocking=True), train=True, draws=draws)
    with autocast(device, phase.amp):
        logits = phase.forward(inputs)
    logits, sample_ids = gather_global_batch(logits, sample_ids, global_size, world)
    flipped = None if flips is None else flips[sample_ids] < DevicePreprocess.FLIP_BELOW
    return logits, sample_ids, flipped


def check_diverged(loss_sum: Tensor, logit_max: Tensor, epoch: int, step: int) -> float:
    """TrainingDiverged when the loss is not finite or a logit passed LOGIT_LIMIT (one sync);
    returns the loss sum."""
    loss, largest = torch.stack([loss_sum.float(), logit_max]).tolist()
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the training loss became {loss} in epoch {epoch} "
                               f"(by step {step}); lower --lr or try --amp off")
    if not largest <= LOGIT_LIMIT:
        raise TrainingDiverged(f"the training diverged in epoch {epoch} (by step {step}): a logit "
                               f"reached {largest:.3g}, beyond ±{LOGIT_LIMIT:g} (mean loss "
                               f"{loss / max(step, 1):.3g}); "
                               f"lower --lr")
    return loss


def evaluate(model: nn.Module, split: Split, loader, preprocess: Callable, device: torch.device,
             amp: str, world: World = SINGLE_PROCESS) -> dict:
    """mAP (0–100) and per-class AP of `split`; the same function for val and test, images or
    features. With clean labels the vectorised AP (equal to scikit-learn's) is used; sparse labels
    go to `metrics.sparse_evaluation`."""
    return evaluate_scores(predict(model, loader, preprocess, device, amp, world), split)[0]


def evaluate_scores(scores: np.ndarray, split: Split, num_heads: int = 1) -> list[dict]:
    """`evaluate`'s dict for each of the `num_heads` heads whose N×L scores are the column blocks
    of `scores` (N×(K·L): head k in columns k·L … (k+1)·L − 1, a sweep's stacked head)."""
    if not np.isfinite(scores).all():
        raise TrainingDiverged(f"the model's evaluation scores are not finite "
                               f"({int((~np.isfinite(scores)).sum())} of {scores.size}): the "
                               f"weights diverged; lower --lr or try --amp off")
    return stacked_split_metrics(scores, split, num_heads)


# --- epochs, checkpoints, the best model ------------------------------------------------------

def train_phase(run: Run, phase: Phase, state: TrainState) -> bool:
    """Epochs state.epoch+1 … phase.epochs with val mAP, checkpoints and early stopping.

    Returns False when --stop_after left early (the run continues with --resume).
    """
    num_unobserved = max(run.method.labels.num_unobserved, 1)
    while state.epoch < phase.epochs and not state.stopped_early:  # (a resumed early stop)
        epoch = state.epoch + 1
        row = {"phase": phase.name, "epoch": epoch}
        row.update(train_one_epoch(phase, run.method, epoch, run.device, run.config.log_every,
                                   run.world))
        # one eval pass over the training set at most, run when the method or the tracker asks
        logits_of_training_set = functools.cache(lambda: training_set_logits(run, phase))
        run.method.end_epoch(epoch, logits_of_training_set)
        row["modified_fraction"] = row["modified"] / num_unobserved
        row["relabeled"] = run.method.num_relabeled
        if phase.tracker is not None:
            row.update(track_training_set(run, phase.tracker, epoch, logits_of_training_set()))
        row["val_map"] = evaluate(phase.model, run.data.val, phase.loaders["val"], phase.preprocess,
                                  run.device, phase.amp, run.world)["map"]
        record_epoch(run, phase, state, row)
        if phase.early_stop_drop > 0 and row["val_map"] < state.best_val_map - phase.early_stop_drop:
            print(f"early stop: val mAP {row['val_map']:.2f} is more than "
                  f"{phase.early_stop_drop:g} points below the best", flush=True)
            state.stopped_early = True
            return True
        if phase.stop_after is not None and phase.stop_after <= epoch < phase.epochs:
            print(f"stopping after epoch {epoch} (--stop_after); continue with "
                  f"--resume {run.folder.path / 'last.pt'}", flush=True)
            return False
    return True


def record_epoch(run: Run, phase: Phase, state: TrainState, row: dict) -> None:
    """Update the best model, write the best file / last.pt / metrics, print the summary line."""
    state.epoch = row["epoch"]
    state.history.append(row)
    if row["val_map"] > state.best_val_map:
        state.best_val_map, state.best_epoch = row["val_map"], row["epoch"]
        run.folder.save_checkpoint(phase.best_file, {
            "config": run.config.to_dict(), "class_names": list(run.data.class_names),
            "data_fingerprint": run.data_fingerprint, "epoch": row["epoch"],
            "val_map": row["val_map"],
            "model": phase.model.state_dict(), "method": run.method.state_dict()})
    if phase.save_last:
        run.folder.save_checkpoint("last.pt", {"config": run.config.to_dict(),
                                               "class_names": list(run.data.class_names),
                                               "data_fingerprint": run.data_fingerprint,
                                               **training_state(run, phase, state)})
    run.folder.write_metrics(state.history)
    log_scalars(run.logger, phase, row, len(state.history))
    print(phase.label + epoch_summary(row, phase.epochs, state.best_val_map, state.best_epoch),
          flush=True)


def training_state(run: Run, phase: Phase, state: TrainState) -> dict:
    """Everything that outlives a batch, for last.pt (resume.SavedTraining's layout)."""
    return SavedTraining(
        model=phase.model.state_dict(), optimizer=phase.optimizer.state_dict(),
        scaler=phase.scaler.state_dict(), method=run.method.state_dict(), epoch=state.epoch,
        best_val_map=state.best_val_map, best_epoch=state.best_epoch,
        stopped_early=state.stopped_early, history=state.history,
        tracker=None if phase.tracker is None else phase.tracker.state_dict(),
        rng={"torch": torch.get_rng_state(),  # the same on every process
             "cuda": [torch.cuda.get_rng_state(run.device)] if run.device.type == "cuda" else []},
    ).to_dict()


def restore_training_state(run: Run, phase: Phase, state: TrainState, saved: dict) -> None:
    """The inverse of training_state (--resume)."""
    phase.model.load_state_dict(saved["model"])
    phase.optimizer.load_state_dict(saved["optimizer"])
    phase.scaler.load_state_dict(saved["scaler"])
    run.method.load_state_dict(saved["method"])
    state.epoch, state.best_epoch = saved["epoch"], saved["best_epoch"]
    state.best_val_map, state.history = saved["best_val_map"], saved["history"]
    state.stopped_early = saved["stopped_early"]
    if state.stopped_early and phase.epochs > saved["config"]["epochs"]:
        print(f"note: the run stopped early at epoch {state.epoch}; extended to {phase.epochs} "
              f"epochs it trains on, early stopping still measured from its best val mAP "
              f"{state.best_val_map:.2f}", flush=True)
        state.stopped_early = False
    if phase.tracker is not None and saved["tracker"] is not None:
        phase.tracker.load_state_dict(saved["tracker"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and run.device.type == "cuda":
        torch.cuda.set_rng_state(saved["rng"]["cuda"][0], run.device)


def load_best(run: Run, phase: Phase) -> dict:
    """Put the phase's best-val model and method state back; returns the checkpoint."""
    barrier(run.world)  # rank 0 has written it
    best = run.folder.load_checkpoint(phase.best_file, run.device)
    phase.model.load_state_dict(best["model"])
    run.method.load_state_dict(best["method"])
    return best


def epoch_summary(row: dict, epochs: int, best_val_map: float, best_epoch: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  "
            f"val mAP {row['val_map']:6.2f} (best {best_val_map:.2f} @ {best_epoch})  "
            f"modified {row['modified']} ({100 * row['modified_fraction']:.2f} %)  "
            f"{row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s"
            + "".join(f"  {label} {row[key]:.3f}" for key, label in analysis.SUMMARY_FIELDS
                      if row.get(key) is not None))


def training_set_logits(run: Run, phase: Phase) -> Tensor:
    """N×L float32 logits of the training set in dataset order (eval mode, no flip), on the device.
    The CPU generator is restored afterwards (a loader pass draws a seed from it), so an extra pass
    leaves training unchanged."""
    if "train_eval" not in phase.loaders:  # images: built on first use
        phase.loaders["train_eval"] = train_eval_loader(run.data, run.config, run.device,
                                                        run.world)
    with torch.random.fork_rng(devices=[]):
        logits = predict(phase.model, phase.loaders["train_eval"], phase.preprocess, run.device,
                         phase.amp, run.world)
    return torch.from_numpy(logits).to(run.device)


def training_set_pass_bound_bytes() -> int:
    """The most bytes one N×L float32 copy of the training-set scores may take: a fraction
    (TRAINING_SET_PASS_RAM_FRACTION) of this machine's physical RAM."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(TRAINING_SET_PASS_RAM_FRACTION * physical)


def check_training_set_pass_fits(num_images: int, num_classes: int, bound_bytes: int) -> None:
    """Refuse (InputError) a run whose end-of-epoch pass (the method's end_epoch, --track_train)
    would hold N×L float32 scores larger than `bound_bytes`, before any training."""
    needed = num_images * num_classes * 4
    if needed > bound_bytes:
        raise InputError(
            f"the end-of-epoch pass over the training set (the method's end_epoch or "
            f"--track_train) holds N×L float32 scores: {num_images} × {num_classes} × 4 bytes = "
            f"{needed:,} bytes (about three copies at once), over the bound of "
            f"{bound_bytes:,} bytes ({TRAINING_SET_PASS_RAM_FRACTION:g} of this machine's "
            f"RAM); use a method without that pass, or fewer images or classes")


def track_training_set(run: Run, tracker: analysis.TrainingTracker, epoch: int,
                       logits: Tensor) -> dict:
    """--track_train (docs/analyses.md): loss groups and clean mAP from the eval pass over the training set
    (`logits`, N×L, training_set_logits), this epoch's precision of modification, and
    corrections.json."""
    train = run.data.train
    logits = logits.cpu().numpy()
    metrics = analysis.training_set_metrics(logits, run.method.labels.observed.cpu().numpy(),
                                            train.true_labels)
    metrics.update(tracker.end_epoch(epoch))
    if len(tracker.samples):
        run.folder.write_json("corrections.json", tracker.corrections(run.data.class_names, train))
    return metrics


# --- building a run -----------------------------------------------------------------------------

def start_run(config: Config, data: ExperimentData | None = None, training: bool = True) -> Run:
    """Data (unless given: e.g. features already in memory), model, loaders and method (shared by
    fit and evaluate_checkpoint). Joins the other processes under torchrun. Seeds torch."""
    world = world_from_environment()
    check_world(config, world, training)
    device = resolve_device(config.device, world)
    init_process_group(world, device, DISTRIBUTED_TIMEOUT_S)
    loading.warn_if_too_many_workers(config.num_workers)
    if data is None:
        data = main_process_first(world, lambda: load_run_data(config, device))
    config = with_expected_num_pos(config, data)
    torch.manual_seed(config.seed)
    if config.train_mode == "linear":
        model = new_linear_head(features.features_of(data.train).shape[1],
                                         data.num_classes, config.seed).to(device)
        preprocess = features.no_preprocess
        loaders = features.feature_loaders(data, config.linear_batch_size, config.seed, world)
    else:
        model = build_image_model(config.arch, config.weights, data.num_classes, device,
                                  config.channels_last, config.image_size,
                                  boost_alpha=config.boostlu_alpha)
        if config.sync_bn and world.size > 1:  # BatchNorm statistics over the global batch
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        preprocess = DevicePreprocess(model.mean, model.std, device, config.channels_last)
        loaders = image_loaders(data, config, device, world)
    return Run(config, device, data, model, preprocess, loaders, build_method(config, data, device),
               RunFolder(config.out_dir, writes=world.is_main), world,
               data_fingerprint=splits.data_fingerprint(data) if training else None)


def with_expected_num_pos(config: Config, data: ExperimentData) -> Config:
    """`config` with --expected_num_pos filled in (the training labels' mean count) for the
    methods that need it and were not given it."""
    if config.expected_num_pos is None and methods.method_class(config.method).needs_expected_num_pos:
        return dataclasses.replace(config, expected_num_pos=splits.mean_label_count(data))
    return config


def build_method(config: Config, data: ExperimentData, device: torch.device) -> Method:
    """The method of `config` on the training split, with its own copy of the observed labels
    (and its pseudo-labels, when the configuration names them)."""
    return methods.build(config.method, data.train.labels, data.train.true_labels, device=device,
                         hyper=config.method_hyper_parameters(),
                         pseudo_labels=run_pseudo_labels(config, data, device))


def run_pseudo_labels(config: Config, data: ExperimentData,
                      device: torch.device) -> PseudoLabels | None:
    """--pseudo_labels DIR read, checked against the training split's ids and class names, on
    `device`; None without the flag."""
    if config.pseudo_labels is None:
        return None
    if data.train.image_ids is None:
        raise InputError(f"--pseudo_labels {config.pseudo_labels}: the training split of "
                         f"--dataset {config.dataset} has no image ids to match its rows to "
                         f"(cached feature vectors); train on the images instead")
    return load_pseudo_labels(config.pseudo_labels, data.train.image_ids,
                              data.class_names).to(device)


def load_run_data(config: Config, device: torch.device) -> ExperimentData:
    """Images, or (--train_mode linear) features from the cache, extracted when missing."""
    if config.train_mode == "linear":
        return load_linear_data(config, device)
    return load_image_data(config)


def feature_source(config: Config) -> features.FeatureSource:
    return features.FeatureSource(config.dataset, config.data_root, config.arch, config.weights,
                                  config.image_size, config.seed, config.feature_cache)


def load_linear_data(config: Config, device: torch.device) -> ExperimentData:
    """What a linear run trains on: the .npz of --dataset features, else cached features of
    --dataset's images (extracting what is missing or stale)."""
    if config.dataset == "features":
        data = features.load_features_npz(Path(config.data_root))
        return features.with_features(data, {name: features.features_of(getattr(data, name)).to(device)
                                             for name in features.SPLITS})
    data = datasets.load_data(config.dataset, config.data_root, config.image_dir,
                              config.image_size, config.digits_train_size)
    source = feature_source(config)
    return features.cached_feature_data(
        source, data, device, features.backbone_extractor(source, data.num_classes, device, config.channels_last),
        config.batch_size * 2, config.num_workers)


def main_process_first(world: World, load: Callable):
    """load() on rank 0 first (it may extract and cache features), then on the others."""
    if not world.is_main:
        barrier(world)
    result = load()
    if world.is_main:
        barrier(world)
    return result


def load_image_data(config: Config) -> ExperimentData:
    data = datasets.load_data(config.dataset, config.data_root, config.image_dir,
                              config.image_size, config.digits_train_size)
    splits.check_split_overlap(data, config.allow_split_overlap)
    if not config.cache_images:
        return data
    return dataclasses.replace(data, **{  # decode once; every later epoch reads memory
        name: dataclasses.replace(split, images=loading.cache_images(split.images,
                                                                      config.num_workers))
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))})


def image_loaders(data: ExperimentData, config: Config, device: torch.device,
                  world: World) -> dict:
    pin = device.type == "cuda"
    loaders = {name: loading.make_loader(getattr(data, name).images,
                                          config.batch_size * (1 if name == "train" else 2),
                                          name == "train", config.num_workers, config.seed, pin,
                                          world)
               for name in ("train", "val", "test")}
    if config.track_train:
        loaders["train_eval"] = train_eval_loader(data, config, device, world)
    return loaders


def train_eval_loader(data: ExperimentData, config: Config, device: torch.device, world: World):
    """The training set in order, evaluated without flip (docs/analyses.md)."""
    return loading.make_loader(data.train.images, config.batch_size * 2, False,
                                config.num_workers, config.seed, device.type == "cuda", world)


def write_run_header(run: Run, **extra) -> None:
    """config.json (with `extra` keys) and the first stdout line."""
    config, data = run.config, run.data
    run.folder.create()
    run.folder.clear_failure()  # a stale error.txt of an earlier attempt
    run.folder.write_config(config.to_dict(), num_classes=data.num_classes,
                            train_size=len(data.train), data_fingerprint=run.data_fingerprint,
                            **extra)
    print(f"run folder {run.folder.path}  method {config.method}  dataset {config.dataset} "
          f"(train {len(data.train)}, val {len(data.val)}, test {len(data.test)}, "
          f"{data.num_classes} classes)  device {run.device}", flush=True)
    for note in data.notes:
        print(f"note: {note}", flush=True)


def end_to_end_phase(run: Run) -> Phase:
    """The image model, all layers: backbone at --lr, head at head_lr_mult × --lr."""
    config, model = run.config, run.model
    optimizer = build_optimizer(image_model_groups(model, config.lr, config.head_lr_mult),
                                run.method, config.optimizer, config.lr, config.momentum,
                                config.weight_decay)
    tracker = None
    if config.track_train:
        num_images = config.track_images if run.method.modifies_entries else 0
        tracker = analysis.TrainingTracker(run.data.train.true_labels, run.data.train.observed,
                                           num_images, run.device)
    return Phase("end_to_end", model, training_forward(model, run, config.compile),
                 run.loaders, run.preprocess, optimizer, config.epochs, amp=config.amp,
                 scaler=torch.amp.GradScaler(run.device.type, enabled=config.amp == "fp16"),
                 early_stop_drop=config.early_stop_drop, stop_after=config.stop_after,
                 tracker=tracker)


def linear_phase(run: Run, head: nn.Linear, data: ExperimentData, best_file: str) -> Phase:
    """The head alone on `data`'s features: Adam without weight decay at --linear_lr (Cole et al.),
    --linear_epochs epochs, no early stop, no last.pt."""
    config = run.config
    optimizer = build_optimizer([{"params": list(head.parameters()), "lr": config.linear_lr}],
                                run.method, "adam", config.linear_lr)
    loaders = features.feature_loaders(data, config.linear_batch_size, config.seed, run.world)
    return Phase("linear", head, training_forward(head, run, compile_model=False), loaders,
                 features.no_preprocess, optimizer, config.linear_epochs, best_file=best_file,
                 save_last=False)


def training_forward(model: nn.Module, run: Run, compile_model: bool) -> nn.Module:
    """What the training step calls: the model, in DistributedDataParallel under torchrun (which
    averages the gradients over the processes), compiled with --compile."""
    forward = model
    if run.world.size > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(forward) if compile_model else forward


# --- fit ----------------------------------------------------------------------------------------

def fit(config: Config, data: ExperimentData | None = None, saved: dict | None = None) -> dict:
    """Train with per-epoch val mAP, keep the best-val weights, report their test mAP.
    linear_init trains the head on cached features first; linear trains only that head.
    data: the splits when already loaded (features for --train_mode linear), else loaded here.
    saved: with --resume, the checkpoint resume_config read (read once, on the CPU)."""
    check_train_mode(config)
    logger_class = summary_writer_class(config.logger)
    run = start_run(config, data)
    if config.resume:  # checked against the data before anything is written
        saved = saved if saved is not None else read_checkpoint(config.resume, "--resume")
        check_checkpoint_fits(saved, f"--resume {config.resume}", config, run.data)
        splits.check_same_data(saved.get("data_fingerprint"), run.data,
                               f"--resume {config.resume}", config.data_root)
    splits.warn_classes_without_positives(run.data)
    analysis.check_analysis_inputs(run.data, config.track_train, config.pointing_game)
    if run.method.uses_training_set_pass or config.track_train:
        check_training_set_pass_fits(len(run.data.train), run.data.num_classes,
                                     training_set_pass_bound_bytes())
    write_run_header(run)
    if logger_class is not None and run.world.is_main:
        run.logger = logger_class(log_dir=str(run.folder.path))
    state = TrainState()
    if config.train_mode == "linear":
        phase = linear_phase(run, run.model, run.data, "best.pt")
    else:
        run.method.check_batch_size(config.batch_size)
        if config.train_mode == "linear_init" and not config.resume:
            linear_init_phase(run, state)  # a resumed run is already in phase 2
        phase = end_to_end_phase(run)
    if saved is not None:
        restore_training_state(run, phase, state, saved)
        print(f"resumed from {config.resume} after epoch {state.epoch}", flush=True)
    if not train_phase(run, phase, state):
        return {"status": "interrupted", "epoch": state.epoch}
    return test_best_model(run, phase, state)


def summary_writer_class(logger: str):
    """--logger tensorboard: torch's SummaryWriter (an InputError when tensorboard is missing)."""
    if logger == "none":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: needs tensorboard
    except ImportError:
        raise InputError("--logger tensorboard needs the tensorboard package: pip install "
                         "tensorboard (or use --logger none)") from None
    return SummaryWriter


def log_scalars(logger, phase: Phase, row: dict, step: int) -> None:
    """One epoch's scalars for TensorBoard; `step` counts the epochs of every phase."""
    if logger is None:
        return
    prefix = f"{phase.name}/"
    logger.add_scalar(prefix + "train_loss", row["train_loss"], step)
    logger.add_scalar(prefix + "lr", phase.optimizer.param_groups[0]["lr"], step)
    logger.add_scalar(prefix + "val_map", row["val_map"], step)
    logger.add_scalar(prefix + "modified_fraction", row["modified_fraction"], step)
    logger.flush()


def check_checkpoint_fits(checkpoint: dict, what: str, config: Config,
                          data: ExperimentData) -> None:
    """The checkpoint was trained on this dataset with this many classes (and these class names,
    when it records them): an InputError naming what differs."""
    saved_dataset = checkpoint["config"].get("dataset")
    if saved_dataset != config.dataset:
        raise InputError(f"{what}: trained on dataset {saved_dataset}, not {config.dataset}")
    num_classes = checkpoint_num_classes(checkpoint)
    if num_classes is not None and num_classes != data.num_classes:
        raise InputError(f"{what}: its model has {num_classes} classes, the data at "
                         f"{config.data_root} has {data.num_classes}")
    names = checkpoint.get("class_names")
    if names is not None and list(names) != list(data.class_names):
        raise InputError(f"{what}: its class names differ from those of the data at "
                         f"{config.data_root} (first saved {list(names)[:3]}, data "
                         f"{list(data.class_names)[:3]})")


def check_train_mode(config: Config) -> None:
    if config.train_mode != "linear":
        return
    if config.resume:
        raise InputError("--resume: a --train_mode linear run writes no last.pt; run it again "
                         "(its features are cached)")
    if config.track_train or config.pointing_game:
        raise InputError("--track_train and --pointing_game need images: not with --train_mode linear")


def linear_init_phase(run: Run, state: TrainState) -> None:
    """LinearInit's phase 1: the head of run.model trained on cached features of its backbone;
    then the head and the method's state are those of the best-val epoch (linear_best.pt), and
    phase 2 trains end-to-end from there with its LL epoch count restarting at 1."""
    config, head = run.config, run.model.head
    data = main_process_first(run.world, lambda: features.cached_feature_data(
        feature_source(config), run.data, run.device, lambda: (run.model, run.preprocess),
        config.batch_size * 2, config.num_workers))
    head.load_state_dict(new_linear_head(head.in_features, head.out_features, config.seed).state_dict())
    phase = linear_phase(run, head, data, "linear_best.pt")
    train_phase(run, phase, state)
    best = load_best(run, phase)
    print(f"LinearInit phase 1: best val mAP {best['val_map']:.2f} at linear epoch "
          f"{best['epoch']}; phase 2 trains end-to-end from that head, its LL epoch count "
          f"restarting at 1", flush=True)
    state.next_phase()


def test_best_model(run: Run, phase: Phase, state: TrainState) -> dict:
    """Load the phase's best model, evaluate the test split, write results.json."""
    load_best(run, phase)
    test = evaluate(phase.model, run.data.test, phase.loaders["test"], phase.preprocess,
                    run.device, phase.amp, run.world)
    return write_results(run, phase, state, test)


def write_results(run: Run, phase: Phase, state: TrainState, test: dict) -> dict:
    """results.json of the phase's best model, whose test evaluation is `test`; printed."""
    config = run.config
    results = {"status": "finished", "dataset": config.dataset, "method": config.method,
               "loss": config.loss, "mod_scheme": config.mod_scheme, "delta_rel": config.delta_rel,
               "seed": config.seed, "train_mode": config.train_mode,
               "best_epoch": state.best_epoch, "val_map": state.best_val_map,
               "test_map": test["map"], "test_ap": test["ap"], "class_names": run.data.class_names,
               **class_identity(run.data),
               "epochs_run": state.epoch, "stopped_early": state.stopped_early,
               "notes": run.data.notes}
    linear_rows = [row for row in state.history if row.get("phase") == "linear"]
    if linear_rows:  # the linear phase's best-val epoch (the first of equal ones)
        best_linear = max(linear_rows, key=lambda row: row["val_map"])
        results.update(linear_best_epoch=best_linear["epoch"],
                       linear_val_map=best_linear["val_map"])
    results.update(masked_results(test))
    results.update(coverage_results(test))
    if config.track_train:
        results.update(analysis.highest_loss_phase(state.history))
    if config.pointing_game:
        results.update(analysis.pointing_game_on_split(run.model, run.data.test, run.loaders["test"],
                                                       run.preprocess, run.device,
                                                       run.data.class_names))
        print(f"pointing game (best model, test): {results['pointing_game']:.2f}", flush=True)
    run.folder.write_json("results.json", results)
    print(f"best {phase.label}epoch {state.best_epoch}: val mAP {state.best_val_map:.2f}, "
          f"test mAP {test['map']:.2f}  ({run.folder.path / 'results.json'})", flush=True)
    return results


def class_identity(data: ExperimentData) -> dict:
    """The dataset release and the class ids beside the names (OpenImages: "V6" and the MIDs, so
    that a per-class AP is traceable where display names repeat); {} for datasets without them."""
    identity = {}
    if data.release is not None:
        identity["data_release"] = data.release
    if data.class_ids is not None:
        identity["class_ids"] = list(data.class_ids)
    return identity


def coverage_results(test: dict) -> dict:
    """How many classes the test mAP averages and the mAP over the measurable ones (dense splits),
    said aloud when some class cannot be measured."""
    if "coverage" not in test:
        return {}
    coverage = test["coverage"]
    if coverage["num_measured"] < coverage["num_classes"]:
        print(f"note: {coverage['num_classes'] - coverage['num_measured']} of "
              f"{coverage['num_classes']} test classes have no positive or no negative: test mAP "
              f"counts them (AP 0 without positives, as the papers); over the "
              f"{coverage['num_measured']} measurable classes it is {coverage['map_measured']:.2f}",
              flush=True)
    return {"test_num_classes": coverage["num_classes"],
            "test_num_measured": coverage["num_measured"],
            "test_map_measured": coverage["map_measured"]}


def masked_results(test: dict) -> dict:
    """results.json's partial-label fields (both conventions, class counts, G1–G5) of a sparse
    test split, printed as one line; {} for other splits."""
    if "masked" not in test:
        return {}
    print(f"test {format_masked_map(test['masked'])}; test_map is {metrics.MAP_CONVENTION}", flush=True)
    return test["masked"]


def evaluation_fields(result: dict, split: str) -> dict:
    """results.json's fields beyond the mAP and the APs, for `split`: a sparse split's masked
    fields unprefixed as in results.json (both conventions, class counts, G1–G5; printed), a
    dense split's class counts as <split>_num_classes, <split>_num_measured, <split>_map_measured."""
    if "masked" in result:
        print(f"{split} {format_masked_map(result['masked'])}; {split}_map is "
              f"{metrics.MAP_CONVENTION}", flush=True)
        return dict(result["masked"])
    coverage = result.get("coverage")
    if coverage is None:
        return {}
    return {f"{split}_num_classes": coverage["num_classes"],
            f"{split}_num_measured": coverage["num_measured"],
            f"{split}_map_measured": coverage["map_measured"]}


def evaluate_checkpoint(checkpoint_path: str, device_name: str, num_workers: int,
                        split: str = "test", data_paths: dict | None = None) -> dict:
    """--eval_only: mAP of a best.pt / last.pt on `split` with the configuration saved inside it
    (data_paths: data_root / image_dir where given, the data moved). Writes beside the checkpoint
    eval_<stem>.json (test) or eval_<stem>_val.json (val), with the mAP, per-class AP, class names
    (and ids, release) and `evaluation_fields`, and the split's N×L float32 logits, rows in the
    split's order, as eval_<stem>.npy / eval_<stem>_val.npy."""
    path = Path(checkpoint_path)
    checkpoint = read_checkpoint(path, "--eval_only")
    generated = checkpoint["config"].get("dataset") == "digits"  # no folder is read
    if data_paths and generated:
        raise InputError(f"--eval_only {path}: a digits run's data is generated in memory, no "
                         f"folder is read; drop --{' --'.join(data_paths)}")
    config = dataclasses.replace(config_from_dict(checkpoint["config"]), device=device_name,
                                 num_workers=num_workers, resume=None, out_dir=str(path.parent),
                                 **(data_paths or {}))
    if config.train_mode != "linear":  # the checkpoint holds every weight (a linear run's
        config = dataclasses.replace(config, weights="none")  # features depend on them)
    run = start_run(config, training=False)
    check_checkpoint_fits(checkpoint, f"--eval_only {path}", config, run.data)
    run.model.load_state_dict(checkpoint["model"])
    result = evaluate(run.model, getattr(run.data, split), run.loaders[split], run.preprocess,
                      run.device, config.amp if config.train_mode != "linear" else "off", run.world)
    print(f"{path} ({'linear ' if config.train_mode == 'linear' else ''}epoch "
          f"{checkpoint['epoch']}): {split} mAP {result['map']:.2f}", flush=True)
    name = f"eval_{path.stem}" + ("" if split == "test" else f"_{split}")
    results = {"checkpoint": str(path), "epoch": checkpoint["epoch"], "split": split,
               "data_root": None if generated else config.data_root,
               "image_dir": None if generated else config.image_dir,
               f"{split}_map": result["map"], f"{split}_ap": result["ap"],
               "class_names": run.data.class_names, **class_identity(run.data),
               **evaluation_fields(result, split), "scores": f"{name}.npy"}
    run.folder.write_npy(f"{name}.npy", result["scores"].astype(np.float32))
    run.folder.write_json(f"{name}.json", results)
    return results
