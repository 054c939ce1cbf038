"""The run folder: everything a run writes, each file written atomically.

    config.json      the resolved configuration, git SHA, library versions, data sizes
    metrics.jsonl    one JSON object per epoch (and metrics.csv, the same rows)
    last.pt          the whole training state after the last epoch (--resume)
    best.pt          the best-val model (and the method's state at that epoch)
    linear_best.pt   LinearInit's phase-1 best head and method state
    results.json     the best model's test mAP and what the run did
    corrections.json --track_train's per-image modifications
    error.txt        why the run failed
Checkpoints hold only tensors and plain values (torch.load(..., weights_only=True)).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL
import sklearn
import torch
import torchvision

import atomic


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
        """config.json: the resolved configuration with the git SHA and library versions."""
        self.write_json("config.json", {**config, "git_sha": git_sha(),
                                        "versions": library_versions(), **extra})

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
        return torch.load(self.path / name, map_location=device, weights_only=True)

    def record_failure(self, message: str) -> None:
        """error.txt, if the folder exists, so sweeps and summaries see failed runs."""
        if self.path.is_dir():
            atomic.save_text(self.path / "error.txt", message)


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
