"""Golden training steps (issue #24): each stage's real ``training_step``, driven by Lightning for two steps,
against an independent re-computation from the spec (``tests/helpers/golden_reference.py``).

Per step: every logged term and every loss given to ``manual_backward``; every gradient before the optimiser
step (and which parameters get none); the AdamW update with the stage's parameter groups and schedule; the EMA
teacher and the BatchNorm statistics after the step; Propagate's prototypes.

Test-size choices, the same in both paths: the tiny model (``mitb0_lite``, float32 as in training; float64
convolutions on CPU cost 3.4× the time, so only the reference's losses run in float64) with drop-path and
decoder dropout 0, so that the student's forward is deterministic (the teacher's is dropout-free anyway, spec
§4.2); its classifier scaled so that confidences straddle 0.968 and many classes fall below τ_n = 0.04; colour
jitter and blur with probability 1 where a stage augments, so that the strong view differs from the weak one;
lr 2e-3 with a 3-step warm-up from 0.25, so that updates (and weight decay) stand far above float32 rounding;
Propagate's contrastive term from step 1 (step 0 runs without it) and 3/5 ignored top/bottom rows (of 32).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from atp.data.transforms import MEAN, STD
from atp.stages import build_stage_module
from tests.helpers import golden_reference as ref
from tests.helpers.stages import stage_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 2
CLASSIFIER_SCALE = 50.0
COMMON = ("model.drop_path_rate=0", "model.decoder.dropout=0", "stage.module.optim.lr=2e-3",
          "stage.module.schedule.warmup_steps=3", "stage.module.schedule.warmup_ratio=0.25")
AUGMENT = ("stage.module.strong_aug.jitter_p=1.0", "stage.module.strong_aug.blur_p=1.0")

#: key → (stage, its reference step, config overrides, seed of the golden batches). Tent and shot keep their
#: config's "no augmentation"; both teach runs see the same batches.
RUNS = {
    "align": ("align", ref.align_step, AUGMENT, 0),
    "teach": ("teach", ref.teach_step, (*AUGMENT, "stage.module.neg_source=student"), 7),
    "teach-neg-teacher": ("teach", ref.teach_step, (*AUGMENT, "stage.module.neg_source=teacher"), 7),
    "propagate": ("propagate", ref.propagate_step, (*AUGMENT, "stage.module.scl.start_step=1",
                                                    "stage.module.ignore_top_rows=3",
                                                    "stage.module.ignore_bottom_rows=5"), 1),
    "tent": ("tent", ref.tent_step, (), 0),
    "shot": ("shot", ref.shot_step, (), 0),
    "selftrain": ("selftrain", ref.selftrain_step, AUGMENT, 0),
}


def images(generator: torch.Generator, batch: int = 2, size: int = 32) -> torch.Tensor:
    """Smooth random scenes in [0, 1] (regions to segment, little clamping under the jitter), normalised."""
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    unit = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    unit = (unit + 0.05 * torch.rand(batch, 3, size, size, generator=generator)).clamp(0, 1)
    return (unit * 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def build_base_model(cfg) -> torch.nn.Module:
    """The tiny model, deterministic in train mode, with a confident classifier."""
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(CLASSIFIER_SCALE)
    stochastic = [n for n, m in model.named_modules()
                  if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 or "DropPath" in type(m).__name__]
    assert not stochastic, stochastic
    return model


@dataclass
class Golden:
    options: dict
    records: list[ref.StepRecord]
    expected: list[ref.Expected]
    trainable: set[str]


def run_golden(key: str, cfg, base_model: torch.nn.Module, nets: ref.Networks, data_seed: int | None = None) -> Golden:
    """Two steps of the stage through Lightning, recorded, and the reference's expectation for each."""
    stage, reference_step, _, default_seed = RUNS[key]
    options = OmegaConf.to_container(cfg.stage.module, resolve=True)
    generator = torch.Generator().manual_seed(default_seed if data_seed is None else data_seed)
    if stage == "propagate":
        batches = [{"easy": {"img": images(generator)}, "hard": {"img": images(generator)}} for _ in range(STEPS)]
    else:
        batches = [{"img": images(generator)} for _ in range(STEPS)]

    module = build_stage_module(cfg.stage, model=copy.deepcopy(base_model), num_classes=cfg.dataset.num_classes,
                                seed=cfg.seed)
    recorder = ref.StepRecorder()
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[recorder])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert len(recorder.steps) == STEPS

    trainable = ref.trainable_names(stage, base_model, options)
    history: list = []  # Propagate: every step's prototype samples
    expected = []
    for step, record in enumerate(recorder.steps):
        ctx = ref.Context(nets, options, cfg.seed, cfg.dataset.num_classes, step, record.student_before,
                          record.teacher_before, batches[step])
        expected.append(reference_step(ctx, trainable, *((history,) if stage == "propagate" else ())))
    return Golden(options, recorder.steps, expected, trainable)


@pytest.fixture(scope="module")
def golden(module_tmp):
    """``golden(key)``: the stage's recorded steps and the reference's expectations, each key run once."""

    @functools.cache
    def config(key: str):
        stage, _, overrides, _ = RUNS[key]
        return stage_cfg(stage, module_tmp, module_tmp, module_tmp / key, *COMMON, *overrides)

    base_model = build_base_model(config("align"))
    nets = ref.Networks(base_model)
    return functools.cache(lambda key: run_golden(key, config(key), base_model, nets))


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float, atol: float) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def close_each(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], what: str, rtol: float,
               atol: float | dict[str, float]) -> None:
    """``close`` for every (actual, expected) pair, ``atol`` one number or one per name. One comparison of the
    concatenated tensors first (thousands of calls to assert_close are slow), named details on failure."""
    tol = atol if isinstance(atol, dict) else dict.fromkeys(pairs, atol)
    actual = torch.cat([a.double().flatten() for a, _ in pairs.values()])
    expected = torch.cat([e.double().flatten() for _, e in pairs.values()])
    bound = torch.cat([torch.full((e.numel(),), tol[n], dtype=torch.float64) for n, (_, e) in pairs.items()])
    if not bool(((actual - expected).abs() <= bound + rtol * expected.abs()).all()):
        for name, (a, e) in pairs.items():
            close(a, e, f"{what} {name}", rtol, tol[name])


def steps(run: Golden):
    return enumerate(zip(run.records, run.expected, strict=True))


@pytest.mark.parametrize("key", RUNS)
def test_the_golden_batches_exercise_every_rule(golden, key):
    """Preconditions: views differ, q lies strictly between 0 and 1, masks are mixed, nothing sits on a threshold."""
    for step, expected in enumerate(golden(key).expected):
        failed = [note for note, holds in expected.notes.items() if not holds]
        assert not failed, f"step {step}: {failed} (pick another batch seed in RUNS)"


@pytest.mark.parametrize("key", RUNS)
def test_logged_terms_and_back_propagated_losses_match_the_reference(golden, key):
    """Each term the step logs, and each loss it back-propagates on its own, in order (spec §8.2: three passes)."""
    for step, (record, expected) in steps(golden(key)):
        assert set(record.terms) == set(expected.terms), f"step {step}"
        for name, value in expected.terms.items():
            close(record.terms[name], value, f"step {step} {name}", rtol=1e-5, atol=1e-9)
        assert len(record.backward) == len(expected.backward), f"step {step}: number of backward passes"
        for index, (actual, value) in enumerate(zip(record.backward, expected.backward, strict=True)):
            close(actual, value, f"step {step} backward pass {index}", rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("key", RUNS)
def test_gradients_before_the_optimiser_step_match_the_reference(golden, key):
    """Which parameters get a gradient (frozen, or reached by no loss: none) and its value, summed over passes."""
    for step, (record, expected) in steps(golden(key)):
        without = {n for n, g in record.grads.items() if g is None}
        assert without == {n for n, g in expected.grads.items() if g is None}, f"step {step}: parameters without grad"
        scale = float(max(g.abs().max() for g in expected.grads.values() if g is not None))
        pairs = {n: (record.grads[n], g) for n, g in expected.grads.items() if g is not None}
        close_each(pairs, f"step {step} grad of", rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("key", RUNS)
def test_the_update_is_adamw_over_the_stage_parameter_groups(golden, key):
    """From the stage's own gradients: AdamW from a fresh state with head lr ×10 and no decay on norms, at the
    step's poly + warm-up lr (spec §4.1); parameters outside the trainable set stay bit-identical."""
    run = golden(key)
    adamw = ref.AdamWReference(run.options["optim"])
    for step, record in enumerate(run.records):
        factor = ref.lr_factor(step, run.options["schedule"])
        updated = {}
        for name, grad in record.grads.items():
            before, after = record.student_before[name], record.student_after[name]
            if name in run.trainable and grad is not None:
                updated[name] = (after, adamw.step(name, before, grad, factor))
            else:
                assert torch.equal(after, before), f"step {step}: {name} moved"
        # float32 rounding: a few ulps of the parameter and of the update (~lr); weight decay moves a parameter
        # by lr·0.01·|p|, ~40 ulps of it
        close_each(updated, f"step {step}", rtol=5e-7, atol={n: 1e-6 * adamw.group(n)[0] * factor for n in updated})
    first, last = run.records[0], run.records[-1]
    assert any(not torch.equal(last.student_after[n], first.student_before[n]) for n in run.trainable)


@pytest.mark.parametrize("key", RUNS)
def test_teacher_and_batch_norm_statistics_match_the_reference(golden, key):
    """The EMA teacher after the step (updated at the start of steps >= 1 from the student before it, spec §4.2;
    left alone where it only chooses crops) and the BatchNorm statistics both networks' forward passes leave."""
    for step, (record, expected) in steps(golden(key)):
        assert record.teacher_after.keys() == expected.teacher_after.keys()
        params = {n: (record.teacher_after[n], v) for n, v in expected.teacher_after.items() if n in record.grads}
        close_each(params, f"step {step} teacher", rtol=1e-6, atol=1e-9)  # α_t θ' + (1 − α_t) θ vs lerp: ulps
        # BN statistics: the float32 rounding of the EMA'd weights reaches them through the forward pass
        statistics = {n: (record.teacher_after[n], v) for n, v in expected.teacher_after.items() if n not in params}
        close_each(statistics, f"step {step} teacher", rtol=1e-5, atol=1e-6)
        close_each({n: (record.student_after[n], v) for n, v in expected.student_buffers.items()},
                   f"step {step} student", rtol=1e-5, atol=1e-6)


def test_propagate_prototypes_are_the_cumulative_class_means_of_teacher_projections(golden):
    """Spec §8.3: from the teacher's projections of the weak easy images and their ratio-pooled labels."""
    for step, (record, expected) in steps(golden("propagate")):
        assert torch.equal(record.prototypes_after["count"] > 0, expected.seen), f"step {step}"
        close(record.prototypes_after["mean"], expected.prototypes, f"step {step} prototypes", rtol=1e-5, atol=1e-7)
