"""The vision-language pseudo-label methods and CRISP as registered method objects (docs/vlp_methods.md).

    gpr    AEVLP's GPR loss (ICCV 2025) on DAMP pseudo-labels          needs a .pl folder
    vlpl   VLPL (Xing et al., CVPR 2024 workshop LIMIT): EM plus CLIP
           pseudo-positives, flip-matched                              needs a .pl folder
    crisp  CRISP-Eq7: CRISP's class priors (NeurIPS 2025), re-estimated after every epoch, with OUR
           reading of its loss (the paper's Eq. 8 is not decoded; docs/vlp_methods.md)

The maths is vlp_losses.py's. A method that needs pseudo-labels declares needs_pseudo_labels and
receives, as the constructor keyword `pseudo_labels`, an object with

    rows(sample_ids: LongTensor B, flipped: BoolTensor B | None) -> (labels B×L int8 in {-1, 0, +1},
                                                                     scores B×L float)

(data/pseudo_labels.py's PseudoLabels: files computed once, offline, by scripts/make_pseudo_labels.py;
the trainer never runs CLIP), and, for DAMP, its `views(sample_ids, view_flips)` (B×V×L cosines).
VLPL declares needs_flips: the engine passes each row's training flip bit (policy match-train).
GPR on a folder with grid views recomputes DAMP's labels at every step from freshly drawn per-view
flips (policy per-view, the authors' distribution); on a folder of hard labels only (the digits
simulation) it reads them as they are. Imported by the package's top level
(largeloss/__init__.py), which Python runs before any largeloss module: every entry point that
imports the registry sees these classes (importing vlp from methods/__init__.py would make an import
cycle of the package with its own modules).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from largeloss.data.pseudo_labels import random_view_flips
from largeloss.methods import peer_losses, vlp_losses
from largeloss.methods.losses import LossOutput, an_loss
from largeloss.methods.pseudo_label_rules import (DAMP_PRESETS, VLPL_TEMPERATURE, VLPL_THRESHOLD,
                                                  DampSettings, damp_pseudo_labels, vlpl_pseudo_labels)

DAMP_DEFAULT = DAMP_PRESETS["pascal"]  # GPR's defaults are VOC's (vlp_losses), its DAMP's too
from largeloss.methods.registry import GeneralizedRobustLoss, Method, _require, register
from largeloss.utils.errors import InputError


class PseudoLabelMethod(Method):
    """A method trained on pseudo-labels y′ read, per batch, from a pseudo-label folder."""
    needs_pseudo_labels = True

    def __init__(self, observed, true_labels=None, *, device="cpu", pseudo_labels=None):
        super().__init__(observed, true_labels, device=device)
        if pseudo_labels is None or not callable(getattr(pseudo_labels, "rows", None)):
            raise InputError(f"--loss {self.name} trains on vision-language pseudo-labels: pass "
                             f"--pseudo_labels DIR, a folder made by scripts/make_pseudo_labels.py "
                             f"(docs/vlp_methods.md)")
        self.pseudo_labels = pseudo_labels

    def pseudo_rows(self, sample_ids: Tensor, flipped: Tensor | None,
                    device) -> tuple[Tensor | None, Tensor | None]:
        """(y′ B×L int8 in {-1, 0, +1}, scores B×L float; either None when the folder lacks it)
        of the batch, on `device`."""
        labels, scores = self.pseudo_labels.rows(sample_ids, flipped)
        return tuple(None if part is None else torch.as_tensor(part, device=device)
                     for part in (labels, scores))

    def require_part(self, part: str) -> None:
        """InputError when the folder has no `part` ("labels" or "scores") and the method needs it."""
        if getattr(self.pseudo_labels, part, True) is None:
            folder = getattr(self.pseudo_labels, "path", "the pseudo-label folder")
            raise InputError(f"--pseudo_labels {folder}: no {part}.npy, which --loss {self.name} "
                             f"needs here (docs/vlp_methods.md)")


@register
class GeneralizedPseudoLabelRobustLoss(PseudoLabelMethod):
    """GPR (AEVLP, ICCV 2025): GR's loss with a pseudo-positive branch weighted within
    [λ₂, λ₁] and EPR's regulariser, on DAMP pseudo-labels from a frozen CLIP (docs/vlp_methods.md)."""
    name = "gpr"
    needs_expected_num_pos = True
    schedule_spans_the_run = True
    hyper_parameters = ("num_epochs", "expected_num_pos", "gr_beta", "gr_alpha", "gr_q2", "gr_q3",
                        "gr_schedule", "gpr_lambda", "gpr_rho", "gpr_reg", "damp_temperature",
                        "damp_eta", "damp_threshold", "damp_top_k", "damp_negative_ratio",
                        "damp_negatives", "damp_view_flips")

    def __init__(self, observed, true_labels=None, *, device="cpu", pseudo_labels=None,
                 expected_num_pos: float, num_epochs: int = peer_losses.GR_NUM_EPOCHS,
                 gr_beta=peer_losses.GR_BETA, gr_alpha=peer_losses.GR_ALPHA,
                 gr_q2: float = peer_losses.GR_Q2, gr_q3: float = peer_losses.GR_Q3,
                 gr_schedule: str = "reference", gpr_lambda=vlp_losses.GPR_LAMBDA,
                 gpr_rho: float = vlp_losses.GPR_RHO, gpr_reg: float = vlp_losses.GPR_REG,
                 damp_temperature: float = DAMP_DEFAULT.temperature,
                 damp_eta: float = DAMP_DEFAULT.eta, damp_threshold: float = DAMP_DEFAULT.threshold,
                 damp_top_k: int = DAMP_DEFAULT.top_k,
                 damp_negative_ratio: float = DAMP_DEFAULT.negative_ratio, damp_negatives: int = 0,
                 damp_view_flips: str = "per-view"):
        super().__init__(observed, true_labels, device=device, pseudo_labels=pseudo_labels)
        # DAMP on the grid views at every step, or the folder's hard labels (no grid views)
        self.damp = getattr(pseudo_labels, "num_views", 1) > 1
        self.require_part("scores" if self.damp else "labels")
        self.damp_settings = DampSettings(damp_temperature, damp_eta, damp_threshold, 0,
                                          damp_top_k, damp_negative_ratio)
        self.damp_negatives, self.view_flips = damp_negatives, damp_view_flips
        self.arguments = {"expected_num_pos": expected_num_pos, "num_epochs": num_epochs,
                          "beta": tuple(map(float, gr_beta)), "alpha": tuple(map(float, gr_alpha)),
                          "q2": gr_q2, "q3": gr_q3, "lam": tuple(map(float, gpr_lambda)),
                          "rho": gpr_rho, "reg": gpr_reg,
                          "reference_off_by_one": gr_schedule == "reference"}

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        GeneralizedRobustLoss.check_hyper_parameters(  # the schedule flags GPR shares with GR
            {key: value for key, value in hyper.items() if key.startswith("gr_")})
        lam = tuple(hyper.get("gpr_lambda", vlp_losses.GPR_LAMBDA))
        _require(len(lam) == 2 and 0 <= lam[1] <= lam[0] <= 1,
                 f"--gpr_lambda is LAMBDA1 LAMBDA2 with 0 <= LAMBDA2 <= LAMBDA1 <= 1 (the "
                 f"pseudo-positive weight lies in [LAMBDA2, LAMBDA1]), got {lam}")
        rho = hyper.get("gpr_rho", vlp_losses.GPR_RHO)
        _require(0 <= rho <= 1, f"--gpr_rho is a soft target in [0, 1], got {rho}")
        reg = hyper.get("gpr_reg", vlp_losses.GPR_REG)
        _require(reg >= 0, f"--gpr_reg must be >= 0, got {reg}")
        _require(hyper.get("damp_temperature", 1.0) > 0, "--damp_temperature must be > 0")
        _require(hyper.get("damp_top_k", 1) >= 1, "--damp_top_k must be >= 1")
        _require(0 <= hyper.get("damp_negative_ratio", 0.0) < 1,
                 "--damp_negative_ratio must be in [0, 1)")
        _require(hyper.get("damp_negatives", 0) in (0, -1), "--damp_negatives must be 0 or -1")
        _require(hyper.get("damp_view_flips", "per-view") in ("per-view", "fixed"),
                 "--damp_view_flips must be per-view or fixed")

    def batch_pseudo_labels(self, sample_ids: Tensor, observed: Tensor) -> Tensor:
        """y′ of the batch (B×L int8): DAMP from the grid views with fresh per-view flips (from
        torch's default generator: seeded by --seed, saved with the run's RNG state), or the
        folder's hard labels."""
        if not self.damp:
            return self.pseudo_rows(sample_ids, None, observed.device)[0]
        flips = None
        if self.view_flips == "per-view":
            flips = random_view_flips(len(sample_ids), self.pseudo_labels.num_views,
                                      observed.device)
        cosines = self.pseudo_labels.views(sample_ids, flips).to(observed.device)
        return damp_pseudo_labels(cosines, observed, self.damp_settings, self.damp_negatives)

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        observed = self.labels.rows(sample_ids)
        pseudo = self.batch_pseudo_labels(sample_ids, observed)
        return vlp_losses.gpr_loss(logits, observed, pseudo, epoch, **self.arguments)


@register
class VisionLanguagePseudoLabels(PseudoLabelMethod):
    """VLPL (Xing et al., CVPR 2024 workshop LIMIT): EM plus a β_pos-weighted soft positive on the classes
    CLIP scores above a threshold, for the same flip as the training image (docs/vlp_methods.md)."""
    name = "vlpl"
    needs_flips = True  # its pseudo-labels are those of the flipped image when the image is
    hyper_parameters = ("em_alpha", "vlpl_beta_pos", "vlpl_rule", "vlpl_temperature",
                        "vlpl_threshold")

    def __init__(self, observed, true_labels=None, *, device="cpu", pseudo_labels=None,
                 em_alpha: float = peer_losses.EM_ALPHA,
                 vlpl_beta_pos: float = vlp_losses.VLPL_BETA_POS, vlpl_rule: str = "labels",
                 vlpl_temperature: float = VLPL_TEMPERATURE,
                 vlpl_threshold: float = VLPL_THRESHOLD):
        super().__init__(observed, true_labels, device=device, pseudo_labels=pseudo_labels)
        self.em_alpha, self.beta_pos, self.rule = em_alpha, vlpl_beta_pos, vlpl_rule
        self.temperature, self.threshold = vlpl_temperature, vlpl_threshold
        self.require_part(vlpl_rule)

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        alpha = hyper.get("em_alpha", peer_losses.EM_ALPHA)
        _require(alpha >= 0, f"--em_alpha must be >= 0, got {alpha}")
        beta_pos = hyper.get("vlpl_beta_pos", vlp_losses.VLPL_BETA_POS)
        _require(beta_pos >= 0, f"--vlpl_beta_pos must be >= 0, got {beta_pos}")
        _require(hyper.get("vlpl_rule", "labels") in ("labels", "scores"),
                 f"--vlpl_rule must be labels or scores, got {hyper.get('vlpl_rule')!r}")
        temperature = hyper.get("vlpl_temperature", VLPL_TEMPERATURE)
        _require(temperature > 0, f"--vlpl_temperature must be > 0, got {temperature}")
        threshold = hyper.get("vlpl_threshold", VLPL_THRESHOLD)
        _require(0 < threshold < 1, f"--vlpl_threshold is a softmax score in (0, 1), got {threshold}")

    def batch_pseudo_labels(self, sample_ids: Tensor, flipped: Tensor | None, device) -> Tensor:
        """y′ of the batch: the file's labels (vlpl_rule "labels"), or VLPL's rule applied to the
        file's cosine scores with this run's temperature and threshold ("scores")."""
        labels, scores = self.pseudo_rows(sample_ids, flipped, device)
        if self.rule == "labels":
            return labels
        return vlpl_pseudo_labels(scores, temperature=self.temperature, threshold=self.threshold)

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int,
             flipped: Tensor | None = None) -> LossOutput:
        pseudo = self.batch_pseudo_labels(sample_ids, flipped, logits.device)
        return vlp_losses.vlpl_loss(logits, self.labels.rows(sample_ids), pseudo,
                                    alpha=self.em_alpha, beta_pos=self.beta_pos)


@register
class ClassPriorsCRISP(Method):
    """CRISP-Eq7 (ours, after CRISP, NeurIPS 2025): AN for the warm-up epochs, then per-class
    priors π̂ re-estimated after every epoch from a pass over the training set, and our reading of
    CRISP's loss (its Eq. 8 is not decoded, docs/vlp_methods.md): not the paper's published loss."""
    name = "crisp"
    hyper_parameters = ("crisp_delta", "crisp_tau", "crisp_warmup_epochs", "crisp_initial_prior",
                        "crisp_positive_scale")
    uses_training_set_pass = True  # the prior estimate after every epoch (end_epoch)
    dense_bytes_per_entry = 1  # it reads the N×L observed matrix (refused on sparse labels)

    def __init__(self, observed, true_labels=None, *, device="cpu",
                 crisp_delta: float = vlp_losses.CRISP_DELTA,
                 crisp_tau: float = vlp_losses.CRISP_TAU,
                 crisp_warmup_epochs: int = vlp_losses.CRISP_WARMUP_EPOCHS,
                 crisp_initial_prior: float = 0.0, crisp_positive_scale: str = "batch"):
        super().__init__(observed, true_labels, device=device)
        self.delta, self.tau, self.warmup_epochs = crisp_delta, crisp_tau, crisp_warmup_epochs
        observed_all = self.labels.observed
        num_classes = observed_all.shape[1]
        self.priors = torch.full((num_classes,), float(crisp_initial_prior), device=device)
        self.estimated = torch.zeros(num_classes, dtype=torch.bool, device=device)
        num_positive = (observed_all == 1).sum(dim=0).clamp(min=1).float()
        # n/n_j^p; divided by the batch size at each step (the unbiased scale of Eq. 7)
        self.unbiased_scale = (observed_all.shape[0] / num_positive
                               if crisp_positive_scale == "unbiased" else None)

    @classmethod
    def check_hyper_parameters(cls, hyper: dict) -> None:
        for flag, default in (("crisp_delta", vlp_losses.CRISP_DELTA),
                              ("crisp_tau", vlp_losses.CRISP_TAU)):
            value = hyper.get(flag, default)
            _require(0 < value < 1, f"--{flag} must be in (0, 1), got {value}")
        warmup = hyper.get("crisp_warmup_epochs", vlp_losses.CRISP_WARMUP_EPOCHS)
        _require(warmup >= 1, f"--crisp_warmup_epochs must be >= 1 (AN epochs before the first "
                              f"prior estimate), got {warmup}")
        prior = hyper.get("crisp_initial_prior", 0.0)
        _require(0 <= prior <= 1, f"--crisp_initial_prior must be in [0, 1], got {prior}")
        _require(hyper.get("crisp_positive_scale", "batch") in ("batch", "unbiased"),
                 f"--crisp_positive_scale must be batch or unbiased, got "
                 f"{hyper.get('crisp_positive_scale')!r}")

    def loss(self, logits: Tensor, sample_ids: Tensor, epoch: int) -> LossOutput:
        """AN up to the warm-up's last epoch; then CRISP-Eq7 with the priors of the last pass."""
        observed = self.labels.rows(sample_ids)
        if epoch <= self.warmup_epochs:
            return an_loss(logits, observed)
        weights = (None if self.unbiased_scale is None
                   else self.unbiased_scale.to(logits.device) / logits.shape[0])
        return vlp_losses.crisp_loss(logits, observed, self.priors.to(logits.device),
                                     positive_weights=weights)

    def end_epoch(self, epoch: int, training_set_logits: Callable[[], Tensor]) -> None:
        """Re-estimate π̂ from the current model after every epoch from the warm-up's last on
        (used from the next epoch); classes without an observed positive keep their prior."""
        if epoch < self.warmup_epochs:
            return
        probs = torch.sigmoid(training_set_logits().detach().float().to(self.priors.device))
        priors, estimated = vlp_losses.crisp_class_priors(probs, self.labels.observed,
                                                          delta=self.delta, tau=self.tau)
        self.priors = torch.where(estimated, priors.to(self.priors.dtype), self.priors)
        self.estimated = self.estimated | estimated

    def state_dict(self) -> dict:
        return {**super().state_dict(), "priors": self.priors.cpu(),
                "estimated": self.estimated.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state["priors"].shape != self.priors.shape:
            raise ValueError(f"CRISP's priors in the checkpoint have shape "
                             f"{tuple(state['priors'].shape)}, expected {tuple(self.priors.shape)}")
        self.priors = state["priors"].to(device=self.priors.device, dtype=torch.float32)
        self.estimated = state["estimated"].to(device=self.estimated.device, dtype=torch.bool)
