"""Hydra entry points (``atp-train``, ``atp-evaluate``) that find ``conf/`` from any working directory.

``conf/`` lives at the repository root, outside the package, so a relative ``config_path`` only
works for ``python -m`` inside the checkout; here it is an absolute path (:func:`find_conf_dir`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from atp.data.config import find_conf_dir
from atp.errors import UserError


def hydra_entry(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[..., None]]:
    """``@hydra.main`` on ``<conf dir>/<config_name>.yaml``; without it, one line and exit status 2."""
    try:
        conf_dir = find_conf_dir()
    except FileNotFoundError:
        conf_dir = None
    found = conf_dir is not None and (conf_dir / f"{config_name}.yaml").is_file()

    def decorate(task: Callable[[DictConfig], None]) -> Callable[..., None]:
        @functools.wraps(task)
        def guarded(cfg: DictConfig) -> None:
            try:
                return task(cfg)
            except user_errors() as err:  # a mistake the user can fix: one line, no traceback
                logging.getLogger(task.__module__).error("%s", err)
                print(f"error: {err}", file=sys.stderr)
                if os.environ.get("SUBMITIT_FOLDER"):
                    # Inside a submitit job a SystemExit writes no result file: the submitting process
                    # would wait for one forever (or report "no output"); an exception becomes its result.
                    raise
                sys.exit(getattr(err, "exit_code", 2))

        hydra_main = hydra.main(version_base="1.3", config_path=str(conf_dir) if found else None,
                                config_name=config_name)(guarded)

        @functools.wraps(task)
        def entry(cfg_passthrough: DictConfig | None = None) -> None:
            if not found:
                where = (f"ATP_CONF_DIR={os.environ['ATP_CONF_DIR']}" if os.environ.get("ATP_CONF_DIR")
                         else "looked beside the atp sources and above the working directory")
                print(f"error: cannot find conf/{config_name}.yaml ({where}): atp's configs live in the "
                      "repository's conf/, outside the package. Install the checkout with pip install -e ., "
                      "run from the checkout, or set ATP_CONF_DIR=/path/to/atp/conf", file=sys.stderr)
                sys.exit(2)
            return hydra_main(cfg_passthrough)

        entry.__wrapped__ = guarded  # the task with its error handling, without Hydra (tests/ddp_probe.py)
        return entry

    return decorate


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix: printed as one ``error:`` line, exit status 2 (or theirs)."""
    return (UserError, FileNotFoundError)
