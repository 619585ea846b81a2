"""Turning ``dataset`` configs into dataset objects."""

from __future__ import annotations

from collections.abc import Mapping
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
