"""The stage registry: discovery, the default chain, option checks, and every stage config builds."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from atp.errors import UserError
from atp.stages import STAGES, build_stage_module, check_stage_options, default_chain, get_stage
from atp.train import apply_per_stage
from tests.helpers.stages import CONF_DIR, TINY, stage_cfg

STAGE_FILES = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml") if p.stem != "chain" and not p.stem.startswith("_"))


def test_every_stage_config_has_a_registered_class_and_back():
    assert sorted(STAGES) == STAGE_FILES


def test_default_chain_is_the_method_order():
    assert default_chain() == ["source", "align", "teach", "propagate"]


def test_unknown_stage_names_the_valid_ones():
    with pytest.raises(UserError) as err:
        get_stage("nope")
    message = str(err.value)
    assert "stage=nope" in message
    for name in [*STAGES, "chain"]:
        assert name in message


@pytest.mark.parametrize("stage", STAGE_FILES)
def test_every_stage_config_builds_its_module(stage, tmp_path):
    extra = []
    if stage == "distill":  # the black box needs a source checkpoint: a tiny model's state dict
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            model_cfg = compose("train", overrides=TINY).model
        oracle = tmp_path / "source.pt"
        torch.save(instantiate(model_cfg).state_dict(), oracle)
        extra = [f"stage.module.oracle={oracle}"]
    cfg = stage_cfg(stage, tmp_path, tmp_path, tmp_path / "run", "seed=5", *extra)
    model = instantiate(cfg.model)
    module = build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed)
    assert type(module) is get_stage(stage)
    assert module.student is model and module.seed == 5 and module.num_classes == cfg.dataset.num_classes
    if "optim" in cfg.stage.module:  # every stage but adabn, which takes no gradient step
        assert module.optim_cfg["lr"] == cfg.stage.module.optim.lr
    # hyper-parameters are plain containers (checkpoints load with weights_only=True), networks excluded
    assert "model" not in module.hparams and "oracle_model" not in module.hparams
    assert type(module.hparams["optim"]) is dict and type(module.hparams["eval"]["stride"]) is list


def _raises_before_building(stage_config, *expected: str) -> str:
    with pytest.raises(UserError) as err:
        # an object that is no model: building anything would fail with another error
        build_stage_module(stage_config, model=object(), num_classes=19, seed=0)
    for text in expected:
        assert text in str(err.value)
    return str(err.value)


def test_misspelt_option_is_named_with_a_suggestion_and_the_valid_options(tmp_path):
    cfg = stage_cfg("teach", tmp_path, tmp_path, tmp_path / "run", "+stage.module.pos_treshold=0.9")
    message = _raises_before_building(cfg.stage, "stage.module.pos_treshold", "stage=teach",
                                      "Did you mean stage.module.pos_threshold?")
    valid = message.split("Valid options: ")[1].split(", ")
    assert valid == sorted(valid) and {"pos_threshold", "neg_source", "optim", "ema_alpha"} <= set(valid)
    assert "model" not in valid and "seed" not in valid


def test_misspelt_option_in_a_recipe_per_stage_section(tmp_path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=toy_cpu", "stage=teach",
                                          "+per_stage.teach.stage.module.neg_treshold=0.1"])
    cfg = apply_per_stage(cfg, [])
    assert cfg.stage.module.pos_threshold == 0.9  # the recipe's real key still arrives
    _raises_before_building(cfg.stage, "stage.module.neg_treshold", "Did you mean stage.module.neg_threshold?")


def test_run_layer_options_and_missing_ones_are_refused(tmp_path):
    cfg = stage_cfg("source", tmp_path, tmp_path, tmp_path / "run", "+stage.module.seed=3")
    _raises_before_building(cfg.stage, "stage.module.seed", "remove it")
    cfg = stage_cfg("source", tmp_path, tmp_path, tmp_path / "run", "~stage.module.optim")
    _raises_before_building(cfg.stage, "stage=source needs stage.module.optim")
    cfg = stage_cfg("source", tmp_path, tmp_path, tmp_path / "run", "stage.module._target_=atp.stages.align.AlignStage")
    _raises_before_building(cfg.stage, "atp.stages.source.SourceStage")


def test_check_returns_the_class_without_resolving_values(tmp_path):
    cfg = stage_cfg("propagate", tmp_path, tmp_path, tmp_path / "run")
    assert check_stage_options(cfg.stage) is get_stage("propagate")


class _Seen(Exception):
    """Raised by the spy network once it has recorded its input."""


@pytest.mark.parametrize("strong_aug", [None, {"jitter_strength": 0.3, "jitter_p": 1.0, "blur_p": 0.0}])
def test_source_stage_trains_on_strongly_augmented_crops_only_when_asked(strong_aug, tmp_path):
    from atp.adaptation import StrongAugment
    from atp.data.transforms import MEAN, STD

    extra = [] if strong_aug is None else [
        "stage.module.strong_aug={" + ",".join(f"{k}:{v}" for k, v in strong_aug.items()) + "}"]
    cfg = stage_cfg("source", tmp_path, tmp_path, tmp_path / "run", "seed=3", *extra)
    module = build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=19, seed=3)
    assert module.hparams["strong_aug"] == strong_aug  # a plain value: checkpoints load with weights_only=True
    assert strong_aug is None or type(module.hparams["strong_aug"]) is dict
    seen = []

    def spy(images):
        seen.append(images)
        raise _Seen

    module.begin_step = lambda: None
    module.student.forward = spy
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(_Seen):
        module.training_step({"img": images, "label": torch.zeros(2, 32, 32, dtype=torch.long)}, 0)
    if strong_aug is None:
        assert seen[0] is images
    else:  # step 0 of seed 3: the stage's per-step generator
        expected = StrongAugment(MEAN, STD, **strong_aug)(images, torch.Generator().manual_seed(3 * 1_000_003))
        assert torch.equal(seen[0], expected) and not torch.allclose(seen[0], images, atol=1e-2)


@pytest.mark.parametrize(("stage", "group", "typo", "meant"), [
    ("source", "optim", "lrr", "lr"), ("teach", "schedule", "warmup_step", "warmup_steps"),
    ("align", "eval", "flipp", "flip"), ("teach", "strong_aug", "blur_pp", "blur_p"), ("propagate", "crop", "tires", "tries"),
    ("teach", "class_balance", "powr", "power"), ("propagate", "prior_correction", "stregth", "strength"),
    ("propagate", "scl", "temprature", "temperature"), ("source", "strong_aug", "jiter_p", "jitter_p")])
def test_misspelt_nested_option_is_named_before_any_data_are_generated(stage, group, typo, meant, tmp_path):
    from atp.run import run_stage
    from atp.stages.registry import option_records

    record = option_records(get_stage(stage))[group]
    data = tmp_path / "data"  # the toy data would be generated here (generate_if_missing)
    cfg = stage_cfg(stage, data, tmp_path, tmp_path / "run", f"+stage.module.{group}.{typo}=1")
    with pytest.raises(UserError) as err:
        run_stage(cfg, tmp_path / "run")
    message = str(err.value)
    assert f"stage.module.{group}.{typo} is not an option" in message
    assert f"Did you mean stage.module.{group}.{meant}?" in message
    assert ", ".join(f.name for f in __import__("dataclasses").fields(record)) in message  # the valid keys
    assert not data.exists() and not (tmp_path / "run").exists()  # nothing generated, nothing written


def test_a_nested_group_that_is_no_mapping_is_refused_naming_it(tmp_path):
    cfg = stage_cfg("teach", tmp_path, tmp_path, tmp_path / "run", "stage.module.class_balance=0.5")
    with pytest.raises(UserError, match="stage.module.class_balance must be a mapping of power, momentum, floor"):
        check_stage_options(cfg.stage)


def test_a_misspelt_key_of_the_shared_eval_group_is_named_too(tmp_path):
    cfg = stage_cfg("align", tmp_path, tmp_path, tmp_path / "run", "+eval.flipp=true")
    with pytest.raises(UserError, match=r"stage.module.eval.flipp is not an option. Did you mean stage.module.eval.flip\?"):
        check_stage_options(cfg.stage)


def test_the_toy_recipe_ends_every_adapting_stage_with_statistics_estimated_as_adabn_does():
    """One output rule for the chain and the baselines alike (issue #23): every stage that can refresh its BN
    statistics after its last step does so in the toy recipe."""
    from atp.stages.registry import stage_options

    refreshing = [name for name, cls in STAGES.items() if "bn_refresh_batches" in stage_options(cls)]
    assert {"align", "teach", "propagate"} <= set(refreshing)
    for name in refreshing:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = apply_per_stage(compose("train", overrides=["experiment=toy_cpu", f"stage={name}"]), [])
        assert cfg.stage.module.bn_refresh_batches is None, name
