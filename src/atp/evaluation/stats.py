"""Aggregates over seeds and the markdown table writer, shared by a sweep's results (atp.evaluation.summary) and the
ladder (atp.ladder)."""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict | None:
    """``{mean, std, n}``; std is the sample standard deviation (None for one value); None for no values."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table: ``header`` and one line per row of cells (already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
