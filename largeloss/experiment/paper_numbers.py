"""The papers' published numbers, one home for every figure the tool sets beside a run: the LL
paper's table (docs/reproducing.md), OpenImages, and the later methods' (README) published and re-run
numbers; and the authors' best hyper-parameters, read from the CLI's own tables (presets.py) and
the method registry.

Imported by scripts/reproduce.py, scripts/summarize.py, scripts/plot_curves.py and the tests, so
that every place reads the same table.

    >>> paper_map("coco", "LL-Ct", "end_to_end")
    70.5
    >>> best_hparams("pascal", "LL-Cp")
    {'optimizer': 'sgd', 'lr': 0.005, 'epochs': 10, 'delta_rel': 0.1}
    >>> paper_map("coco", "gr", "end_to_end")
    73.17
    >>> paper_map("coco", "aevlp", "end_to_end")
    73.54
"""
from __future__ import annotations

from largeloss.experiment.presets import (DATASET_DEFAULTS, PAPER_DATASETS, PEER_DATASETS, PEER_PRESETS,
                                          VLP_DATASETS, VLP_PRESETS)
from largeloss.methods import registry as methods

# The large-loss schemes: the registered schemes that take Δrel.
LL_SCHEMES = tuple(name for name in methods.schemes()
                   if "delta_rel" in methods.method_class(name).hyper_parameters)
SETTINGS = ("end_to_end", "linear_init")  # train_mode values the paper reports (E2E, LI)

# docs/reproducing.md: test mAP (0-100), ResNet-50, 448 px. PAPER_MAP[train_mode][dataset][method].
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
METHODS = tuple(_E2E)  # the rows of the LL paper's table, in its order (registered method names)
assert all(method in methods.METHODS for method in METHODS)
PAPER_MAP: dict[str, dict[str, dict[str, float]]] = {
    setting: {dataset: {method: row[col] for method, row in table.items()}
              for col, dataset in enumerate(_COLUMNS)}
    for setting, table in (("end_to_end", _E2E), ("linear_init", _LI))
}

# OpenImages V3 (ResNet-101, 224 px, real partial labels), all groups; docs/openimages.md, not reproduced here.
OPENIMAGES_MAP = {"an": 82.0, "LL-R": 82.5, "LL-Ct": 82.6, "LL-Cp": 82.5}
OPENIMAGES_PAPER_RELEASE = "V3"  # the release of the LL paper's table; V6/V7 runs have no paper row

# The network and input size behind the paper's numbers (docs/reproducing.md): (arch, image_size in pixels).
PAPER_SETUP = {"openimages": ("resnet101", 224)}
DEFAULT_PAPER_SETUP = ("resnet50", 448)


def paper_setup(dataset: str) -> tuple[str, int]:
    """(arch, image_size) of the paper's runs for `dataset`."""
    return PAPER_SETUP.get(dataset, DEFAULT_PAPER_SETUP)

# docs/protocol.md: the authors' best end-to-end hyper-parameters, from the CLI's own table (config.py), so
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
    """The CLI's (--loss, --mod_scheme) for a registered method name (or a BoostLU row's, or a
    vision-language row's: aevlp is --loss gpr)."""
    name = VLP_ROW_METHOD.get(method, method.removesuffix(BOOSTLU))
    base_loss = methods.method_class(name).base_loss  # ValueError for an unknown name
    return (base_loss, name) if base_loss is not None else (name, "none")


def paper_map(dataset: str, method: str, train_mode: str) -> float | None:
    """The paper's test mAP for a cell, or None where the paper reports none."""
    if dataset == "openimages":  # its own table: end-to-end, ResNet-101, 224 px, all classes
        return OPENIMAGES_MAP.get(method) if train_mode == "end_to_end" else None
    if method in PEER_METHODS:  # their papers report end-to-end numbers only
        return (PEER_PAPER_MAP.get(dataset, {}).get(PEER_NAMES[method])
                if train_mode == "end_to_end" else None)
    if method in VLP_METHODS:
        return (VLP_PAPER_MAP.get(dataset, {}).get(VLP_NAMES[method])
                if train_mode == "end_to_end" else None)
    return PAPER_MAP.get(train_mode, {}).get(dataset, {}).get(method)


def takes_delta_rel(method: str) -> bool:
    """Whether Δrel means something to a row: the large-loss schemes, with or without BoostLU."""
    return method.removesuffix(BOOSTLU) in LL_SCHEMES


def method_label(config: dict) -> str | None:
    """A run's row in the tables: its registered method, + "+BoostLU" with the BoostLU head."""
    method = config.get("method")
    boosted = config.get("boostlu_alpha") not in (None, 1, 1.0)
    return f"{method}{BOOSTLU}" if method and boosted else method


def best_hparams(dataset: str, method: str) -> dict:
    """optimizer, lr, epochs and (LL schemes only) delta_rel for a dataset and method (docs/protocol.md);
    the batch size is DATASET_DEFAULTS[dataset].batch_size."""
    if dataset not in BEST_HPARAMS:
        raise ValueError(f"no hyper-parameters for dataset {dataset!r}; known: {', '.join(BEST_HPARAMS)}")
    method_flags(method)  # validates the name
    entry = BEST_HPARAMS[dataset]
    hparams = {"optimizer": entry["optimizer"], "lr": entry["lr"], "epochs": entry["epochs"]}
    if method in LL_SCHEMES:
        hparams["delta_rel"] = entry["delta_rel"][method]
    return hparams


# --- the methods after the LL paper (docs/methods.md) ----------------------------------------------
#
# Their rows: the registered methods, and the large-loss schemes with BoostLU's head. PEER_NAMES
# gives each row's name in peer_losses' tables. Presets (peer_flags): the authors' published values
# per dataset (PEER_PRESETS) on the protocol of docs/protocol.md (Cole split, clean-val selection).
# What the engine does not do is left out, and said in docs/methods.md: EM's early stop at the first epoch
# without val improvement (our runs keep the dataset's early stop) and GR's frozen-backbone epochs
# (n = 0 in its defaults). Hill and SPLC trained on another protocol (docs/methods.md §Presets): their
# preset is ours, the dataset's LL-paper recipe with their loss values and the mean reduction.
# digits (not in any paper): every method at the digits recipe with pascal's values, and BoostLU at
# digits' Δrel (so that the head is the only change from the LL rows).
BOOSTLU = "+BoostLU"
PEER_NAMES = {**{f"{scheme}{BOOSTLU}": f"{scheme}{BOOSTLU}" for scheme in LL_SCHEMES},
              "em": "EM", "APL": "EM+APL", "hill": "Hill", "splc": "SPLC", "gr": "GR"}
PEER_METHODS = tuple(PEER_NAMES)
assert all(name.removesuffix(BOOSTLU) in methods.METHODS for name in PEER_METHODS)
assert set(PEER_NAMES.values()) == set(PEER_PRESETS)

# The vision-language pseudo-label rows and CRISP (docs/vlp_methods.md), handled by the same peer_* functions.
# aevlp is GPR on DAMP pseudo-labels; crisp is CRISP-Eq7, our reading of CRISP's loss, whose row
# carries the paper's number for its own (Eq. 8) loss, which the tool does not run.
VLP_NAMES = {"aevlp": "AEVLP", "vlpl": "VLPL", "crisp": "CRISP"}
VLP_ROW_METHOD = {"aevlp": "gpr"}  # rows named after the paper, not the registered loss
VLP_METHODS = tuple(VLP_NAMES)
assert set(VLP_NAMES.values()) == set(VLP_PRESETS)
_ROW_NAMES = {**PEER_NAMES, **VLP_NAMES}
_ROW_PRESETS = {**PEER_PRESETS, **VLP_PRESETS}

# peer_losses' keyword names → the CLI's flags, per row (keys left out: fixed here, see above).
_BOOSTLU_FLAGS = {"boost_alpha": "--boostlu_alpha", "delta_rel": "--delta_rel"}
_FOCAL_FLAGS = {"margin": "--focal_margin", "gamma": "--focal_gamma", "reduction": "--reduction"}
_PEER_FLAGS = {
    **{f"{scheme}{BOOSTLU}": _BOOSTLU_FLAGS for scheme in LL_SCHEMES},
    "EM": {"alpha": "--em_alpha"},
    "EM+APL": {"alpha": "--em_alpha", "beta": "--apl_beta", "warmup_epochs": "--apl_warmup_epochs",
               "proportion": "--apl_proportion"},
    "Hill": {"lam": "--hill_lambda", **_FOCAL_FLAGS},
    "SPLC": {"tau": "--splc_tau", **_FOCAL_FLAGS},
    "GR": {"beta": "--gr_beta", "alpha": "--gr_alpha", "q2": "--gr_q2", "q3": "--gr_q3"},
    "AEVLP": {"beta": "--gr_beta", "alpha": "--gr_alpha", "q2": "--gr_q2", "q3": "--gr_q3",
              "lam": "--gpr_lambda", "rho": "--gpr_rho", "reg": "--gpr_reg",
              **{f"damp_{key}": f"--damp_{key}"
                 for key in ("temperature", "eta", "threshold", "top_k", "negative_ratio")}},
    "VLPL": {"alpha": "--em_alpha", "beta_pos": "--vlpl_beta_pos"},
    "CRISP": {"delta": "--crisp_delta", "tau": "--crisp_tau",
                  "warmup_epochs": "--crisp_warmup_epochs"},
}
# The authors' code behaviour that differs from this project's default and shaped their numbers
# (on their datasets): BoostLU's LL-Cp relabels every modified entry (docs/methods.md §Paper or code).
_CODE_VARIANTS = {f"LL-Cp{BOOSTLU}": ["--llcp_relabel", "modified"]}
_TRAIN_FLAGS = {"optimizer": "--optimizer", "lr": "--lr", "head_lr_mult": "--head_lr_mult",
                "weight_decay": "--weight_decay", "batch_size": "--batch_size",
                "num_epochs": "--epochs"}


def _flag_values(flags: dict, values: dict) -> list[str]:
    words = []
    for key, value in values.items():
        if key in flags:
            words += [flags[key], *map(str, value if isinstance(value, tuple) else (value,))]
    return words


def peer_recipe(dataset: str, method: str) -> dict:
    """The training recipe of a peer row: optimizer, lr, head_lr_mult, weight_decay, batch_size,
    num_epochs, and early_stop ("patience0", points, or absent)."""
    preset = _ROW_PRESETS[_ROW_NAMES[method]].get(dataset)
    if preset is not None and preset["train"]:
        return dict(preset["train"])
    defaults = DATASET_DEFAULTS[dataset]  # digits, and Hill / SPLC: the dataset's LL recipe
    return {"optimizer": defaults.optimizer, "lr": defaults.lr, "batch_size": defaults.batch_size,
            "num_epochs": defaults.epochs}


def peer_flags(dataset: str, method: str) -> list[str]:
    """Every hyper-parameter flag of a peer row on a dataset (after --loss / --mod_scheme)."""
    name = _ROW_NAMES[method]
    presets = _ROW_PRESETS[name]
    preset = presets.get(dataset) or presets["pascal"]
    values = {**preset["model"], **preset["loss"], **preset.get("apl", {}),
              **{f"damp_{key}": value for key, value in preset.get("damp", {}).items()}}
    if dataset not in presets and takes_delta_rel(method):
        values["delta_rel"] = DATASET_DEFAULTS[dataset].delta_rel[method.removesuffix(BOOSTLU)]
    recipe = peer_recipe(dataset, method)
    words = _flag_values(_TRAIN_FLAGS, recipe)
    if isinstance(recipe.get("early_stop"), float):
        words += ["--early_stop_drop", str(recipe["early_stop"])]
    if dataset in presets:
        words += _CODE_VARIANTS.get(method, [])
    return words + _flag_values(_PEER_FLAGS[name], values)


def peer_note(dataset: str, method: str) -> str:
    """The comment beside a peer row's command: the paper's number, or why there is none."""
    value = paper_map(dataset, method, "end_to_end")
    name = _ROW_NAMES[method]
    if value is None:
        reason = (f"{dataset} is not in the paper" if dataset not in PAPER_DATASETS
                  else f"{name}'s paper has no number on the Cole protocol")
        return f"# paper: none ({reason})"
    std = (PEER_PAPER_STD if method in PEER_METHODS else VLP_PAPER_STD).get(dataset, {}).get(name)
    note = f"# paper E2E {dataset} {name}: {value:.2f}" + ("" if std is None else f" ± {std:.2f}")
    return note + VLP_CAVEATS.get(method, "")


# What a vision-language row's number is not (docs/vlp_methods.md).
VLP_CAVEATS = {"crisp": " (CRISP's own loss, Eq. 8, not run here: this run is CRISP-Eq7, our "
                        "variant; see docs/vlp_methods.md)",
               "aevlp": " (the authors add a random, unseeded GCN perturbation to CLIP's text "
                        "features; off here, docs/vlp_methods.md)"}
# The pseudo-label folder of a row (docs/pseudo_labels.md), made by the other helper's offline script.
PSEUDO_LABEL_KINDS = {"aevlp": "damp", "vlpl": "vlpl"}


def pseudo_label_dir(dataset: str, method: str, data_root: str | None = None) -> str | None:
    """Where a row's pseudo-label folder goes (data/<dataset>/<dataset>_<kind>.pl), or None for a
    row that needs none."""
    kind = PSEUDO_LABEL_KINDS.get(method)
    return None if kind is None else f"{data_root or f'data/{dataset}'}/{dataset}_{kind}.pl"


def pseudo_label_command(python: str, dataset: str, method: str) -> list[str] | None:
    """The offline command that makes a row's pseudo-labels with CLIP (a GPU and the CLIP weights;
    docs/vlp_methods.md), or None for a row that needs none."""
    folder = pseudo_label_dir(dataset, method)
    if folder is None:
        return None
    return [python, "scripts/make_pseudo_labels.py", "--dataset", dataset, "--kind",
            PSEUDO_LABEL_KINDS[method], "--out", folder]


# Published test mAP (0-100), ResNet-50, end to end. PEER_PAPER_MAP[dataset][method].
# BoostLU: README image quantitative1.png; EM: the ECCV poster, mean over an
# unstated number of seeds, std in PEER_PAPER_STD (its NUS is the official image set, not
# Cole's re-crawl); GR: AEVLP's README image citing GR. Hill/SPLC: the paper's tables were
# not readable and the aggregator's values have no clear protocol, so none are listed.
_PEER_COLUMNS = {  # method: pascal, coco, nuswide, cub
    "LL-R+BoostLU": (89.29, 72.89, 49.59, 19.80),
    "LL-Ct+BoostLU": (88.61, 71.78, 48.37, 19.25),
    "LL-Cp+BoostLU": (87.81, 71.41, 48.61, 19.34),
    "EM": (89.09, 70.70, 47.15, 20.85),
    "EM+APL": (89.19, 70.87, 47.59, 21.84),
    "GR": (89.83, 73.17, 49.08, 21.64),
}


PEER_PAPER_MAP = {dataset: {method: row[column] for method, row in _PEER_COLUMNS.items()}
                  for column, dataset in enumerate(PEER_DATASETS)}


_PEER_STD_COLUMNS = {"EM": (0.17, 0.31, 0.11, 0.42), "EM+APL": (0.31, 0.23, 0.22, 0.34)}


PEER_PAPER_STD = {dataset: {method: row[column] for method, row in _PEER_STD_COLUMNS.items()}
                  for column, dataset in enumerate(PEER_DATASETS)}


# The baselines these papers re-ran themselves (same sources): BoostLU's LL re-runs (Adam 1e-5 for
# every dataset, below the LL paper's own numbers) and the EM poster's full-label BCE and AN.
_RERUN_COLUMNS = {
    "BoostLU": {"LL-R": (88.27, 70.70, 48.76, 19.56), "LL-Ct": (87.79, 70.29, 48.08, 19.06),
                "LL-Cp": (87.44, 70.27, 47.92, 19.21)},
    "EM": {"bce": (89.42, 76.78, 52.08, 30.90), "an": (85.89, 64.92, 42.27, 18.31)},
}


PEER_RERUN_MAP = {paper: {dataset: {method: row[column] for method, row in rows.items()}
                          for column, dataset in enumerate(PEER_DATASETS)}
                  for paper, rows in _RERUN_COLUMNS.items()}


# docs/vlp_methods.md: test mAP (0-100), ResNet-50 at 448 px, end to end. AEVLP: its results
# image; VLPL: its README; CRISP: Table 1, mean ± std of 5 runs, official NUS image set. CRISP's
# numbers are for its paper's loss (Eq. 8), which this tool does NOT run: CRISP-Eq7 is ours.
_VLP_COLUMNS = {"AEVLP": (90.46, 73.54, 50.70, 24.89), "VLPL": (89.10, 71.45, 49.55, 24.02),
                "CRISP": (89.82, 74.64, 50.00, 21.65)}
VLP_PAPER_MAP = {dataset: {method: row[column] for method, row in _VLP_COLUMNS.items()}
                 for column, dataset in enumerate(VLP_DATASETS)}
VLP_PAPER_STD = {dataset: {"CRISP": std}
                 for dataset, std in zip(VLP_DATASETS, (0.19, 0.22, 0.32, 0.18))}
