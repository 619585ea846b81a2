"""The Rich progress bar of a stage: named after the stage and counted in steps, not epochs."""

from __future__ import annotations

from pytorch_lightning.callbacks import RichProgressBar


class StageProgressBar(RichProgressBar):
    """``teach (toy) steps ━━━━ 120/200`` instead of Lightning's ``Epoch 0/-2`` (stages are step-based)."""

    def __init__(self, stage: str, dataset: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = f"{stage} ({dataset})" if dataset else stage

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's text
        return f"{self.label} steps"

    @property
    def validation_description(self) -> str:
        return f"{self.label} target val"
