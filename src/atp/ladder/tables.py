"""The ladder's tables: the suite (every family × every method), per family mean ± std over seeds per stage,
share of the gap closed, per-class change, and the ablations against the full recipe.

Input records are one per evaluated step: ``{"family", "seed", "stage", "ablation", "student", "teacher"}``
where ``student``/``teacher`` are ``atp.evaluate`` metrics dicts (``teacher`` None when not reported) and
``ablation`` the ablation's name (None or absent for the recipe's own runs).
"""

from __future__ import annotations

import statistics

from atp.evaluation.stats import markdown_table, spread
from atp.ladder.plan import HELD_OUT, ORACLE

MIOU_SUBSET = "all19"
GAP_BASELINE = "source"  # source-only: 0 % of the gap to the oracle
CLASS_CHANGE = ("teach", "propagate")  # per-class IoU change reported from → to

DEFINITIONS = (
    "Target-val mIoU (all19) of the final checkpoint of every stage: the student weights, and the EMA "
    "teacher for stages whose teacher trains the student; mean ± sample standard deviation over seeds "
    "(n = seeds with a result). **Gap closed** = (stage − source) / (oracle − source) × 100 per seed "
    "(student mIoU), then mean ± std over the seeds that have a source result (a seed whose oracle does not "
    "beat its source is left out); a seed trained without an oracle of its own (`--oracle-seeds`, by default "
    "the first seed only) takes the mean oracle mIoU of its family. The **oracle** is the same network and source schedule trained on the "
    "target's train split with its labels: a diagnostic ceiling, never used for training or model "
    "selection. **Per-class change** Teach → Propagate: student IoU per class, Propagate − Teach per seed, "
    "mean over seeds, sorted from the largest gain down."
)


def _miou(metrics: dict | None) -> float | None:
    return None if metrics is None else float(metrics["mIoU"][MIOU_SUBSET])


def summarise_family(records: list[dict], stages: list[str]) -> dict:
    """The table of one family (``records`` of that family only; ablation runs are left out), a row per
    stage of ``stages`` in that order, then the oracle."""
    records = [r for r in records if r.get("ablation") is None]
    by_key = {(r["stage"], r["seed"]): r for r in records}
    seeds = list(dict.fromkeys(r["seed"] for r in records))  # in the order they ran
    oracles = [_miou(r["student"]) for r in records if r["stage"] == ORACLE]
    family_oracle = statistics.fmean(oracles) if oracles else None  # the ceiling of a seed without its own oracle
    rows = []
    for stage in [*stages, ORACLE]:
        student = {s: _miou(by_key[stage, s]["student"]) for s in seeds if (stage, s) in by_key}
        teacher = {s: _miou(by_key[stage, s].get("teacher")) for s in seeds if (stage, s) in by_key}
        teacher = {s: v for s, v in teacher.items() if v is not None}
        shares = {}
        for seed, value in student.items():
            base = _miou(by_key[GAP_BASELINE, seed]["student"]) if (GAP_BASELINE, seed) in by_key else None
            ceiling = _miou(by_key[ORACLE, seed]["student"]) if (ORACLE, seed) in by_key else family_oracle
            if base is not None and ceiling is not None and ceiling > base:
                shares[seed] = 100 * (value - base) / (ceiling - base)
        rows.append({
            "stage": stage,
            "student": _with_values(student), "teacher": _with_values(teacher), "gap_closed": _with_values(shares),
        })
    return {"seeds": seeds, "rows": rows, "per_class_change": _class_change(by_key, seeds)}


def _with_values(values: dict[int, float]) -> dict | None:
    summary = spread(list(values.values()))
    return None if summary is None else {**summary, "per_seed": {str(s): v for s, v in values.items()}}


def _class_change(by_key: dict, seeds: list[int]) -> dict | None:
    before, after = CLASS_CHANGE
    changes: dict[str, list[float]] = {}
    for seed in seeds:
        if (before, seed) not in by_key or (after, seed) not in by_key:
            continue
        old = by_key[before, seed]["student"]["per_class_iou"]
        new = by_key[after, seed]["student"]["per_class_iou"]
        for name, value in new.items():
            if value is not None and old.get(name) is not None:
                changes.setdefault(name, []).append(value - old[name])
    if not changes:
        return None
    classes = [{"class": name, "change": statistics.fmean(v), "n": len(v)} for name, v in changes.items()]
    classes.sort(key=lambda c: c["change"], reverse=True)
    return {"from": before, "to": after, "classes": classes}


def _cell(summary: dict | None, unit: str = "") -> str:
    if summary is None:
        return "–"
    std = "" if summary["std"] is None else f" ± {summary['std']:.2f}"
    return f"{summary['mean']:.2f}{std}{unit} ({summary['n']})"


def family_markdown(family: str, table: dict, role: str | None = None) -> str:
    """One family's stage table and its per-class change table."""
    held_out = "held-out; " if role == HELD_OUT else ""
    lines = [f"## {family} ({held_out}seeds {', '.join(map(str, table['seeds']))})", "",
             markdown_table(["stage", "student mIoU", "teacher mIoU", "gap closed"], [
                 [row["stage"], _cell(row["student"]), _cell(row["teacher"]), _cell(row["gap_closed"], " %")]
                 for row in table["rows"]])]
    change = table["per_class_change"]
    if change is None:
        lines += ["", f"Per-class IoU change {CLASS_CHANGE[0]} → {CLASS_CHANGE[1]}: no seed has both stages."]
    else:
        lines += ["", f"Per-class IoU change {change['from']} → {change['to']} (student, mean over seeds):", "",
                  markdown_table(["class", "Δ IoU", "n"],
                                 [[c["class"], f"{c['change']:+.2f}", str(c["n"])] for c in change["classes"]])]
    return "\n".join(lines)


def summarise_ablations(records: list[dict], ablations: list, families: list[str]) -> dict:
    """Per ablation and family: each retrained stage's student mIoU minus the full recipe's same stage, per seed
    (seeds where both exist), as ``{"mean", "std", "n", "per_seed"}``; ``final`` is the ablation's last stage."""
    recipe = {(r["family"], r["seed"], r["stage"]): _miou(r["student"]) for r in records if r.get("ablation") is None}
    variant = {(r["ablation"], r["family"], r["seed"], r["stage"]): _miou(r["student"])
               for r in records if r.get("ablation") is not None}
    seeds = list(dict.fromkeys(r["seed"] for r in records))
    summary = {}
    for ablation in ablations:
        per_family = {}
        for family in families:
            stages = {}
            for stage in ablation.stages:
                deltas = {seed: variant[ablation.name, family, seed, stage] - recipe[family, seed, stage]
                          for seed in seeds
                          if (ablation.name, family, seed, stage) in variant and (family, seed, stage) in recipe}
                stages[stage] = _with_values(deltas)
            if any(stages.values()):
                per_family[family] = {"stages": stages, "final": stages[ablation.stages[-1]]}
        summary[ablation.name] = {"removes": ablation.removes, "start": ablation.start,
                                  "stages": list(ablation.stages), "families": per_family}
    return summary


ABLATION_DEFINITIONS = (
    "Each ablation retrains the stages from the changed one to the end of the chain, starting from the rung "
    "named (the shared source model or the family's own ATP run of that stage, so nothing before the change is "
    "trained twice). Δ = the ablation's final stage minus the full recipe's same stage (student target-val "
    "mIoU, same family and seed), mean over seeds (n); a negative Δ means the removed part helps. `[I]` marks "
    "an option of the toy recipe that is ours, not the paper's."
)


def ablation_markdown(summary: dict, families: list[str], roles: dict[str, str | None]) -> str:
    """The ablation table: a row per ablation, Δ of its final stage per family and their mean."""
    shown = [f for f in families if any(f in a["families"] for a in summary.values())]
    if not shown:
        return ""
    rows = []
    for name, ablation in summary.items():
        cells, means = [], []
        for family in shown:
            final = ablation["families"].get(family, {}).get("final")
            cells.append(_delta(final))
            if final is not None:
                means.append(final["mean"])
        mean = f"{statistics.fmean(means):+.2f}" if len(means) == len(shown) else "–"
        rows.append([f"`{name}` ({ablation['removes']})", ablation["start"], *cells, mean])
    header = ["ablation (removes)", "starts from", *(_family_head(f, roles) for f in shown), "mean"]
    return "\n".join(["## Ablations", "", ABLATION_DEFINITIONS, "", markdown_table(header, rows)])


def _delta(summary: dict | None) -> str:
    if summary is None:
        return "–"
    std = "" if summary["std"] is None else f" ± {summary['std']:.2f}"
    return f"{summary['mean']:+.2f}{std} ({summary['n']})"


def _family_head(family: str, roles: dict[str, str | None]) -> str:
    return f"{family} (held-out)" if roles.get(family) == HELD_OUT else family



def suite_markdown(tables: dict[str, dict], roles: dict[str, str | None]) -> str:
    """One table of every family × every row (student mIoU, mean over seeds), the best method of a family in
    bold (the oracle excepted), then the mean of the development and of the held-out families."""
    if not tables:
        return ""
    stages = [row["stage"] for row in next(iter(tables.values()))["rows"]]
    lines = ["## Suite", "",
             "Student target-val mIoU, mean over seeds; per family the best method in bold (the oracle is a "
             "ceiling, not a method). Held-out families were registered before any tuning: recipe changes are "
             "decided on the development families and only reported on these.", ""]
    rows, means = [], {}
    for family, table in tables.items():
        values = {row["stage"]: row["student"]["mean"] if row["student"] else None for row in table["rows"]}
        methods = [v for s, v in values.items() if v is not None and s != ORACLE]
        best = max(methods) if methods else None
        cells = [("–" if v is None else f"**{v:.2f}**" if v == best and s != ORACLE else f"{v:.2f}")
                 for s, v in values.items()]
        role = roles.get(family) or "–"
        rows.append([family, role, *cells])
        for stage, value in values.items():
            means.setdefault(role, {}).setdefault(stage, []).append(value)
    for role, per_stage in means.items():
        count = len(next(iter(per_stage.values())))
        if count < 2:
            continue
        cells = [f"{statistics.fmean(v):.2f}" if None not in v else "–" for v in per_stage.values()]
        rows.append([f"mean of {count}", role, *cells])
    return "\n".join([*lines, markdown_table(["family", "role", *stages], rows)])


def ladder_markdown(header: list[str], tables: dict[str, dict], failures: list[str], roles: dict | None = None,
                    ablations: dict | None = None) -> str:
    """The whole ``ladder.md``: header lines, the suite table, the ablation table, the definitions, every
    family's tables, the failures."""
    roles = roles or {}
    parts = ["# ATP ladder", "", *header, ""]
    for section in (suite_markdown(tables, roles), ablation_markdown(ablations or {}, list(tables), roles)):
        if section:
            parts += [section, ""]
    parts += [DEFINITIONS, ""]
    for family, table in tables.items():
        parts += [family_markdown(family, table, roles.get(family)), ""]
    if failures:
        parts += ["## Failed", "", *[f"* {failure}" for failure in failures], ""]
    return "\n".join(parts)
