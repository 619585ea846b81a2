"""Count, on a CPU, the calls of a training step that would stop the host for the device on a GPU.

A GPU host synchronisation is any call that needs a device tensor's *values* on the host: ``item``,
``bool``/``float``/``int``/``index``/``complex`` of a tensor, ``tolist``, ``numpy``, ``np.asarray``,
``cpu``/``to("cpu")``, ``torch.equal``, formatting (``repr``, ``str``, f-strings, ``%s``), ``x in tensor``, and
every op whose output shape depends on the data (``nonzero``, ``unique``, ``masked_select``, boolean indexing,
``bincount``, ``repeat_interleave`` without ``output_size``, one-argument ``where``). A blocking host-to-device
copy synchronises too (CUDA copies from pageable memory and then waits for the stream, which CUDA's sync-debug
mode reports): ``torch.tensor``/``as_tensor``/``asarray`` of host data with a device, ``host.to(<device>)``,
``host.cuda()`` and ``device.copy_(host)``, unless ``non_blocking=True``. On a CPU every tensor lives on the
host, so :class:`SyncProbe` tracks where each tensor *would* live on a GPU:

* a tensor the probe did not see being made (parameters, gradients, optimiser state, the batch, buffers)
  is a device tensor;
* a factory call (``torch.rand``, ``torch.tensor``, ``torch.randperm`` …) without a ``device=`` argument, or
  with ``device="cpu"``, makes a host tensor — on a GPU it would be on the CPU too (e.g. draws from a CPU
  ``torch.Generator``); a device passed as an object (``device=x.device``) is taken to be the GPU;
* any other result is a host tensor only if every tensor it was computed from is one, and no ``device=``
  or ``.to(<device>)`` moved it (``.to("cpu")``/``.cpu()`` of a device tensor is a counted read).

Reading a host tensor is no synchronisation and is not counted. The probe runs as a
``TorchFunctionMode`` over everything between ``on_train_batch_start`` and ``on_train_batch_end``
(callbacks, Lightning's manual-optimisation plumbing, the optimiser step) and records, per step, each
counted call with the innermost ``atp`` frame that led to it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from pytorch_lightning.callbacks import Callback
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__",
          "equal", "is_nonzero", "allclose", "__array__", "__repr__", "__format__", "__contains__"}
_FROM_HOST_DATA = {"tensor", "as_tensor", "asarray"}  # factories that copy their (host) data
_DATA_SHAPED = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount"}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _target_device(name: str, args, kwargs):
    """The device a call places its result on (``device=``, ``.to(<device>)``, ``.cuda()``), else None."""
    if name == "cuda":
        return "cuda"
    device = kwargs.get("device")
    if device is None and name == "to":
        device = next((a for a in args[1:] if isinstance(a, (str, torch.device))), None)
    return device


def _moves_to_device(name: str, args, kwargs) -> bool:
    """A device given as an object (``x.device``, a stage's ``self.device``): a GPU on a GPU. The string
    ``"cpu"`` is the only way code here names the host explicitly."""
    device = _target_device(name, args, kwargs)
    return device is not None and device != "cpu"


def _moves_to_host(name: str, args, kwargs) -> bool:
    return _target_device(name, args, kwargs) == "cpu"


def _non_blocking(name: str, args, kwargs) -> bool:
    """``non_blocking=True`` of ``to``/``cuda``/``copy_``, by keyword or by position (a ``True`` argument)."""
    return bool(kwargs.get("non_blocking")) or any(a is True for a in args[1:])


@dataclass
class SyncProbe(TorchFunctionMode):
    """The mode; ``calls`` lists ``(call, site)`` of every counted call while it is active."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self.host = WeakIdKeyDictionary()

    def is_device(self, tensor: torch.Tensor) -> bool:
        return tensor not in self.host

    def mark_host(self, tensors) -> None:
        for tensor in tensors:
            self.host[tensor] = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        self._check(name, args, kwargs, inputs)
        result = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        on_host = (all(not self.is_device(t) for t in inputs) and not _moves_to_device(name, args, kwargs)) \
            or _moves_to_host(name, args, kwargs)
        if on_host:
            self.mark_host(outputs)
        else:  # includes in-place ops that wrote device values into a host tensor
            for tensor in outputs:
                self.host.pop(tensor, None)
        return result

    def _check(self, name: str, args, kwargs, inputs) -> None:
        subject = args[0] if args and isinstance(args[0], torch.Tensor) else None
        counted = None
        if name in _READS and any(self.is_device(t) for t in inputs):
            counted = name
        elif name in _DATA_SHAPED and subject is not None and self.is_device(subject):
            counted = name
        elif name == "where" and len(args) + len(kwargs) == 1 and self.is_device(subject):
            counted = "where(condition)"
        elif name == "repeat_interleave" and "output_size" not in kwargs and any(self.is_device(t) for t in inputs):
            counted = name
        elif name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = [t for t in tree_flatten(args[1])[0] if isinstance(t, torch.Tensor)]
            if any(t.dtype == torch.bool and self.is_device(t) for t in index):
                counted = f"{name}[bool mask]"
        elif _moves_to_host(name, args, kwargs) and subject is not None and self.is_device(subject):
            counted = "to(cpu)"
        elif name in _FROM_HOST_DATA and _moves_to_device(name, args, kwargs) \
                and not any(self.is_device(t) for t in inputs):
            counted = f"{name}(device=)"
        elif name in ("to", "cuda") and subject is not None and not self.is_device(subject) \
                and self._to_device(name, args, kwargs) and not _non_blocking(name, args, kwargs):
            counted = f"{name}(device) of host"
        elif name == "copy_" and len(args) > 1 and isinstance(args[1], torch.Tensor) and self.is_device(args[0]) \
                and not self.is_device(args[1]) and not _non_blocking(name, args[1:], kwargs):
            counted = "copy_(host)"
        if counted:
            self.calls.append((counted, _site()))

    def _to_device(self, name: str, args, kwargs) -> bool:
        """Whether ``to``/``cuda`` puts its result on the device: a device argument, or ``to(<device tensor>)``."""
        other = args[1] if name == "to" and len(args) > 1 else kwargs.get("other")
        return _moves_to_device(name, args, kwargs) or (isinstance(other, torch.Tensor) and self.is_device(other))


def _site() -> str:
    """``module:function:line`` of the innermost frame in ``atp`` (else the innermost outside torch)."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        path = frame.f_code.co_filename
        if "/atp/" in path and "/tests/" not in path:
            return f"{path.rsplit('/atp/', 1)[1]}:{frame.f_code.co_name}"
        if fallback is None and "/torch/" not in path:
            fallback = f"{path.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return fallback or "?"


class CountSyncs(Callback):
    """Runs :class:`SyncProbe` over each training batch; ``per_step[global_step] = [(call, site), ...]``.

    Put it last among the callbacks: its ``on_train_batch_end`` then runs after every other callback's
    (Lightning moves only ModelCheckpoint behind it, whose periodic saves are check points anyway).
    """

    def __init__(self) -> None:
        self.per_step: dict[int, list[tuple[str, str]]] = {}
        self.logging_steps: set[int] = set()
        self._probe: SyncProbe | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        self._probe = SyncProbe()
        self._probe.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._probe.__exit__(None, None, None)
        self.per_step[self._step] = self._probe.calls
        if module.should_log():
            self.logging_steps.add(self._step)
        self._probe = None

    def on_exception(self, trainer, module, exception) -> None:
        if self._probe is not None:
            self._probe.__exit__(None, None, None)
            self._probe = None
