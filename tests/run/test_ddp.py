"""DDP on 2 CPU processes (gloo): the invariants of Teach and Propagate.

``test_teach_and_propagate_invariants_under_ddp`` runs the pieces DDP touches (student gradients →
EMA teacher, prototype statistics, entropy ranking) under a bare ``torch.distributed`` group and
compares them with one process on the union batch. ``test_real_ddp_run`` runs the real entry point,
``trainer=ddp trainer.accelerator=cpu trainer.devices=2`` (Lightning re-launches the command for rank
1), through ``tests/helpers/ddp_probe.py``, which records each rank's state and every file each rank writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from atp.adaptation import EMATeacher, PrototypeEstimator
from atp.data.splits import read_split
from atp.run import run_stage
from atp.run.split import rank_split
from tests.helpers.stages import TINY, stage_cfg

ROOT = Path(__file__).resolve().parents[2]

WORLD = 2
STEPS = 3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))


def _batches(step: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s images at ``step`` (each rank sees different images)."""
    generator = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(2, 3, 8, 8, generator=generator)


def _teach_steps(model: nn.Module, images_of_step, teacher: EMATeacher) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        if step > 0:
            teacher.update(model.module if isinstance(model, DistributedDataParallel) else model, step, 0.9)
        optimizer.zero_grad()
        images = images_of_step(step)
        target = teacher(images).argmax(1)  # pseudo-labels from the EMA teacher, as in Teach
        nn.functional.cross_entropy(model(images), target).backward()
        optimizer.step()


class _Images(torch.utils.data.Dataset):
    def __init__(self, count: int = 11) -> None:
        self.images = torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(7))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"img": self.images[index], "name": f"img_{index:02d}.png"}


def _collate(samples: list[dict]) -> dict:
    return {"img": torch.stack([s["img"] for s in samples]), "name": [s["name"] for s in samples]}


def _prototype_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    return torch.randn(2, 4, 3, 3, generator=generator), torch.randint(0, 4, (2, 3, 3), generator=generator)


def _worker(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        # Teach: DDP students with identical init and different data; EMA teacher from the student.
        student = DistributedDataParallel(_net())
        teacher = EMATeacher(student.module)
        _teach_steps(student, lambda step: _batches(step, rank), teacher)
        torch.save(teacher.state_dict(), Path(tmp) / f"teacher{rank}.pt")

        # Propagate: prototype statistics all-reduced over the ranks' batches (two updates).
        estimator = PrototypeEstimator(num_classes=5, feat_dim=4)
        for _ in range(2):
            estimator.update(*_prototype_inputs(rank))
        torch.save(estimator.state_dict(), Path(tmp) / f"prototypes{rank}.pt")

        # Entropy ranking: sharded by rank, gathered, written by rank 0.
        loader = DataLoader(_Images(), batch_size=3, collate_fn=_collate)
        rank_split(_net(), loader, Path(tmp) / "split_ddp", easy_ratio=0.3)
        (Path(tmp) / f"ranked{rank}").write_text("done")  # after the barrier: the split must exist
        assert (Path(tmp) / "split_ddp" / "hard.txt").is_file()
    finally:
        dist.destroy_process_group()


def _run_world(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=WORLD, start_method="spawn", join=True)


def test_teach_and_propagate_invariants_under_ddp(tmp_path):
    _run_world(tmp_path)

    # Teacher weights identical on all ranks, and equal to one process training on the union batch.
    teachers = [torch.load(tmp_path / f"teacher{r}.pt") for r in range(WORLD)]
    for name in teachers[0]:
        assert torch.equal(teachers[0][name], teachers[1][name]), name
    single = _net()
    single_teacher = EMATeacher(single)
    _teach_steps(single, lambda step: torch.cat([_batches(step, r) for r in range(WORLD)]), single_teacher)
    for name, value in single_teacher.state_dict().items():
        torch.testing.assert_close(teachers[0][name], value, rtol=1e-5, atol=1e-6, msg=name)

    # Prototype statistics: identical on the ranks and equal to a single-process update on the union.
    protos = [torch.load(tmp_path / f"prototypes{r}.pt") for r in range(WORLD)]
    union = PrototypeEstimator(num_classes=5, feat_dim=4)
    feats, labels = zip(*(_prototype_inputs(r) for r in range(WORLD)), strict=True)
    for _ in range(2):
        union.update(torch.cat(feats), torch.cat(labels))
    for name, value in union.state_dict().items():
        assert torch.equal(protos[0][name], protos[1][name]), name
        torch.testing.assert_close(protos[0][name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert union.count.sum() > 0 and (union.count[4] == 0)  # class 4 never labelled: stays empty

    # Entropy split: the same with 1 and 2 processes, written once.
    loader = DataLoader(_Images(), batch_size=3, collate_fn=_collate)
    rank_split(_net(), loader, tmp_path / "split_single", easy_ratio=0.3)
    assert read_split(tmp_path / "split_ddp") == read_split(tmp_path / "split_single")
    easy, hard = read_split(tmp_path / "split_ddp")
    assert len(easy) == 3 and len(hard) == 8 and not set(easy) & set(hard)
    assert all((tmp_path / f"ranked{r}").is_file() for r in range(WORLD))


# ---------------------------------------------------------------------- the real entry point
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


@pytest.fixture(scope="module")
def source_ckpt(data_toy_root, module_tmp) -> Path:
    out = module_tmp
    run_stage(stage_cfg("source", data_toy_root, out, out / "src", "trainer.max_steps=2"), out / "src")
    return out / "src" / "checkpoints" / "final.ckpt"


def _probe_run(tmp_path: Path, *args: str, module: str = "tests.helpers.ddp_probe") -> subprocess.CompletedProcess:
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    env = {**os.environ, "ATP_PROBE_DIR": str(probe), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


def _written(probe: Path, rank: int, root: Path) -> set[str]:
    """Files under ``root`` that rank ``rank`` wrote, renamed onto or removed (paths relative to root)."""
    paths = {Path(line.split("\t", 1)[1]) for line in (probe / f"writes-rank{rank}.txt").read_text().splitlines()}
    return {str(p.relative_to(root)) for p in paths if p.is_relative_to(root)}


def _differing(first: dict, second: dict) -> list[str]:
    assert first.keys() == second.keys()
    return [k for k in first if not torch.equal(first[k], second[k])]


@pytest.mark.parametrize("stage", ["teach", "propagate"])
def test_real_ddp_run(stage, source_ckpt, data_toy_root, tmp_path):
    out, probe, steps = tmp_path / "out", tmp_path / "probe", 3
    result = _probe_run(
        tmp_path, f"stage={stage}", *TINY, *DDP, f"paths.data_dir={data_toy_root}", f"paths.output_dir={out}",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", f"init_from={source_ckpt}",
        # a learning rate that moves the weights in 3 steps (the toy recipe warms up over 20 steps)
        "stage.module.optim.lr=1e-3", "stage.module.schedule.warmup_steps=0",
        # Propagate: the prototype loss from step 1; 1 image per stream (the toy split has 2-3 easy images)
        *(["stage.module.scl.start_step=1", "data.batch_size=1"] if stage == "propagate" else []),
    )
    assert result.returncode == 0, result.stderr[-4000:]

    # One run dir, the default timestamped one, shared by both ranks (fixed before rank 1 starts).
    run_dirs = [p.parent for p in out.rglob("manifest.json")]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0].resolve()
    assert run_dir.parent == (out / "runs" / "toy" / stage).resolve()
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1's log, beside rank 0's

    ranks = [torch.load(probe / f"{stage}-rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 and r["step"] == steps for r in ranks)
    # Each rank trained on its own share of every stream: at no step do the ranks see the same image.
    batch = len(ranks[0]["names"]) // steps
    for step in range(steps):
        mine, theirs = (set(r["names"][step * batch:(step + 1) * batch]) for r in ranks)
        assert mine and not mine & theirs, (step, mine, theirs)

    # The EMA teacher (and the student) are the same on both ranks, except BatchNorm running statistics,
    # which are per process (sync_batchnorm=false); and the teacher has moved away from the source model.
    source = torch.load(source_ckpt, weights_only=False)["state_dict"]
    for part, prefix in (("teacher", "model."), ("student", "")):
        first, second = ranks[0][part], ranks[1][part]
        differing = _differing(first, second)
        assert all(k.endswith(BN_STATISTICS) for k in differing), differing[:5]
        moved = [k for k in first if not k.endswith(BN_STATISTICS)
                 and not torch.equal(first[k], source[f"student.{k.removeprefix(prefix)}"])]
        assert len(moved) > len(first) // 2, (part, len(moved), len(first))
    assert ranks[0]["val"] and ranks[0]["val"] == ranks[1]["val"]  # validation metrics are all-reduced
    if stage == "propagate":  # prototype statistics: identical, and filled
        assert not _differing(ranks[0]["prototypes"], ranks[1]["prototypes"])
        assert ranks[0]["prototypes"]["count"].sum() > 0

    # Only rank 0 writes the run dir: manifest, config, split, checkpoints, logs. Rank 1 writes its own
    # log file and the writability probe (removed again), nothing else.
    rank1 = {p for p in _written(probe, 1, run_dir) if not p.startswith(".write-probe-")}
    assert rank1 == {"train_ddp_process_1.log"}, rank1
    expected = {"manifest.json", "config.yaml", "checkpoints/last.ckpt", "checkpoints/final.ckpt"}
    if stage == "propagate":
        expected |= {"splits/easy.txt", "splits/hard.txt"}
    assert expected <= _written(probe, 0, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == steps


@pytest.mark.slow
def test_real_ddp_chain_job(data_toy_root, tmp_path):
    """stage=chain on 2 processes: every stage hands over under DDP; rank 1 writes no manifest or summary."""
    job = (tmp_path / "job").resolve()
    result = _probe_run(tmp_path, "stage=chain", *TINY, *DDP, "data.batch_size=1", f"paths.data_dir={data_toy_root}",
                        f"paths.output_dir={tmp_path / 'out'}", "trainer.max_steps=2", "trainer.val_check_interval=2",
                        f"hydra.run.dir={job}")
    assert result.returncode == 0, result.stderr[-4000:]
    stages = ("source", "align", "teach", "propagate")
    for index, stage in enumerate(stages):
        manifest = json.loads((job / f"{index}_{stage}" / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["steps"] == 2, stage
        ranks = [torch.load(tmp_path / "probe" / f"{stage}-rank{r}.pt", weights_only=False) for r in range(2)]
        parts = [p for p in ("student", "teacher", "prototypes") if p in ranks[0]]
        assert all(k.endswith(BN_STATISTICS) for p in parts for k in _differing(ranks[0][p], ranks[1][p])), stage
    rank1 = {p for p in _written(tmp_path / "probe", 1, job) if ".write-probe-" not in p}
    assert rank1 == {"train_ddp_process_1.log"}, rank1
    assert {"results.md", "results.json"} <= _written(tmp_path / "probe", 0, job)


def test_multirun_sweep_refuses_to_start_ddp_processes(tmp_path):
    """Lightning's re-run of a -m command line would start a second sweep in another dir: refused early."""
    result = _probe_run(tmp_path, "-m", "stage=source", *TINY, *DDP, f"paths.output_dir={tmp_path / 'out'}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}", module="atp.train")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "a -m sweep cannot start several processes" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("manifest.json"))
