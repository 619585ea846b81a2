"""The sync probe itself (tests/helpers/sync_probe.py): every kind of host synchronisation a GPU would stall on is
counted once, under its name, and the same operations done without a sync are not counted.

A tensor made outside the probe (``dev``, like a parameter or the batch) is a device tensor; ``dev.device`` is
an object and so stands for the GPU; ``torch.rand(..)`` without a device is host memory (on a GPU too).
"""

import numpy as np
import pytest
import torch

from tests.helpers.sync_probe import SyncProbe

#: (what the step does, the name the probe counts it under)
SYNCS = {
    "item": (lambda dev, host: dev.sum().item(), "item"),
    "bool": (lambda dev, host: bool(dev.sum() > 0), "__bool__"),
    "float": (lambda dev, host: float(dev[0]), "__float__"),
    "int": (lambda dev, host: int(dev[0]), "__int__"),
    "index": (lambda dev, host: [0, 1][dev[0].long()], "__index__"),
    "complex": (lambda dev, host: complex(dev[0]), "__complex__"),
    "tolist": (lambda dev, host: dev.tolist(), "tolist"),
    "numpy": (lambda dev, host: dev.numpy(), "numpy"),
    "np.asarray": (lambda dev, host: np.asarray(dev), "__array__"),
    "cpu": (lambda dev, host: dev.cpu(), "cpu"),
    "to(cpu)": (lambda dev, host: dev.to("cpu"), "to(cpu)"),
    "equal": (lambda dev, host: torch.equal(dev, dev), "equal"),
    "allclose": (lambda dev, host: torch.allclose(dev, dev), "allclose"),
    "nonzero": (lambda dev, host: dev.nonzero(), "nonzero"),
    "unique": (lambda dev, host: torch.unique(dev), "unique"),
    "masked_select": (lambda dev, host: dev.masked_select(dev > 0), "masked_select"),
    "bincount": (lambda dev, host: torch.bincount(dev.long(), minlength=3), "bincount"),
    "bool mask": (lambda dev, host: dev[dev > 0], "__getitem__[bool mask]"),
    "where(condition)": (lambda dev, host: torch.where(dev > 0), "where(condition)"),
    "repeat_interleave": (lambda dev, host: dev.repeat_interleave(dev.long()), "repeat_interleave"),
    # formatting and membership read the values
    "repr": (lambda dev, host: repr(dev), "__repr__"),
    "str": (lambda dev, host: str(dev), "__repr__"),
    "%s": (lambda dev, host: "%s" % (dev,), "__repr__"),  # noqa: UP031 (logging's formatting)
    "str.format": (lambda dev, host: "{}".format(dev), "__format__"),  # noqa: UP032
    "f-string": (lambda dev, host: f"{dev}", "__format__"),
    "format 0-d": (lambda dev, host: f"{dev.sum():.3f}", "__format__"),
    "in": (lambda dev, host: 1.0 in dev, "__contains__"),
    # blocking host-to-device copies
    "tensor(device=)": (lambda dev, host: torch.tensor([1.0, 2.0], device=dev.device), "tensor(device=)"),
    "tensor(host, device=)": (lambda dev, host: torch.tensor(host, device=dev.device), "tensor(device=)"),
    "as_tensor(device=)": (lambda dev, host: torch.as_tensor([1.0], device=dev.device), "as_tensor(device=)"),
    "asarray(device=)": (lambda dev, host: torch.asarray([1.0], device=dev.device), "asarray(device=)"),
    "host.to(device)": (lambda dev, host: host.to(dev.device), "to(device) of host"),
    "host.to(device tensor)": (lambda dev, host: host.to(dev), "to(device) of host"),
    "host.to(device=)": (lambda dev, host: host.to(device=dev.device, dtype=torch.float64), "to(device) of host"),
    "device.copy_(host)": (lambda dev, host: dev.clone().copy_(host), "copy_(host)"),
}

#: the same kinds of operation where no sync happens
SYNC_FREE = {
    "host item": lambda dev, host: host.sum().item(),
    "host bool": lambda dev, host: bool(host.sum() > 0),
    "host tolist": lambda dev, host: host.tolist(),
    "host repr": lambda dev, host: repr(host),
    "host f-string": lambda dev, host: f"{host.sum():.3f}",
    "in host": lambda dev, host: 1.0 in host,
    "device arithmetic": lambda dev, host: (dev * 2).softmax(0).argmax(),
    "masked_fill": lambda dev, host: dev.masked_fill(dev > 0, 0.0),
    "where(c, x, y)": lambda dev, host: torch.where(dev > 0, dev, 0.0),
    "repeat_interleave(output_size=)": lambda dev, host: dev.repeat_interleave(dev.long(), output_size=3),
    "bincount of host": lambda dev, host: torch.bincount((host * 3).long(), minlength=3),
    "tensor on the host": lambda dev, host: torch.tensor([1.0], device="cpu"),
    "tensor without device": lambda dev, host: torch.tensor([1.0]),
    "tensor of a device tensor": lambda dev, host: torch.as_tensor(dev, device=dev.device),
    "factory on the device": lambda dev, host: torch.zeros(2, device=dev.device) + torch.ones(2, device=dev.device),
    "host.to(device, non_blocking)": lambda dev, host: host.to(dev.device, non_blocking=True),
    "copy_(host, non_blocking)": lambda dev, host: dev.clone().copy_(host, non_blocking=True),
    "device.to(device)": lambda dev, host: dev.to(dev.device),
    "device.to(dtype)": lambda dev, host: dev.to(torch.float64),
    "host.to(host)": lambda dev, host: host.to("cpu"),
    "host.copy_(host)": lambda dev, host: host.clone().copy_(host),
    "shape and len": lambda dev, host: (dev.shape[0], len(dev), dev.dim(), dev.numel()),
}


def _run(action) -> list[str]:
    dev = torch.ones(3)  # made outside the probe: a parameter or batch
    with SyncProbe() as probe:
        host = torch.rand(3, generator=torch.Generator().manual_seed(0))  # a CPU generator's draw
        action(dev, host)
    return [call for call, _ in probe.calls]


@pytest.mark.parametrize("kind", list(SYNCS))
def test_each_kind_of_sync_is_counted_once(kind):
    action, name = SYNCS[kind]
    assert _run(action) == [name]


@pytest.mark.parametrize("kind", list(SYNC_FREE))
def test_sync_free_operations_are_not_counted(kind):
    assert _run(SYNC_FREE[kind]) == []


def test_probe_follows_values_between_host_and_device():
    """Host values stay host through host arithmetic and become device values once mixed with device ones."""
    device_tensor = torch.ones(3)
    with SyncProbe() as probe:
        host = torch.rand(2, generator=torch.Generator().manual_seed(0))
        host.tolist()
        (host * 2).sum().item()
        bool(device_tensor.sum() > 0)  # 1
        device_tensor[device_tensor > 0]  # 2: boolean mask
        torch.unique(device_tensor)  # 3
        mixed = host[:1] + device_tensor  # host values moved onto the device
        float(mixed[0])  # 4
        placed = torch.zeros(2, device=device_tensor.device)  # placed beside a device tensor: on the GPU
        placed.cpu()  # 5
        torch.zeros(2, device="cpu").cpu()  # placed on the host by name
        torch.bincount(device_tensor.long(), minlength=3)  # 6
        moved = host.to(device_tensor.device, non_blocking=True)  # no wait, but a device tensor from now on
        moved.sum().item()  # 7
    assert [call for call, _ in probe.calls] == ["__bool__", "__getitem__[bool mask]", "unique", "__float__",
                                                 "cpu", "bincount", "item"]
