"""The defaults a run takes from its dataset and method: the LL paper's best end-to-end
hyper-parameters per dataset (ours for digits, custom data, features and OpenImages), Cole et al.'s
LinearInit settings, and the later methods' own published hyper-parameters (PEER_PRESETS) as plain data.
config.py resolves flags against these tables; scripts/reproduce.py and paper_numbers.py read them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from largeloss.methods import peer_losses
from largeloss.methods.peer_losses import (APL_NUM_EPOCHS, APL_PROPORTION, BOOSTLU_ALPHA, GR_ALPHA, GR_BETA,
                                           GR_LINEAR_INIT, GR_NUM_EPOCHS, GR_Q2, GR_Q3, HILL_GAMMA,
                                           HILL_LAMBDA, HILL_MARGIN, SPLC_GAMMA, SPLC_MARGIN,
                                           SPLC_START_EPOCH, SPLC_TAU)

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
