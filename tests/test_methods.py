"""Methods as objects (methods.py): each equals the pure compute_loss, keeps its state, and a new
method is one registered class that the CLI trains without any change to the trainer."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from largeloss import cli as main
from largeloss.experiment import config
from largeloss.methods import losses
from largeloss.methods import registry as methods
from largeloss.methods.losses import LossOutput
from largeloss.utils.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_DIGITS = ["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu",
               "--num_workers", "0"]
OBSERVED = torch.tensor([[1, 0, 0, -1], [0, 0, 1, 0], [0, 1, 0, 0]])
TRUE_LABELS = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]])


# --- every method is the pure maths underneath --------------------------------------------------

@pytest.mark.parametrize("name", tuple(losses.LOSSES))
def test_method_loss_equals_compute_loss_on_its_rows(name):
    method = methods.build(name, OBSERVED, TRUE_LABELS, delta_rel=30.0, expected_num_pos=1.5,
                           seed=4)
    logits = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    sample_ids = torch.tensor([2, 0])
    estimator = getattr(method, "estimator", None)
    expected = losses.compute_loss(
        name, logits, OBSERVED[sample_ids], true_labels=TRUE_LABELS[sample_ids], epoch=3,
        delta_rel=30.0, expected_num_pos=1.5,
        estimator_logits=None if estimator is None else estimator(sample_ids))
    output = method.loss(logits, sample_ids, epoch=3)
    torch.testing.assert_close(output.loss, expected.loss, rtol=0, atol=0)
    assert torch.equal(output.modified, expected.modified)


PEER_METHODS = {"em", "APL", "hill", "splc", "gr"}  # docs/methods.md, tests/test_peer_methods.py
VLP_METHODS = {"gpr", "vlpl", "crisp"}  # docs/vlp_methods.md, tests/test_vlp_methods.py


def test_the_registry_is_the_cli_choice_list():
    assert set(methods.base_losses()) | set(methods.schemes()) == \
        set(losses.LOSSES) | PEER_METHODS | VLP_METHODS
    assert methods.schemes() == losses.LL_SCHEMES + ("APL",)
    assert all(methods.METHODS[name].base_loss == "an" for name in losses.LL_SCHEMES)
    assert config.build_parser().get_default("loss") == "an"


def test_only_llcp_relabels_after_a_step():
    logits = torch.tensor([[0.0, 5.0, 4.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    for name, expected_relabels in (("LL-Ct", 0), ("LL-Cp", 2)):
        method = methods.build(name, OBSERVED, delta_rel=25.0)
        # k = ceil(3·4·25/100) = 3; the candidates' 3 largest logits are 5, 4, 3: R is the
        # loss at 3, and the two strictly above it (0,1) and (0,2) become positives
        output = method.loss(logits, torch.arange(3), epoch=2)
        method.after_step(torch.arange(3), output)
        assert method.num_relabeled == expected_relabels
    assert method.labels.observed[0, 1] == method.labels.observed[0, 2] == 1
    assert method.labels.observed[1, 0] == 0


def test_role_trains_its_estimator_at_its_multiple_of_the_learning_rate():
    method = methods.build("role", OBSERVED, expected_num_pos=1.0, seed=0, estimator_lr_mult=10.0)
    (group,) = method.parameter_groups(1e-4)
    assert group["lr"] == pytest.approx(1e-3) and group["weight_decay"] == 0.0
    assert group["params"][0] is method.estimator.logits
    state = method.state_dict()
    restored = methods.build("role", OBSERVED, expected_num_pos=1.0, seed=9,
                             estimator_lr_mult=10.0)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.estimator.logits, method.estimator.logits)


def test_methods_refuse_labels_they_cannot_learn_from():
    with pytest.raises(InputError, match="--loss iu needs observed negatives"):
        methods.build("iu", torch.tensor([[1, 0], [0, 1]]))
    with pytest.raises(InputError, match="--loss bce needs clean training labels"):
        methods.build("bce", OBSERVED)


@pytest.mark.parametrize("dataset,num_classes,warns", [
    ("pascal", 20, True),    # k = ceil(16·20·0.1/100) = ceil(0.32) = 1: nothing strictly above R
    ("coco", 80, False),     # k = ceil(16·80·0.2/100) = 3
])
def test_llcp_warns_when_k_is_one(dataset, num_classes, warns):
    resolved = config.parse_args(["--dataset", dataset, "--mod_scheme", "LL-Cp"])
    method = methods.build(resolved.method, np.eye(num_classes, dtype=np.int8),
                           delta_rel=resolved.delta_rel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.check_batch_size(resolved.batch_size)
    assert any("behaves like LL-Ct" in str(w.message) for w in caught) == warns


def test_no_llcp_warning_for_other_methods():
    resolved = config.parse_args(["--dataset", "pascal", "--mod_scheme", "LL-Ct"])
    method = methods.build(resolved.method, np.eye(20, dtype=np.int8), delta_rel=resolved.delta_rel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.check_batch_size(resolved.batch_size)


# --- a new method is one class ------------------------------------------------------------------

class HalfAssumeNegative(methods.Method):
    """A toy method: half the AN loss, counting its epochs in state that goes into checkpoints."""
    name = "toy_half_an"

    def __init__(self, observed, true_labels=None, *, device="cpu"):
        super().__init__(observed, true_labels, device=device)
        self.epochs_seen = 0

    def loss(self, logits, sample_ids, epoch):
        output = losses.compute_loss("an", logits, self.labels.rows(sample_ids), check_values=False)
        return LossOutput(0.5 * output.loss, output.modified, output.relabel)

    def end_epoch(self, epoch, training_set_logits):
        self.epochs_seen += 1
        self.last_logits_shape = tuple(training_set_logits().shape)

    def state_dict(self):
        return {**super().state_dict(), "epochs_seen": self.epochs_seen,
                "last_logits_shape": list(self.last_logits_shape)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.epochs_seen = state["epochs_seen"]


@pytest.fixture
def toy_method():
    methods.register(HalfAssumeNegative)
    yield HalfAssumeNegative
    del methods.METHODS[HalfAssumeNegative.name]


def test_a_registered_class_trains_through_the_cli(tmp_path, toy_method):
    args = [*TINY_DIGITS, "--epochs", "2", "--seed", "5"]
    assert main.main([*args, "--loss", "toy_half_an", "--out_dir", str(tmp_path / "toy")]) == 0
    assert main.main([*args, "--loss", "an", "--mod_scheme", "none",
                      "--out_dir", str(tmp_path / "an")]) == 0
    toy, an = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text()
                .splitlines()] for name in ("toy", "an"))
    # Adam is invariant to the loss scale: the same steps, half the loss
    assert toy[0]["train_loss"] == pytest.approx(0.5 * an[0]["train_loss"], rel=1e-4)
    last = torch.load(tmp_path / "toy" / "last.pt", map_location="cpu", weights_only=True)
    assert last["method"]["epochs_seen"] == 2
    assert last["method"]["last_logits_shape"] == [32, 10]  # the whole training set, N×L
    assert json.loads((tmp_path / "toy" / "results.json").read_text())["method"] == "toy_half_an"


def test_the_cli_offers_only_registered_methods(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args(["--loss", "toy_half_an"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'toy_half_an'" in capsys.readouterr().err


def test_the_readme_example_runs(capsys):
    """README's "Use the losses in your own training loop" block, executed as written."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Use the losses in your own training loop", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    # 3×4 entries, Δrel 20 %: k = 0, then ceil(12·0.2) = 3, then ceil(12·0.4) = 5 (8 candidates)
    assert [line.rsplit("modified ", 1)[1] for line in printed] == ["0", "3", "5"]
    assert int(namespace["stateless"].modified.sum()) == 3
    assert set(namespace["checkpoint"]["method"]) == {"store"}


