"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A crash (or a kill) never leaves a half-written file under the target's name, and the temporary
name is unique per writer (process id and a random part), so two writers never share one.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from largeloss.utils.errors import InputError

# What the disk says when it cannot take a file: a one-line InputError, not a traceback.
DISK_ERRORS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}


def write_atomically(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call write(temporary_path), then rename the temporary file to `path` (its folder is
    created when missing)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


@contextmanager
def disk_errors(path: Path | str):
    """Turn a full disk, a read-only or forbidden folder (OSError ENOSPC, EDQUOT, EROFS, EACCES,
    EPERM) while writing `path` into one InputError naming the folder, what is wrong and, for
    space, how much is free there. The target is never half-written (write_atomically)."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_ERRORS:
            raise
        raise InputError(disk_error_message(Path(path), error.errno)) from None


def disk_error_message(path: Path, code: int) -> str:
    folder = path.parent
    existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), folder)
    free = ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = f", {shutil.disk_usage(existing).free / 2**20:.1f} MiB free there"
    return (f"cannot write {path.name} in {folder}: {DISK_ERRORS[code]}{free}; free space or "
            f"choose a writable folder (--out_dir; cached features: --feature_cache); files "
            f"already written are complete (a run continues with --resume)")


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
