"""LightningModules, one per ATP stage (spec §4–§10), and the registry that finds them.

``STAGES`` maps each stage name to its class; it is filled from the modules of this package
(see :mod:`atp.stages.registry`), so a new stage is one module here plus ``conf/stage/<name>.yaml``.
"""

from atp.stages.base import SegStage
from atp.stages.registry import (
    STAGES,
    build_stage_module,
    check_stage_options,
    default_chain,
    get_stage,
    stage_options,
)

__all__ = ["STAGES", "SegStage", "build_stage_module", "check_stage_options", "default_chain", "get_stage",
           "stage_options"]
