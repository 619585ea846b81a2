"""stage=adabn: BatchNorm statistics become the cumulative average over target batches; no weight moves."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from atp.stages import build_stage_module, get_stage
from tests.helpers.stages import stage_cfg


def _batch_statistics(model: torch.nn.Module, batches: list[dict]) -> dict[str, list[tuple]]:
    """Per BatchNorm: (mean, unbiased var) of its input in each batch, BN layers in train mode only."""
    model.eval()
    seen: dict[str, list[tuple]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            module.train()

            def record(mod, args, name=name):
                x = args[0].double()
                dims = [d for d in range(x.dim()) if d != 1]
                seen.setdefault(name, []).append((x.mean(dims), x.var(dims, unbiased=True)))

            hooks.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        for batch in batches:
            feats = model.extract(batch["img"])
            model.decode(feats)
            model.project(feats)
    for hook in hooks:
        hook.remove()
    return seen


def test_adabn_sets_bn_statistics_to_the_target_average_and_changes_no_weight(tmp_path):
    cfg = stage_cfg("adabn", tmp_path, tmp_path, tmp_path / "run", "stage.module.num_batches=3")
    assert get_stage("adabn").predecessors == ("source",) and get_stage("adabn").chain_position is None
    model = instantiate(cfg.model)
    source = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    batches = [{"img": 2 + 3 * torch.randn(2, 3, 32, 32, generator=generator), "name": [f"{i}a", f"{i}b"]}
               for i in range(5)]
    module = build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed)
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))  # the batches as they are

    assert trainer.global_step == 3  # num_batches ends the stage before max_steps
    optimizer = trainer.optimizers[0]
    assert not optimizer.state  # no optimiser state was ever created
    after = dict(module.student.named_parameters())
    for name, param in source.named_parameters():
        assert torch.equal(param, after[name]), name
    expected = _batch_statistics(copy.deepcopy(source), batches[:3])
    norms = {n: m for n, m in module.student.named_modules() if isinstance(m, _BatchNorm)}
    assert set(expected) == set(norms) and any(n.startswith("decode_head") for n in norms) \
        and any(n.startswith("proj_head") for n in norms)
    for name, norm in norms.items():
        means, variances = zip(*expected[name], strict=True)
        assert int(norm.num_batches_tracked) == 3
        torch.testing.assert_close(norm.running_mean.double(), torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(norm.running_var.double(), torch.stack(variances).mean(0), rtol=1e-4, atol=1e-5)
        assert not torch.equal(norm.running_mean, dict(source.named_modules())[name].running_mean)


def test_adabn_makes_one_pass_over_the_target_train_set_by_default(tmp_path):
    cfg = stage_cfg("adabn", tmp_path, tmp_path, tmp_path / "run")
    assert cfg.stage.module.num_batches is None
    module = build_stage_module(cfg.stage, model=instantiate(cfg.model), num_classes=cfg.dataset.num_classes,
                                seed=cfg.seed)
    images = [{"img": torch.randn(3, 32, 32), "name": str(i)} for i in range(7)]  # 7 images at 2 a batch
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader(images, batch_size=2))
    assert module.num_batches == 4 and trainer.global_step == 4  # ceil(7 / 2)
