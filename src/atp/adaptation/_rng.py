"""Random draws on a generator's own device, moved to where the data lives.

Drawing on the generator's device keeps results reproducible for a given generator whatever device
the data is on; the move to the data device is a small non-blocking copy.
"""

from __future__ import annotations

import torch


def _source_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return device if generator is None else generator.device


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) float32 samples of `shape` on `device`."""
    values = torch.rand(shape, generator=generator, device=_source_device(generator, device))
    return to_device(values, device)


def integers(
    high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Integers in [0, high) of `shape` on `device` (int64)."""
    values = torch.randint(0, high, shape, generator=generator, device=_source_device(generator, device))
    return to_device(values, device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a small tensor without blocking the host (pinned staging for CPU → CUDA)."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
