"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A crash (or a kill) never leaves a half-written file under the target's name, and the temporary
name is unique per writer (process id and a random part), so two writers never share one.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def write_atomically(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call write(temporary_path), then rename the temporary file to `path` (its folder is
    created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_text(path: Path | str, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def save_torch(path: Path | str, payload: dict) -> None:
    """torch.save of a dict of tensors and plain values (loadable with weights_only=True)."""
    write_atomically(path, lambda temporary: torch.save(payload, temporary))


def save_npy(path: Path | str, array: np.ndarray) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    write_atomically(path, write)
