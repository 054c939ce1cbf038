"""The methods after the LL paper as registered methods (methods.py) and flags (config.py): each
object is its peer_losses function, APL keeps its pseudo-negatives in its own checkpointed store,
the CLI trains every one of them, refuses what cannot run, and BoostLU's head at α = 1 is today's.

The maths itself (docs/methods.md §Worked examples) is tested in tests/test_peer_losses.py."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import assert_same_finished_run, read_jsonl, without_timing
from largeloss import cli as main
from largeloss.experiment import config, paper_numbers, presets
from largeloss.methods import losses, peer_losses
from largeloss.methods import registry as methods

TINY_DIGITS = ["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu",
               "--num_workers", "0", "--batch_size", "16", "--image_size", "32",
               "--early_stop_drop", "0"]
# N = 4 training rows, L = 4 classes, with an observed negative.
OBSERVED = torch.tensor([[1, 0, 0, -1], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
SAMPLE_IDS = torch.tensor([2, 0, 3])
PEERS = ("em", "APL", "hill", "splc", "gr")


def batch_logits(seed: int = 1, rows: int = 3) -> torch.Tensor:
    return torch.randn(rows, 4, generator=torch.Generator().manual_seed(seed)) * 2


# --- each class is its peer_losses function ------------------------------------------------------

PEER_CASES = {  # name: (hyper-parameters of build, the same loss from peer_losses)
    "em": ({"em_alpha": 0.1},
           lambda x, y, epoch: peer_losses.em_loss(x, y, alpha=0.1)),
    "hill": ({"hill_lambda": 2.0, "focal_margin": 0.5, "focal_gamma": 1.0, "reduction": "sum"},
             lambda x, y, epoch: peer_losses.hill_loss(x, y, lam=2.0, margin=0.5, gamma=1.0,
                                                       reduction="sum")),
    "splc": ({"splc_tau": 0.55, "focal_margin": 0.5, "focal_gamma": 1.5},
             lambda x, y, epoch: peer_losses.splc_loss(x, y, epoch, tau=0.55, margin=0.5,
                                                       gamma=1.5)),
    "gr": ({"num_epochs": 5, "gr_beta": (0.0, 3.0, -1.0, -2.0), "gr_alpha": (0.4, 1.5, 0.7, 0.6),
            "gr_q2": 0.1, "gr_q3": 1.5, "gr_schedule": "aligned", "gr_observed_negatives": "ignore"},
           lambda x, y, epoch: peer_losses.gr_loss(
               x, y, epoch, num_epochs=5, beta=(0.0, 3.0, -1.0, -2.0), alpha=(0.4, 1.5, 0.7, 0.6),
               q2=0.1, q3=1.5, reference_off_by_one=False, observed_negatives="ignore")),
}


@pytest.mark.parametrize("name", sorted(PEER_CASES))
@pytest.mark.parametrize("epoch", [1, 2, 5])
def test_each_peer_method_is_its_peer_losses_function(name, epoch):
    hyper, expected_loss = PEER_CASES[name]
    method = methods.build(name, OBSERVED, **hyper)
    logits = batch_logits().requires_grad_()
    output = method.loss(logits, SAMPLE_IDS, epoch)
    expected = expected_loss(logits, OBSERVED[SAMPLE_IDS], epoch)
    torch.testing.assert_close(output.loss, expected.loss, rtol=0, atol=0)
    assert torch.equal(output.modified, expected.modified)
    assert not output.relabel.any()
    (gradient,) = torch.autograd.grad(output.loss, logits)
    (expected_gradient,) = torch.autograd.grad(expected.loss, logits)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=0)


def test_build_takes_a_config_dict_and_each_method_picks_what_it_declares():
    offered = config.parse_args(["--loss", "gr", "--gr_q3", "1.5", "--epochs", "7"])
    method = methods.build("gr", OBSERVED, hyper=offered.method_hyper_parameters())
    assert method.arguments["q3"] == 1.5 and method.arguments["num_epochs"] == 7
    assert methods.build("em", OBSERVED, hyper={"em_alpha": 0.3, "delta_rel": 9.0}).em_alpha == 0.3
    assert methods.build("LL-R", OBSERVED, hyper={"delta_rel": 9.0}, delta_rel=2.0).delta_rel == 2.0
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        methods.build("em", OBSERVED, em_alhpa=0.3)
    with pytest.raises(ValueError, match="--splc_tau"):
        methods.build("splc", OBSERVED, splc_tau=1.0)


def test_the_registry_offers_the_peer_methods():
    assert {"em", "hill", "splc", "gr"} <= set(methods.base_losses())
    assert methods.method_class("APL").base_loss == "em"
    assert methods.schemes() == losses.LL_SCHEMES + ("APL",)
    assert [name for name, cls in methods.METHODS.items() if cls.composes_with_boostlu] == \
        ["an", *losses.LL_SCHEMES]
    assert {name for name, cls in methods.METHODS.items() if cls.schedule_spans_the_run} == \
        {"APL", "gr", "gpr"}  # gpr: GR's schedules (tests/test_vlp_methods.py)
    help_text = config.build_parser().format_help()
    for flags in ("--loss em --mod_scheme APL", "--loss hill", "--loss splc", "--loss gr",
                  "--boostlu_alpha 5"):
        assert flags in help_text


@pytest.mark.parametrize("llcp_relabel,expected", [("above", []), ("modified", [(0, 1)])])
def test_llcp_relabel_rule_of_boostlus_code_relabels_the_kth_entry_too(llcp_relabel, expected):
    """Δrel 8 % of 3×4 entries: k = ⌈0.96⌉ = 1, so only the largest candidate loss, (0, 1), is
    modified and nothing lies strictly above it: the LL paper's LL-Cp relabels nothing, BoostLU's code
    (loss ≥ R) relabels that entry (docs/methods.md §Paper or code)."""
    logits = torch.tensor([[0.0, 5.0, 4.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    method = methods.build("LL-Cp", OBSERVED[:3], delta_rel=8.0, llcp_relabel=llcp_relabel)
    output = method.loss(logits, torch.arange(3), epoch=2)
    expected_output = losses.compute_loss("LL-Cp", logits, OBSERVED[:3], epoch=2, delta_rel=8.0,
                                          llcp_relabel=llcp_relabel)
    assert torch.equal(output.relabel, expected_output.relabel)
    assert output.modified.nonzero().tolist() == [[0, 1]]
    method.after_step(torch.arange(3), output)
    assert output.relabel.nonzero().tolist() == [list(entry) for entry in expected]
    assert method.num_relabeled == len(expected)
    with pytest.raises(ValueError, match="llcp_relabel"):
        losses.compute_loss("LL-Cp", logits, OBSERVED[:3], epoch=2, llcp_relabel="ge")


# --- APL: its own store, filled after the warm-up, checkpointed ------------------------------------

def apl(**hyper) -> methods.Method:
    return methods.build("APL", OBSERVED, **{"em_alpha": 0.1, "apl_beta": 0.5,
                                             "apl_warmup_epochs": 1, "num_epochs": 3, **hyper})


def test_apl_labels_after_the_warmup_in_its_own_store_and_scores_them():
    method = apl()
    all_logits = batch_logits(seed=3, rows=4)
    observed_before = method.labels.observed.clone()
    sample_ids = torch.tensor([2, 0, 3, 1])
    for epoch in (1, 2, 3):
        logits = batch_logits(rows=4).requires_grad_()
        output = method.loss(logits, sample_ids, epoch)
        expected = peer_losses.em_loss(logits, OBSERVED[sample_ids], alpha=0.1, beta=0.5,
                                       pseudo_targets=method.pseudo_targets[sample_ids],
                                       pseudo_mask=method.pseudo_mask[sample_ids])
        torch.testing.assert_close(output.loss, expected.loss, rtol=0, atol=0)
        assert output.modified.any() == (epoch > 1)  # the warm-up's pass labels from epoch 2 on
        method.end_epoch(epoch, lambda: all_logits)
    # passes after epochs 1 and 2 (T_w … T−1), none after T = 3: n_j = ⌊0.9·U_j/2⌋ each
    unobserved = peer_losses.apl_unobserved_counts(OBSERVED)  # [3, 3, 3, 2]
    assert method.num_per_pass.tolist() == [1, 1, 1, 0]
    assert method.pseudo_mask.sum(dim=0).tolist() == [2, 2, 2, 0]
    assert not (method.pseudo_mask & (OBSERVED != 0)).any()
    assert torch.equal(method.labels.observed, observed_before)  # ±1 labels untouched
    probs = torch.sigmoid(all_logits)
    torch.testing.assert_close(method.pseudo_targets[method.pseudo_mask], probs[method.pseudo_mask])
    assert int(unobserved.sum()) == 11


def test_apl_pseudo_negatives_are_constants_of_the_gradient():
    """A pseudo-negative with soft target s scores β·BCE(x, s): ∂/∂x = β·(σ(x) − s)/(B·L), the
    target stored at labelling time, not a function of the current logits."""
    method = apl()
    method.end_epoch(1, lambda: torch.zeros(4, 4, requires_grad=True) * 1.0)
    row, column = map(int, method.pseudo_mask.nonzero()[0])
    assert not method.pseudo_targets.requires_grad
    logits = batch_logits(rows=4).requires_grad_()
    method.loss(logits, torch.arange(4), 2).loss.backward()
    target = float(method.pseudo_targets[row, column])
    assert target == 0.5
    expected = 0.5 * (torch.sigmoid(logits[row, column]).item() - target) / 16
    assert logits.grad[row, column].item() == pytest.approx(expected, rel=1e-6)


def test_apl_state_round_trips_and_refuses_another_shape():
    method = apl()
    method.end_epoch(1, lambda: batch_logits(rows=4))
    restored = apl()
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.pseudo_mask, method.pseudo_mask)
    assert torch.equal(restored.pseudo_targets, method.pseudo_targets)
    state = method.state_dict()
    state["pseudo_mask"] = state["pseudo_mask"][:2]
    with pytest.raises(ValueError, match="pseudo-labels in the checkpoint"):
        restored.load_state_dict(state)


# --- flags: defaults per dataset, presets, refusals --------------------------------------------------

@pytest.mark.parametrize("dataset,em_alpha,apl_beta,warmup", [
    ("pascal", 0.2, 0.02, 5), ("coco", 0.1, 0.9, 5), ("nuswide", 0.1, 0.2, 4), ("cub", 0.01, 0.4, 3),
    ("digits", 0.2, 0.02, 5),
])
def test_em_flags_default_to_the_authors_values_per_dataset(dataset, em_alpha, apl_beta, warmup):
    resolved = config.parse_args(["--dataset", dataset, "--loss", "em", "--mod_scheme", "APL"])
    assert (resolved.em_alpha, resolved.apl_beta, resolved.apl_warmup_epochs) == \
        (em_alpha, apl_beta, warmup)
    # no Δrel part: APL takes none (the default folder is dated below the run's name)
    assert os.path.dirname(resolved.out_dir) == f"runs/{dataset}_APL_seed0"


@pytest.mark.parametrize("argv,delta_rel,out_dir", [
    (["--dataset", "coco", "--mod_scheme", "LL-R"], 0.4, "runs/coco_LL-R_d0.4_seed0"),
    (["--dataset", "coco", "--mod_scheme", "LL-R", "--boostlu_alpha", "5"], 0.5,
     "runs/coco_LL-R_d0.5_boostlu5_seed0"),
    (["--dataset", "cub", "--mod_scheme", "LL-Cp", "--boostlu_alpha", "5"], 0.1, None),
    (["--dataset", "coco", "--mod_scheme", "LL-R", "--boostlu_alpha", "5", "--delta_rel", "0.3"],
     0.3, None),
    (["--dataset", "digits", "--mod_scheme", "LL-Ct", "--boostlu_alpha", "5"], 0.5, None),
    (["--dataset", "digits", "--boostlu_alpha", "1"], 1.0, "runs/digits_LL-R_d1_seed0"),
])
def test_boostlu_delta_rel_preset(argv, delta_rel, out_dir):
    """BoostLU's Δrel (LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1) replaces the LL paper's on its datasets;
    an explicit --delta_rel wins; digits keeps its own."""
    resolved = config.parse_args(argv)
    assert resolved.delta_rel == delta_rel
    if out_dir is not None:
        assert os.path.dirname(resolved.out_dir) == out_dir


@pytest.mark.parametrize("loss, preset", [("hill", "Hill"), ("splc", "SPLC")])
def test_hill_and_splc_reduction_has_one_truth(loss, preset):
    """Their code sums over B·L (docs/methods.md); the project's protocol is the mean, and the
    preset table, the CLI default, the reproduce command, the method and the pure loss all take it
    from peer_losses.FOCAL_REDUCTION."""
    assert (peer_losses.FOCAL_REDUCTION, peer_losses.FOCAL_AUTHORS_REDUCTION) == ("mean", "sum")
    assert {values["loss"]["reduction"] for values in presets.PEER_PRESETS[preset].values()} == \
        {"mean"}
    assert config.parse_args(["--loss", loss]).reduction == "mean"
    command = paper_numbers.peer_flags("coco", loss)
    assert command[command.index("--reduction") + 1] == "mean"
    assert config.parse_args(["--dataset", "coco", "--loss", loss, *command]).reduction == "mean"
    assert methods.METHODS[loss](torch.ones(2, 3)).arguments["reduction"] == "mean"
    logits, observed = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])
    loss_of = {"hill": lambda **kw: peer_losses.hill_loss(logits, observed, **kw),
               "splc": lambda **kw: peer_losses.splc_loss(logits, observed, 2, **kw)}[loss]
    torch.testing.assert_close(loss_of().loss * 3, loss_of(reduction="sum").loss)


REFUSED = {
    "boostlu_with_hill": (["--loss", "hill", "--boostlu_alpha", "5"],
                          "--boostlu_alpha applies to an, LL-R, LL-Ct, LL-Cp"),
    "boostlu_linear_init": (["--mod_scheme", "LL-R", "--boostlu_alpha", "5", "--train_mode",
                             "linear_init"], "needs --train_mode end_to_end"),
    "boostlu_linear": (["--mod_scheme", "LL-R", "--boostlu_alpha", "5", "--train_mode", "linear"],
                       "has no class activation maps"),
    "boostlu_zero": (["--boostlu_alpha", "0"], "--boostlu_alpha must be > 0"),
    "gr_linear_init": (["--loss", "gr", "--train_mode", "linear_init"],
                       "gr's schedule spans the run's epochs"),
    "apl_linear_init": (["--loss", "em", "--mod_scheme", "APL", "--train_mode", "linear_init"],
                        "APL's schedule spans the run's epochs"),
    "apl_warmup_too_long": (["--loss", "em", "--mod_scheme", "APL", "--epochs", "4",
                             "--apl_warmup_epochs", "4"], "--apl_warmup_epochs must be between 1"),
    "apl_on_an": (["--loss", "an", "--mod_scheme", "APL"], "--mod_scheme APL applies to --loss em"),
    "ll_on_em": (["--loss", "em", "--mod_scheme", "LL-R"], "--mod_scheme LL-R applies to --loss an"),
    "llcp_relabel_on_llr": (["--mod_scheme", "LL-R", "--llcp_relabel", "modified"],
                            "--llcp_relabel is a hyper-parameter of LL-Cp, not of LL-R"),
    "hill_flag_elsewhere": (["--hill_lambda", "2"],
                            "--hill_lambda is a hyper-parameter of hill, not of LL-R"),
    "apl_flag_on_em": (["--loss", "em", "--apl_beta", "0.1"],
                       "--apl_beta is a hyper-parameter of APL, not of em"),
    "sum_on_an": (["--loss", "an", "--mod_scheme", "none", "--reduction", "sum"],
                  "--reduction is a hyper-parameter of hill, splc"),
    "splc_tau": (["--loss", "splc", "--splc_tau", "1.5"], "--splc_tau is a probability threshold"),
    "gr_sigma": (["--loss", "gr", "--gr_alpha", "0.5", "0", "0.8", "0.5"], "both σ > 0"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_impossible_combinations_are_refused_with_the_reason(case, capsys):
    argv, reason = REFUSED[case]
    with pytest.raises(SystemExit) as exit_info:
        main.main([*TINY_DIGITS, *argv])
    assert exit_info.value.code == 2
    assert reason in capsys.readouterr().err


def test_configurations_saved_before_the_peer_flags_still_load():
    saved = config.parse_args([]).to_dict()
    for name in ("boostlu_alpha", *presets.PEER_DEFAULTS):
        del saved[name]
    restored = config.config_from_dict(saved)
    assert restored.boostlu_alpha == 1.0 and restored.em_alpha == peer_losses.EM_ALPHA


# --- the CLI trains each of them ---------------------------------------------------------------------

CLI_CASES = {
    "em": ["--loss", "em"],
    "APL": ["--loss", "em", "--mod_scheme", "APL", "--apl_warmup_epochs", "1"],
    "hill": ["--loss", "hill", "--reduction", "sum"],
    "splc": ["--loss", "splc", "--splc_tau", "0.3"],
    "gr": ["--loss", "gr"],
    "LL-Ct+BoostLU": ["--mod_scheme", "LL-Ct", "--boostlu_alpha", "5"],
}


@pytest.mark.filterwarnings("ignore:class .* has no observed positive")
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_each_peer_method_trains_two_epochs_through_the_cli(tmp_path, case):
    out_dir = tmp_path / "run"
    assert main.main([*TINY_DIGITS, "--epochs", "2", *CLI_CASES[case], "--seed", "1",
                      "--out_dir", str(out_dir)]) == 0
    rows = read_jsonl(out_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    results = json.loads((out_dir / "results.json").read_text())
    saved = json.loads((out_dir / "config.json").read_text())
    assert results["method"] == saved["method"] == case.removesuffix("+BoostLU")
    assert rows[0]["modified"] == 0  # warm-ups: APL labels after epoch 1, SPLC and LL from epoch 2
    if case in ("APL", "LL-Ct+BoostLU", "splc"):
        assert rows[1]["modified"] > 0
    last = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=True)
    if case == "APL":
        store = last["method"]["store"]
        assert last["method"]["pseudo_mask"].any()
        assert (store["observed"] == 1).sum() == store["initial_positives"]  # ±1 labels untouched


@pytest.mark.filterwarnings("ignore:class .* has no observed positive")
def test_interrupted_and_resumed_em_apl_run_equals_an_uninterrupted_one(tmp_path):
    """APL passes after epochs 1, 2, 3 of 4: two before the interruption after epoch 2, one after
    the resume; the pseudo-labels come back from last.pt."""
    args = [*TINY_DIGITS, "--epochs", "4", "--loss", "em", "--mod_scheme", "APL",
            "--apl_warmup_epochs", "1", "--apl_beta", "0.5", "--seed", "3"]
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0
    interrupted = tmp_path / "interrupted"
    assert main.main([*args, "--out_dir", str(interrupted), "--stop_after", "2"]) == 0
    assert not (interrupted / "results.json").exists()
    checkpoint = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=True)
    labelled_at_interruption = int(checkpoint["method"]["pseudo_mask"].sum())
    assert checkpoint["epoch"] == 2 and labelled_at_interruption > 0
    assert main.main(["--resume", str(interrupted / "last.pt"), "--device", "cpu",
                      "--num_workers", "0"]) == 0

    resumed_last = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=True)
    assert int(resumed_last["method"]["pseudo_mask"].sum()) > labelled_at_interruption
    assert_same_finished_run(interrupted, tmp_path / "whole")


@pytest.mark.filterwarnings("ignore:class .* has no observed positive")
def test_boostlu_alpha_one_is_exactly_todays_run_and_alpha_five_is_evaluated_boosted(
        tmp_path, capsys):
    args = [*TINY_DIGITS, "--epochs", "2", "--mod_scheme", "LL-R", "--seed", "2"]
    runs = {"plain": [], "alpha1": ["--boostlu_alpha", "1"], "alpha5": ["--boostlu_alpha", "5"]}
    for name, extra in runs.items():
        assert main.main([*args, *extra, "--out_dir", str(tmp_path / name)]) == 0
    plain, alpha1, alpha5 = (json.loads((tmp_path / name / "results.json").read_text())
                             for name in runs)
    assert alpha1 == plain
    assert without_timing(read_jsonl(tmp_path / "alpha1" / "metrics.jsonl")) == \
        without_timing(read_jsonl(tmp_path / "plain" / "metrics.jsonl"))
    assert alpha5["test_map"] != plain["test_map"]
    capsys.readouterr()
    best = tmp_path / "alpha5" / "best.pt"
    assert torch.load(best, map_location="cpu", weights_only=True)["config"]["boostlu_alpha"] == 5.0
    assert main.main(["--eval_only", str(best), "--device", "cpu", "--num_workers", "0"]) == 0
    assert f"test mAP {alpha5['test_map']:.2f}" in capsys.readouterr().out  # boosted at test too
