"""LightningModules, one per ATP stage (spec §4–§10)."""

from atp.stages.align import AlignStage
from atp.stages.base import SegStage
from atp.stages.distill import BlackBoxSource, DistillStage
from atp.stages.propagate import PropagateStage
from atp.stages.source import SourceStage
from atp.stages.teach import TeachStage

STAGES = {
    "source": SourceStage,
    "align": AlignStage,
    "teach": TeachStage,
    "propagate": PropagateStage,
    "distill": DistillStage,
}

__all__ = ["STAGES", "AlignStage", "BlackBoxSource", "DistillStage", "PropagateStage", "SegStage",
           "SourceStage", "TeachStage"]
