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
one NaN check every --log_every steps).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

import analysis
import datasets
import features
import methods
from config import Config, config_from_dict
from datasets import DevicePreprocess, ExperimentData, Split
from errors import InputError, TrainingDiverged
from methods import Method
from metrics import average_precisions, ranked_average_precisions
from models import autocast, build_image_model, predict
from run_folder import RunFolder


# --- building blocks ----------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


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

    @property
    def label(self) -> str:
        """Prefix of the summary lines."""
        return "linear " if self.name == "linear" else ""


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
                    log_every: int) -> dict:
    """One pass over the training batches. Returns train_loss, modified, seconds, images_per_s."""
    loader, tracker = phase.loaders["train"], phase.tracker
    if tracker is not None:
        tracker.begin_epoch(method.labels.observed)
    phase.forward.train()
    loader.sampler.set_epoch(epoch)
    loss_sum = torch.zeros((), device=device)
    modified_count = torch.zeros((), dtype=torch.long, device=device)
    num_steps = num_images = 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not sys.stderr.isatty())
    for step, (inputs, sample_ids) in enumerate(progress, start=1):
        inputs = phase.preprocess(inputs.to(device, non_blocking=True), train=True)
        sample_ids = sample_ids.to(device, non_blocking=True)
        with autocast(device, phase.amp):
            logits = phase.forward(inputs)
        output = method.loss(logits, sample_ids, epoch)
        phase.optimizer.zero_grad(set_to_none=True)
        phase.scaler.scale(output.loss).backward()
        phase.scaler.step(phase.optimizer)
        phase.scaler.update()
        if tracker is not None:
            tracker.record_step(sample_ids, output.modified, logits, method.labels.rows(sample_ids))
        method.after_step(sample_ids, output)
        loss_sum += output.loss.detach()
        modified_count += output.modified.sum()
        num_steps += 1
        num_images += len(sample_ids)
        if step % log_every == 0:  # one host sync every log_every steps
            check_finite(loss_sum, epoch, step)
            progress.set_postfix(loss=f"{loss_sum.item() / num_steps:.4f}")
    check_finite(loss_sum, epoch, num_steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / max(num_steps, 1), "modified": int(modified_count),
            "seconds": seconds, "images_per_s": num_images / seconds}


def check_finite(loss_sum: Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(f"the training loss became {loss_sum.item()} in epoch {epoch} "
                               f"(by step {step}); lower --lr or try --amp off")


def evaluate(model: nn.Module, split: Split, loader, preprocess: Callable, device: torch.device,
             amp: str) -> dict:
    """mAP (0–100) and per-class AP of `split`; the same function for val and test, images or
    features. With clean labels the vectorised AP (equal to scikit-learn's) is used."""
    scores = predict(model, loader, preprocess, device, amp)
    targets, known = split.eval_targets()
    aps = (ranked_average_precisions(scores, targets) if known is None
           else average_precisions(scores, targets, known))
    return {"map": 100.0 * float(aps.mean()), "ap": (100.0 * aps).tolist(), "scores": scores}


# --- epochs, checkpoints, the best model ------------------------------------------------------

def train_phase(run: Run, phase: Phase, state: TrainState) -> bool:
    """Epochs state.epoch+1 … phase.epochs with val mAP, checkpoints and early stopping.

    Returns False when --stop_after left early (the run continues with --resume).
    """
    num_unobserved = max(run.method.labels.num_unobserved, 1)
    while state.epoch < phase.epochs:
        epoch = state.epoch + 1
        row = {"phase": phase.name, "epoch": epoch}
        row.update(train_one_epoch(phase, run.method, epoch, run.device, run.config.log_every))
        run.method.end_epoch(epoch, lambda: training_set_logits(run, phase))
        row["modified_fraction"] = row["modified"] / num_unobserved
        row["relabeled"] = run.method.num_relabeled
        if phase.tracker is not None:
            row.update(track_training_set(run, phase.tracker, epoch))
        row["val_map"] = evaluate(phase.model, run.data.val, phase.loaders["val"], phase.preprocess,
                                  run.device, phase.amp)["map"]
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
            "config": run.config.to_dict(), "epoch": row["epoch"], "val_map": row["val_map"],
            "model": phase.model.state_dict(), "method": run.method.state_dict()})
    if phase.save_last:
        run.folder.save_checkpoint("last.pt", {"config": run.config.to_dict(),
                                               **training_state(run, phase, state)})
    run.folder.write_metrics(state.history)
    print(phase.label + epoch_summary(row, phase.epochs, state.best_val_map, state.best_epoch),
          flush=True)


def training_state(run: Run, phase: Phase, state: TrainState) -> dict:
    """Everything that outlives a batch, for last.pt."""
    return {"model": phase.model.state_dict(), "optimizer": phase.optimizer.state_dict(),
            "scaler": phase.scaler.state_dict(), "method": run.method.state_dict(),
            "epoch": state.epoch, "best_val_map": state.best_val_map,
            "best_epoch": state.best_epoch, "stopped_early": state.stopped_early,
            "history": state.history,
            "tracker": None if phase.tracker is None else phase.tracker.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}


def restore_training_state(run: Run, phase: Phase, state: TrainState, saved: dict) -> None:
    """The inverse of training_state (--resume)."""
    phase.model.load_state_dict(saved["model"])
    phase.optimizer.load_state_dict(saved["optimizer"])
    phase.scaler.load_state_dict(saved["scaler"])
    run.method.load_state_dict(saved["method"])
    state.epoch, state.best_epoch = saved["epoch"], saved["best_epoch"]
    state.best_val_map, state.history = saved["best_val_map"], saved["history"]
    state.stopped_early = saved["stopped_early"]
    if phase.tracker is not None and saved.get("tracker") is not None:
        phase.tracker.load_state_dict(saved["tracker"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])


def load_best(run: Run, phase: Phase) -> dict:
    """Put the phase's best-val model and method state back; returns the checkpoint."""
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
        phase.loaders["train_eval"] = train_eval_loader(run.data, run.config, run.device)
    with torch.random.fork_rng(devices=[]):
        logits = predict(phase.model, phase.loaders["train_eval"], phase.preprocess, run.device,
                         phase.amp)
    return torch.from_numpy(logits).to(run.device)


def track_training_set(run: Run, tracker: analysis.TrainingTracker, epoch: int) -> dict:
    """--track_train (SPEC §8): loss groups and clean mAP from one extra eval pass over the
    training set, this epoch's precision of modification, and corrections.json."""
    train = run.data.train
    with torch.random.fork_rng(devices=[]):  # a loader pass draws a seed from the CPU generator:
        logits = predict(run.model, run.loaders["train_eval"], run.preprocess, run.device,
                         run.config.amp)  # restore it, so tracking leaves training unchanged
    metrics = analysis.training_set_metrics(logits, run.method.labels.observed.cpu().numpy(),
                                            train.true_labels)
    metrics.update(tracker.end_epoch(epoch))
    if len(tracker.samples):
        run.folder.write_json("corrections.json", tracker.corrections(run.data.class_names, train))
    return metrics


# --- building a run -----------------------------------------------------------------------------

def start_run(config: Config, data: ExperimentData | None = None) -> Run:
    """Data (unless given: e.g. features already in memory), model, loaders and method (shared by
    fit and evaluate_checkpoint). Seeds torch."""
    device = resolve_device(config.device)
    linear = config.train_mode == "linear"
    if data is None:
        data = features.load_linear_data(config, device) if linear else load_image_data(config)
    if config.expected_num_pos is None and methods.method_class(config.method).needs_expected_num_pos:
        config = dataclasses.replace(config, expected_num_pos=datasets.mean_label_count(data))
    torch.manual_seed(config.seed)
    if linear:
        model = features.new_linear_head(features.features_of(data.train).shape[1],
                                         data.num_classes, config.seed).to(device)
        preprocess = features.no_preprocess
        loaders = features.feature_loaders(data, config.linear_batch_size, config.seed)
    else:
        model = build_image_model(config.arch, config.weights, data.num_classes, device,
                                  config.channels_last, config.boostlu_alpha)
        preprocess = DevicePreprocess(model.mean, model.std, device, config.channels_last)
        loaders = image_loaders(data, config, device)
    method = methods.build(config.method, data.train.observed, data.train.true_labels,
                           device=device, hyper=config.method_hyper_parameters())
    return Run(config, device, data, model, preprocess, loaders, method, RunFolder(config.out_dir))


def load_image_data(config: Config) -> ExperimentData:
    data = datasets.load_data(config.dataset, config.data_root, config.image_dir,
                              config.image_size, config.digits_train_size)
    if not config.cache_images:
        return data
    return dataclasses.replace(data, **{  # decode once; every later epoch reads memory
        name: dataclasses.replace(split, images=datasets.cache_images(split.images,
                                                                      config.num_workers))
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))})


def image_loaders(data: ExperimentData, config: Config, device: torch.device) -> dict:
    pin = device.type == "cuda"
    loaders = {name: datasets.make_loader(getattr(data, name).images,
                                          config.batch_size * (1 if name == "train" else 2),
                                          name == "train", config.num_workers, config.seed, pin)
               for name in ("train", "val", "test")}
    if config.track_train:
        loaders["train_eval"] = train_eval_loader(data, config, device)
    return loaders


def train_eval_loader(data: ExperimentData, config: Config, device: torch.device):
    """The training set in order, evaluated without flip (SPEC §8)."""
    return datasets.make_loader(data.train.images, config.batch_size * 2, False,
                                config.num_workers, config.seed, device.type == "cuda")


def write_run_header(run: Run) -> None:
    """config.json and the first stdout line."""
    config, data = run.config, run.data
    run.folder.create()
    run.folder.write_config(config.to_dict(), num_classes=data.num_classes,
                            train_size=len(data.train))
    print(f"run folder {run.folder.path}  method {config.method}  dataset {config.dataset} "
          f"(train {len(data.train)}, val {len(data.val)}, test {len(data.test)}, "
          f"{data.num_classes} classes)  device {run.device}", flush=True)


def end_to_end_phase(run: Run) -> Phase:
    """The image model, all layers: backbone at --lr, head at head_lr_mult × --lr."""
    config, model = run.config, run.model
    optimizer = build_optimizer(image_model_groups(model, config.lr, config.head_lr_mult), run.method, config.optimizer, config.lr, config.momentum,
                                config.weight_decay)
    tracker = None
    if config.track_train:
        num_images = config.track_images if run.method.modifies_entries else 0
        tracker = analysis.TrainingTracker(run.data.train.true_labels, run.data.train.observed,
                                           num_images, run.device)
    return Phase("end_to_end", model, torch.compile(model) if config.compile else model,
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
    return Phase("linear", head, head, features.feature_loaders(data, config.linear_batch_size,
                                                                config.seed),
                 features.no_preprocess, optimizer, config.linear_epochs, best_file=best_file,
                 save_last=False)


# --- fit ----------------------------------------------------------------------------------------

def fit(config: Config, data: ExperimentData | None = None) -> dict:
    """Train with per-epoch val mAP, keep the best-val weights, report their test mAP.
    linear_init trains the head on cached features first; linear trains only that head.
    data: the splits when already loaded (features for --train_mode linear), else loaded here."""
    check_train_mode(config)
    run = start_run(config, data)
    datasets.warn_classes_without_positives(run.data)
    analysis.check_analysis_inputs(run.data, config.track_train, config.pointing_game)
    write_run_header(run)
    state = TrainState()
    if config.train_mode == "linear":
        phase = linear_phase(run, run.model, run.data, "best.pt")
    else:
        run.method.check_batch_size(config.batch_size)
        if config.train_mode == "linear_init" and not config.resume:
            linear_init_phase(run, state)  # a resumed run is already in phase 2
        phase = end_to_end_phase(run)
    if config.resume:
        restore_training_state(run, phase, state, torch.load(config.resume, map_location=run.device,
                                                             weights_only=True))
        print(f"resumed from {config.resume} after epoch {state.epoch}", flush=True)
    if not train_phase(run, phase, state):
        return {"status": "interrupted", "epoch": state.epoch}
    return test_best_model(run, phase, state)


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
    data = features.cached_feature_data(config, run.data, run.device,
                                        lambda: (run.model, run.preprocess))
    head.load_state_dict(features.new_linear_head(head.in_features, head.out_features,
                                                  config.seed).state_dict())
    phase = linear_phase(run, head, data, "linear_best.pt")
    train_phase(run, phase, state)
    best = load_best(run, phase)
    print(f"LinearInit phase 1: best val mAP {best['val_map']:.2f} at linear epoch "
          f"{best['epoch']}; phase 2 trains end-to-end from that head, its LL epoch count "
          f"restarting at 1", flush=True)
    state.next_phase()


def test_best_model(run: Run, phase: Phase, state: TrainState) -> dict:
    """Load the phase's best model, evaluate the test split, write results.json."""
    config = run.config
    load_best(run, phase)
    test = evaluate(phase.model, run.data.test, phase.loaders["test"], phase.preprocess,
                    run.device, phase.amp)
    results = {"status": "finished", "dataset": config.dataset, "method": config.method,
               "loss": config.loss, "mod_scheme": config.mod_scheme, "delta_rel": config.delta_rel,
               "seed": config.seed, "train_mode": config.train_mode,
               "best_epoch": state.best_epoch, "val_map": state.best_val_map,
               "test_map": test["map"], "test_ap": test["ap"], "class_names": run.data.class_names,
               "epochs_run": state.epoch, "stopped_early": state.stopped_early}
    linear_rows = [row for row in state.history if row.get("phase") == "linear"]
    if linear_rows:  # the linear phase's best-val epoch (the first of equal ones)
        best_linear = max(linear_rows, key=lambda row: row["val_map"])
        results.update(linear_best_epoch=best_linear["epoch"],
                       linear_val_map=best_linear["val_map"])
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


def evaluate_checkpoint(checkpoint_path: str, device_name: str, num_workers: int) -> dict:
    """--eval_only: test mAP of a best.pt / last.pt with the configuration saved inside it."""
    if not Path(checkpoint_path).is_file():
        raise InputError(f"--eval_only {checkpoint_path}: no such file")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    config = dataclasses.replace(config_from_dict(checkpoint["config"]), device=device_name,
                                 num_workers=num_workers, resume=None)
    if config.train_mode != "linear":  # the checkpoint holds every weight (a linear run's
        config = dataclasses.replace(config, weights="none")  # features depend on them)
    run = start_run(config)
    run.model.load_state_dict(checkpoint["model"])
    test = evaluate(run.model, run.data.test, run.loaders["test"], run.preprocess, run.device,
                    run.config.amp if config.train_mode != "linear" else "off")
    print(f"{checkpoint_path} ({'linear ' if config.train_mode == 'linear' else ''}epoch "
          f"{checkpoint['epoch']}): test mAP {test['map']:.2f}", flush=True)
    return {"epoch": checkpoint["epoch"], "test_map": test["map"], "test_ap": test["ap"]}


def resume_config(checkpoint_path: str, override: Config) -> Config:
    """The saved configuration of a run, with this invocation's engineering flags."""
    if not Path(checkpoint_path).is_file():
        raise InputError(f"--resume {checkpoint_path}: no such file")
    saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["config"]
    return dataclasses.replace(config_from_dict(saved), resume=checkpoint_path,
                               device=override.device, num_workers=override.num_workers,
                               stop_after=override.stop_after, log_every=override.log_every,
                               out_dir=str(Path(checkpoint_path).parent))
