"""scripts/make_pseudo_labels.py: views, the digits simulation, CLIP with a tiny random open_clip
model on generated images (no weights, no network), resuming, the offline error, and its output
read by a training run through the CLI."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from largeloss import cli
from largeloss.data import datasets
from largeloss.data.pseudo_labels import PseudoLabels, load_pseudo_labels
from largeloss.methods import losses
from largeloss.methods import registry as methods

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                            "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}


def load_script():
    spec = importlib.util.spec_from_file_location("make_pseudo_labels",
                                                  REPO_ROOT / "scripts" / "make_pseudo_labels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


script = load_script()


# --- views --------------------------------------------------------------------------------------

def coordinate_image(width: int, height: int) -> Image.Image:
    """Red = 20·x, green = 30·y: a pixel says where it came from."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([20 * x, 30 * y, np.zeros_like(x)], -1).astype(np.uint8))


def test_grid_views_are_the_whole_image_then_tiles_row_by_row():
    """W = 10, H = 7, g = 3: w = 3, h = 2; tile (y, x) = crop (3x, 2y, 3x+3, 2y+2); the last
    column and row of pixels are dropped (docs/pseudo_labels.md step 1)."""
    views = script.grid_views(coordinate_image(10, 7), 3)
    assert len(views) == 10 and views[0].size == (10, 7)
    assert all(view.size == (3, 2) for view in views[1:])
    tile = np.asarray(views[1 + 1 * 3 + 2])  # row y = 1, column x = 2
    assert (tile[0, 0, 0], tile[0, 0, 1]) == (20 * 6, 30 * 2)
    assert (tile[-1, -1, 0], tile[-1, -1, 1]) == (20 * 8, 30 * 3)
    assert max(np.asarray(view)[..., 0].max() for view in views[1:]) == 20 * 8  # x = 9 dropped


def test_view_tensors_resize_each_view_and_mirror_it():
    views = script.grid_views(coordinate_image(12, 12), 2)
    tensors = script.view_tensors(views, 8, flips=2)
    assert tensors.shape == (2, 5, 3, 8, 8)
    assert torch.equal(tensors[1], tensors[0].flip(-1))
    mean = torch.tensor(script.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(script.IMAGENET_STD).view(3, 1, 1)
    expected = torch.from_numpy(np.array(views[0].resize((8, 8), Image.BILINEAR))).permute(2, 0, 1)
    assert torch.allclose(tensors[0, 0], (expected / 255 - mean) / std, atol=1e-6)


def test_vlpl_input_is_the_training_tensor_resized():
    tensors = script.training_tensor_views(coordinate_image(20, 10), 16, flips=2)
    assert tensors.shape == (2, 1, 3, 16, 16)
    assert torch.allclose(tensors[1], tensors[0].flip(-1), atol=1e-5)


# --- the simulation -----------------------------------------------------------------------------

@pytest.mark.parametrize("precision, recall", [(0.9, 0.5), (0.7, 0.5), (1.0, 0.2)])
def test_simulated_labels_have_the_requested_precision_and_recall(precision, recall):
    rng = np.random.default_rng(0)
    true_labels = (rng.random((20000, 10)) < 0.2).astype(np.uint8)
    labels = script.simulated_labels(true_labels, precision, recall, np.random.default_rng(1))
    hits = ((labels == 1) & (true_labels == 1)).sum()
    assert set(np.unique(labels)) <= {0, 1}
    assert hits / (labels == 1).sum() == pytest.approx(precision, abs=0.01)
    assert hits / true_labels.sum() == pytest.approx(recall, abs=0.01)


def test_digits_simulation_writes_a_folder_the_training_split_reads(tmp_path, capsys):
    out = tmp_path / "digits_sim.pl"
    code = script.main(["--dataset", "digits", "--digits_train_size", "64", "--simulate_precision",
                        "0.9", "--simulate_recall", "0.5", "--out", str(out)])
    assert code == 0
    data = datasets.load_data("digits", "data/digits", None, 48, 64)
    pseudo = load_pseudo_labels(out, data.train.image_ids, data.class_names)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "simulated" and meta["simulation"]["precision"] == 0.9
    assert "not a vision-language model" in meta["simulation"]["note"]
    labels, scores = pseudo.rows(torch.arange(64))
    true_positive = (labels == 1) & (torch.from_numpy(data.train.true_labels) == 1)
    assert scores is None and pseudo.num_flips == 1
    assert meta["simulation"]["measured"]["recall"] == pytest.approx(
        true_positive.sum().item() / data.train.true_labels.sum())
    assert "precision 0." in capsys.readouterr().out


def test_simulation_refuses_impossible_settings(capsys):
    code = script.main(["--dataset", "digits", "--digits_train_size", "32",
                        "--simulate_precision", "0.9"])
    assert code == 2
    assert "needs both --simulate_precision and --simulate_recall" in capsys.readouterr().err


# --- CLIP: a tiny random open_clip model --------------------------------------------------------

@pytest.fixture
def tiny_clip(tmp_path):
    """Arguments naming a tiny random open_clip model (1.6 M parameters, 32 px)."""
    pytest.importorskip("open_clip")
    config = tmp_path / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    return ["--model", "tiny-clip-test", "--model_config", str(config), "--pretrained", "none",
            "--device", "cpu", "--num_workers", "0", "--batch_size", "3"]


def train_ids_and_names(data_root: Path):
    data = datasets.load_data("custom", str(data_root), None, 32)
    return data.train.image_ids, data.class_names


def test_damp_scores_of_generated_images(tmp_path, custom_folder, tiny_clip):
    data_root = custom_folder()
    out = tmp_path / "damp.pl"
    code = script.main(["--dataset", "custom", "--data_root", str(data_root), "--kind", "damp",
                        "--grid", "2", "--out", str(out), *tiny_clip])
    assert code == 0
    ids, names = train_ids_and_names(data_root)
    pseudo = load_pseudo_labels(out, ids, names)
    assert (pseudo.num_flips, pseudo.num_views, pseudo.labels) == (2, 5, None)
    scores = pseudo.views(torch.arange(len(ids)))
    assert scores.shape == (len(ids), 5, 3) and bool((scores.abs() <= 1).all())
    assert not torch.equal(pseudo.scores[:, 0], pseudo.scores[:, 1])  # the mirror differs
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["kind"], meta["model"], meta["grid"], meta["pretrained"]) == (
        "damp", "tiny-clip-test", 2, None)
    assert meta["prompt_template"] == "a photo of a {}." and meta["preprocess"]["size"] == 32
    assert not (out / ".chunks").exists()


def test_vlpl_labels_follow_its_rule_on_the_stored_scores(tmp_path, custom_folder, tiny_clip):
    data_root = custom_folder()
    out = tmp_path / "vlpl.pl"
    assert script.main(["--dataset", "custom", "--data_root", str(data_root), "--kind", "vlpl",
                        "--out", str(out), *tiny_clip]) == 0
    ids, names = train_ids_and_names(data_root)
    pseudo = load_pseudo_labels(out, ids, names)
    assert pseudo.num_views == 1 and pseudo.labels is not None
    probs = torch.softmax(pseudo.scores[:, :, 0].float() / 0.01, dim=-1)
    assert torch.equal(pseudo.labels, (probs > 0.3).to(torch.int8))


class Interrupted(Exception):
    """Stands for a kill in the middle of a pass."""


def test_an_interrupted_pass_resumes_from_its_chunks(tmp_path, custom_folder, tiny_clip,
                                                     monkeypatch):
    data_root = custom_folder()
    arguments = ["--dataset", "custom", "--data_root", str(data_root), "--grid", "2",
                 "--chunk_images", "3", *tiny_clip]
    reference = tmp_path / "reference.pl"
    assert script.main([*arguments, "--out", str(reference)]) == 0
    original, calls, interrupt = script.chunk_cosines, [], [True]

    def interrupted(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 2 and interrupt[0]:
            interrupt[0] = False
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(script, "chunk_cosines", interrupted)
    out = tmp_path / "resumed.pl"
    with pytest.raises(Interrupted):
        script.main([*arguments, "--out", str(out)])
    assert sorted(path.name for path in (out / ".chunks").glob("*.npy")) == ["000000000.npy"]
    calls.clear()
    assert script.main([*arguments, "--out", str(out)]) == 0
    assert [rows.start for rows in calls] == [3, 6]  # the first chunk was not computed again
    assert np.array_equal(np.load(out / "scores.npy"), np.load(reference / "scores.npy"))
    code = script.main([*arguments, "--out", str(out)])
    assert code == 2  # finished: refused rather than overwritten


def test_a_resume_with_other_settings_is_refused(tmp_path, custom_folder, tiny_clip, capsys):
    out = tmp_path / "x.pl"
    (out / ".chunks").mkdir(parents=True)
    (out / ".chunks" / "settings.json").write_text(json.dumps({"grid": 7}))
    code = script.main(["--dataset", "custom", "--data_root", str(custom_folder()), "--out",
                        str(out), *tiny_clip])
    assert code == 2 and "holds a pass with other settings" in capsys.readouterr().err


def test_without_a_network_the_error_says_to_pass_local_weights(custom_folder, monkeypatch,
                                                               capsys):
    open_clip = pytest.importorskip("open_clip")

    def offline(*args, **kwargs):  # what a download without a network raises
        raise RuntimeError("Failed to download file (network is unreachable)")

    monkeypatch.setattr(open_clip, "create_model", offline)
    code = script.main(["--dataset", "custom", "--data_root", str(custom_folder()),
                        "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'openai' of ViT-B-16-quickgelu" in err and "--clip_weights PATH" in err


def test_openai_weights_need_the_quickgelu_name(custom_folder, capsys):
    pytest.importorskip("open_clip")
    code = script.main(["--dataset", "custom", "--data_root", str(custom_folder()), "--model",
                        "ViT-B-16", "--pretrained", "openai", "--device", "cpu"])
    assert code == 2 and "use --model ViT-B-16-quickgelu" in capsys.readouterr().err


def test_a_missing_weights_file_is_named(custom_folder, capsys):
    pytest.importorskip("open_clip")
    code = script.main(["--dataset", "custom", "--data_root", str(custom_folder()),
                        "--clip_weights", "/nonexistent/w.bin", "--device", "cpu"])
    assert code == 2 and "--clip_weights /nonexistent/w.bin: no such file" in capsys.readouterr().err


# --- read by a training run ---------------------------------------------------------------------

class RecordingPseudoLabelMethod(methods.Method):
    """A test method that trains on pseudo-labels: AN's loss; records what it is given."""
    name = "toy_pseudo"
    needs_pseudo_labels = True
    needs_flips = True
    calls: list = []

    def __init__(self, observed, true_labels=None, *, device="cpu", pseudo_labels: PseudoLabels):
        super().__init__(observed, true_labels, device=device)
        self.pseudo_labels = pseudo_labels

    def loss(self, logits, sample_ids, epoch, flipped=None):
        views = self.pseudo_labels.views(sample_ids)
        type(self).calls.append((len(sample_ids), flipped, views.shape))
        return losses.an_loss(logits, self.labels.rows(sample_ids))


TRAIN = ["--device", "cpu", "--num_workers", "0", "--image_size", "32", "--early_stop_drop", "0",
         "--arch", "small_cnn", "--weights", "none", "--batch_size", "4", "--epochs", "1"]


@pytest.mark.filterwarnings("ignore:.*no observed positive")
def test_the_scripts_output_is_read_by_a_training_run(tmp_path, custom_folder, tiny_clip,
                                                      monkeypatch, capsys):
    monkeypatch.setitem(methods.METHODS, "toy_pseudo", RecordingPseudoLabelMethod)
    monkeypatch.setattr(RecordingPseudoLabelMethod, "calls", [])
    data_root = custom_folder(num_train=12)
    folder = tmp_path / "damp.pl"
    assert script.main(["--dataset", "custom", "--data_root", str(data_root), "--grid", "2",
                        "--out", str(folder), *tiny_clip]) == 0
    out_dir = tmp_path / "run"
    code = cli.main(["--dataset", "custom", "--data_root", str(data_root), "--loss", "toy_pseudo",
                     "--pseudo_labels", str(folder), "--out_dir", str(out_dir), *TRAIN])
    assert code == 0
    assert json.loads((out_dir / "config.json").read_text())["pseudo_labels"] == str(folder)
    calls = RecordingPseudoLabelMethod.calls
    assert [size for size, _, _ in calls] == [4, 4, 2]  # 10 training images (12 − val's 2)
    assert all(flipped.dtype == torch.bool and len(flipped) == size for size, flipped, _ in calls)
    assert 0 < int(sum(flipped.sum() for _, flipped, _ in calls)) < 10  # seeded: both happen
    assert all(shape[1:] == (5, 3) for _, _, shape in calls)


@pytest.mark.parametrize("flags, message", [
    (["--loss", "toy_pseudo"], "method toy_pseudo trains on vision-language pseudo-labels: pass "
                               "--pseudo_labels DIR"),
    (["--loss", "an", "--pseudo_labels", "x.pl"], "method LL-R does not use pseudo-labels"),
])
def test_the_cli_refuses_a_missing_or_unused_folder_at_start(monkeypatch, capsys, flags, message):
    monkeypatch.setitem(methods.METHODS, "toy_pseudo", RecordingPseudoLabelMethod)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--dataset", "digits", *flags, *TRAIN])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*no observed positive")
def test_a_folder_for_other_images_stops_the_run_in_one_line(tmp_path, custom_folder,
                                                             monkeypatch, capsys):
    monkeypatch.setitem(methods.METHODS, "toy_pseudo", RecordingPseudoLabelMethod)
    folder = tmp_path / "digits.pl"
    assert script.main(["--dataset", "digits", "--digits_train_size", "32", "--simulate_precision",
                        "1", "--simulate_recall", "1", "--out", str(folder)]) == 0
    data_root = custom_folder()
    code = cli.main(["--dataset", "custom", "--data_root", str(data_root), "--loss", "toy_pseudo",
                     "--pseudo_labels", str(folder), "--out_dir", str(tmp_path / "run"), *TRAIN])
    err = capsys.readouterr().err
    assert code == 2 and "num_classes 10, the dataset has 3" in err
