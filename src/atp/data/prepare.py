"""``python -m atp.data.prepare dataset=<name> [paths.data_dir=…] [num_workers=N]``

Writes ``*_labelTrainIds.png`` beside the raw label files (GTA5 label ids, SYNTHIA 16-bit labels,
Cityscapes ``*_gtFine_labelIds.png``) and ``sample_class_stats.json`` (pixels per train id per
sample) in the source dataset's root. Files are written under a temporary name and renamed, so a
killed run leaves no partial file; what exists already is skipped, so running it again is cheap.
ACDC and Dark Zurich ship train ids and need nothing.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atp.atomic import atomic_write_json, clean_stale_temp_files
from atp.config import compose_cli
from atp.data.config import ROLES, as_config, instantiate_entry
from atp.data.conversion import FileIssue, convert_label, count_classes, run_jobs, unique
from atp.data.labels import CLASS_NAMES
from atp.errors import UserError

log = logging.getLogger(__name__)

STATS_FILE = "sample_class_stats.json"


@dataclass
class PrepareReport:
    """What :func:`prepare_dataset` did."""

    converted: int = 0
    already_converted: int = 0
    stats_files: list[str] = field(default_factory=list)
    removed_temp_files: int = 0
    issues: list[FileIssue] = field(default_factory=list)


def _datasets(cfg) -> list[tuple[str, Any]]:
    """``(role, dataset)`` of every entry of a config, as index-only objects (labels not required)."""
    return [
        (role, instantiate_entry(cfg, role, labelled=False, pipeline="eval")) for role in ROLES if role in cfg
    ]


def prepare_dataset(
    dataset_cfg: Mapping[str, Any], num_workers: int = 4, progress: bool = True
) -> PrepareReport:
    """Convert labels to train ids and write class statistics for a ``dataset`` config."""
    from atp.data.toy import ensure_toy_data

    cfg = as_config(dataset_cfg)
    ensure_toy_data(cfg)
    report = PrepareReport()
    seen_folders: set[tuple[str, str, str]] = set()
    for role, dataset in _datasets(cfg):
        key = (type(dataset).__name__, str(dataset.root), dataset.split)
        if key in seen_folders:
            continue
        seen_folders.add(key)
        layout = dataset.inspect_layout(labelled=False)  # raw labels are what prepare converts
        if layout.errors:
            raise layout.errors[0]
        conversions = dataset.label_conversions()
        for folder in unique(dst.parent for _, dst, _ in conversions):
            report.removed_temp_files += len(clean_stale_temp_files(folder))
        todo = [(str(raw), str(dst), enc) for raw, dst, enc in conversions if not dst.exists()]
        report.already_converted += len(conversions) - len(todo)
        desc = f"{dataset.display_name} {dataset.split}: label ids → train ids"
        for issue in run_jobs(convert_label, todo, num_workers, desc, progress):
            if issue is None:
                report.converted += 1
            else:
                report.issues.append(issue)
        if role == "source":
            stats = _write_class_stats(dataset, num_workers, progress, report)
            if stats:
                report.stats_files.append(stats)
    return report


def _write_class_stats(dataset, num_workers: int, progress: bool, report: PrepareReport) -> str | None:
    """``sample_class_stats.json`` of a source dataset (skipped when it already covers every sample)."""
    path = Path(dataset.root) / STATS_FILE
    dataset.refresh()  # labels converted a moment ago are now preferred over the raw ones
    samples = [s for s in dataset.samples if s.label_found]
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
            if {s["name"] for s in existing.get("samples", [])} == {s.name for s in samples}:
                return str(path)
        except (ValueError, KeyError, TypeError):
            pass  # unreadable or old format: rewrite
    jobs = [(s.name, str(s.label), s.label_encoding) for s in samples]
    rows, failed = {}, False
    for name, counts, issue in run_jobs(
        count_classes, jobs, num_workers, f"{dataset.display_name}: class stats", progress
    ):
        if issue is not None:
            if all(i.path != issue.path for i in report.issues):
                report.issues.append(issue)
            failed = True
            continue
        rows[name] = counts
    if failed:
        return None
    by_name = {s.name: s for s in samples}
    data = {
        "dataset": dataset.display_name,
        "split": dataset.split,
        "classes": list(CLASS_NAMES),
        "samples": [
            {
                "name": name,
                "label": Path(by_name[name].label).relative_to(dataset.root).as_posix(),
                "counts": {str(c): n for c, n in enumerate(rows[name]) if n},
            }
            for name in sorted(rows)
        ],
    }
    atomic_write_json(path, data, indent=1)
    return str(path)


def labels_class_share(dataset, num_classes: int, num_workers: int = 0, progress: bool = False) -> list[float]:
    """The share of each train id among the labels of ``dataset`` (all its labelled samples, full resolution),
    summing to 1: read from its ``sample_class_stats.json`` when that lists exactly its samples, else counted
    from the label files (nothing is written). What the source stage records as the prior of its model."""
    samples = [s for s in dataset.samples if s.label_found]
    counts = _covering_stats(Path(dataset.root) / STATS_FILE, {s.name for s in samples}, num_classes)
    if counts is None:
        counts = [0] * num_classes
        jobs = [(s.name, str(s.label), s.label_encoding) for s in samples]
        for _, per_class, issue in run_jobs(count_classes, jobs, num_workers,
                                            f"{dataset.display_name}: class share", progress):
            if issue is not None:
                raise UserError(f"{issue.path}: {issue.problem}; fix or remove it (python -m atp.data.check "
                                "lists every such file)")
            counts = [a + b for a, b in zip(counts, per_class, strict=False)]
    total = sum(counts)
    if not total:
        raise UserError(f"{dataset.display_name} {dataset.split}: no labelled pixel to count the class share from "
                        f"({len(samples)} labelled samples under {dataset.root})")
    return [n / total for n in counts]


def _covering_stats(path: Path, names: set[str], num_classes: int) -> list[int] | None:
    """Pixels per class from a ``sample_class_stats.json`` that lists exactly ``names``; None otherwise."""
    try:
        if {row["name"] for row in json.loads(path.read_text())["samples"]} != names:
            return None
        return _stats_file_counts(path, num_classes)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _stats_file_counts(path: Path, num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for sample in json.loads(path.read_text())["samples"]:
        for cls, n in sample["counts"].items():
            if int(cls) < num_classes:
                counts[int(cls)] += n
    return counts


def source_class_share(prior: Any, num_classes: int) -> list[float]:
    """The source labels' class share, summing to 1, from ``prior``: a list of ``num_classes`` non-negative
    numbers (pixel counts or shares), or the path of the source's ``sample_class_stats.json`` (written by
    this module). What ``stage.module.prior_correction.prior`` takes; a bad value is a :class:`UserError`."""
    key = "stage.module.prior_correction.prior"
    if prior is None:
        raise UserError(
            f"{key} is not set: give the source's {STATS_FILE} (python -m atp.data.prepare dataset=<name> writes it "
            f"in the source dataset's root) or a list of {num_classes} class shares"
        )
    if isinstance(prior, (str, Path)):
        path = Path(prior).expanduser()
        try:
            counts = _stats_file_counts(path, num_classes)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{key}={path}: not a readable {STATS_FILE} ({err}); "
                            "make it with python -m atp.data.prepare dataset=<name>") from err
        values = [float(n) for n in counts]
    else:
        values = [float(v) for v in prior]
    if len(values) != num_classes or min(values) < 0 or sum(values) <= 0:
        raise UserError(f"{key}: needs {num_classes} non-negative numbers with a positive sum, got {values}")
    total = sum(values)
    return [v / total for v in values]


def _fix_for(issue: FileIssue, dataset_name: str) -> str:
    if issue.path.endswith("_labelTrainIds.png"):
        return f"delete it and run python -m atp.data.prepare dataset={dataset_name}"
    return "re-extract it from the official archive"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; ``argv`` are Hydra overrides (``dataset=gta2cs num_workers=8``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = compose_cli(argv)
        report = prepare_dataset(cfg.dataset, num_workers=int(cfg.num_workers), progress=bool(cfg.progress))
    except Exception as err:  # a user-facing CLI: one line, not a traceback
        if type(err).__module__.startswith("hydra") or isinstance(
            err, (UserError, FileNotFoundError, KeyError, ValueError)
        ):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    name = cfg.dataset.name
    print(
        f"prepare dataset={name}: {report.converted} label files converted, {report.already_converted} already "
        f"converted, {report.removed_temp_files} stale temporary files removed"
    )
    for stats in report.stats_files:
        print(f"class statistics: {stats}")
    for issue in report.issues:
        print(f"error: {issue.path}: {issue.problem} (fix: {_fix_for(issue, name)})", file=sys.stderr)
    return 1 if report.issues else 0


if __name__ == "__main__":
    sys.exit(main())
