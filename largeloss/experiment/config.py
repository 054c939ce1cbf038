"""Command-line flags, paper defaults per dataset, and the resolved, frozen run configuration.

Precedence: explicit flag > `--config FILE` (JSON or YAML, e.g. a run's config.json) > the
dataset's paper default (docs/protocol.md §Training protocol) > built-in.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from largeloss.experiment.presets import (BOOSTLU_DELTA_REL, DATASET_DEFAULTS, DEFAULT_SCHEME, EM_DEFAULTS,
                                          LINEAR_DEFAULT, LINEAR_DEFAULTS, METHOD_DATASET_DEFAULTS,
                                          PAPER_DATASETS, PEER_DEFAULTS)
from largeloss.methods import registry as methods

DATASETS = ("digits", "pascal", "coco", "nuswide", "cub", "custom", "features", "openimages")
TRAIN_MODES = ("end_to_end", "linear_init", "linear")


@dataclass(frozen=True)
class Config:
    # data
    dataset: str
    data_root: str
    image_dir: str | None
    feature_cache: str | None
    image_size: int
    num_workers: int
    cache_images: bool
    expected_num_pos: float
    digits_train_size: int
    # method
    loss: str
    mod_scheme: str
    method: str
    delta_rel: float
    # model
    arch: str
    weights: str
    # optimisation
    train_mode: str
    optimizer: str
    lr: float
    head_lr_mult: float
    weight_decay: float
    momentum: float
    batch_size: int
    epochs: int
    early_stop_drop: float
    linear_epochs: int
    linear_lr: float
    linear_batch_size: int
    # engineering
    seed: int
    device: str
    amp: str
    channels_last: bool
    compile: bool
    sync_bn: bool
    out_dir: str
    resume: str | None
    eval_only: str | None
    stop_after: int | None
    log_every: int
    overwrite: bool
    split: str
    logger: str
    # analyses
    track_train: bool
    pointing_game: bool
    track_images: int
    # the methods after the LL paper (defaults so that configurations saved before them load)
    boostlu_alpha: float = 1.0
    em_alpha: float = PEER_DEFAULTS["em_alpha"]
    apl_beta: float = PEER_DEFAULTS["apl_beta"]
    apl_warmup_epochs: int = PEER_DEFAULTS["apl_warmup_epochs"]
    apl_proportion: float = PEER_DEFAULTS["apl_proportion"]
    hill_lambda: float = PEER_DEFAULTS["hill_lambda"]
    focal_margin: float = PEER_DEFAULTS["focal_margin"]
    focal_gamma: float = PEER_DEFAULTS["focal_gamma"]
    splc_tau: float = PEER_DEFAULTS["splc_tau"]
    reduction: str = PEER_DEFAULTS["reduction"]
    gr_beta: tuple = PEER_DEFAULTS["gr_beta"]
    gr_alpha: tuple = PEER_DEFAULTS["gr_alpha"]
    gr_q2: float = PEER_DEFAULTS["gr_q2"]
    gr_q3: float = PEER_DEFAULTS["gr_q3"]
    gr_schedule: str = PEER_DEFAULTS["gr_schedule"]
    gr_observed_negatives: str = PEER_DEFAULTS["gr_observed_negatives"]
    llcp_relabel: str = PEER_DEFAULTS["llcp_relabel"]
    allow_split_overlap: bool = False
    gpr_lambda: tuple = PEER_DEFAULTS["gpr_lambda"]
    gpr_rho: float = PEER_DEFAULTS["gpr_rho"]
    gpr_reg: float = PEER_DEFAULTS["gpr_reg"]
    vlpl_beta_pos: float = PEER_DEFAULTS["vlpl_beta_pos"]
    vlpl_rule: str = PEER_DEFAULTS["vlpl_rule"]
    vlpl_temperature: float = PEER_DEFAULTS["vlpl_temperature"]
    vlpl_threshold: float = PEER_DEFAULTS["vlpl_threshold"]
    crisp_delta: float = PEER_DEFAULTS["crisp_delta"]
    crisp_tau: float = PEER_DEFAULTS["crisp_tau"]
    crisp_warmup_epochs: int = PEER_DEFAULTS["crisp_warmup_epochs"]
    crisp_initial_prior: float = PEER_DEFAULTS["crisp_initial_prior"]
    crisp_positive_scale: str = PEER_DEFAULTS["crisp_positive_scale"]
    damp_temperature: float = PEER_DEFAULTS["damp_temperature"]
    damp_eta: float = PEER_DEFAULTS["damp_eta"]
    damp_threshold: float = PEER_DEFAULTS["damp_threshold"]
    damp_top_k: int = PEER_DEFAULTS["damp_top_k"]
    damp_negative_ratio: float = PEER_DEFAULTS["damp_negative_ratio"]
    damp_negatives: int = PEER_DEFAULTS["damp_negatives"]
    damp_view_flips: str = PEER_DEFAULTS["damp_view_flips"]
    pseudo_labels: str | None = None  # a <name>.pl folder (docs/pseudo_labels.md) for the methods needing one

    def to_dict(self) -> dict:
        return asdict(self)

    def method_hyper_parameters(self) -> dict:
        """Everything methods.build offers the method; it takes the ones it declares. num_epochs,
        T of the APL and GR schedules, is the epochs of the one phase they run in."""
        return {"delta_rel": self.delta_rel, "expected_num_pos": self.expected_num_pos,
                "seed": self.seed, "estimator_lr_mult": self.head_lr_mult,
                "num_epochs": self.linear_epochs if self.train_mode == "linear" else self.epochs,
                **{name: getattr(self, name) for name in PEER_DEFAULTS}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Weakly supervised multi-label classification: the large-loss schemes of Kim et "
                    "al. (CVPR 2022) and the single-positive baselines of Cole et al. (CVPR 2021).",
        epilog="Methods (the registry, methods.py):\n" + "\n".join(method_lines()) + "\n\n"
               "Examples:\n  python main.py                                   # digits demo, AN + LL-R\n"
               "  python main.py --dataset coco --mod_scheme LL-Ct   # a paper cell, authors' defaults\n"
               "  python main.py --loss role --dataset pascal        # a baseline\n"
               "  python main.py --dataset coco --loss em --mod_scheme APL   # EM+APL, authors' α, β, T_w",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE",
                        help="JSON or YAML (.yaml/.yml) file of flag defaults (keys = flag names; "
                             "a run's config.json works: its recorded keys such as git_sha, "
                             "out_dir and resume are ignored); explicit flags override it")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="digits",
                      help="digits is generated offline (no download); pascal/coco/nuswide/cub read "
                           "the Cole-format folder written by scripts/prepare_data.py; features reads "
                           "vectors from DATA_ROOT/features.npz (layout in features.py; needs "
                           "--train_mode linear); openimages reads the sparse V3/V6/V7 folder "
                           "of prepare_data.py (real partial labels) (default: digits)")
    data.add_argument("--data_root", metavar="DIR",
                      help="dataset folder (default: data/<dataset>)")
    data.add_argument("--image_dir", metavar="DIR",
                      help="folder the image paths are relative to (default: the dataset's usual place "
                           "under --data_root)")
    data.add_argument("--feature_cache", metavar="DIR",
                      help="folder of the cached backbone features for --train_mode linear_init / "
                           "linear, one .npy per split with a .json saying what made it (rebuilt "
                           "when it differs from the run) (default: DATA_ROOT/features; digits: "
                           "data/digits_cache)")
    data.add_argument("--image_size", type=int,
                      help="square input size in pixels, Resize((S, S)) without crop (paper: 448)")
    data.add_argument("--num_workers", type=int,
                      help="decoding processes; they return uint8 images, all else happens on the "
                           "device (default: 4; 0 for digits, which is generated in memory)")
    data.add_argument("--cache_images", action="store_true",
                      help="decode and resize every image once into RAM (N·3·S² bytes: pascal at "
                           "448 px 3.4 GB; coco's 49 GB is too much); later epochs read memory, "
                           "same maths (default: off)")
    data.add_argument("--expected_num_pos", type=float,
                      help="expected positives per image for epr/role, > 0 (paper: pascal 1.5, coco 2.9, "
                           "nuswide 1.9, cub 31.4; otherwise the mean clean label count)")
    data.add_argument("--allow_split_overlap", action="store_true",
                      help="train although val or test images are also training images (the same "
                           "file, or the same bytes under another name), with a warning: their "
                           "mAP is inflated (default: refused)")
    data.add_argument("--digits_train_size", type=int, default=1000,
                      help="training images of the generated digits dataset (default: 1000)")

    method = parser.add_argument_group("method")
    method.add_argument("--loss", choices=methods.base_losses(), default="an",
                        help="base loss; bce, bce_ls and iun use clean labels (upper bounds), iu needs "
                             "observed negatives (default: an)")
    method.add_argument("--mod_scheme", choices=("none",) + methods.schemes(),
                        help="large-loss scheme on top of --loss an: LL-R rejects, LL-Ct corrects, "
                             "LL-Cp corrects permanently (default: LL-R for an, none otherwise); "
                             "with --sweep_delta_rel a comma-separated list, e.g. LL-R,LL-Ct,LL-Cp")
    method.add_argument("--sweep_delta_rel", metavar="D1,D2,...",
                        help="train one linear head per Δrel (× per --mod_scheme of a list) together "
                             "in one pass over cached features (--train_mode linear only), each "
                             "head's run folder <out_dir>/<method>_d<Δrel> what its separate run "
                             "would write; e.g. --mod_scheme LL-R,LL-Ct,LL-Cp --sweep_delta_rel "
                             "0.1,0.2,0.3,0.4,0.5 (15 heads); --out_dir required")
    method.add_argument("--delta_rel", type=float,
                        help="Δrel in percent per epoch, 0 to 100: from epoch 2 on, LL-R/LL-Ct modify "
                             "(t−1)·Δrel %% of the batch's entries, LL-Cp Δrel %% (default: the "
                             "authors' best per dataset and scheme; BoostLU's with --boostlu_alpha "
                             "on pascal/coco/nuswide/cub)")
    method.add_argument("--pseudo_labels", metavar="DIR",
                        help="a pseudo-label folder <name>.pl (docs/pseudo_labels.md), made once "
                             "per dataset by scripts/make_pseudo_labels.py (CLIP, or the digits "
                             "simulation) and shared by every seed and method; for the methods "
                             "that train on pseudo-labels, refused for the others. Its rows are "
                             "matched to the training images by id (default: none)")
    method.add_argument("--llcp_relabel", choices=("above", "modified"),
                        help="LL-Cp: which modified entries become positives for good: those strictly "
                             "above the k-th largest loss (the LL paper; with k = 1 none) or every modified "
                             "one, as BoostLU's code (default: above)")
    method.add_argument("--boostlu_alpha", type=float, default=1.0, metavar="ALPHA",
                        help="BoostLU (Kim et al., CVPR 2023): the head is applied at every position "
                             "of the feature map (bias included) and positive activations are "
                             "multiplied by ALPHA before average pooling, in training, validation and "
                             "test; 1 is the plain head, the authors use 5. With --loss an and its "
                             "large-loss schemes, end to end; on pascal/coco/nuswide/cub --delta_rel "
                             "then defaults to BoostLU's (LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1) (default: 1)")
    method.add_argument("--em_alpha", type=float,
                        help="EM and EM+APL: weight α of the entropy term −α·H(p) on unobserved "
                             "entries (default: the authors' per dataset: pascal 0.2, coco 0.1, "
                             "nuswide 0.1, cub 0.01; otherwise 0.2)")
    method.add_argument("--apl_beta", type=float,
                        help="EM+APL (--loss em --mod_scheme APL): weight β of the pseudo-negatives' "
                             "soft BCE (default per dataset: pascal 0.02, coco 0.9, nuswide 0.2, cub "
                             "0.4; otherwise 0.02)")
    method.add_argument("--apl_warmup_epochs", type=int, metavar="T_W",
                        help="EM+APL: the pseudo-labelling passes over the training set run after "
                             "epochs T_W … T−1 (T = --epochs), each pass's labels used from the next "
                             "epoch (default per dataset: pascal 5, coco 5, nuswide 4, cub 3; "
                             "otherwise 5)")
    method.add_argument("--apl_proportion", type=float, metavar="THETA",
                        help="EM+APL: fraction θ of each class's unobserved entries labelled negative "
                             "by the last pass, ⌊θ·U_j/(T−T_W)⌋ per pass (default: 0.9)")
    method.add_argument("--hill_lambda", type=float,
                        help="Hill: λ of the negative term (λ − p)·p² (default: 1.5)")
    method.add_argument("--focal_margin", type=float, metavar="M",
                        help="Hill and SPLC: margin subtracted from observed positives' logits "
                             "(default: 1)")
    method.add_argument("--focal_gamma", type=float, metavar="GAMMA",
                        help="Hill and SPLC: exponent γ of the focal weights (default: 2)")
    method.add_argument("--splc_tau", type=float, metavar="TAU",
                        help="SPLC: from epoch 2 on, unobserved entries with σ(x) > TAU count as "
                             "positives in their batch (default: 0.6)")
    method.add_argument("--reduction", choices=("mean", "sum"),
                        help="Hill and SPLC: mean = Σ/(B·L), the protocol of every method here; "
                             "sum = Σ, the authors' code (with Adam and no weight decay the two differ "
                             "only through Adam's ε; with SGD or weight decay sum scales the step by "
                             f"B·L) (default: {PEER_DEFAULTS['reduction']})")
    method.add_argument("--gr_beta", type=float, nargs=4, metavar=("W0", "W_T", "B0", "B_T"),
                        help="GR: soft pseudo-label k̂ = σ(w·p + b), w and b moving linearly over "
                             "the --epochs (default: 0 2 -2 -2)")
    method.add_argument("--gr_alpha", type=float, nargs=4, metavar=("MU0", "SIGMA0", "MU_T", "SIGMA_T"),
                        help="GR: weight v = exp(−(p − μ)²/(2σ²)), μ and σ moving linearly over the "
                             "--epochs (default: 0.5 2 0.8 0.5)")
    method.add_argument("--gr_q2", type=float,
                        help="GR: q₂ of (1 − p^q)/q, the soft-positive side (default: 0.01)")
    method.add_argument("--gr_q3", type=float,
                        help="GR: q₃ of (1 − (1−p)^q)/q, the negative side (default: 1)")
    method.add_argument("--gr_schedule", choices=("reference", "aligned"),
                        help="GR: reference = the authors' code, whose w and b move one epoch behind "
                             "μ and σ and reach only (T−1)/T of the way at epoch T; aligned = all four "
                             "arrive at epoch T (default: reference)")
    method.add_argument("--gr_observed_negatives", choices=("bce", "ignore"),
                        help="GR on observed negatives (−1): bce = −log(1−p), our extension; ignore "
                             "= no loss, the authors' code (default: bce)")

    add_vlp_flags(method)

    model = parser.add_argument_group("model")
    model.add_argument("--arch", help="resnet50 (paper), resnet101, small_cnn (digits; small_cnn_gn: "
                                      "with GroupNorm, batch-split independent), any timm "
                                      "model name, tagged too (vit_tiny_patch16_224, "
                                      "convnext_atto.d2_in1k), or any torchvision classification "
                                      "model (mobilenet_v3_small; torchvision:NAME where timm has "
                                      "the name too, timm:NAME to force timm) (default per dataset)")
    model.add_argument("--weights", default="imagenet_v1",
                       help="imagenet_v1 (the papers' torchvision weights; timm: the model's "
                            "default tag), imagenet_v2, a torchvision weight name (IMAGENET1K_V2, "
                            "DEFAULT), none, or a PATH to a local ImageNet state dict of --arch "
                            "whose 1000-class classifier is dropped; without a network pass a "
                            "PATH (default: imagenet_v1; ignored by small_cnn)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_mode", choices=TRAIN_MODES, default="end_to_end",
                       help="end_to_end (all layers from the start), linear_init (Cole et al.: "
                            "phase 1 trains the linear head on frozen cached features for "
                            "--linear_epochs, phase 2 trains end-to-end from its best-val head for "
                            "--epochs; the LL epoch count restarts at 1 in each phase), linear (phase "
                            "1 only: the head on cached features, tested) (default: end_to_end)")
    optim.add_argument("--optimizer", choices=("adam", "sgd"),
                       help="adam (no weight decay) or sgd (momentum 0.9, weight decay 1e-3) "
                            "(default per dataset)")
    optim.add_argument("--lr", type=float, help="backbone learning rate, > 0 (default per dataset)")
    optim.add_argument("--head_lr_mult", type=float, default=10.0,
                       help="head learning rate = this × --lr, > 0; ROLE's estimator uses it too "
                            "(default: 10, as the authors)")
    optim.add_argument("--weight_decay", type=float,
                       help=">= 0 (default: 0 for adam, 1e-3 for sgd)")
    optim.add_argument("--momentum", type=float, default=0.9,
                       help="sgd momentum in [0, 1) (default: 0.9)")
    optim.add_argument("--batch_size", type=int, help="default: 16 (paper)")
    optim.add_argument("--epochs", type=int, help="default: 10 (paper), 20 for digits")
    optim.add_argument("--early_stop_drop", type=float,
                       help="stop when val mAP falls this many points (>= 0) below the best; 0 disables "
                            "(default: 3, as the authors, 0 for digits; end-to-end epochs only, the linear phase "
                            "runs all its epochs as Cole et al.'s)")
    optim.add_argument("--linear_epochs", type=int, default=25,
                       help="LinearInit phase 1 / linear mode epochs (default: 25, Cole et al.)")
    optim.add_argument("--linear_lr", type=float,
                       help="LinearInit phase-1 / linear mode learning rate, Adam without weight "
                            "decay as Cole et al. (ROLE's estimator: × --head_lr_mult) (default: "
                            "1e-3 for role, 1e-4 otherwise)")
    optim.add_argument("--linear_batch_size", type=int,
                       help="LinearInit phase-1 / linear mode batch size (default: 16 for role, 8 "
                            "otherwise, Cole et al.'s; larger batches are faster but another "
                            "protocol)")

    engineering = parser.add_argument_group("engineering (no flag here changes the maths)")
    engineering.add_argument("--seed", type=int, default=0, help="seeds torch, numpy and the data order")
    engineering.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                             help="auto = cuda when available")
    engineering.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                             help="autocast dtype for the forward pass; losses and scores stay float32")
    engineering.add_argument("--channels_last", action="store_true", help="NHWC memory format")
    engineering.add_argument("--compile", action="store_true", help="torch.compile the model")
    engineering.add_argument("--sync_bn", action="store_true",
                             help="under torchrun on GPUs: BatchNorm statistics over the global "
                                  "batch (SyncBatchNorm) instead of each process's shard")
    engineering.add_argument("--out_dir", metavar="DIR",
                             help="run folder, owned by one run at a time (run.lock); one that "
                                  "already holds a run is refused unless --resume or --overwrite "
                                  "(default: a new dated folder runs/<dataset>_<method>[_d<Δrel>]"
                                  "_seed<seed>/<YYYYmmdd-HHMMSS>; under torchrun the undated "
                                  "parent)")
    engineering.add_argument("--overwrite", action="store_true",
                             help="replace the run an --out_dir already holds (its config, "
                                  "metrics, checkpoints and results are removed first)")
    engineering.add_argument("--resume", metavar="CHECKPOINT",
                             help="continue from a last.pt, in its run folder, with its saved "
                                  "configuration; --epochs extends a run and the engineering flags "
                                  "apply; any other flag that differs from the saved one is refused")
    engineering.add_argument("--eval_only", metavar="CHECKPOINT",
                             help="evaluate a best.pt/last.pt on --split (with --data_root / "
                                  "--image_dir if the data moved) and exit; writes beside the "
                                  "checkpoint eval_<stem>.json (--split test) or "
                                  "eval_<stem>_val.json: mAP, AP per class and, for partial "
                                  "labels, both mAP conventions, class counts and G1–G5 as "
                                  "results.json; and the N×L logits as eval_<stem>.npy / "
                                  "eval_<stem>_val.npy")
    engineering.add_argument("--split", choices=("val", "test"), default="test",
                             help="the split --eval_only evaluates (default: test)")
    engineering.add_argument("--logger", choices=("none", "tensorboard"), default="none",
                             help="tensorboard: train loss, lr, val mAP and modified fraction per "
                                  "epoch as TensorBoard scalars in the run folder (needs "
                                  "pip install -e .[tensorboard]) (default: none)")
    engineering.add_argument("--stop_after", type=int, metavar="EPOCH",
                             help="leave after this epoch (>= 1) as if interrupted (for time-limited jobs; "
                                  "continue with --resume RUN/last.pt)")
    engineering.add_argument("--log_every", type=int, default=50,
                             help="steps between progress updates and divergence checks (each is "
                                  "one host sync; without a terminal a progress line goes to "
                                  "stderr) (default: 50)")

    analyses = parser.add_argument_group("analyses (off by default; they cost time)")
    analyses.add_argument("--track_train", action="store_true",
                          help="each epoch, the training loss of observed positives, true negatives "
                               "and false negatives, the precision of LL modifications and the "
                               "training mAP against clean labels (needs clean training labels)")
    analyses.add_argument("--pointing_game", action="store_true",
                          help="CAM pointing game on test images with boxes, into results.json")
    analyses.add_argument("--track_images", type=int, default=8, metavar="N",
                          help="with --track_train and an LL scheme: the classes modified each epoch "
                               "in the first N training images that have a false negative, written "
                               "to corrections.json (default: 8)")
    return parser


def add_vlp_flags(method: argparse._ArgumentGroup) -> None:
    """The flags of GPR, VLPL and CRISP-Eq7 (docs/vlp_methods.md)."""
    method.add_argument("--gpr_lambda", type=float, nargs=2, metavar=("LAMBDA1", "LAMBDA2"),
                        help="GPR (AEVLP): the pseudo-positives' weight 1 − v is kept within "
                             "[LAMBDA2, LAMBDA1] (default per dataset: pascal 0.7 0.4, coco/nuswide "
                             "0.7 0.5, cub 0.8 0.2; otherwise 0.7 0.4). GPR also takes --gr_beta, "
                             "--gr_alpha, --gr_q2, --gr_q3 (defaults: AEVLP's per dataset)")
    method.add_argument("--gpr_rho", type=float, metavar="RHO",
                        help="GPR: soft target of a pseudo-positive, in [0, 1] (default: 0.9)")
    method.add_argument("--gpr_reg", type=float, metavar="WEIGHT",
                        help="GPR: weight of the regulariser ((1/B)·Σp − k)²/L², k = "
                             "--expected_num_pos (default per dataset: pascal 0.05, coco/nuswide "
                             "0.001, cub 0.01; otherwise 0.05)")
    add_damp_flags(method)
    method.add_argument("--vlpl_beta_pos", type=float, metavar="BETA",
                        help="VLPL: weight of the pseudo-positives' soft BCE (target 0.9) "
                             "(default: 0.7). VLPL's EM weight is --em_alpha")
    method.add_argument("--vlpl_rule", choices=("labels", "scores"),
                        help="VLPL: labels = the pseudo-label folder's labels; scores = VLPL's rule "
                             "softmax(c/T) > threshold on its cosine scores, with the two flags "
                             "below (default: labels)")
    method.add_argument("--vlpl_temperature", type=float, metavar="T",
                        help="VLPL with --vlpl_rule scores: softmax temperature (default: 0.01)")
    method.add_argument("--vlpl_threshold", type=float, metavar="THR",
                        help="VLPL with --vlpl_rule scores: a class is a pseudo-positive when its "
                             "softmax score is > THR, so at most ⌊1/THR⌋ per image (default: 0.3)")
    method.add_argument("--crisp_delta", type=float, metavar="DELTA",
                        help="CRISP-Eq7: δ of the prior estimator's confidence term (default: 0.01)")
    method.add_argument("--crisp_tau", type=float, metavar="TAU",
                        help="CRISP-Eq7: τ of the prior estimator's confidence term (default: 0.01)")
    method.add_argument("--crisp_warmup_epochs", type=int, metavar="EPOCHS",
                        help="CRISP-Eq7: epochs trained with AN before the first prior estimate; "
                             "the priors are re-estimated after every epoch from then on (default: "
                             "1; the paper's is unknown)")
    method.add_argument("--crisp_initial_prior", type=float, metavar="PI",
                        help="CRISP-Eq7: prior of a class with no observed positive, in [0, 1] "
                             "(default: 0)")
    method.add_argument("--crisp_positive_scale", choices=("batch", "unbiased"),
                        help="CRISP-Eq7: batch = mean of (1 − p) over the batch's positives of the "
                             "class; unbiased = their sum × n/(B·n_j) (default: batch)")


def add_damp_flags(method: argparse._ArgumentGroup) -> None:
    """GPR's DAMP rule, applied at each step to the grid views of a --pseudo_labels folder of kind
    damp (docs/pseudo_labels.md); defaults per dataset: AEVLP's configs (pascal's elsewhere)."""
    method.add_argument("--damp_temperature", type=float, metavar="T",
                        help="GPR/DAMP: per-view softmax temperature over classes (default: 0.01; "
                             "cub 0.1)")
    method.add_argument("--damp_eta", type=float, metavar="ETA",
                        help="GPR/DAMP: cap of the gate η = min(s⁰ of the observed positive, ETA); "
                             "a class takes its best tile above η, its worst below (default: pascal "
                             "0, coco/nuswide 0.3, cub 0.005)")
    method.add_argument("--damp_threshold", type=float, metavar="THR",
                        help="GPR/DAMP: a top-k class is a pseudo-positive when its combined score "
                             "is >= THR (default: 0.5; nuswide 0.6, cub 0.005)")
    method.add_argument("--damp_top_k", type=int, metavar="K",
                        help="GPR/DAMP: classes considered per image (default: 3; cub 32)")
    method.add_argument("--damp_negative_ratio", type=float, metavar="RHO",
                        help="GPR/DAMP: the int(RHO·L) classes with the lowest mean score are set "
                             "to --damp_negatives (default: 0.2; coco 0.3)")
    method.add_argument("--damp_negatives", type=int, choices=(0, -1),
                        help="GPR/DAMP: 0 = the released code (those classes become unknown: no "
                             "negative pseudo-label, GPR's negative branch never fires); -1 = our "
                             "reading of the paper's figure (default: 0)")
    method.add_argument("--damp_view_flips", choices=("per-view", "fixed"),
                        help="GPR/DAMP: per-view = each view's flip variant drawn afresh at every "
                             "step (the authors' distribution); fixed = unflipped views "
                             "(default: per-view)")


def method_lines() -> list[str]:
    """--help's list of the registered methods: flags and the first sentence of the docstring."""
    lines = []
    for name, cls in methods.METHODS.items():
        if cls.base_loss is not None:
            flags = f"--loss {cls.base_loss} --mod_scheme {name}"
        else:
            flags = f"--loss {name}" + (" --mod_scheme none" if name in DEFAULT_SCHEME else "")
        summary = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".")
        lines.append(f"  {flags:<29} {summary}")
    boosted = ", ".join(name for name, cls in methods.METHODS.items() if cls.composes_with_boostlu)
    flag = "--boostlu_alpha 5"
    return lines + [f"  {flag:<29} BoostLU's head (Kim et al., CVPR 2023), with: {boosted}"]


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse flags (with an optional --config file under them) into a resolved Config."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from_file = set()
    if args.config:
        file_values = read_config_file(parser, args.config)
        parser.set_defaults(**file_values)
        args = parser.parse_args(argv)
        from_file = set(file_values) - explicit_flags(argv)
    args.from_config_file = from_file  # the values a refusal must blame on the file
    return resolve(args, parser)


def origin(args: argparse.Namespace, name: str) -> str:
    """How the user set a value: "--NAME", or "--config FILE's NAME" when the file set it."""
    if name in getattr(args, "from_config_file", ()):
        return f"--config {args.config}'s {name}"
    return f"--{name}"


# Keys a run's config.json records beside the flags (config_from_dict's derived values, the run's
# provenance), ignored when it is passed back as --config; with them the folder-specific flags, so
# the new run gets its own folder.
RECORDED_KEYS = frozenset({"method", "git_sha", "git_dirty", "command", "versions", "num_classes",
                           "train_size", "data_fingerprint", "sweep"})
FOLDER_FLAGS = frozenset({"out_dir", "resume", "eval_only", "overwrite"})


def read_config_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """Flag defaults from a JSON or YAML file; unknown keys are an error naming the file."""
    values = load_config_values(parser, path)
    if not isinstance(values, dict):
        parser.error(f"--config: {path} must hold a mapping of flag names to values")
    if "git_sha" in values or "versions" in values:  # a run's config.json
        values = {key: value for key, value in values.items() if key not in FOLDER_FLAGS}
    recorded_method = methods.METHODS.get(values.get("method"))
    if recorded_method is not None:  # a run's config.json: its other methods' values mean nothing
        values = {key: value for key, value in values.items()
                  if key not in PEER_DEFAULTS or key in recorded_method.hyper_parameters}
    values = {key: value for key, value in values.items() if key not in RECORDED_KEYS}
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"--config: {path} has unknown keys {unknown}")
    for action in parser._actions:  # set_defaults() skips the checks parse_args() makes
        value = values.get(action.dest)
        if value is None:
            continue
        expected = config_value_problem(action, value)
        if expected:
            parser.error(f"--config: {path}: {action.dest}={value!r} is not {expected}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"--config: {path}: {action.dest}={value!r} is not one of "
                         f"{list(action.choices)}")
    return values


def config_value_problem(action: argparse.Action, value) -> str | None:
    """What a --config value should have been for its flag (None when it fits): true/false for a
    switch, a whole number for an int flag, a number for a float one (a list of nargs of them),
    text otherwise. A JSON true is no batch size, "no" no switch, 1.5 no epoch count."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(action.nargs, int):
        if not isinstance(value, (list, tuple)) or len(value) != action.nargs:
            return f"a list of {action.nargs} numbers"
        problems = [scalar_problem(action.type, item) for item in value]
        return next((problem for problem in problems if problem), None)
    return scalar_problem(action.type, value)


def scalar_problem(value_type, value) -> str | None:
    if value_type is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if value_type is float:
        return (None if isinstance(value, (int, float)) and not isinstance(value, bool)
                else "a number")
    return None if isinstance(value, str) else "text"


def load_config_values(parser: argparse.ArgumentParser, path: str):
    """The parsed content of a .json, .yaml or .yml file (YAML through PyYAML)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        parser.error(f"--config: file {path} does not exist")
    if Path(path).suffix.lower() not in (".yaml", ".yml"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            parser.error(f"--config: {path} is not valid JSON ({error})")
    try:
        import yaml  # optional: only YAML config files need it
    except ImportError:
        parser.error(f"--config: {path} is YAML, which needs PyYAML (pip install pyyaml); "
                     f"or pass a .json file")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        parser.error(f"--config: {path} is not valid YAML ({str(error).splitlines()[0]})")


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags given on the command line (argparse defaults and --config
    values do not count): argv parsed again with every default suppressed."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def default_out_dir(name: str) -> str:
    """runs/<name>/<YYYYmmdd-HHMMSS>, made unique with -2, -3, ... when that folder exists (a
    repeated command gets a new folder). Under torchrun every process must agree on the folder,
    so it is runs/<name> itself (pass --out_dir there to keep runs apart)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"runs/{name}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, number = f"runs/{name}/{stamp}", 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"runs/{name}/{stamp}-{number}"
    return candidate


def check_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse flag values and combinations that cannot run (argparse's exit 2 and message)."""
    if args.dataset == "features" and args.train_mode != "linear":
        parser.error("--dataset features holds vectors, not images: use --train_mode linear")
    if args.dataset == "openimages" and args.train_mode != "end_to_end":
        parser.error(f"--train_mode {args.train_mode} caches N×L features and labels: not with "
                     f"--dataset openimages (use end_to_end)")
    for flag in ("batch_size", "epochs", "image_size", "linear_epochs", "linear_batch_size",
                 "log_every", "stop_after", "digits_train_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    for flag in ("lr", "head_lr_mult", "linear_lr", "expected_num_pos"):
        value = getattr(args, flag)
        if value is not None and not (0 < value < math.inf):  # also refuses nan
            parser.error(f"--{flag} must be a number > 0, got {value:g}")
    for flag in ("weight_decay", "early_stop_drop"):
        value = getattr(args, flag)
        if value is not None and not (0 <= value < math.inf):
            parser.error(f"--{flag} must be a number >= 0, got {value:g}")
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum must be in [0, 1), got {args.momentum:g}")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.track_images < 0:
        parser.error(f"--track_images must be >= 0, got {args.track_images}")
    if args.resume and args.eval_only:
        parser.error("--resume and --eval_only exclude each other")
    if args.sweep_delta_rel is not None:  # sweep_configs takes it off before parsing each head
        parser.error("--sweep_delta_rel: parse the command with sweep_configs (main.py does)")
    check_finite(args, parser)
    check_resume_folder(args, parser)


def check_resume_folder(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--resume continues in the checkpoint's own folder: --overwrite (which would delete that run)
    and an --out_dir elsewhere are refused instead of being ignored."""
    if not args.resume:
        return
    if args.overwrite:
        parser.error(f"--resume continues the run in {Path(args.resume).parent}; --overwrite would "
                     f"delete it: drop one of the two")
    if args.out_dir and Path(args.out_dir).resolve() != Path(args.resume).parent.resolve():
        parser.error(f"--resume continues the run in its own folder {Path(args.resume).parent}, "
                     f"not --out_dir {args.out_dir}: drop --out_dir (or copy the run folder there "
                     f"and resume from its last.pt)")


def check_finite(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every float flag is a finite number: nan and inf pass range checks such as `x > 0` (or
    fail them with a misleading message) and end as a diverged run."""
    for action in parser._actions:
        values = getattr(args, action.dest, None)
        values = values if isinstance(values, (list, tuple)) else [values]
        if action.type is float and any(value is not None and not math.isfinite(value)
                                        for value in values):
            parser.error(f"{origin(args, action.dest)} must be a finite number, got "
                         f"{' '.join(map(str, values))}")


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    """Fill every unset value from the dataset defaults and check the combinations."""
    defaults = DATASET_DEFAULTS[args.dataset]
    mod_scheme = args.mod_scheme or DEFAULT_SCHEME.get(args.loss, "none")
    if mod_scheme != "none" and args.loss != methods.method_class(mod_scheme).base_loss:
        base_loss = methods.method_class(mod_scheme).base_loss
        parser.error(f"--mod_scheme {mod_scheme} applies to --loss {base_loss} only, not --loss "
                     f"{args.loss} (use --mod_scheme none for the plain {args.loss} baseline)")
    method = mod_scheme if mod_scheme != "none" else args.loss
    delta_rel = args.delta_rel
    if delta_rel is None:
        boosted = args.boostlu_alpha != 1 and args.dataset in PAPER_DATASETS
        delta_rel = (BOOSTLU_DELTA_REL if boosted else defaults.delta_rel).get(mod_scheme, 0.0)
    if not 0 <= delta_rel <= 100:  # above 100 % of the entries per epoch means nothing
        parser.error(f"--delta_rel must be between 0 and 100 (percent of the batch's entries per "
                     f"epoch), got {delta_rel:g}")
    optimizer = args.optimizer or defaults.optimizer
    weight_decay = args.weight_decay
    if weight_decay is None:
        weight_decay = 1e-3 if optimizer == "sgd" else 0.0
    linear_lr, linear_batch_size = LINEAR_DEFAULTS.get(args.loss, LINEAR_DEFAULT)
    arch = args.arch or defaults.arch
    check_flags(args, parser)
    peer_values = resolve_method_flags(args, parser, method)
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = 0 if args.dataset == "digits" else 4
    return checked(parser, Config(
        dataset=args.dataset,
        data_root=args.data_root or f"data/{args.dataset}",
        image_dir=args.image_dir,
        feature_cache=args.feature_cache,
        image_size=args.image_size or defaults.image_size,
        num_workers=num_workers, cache_images=args.cache_images,
        expected_num_pos=args.expected_num_pos if args.expected_num_pos is not None
        else defaults.expected_num_pos,
        digits_train_size=args.digits_train_size,
        loss=args.loss, mod_scheme=mod_scheme, method=method, delta_rel=delta_rel,
        arch=arch, weights=args.weights,
        train_mode=args.train_mode, optimizer=optimizer,
        lr=args.lr if args.lr is not None else defaults.lr,
        head_lr_mult=args.head_lr_mult, weight_decay=weight_decay, momentum=args.momentum,
        batch_size=args.batch_size or defaults.batch_size,
        epochs=args.epochs or defaults.epochs,
        early_stop_drop=args.early_stop_drop if args.early_stop_drop is not None
        else defaults.early_stop_drop,
        linear_epochs=args.linear_epochs,
        linear_lr=args.linear_lr if args.linear_lr is not None else linear_lr,
        linear_batch_size=args.linear_batch_size or linear_batch_size,
        seed=args.seed, device=args.device, amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, sync_bn=args.sync_bn,
        out_dir=args.out_dir or default_out_dir(default_run_name(args, method, delta_rel)),
        resume=args.resume, eval_only=args.eval_only,
        stop_after=args.stop_after, log_every=args.log_every, overwrite=args.overwrite,
        split=args.split, logger=args.logger,
        track_train=args.track_train, pointing_game=args.pointing_game,
        track_images=args.track_images, allow_split_overlap=args.allow_split_overlap,
        pseudo_labels=args.pseudo_labels, **peer_values,
    ))


def checked(parser: argparse.ArgumentParser, config: Config) -> Config:
    """`config`, once its method accepts its hyper-parameters (e.g. not an APL warm-up as long as
    the run)."""
    try:
        methods.chosen_hyper_parameters(config.method, config.method_hyper_parameters())
    except ValueError as error:
        parser.error(str(error))
    return config


def default_run_name(args: argparse.Namespace, method: str, delta_rel: float) -> str:
    """<dataset>_<method>[_d<Δrel>][_boostlu<α>][_<train_mode>]_seed<seed> (default_out_dir
    dates it)."""
    delta_part = (f"_d{delta_rel:g}" if "delta_rel" in methods.method_class(method).hyper_parameters
                  else "")
    boost_part = f"_boostlu{args.boostlu_alpha:g}" if args.boostlu_alpha != 1 else ""
    mode_part = "" if args.train_mode == "end_to_end" else f"_{args.train_mode}"
    return f"{args.dataset}_{method}{delta_part}{boost_part}{mode_part}_seed{args.seed}"


def resolve_method_flags(args: argparse.Namespace, parser: argparse.ArgumentParser,
                         method: str) -> dict:
    """The values of the peer methods' flags (explicit > the authors' per dataset > theirs), after
    refusing what cannot run: a flag of another method, BoostLU where its paper does not put it."""
    cls = methods.method_class(method)
    try:
        methods.check_pseudo_labels_given(method, args.pseudo_labels is not None)
    except ValueError as error:
        parser.error(str(error))
    for name in PEER_DEFAULTS:
        if getattr(args, name) is not None and name not in cls.hyper_parameters:
            users = [user for user, other in methods.METHODS.items() if name in other.hyper_parameters]
            parser.error(f"{origin(args, name)} is a hyper-parameter of {', '.join(users)}, not "
                         f"of {method}")
    if args.delta_rel is not None and "delta_rel" not in cls.hyper_parameters:
        users = [user for user, other in methods.METHODS.items()
                 if "delta_rel" in other.hyper_parameters]
        parser.error(f"{origin(args, 'delta_rel')} is a hyper-parameter of {', '.join(users)}, "
                     f"not of {method} (which has no Δrel)")
    if args.boostlu_alpha != 1:
        boosted = [name for name, other in methods.METHODS.items() if other.composes_with_boostlu]
        if not cls.composes_with_boostlu:
            parser.error(f"--boostlu_alpha applies to {', '.join(boosted)} (BoostLU's paper puts "
                         f"its head under AN and the large-loss schemes only), not to {method}")
        if args.train_mode != "end_to_end":
            parser.error("--boostlu_alpha needs --train_mode end_to_end: the linear head on pooled "
                         "features has no class activation maps to boost")
        if args.boostlu_alpha <= 0:
            parser.error(f"--boostlu_alpha must be > 0, got {args.boostlu_alpha}")
    try:
        methods.check_pseudo_labels_given(method, args.pseudo_labels is not None)
    except ValueError as error:
        parser.error(str(error))
    if cls.schedule_spans_the_run and args.train_mode == "linear_init":
        parser.error(f"{method}'s schedule spans the run's epochs; --train_mode linear_init has two "
                     f"phases, each restarting the epoch count (use end_to_end or linear)")
    values = {**PEER_DEFAULTS, **EM_DEFAULTS.get(args.dataset, {}),
              **METHOD_DATASET_DEFAULTS.get(method, {}).get(args.dataset, {})}
    values.update({name: getattr(args, name) for name in PEER_DEFAULTS
                   if getattr(args, name) is not None})
    for name in ("gr_beta", "gr_alpha", "gpr_lambda"):
        values[name] = tuple(values[name])
    return {**values, "boostlu_alpha": args.boostlu_alpha}


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config saved in a checkpoint or config.json (extra keys such as git_sha ignored;
    flags added since the run was saved take their defaults)."""
    names = {field.name for field in fields(Config)}
    added_since = {"sync_bn": False, "overwrite": False, "split": "test", "logger": "none"}
    return Config(**{**added_since,
                     **{name: value for name, value in values.items() if name in names}})


def sweep_configs(argv: list[str] | None) -> list[Config] | None:
    """With --sweep_delta_rel D1,D2,… (and --mod_scheme S1,S2,… or one scheme): the Config of each
    head, scheme-major, each exactly what its separate run's flags give (the other flags, then
    --mod_scheme S --delta_rel D --out_dir <out_dir>/<method>_d<D>); None without the flag."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--sweep_delta_rel", "--mod_scheme", "--delta_rel", "--out_dir", "--resume",
                 "--eval_only"):
        pre.add_argument(flag)
    known, rest = pre.parse_known_args(argv)
    if known.sweep_delta_rel is None:
        return None
    parser = build_parser()
    for flag in ("delta_rel", "resume", "eval_only"):
        if getattr(known, flag) is not None:
            parser.error(f"--sweep_delta_rel trains new heads at the Δrel values it lists: "
                         f"not with --{flag}")
    if known.out_dir is None:
        parser.error("--sweep_delta_rel writes one run folder per head, "
                     "<out_dir>/<method>_d<Δrel>: give --out_dir")
    try:
        delta_rels = [float(value) for value in known.sweep_delta_rel.split(",")]
    except ValueError:
        parser.error(f"--sweep_delta_rel: expected comma-separated numbers (percent per epoch), "
                     f"got {known.sweep_delta_rel!r}")
    schemes = known.mod_scheme.split(",") if known.mod_scheme else [None]
    configs = []
    for scheme in schemes:
        for delta_rel in delta_rels:
            head_argv = [*rest, *(["--mod_scheme", scheme] if scheme else []),
                         "--delta_rel", str(delta_rel), "--out_dir", known.out_dir]
            config = parse_args(head_argv)
            configs.append(dataclasses.replace(
                config, out_dir=str(Path(known.out_dir) / f"{config.method}_d{delta_rel:g}")))
    return configs
