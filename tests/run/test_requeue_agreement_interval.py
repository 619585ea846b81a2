"""Under DDP the requeue agreement (an all-reduce and a host read-back) runs every ``check_every`` steps only."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch

from atp.callbacks import signals
from atp.errors import UserError


def test_agreement_runs_every_check_every_steps(monkeypatch):
    reductions = []
    monkeypatch.setattr(signals, "distributed_world", lambda: (2, 0))
    monkeypatch.setattr(signals.dist, "all_reduce", lambda flag, op: reductions.append(int(flag.item())))
    stopped = []
    monkeypatch.setattr(signals, "stop_as_on_sigterm", lambda trainer: stopped.append(trainer.global_step))
    callback = signals.RequeueSignal(signal.SIGUSR2, check_every=4)
    trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    for step in range(1, 10):  # global_step after each step; the signal arrives during step 5
        trainer.global_step = step
        callback.received = callback.received or step == 5
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert reductions == [0, 1]  # after steps 4 and 8 only
    assert stopped == [8]  # the first agreement after the signal


def test_check_every_must_be_positive():
    with pytest.raises(UserError, match="check_every=0"):
        signals.RequeueSignal(signal.SIGUSR2, check_every=0)
