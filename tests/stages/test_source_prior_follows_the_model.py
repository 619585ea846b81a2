"""The prior follows the model (issue #23): the source stage records the class share of its labels, every stage
started from it carries it, and Teach/Propagate's prior correction reads it when no prior is given."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from atp.errors import UserError
from atp.models.weights import read_source_class_share
from atp.run import run_stage
from atp.stages import build_stage_module
from tests.helpers.stages import stage_cfg, train_two_steps


def _labels_share(gta_root) -> np.ndarray:
    """The train-id share of the raw GTA-style label-id PNGs, through cityscapesscripts' own table."""
    from cityscapesscripts.helpers.labels import id2label
    from PIL import Image

    lut = np.full(256, 255, dtype=np.int64)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256 and 0 <= label.trainId < 19:
            lut[label_id] = label.trainId
    counts = np.zeros(256, dtype=np.int64)
    for path in sorted((gta_root / "labels").glob("[0-9]*.png")):
        if "_labelTrainIds" not in path.name:
            counts += np.bincount(lut[np.asarray(Image.open(path))].ravel(), minlength=256)
    return counts[:19] / counts[:19].sum()


@pytest.fixture(scope="module")
def source_then_teach(data_toy_root, module_tmp):
    """A 2-step source model, then a 2-step Teach from it with the prior correction on and no prior given."""
    out = module_tmp
    source = run_stage(stage_cfg("source", data_toy_root, out, out / "source", "trainer.max_steps=2"), out / "source")
    ckpt = out / "source" / "checkpoints" / "final.ckpt"
    cfg = stage_cfg("teach", data_toy_root, out, out / "teach", "trainer.max_steps=2", f"init_from={ckpt}",
                    "stage.module.prior_correction.strength=0.5", "stage.module.neg_threshold=0.07")
    teach = run_stage(cfg, out / "teach")
    return source, teach, out


def test_the_source_checkpoint_carries_the_share_of_its_labels(source_then_teach, data_toy_root):
    source, _, out = source_then_teach
    expected = _labels_share(data_toy_root / "toy" / "gta")
    carried = read_source_class_share(out / "source" / "checkpoints" / "final.ckpt")
    assert carried is not None and np.allclose(carried, expected, atol=1e-6)
    assert np.allclose(source["source_class_share"], expected, atol=1e-6)  # and its manifest
    assert json.loads((out / "source" / "manifest.json").read_text())["source_class_share"] == (
        source["source_class_share"])


def test_teach_takes_the_prior_from_its_checkpoint_and_hands_it_on(source_then_teach, tmp_path):
    source, teach, out = source_then_teach
    state = torch.load(out / "teach" / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    carried = read_source_class_share(out / "source" / "checkpoints" / "final.ckpt")
    assert torch.allclose(state["source_class_prior"], torch.tensor(carried))  # no prior option was set
    assert torch.equal(state["source_class_share"], torch.tensor(carried))
    assert teach["source_class_share"] == source["source_class_share"]
    # Propagate started from Teach's checkpoint reads the same prior, again with no option
    cfg = stage_cfg("propagate", tmp_path, tmp_path, tmp_path / "run", "stage.module.prior_correction.strength=0.5")
    module = build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=0,
                                source_class_share=read_source_class_share(out / "teach" / "checkpoints" / "final.ckpt"))
    assert torch.allclose(module.source_class_prior, torch.tensor(carried))


def test_a_given_prior_wins_and_a_wrong_length_is_refused_naming_the_key(tmp_path):
    def build(*overrides, share=None):
        cfg = stage_cfg("teach", tmp_path, tmp_path, tmp_path / "run", "stage.module.prior_correction.strength=0.5",
                        *overrides)
        return build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=0,
                                  source_class_share=share)

    carried = [1.0 / 19] * 19
    given = [2.0] + [1.0] * 18
    module = build("stage.module.prior_correction.prior=[" + ",".join(map(str, given)) + "]", share=carried)
    assert torch.allclose(module.source_class_prior, torch.tensor(given) / sum(given))
    with pytest.raises(UserError, match=r"stage.module.prior_correction.prior: needs 19"):
        build("stage.module.prior_correction.prior=[1,2,3]", share=carried)
    with pytest.raises(UserError, match="source class share of 3 classes, but dataset.num_classes is 19"):
        build(share=[0.2, 0.3, 0.5])
    with pytest.raises(UserError, match="stage.module.prior_correction.prior= the source's sample_class_stats"):
        build()  # no prior given, none carried


def test_a_checkpoint_without_the_share_carries_none(tmp_path):
    cfg = stage_cfg("align", tmp_path, tmp_path, tmp_path / "run")
    module = build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=0)
    assert module.source_class_share is None and "source_class_share" not in module.state_dict()
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    assert read_source_class_share(path) is None


def test_align_pulls_its_diversity_toward_the_carried_share_when_asked(tmp_path, monkeypatch):
    """div_toward=source_prior (the toy recipe's Align): every training step's diversity term gets the share the
    checkpoint carries as its target; the paper's uniform target gets none; without a share it is refused."""
    import atp.stages.align as align_stage

    real = align_stage.diversity_loss
    targets: list = []

    def recording(logits, **kwargs):
        if "bug_compat" in kwargs:  # the loss term (the drift metric is logged without it)
            targets.append(kwargs["prior"])
        return real(logits, **kwargs)

    monkeypatch.setattr(align_stage, "diversity_loss", recording)
    share = [float(c + 1) for c in range(19)]
    share = [s / sum(share) for s in share]
    train_two_steps(tmp_path / "prior", "align", "stage.module.div_toward=source_prior", source_class_share=share)
    assert len(targets) == 2 and all(torch.allclose(t.double(), torch.tensor(share, dtype=torch.float64))
                                     for t in targets)
    targets.clear()
    train_two_steps(tmp_path / "uniform", "align", "stage.module.div_toward=uniform", source_class_share=share)
    assert targets == [None, None]

    cfg = stage_cfg("align", tmp_path, tmp_path, tmp_path / "run", "stage.module.div_toward=source_prior")
    with pytest.raises(UserError, match="stage.module.div_toward=source_prior needs the source labels' class share"):
        build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=0)
