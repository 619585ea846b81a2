"""Mean-teacher EMA copy of the student (§4.2, #18)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["ema_alpha", "is_stochastic_layer", "EMATeacher"]


def ema_alpha(step: int, max_alpha: float = 0.999) -> float:
    """α_t = min(1 − 1/(t+1), max_alpha): 0 at t=0 (copy), 0.5 at t=1, capped from t=999 on."""
    return min(1.0 - 1.0 / (step + 1), max_alpha)


def is_stochastic_layer(module: nn.Module) -> bool:
    """Dropout of any kind, timm's DropPath, or anything DropPath-like (a `drop_prob` attribute)."""
    return (
        isinstance(module, _DropoutNd) or "DropPath" in type(module).__name__ or hasattr(module, "drop_prob")
    )


class EMATeacher(nn.Module):
    """A frozen deep copy of the student, averaged with `update` and run with `forward`/`predict`.

    The copy is the registered submodule `model`, so an owner holding this as `teacher` saves it under
    `teacher.model.*`. Its parameters never require grad; keep them out of the optimiser.
    """

    def __init__(self, student: nn.Module, bn_train_mode: bool = True) -> None:
        super().__init__()
        self.bn_train_mode = bn_train_mode
        self.model = copy.deepcopy(student)
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def reset_from(self, student: nn.Module) -> None:
        """Copy every parameter and buffer of `student` (start of a stage)."""
        own = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        theirs = dict(student.named_parameters()) | dict(student.named_buffers())
        if own.keys() != theirs.keys():
            raise ValueError(f"teacher/student mismatch: {sorted(own.keys() ^ theirs.keys())[:10]}")
        names = list(own)
        torch._foreach_copy_([own[n] for n in names], [theirs[n].detach() for n in names])

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, max_alpha: float = 0.999) -> None:
        """θ' ← α_t θ' + (1 − α_t) θ on parameters only; step 0 copies the student (reset_from)."""
        if step == 0:
            self.reset_from(student)
            return
        teacher_params = list(self.model.parameters())
        student_params = [p.detach() for p in student.parameters()]
        if len(teacher_params) != len(student_params):
            raise ValueError("teacher and student have different parameter lists")
        # lerp(θ', θ, 1 − α) = α θ' + (1 − α) θ
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - ema_alpha(step, max_alpha))

    @contextmanager
    def teacher_mode(self) -> Iterator[nn.Module]:
        """No grad, BN in train mode (batch statistics; eval mode when ``bn_train_mode`` is false),
        dropout and drop-path off; restores modes.

        Yields the wrapped model, e.g. `with teacher.teacher_mode() as net: feats = net.extract(x)`.
        """
        saved = [(module, module.training) for module in self.model.modules()]
        try:
            for module, _ in saved:
                is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
                module.training = not is_stochastic_layer(module) and (self.bn_train_mode or not is_bn)
            with torch.no_grad():
                yield self.model
        finally:
            for module, training in saved:
                module.training = training

    def forward(self, *args, **kwargs):
        """The wrapped model's forward in teacher mode."""
        with self.teacher_mode() as net:
            return net(*args, **kwargs)

    def predict(self, *args, **kwargs):
        """The wrapped model's `predict` (e.g. `Segmentor.predict(x, size)`) in teacher mode; else forward."""
        with self.teacher_mode() as net:
            return getattr(net, "predict", net)(*args, **kwargs)
