"""``python -m atp.data.toy``: the toy generator's command line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from atp.data.toy.generate import generate_toy


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atp.data.toy out=data/toy n_source=300 n_target=200 n_val=100 seed=0 size=256x128``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(main.__doc__)
        return 0
    options: dict[str, Any] = {"out": "data/toy"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in (
            "out",
            "n_source",
            "n_target",
            "n_val",
            "seed",
            "size",
            "num_workers",
            "overwrite",
        ):
            print(f"unknown argument {arg!r}; usage: {main.__doc__}", file=sys.stderr)
            return 2
        options[key] = value
    for key in ("n_source", "n_target", "n_val", "seed", "num_workers"):
        if key in options:
            options[key] = int(options[key])
    options["overwrite"] = str(options.get("overwrite", "false")).lower() in ("1", "true", "yes")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        out = generate_toy(options.pop("out"), **options)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote the toy domain shift to {out} in {time.perf_counter() - started:.1f} s")
    return 0
