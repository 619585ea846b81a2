"""Turning ``dataset`` configs into dataset objects, and composing the CLIs' Hydra config."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Dataset entries of a ``dataset`` config and whether their labels are part of the role.
ROLES: dict[str, bool] = {"source": True, "target": False, "target_val": True}
#: Unlabelled entries that only one command reads, and which command: training does without them.
OPTIONAL_ROLES: dict[str, str] = {"target_test": "the benchmark-server export (atp.evaluate export=...)"}


def as_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    """A DictConfig view of a dataset config (a DictConfig node is kept, with its parents)."""
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def instantiate_entry(cfg: DictConfig | Mapping[str, Any], role: str, **kwargs: Any):
    """Build the dataset of ``cfg[role]`` (``source``/``target``/``target_val``) with extra kwargs."""
    import hydra

    cfg = as_config(cfg)
    name = str(cfg.get("name", "<name>"))
    if role not in cfg:
        raise KeyError(f"dataset config {name!r} has no {role!r} entry (conf/dataset/{name}.yaml)")
    kwargs.setdefault("config_name", name)
    kwargs.setdefault("missing_fix", cfg.get("missing_data_fix"))
    return hydra.utils.instantiate(cfg[role], _convert_="all", **kwargs)


def find_conf_dir() -> Path:
    """The repository's ``conf/`` (env ``ATP_CONF_DIR`` wins), found upwards from this file or the cwd."""
    if os.environ.get("ATP_CONF_DIR"):
        return Path(os.environ["ATP_CONF_DIR"]).resolve()
    for base in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in base.parents if base.is_file() else (base, *base.parents):
            if (parent / "conf" / "dataset").is_dir():
                return parent / "conf"
    raise FileNotFoundError("cannot find the conf/ folder; set ATP_CONF_DIR=/path/to/atp/conf")


def compose_cli(argv: Sequence[str], config_name: str = "prepare") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``key=value`` overrides (no Hydra run dir, no logging setup)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(find_conf_dir()), version_base="1.3", job_name="atp_data"):
        return compose(config_name, overrides=list(argv))
