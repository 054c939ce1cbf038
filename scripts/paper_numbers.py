"""The paper's numbers (SPEC §7), and the authors' best hyper-parameters (SPEC §6) read from the
CLI's own table (config.DATASET_DEFAULTS) and the method registry (methods.py).

Imported by scripts/reproduce.py, scripts/summarize.py, scripts/plot_curves.py and the tests, so
that every place reads the same table.

    >>> paper_map("coco", "LL-Ct", "end_to_end")
    70.5
    >>> best_hparams("pascal", "LL-Cp")
    {'optimizer': 'sgd', 'lr': 0.005, 'epochs': 10, 'delta_rel': 0.1}
"""
from __future__ import annotations

import methods
from config import DATASET_DEFAULTS, PAPER_DATASETS

LL_SCHEMES = methods.schemes()  # the methods that modify a base loss: the large-loss schemes
SETTINGS = ("end_to_end", "linear_init")  # train_mode values the paper reports (E2E, LI)

# SPEC §7: test mAP (0-100), ResNet-50, 448 px. PAPER_MAP[train_mode][dataset][method].
_COLUMNS = ("pascal", "coco", "nuswide", "cub")
_E2E = {  # method: VOC, COCO, NUS, CUB
    "bce": (90.2, 78.0, 54.5, 32.9),
    "an": (85.1, 64.1, 42.0, 19.1),
    "wan": (86.5, 64.8, 46.3, 20.3),
    "an_ls": (86.7, 66.9, 44.9, 17.9),
    "epr": (85.5, 63.3, 46.0, 20.0),
    "role": (87.9, 66.3, 43.1, 15.0),
    "LL-R": (89.2, 71.0, 47.4, 19.5),
    "LL-Ct": (89.0, 70.5, 48.0, 20.4),
    "LL-Cp": (88.4, 70.7, 48.3, 20.1),
}
_LI = {
    "bce": (91.1, 77.2, 54.9, 34.0),
    "an": (86.9, 68.7, 47.6, 20.9),
    "wan": (87.1, 68.0, 47.5, 21.1),
    "an_ls": (86.5, 69.2, 50.5, 16.6),
    "epr": (84.9, 66.8, 48.1, 21.2),
    "role": (88.2, 69.0, 51.0, 16.8),
    "LL-R": (89.4, 71.9, 49.1, 21.5),
    "LL-Ct": (89.3, 71.6, 49.6, 21.8),
    "LL-Cp": (88.3, 71.0, 49.4, 21.4),
}
METHODS = tuple(_E2E)  # the rows of SPEC §7, in the paper's order (registered method names)
assert all(method in methods.METHODS for method in METHODS)
PAPER_MAP: dict[str, dict[str, dict[str, float]]] = {
    setting: {dataset: {method: row[col] for method, row in table.items()}
              for col, dataset in enumerate(_COLUMNS)}
    for setting, table in (("end_to_end", _E2E), ("linear_init", _LI))
}

# OpenImages V3 (ResNet-101, 224 px, real partial labels), all groups; SPEC §7, not reproduced here.
OPENIMAGES_MAP = {"an": 82.0, "LL-R": 82.5, "LL-Ct": 82.6, "LL-Cp": 82.5}

# SPEC §6: the authors' best end-to-end hyper-parameters, from the CLI's own table (config.py), so
# the scripts and the CLI cannot drift apart. `delta_rel` is in percent per epoch. The baselines have
# no tuned value in the LL paper: they use the dataset's optimizer and lr. digits is the project's
# CPU demo, not in the paper.
BEST_HPARAMS: dict[str, dict] = {
    name: {"optimizer": defaults.optimizer, "lr": defaults.lr, "epochs": defaults.epochs,
           "delta_rel": dict(defaults.delta_rel)}
    for name, defaults in DATASET_DEFAULTS.items() if name in PAPER_DATASETS + ("digits",)
}

# The Δrel values the authors searched (percent per epoch); `reproduce.py --sweep_delta_rel` runs them.
DELTA_REL_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)


def method_flags(method: str) -> tuple[str, str]:
    """The CLI's (--loss, --mod_scheme) for a registered method name."""
    base_loss = methods.method_class(method).base_loss  # ValueError for an unknown name
    return (base_loss, method) if base_loss is not None else (method, "none")


def paper_map(dataset: str, method: str, train_mode: str) -> float | None:
    """The paper's test mAP for a cell, or None where the paper reports none."""
    if dataset == "openimages":  # its own table: end-to-end, ResNet-101, 224 px, all classes
        return OPENIMAGES_MAP.get(method) if train_mode == "end_to_end" else None
    return PAPER_MAP.get(train_mode, {}).get(dataset, {}).get(method)


def best_hparams(dataset: str, method: str) -> dict:
    """optimizer, lr, epochs and (LL schemes only) delta_rel for a dataset and method (SPEC §6);
    the batch size is DATASET_DEFAULTS[dataset].batch_size."""
    if dataset not in BEST_HPARAMS:
        raise ValueError(f"no hyper-parameters for dataset {dataset!r}; known: {', '.join(BEST_HPARAMS)}")
    method_flags(method)  # validates the name
    entry = BEST_HPARAMS[dataset]
    hparams = {"optimizer": entry["optimizer"], "lr": entry["lr"], "epochs": entry["epochs"]}
    if method in LL_SCHEMES:
        hparams["delta_rel"] = entry["delta_rel"][method]
    return hparams
