"""``python -m atp.data.check dataset=<name> [paths.data_dir=…] [deep=false] [num_workers=N]``

Checks every entry of a dataset config (source, target, target_val): folders present, image counts
against the published sizes (a warning only), every labelled image paired with its label, and —
with ``deep=true`` (the CLI default) — every image and label decodable and every label value in
its table. The unlabelled ``target_test`` split, which only the benchmark-server export reads, is
checked too, its problems reported as warnings. Exits 0 with a summary table, else 1 with one line
per problem naming the path and the fix. Training calls :func:`check_dataset` (``deep=False``)
first to fail early.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from atp.config import compose_cli
from atp.data.config import OPTIONAL_ROLES, ROLES, as_config, instantiate_entry
from atp.data.conversion import FileIssue, run_jobs, verify_sample
from atp.errors import DataFileError, DatasetCheckError


@dataclass(frozen=True)
class Problem:
    """One finding: the path it concerns, what is wrong, and the command or action that fixes it."""

    path: str
    message: str
    fix: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message} (fix: {self.fix})"

    @classmethod
    def from_error(cls, err: DataFileError) -> Problem:
        """The error-severity problem of a data error (e.g. a layout error of the dataset)."""
        return cls(err.path, err.problem, err.fix)


@dataclass
class EntrySummary:
    """One row of the summary table."""

    role: str
    dataset: str
    root: str
    split: str
    images: int | None
    expected: int | None
    labelled: bool
    errors: int = 0


def check_dataset(
    dataset_cfg: Mapping[str, Any],
    deep: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    generate_if_missing: bool = True,
    summary: list[EntrySummary] | None = None,
    optional: bool = False,
) -> list[Problem]:
    """Problems (errors and warnings) of the data a ``dataset`` config points at.

    ``deep`` decodes every file (slow on full datasets); otherwise only the layout, counts and
    pairing are checked. Toy data are generated first when the config says so. Rows for a summary
    table are appended to ``summary`` when given. With ``optional``, the entries of
    :data:`~atp.data.config.OPTIONAL_ROLES` the config has are checked as well, their problems as warnings.
    """
    from atp.data.toy import ensure_toy_data

    cfg = as_config(dataset_cfg)
    if generate_if_missing:
        ensure_toy_data(cfg)
    problems: list[Problem] = []
    for role, labelled in ROLES.items():
        if role in cfg:
            problems += _check_entry(cfg, role, labelled, deep, num_workers, progress, summary)
    for role, reader in OPTIONAL_ROLES.items():
        if optional and cfg.get(role) is not None:
            problems += _check_entry(cfg, role, False, deep, num_workers, progress, summary, reader)
    return problems


def _check_entry(cfg, role, labelled, deep, num_workers, progress, summary, optional_for=None) -> list[Problem]:
    """The entry's problems and its summary row; with ``optional_for`` (the one command that reads the
    entry) every problem is a warning that names that command."""
    dataset = instantiate_entry(cfg, role, labelled=False, pipeline="eval")
    generated = bool(cfg.get("generate_if_missing", False))  # toy data: published sizes do not apply
    expected = None if generated else dataset.expected_count()
    row = EntrySummary(role, dataset.display_name, str(dataset.root), dataset.split, None, expected, labelled)
    if summary is not None:
        summary.append(row)
    problems = _entry_problems(dataset, role, labelled, deep, num_workers, progress, row)
    if optional_for is not None:
        problems = [replace(p, message=f"{p.message} ({role}: only {optional_for} reads it)", severity="warning")
                    for p in problems]
    row.errors = sum(p.severity == "error" for p in problems)
    return problems


def _entry_problems(dataset, role, labelled, deep, num_workers, progress, row) -> list[Problem]:
    """Layout, counts, pairing and (``deep``) every file of one entry; fills the row's image count."""
    expected = row.expected
    fetch = dataset.fetch_fix()
    converts = functools.cache(lambda: bool(dataset.label_conversions()))  # lists the label folder: once
    layout = dataset.inspect_layout(labelled)
    row.images = None if layout.samples is None else len(layout.samples)
    layout_problems = [Problem.from_error(err) for err in layout.errors]
    if not layout.samples:  # a folder is missing or the split has no images: nothing more to check
        return layout_problems
    samples = layout.samples
    problems: list[Problem] = []
    if expected is not None and expected != len(samples):
        problems.append(
            Problem(
                str(dataset.root),
                f"{len(samples)} {dataset.split} images, the published size is {expected}",
                "complete the download if images are missing (a subset works, results differ)",
                "warning",
            )
        )
    problems += layout_problems  # labels missing
    if labelled:
        raw = sum(1 for s in samples if s.label_found and s.label_encoding != "train_ids")
        if raw and converts():
            problems.append(
                Problem(
                    str(dataset.root),
                    f"{raw} labels are raw ids, converted on every load",
                    f"python -m atp.data.prepare dataset={dataset.config_name}",
                    "warning",
                )
            )
    if deep:
        jobs = [
            (
                str(s.image),
                str(s.label) if labelled and s.label_found else None,
                s.label_encoding,
                dataset.allow_label_size_mismatch,
            )
            for s in samples
        ]
        desc = f"{role}: {dataset.display_name} {dataset.split}"
        for issues in run_jobs(verify_sample, jobs, num_workers, desc, progress):
            problems += [_problem_for(issue, dataset, fetch, converts) for issue in issues]
    return problems


def _problem_for(issue: FileIssue, dataset, fetch: str, converts) -> Problem:
    if issue.kind == "size":
        return Problem(
            issue.path, issue.problem + " (resized with nearest when loading)", "none needed", "warning"
        )
    if issue.path.endswith("_labelTrainIds.png") and converts():
        fix = f"delete it and run python -m atp.data.prepare dataset={dataset.config_name}"
    else:
        fix = f"re-extract it from the official archive ({fetch})"
    return Problem(issue.path, issue.problem, fix)


def raise_on_problems(problems: list[Problem], dataset_name: str) -> None:
    """Raise :class:`DatasetCheckError` listing the errors (warnings are ignored)."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        lines = "\n".join(f"  {p}" for p in errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DatasetCheckError(
            f"dataset={dataset_name}: {len(errors)} data problem(s):\n{lines}{more}\n"
            f"(full list: python -m atp.data.check dataset={dataset_name})"
        )


def _print_summary(rows: list[EntrySummary], name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dataset={name}")
    for column in ("role", "dataset", "split", "images", "published", "labels", "errors"):
        table.add_column(column, no_wrap=True)
    table.add_column("root", overflow="fold")
    for r in rows:
        table.add_row(
            r.role,
            r.dataset,
            r.split,
            "—" if r.images is None else str(r.images),
            "—" if r.expected is None else str(r.expected),
            "yes" if r.labelled else "not used",
            str(r.errors),
            r.root,
        )
    console = Console()
    console.width = max(console.width, 120)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; ``argv`` are Hydra overrides (``dataset=gta2cs deep=false``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = compose_cli(argv)
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows: list[EntrySummary] = []
    problems = check_dataset(
        cfg.dataset,
        deep=bool(cfg.deep),
        num_workers=int(cfg.num_workers),
        progress=bool(cfg.progress),
        summary=rows,
        optional=True,
    )
    _print_summary(rows, cfg.dataset.name)
    for problem in problems:
        print(problem, file=sys.stderr if problem.severity == "error" else sys.stdout)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{'FAILED' if errors else 'OK'}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
