"""GPR, VLPL and CRISP-Eq7 as registered methods (methods/vlp.py) and flags (config.py): each object
is its vlp_losses function on the rows its pseudo-label reader gives (a fake reader here, with the
contract of data/pseudo_labels.PseudoLabels), the methods that need pseudo-labels are refused
without them, CRISP re-estimates its priors at each epoch's end, keeps them in its checkpoint and
resumes to the same run, and the flags take the authors' values per dataset.

The maths itself (docs/vlp_methods.md's worked examples) is tested in tests/test_vlp_losses.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import assert_same_finished_run, read_jsonl
from largeloss import cli as main
from largeloss.data import datasets
from largeloss.data.pseudo_labels import save_pseudo_labels
from largeloss.experiment import config, paper_numbers, presets
from largeloss.methods import peer_losses
from largeloss.methods import registry as methods
from largeloss.methods import vlp_losses
from largeloss.methods.pseudo_label_rules import vlpl_pseudo_labels
from largeloss.utils.errors import InputError

TINY_DIGITS = ["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu",
               "--num_workers", "0", "--batch_size", "16", "--image_size", "32",
               "--early_stop_drop", "0"]
OBSERVED = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
SAMPLE_IDS = torch.tensor([2, 0, 3])


class FakePseudoLabels:
    """The PseudoLabels contract: rows(sample_ids, flipped) -> (labels B×L int8, scores B×L).
    Flipped rows read the second variant, so a test sees which one a method asked for."""

    def __init__(self, labels: torch.Tensor, scores: torch.Tensor):
        self.labels, self.scores = labels, scores  # N×2×L: variant 0 unflipped, 1 flipped
        self.calls = []

    def rows(self, sample_ids, flipped):
        self.calls.append((sample_ids.clone(), None if flipped is None else flipped.clone()))
        variant = (torch.zeros_like(sample_ids) if flipped is None else flipped.long())
        return self.labels[sample_ids, variant], self.scores[sample_ids, variant]


def fake_pseudo_labels() -> FakePseudoLabels:
    labels = torch.tensor([[[0, 1, 0, 0], [0, 0, 1, 0]], [[0, 0, 1, -1], [1, 0, 0, 0]],
                           [[1, 0, 0, 0], [0, 0, 0, 1]], [[0, 1, 1, 0], [0, 1, 0, 0]]],
                          dtype=torch.int8)
    scores = torch.randn(4, 2, 4, generator=torch.Generator().manual_seed(5)) * 0.02 + 0.25
    return FakePseudoLabels(labels, scores)


def batch_logits(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(seed)) * 2


# --- each class is its vlp_losses function ----------------------------------------------------

@pytest.mark.parametrize("epoch", [1, 3])
def test_gpr_method_on_a_folder_of_hard_labels_is_gpr_loss_on_them(epoch):
    reader = fake_pseudo_labels()
    method = methods.build("gpr", OBSERVED, pseudo_labels=reader, expected_num_pos=1.2,
                           num_epochs=4, gr_beta=(0.0, 10.0, -2.0, -8.0), gpr_lambda=(0.8, 0.2),
                           gpr_reg=0.01, gr_q3=1.5)
    logits = batch_logits()
    assert not method.needs_flips  # AEVLP's views draw their own flips, not the image's
    output = method.loss_of_batch(logits, SAMPLE_IDS, epoch, torch.tensor([True, True, False]))
    pseudo, _ = reader.rows(SAMPLE_IDS, None)
    expected = vlp_losses.gpr_loss(logits, OBSERVED[SAMPLE_IDS], pseudo, epoch,
                                   expected_num_pos=1.2, num_epochs=4, beta=(0.0, 10.0, -2.0, -8.0),
                                   lam=(0.8, 0.2), reg=0.01, q3=1.5)
    torch.testing.assert_close(output.loss, expected.loss)
    assert torch.equal(output.modified, expected.modified)
    assert torch.equal(reader.calls[0][0], SAMPLE_IDS)


@pytest.mark.parametrize("rule", ["labels", "scores"])
def test_vlpl_method_matches_the_flip_and_applies_its_rule(rule):
    reader = fake_pseudo_labels()
    method = methods.build("vlpl", OBSERVED, pseudo_labels=reader, em_alpha=0.1,
                           vlpl_beta_pos=0.5, vlpl_rule=rule, vlpl_threshold=0.3,
                           vlpl_temperature=0.01)
    flipped = torch.tensor([True, False, False])
    logits = batch_logits(2)
    assert method.needs_flips  # the engine passes the training flips through loss_of_batch
    output = method.loss_of_batch(logits, SAMPLE_IDS, 1, flipped)
    assert torch.equal(reader.calls[0][1], flipped)  # the training image's flip bit, passed on
    labels, scores = reader.rows(SAMPLE_IDS, flipped)
    pseudo = labels if rule == "labels" else vlpl_pseudo_labels(scores, threshold=0.3)
    expected = vlp_losses.vlpl_loss(logits, OBSERVED[SAMPLE_IDS], pseudo, alpha=0.1, beta_pos=0.5)
    torch.testing.assert_close(output.loss, expected.loss)
    other = vlp_losses.vlpl_loss(logits, OBSERVED[SAMPLE_IDS],
                                 reader.rows(SAMPLE_IDS, ~flipped)[0], alpha=0.1, beta_pos=0.5)
    if rule == "labels":  # the flipped variant is another set of labels here
        assert not torch.allclose(output.loss, other.loss)


@pytest.mark.parametrize("name", ["gpr", "vlpl"])
def test_methods_that_need_pseudo_labels_are_refused_without_them(name):
    assert methods.method_class(name).needs_pseudo_labels
    with pytest.raises(InputError, match=f"method {name} trains on vision-language pseudo-labels: "
                                         f"pass --pseudo_labels DIR"):
        methods.build(name, OBSERVED, expected_num_pos=1.0)
    with pytest.raises(InputError, match=f"--loss {name} trains on vision-language pseudo-labels"):
        methods.method_class(name)(OBSERVED, expected_num_pos=1.0) if name == "gpr" else \
            methods.method_class(name)(OBSERVED)  # the class refuses too, built directly


@pytest.mark.parametrize("name", ["gpr", "vlpl"])
def test_the_cli_refuses_them_without_pseudo_labels_exit_2(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args([*TINY_DIGITS, "--loss", name])
    assert exit_info.value.code == 2
    assert f"method {name} trains on vision-language pseudo-labels" in capsys.readouterr().err


@pytest.mark.parametrize("name, part, rule", [("vlpl", "labels", "labels"),
                                               ("vlpl", "scores", "scores"), ("gpr", "labels", None)])
def test_a_folder_without_the_part_a_method_reads_is_refused(name, part, rule):
    reader = fake_pseudo_labels()
    setattr(reader, part, None)
    reader.path = "coco_x.pl"
    hyper = {"vlpl_rule": rule} if name == "vlpl" else {"expected_num_pos": 1.0}
    with pytest.raises(InputError, match=f"--pseudo_labels coco_x.pl: no {part}.npy, which "
                                         f"--loss {name} needs"):
        methods.build(name, OBSERVED, pseudo_labels=reader, **hyper)


def test_methods_that_do_not_use_pseudo_labels_refuse_them():
    assert not methods.method_class("crisp").needs_pseudo_labels
    with pytest.raises(InputError, match="method em does not use pseudo-labels"):
        methods.build("em", OBSERVED, pseudo_labels=fake_pseudo_labels())


class FakeDampViews(FakePseudoLabels):
    """A folder with the global view and a 2×2 grid: docs/pseudo_labels.md's example as cosines
    (each tile's softmax at T = 0.01 is the example's: c = 0.01·ln s)."""
    num_views = 5

    def __init__(self):
        tiles = torch.tensor([[0.70, 0.25, 0.05], [0.02, 0.95, 0.03], [0.60, 0.20, 0.20],
                              [0.90, 0.05, 0.05]])
        views = torch.cat([torch.tensor([[0.30, 0.28, 0.25]]), 0.01 * tiles.log()])  # V×L
        super().__init__(torch.zeros(1, 2, 3, dtype=torch.int8), views[None, None, 0].expand(1, 2, 3))
        self.view_cosines = views
        self.view_calls = []

    def views(self, sample_ids, view_flips=None):
        self.view_calls.append(view_flips)
        return self.view_cosines.expand(len(sample_ids), 5, 3).clone()


@pytest.mark.parametrize("view_flips", ["fixed", "per-view"])
def test_gpr_applies_damp_to_the_views_at_each_step(view_flips):
    """docs/pseudo_labels.md's DAMP example: observed positive class 0, COCO's T/η/thr, top-k 3,
    ρ_neg 0.34 → y′ = [1, 1, 0]."""
    reader = FakeDampViews()
    observed = torch.tensor([[1, 0, 0]])
    method = methods.build("gpr", observed, pseudo_labels=reader, expected_num_pos=1.5,
                           damp_temperature=0.01, damp_eta=0.3, damp_threshold=0.5, damp_top_k=3,
                           damp_negative_ratio=0.34, damp_view_flips=view_flips)
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    output = method.loss(logits, torch.tensor([0]), 1)
    expected = vlp_losses.gpr_loss(logits, observed, torch.tensor([[1, 1, 0]]), 1,
                                   expected_num_pos=1.5)
    torch.testing.assert_close(output.loss, expected.loss)
    flips = reader.view_calls[0]
    assert (flips is None) == (view_flips == "fixed")
    if flips is not None:
        assert flips.shape == (1, 5) and flips.dtype == torch.bool


# --- CRISP: priors at each epoch's end, checkpointed ------------------------------------------------

def test_crisp_is_an_during_the_warmup_then_eq7_with_the_estimated_priors():
    observed = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 1]])
    method = methods.build("crisp", observed, crisp_warmup_epochs=1, crisp_initial_prior=0.2)
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    ids = torch.arange(6)
    an = peer_losses.bce(logits, (observed == 1).float()).mean()
    torch.testing.assert_close(method.loss(logits, ids, 1).loss, an)
    # docs/vlp_methods.md's example as class 0's scores; class 1's one positive scores lowest
    scores = torch.tensor([[0.9, 0.5], [0.8, 0.6], [0.7, 0.7], [0.4, 0.8], [0.3, 0.9], [0.1, 0.2]])
    calls = []
    method.end_epoch(1, lambda: calls.append(1) or torch.logit(scores))
    assert calls == [1]
    torch.testing.assert_close(method.priors, torch.tensor([0.5, 1.0]))
    expected = vlp_losses.crisp_loss(logits, observed, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(method.loss(logits, ids, 2).loss, expected.loss)


def test_crisp_keeps_the_prior_of_a_class_without_positives_and_waits_for_its_warmup():
    observed = torch.tensor([[1, 0], [0, 0], [1, 0]])
    method = methods.build("crisp", observed, crisp_warmup_epochs=2, crisp_initial_prior=0.25)
    method.end_epoch(1, lambda: pytest.fail("no pass before the warm-up's last epoch"))
    method.end_epoch(2, lambda: torch.zeros(3, 2))
    assert method.priors[1].item() == 0.25 and method.estimated.tolist() == [True, False]


def test_crisp_unbiased_scale_is_n_over_batch_times_class_positives():
    observed = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])  # n = 4, n^p = (2, 1)
    method = methods.build("crisp", observed, crisp_positive_scale="unbiased")
    method.priors = torch.tensor([0.3, 0.4])
    logits, ids = batch_logits()[:, :2], torch.tensor([0, 1, 3])
    expected = vlp_losses.crisp_loss(logits, observed[ids], method.priors,
                                     positive_weights=torch.tensor([4 / (3 * 2), 4 / (3 * 1)]))
    torch.testing.assert_close(method.loss(logits, ids, 2).loss, expected.loss)


def test_crisp_state_round_trips_and_refuses_another_shape():
    method = methods.build("crisp", OBSERVED)
    method.end_epoch(1, lambda: torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))
    other = methods.build("crisp", OBSERVED)
    other.load_state_dict(method.state_dict())
    assert torch.equal(other.priors, method.priors) and torch.equal(other.estimated, method.estimated)
    with pytest.raises(ValueError, match="CRISP's priors in the checkpoint have shape"):
        methods.build("crisp", OBSERVED).load_state_dict({**method.state_dict(),
                                                          "priors": torch.zeros(3)})


@pytest.mark.filterwarnings("ignore:class .* has no observed positive")
def test_interrupted_and_resumed_crisp_run_equals_an_uninterrupted_one(tmp_path):
    """Priors are estimated after epochs 1, 2, 3 of 4; the run stops after 2 and resumes from
    last.pt, whose priors give epoch 3 the same loss."""
    args = [*TINY_DIGITS, "--epochs", "4", "--loss", "crisp", "--seed", "2"]
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0
    interrupted = tmp_path / "interrupted"
    assert main.main([*args, "--out_dir", str(interrupted), "--stop_after", "2"]) == 0
    checkpoint = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["method"]["estimated"].any()
    assert main.main(["--resume", str(interrupted / "last.pt"), "--device", "cpu",
                      "--num_workers", "0"]) == 0
    assert_same_finished_run(interrupted, tmp_path / "whole")


# --- flags, presets, numbers -----------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["pascal", "coco", "nuswide", "cub"])
def test_gpr_flags_default_to_aevlps_values_per_dataset_and_gr_keeps_its_own(dataset):
    beta, (q2, q3), lam, reg, _, _ = presets._GPR_TABLE[dataset]
    folder = ["--pseudo_labels", "x.pl"]  # read only when the run starts
    resolved = config.parse_args(["--dataset", dataset, "--loss", "gpr", *folder])
    assert (resolved.gr_beta, resolved.gr_q3, resolved.gpr_lambda, resolved.gpr_reg) == \
        (beta, q3, lam, reg)
    assert config.parse_args(["--dataset", dataset, "--loss", "gr"]).gr_beta == peer_losses.GR_BETA
    vlpl = config.parse_args(["--dataset", dataset, "--loss", "vlpl", *folder])
    assert vlpl.em_alpha == presets.VLP_PRESETS["VLPL"][dataset]["loss"]["alpha"]


@pytest.mark.parametrize("argv, message", [
    (["--loss", "gpr", "--pseudo_labels", "x.pl", "--gpr_lambda", "0.3", "0.6"], "--gpr_lambda is LAMBDA1 LAMBDA2"),
    (["--loss", "gpr", "--pseudo_labels", "x.pl", "--gpr_rho", "1.5"], "--gpr_rho is a soft target in [0, 1]"),
    (["--loss", "gpr", "--pseudo_labels", "x.pl", "--gpr_reg", "-1"], "--gpr_reg must be >= 0"),
    (["--loss", "vlpl", "--pseudo_labels", "x.pl", "--vlpl_threshold", "1"], "--vlpl_threshold is a softmax score"),
    (["--loss", "vlpl", "--pseudo_labels", "x.pl", "--vlpl_temperature", "0"], "--vlpl_temperature must be > 0"),
    (["--loss", "crisp", "--crisp_tau", "0"], "--crisp_tau must be in (0, 1)"),
    (["--loss", "crisp", "--crisp_warmup_epochs", "0"], "--crisp_warmup_epochs must be >= 1"),
    (["--loss", "crisp", "--crisp_initial_prior", "2"], "--crisp_initial_prior must be in [0, 1]"),
    (["--loss", "gpr", "--pseudo_labels", "x.pl", "--damp_negative_ratio", "1"],
     "--damp_negative_ratio must be in [0, 1)"),
    (["--loss", "crisp", "--pseudo_labels", "x.pl"], "method crisp does not use pseudo-labels"),
    (["--loss", "gr", "--gpr_rho", "0.5"], "--gpr_rho is a hyper-parameter of gpr, not of gr"),
    (["--loss", "em", "--vlpl_beta_pos", "0.5"], "--vlpl_beta_pos is a hyper-parameter of vlpl"),
    (["--loss", "gpr", "--pseudo_labels", "x.pl", "--train_mode", "linear_init"], "gpr's schedule spans the run's epochs"),
])
def test_impossible_values_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("row, method, numbers", [
    ("aevlp", "gpr", (90.46, 73.54, 50.70, 24.89)), ("vlpl", "vlpl", (89.10, 71.45, 49.55, 24.02)),
    ("crisp", "crisp", (89.82, 74.64, 50.00, 21.65)),
])
def test_paper_numbers_and_flags_of_the_vlp_rows(row, method, numbers):
    for dataset, number in zip(("pascal", "coco", "nuswide", "cub"), numbers):
        assert paper_numbers.paper_map(dataset, row, "end_to_end") == number
        assert paper_numbers.paper_map(dataset, row, "linear_init") is None
    assert paper_numbers.method_flags(row) == (method, "none")
    flags = paper_numbers.peer_flags("coco", row)
    folder = paper_numbers.pseudo_label_dir("coco", row)
    flags += [] if folder is None else ["--pseudo_labels", folder]
    resolved = config.parse_args(["--dataset", "coco", "--loss", method, *flags])
    assert resolved.method == method
    if row == "aevlp":
        assert resolved.batch_size == 16 and resolved.epochs == 8 and resolved.gpr_reg == 0.001
        assert resolved.gpr_lambda == (0.7, 0.5) and resolved.early_stop_drop == 2.0
    if row == "crisp":
        assert "this run is CRISP-Eq7, our variant" in paper_numbers.peer_note("coco", row)


# --- through the CLI, on real pseudo-label folders ------------------------------------------------

def write_folder(tmp_path, kind: str):
    """A pseudo-label folder for TINY_DIGITS' 32 training images: hard labels from the clean ones
    (kind "labels", F = 2: the flipped variant drops every other positive) or DAMP-style cosines of
    a global view and a 2×2 grid (kind "views", F = 2)."""
    data = datasets.load_data("digits", "data/digits", None, 32, digits_train_size=32)
    true = np.asarray(data.train.true_labels).astype(np.int8)
    if kind == "labels":
        flipped = true.copy()
        flipped[::2] = 0
        return save_pseudo_labels(tmp_path / "labels.pl", data.train.image_ids, data.class_names,
                                  {"kind": "test"}, labels=np.stack([true, flipped], axis=1))
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.1, 0.3, (len(true), 2, 5, true.shape[1]))
    scores += 0.05 * true[:, None, None, :]  # the true classes score higher in every view
    return save_pseudo_labels(tmp_path / "views.pl", data.train.image_ids, data.class_names,
                              {"kind": "damp", "grid": 2}, scores=scores)


@pytest.mark.filterwarnings("ignore:class .* has no observed positive")
@pytest.mark.filterwarnings("ignore:no observed positive")
@pytest.mark.parametrize("name, kind", [("gpr", "labels"), ("gpr", "views"), ("vlpl", "labels")])
def test_each_method_trains_two_epochs_on_a_pseudo_label_folder(tmp_path, name, kind):
    folder = write_folder(tmp_path, kind)
    out_dir = tmp_path / "run"
    assert main.main([*TINY_DIGITS, "--epochs", "2", "--loss", name, "--pseudo_labels",
                      str(folder), "--seed", "1", "--out_dir", str(out_dir)]) == 0
    rows = read_jsonl(out_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    assert all(row["modified"] > 0 for row in rows)  # pseudo-positives scored every epoch
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["method"] == name and saved["pseudo_labels"] == str(folder)
