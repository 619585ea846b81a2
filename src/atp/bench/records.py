"""Result rows of the benchmark: a median, the spread it was judged with, the target and the verdict."""

from __future__ import annotations

import statistics


def record(metric: str, value: float | None, target: str | None = None, meets: bool | None = None,
           spread: tuple[float, float] | None = None) -> dict:
    """One result row: ``{"metric", "value", "low", "high", "target", "meets"}``.

    ``value`` is a median, ``low``/``high`` the spread it was judged with (min and max over the blocks; null for
    a single figure); ``meets`` is null without a target or when nothing is judged (``--quick``).
    """
    low, high = (None, None) if spread is None else (round(float(spread[0]), 4), round(float(spread[1]), 4))
    return {"metric": metric, "value": None if value is None else round(float(value), 4), "low": low, "high": high,
            "target": target, "meets": meets}


def spread_of(values: list[float]) -> tuple[float, tuple[float, float]]:
    """(median, (min, max)) of repeated measurements."""
    return statistics.median(values), (min(values), max(values))


def at_most(metric: str, values: list[float] | float, limit: float, judge: bool = True) -> dict:
    """Median of ``values`` against ``<= limit``; met only if the largest value is (the whole spread)."""
    values = [values] if isinstance(values, (int, float)) else list(values)
    median, (low, high) = spread_of(values)
    return record(metric, median, f"<= {limit:g}", bool(high <= limit) if judge else None,
                  (low, high) if len(values) > 1 else None)


def at_least(metric: str, values: list[float] | float, floor: float, unit: str = "", judge: bool = True) -> dict:
    """Median of ``values`` against ``>= floor``; met only if the smallest value is."""
    values = [values] if isinstance(values, (int, float)) else list(values)
    median, (low, high) = spread_of(values)
    return record(metric, median, f">= {floor:g}{unit}", bool(low >= floor) if judge else None,
                  (low, high) if len(values) > 1 else None)


def measured(metric: str, values: list[float] | float) -> dict:
    """A figure without a target: the median and, for several values, their spread."""
    values = [values] if isinstance(values, (int, float)) else list(values)
    median, spread = spread_of(values)
    return record(metric, median, spread=spread if len(values) > 1 else None)


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the records (value = median, spread = min–max over the blocks)."""
    lines = [f"{'metric':<42} {'median':>10} {'spread (min-max)':>19} {'target':>10} {'meets':>6}", "-" * 91]
    for row in rows:
        meets = {True: "yes", False: "NO", None: ""}[row["meets"]]
        value = "n/a" if row["value"] is None else f"{row['value']:.4g}"
        spread = "" if row.get("low") is None else f"{row['low']:.4g}-{row['high']:.4g}"
        lines.append(f"{row['metric']:<42} {value:>10} {spread:>19} {row['target'] or '':>10} {meets:>6}")
    return "\n".join(lines)


def block_ratios(real: list[float], bare: list[float], blocks: int) -> list[float]:
    """``median(real) / median(bare)`` in each of ``blocks`` consecutive blocks of paired timings."""
    size = max(len(real) // blocks, 1)
    starts = range(0, size * min(blocks, len(real)), size)
    return [statistics.median(real[i:i + size]) / statistics.median(bare[i:i + size]) for i in starts]


def block_medians(times: list[float], blocks: int) -> list[float]:
    size = max(len(times) // blocks, 1)
    return [statistics.median(times[i:i + size]) for i in range(0, size * min(blocks, len(times)), size)]
