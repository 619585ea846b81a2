"""Hydra entry points (``atp-train``, ``atp-evaluate``, ``atp-predict``) on the package's config tree.

The configs ship inside the package (:data:`atp.config.CONF_DIR`), so the commands run the same from any
working directory, installed from a wheel or from a checkout.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from atp.config import CONF_DIR
from atp.errors import UserError


def hydra_entry(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[..., None]]:
    """``@hydra.main`` on ``<CONF_DIR>/<config_name>.yaml``; a :func:`user_errors` error is one line, exit 2."""

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

        entry = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(guarded)
        entry.__wrapped__ = guarded  # the task with its error handling, without Hydra (tests/helpers/ddp_probe.py)
        return entry

    return decorate


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix: printed as one ``error:`` line, exit status 2 (or theirs)."""
    return (UserError, FileNotFoundError)
