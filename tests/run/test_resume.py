"""A stage crashed mid-run and resumed *restores* its state (it does not restart) and ends bit-identical to an
uninterrupted run in every tensor of its checkpoint: student, teacher, prototypes, class shares, optimiser.

A seeded restart from step 0 would also end with the same weights, so each case also pins that the resumed
run's first step is the one after the saved step, and that the manifest records the interruption. The crash
is an exception (what an OOM or a node failure looks like): the manifest records it as ``status: failed``
with the error, and after the resume as an entry of ``interruptions``. (SIGTERM, recorded as ``interrupted``
with ``stopped_by: SIGTERM``, is pinned end to end by tests/run/test_sigterm.py.)
"""

import pytest
import torch
from omegaconf import open_dict
from pytorch_lightning.callbacks import Callback

from atp.run import run_stage
from tests.helpers.stages import CrashAtStep, stage_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS, SAVED = 6, 4  # last.ckpt every 2 steps; the crash comes at the start of step SAVED + 1
ONE_PASS = ["dataset.loader_crop.target=false"]  # whole 64×32 target images: the teacher picks a 32² crop
BALANCED = ["stage.module.class_balance.power=0.5", "stage.module.prior_correction.strength=1.0"]
# per stage: what makes its first SAVED steps build the state a resume must restore
CASES = {
    "source": [],
    "adabn": ["stage.module.num_batches=6"],
    "align": ONE_PASS,  # the teacher moves only when it crops
    "teach": BALANCED,  # prior = the source class share the source checkpoint carries
    "propagate": [*BALANCED, "stage.module.scl.start_step=2",
                  "stage.module.prior_correction.prior=[" + ",".join(["0.05"] * 19) + "]"],
    "tent": ONE_PASS,
    "shot": ONE_PASS,
    "selftrain": ["stage.module.pos_threshold=0.0"],  # a 2-step source is never 0.968-confident
}
#: checkpoint keys (prefixes) each case must carry, so a config change cannot silently drop what is compared
MUST_HAVE = {
    "source": ("student.", "source_class_share"),
    "adabn": ("student.", "source_class_share"),
    "align": ("student.", "teacher.", "source_class_share"),
    "teach": ("student.", "teacher.", "class_share.share", "source_class_prior", "source_class_share"),
    "propagate": ("student.", "teacher.", "prototypes.mean", "prototypes.var", "prototypes.count",
                  "class_share.share", "source_class_prior", "source_class_share"),
    "tent": ("student.", "teacher.", "source_class_share"),
    "shot": ("student.", "teacher.", "source_class_share"),
    "selftrain": ("student.", "teacher.", "source_class_share"),
}


class FirstStep(Callback):
    """Records ``global_step`` at the first training batch of a fit."""

    step = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.step is None:
            self.step = trainer.global_step


def _tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: the module state and, where saved, the optimiser state."""
    ckpt = torch.load(path, weights_only=False)
    found = {f"state_dict/{k}": v for k, v in ckpt["state_dict"].items() if torch.is_tensor(v)}
    for i, optimizer in enumerate(ckpt.get("optimizer_states", [])):
        for param, state in optimizer["state"].items():
            found.update({f"optimizer{i}/{param}/{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return found


@pytest.fixture(scope="module")
def source_final(data_toy_root, module_tmp):
    """A 2-step source model every adaptation case starts from (it carries the source class share)."""
    out = module_tmp / "outputs"
    run_stage(stage_cfg("source", data_toy_root, out, out / "src", "trainer.max_steps=2"), out / "src")
    return out / "src" / "checkpoints" / "final.ckpt"


@pytest.mark.parametrize("stage", list(CASES))
def test_resume_after_crash_restores_state_and_equals_uninterrupted(stage, data_toy_root, tmp_path, request):
    out = tmp_path / "outputs"
    common = [f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}", "checkpoint_every=2",
              *CASES[stage]]
    source = None
    if stage != "source":  # adaptation stages start from the source model; source from random weights
        source = request.getfixturevalue("source_final")
        common.append(f"init_from={source}")

    full_dir, crash_dir = out / "full", out / "crashed"
    fresh = FirstStep()
    run_stage(stage_cfg(stage, data_toy_root, out, full_dir, *common), full_dir, extra_callbacks=[fresh])
    assert fresh.step == 0

    cfg = stage_cfg(stage, data_toy_root, out, crash_dir, *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_stage(cfg, crash_dir, extra_callbacks=[CrashAtStep(SAVED)])
    last = crash_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == SAVED
    assert not (crash_dir / "checkpoints" / "final.ckpt").exists()
    _assert_state_built(stage, _tensors(last), source)

    with open_dict(cfg):
        cfg.resume = True
    resumed = FirstStep()
    manifest = run_stage(cfg, crash_dir, extra_callbacks=[resumed])
    assert resumed.step == SAVED  # restored: the step after the saved one (a restart would begin at 0)
    assert manifest["status"] == "complete" and manifest["steps"] == STEPS
    crash = {"step": SAVED, "status": "failed", "stopped_by": "RuntimeError: simulated crash",
             "resumed_from": str(last)}
    assert manifest["interruptions"] == [crash]  # a crash is "failed" with its error; SIGTERM: "interrupted"

    for name in ("last.ckpt", "final.ckpt"):  # final.ckpt: weights only
        full, after = _tensors(full_dir / "checkpoints" / name), _tensors(crash_dir / "checkpoints" / name)
        assert full.keys() == after.keys(), name
        missing = [p for p in MUST_HAVE[stage] if not any(k.startswith(f"state_dict/{p}") for k in full)]
        if name == "last.ckpt" and stage != "adabn":  # AdaBN's SGD at lr 0 keeps no state
            missing += [] if any(k.startswith("optimizer0/") for k in full) else ["optimizer state"]
        assert not missing, (name, missing)
        differing = [k for k in full if not torch.equal(full[k], after[k])]
        assert not differing, (name, differing[:5])


def _assert_state_built(stage: str, state: dict[str, torch.Tensor], source) -> None:
    """At the saved step the state a resume must restore exists: the teacher has left the source weights, the
    class share its uniform start, the prototypes have counts, AdaBN has counted its batches."""
    if stage == "adabn":
        counts = [v for k, v in state.items() if k.endswith("num_batches_tracked") and "decode_head" in k]
        assert counts and all(int(c) == SAVED for c in counts)
    if any(k.startswith("state_dict/teacher.") for k in state):
        start = torch.load(source, weights_only=False)["state_dict"]
        moved = [k for k, v in state.items() if k.startswith("state_dict/teacher.model.") and v.is_floating_point()
                 and not torch.equal(v, start["student." + k.removeprefix("state_dict/teacher.model.")])]
        assert moved, "the EMA teacher never moved"
    if "state_dict/class_share.share" in state:
        assert not torch.allclose(state["state_dict/class_share.share"], torch.full((19,), 1 / 19))
    if "state_dict/prototypes.count" in state:
        assert int(state["state_dict/prototypes.count"].sum()) > 0
