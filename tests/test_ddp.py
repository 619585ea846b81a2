"""DDP invariants of Teach and Propagate on 2 CPU processes (gloo), checked at the module level.

A full Lightning DDP run re-launches the entry script per rank, which is too slow for the 2 shared
CPU cores of the test machine; these tests run the pieces DDP touches (student gradients → EMA
teacher, prototype statistics, entropy ranking) under a real ``torch.distributed`` gloo group.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from atp.adaptation import EMATeacher, PrototypeEstimator, read_split
from atp.reliability import rank_split

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
