"""The run layer: one stage end to end (:func:`run_stage`), split by concern.

``stage`` the sequence of steps · ``resume`` which state to resume from · ``init_weights`` the weights a
stage starts from · ``module`` the LightningModule · ``manifest`` the hand-off record · ``callbacks`` the
``conf/callbacks`` group · ``checkpoint_io`` atomic checkpoint files · ``divergence`` the divergence guard ·
``signals`` SIGTERM and requeue · ``split`` the (sharded) easy/hard ranking · ``distributed`` main-process
writes · ``lightning_private`` every use of Lightning's private API.
"""

from atp.run.stage import run_stage

__all__ = ["run_stage"]
