"""Training and evaluation: build_*, train_one_epoch, evaluate, fit, evaluate_checkpoint.

The training step never synchronises with the host: labels are looked up on the device by sample
index, the loss and the LL counts are accumulated as device tensors and read once per epoch (plus
one NaN check every --log_every steps).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import analysis
import datasets
from config import Config, config_from_dict
from datasets import DevicePreprocess, ExperimentData, InputError, Split
from losses import (LL_SCHEMES, NEEDS_EXPECTED_NUM_POS, NEEDS_TRUE_LABELS, LabelEstimator,
                    LossOutput, ObservedLabelStore, compute_loss, ll_num_modified)
from metrics import average_precisions
from models import MultiLabelNet, build_model

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --- building blocks ----------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """Autocast context for the forward pass, or a no-op when --amp off."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def build_optimizer(model: MultiLabelNet, estimator: LabelEstimator | None, config: Config,
                    lr: float) -> torch.optim.Optimizer:
    """Backbone at `lr`, head and ROLE estimator at head_lr_mult × lr (the authors' recipe)."""
    groups = [{"params": list(model.backbone.parameters()), "lr": lr},
              {"params": list(model.head.parameters()), "lr": lr * config.head_lr_mult}]
    if estimator is not None:
        groups.append({"params": list(estimator.parameters()), "lr": lr * config.head_lr_mult,
                       "weight_decay": 0.0})
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=lr, weight_decay=config.weight_decay)


class TrainState:
    """Everything that outlives a batch and goes into last.pt."""

    def __init__(self, model: MultiLabelNet, optimizer, store: ObservedLabelStore,
                 estimator: LabelEstimator | None, scaler: torch.amp.GradScaler):
        self.model, self.optimizer, self.store = model, optimizer, store
        self.estimator, self.scaler = estimator, scaler
        self.epoch = 0
        self.best_val_map = -math.inf
        self.best_epoch = 0
        self.stopped_early = False
        self.history: list[dict] = []
        self.tracker: analysis.TrainingTracker | None = None  # --track_train only

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "store": self.store.state_dict(),
            "estimator": None if self.estimator is None else self.estimator.state_dict(),
            "epoch": self.epoch, "best_val_map": self.best_val_map, "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early, "history": self.history,
            "tracker": None if self.tracker is None else self.tracker.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.store.load_state_dict(state["store"])
        if self.estimator is not None:
            self.estimator.load_state_dict(state["estimator"])
        self.epoch, self.best_epoch = state["epoch"], state["best_epoch"]
        self.best_val_map, self.history = state["best_val_map"], state["history"]
        self.stopped_early = state["stopped_early"]
        if self.tracker is not None and state.get("tracker") is not None:
            self.tracker.load_state_dict(state["tracker"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# --- one epoch ----------------------------------------------------------------------------------

def batch_loss(config: Config, logits: Tensor, sample_ids: Tensor, store: ObservedLabelStore,
               estimator: LabelEstimator | None, true_labels: Tensor | None,
               epoch: int) -> LossOutput:
    """The configured method's loss on a batch whose labels are looked up by sample id (B on the
    device); encodings were validated at load time, so no host sync here."""
    return compute_loss(
        config.method, logits, store.rows(sample_ids),
        true_labels=None if true_labels is None else true_labels[sample_ids],
        epoch=epoch, delta_rel=config.delta_rel, expected_num_pos=config.expected_num_pos,
        estimator_logits=None if estimator is None else estimator(sample_ids),
        check_values=False)


def train_one_epoch(state: TrainState, forward: nn.Module, loader, preprocess: DevicePreprocess,
                    config: Config, epoch: int, true_labels: Tensor | None,
                    device: torch.device) -> dict:
    """One pass over the training set. Returns train_loss, modified, seconds, images_per_s.

    forward: the model to call (state.model, or its torch.compile wrapper).
    true_labels: N×L on the device, or None; only the full-label baselines and IUN read them.
    """
    store, estimator, tracker = state.store, state.estimator, state.tracker
    if tracker is not None:
        tracker.begin_epoch(store.observed)
    forward.train()
    loader.sampler.set_epoch(epoch)
    loss_sum = torch.zeros((), device=device)
    modified_count = torch.zeros((), dtype=torch.long, device=device)
    num_steps = num_images = 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not sys.stderr.isatty())
    for step, (images, sample_ids) in enumerate(progress, start=1):
        images = preprocess(images.to(device, non_blocking=True), train=True)
        sample_ids = sample_ids.to(device, non_blocking=True)
        with autocast(device, config.amp):
            logits = forward(images)
        output = batch_loss(config, logits, sample_ids, store, estimator, true_labels, epoch)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(output.loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if tracker is not None:
            tracker.record_step(sample_ids, output.modified, logits, store.rows(sample_ids))
        if config.method == "LL-Cp":
            store.apply_relabel(sample_ids, output.relabel)
        loss_sum += output.loss.detach()
        modified_count += output.modified.sum()
        num_steps += 1
        num_images += len(sample_ids)
        if step % config.log_every == 0:  # one host sync every log_every steps
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


# --- evaluation ---------------------------------------------------------------------------------

@torch.inference_mode()
def predict(model: nn.Module, loader, preprocess: DevicePreprocess, device: torch.device,
            amp: str, outputs=None) -> np.ndarray:
    """N×L float32 logits in dataset order (one host transfer at the end); `outputs` replaces
    model.forward (e.g. model.pooled_features for N×D features)."""
    model.eval()
    outputs = outputs or model
    batches, order = [], []
    for images, sample_ids in loader:
        images = preprocess(images.to(device, non_blocking=True), train=False)
        with autocast(device, amp):
            batches.append(outputs(images).float())
        order.append(sample_ids)
    logits = torch.cat(batches).cpu().numpy()
    result = np.empty_like(logits)
    result[torch.cat(order).numpy()] = logits
    return result


def evaluate(model: nn.Module, split: Split, loader, preprocess: DevicePreprocess,
             device: torch.device, amp: str) -> dict:
    """mAP (0–100) and per-class AP of `split`; the same function for val and test."""
    scores = predict(model, loader, preprocess, device, amp)
    targets, known = split.eval_targets()
    aps = average_precisions(scores, targets, known)
    return {"map": 100.0 * float(aps.mean()), "ap": (100.0 * aps).tolist(), "scores": scores}


# --- the run folder -----------------------------------------------------------------------------

def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def library_versions() -> dict:
    import PIL
    import sklearn
    import torchvision
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "pillow": PIL.__version__}


def write_metrics(out_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, rewritten whole each epoch (so a resume truncates them)."""
    write_text_atomically(out_dir / "metrics.jsonl",
                          "".join(json.dumps(row) + "\n" for row in history))
    columns = list(dict.fromkeys(key for row in history for key in row))
    lines = [",".join(columns)] + [",".join("" if row.get(key) is None else str(row[key])
                                            for key in columns) for row in history]
    write_text_atomically(out_dir / "metrics.csv", "\n".join(lines) + "\n")


def epoch_summary(row: dict, epochs: int, best_val_map: float, best_epoch: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  "
            f"val mAP {row['val_map']:6.2f} (best {best_val_map:.2f} @ {best_epoch})  "
            f"modified {row['modified']} ({100 * row['modified_fraction']:.2f} %)  "
            f"{row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s"
            + "".join(f"  {label} {row[key]:.3f}" for key, label in analysis.SUMMARY_FIELDS
                      if row.get(key) is not None))


# --- fit ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """What a run holds besides its training state."""
    config: Config
    device: torch.device
    data: ExperimentData
    model: MultiLabelNet
    preprocess: DevicePreprocess
    loaders: dict

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)


def start_run(config: Config) -> Run:
    """Data, model and loaders (shared by fit and evaluate_checkpoint). Seeds torch."""
    device = resolve_device(config.device)
    data = datasets.load_data(config.dataset, config.data_root, config.image_dir,
                              config.image_size, config.digits_train_size)
    if config.cache_images:  # decode once; every later epoch reads memory
        data = dataclasses.replace(data, **{
            name: dataclasses.replace(split, images=datasets.cache_images(split.images,
                                                                          config.num_workers))
            for name, split in (("train", data.train), ("val", data.val), ("test", data.test))})
    if config.expected_num_pos is None and config.method in NEEDS_EXPECTED_NUM_POS:
        config = dataclasses.replace(config, expected_num_pos=datasets.mean_label_count(data))
    torch.manual_seed(config.seed)
    model = build_model(config.arch, config.weights, data.num_classes).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    preprocess = DevicePreprocess(model.mean, model.std, device, config.channels_last)
    return Run(config, device, data, model, preprocess, make_loaders(data, config, device))


def make_loaders(data: ExperimentData, config: Config, device: torch.device) -> dict:
    pin = device.type == "cuda"
    loaders = {"train": datasets.make_loader(data.train.images, config.batch_size, True,
                                             config.num_workers, config.seed, pin),
               "val": datasets.make_loader(data.val.images, config.batch_size * 2, False,
                                           config.num_workers, config.seed, pin),
               "test": datasets.make_loader(data.test.images, config.batch_size * 2, False,
                                            config.num_workers, config.seed, pin)}
    if config.track_train:  # the training set in order, evaluated without flip (SPEC §8)
        loaders["train_eval"] = datasets.make_loader(data.train.images, config.batch_size * 2,
                                                     False, config.num_workers, config.seed, pin)
    return loaders


def write_run_header(run: Run) -> None:
    """config.json (resolved config, git SHA, library versions) and the first stdout line."""
    config, data = run.config, run.data
    run.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run.out_dir / "config.json", json.dumps(
        {**config.to_dict(), "git_sha": git_sha(), "versions": library_versions(),
         "num_classes": data.num_classes, "train_size": len(data.train)}, indent=2))
    print(f"run folder {run.out_dir}  method {config.method}  dataset {config.dataset} "
          f"(train {len(data.train)}, val {len(data.val)}, test {len(data.test)}, "
          f"{data.num_classes} classes)  device {run.device}", flush=True)


def new_train_state(run: Run, lr: float) -> TrainState:
    config, data = run.config, run.data
    store = ObservedLabelStore(data.train.observed, run.device)
    estimator = (LabelEstimator(data.train.observed, config.seed).to(run.device)
                 if config.method == "role" else None)
    optimizer = build_optimizer(run.model, estimator, config, lr)
    scaler = torch.amp.GradScaler(run.device.type, enabled=config.amp == "fp16")
    state = TrainState(run.model, optimizer, store, estimator, scaler)
    if config.track_train:
        num_images = config.track_images if config.method in LL_SCHEMES else 0
        state.tracker = analysis.TrainingTracker(data.train.true_labels, data.train.observed,
                                                 num_images, run.device)
    return state


def train_epochs(run: Run, state: TrainState, forward: nn.Module, phase: str, epochs: int) -> bool:
    """Epochs state.epoch+1 … `epochs` with val mAP, checkpoints and early stopping.

    Returns False when --stop_after left early (the run continues with --resume).
    """
    config, data = run.config, run.data
    true_labels = (torch.as_tensor(data.train.true_labels, device=run.device)
                   if config.loss in NEEDS_TRUE_LABELS else None)
    num_unobserved = max(int((data.train.observed == 0).sum()), 1)
    while state.epoch < epochs:
        epoch = state.epoch + 1
        row = {"phase": phase, "epoch": epoch}
        row.update(train_one_epoch(state, forward, run.loaders["train"], run.preprocess, config,
                                   epoch, true_labels, run.device))
        row["modified_fraction"] = row["modified"] / num_unobserved
        row["relabeled"] = state.store.num_relabeled if config.method == "LL-Cp" else 0
        if state.tracker is not None:
            row.update(track_training_set(run, state, epoch))
        row["val_map"] = evaluate(run.model, data.val, run.loaders["val"], run.preprocess,
                                  run.device, config.amp)["map"]
        record_epoch(run, state, row)
        if config.early_stop_drop > 0 and row["val_map"] < state.best_val_map - config.early_stop_drop:
            print(f"early stop: val mAP {row['val_map']:.2f} is more than "
                  f"{config.early_stop_drop:g} points below the best", flush=True)
            state.stopped_early = True
            return True
        if config.stop_after is not None and config.stop_after <= epoch < epochs:
            print(f"stopping after epoch {epoch} (--stop_after); continue with "
                  f"--resume {run.out_dir / 'last.pt'}", flush=True)
            return False
    return True


def track_training_set(run: Run, state: TrainState, epoch: int) -> dict:
    """--track_train (SPEC §8): loss groups and clean mAP from one extra eval pass over the
    training set, this epoch's precision of modification, and corrections.json."""
    train = run.data.train
    with torch.random.fork_rng(devices=[]):  # a loader pass draws a seed from the CPU generator:
        logits = predict(run.model, run.loaders["train_eval"], run.preprocess, run.device,
                         run.config.amp)  # restore it, so tracking leaves training unchanged
    metrics = analysis.training_set_metrics(logits, state.store.observed.cpu().numpy(),
                                            train.true_labels)
    metrics.update(state.tracker.end_epoch(epoch))
    if len(state.tracker.samples):
        write_text_atomically(run.out_dir / "corrections.json", json.dumps(
            state.tracker.corrections(run.data.class_names, train), indent=1))
    return metrics


def record_epoch(run: Run, state: TrainState, row: dict) -> None:
    """Update the best model, write best.pt / last.pt / metrics, print the summary line."""
    state.epoch = row["epoch"]
    state.history.append(row)
    if row["val_map"] > state.best_val_map:
        state.best_val_map, state.best_epoch = row["val_map"], row["epoch"]
        save_atomically({"config": run.config.to_dict(), "epoch": row["epoch"],
                         "model": run.model.state_dict(), "val_map": row["val_map"]},
                        run.out_dir / "best.pt")
    save_atomically({"config": run.config.to_dict(), **state.state_dict()}, run.out_dir / "last.pt")
    write_metrics(run.out_dir, state.history)
    print(epoch_summary(row, run.config.epochs, state.best_val_map, state.best_epoch), flush=True)


def test_best_model(run: Run, state: TrainState) -> dict:
    """Load best.pt, evaluate the test split, write results.json."""
    config = run.config
    best = torch.load(run.out_dir / "best.pt", map_location=run.device, weights_only=True)
    run.model.load_state_dict(best["model"])
    test = evaluate(run.model, run.data.test, run.loaders["test"], run.preprocess, run.device,
                    config.amp)
    results = {"status": "finished", "dataset": config.dataset, "method": config.method,
               "loss": config.loss, "mod_scheme": config.mod_scheme, "delta_rel": config.delta_rel,
               "seed": config.seed, "train_mode": config.train_mode,
               "best_epoch": state.best_epoch, "val_map": state.best_val_map,
               "test_map": test["map"], "test_ap": test["ap"], "class_names": run.data.class_names,
               "epochs_run": state.epoch, "stopped_early": state.stopped_early}
    linear_rows = [row for row in state.history if row.get("phase") == "linear"]
    if linear_rows:  # LinearInit's phase 1: its best-val epoch (the first of equal ones)
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
    write_text_atomically(run.out_dir / "results.json", json.dumps(results, indent=2))
    print(f"best epoch {state.best_epoch}: val mAP {state.best_val_map:.2f}, "
          f"test mAP {test['map']:.2f}  ({run.out_dir / 'results.json'})", flush=True)
    return results


def warn_if_llcp_cannot_relabel(config: Config, num_classes: int) -> None:
    """LL-Cp relabels the candidates strictly above the k-th largest loss: with k = 1 per batch
    (e.g. pascal's B=16, L=20, Δrel=0.1) nothing is ever relabeled and LL-Cp acts as LL-Ct."""
    if config.method != "LL-Cp":
        return
    k = ll_num_modified("LL-Cp", 2, config.delta_rel, config.batch_size, num_classes)
    if k <= 1:
        warnings.warn(f"LL-Cp with --delta_rel {config.delta_rel:g}, batch {config.batch_size} and "
                      f"{num_classes} classes modifies k = {k} entry per batch; only entries "
                      f"strictly above the k-th largest loss are relabeled, so none will be and "
                      f"LL-Cp behaves like LL-Ct (raise --delta_rel to get k >= 2)")


def fit(config: Config) -> dict:
    """Train with per-epoch val mAP, keep the best-val weights, report their test mAP.
    linear_init runs linear.linear_init_phase first; linear runs linear.fit_linear instead."""
    import linear  # it builds on this module, so it is imported here, not at load time
    if config.train_mode == "linear":
        return linear.fit_linear(config)
    run = start_run(config)
    datasets.check_supervision(run.data, run.config.loss)
    warn_if_llcp_cannot_relabel(run.config, run.data.num_classes)
    analysis.check_analysis_inputs(run.data, config.track_train, config.pointing_game)
    write_run_header(run)
    state = new_train_state(run, run.config.lr)
    if config.resume:
        state.load_state_dict(torch.load(config.resume, map_location=run.device, weights_only=True))
        print(f"resumed from {config.resume} after epoch {state.epoch}", flush=True)
    elif config.train_mode == "linear_init":  # phase 1; a resumed run is already in phase 2
        linear.linear_init_phase(run, state)
    forward = torch.compile(run.model) if config.compile else run.model
    if not train_epochs(run, state, forward, "end_to_end", config.epochs):
        return {"status": "interrupted", "epoch": state.epoch}
    return test_best_model(run, state)


def evaluate_checkpoint(checkpoint_path: str, device_name: str, num_workers: int) -> dict:
    """--eval_only: test mAP of a best.pt / last.pt with the configuration saved inside it."""
    if not Path(checkpoint_path).is_file():
        raise InputError(f"--eval_only {checkpoint_path}: no such file")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if checkpoint["config"]["train_mode"] == "linear":  # a head for cached features
        import linear  # it builds on this module, so it is imported here, not at load time
        return linear.evaluate_linear_checkpoint(checkpoint_path, checkpoint, device_name,
                                                 num_workers)
    config = dataclasses.replace(config_from_dict(checkpoint["config"]), device=device_name,
                                 num_workers=num_workers, weights="none")
    run = start_run(config)
    run.model.load_state_dict(checkpoint["model"])
    test = evaluate(run.model, run.data.test, run.loaders["test"], run.preprocess, run.device,
                    run.config.amp)
    print(f"{checkpoint_path} (epoch {checkpoint['epoch']}): test mAP {test['map']:.2f}", flush=True)
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
