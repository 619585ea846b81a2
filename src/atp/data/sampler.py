"""An endless, seeded, resumable index stream for iteration-based training."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


class InfiniteStreamSampler(DistributedSampler):
    """Yields ``(index, augmentation_seed)`` forever.

    Stream epoch ``e`` is ``torch.randperm(n)`` seeded with ``seed + e``, truncated so that batches
    never straddle two epochs (``drop_last``); under ``torch.distributed`` rank ``r`` takes every
    ``world``-th element. ``start`` skips that many samples of this rank's stream (resume). The
    augmentation seed depends only on ``(seed, stream, position)``, so a batch is the same whatever
    the number of workers and after a resume.

    It subclasses :class:`DistributedSampler` only so that Lightning does not wrap it in a
    ``DistributedSamplerWrapper`` (which needs a length); ``len()`` raises ``TypeError``, which
    Lightning reads as an infinite loader.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int = 0,
        start: int = 0,
        stream: str = "train",
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        Sampler.__init__(self)  # DistributedSampler.__init__ would require an initialised process group
        if dataset_size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = int(seed)
        self.start = int(start)
        self.stream = stream
        self.shuffle = True
        self.epoch = 0
        self._num_replicas = num_replicas
        self._rank = rank
        self.position = self.start  # samples handed out so far (runs ahead of training when workers prefetch)

    def _world(self) -> tuple[int, int]:
        if self._num_replicas is not None:
            return self._num_replicas, self._rank or 0
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def samples_per_epoch(self) -> int:
        """Samples one rank draws per stream epoch (a multiple of the batch size)."""
        world, _ = self._world()
        return (self.dataset_size // (self.batch_size * world)) * self.batch_size

    def __len__(self) -> int:
        raise TypeError("InfiniteStreamSampler is endless")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        world, rank = self._world()
        per_epoch = self.samples_per_epoch()
        if per_epoch == 0:
            raise ValueError(
                f"the {self.stream} stream has {self.dataset_size} samples, fewer than one batch of "
                f"{self.batch_size} per process ({world} processes); lower batch_size"
            )
        stream_key = zlib.crc32(self.stream.encode())
        epoch, offset = divmod(self.start, per_epoch)
        self.position = self.start
        while True:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=generator)[rank : per_epoch * world : world]
            for local in range(offset, per_epoch):
                position = epoch * per_epoch + local
                aug_seed = np.random.SeedSequence([self.seed, stream_key, rank, position]).generate_state(1)[
                    0
                ]
                self.position = position + 1
                yield int(order[local]), int(aug_seed)
            epoch, offset = epoch + 1, 0
