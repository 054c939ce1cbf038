"""The defaults a run takes from its dataset and method: the LL paper's best end-to-end
hyper-parameters per dataset (ours for digits, custom data, features and OpenImages), Cole et al.'s
LinearInit settings, and the later methods' own published hyper-parameters (PEER_PRESETS) as plain data.
config.py resolves flags against these tables; scripts/reproduce.py and paper_numbers.py read them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from largeloss.methods import peer_losses, vlp_losses
from largeloss.methods.peer_losses import (APL_NUM_EPOCHS, APL_PROPORTION, BOOSTLU_ALPHA, GR_ALPHA, GR_BETA,
                                           GR_LINEAR_INIT, GR_NUM_EPOCHS, GR_Q2, GR_Q3, HILL_GAMMA,
                                           HILL_LAMBDA, HILL_MARGIN, SPLC_GAMMA, SPLC_MARGIN,
                                           SPLC_START_EPOCH, SPLC_TAU)
from largeloss.methods.pseudo_label_rules import DAMP_PRESETS, VLPL_TEMPERATURE, VLPL_THRESHOLD

PAPER_DATASETS = ("pascal", "coco", "nuswide", "cub")


@dataclass(frozen=True)
class DatasetDefaults:
    """The authors' best end-to-end hyper-parameters (docs/protocol.md) or ours for the other datasets."""
    optimizer: str
    lr: float
    delta_rel: dict[str, float]      # best Δrel (percent per epoch) per LL scheme
    expected_num_pos: float | None   # None: mean of the clean training label sums
    arch: str = "resnet50"
    image_size: int = 448
    epochs: int = 10
    batch_size: int = 16
    early_stop_drop: float = 3.0     # the authors' early stop: val mAP this far below the best


DATASET_DEFAULTS = {
    "pascal": DatasetDefaults("sgd", 5e-3, {"LL-R": 0.2, "LL-Ct": 0.2, "LL-Cp": 0.1}, 1.5),
    "coco": DatasetDefaults("adam", 1e-5, {"LL-R": 0.4, "LL-Ct": 0.2, "LL-Cp": 0.2}, 2.9),
    "nuswide": DatasetDefaults("adam", 1e-5, {"LL-R": 0.4, "LL-Ct": 0.2, "LL-Cp": 0.2}, 1.9),
    "cub": DatasetDefaults("adam", 7.5e-5, {"LL-R": 0.4, "LL-Ct": 0.4, "LL-Cp": 0.2}, 31.4),
    "custom": DatasetDefaults("adam", 1e-5, {"LL-R": 0.2, "LL-Ct": 0.2, "LL-Cp": 0.2}, None),
    "features": DatasetDefaults("adam", 1e-4, {"LL-R": 0.2, "LL-Ct": 0.2, "LL-Cp": 0.2}, None,
                                arch="linear", image_size=0),
    # OpenImages V3 (real partial labels, 5,000 classes): ResNet-101 at 224 px as the LL paper
    # (and IMCL, whose numbers its table reuses); the rest is ours, the paper being silent: Adam at
    # COCO's lr, batch 64, 5 epochs (3.7M images each), and Δrel far below COCO's since only
    # ~0.05 % of the entries are observed positives (docs/openimages.md).
    "openimages": DatasetDefaults("adam", 1e-5, {"LL-R": 0.01, "LL-Ct": 0.01, "LL-Cp": 0.005},
                                  None, arch="resnet101", image_size=224, epochs=5,
                                  batch_size=64),
    # Ours, for the generated CPU demo: about 15 % of its entries are false negatives (COCO: 2.4 %),
    # hence the larger Δrel. See docs/reproducing.md "The digits table".
    "digits": DatasetDefaults("adam", 1e-3, {"LL-R": 1.0, "LL-Ct": 0.5, "LL-Cp": 1.0}, None,
                              arch="small_cnn", image_size=48, epochs=20, batch_size=16,
                              early_stop_drop=0.0),  # its 250-image val set is too noisy for it
}


# The scheme a loss gets when --mod_scheme is not given: the LL paper's AN runs LL-R.
DEFAULT_SCHEME = {"an": "LL-R"}


# The flags of the methods after the LL paper (docs/methods.md) and their defaults, the authors' (and
# LL-Cp's relabel rule, whose BoostLU variant came with them): the keys are the hyper-parameter
# names the method classes declare; a flag is refused for a method that does not declare it.
# EM's α and APL's β, T_w are per dataset in the EM code (EM_DEFAULTS); other datasets get pascal's,
# peer_losses' defaults.
PEER_DEFAULTS = {
    "em_alpha": peer_losses.EM_ALPHA, "apl_beta": peer_losses.APL_BETA,
    "apl_warmup_epochs": peer_losses.APL_WARMUP_EPOCHS,
    "apl_proportion": peer_losses.APL_PROPORTION, "hill_lambda": peer_losses.HILL_LAMBDA,
    "focal_margin": peer_losses.HILL_MARGIN, "focal_gamma": peer_losses.HILL_GAMMA,
    "splc_tau": peer_losses.SPLC_TAU, "reduction": peer_losses.FOCAL_REDUCTION, "gr_beta": peer_losses.GR_BETA,
    "gr_alpha": peer_losses.GR_ALPHA, "gr_q2": peer_losses.GR_Q2, "gr_q3": peer_losses.GR_Q3,
    "gr_schedule": "reference", "gr_observed_negatives": "bce", "llcp_relabel": "above",
    # docs/vlp_methods.md: GPR (AEVLP), VLPL, CRISP-Eq7
    "gpr_lambda": vlp_losses.GPR_LAMBDA, "gpr_rho": vlp_losses.GPR_RHO,
    "gpr_reg": vlp_losses.GPR_REG, "vlpl_beta_pos": vlp_losses.VLPL_BETA_POS,
    "vlpl_rule": "labels", "vlpl_temperature": VLPL_TEMPERATURE,
    "vlpl_threshold": VLPL_THRESHOLD, "crisp_delta": vlp_losses.CRISP_DELTA,
    "crisp_tau": vlp_losses.CRISP_TAU, "crisp_warmup_epochs": vlp_losses.CRISP_WARMUP_EPOCHS,
    "crisp_initial_prior": 0.0, "crisp_positive_scale": "batch",
    **{f"damp_{key}": getattr(DAMP_PRESETS["pascal"], key)
       for key in ("temperature", "eta", "threshold", "top_k", "negative_ratio")},
    "damp_negatives": 0, "damp_view_flips": "per-view",
}



# BoostLU's Δrel per scheme (the same for every dataset), used instead of the LL paper's where
# DATASET_DEFAULTS holds the LL paper's (PAPER_DATASETS); digits and custom keep ours.
BOOSTLU_DELTA_REL = peer_losses.BOOSTLU_DELTA_REL


# Cole et al.'s LinearInit phase-1 settings per loss (docs/protocol.md); other losses use an_ls's.
LINEAR_DEFAULTS = {"role": (1e-3, 16)}


LINEAR_DEFAULT = (1e-4, 8)


# --- the later methods' published hyper-parameters, as plain data ---------------------------
#
# PEER_PRESETS[method][dataset] = {"model": kwargs of models.MultiLabelNet, "loss": kwargs of the
# method's loss function here (losses.compute_loss for the LL schemes), "apl": kwargs of the apl_*
# functions, "train": the recipe}. Sources (docs/methods.md): BoostLU's README command and config.py
# (the same for every dataset), EM/APL's main.py (per dataset), Hill/SPLC's losses.py defaults, GR's
# config.py defaults (GR publishes no per-dataset values).
# lr is the backbone's; head_lr_mult multiplies it for the head. early_stop: "patience0" stops at
# the first epoch whose val mAP does not improve; a number stops when val mAP falls more than that
# many points below the best.

PEER_DATASETS = ("pascal", "coco", "nuswide", "cub")


def _boostlu_preset(scheme: str) -> dict:
    return {"model": {"boost_alpha": BOOSTLU_ALPHA},
            "loss": {"delta_rel": BOOSTLU_DELTA_REL[scheme]},
            "train": {"optimizer": "adam", "lr": 1e-5, "head_lr_mult": 10, "weight_decay": 0.0,
                      "batch_size": 16, "num_epochs": 10}}


# EM / EM+APL per dataset (docs/methods.md §Presets): batch, lr, α, T_w, β. θ = 0.9 and T = 10 for all.
_EM_TABLE = {"pascal": (8, 1e-5, 0.2, 5, 0.02), "coco": (16, 1e-5, 0.1, 5, 0.9),
             "nuswide": (16, 1e-5, 0.1, 4, 0.2), "cub": (8, 1e-4, 0.01, 3, 0.4)}


def _em_preset(dataset: str, with_apl: bool) -> dict:
    batch_size, lr, alpha, warmup_epochs, beta = _EM_TABLE[dataset]
    train = {"optimizer": "adam", "lr": lr, "head_lr_mult": 1, "weight_decay": 0.0,
             "batch_size": batch_size, "num_epochs": APL_NUM_EPOCHS, "early_stop": "patience0"}
    if not with_apl:
        return {"model": {}, "loss": {"alpha": alpha}, "train": train}
    return {"model": {}, "loss": {"alpha": alpha, "beta": beta}, "train": train,
            "apl": {"warmup_epochs": warmup_epochs, "num_epochs": APL_NUM_EPOCHS,
                    "proportion": APL_PROPORTION}}


# Hill / SPLC: the loss hyper-parameters only, the same for every dataset. Their recipe (batch 128,
# Adam 1e-4, OneCycle, weight decay, EMA, RandAugment, selection on the test set) is not the Cole
# protocol (docs/methods.md), so no training values are carried, and the reduction is the
# protocol's mean, not their sum (peer_losses.FOCAL_REDUCTION). SPLC's τ = 0.65 is for COCO with
# 75 % of the labels kept, not the single-positive setting.
_HILL = {"model": {}, "loss": {"lam": HILL_LAMBDA, "margin": HILL_MARGIN, "gamma": HILL_GAMMA,
                               "reduction": peer_losses.FOCAL_REDUCTION}, "train": {}}


_SPLC = {"model": {}, "loss": {"tau": SPLC_TAU, "margin": SPLC_MARGIN, "gamma": SPLC_GAMMA,
                               "start_epoch": SPLC_START_EPOCH,
                               "reduction": peer_losses.FOCAL_REDUCTION}, "train": {}}


# GR: the repository's defaults for every dataset (its only runnable values, docs/methods.md).
_GR = {"model": {}, "loss": {"num_epochs": GR_NUM_EPOCHS, "linear_init": GR_LINEAR_INIT,
                             "beta": GR_BETA, "alpha": GR_ALPHA, "q2": GR_Q2, "q3": GR_Q3},
       "train": {"optimizer": "adam", "lr": 1e-5, "head_lr_mult": 10, "weight_decay": 0.0,
                 "batch_size": 8, "num_epochs": GR_NUM_EPOCHS, "early_stop": 2.0}}


PEER_PRESETS: dict[str, dict[str, dict]] = {
    **{f"{scheme}+BoostLU": {dataset: _boostlu_preset(scheme) for dataset in PEER_DATASETS}
       for scheme in BOOSTLU_DELTA_REL},
    "EM": {dataset: _em_preset(dataset, with_apl=False) for dataset in PEER_DATASETS},
    "EM+APL": {dataset: _em_preset(dataset, with_apl=True) for dataset in PEER_DATASETS},
    "Hill": {dataset: copy.deepcopy(_HILL) for dataset in PEER_DATASETS},
    "SPLC": {dataset: copy.deepcopy(_SPLC) for dataset in PEER_DATASETS},
    "GR": {dataset: copy.deepcopy(_GR) for dataset in PEER_DATASETS},
}

EM_DEFAULTS = {dataset: {"em_alpha": preset["loss"]["alpha"], "apl_beta": preset["loss"]["beta"],
                         "apl_warmup_epochs": preset["apl"]["warmup_epochs"]}
               for dataset, preset in PEER_PRESETS["EM+APL"].items()}


# --- GPR (AEVLP), VLPL and CRISP-Eq7 (docs/vlp_methods.md): the authors' hyper-parameters ----------------
#
# VLP_PRESETS[method][dataset] = {"loss": kwargs of vlp_losses' loss, "damp": GPR's DAMP rule
# (pseudo_label_rules.DampSettings, applied at each step), "pseudo_labels": what the pseudo-label
# folder must hold, "train": the recipe} (PEER_PRESETS' keys). Sources:
# docs/pseudo_labels.md (AEVLP: configs/*.json), docs/vlp_methods.md (VLPL: main_clip.py, README; CRISP:
# the paper gives 10 epochs and ResNet-50 only; the rest is ours, marked so).

VLP_DATASETS = ("pascal", "coco", "nuswide", "cub")
# GPR per dataset: β, (q₂, q₃), (λ₁, λ₂), reg, batch, epochs. α, ρ and lr are common.
_GPR_TABLE = {
    "pascal": ((0.0, 2.0, -2.0, -2.0), (0.01, 1.0), (0.7, 0.4), 0.05, 8, 8),
    "coco": ((0.0, 10.0, -2.0, -8.0), (0.01, 1.0), (0.7, 0.5), 0.001, 16, 8),
    "nuswide": ((0.0, 10.0, -2.0, -8.0), (0.01, 1.0), (0.7, 0.5), 0.001, 16, 10),
    "cub": ((0.0, 10.0, -2.0, -8.0), (0.01, 1.5), (0.8, 0.2), 0.01, 8, 10),
}
_VLPL_TABLE = {"pascal": (0.2, 1e-5), "coco": (0.1, 1e-5), "nuswide": (0.1, 1e-5),
               "cub": (0.01, 1e-4)}  # α (EM), lr


def _gpr_preset(dataset: str) -> dict:
    beta, (q2, q3), lam, reg, batch_size, num_epochs = _GPR_TABLE[dataset]
    return {"model": {},
            "loss": {"beta": beta, "alpha": GR_ALPHA, "q2": q2, "q3": q3, "lam": lam,
                     "rho": vlp_losses.GPR_RHO, "reg": reg},
            "damp": {key: getattr(DAMP_PRESETS[dataset], key)
                     for key in ("temperature", "eta", "threshold", "top_k", "negative_ratio")},
            "pseudo_labels": {"kind": "damp", "grid": DAMP_PRESETS[dataset].grid},
            "train": {"optimizer": "adam", "lr": 1e-5, "head_lr_mult": 10, "weight_decay": 0.0,
                      "batch_size": batch_size, "num_epochs": num_epochs, "early_stop": 2.0}}


def _vlpl_preset(dataset: str) -> dict:
    alpha, lr = _VLPL_TABLE[dataset]
    return {"model": {}, "loss": {"alpha": alpha, "beta_pos": vlp_losses.VLPL_BETA_POS},
            "pseudo_labels": {"kind": "vlpl", "temperature": VLPL_TEMPERATURE,
                              "threshold": VLPL_THRESHOLD, "flip": "match-train"},
            "train": {"optimizer": "adam", "lr": lr, "head_lr_mult": 1, "weight_decay": 0.0,
                      "batch_size": 8, "num_epochs": 10, "early_stop": 0.0}}


# CRISP: the paper gives ResNet-50, 10 epochs and δ = τ = 0.01; batch (8 or 16), lr, λ and the AN
# warm-up are unknown [U]: ours are the LL paper's Adam recipe (lr 1e-5, batch 16) and 1 AN epoch.
_CRISP = {"model": {}, "loss": {"delta": vlp_losses.CRISP_DELTA, "tau": vlp_losses.CRISP_TAU,
                                "warmup_epochs": vlp_losses.CRISP_WARMUP_EPOCHS},
          "train": {"optimizer": "adam", "lr": 1e-5, "head_lr_mult": 10, "weight_decay": 0.0,
                    "batch_size": 16, "num_epochs": 10}}

VLP_PRESETS: dict[str, dict[str, dict]] = {
    "AEVLP": {dataset: _gpr_preset(dataset) for dataset in VLP_DATASETS},
    "VLPL": {dataset: _vlpl_preset(dataset) for dataset in VLP_DATASETS},
    "CRISP": {dataset: copy.deepcopy(_CRISP) for dataset in VLP_DATASETS},
}

# GPR's per-dataset values (AEVLP's configs, docs/vlp_methods.md) for the flags it shares with GR and its
# own; they apply to --loss gpr only (GR keeps its repository's defaults). VLPL's α per dataset is
# EM's (EM_DEFAULTS' em_alpha: the same values, docs/vlp_methods.md).
GPR_DEFAULTS = {dataset: {"gr_beta": preset["loss"]["beta"], "gr_q3": preset["loss"]["q3"],
                          "gpr_lambda": preset["loss"]["lam"], "gpr_reg": preset["loss"]["reg"],
                          **{f"damp_{key}": value for key, value in preset["damp"].items()}}
                for dataset, preset in VLP_PRESETS["AEVLP"].items()}
METHOD_DATASET_DEFAULTS = {"gpr": GPR_DEFAULTS}  # registered method: its flag defaults per dataset
