"""--resume: what a last.pt holds (`SavedTraining`, from which the keys a resumable checkpoint must
have are derived), and which flags a resumed run may change (`RESUME_FLAGS`, `resume_config`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from largeloss.experiment.config import Config, config_from_dict
from largeloss.utils.errors import InputError


@dataclass
class SavedTraining:
    """Everything of a training phase that outlives a batch: last.pt holds these beside `config`
    and `class_names`. model / optimizer / scaler / method: their state dicts; history: the metric
    rows so far; tracker: --track_train's state or None; rng: {"torch": ..., "cuda": [...]}."""
    model: dict
    optimizer: dict
    scaler: dict
    method: dict
    epoch: int
    best_val_map: float
    best_epoch: int
    stopped_early: bool
    history: list
    tracker: dict | None
    rng: dict

    def to_dict(self) -> dict:
        """A shallow dict (no copy of the tensors), the checkpoint's layout."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


# The keys read_checkpoint requires of a checkpoint to resume from: what last.pt is written with.
RESUME_KEYS = ("config", *(field.name for field in fields(SavedTraining)))

# Flags a --resume takes when given: --epochs (extends the run), the engineering flags that change
# no maths, and where the data is (the same data moved: checked against the checkpoint). The saved
# --stop_after is never kept (the resumed run would stop again at once).
RESUME_FLAGS = frozenset({"epochs", "device", "num_workers", "log_every", "stop_after", "amp",
                          "channels_last", "compile", "logger", "data_root", "image_dir",
                          "feature_cache", "cache_images"})


def resume_config(checkpoint_path: str, override: Config, given: set[str], checkpoint: dict) -> Config:
    """The saved configuration of a run (`checkpoint`, read once by the caller), with this
    invocation's engineering flags, and --epochs and the data paths where given; any other given
    flag that differs from the saved one is an InputError listing them (never silently dropped)."""
    saved = checkpoint["config"]
    folder = Path(checkpoint_path).parent
    differing = [f"--{flag} {getattr(override, flag)} (saved: {saved.get(flag)})"
                 for flag in sorted(given - RESUME_FLAGS - {"resume", "config"})
                 if flag != "out_dir" and getattr(override, flag, None) != saved.get(flag)]
    if "out_dir" in given and Path(override.out_dir).resolve() != folder.resolve():
        differing.append(f"--out_dir {override.out_dir} (the run's folder: {folder})")
    if differing:
        raise InputError(f"--resume {checkpoint_path} continues the saved configuration; these "
                         f"flags differ from it: {', '.join(differing)} (only --epochs, the data "
                         f"paths and the engineering flags may change; start a new run instead)")
    return dataclasses.replace(
        config_from_dict(saved), resume=checkpoint_path, out_dir=str(folder),
        stop_after=override.stop_after,
        **{flag: getattr(override, flag) for flag in RESUME_FLAGS if flag in given})
