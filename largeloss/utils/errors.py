"""The two failures a run reports without a traceback (main.py turns them into exit codes)."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a file, a flag, a label value): one line, exit 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: one line, exit 3."""
