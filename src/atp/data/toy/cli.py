"""``python -m atp.data.toy``: the toy generator's command line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from atp.data.toy.generate import generate_toy
from atp.data.toy.shifts import DEFAULT_SHIFT, SHIFTS, check_shift

KEYS = ("out", "n_source", "n_target", "n_val", "seed", "size", "num_workers", "overwrite", "shift")
INT_KEYS = ("n_source", "n_target", "n_val", "seed", "num_workers")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atp.data.toy out=data/toy n_source=300 n_target=200 n_val=100 seed=0 size=256x128``
    ``[shift=mixed] [num_workers=0] [overwrite=false]``."""
    usage = f"{main.__doc__}\nshift families: {', '.join(SHIFTS)} (default {DEFAULT_SHIFT})"
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return 0
    options: dict[str, Any] = {"out": "data/toy"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            print(f"unknown argument {arg!r}; usage: {usage}", file=sys.stderr)
            return 2
        options[key] = value
    for key in INT_KEYS:
        if key in options:
            options[key] = int(options[key])
    options["overwrite"] = str(options.get("overwrite", "false")).lower() in ("1", "true", "yes")
    try:
        check_shift(options.get("shift", DEFAULT_SHIFT))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        out = generate_toy(options.pop("out"), **options)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote the toy domain shift to {out} in {time.perf_counter() - started:.1f} s")
    return 0
