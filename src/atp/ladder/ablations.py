"""ATP's ablations as ladder rungs: each retrains part of the chain with one thing taken away.

An ablation starts from the final checkpoint of a rung the ladder trains anyway (the shared source model,
or a stage of the family's ATP chain: its AdaBN, Align or Teach run), so nothing before the change is
trained twice, and retrains the stages from the changed one to the end of the chain with the recipe's
options changed through ``per_stage`` overrides. Its table reports each retrained stage against the same
stage of the full recipe (same family, seed and evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ablation:
    """One ablation: what it removes, where it starts, the stages it retrains and the options it changes.

    ``changes`` are ``<stage>.<option>=<value>`` items (an option of ``stage.module``); they become
    ``++per_stage.<stage>.stage.module.<option>=<value>`` overrides of the recipe.
    """

    name: str
    removes: str
    start: str
    stages: tuple[str, ...]
    changes: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        """The ``atp.train`` overrides that make the recipe this ablation's."""
        out = []
        for change in self.changes:
            target, value = change.split("=", 1)
            stage, option = target.split(".", 1)
            out.append(f"++per_stage.{stage}.stage.module.{option}={value}")
        return out


#: Every ablation, in the order of the ladder's ablation table. The method's components first, then each
#: [I] option of the toy recipe (conf/experiment/toy_cpu.yaml) switched off on its own.
ABLATIONS: tuple[Ablation, ...] = (
    Ablation("no_align", "Align (Teach starts from the source model)", "source", ("teach", "propagate")),
    Ablation("no_align_adabn", "Align (Teach starts from the AdaBN model)", "adabn", ("teach", "propagate")),
    Ablation("align_plain_entropy", "Align's curriculum: plain entropy + unweighted diversity (γ = 0, α = 0)",
             "source", ("align", "teach", "propagate"), ("align.cel_gamma=0", "align.div_alpha=0")),
    Ablation("teach_no_negatives", "Teach's negative pseudo-labels (neg_weight = 0)", "align",
             ("teach", "propagate"), ("teach.neg_weight=0",)),
    Ablation("propagate_no_classmix", "Propagate's ClassMix (mix_enabled = false)", "teach", ("propagate",),
             ("propagate.mix_enabled=false",)),
    Ablation("propagate_no_prototypes", "Propagate's prototype contrastive loss (scl.weight = 0)", "teach",
             ("propagate",), ("propagate.scl.weight=0",)),
    Ablation("align_trained_decoder", "[I] Align's frozen decoder (freeze_decoder = false)", "source",
             ("align", "teach", "propagate"), ("align.freeze_decoder=false",)),
    Ablation("align_uniform_diversity", "[I] Align's diversity toward the source prior (div_toward = uniform)",
             "source", ("align", "teach", "propagate"), ("align.div_toward=uniform",)),
    Ablation("teach_no_threshold", "[I] Teach's positive threshold (pos_threshold = null)", "align",
             ("teach", "propagate"), ("teach.pos_threshold=null",)),
    Ablation("no_class_balance", "[I] class-balanced pseudo-labels in Teach and Propagate (power = 0)", "align",
             ("teach", "propagate"), ("teach.class_balance.power=0", "propagate.class_balance.power=0")),
    Ablation("no_prior_correction", "[I] the prior correction in Teach and Propagate (strength = 0)", "align",
             ("teach", "propagate"), ("teach.prior_correction.strength=0", "propagate.prior_correction.strength=0")),
    Ablation("no_bn_refresh", "[I] the BN refresh after Align's, Teach's and Propagate's last step "
             "(bn_refresh_batches = 0)", "source", ("align", "teach", "propagate"),
             ("align.bn_refresh_batches=0", "teach.bn_refresh_batches=0", "propagate.bn_refresh_batches=0")),
)


def get_ablations(names: list[str] | None = None) -> list[Ablation]:
    """The ablations called ``names`` (all when None), in table order; ValueError naming an unknown one."""
    if names is None:
        return list(ABLATIONS)
    known = {a.name: a for a in ABLATIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"no such ablation: {', '.join(unknown)}; choose from {', '.join(known)}")
    return [a for a in ABLATIONS if a.name in names]
