"""largeloss: weakly supervised multi-label classification with partial labels.

The large-loss schemes LL-R, LL-Ct, LL-Cp (Kim et al., CVPR 2022), the single-positive baselines of
Cole et al. (CVPR 2021) and the methods published since, on one protocol. The public API:

    from largeloss import build, compute_loss, average_precisions
    method = build("LL-Ct", observed, delta_rel=20.0)      # a method object that owns its state
    output = method.loss(logits, sample_ids, epoch)        # output.loss, output.modified, ...

`observed` marks each label +1 (positive), -1 (negative) or 0 (unknown); NaN and an ignore_index are
accepted too (docs/api.md). The layers, bottom to top: utils → data → nn → methods → experiment →
engine → reporting; `largeloss.cli` is the command line (`python main.py`, `python -m largeloss`).
"""
from largeloss.engine.metrics import average_precisions
from largeloss.methods.losses import LossOutput, compute_loss
from largeloss.methods.registry import METHODS, Method, build, register

# The vision-language pseudo-label methods and CRISP (gpr, vlpl, crisp) register on import; Python
# runs this file before any largeloss module, so every entry point sees them.
from largeloss.methods import vlp  # noqa: E402,F401  isort: skip

__version__ = "3.0.0"
__all__ = ["LossOutput", "METHODS", "Method", "average_precisions", "build", "compute_loss", "register"]
