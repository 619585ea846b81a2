"""The ladder's tables: per family, mean ± std over seeds per stage, share of the gap closed, per-class change.

Input records are one per evaluated step: ``{"family", "seed", "stage", "student", "teacher"}`` where
``student``/``teacher`` are ``atp.evaluate`` metrics dicts (``teacher`` None when not reported).
"""

from __future__ import annotations

import statistics

from atp.ladder.plan import ORACLE
from atp.stats import spread

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
    """The table of one family (``records`` of that family only)."""
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


def family_markdown(family: str, table: dict) -> str:
    """One family's stage table and its per-class change table."""
    lines = [f"## {family} (seeds {', '.join(map(str, table['seeds']))})", "",
             "| stage | student mIoU | teacher mIoU | gap closed |", "|---|---|---|---|"]
    for row in table["rows"]:
        lines.append(f"| {row['stage']} | {_cell(row['student'])} | {_cell(row['teacher'])} | "
                     f"{_cell(row['gap_closed'], ' %')} |")
    change = table["per_class_change"]
    if change is None:
        lines += ["", f"Per-class IoU change {CLASS_CHANGE[0]} → {CLASS_CHANGE[1]}: no seed has both stages."]
    else:
        lines += ["", f"Per-class IoU change {change['from']} → {change['to']} (student, mean over seeds):", "",
                  "| class | Δ IoU | n |", "|---|---|---|"]
        lines += [f"| {c['class']} | {c['change']:+.2f} | {c['n']} |" for c in change["classes"]]
    return "\n".join(lines)


def ladder_markdown(header: list[str], tables: dict[str, dict], failures: list[str]) -> str:
    """The whole ``ladder.md``: header lines, the definitions, every family's tables, the failures."""
    parts = ["# ATP ladder", "", *header, "", DEFINITIONS, ""]
    for family, table in tables.items():
        parts += [family_markdown(family, table), ""]
    if failures:
        parts += ["## Failed", "", *[f"* {failure}" for failure in failures], ""]
    return "\n".join(parts)
