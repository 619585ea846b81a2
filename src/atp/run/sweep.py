"""The sweep's ``results.md``/``results.json`` once every job of a ``-m`` sweep has finished.

A Hydra callback (``hydra.callbacks.sweep_summary`` in ``conf/train.yaml``): ``on_multirun_end`` runs once,
in the process that launched the sweep, after all jobs — also when a launcher ran them elsewhere (SLURM
jobs of ``stage=chain``, whose own summaries only cover their job dir). Single-stage jobs also rewrite the
sweep's summary as each finishes (so a sweep stopped half-way still has one); parallel jobs may then
overwrite each other's partial copy (each write is atomic), and this final write is the complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from atp.evaluation.summary import write_summary


class SweepSummary(Callback):
    """Summarise every manifest under the sweep dir when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            write_summary(sweep_dir)
