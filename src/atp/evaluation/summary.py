"""A sweep's summary: ``results.md``/``results.json`` (per stage mean ± std over seeds, and the single runs)
and ``miou_over_steps.png`` (per stage the mean over seeds with the min–max band, stages back to back).

Runs are grouped by (dataset, model, stage); a group aggregates one value per seed (the newest complete run
of that seed). Every number is read from the stage manifests: ``metrics`` (validation of the student weights
at the end of the stage, i.e. of ``final.ckpt``, the last step) and ``history`` (every validation).
"""

from __future__ import annotations

from pathlib import Path

from atp.atomic import atomic_write_json, atomic_write_text
from atp.evaluation.stats import markdown_table, spread
from atp.run import pipeline
from atp.stages import STAGES

METRIC = "mIoU/all19"
WEIGHTS = "student"
CHECKPOINT = "final (last step)"
BEST_OF_RUN_NOTE = "selected on target-val labels — not a source-free model selection"
DEFINITIONS = (
    f"Target-val mIoU ({METRIC.split('/')[-1]}, %) of the **{WEIGHTS}** weights of the **final checkpoint** "
    "(`checkpoints/final.ckpt`, the weights after the last training step), validated at the end of the stage. "
    "Mean ± sample standard deviation (n − 1) over seeds; n = seeds with a complete run (std – for n = 1). "
    f"**Best of run** is the highest validation mIoU in a run's history: {BEST_OF_RUN_NOTE}; it is shown only "
    "because published numbers may be best-of-run (spec §14 #16)."
)


def stage_depth(name: str) -> int:
    """How many hand-offs precede ``name`` in the registry (source, distill 0; align 1; …); unknown: last."""
    stage = STAGES.get(name)
    if stage is None:
        return len(STAGES)
    return max((stage_depth(p) + 1 for p in stage.predecessors), default=0)


def collect(root: str | Path) -> list[dict]:
    """Manifests under ``root`` in chain order (then by start time)."""
    manifests = pipeline.find_manifests(root)
    return sorted(manifests, key=lambda m: (str(m.get("chain_key")), stage_depth(str(m.get("stage"))),
                                            m.get("started_at", 0)))


def best_of_run(manifest: dict) -> dict | None:
    """``{"step", "value"}`` of the highest validation mIoU in the run's history (None without history)."""
    points = [h for h in manifest.get("history") or [] if h.get(METRIC) is not None]
    if not points:
        return None
    best = max(points, key=lambda h: h[METRIC])  # the earliest step on ties
    return {"step": best["step"], "value": best[METRIC]}


def _group_key(manifest: dict) -> tuple[str, str, str]:
    return str(manifest.get("dataset")), str(manifest.get("model")), str(manifest.get("stage"))


def _order(key: tuple[str, str, str]) -> tuple:
    dataset, model, stage = key
    return dataset, model, stage_depth(stage), stage


def by_stage(manifests: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """The manifests grouped by (dataset, model, stage), groups in table order (stages by registry depth)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for m in manifests:
        groups.setdefault(_group_key(m), []).append(m)
    return {key: groups[key] for key in sorted(groups, key=_order)}


def per_seed(manifests: list[dict]) -> dict[int, dict]:
    """One complete run per seed (the newest finished one), seeds in ascending order."""
    chosen: dict[int, dict] = {}
    for m in manifests:
        if m.get("status") != "complete" or (m.get("metrics") or {}).get(METRIC) is None:
            continue
        seed = m.get("seed")
        if seed not in chosen or m.get("finished_at", 0) > chosen[seed].get("finished_at", 0):
            chosen[seed] = m
    return dict(sorted(chosen.items(), key=lambda item: (item[0] is None, item[0] or 0)))


def aggregate(manifests: list[dict]) -> list[dict]:
    """Per (dataset, model, stage): ``final`` and ``best_of_run`` as ``{mean, std, n}`` over seeds, and the seeds."""
    rows = []
    for key, group in by_stage(manifests).items():
        runs = per_seed(group)
        bests = [b["value"] for b in map(best_of_run, runs.values()) if b is not None]
        rows.append({
            "dataset": key[0], "model": key[1], "stage": key[2], "weights": WEIGHTS, "checkpoint": CHECKPOINT,
            "seeds": list(runs), "final": spread([float(m["metrics"][METRIC]) for m in runs.values()]),
            "best_of_run": spread([float(b) for b in bests]),
        })
    return rows


def _mean_std(summary: dict | None) -> tuple[str, str, str]:
    if summary is None:
        return "–", "–", "0"
    std = "–" if summary["std"] is None else f"{summary['std']:.2f}"
    return f"{summary['mean']:.2f}", std, str(summary["n"])


def aggregate_table(rows: list[dict]) -> str:
    """Markdown: per stage mean ± std over seeds of the final checkpoint, and the best-of-run column apart."""
    cells = []
    for row in rows:
        mean, std, n = _mean_std(row["final"])
        best_mean, best_std, _ = _mean_std(row["best_of_run"])
        best = "–" if row["best_of_run"] is None else f"{best_mean} ± {best_std}"
        final = "–" if row["final"] is None else f"{mean} ± {std}"
        cells.append([row["stage"], row["dataset"], row["model"], row["weights"], row["checkpoint"], final, n,
                      ", ".join(map(str, row["seeds"])) or "–", best])
    return markdown_table(["stage", "dataset", "model", "weights", "checkpoint", "mIoU mean ± std", "n", "seeds",
                           f"best-of-run mean ± std ({BEST_OF_RUN_NOTE})"], [[str(c) for c in r] for r in cells])


def results_table(manifests: list[dict]) -> str:
    """Markdown table: one row per stage run with its final target-val mIoU (and best of run, marked)."""
    rows = []
    for m in sorted(manifests, key=lambda m: (_order(_group_key(m)), str(m.get("seed")), m.get("started_at", 0))):
        metrics = m.get("metrics") or {}
        miou = metrics.get(METRIC)
        acc = metrics.get("pixel_acc")
        best = best_of_run(m)
        rows.append([*(str(m.get(key)) for key in ("stage", "dataset", "model", "seed")), str(m.get("steps", "-")),
            "-" if miou is None else f"{miou:.2f}", "-" if acc is None else f"{acc:.1f}",
            "-" if best is None else f"{best['value']:.2f} @ {best['step']}", str(m.get("status")),
            Path(m["_dir"]).name])
    return markdown_table(["stage", "dataset", "model", "seed", "steps", "target-val mIoU (student, final)",
                           "pixel acc", f"best of run @ step ({BEST_OF_RUN_NOTE})", "status", "run dir"], rows)


def history_spread(runs: list[dict]) -> list[tuple[int, float, float, float]]:
    """``(step, mean, min, max)`` of the validation mIoU over the runs at every step any of them validated."""
    values: dict[int, list[float]] = {}
    for m in runs:
        for h in m.get("history") or []:
            if h.get(METRIC) is not None:
                values.setdefault(int(h["step"]), []).append(float(h[METRIC]))
    return [(step, sum(v) / len(v), min(v), max(v)) for step, v in sorted(values.items())]


def plot_history(manifests: list[dict], path: Path) -> Path | None:
    """Target-val mIoU over steps: per stage the mean over seeds and the min–max band, stages back to back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_stage(manifests)
    families = {key[:2] for key in groups}
    fig, ax = plt.subplots(figsize=(8, 4))
    offsets: dict[tuple[str, str], int] = {}
    drew = False
    for key, group in groups.items():
        runs = list(per_seed(group).values()) or group
        points = history_spread(runs)
        if not points:
            continue
        offset = offsets.get(key[:2], 0)
        steps = [offset + step for step, *_ in points]
        label = key[2] if len(families) == 1 else f"{key[2]} ({key[0]}, {key[1]})"
        line, = ax.plot(steps, [mean for _, mean, _, _ in points], marker="o", label=f"{label}, n={len(runs)}")
        low, high = [lo for *_, lo, _ in points], [hi for *_, hi in points]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.vlines(steps, low, high, color=line.get_color(), alpha=0.6)  # the band of a single validation
        ax.axvline(offset, color="0.85", lw=0.8)
        offsets[key[:2]] = offset + max([m.get("steps") or 0 for m in runs] + [points[-1][0]])
        drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set_xlabel("training step (stages back to back)")
    ax.set_ylabel("target-val mIoU (mean over seeds, min–max band)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_RUN_FIELDS = ("stage", "dataset", "model", "seed", "steps", "metrics", "status", "history", "final_ckpt", "_dir")


def write_summary(root: str | Path) -> Path:
    """Write ``results.md``, ``results.json`` and ``miou_over_steps.png`` into ``root``."""
    root = Path(root)
    manifests = collect(root)
    stages = aggregate(manifests)
    plot = plot_history(manifests, root / "miou_over_steps.png")
    text = (f"# ATP results — {root}\n\n{DEFINITIONS}\n\n## Per stage over seeds\n\n{aggregate_table(stages)}\n\n"
            f"## Single runs\n\n{results_table(manifests)}\n")
    if plot is not None:
        text += f"\n![target-val mIoU over steps]({plot.name})\n"
    atomic_write_text(root / "results.md", text)
    runs = [{**{k: v for k, v in m.items() if k in _RUN_FIELDS}, "best_of_run": best_of_run(m)} for m in manifests]
    atomic_write_json(root / "results.json", {"definitions": DEFINITIONS, "metric": METRIC, "stages": stages,
                                              "runs": runs})
    return root / "results.md"
