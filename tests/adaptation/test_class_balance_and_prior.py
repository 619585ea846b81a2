"""Class-balanced pseudo-label weights (ClassShare) and their use in Teach/Propagate."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from atp.adaptation import ClassShare
from atp.run import run_stage
from tests.helpers.stages import stage_cfg


def test_share_is_the_batch_share_first_then_a_running_mean():
    share = ClassShare(3, power=1.0)
    share.update(0, torch.tensor([[0, 0, 0, 1]]))
    assert torch.allclose(share.share, torch.tensor([0.75, 0.25, 0.0]))
    share.update(1, torch.tensor([2, 2]))  # step 1: the mean of the two batch shares
    assert torch.allclose(share.share, torch.tensor([0.375, 0.125, 0.5]))
    share.update(2, torch.full((2, 2), 255))  # nothing labelled: unchanged
    assert torch.allclose(share.share, torch.tensor([0.375, 0.125, 0.5]))


def test_one_update_counts_every_label_tensor_of_the_step():
    share = ClassShare(2, power=1.0)
    share.update(0, torch.tensor([0, 0]), torch.tensor([[1, 255]]))  # easy and hard labels of one step
    assert torch.allclose(share.share, torch.tensor([2 / 3, 1 / 3]))


def test_share_becomes_an_ema_with_the_given_momentum():
    share = ClassShare(2, power=1.0, momentum=0.6)
    for step in range(3):  # keep = min(t/(t+1), 0.6): 0, 0.5, 0.6
        share.update(step, torch.tensor([0]))
    share.update(3, torch.tensor([1]))  # keep 0.6: [0.6, 0.4]
    assert torch.allclose(share.share, torch.tensor([0.6, 0.4]))


def test_weights_follow_the_inverse_share_with_mean_one_over_labelled_pixels():
    share = ClassShare(3, power=1.0)
    share.share.copy_(torch.tensor([0.5, 0.25, 0.25]))
    # raw weights 1/0.5 = 2, 1/0.25 = 4, ignored 0; mean over the two labelled pixels is 3
    weights = share.weights(torch.tensor([[0, 1, 255]]))
    assert torch.allclose(weights, torch.tensor([[2 / 3, 4 / 3, 0.0]]))
    share.power = 0.5  # sqrt: 1.414, 2 → mean 1.707
    weights = share.weights(torch.tensor([0, 1]))
    assert torch.allclose(weights, torch.tensor([2**0.5, 2.0]) / ((2**0.5 + 2.0) / 2))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="power"):
        ClassShare(3, power=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        ClassShare(3, momentum=1.0)


@pytest.mark.parametrize("stage", ["teach", "propagate"])
def test_stage_keeps_the_running_share_in_its_checkpoint(stage, data_toy_root, tmp_path):
    """On: the share is a checkpoint buffer, moved off the uniform start. Off (the paper recipe): no new key."""
    extra = ["stage.module.scl.start_step=0"] if stage == "propagate" else []
    run_dir = tmp_path / "on"
    cfg = stage_cfg(stage, data_toy_root, tmp_path, run_dir, "init_from=null", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", "stage.module.class_balance.power=0.5", *extra)
    assert run_stage(cfg, run_dir)["status"] == "complete"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.isclose(state["class_share.share"].sum(), torch.tensor(1.0))
    assert not torch.allclose(state["class_share.share"], torch.full((19,), 1 / 19))

    run_dir = tmp_path / "off"
    cfg = stage_cfg(stage, data_toy_root, tmp_path, run_dir, "init_from=null", "trainer.max_steps=1",
                    "trainer.val_check_interval=1", *extra)
    run_stage(cfg, run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(key.startswith(("class_share.", "source_class_prior")) for key in state)


def test_prior_correction_moves_each_logit_by_the_log_of_its_over_prediction():
    share = ClassShare(3, power=0.0)
    share.share.copy_(torch.tensor([0.5, 0.25, 0.25]))
    prior = torch.tensor([0.25, 0.25, 0.5])  # class 0 labelled twice its prior, class 2 half of it
    logits = torch.zeros(2, 3, 4, 5)
    corrected = share.prior_corrected(logits, prior, strength=0.5)
    expected = torch.tensor([-0.5 * math.log(2), 0.0, 0.5 * math.log(2)]).view(1, 3, 1, 1).expand_as(logits)
    assert torch.allclose(corrected, expected)
    flat = share.prior_corrected(torch.zeros(7, 3), prior, strength=1.0)  # (N, C) logits too
    assert torch.allclose(flat[0], torch.tensor([-math.log(2), 0.0, math.log(2)]))


def test_source_class_share_from_a_list_and_from_the_stats_file_prepare_writes(data_toy_root, tmp_path):
    import shutil

    import numpy as np
    from cityscapesscripts.helpers.labels import id2label
    from PIL import Image

    from atp.data.prepare import prepare_dataset, source_class_share
    from atp.errors import UserError

    assert source_class_share([2, 1, 1], 3) == [0.5, 0.25, 0.25]
    root = tmp_path / "data"
    shutil.copytree(data_toy_root / "toy", root / "toy")  # prepare writes beside the labels
    dataset = stage_cfg("teach", root, tmp_path, tmp_path / "run").dataset
    prepare_dataset(dataset, num_workers=1, progress=False)
    share = source_class_share(root / "toy" / "gta" / "sample_class_stats.json", 19)
    # independently: the raw GTA-style label ids through the Cityscapes table
    lut = np.full(256, 255, dtype=np.int64)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256 and 0 <= label.trainId < 19:
            lut[label_id] = label.trainId
    counts = np.zeros(256, dtype=np.int64)
    for path in sorted((root / "toy" / "gta" / "labels").glob("[0-9]*.png")):
        if "_labelTrainIds" not in path.name:
            counts += np.bincount(lut[np.asarray(Image.open(path))].ravel(), minlength=256)
    assert np.allclose(share, counts[:19] / counts[:19].sum())
    for bad, words in ((None, "is not set"), ([1.0] * 18, "19 non-negative"), (tmp_path / "none.json", "none.json")):
        with pytest.raises(UserError, match=words):
            source_class_share(bad, 19)


def test_stage_labels_with_the_corrected_logits_and_keeps_its_ce_unweighted(tmp_path):
    from atp.stages import build_stage_module

    prior = [0.25, 0.25, 0.5] + [0.0] * 16
    cfg = stage_cfg("teach", tmp_path, tmp_path, tmp_path / "run",
                    "stage.module.prior_correction.strength=1.0",
                    "stage.module.prior_correction.prior=[" + ",".join(map(str, prior)) + "]")
    module = build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=0)
    assert module.class_share.power == 0  # tracked for the correction; the paper's unweighted CE stays
    labels = torch.tensor([[0, 1], [2, 255]])
    assert module.balanced(labels) is None
    module.class_share.share.copy_(torch.tensor([0.5, 0.25, 0.25] + [0.0] * 16))
    logits = torch.full((1, 19, 1, 3), -20.0)
    logits[0, :3, 0, 0] = torch.tensor([0.6, 0.0, 0.0])  # class 0 wins by 0.6 < log 2: corrected, class 2 wins
    logits[0, :3, 0, 1] = torch.tensor([1.5, 0.0, 0.0])  # by 1.5 > 2 log 2 (class 0 -log 2, 2 +log 2): kept
    logits[0, :3, 0, 2] = torch.tensor([0.0, 0.5, 0.0])  # class 1 at its prior; class 2 gains log 2 > 0.5
    corrected, _, _, _ = module._labels_of(logits, (1, 3), keep_probs=False)
    assert corrected.tolist() == [[[2, 0, 2]]]
    module.prior_strength = 0.0
    assert module._labels_of(logits, (1, 3), keep_probs=False)[0].tolist() == [[[0, 0, 1]]]


def test_prior_correction_leaves_evaluation_alone(tmp_path):
    """Only the teacher's pseudo-labels are corrected: the student's predictions (validation, the ladder's
    evaluation) are those of the same weights without the option, and the ACDC test-time prior is untouched."""
    from atp.stages import build_stage_module

    corrected = ["stage.module.prior_correction.strength=1.0",
                 "stage.module.prior_correction.prior=[" + ",".join(["1"] * 18 + ["100"]) + "]"]
    modules = []
    for extra in ([], corrected):
        cfg = stage_cfg("teach", tmp_path, tmp_path, tmp_path / "run", *extra)
        torch.manual_seed(0)
        modules.append(build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=0).eval())
    plain, with_prior = modules
    assert with_prior.class_prior is None and plain.class_prior is None  # no ACDC prior on this dataset
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.predict_labels(images, (32, 32)), with_prior.predict_labels(images, (32, 32)))


@pytest.mark.parametrize(("option", "words"), [("strength=-1", "strength must be >= 0"),
                                               ("stregth=1", "prior_correction.stregth is not an option. Did you mean stage.module.prior_correction.strength"),
                                               ("strength=1", "needs the source labels. class share")])
def test_bad_prior_correction_is_refused_naming_the_key(option, words, tmp_path):
    from atp.errors import UserError
    from atp.stages import build_stage_module

    cfg = stage_cfg("propagate", tmp_path, tmp_path, tmp_path / "run", f"+stage.module.prior_correction.{option}"
                    if option.startswith("stregth") else f"stage.module.prior_correction.{option}")
    with pytest.raises((ValueError, UserError), match=words):
        build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=0)
