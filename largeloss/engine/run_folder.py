"""The run folder: everything a run writes, each file written atomically.

    config.json      the resolved configuration, git SHA, library versions, data sizes
    metrics.jsonl    one JSON object per epoch (and metrics.csv, the same rows)
    last.pt          the whole training state after the last epoch (--resume)
    best.pt          the best-val model (and the method's state at that epoch)
    linear_best.pt   LinearInit's phase-1 best head and method state
    results.json     the best model's test mAP and what the run did
    corrections.json --track_train's per-image modifications
    error.txt        why the run failed (removed when a run in the folder starts well)
    run.lock         while a run owns the folder: its pid, host and start time
Checkpoints hold only tensors and plain values (torch.load(..., weights_only=True)); every
checkpoint a run reads goes through read_checkpoint, which turns a bad file into one InputError.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL
import sklearn
import torch
import torchvision

from largeloss.engine.resume import RESUME_KEYS
from largeloss.utils import atomic
from largeloss.utils.errors import InputError

LOCK_NAME = "run.lock"
# What --overwrite removes: the files a run writes (eval_* files of --eval_only stay).
RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt",
             "linear_best.pt", "results.json", "corrections.json", "error.txt")


class RunFolder:
    """writes: False for every process but rank 0 under torchrun (they read, never write);
    error.txt is written by whichever process failed."""

    def __init__(self, path: str | Path, writes: bool = True):
        self.path, self.writes = Path(path), writes

    def create(self) -> None:
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, content) -> None:
        if self.writes:
            atomic.save_text(self.path / name, json.dumps(content, indent=2))

    def write_config(self, config: dict, **extra) -> None:
        """config.json: the resolved configuration with the command line, the git SHA (and whether
        the work tree had uncommitted changes) and library versions."""
        self.write_json("config.json", {**config, "command": sys.argv, "git_sha": git_sha(),
                                        "git_dirty": git_dirty(), "versions": library_versions(),
                                        **extra})

    @contextmanager
    def owned(self, resume: bool = False, overwrite: bool = False):
        """Hold the folder for one run: run.lock (exclusive create) while inside, removed after.

        A folder that already holds a run (config.json) is refused unless resume (the run
        continues) or overwrite (its run files are removed first). Processes that do not write
        (torchrun ranks > 0) take no lock."""
        if not self.writes:
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        take_lock(self.path / LOCK_NAME)
        try:
            if (self.path / "config.json").exists() and not resume:
                if not overwrite:
                    raise InputError(
                        f"run folder {self.path} already holds a run (config.json): continue it "
                        f"with --resume {self.path / 'last.pt'}, replace it with --overwrite, or "
                        f"choose another --out_dir (the default folder is new for every run)")
                for name in RUN_FILES:
                    (self.path / name).unlink(missing_ok=True)
            yield self
        finally:
            (self.path / LOCK_NAME).unlink(missing_ok=True)

    def clear_failure(self) -> None:
        """Remove a stale error.txt: the run in this folder has started well."""
        if self.writes:
            (self.path / "error.txt").unlink(missing_ok=True)

    def write_npy(self, name: str, array: np.ndarray) -> None:
        if self.writes:
            atomic.save_npy(self.path / name, array)

    def write_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl and metrics.csv, rewritten whole each epoch (so a resume truncates them)."""
        if not self.writes:
            return
        atomic.save_text(self.path / "metrics.jsonl",
                         "".join(json.dumps(row) + "\n" for row in history))
        columns = list(dict.fromkeys(key for row in history for key in row))
        lines = [",".join(columns)] + [",".join("" if row.get(key) is None else str(row[key])
                                                for key in columns) for row in history]
        atomic.save_text(self.path / "metrics.csv", "\n".join(lines) + "\n")

    def save_checkpoint(self, name: str, payload: dict) -> None:
        if self.writes:
            atomic.save_torch(self.path / name, payload)

    def load_checkpoint(self, name: str, device: torch.device) -> dict:
        return read_checkpoint(self.path / name, "best checkpoint", device)

    def record_failure(self, message: str) -> None:
        """error.txt, if the folder exists, so sweeps and summaries see failed runs."""
        if self.path.is_dir():
            atomic.save_text(self.path / "error.txt", message)


def take_lock(path: Path) -> None:
    """Create `path` exclusively with this process's pid, host and start time. A lock left by a
    dead process of this host is taken over (with a note); any other is an InputError."""
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            if holder.get("host") == record["host"] and not pid_alive(holder.get("pid")):
                print(f"note: {path} was left by process {holder.get('pid')}, which has ended; "
                      f"taking the folder over", file=sys.stderr, flush=True)
                path.unlink(missing_ok=True)
                continue
            raise InputError(f"run folder {path.parent} is in use by process {holder.get('pid')} "
                             f"on {holder.get('host')} (since {holder.get('started')}; {path}): "
                             f"wait for it or choose another --out_dir (if it has ended, e.g. on "
                             f"another machine, delete {path})") from None
        with os.fdopen(descriptor, "w") as handle:
            json.dump(record, handle)
        return
    raise InputError(f"run folder {path.parent}: could not take {path}")


def read_lock(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):  # being written this instant, or not ours
        return {"pid": None, "host": None, "started": None}
    return holder if isinstance(holder, dict) else {}


def pid_alive(pid) -> bool:
    """Whether a process of this host has this id (True when it cannot be told)."""
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


# Keys each reader needs: eval_only and the best model need the weights; resume the whole state.
CHECKPOINT_KEYS = {"--eval_only": ("config", "epoch", "model"),
                   "best checkpoint": ("config", "epoch", "model", "method"),
                   "--resume": RESUME_KEYS}


def read_checkpoint(path: str | Path, purpose: str, device: torch.device | str = "cpu") -> dict:
    """A checkpoint this project wrote, read with weights_only=True; anything else (missing,
    empty, truncated, a foreign or plain weights file, a pickle with code) is an InputError
    naming the file and what is wrong. `purpose`: a key of CHECKPOINT_KEYS."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{purpose} {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never do that
        raise InputError(f"{purpose} {path}: holds objects other than tensors and plain values, "
                         f"so it is not a checkpoint of this project; refused unread") from None
    except (RuntimeError, EOFError, ValueError, OSError, UnicodeDecodeError) as error:
        if path.stat().st_size == 0:
            raise InputError(f"{purpose} {path}: the file is empty") from None
        detail = (str(error).splitlines() or [type(error).__name__])[0][:120]
        raise InputError(f"{purpose} {path}: unreadable, truncated or not a torch file "
                         f"({detail})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        raise InputError(f"{purpose} {path}: not a checkpoint of this project (no saved "
                         f"configuration: a plain weights file?); pass a last.pt or best.pt")
    missing = [key for key in CHECKPOINT_KEYS[purpose] if key not in checkpoint]
    if missing:
        hint = "; resume from a last.pt" if purpose == "--resume" else ""
        raise InputError(f"{purpose} {path}: the checkpoint lacks {missing}{hint}")
    return checkpoint


def checkpoint_num_classes(checkpoint: dict) -> int | None:
    """The class count of a checkpoint's model (its head's rows), or None if it cannot be told."""
    for key in ("head.weight", "weight"):
        weight = checkpoint["model"].get(key)
        if isinstance(weight, torch.Tensor) and weight.ndim == 2:
            return weight.shape[0]
    return None


def git_dirty() -> bool | None:
    """Whether the work tree has uncommitted changes (git status --porcelain is not empty)."""
    try:
        return bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                   text=True, cwd=Path(__file__).parent, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def library_versions() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "pillow": PIL.__version__}
