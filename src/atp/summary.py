"""Per-chain summaries: ``results.md``/``results.json`` and the mIoU-over-steps plot of all stages."""

from __future__ import annotations

from pathlib import Path

from atp import pipeline
from atp.atomic import atomic_write_json, atomic_write_text
from atp.stages import STAGES


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


def results_table(manifests: list[dict]) -> str:
    """Markdown table: one row per stage run with its final target-val mIoU."""
    lines = ["| stage | dataset | model | seed | steps | target-val mIoU | pixel acc | status | run dir |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in manifests:
        metrics = m.get("metrics") or {}
        miou = metrics.get("mIoU/all19")
        acc = metrics.get("pixel_acc")
        lines.append(
            f"| {m.get('stage')} | {m.get('dataset')} | {m.get('model')} | {m.get('seed')} | {m.get('steps', '-')} | "
            f"{'-' if miou is None else f'{miou:.2f}'} | {'-' if acc is None else f'{acc:.1f}'} | "
            f"{m.get('status')} | {Path(m['_dir']).name} |"
        )
    return "\n".join(lines)


def plot_history(manifests: list[dict], path: Path) -> Path | None:
    """Target-val mIoU over steps, all stages on one time axis (stage after stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    offset = 0
    drew = False
    for m in manifests:
        history = m.get("history") or []
        if not history:
            continue
        steps = [offset + h["step"] for h in history]
        ax.plot(steps, [h.get("mIoU/all19", float("nan")) for h in history], marker="o", label=m.get("stage"))
        ax.axvline(offset, color="0.85", lw=0.8)
        offset += m.get("steps") or history[-1]["step"]
        drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set_xlabel("training step (stages back to back)")
    ax.set_ylabel("target-val mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(root: str | Path) -> Path:
    """Write ``results.md``, ``results.json`` and ``miou_over_steps.png`` into ``root``."""
    root = Path(root)
    manifests = collect(root)
    table = results_table(manifests)
    plot = plot_history(manifests, root / "miou_over_steps.png")
    text = f"# ATP results — {root}\n\n{table}\n"
    if plot is not None:
        text += f"\n![target-val mIoU over steps]({plot.name})\n"
    atomic_write_text(root / "results.md", text)
    rows = [{k: v for k, v in m.items() if k in ("stage", "dataset", "model", "seed", "steps", "metrics", "status",
                                                  "history", "final_ckpt", "_dir")} for m in manifests]
    atomic_write_json(root / "results.json", rows)
    return root / "results.md"
