"""atp's Hydra configs, shipped inside the package (``atp/conf``), and composing them outside a Hydra app.

The config tree is package data: an installed wheel, an editable checkout and ``python -m`` from any
directory all read the same ``CONF_DIR``. A user's own config folder (their datasets, recipes) joins
through Hydra's search path, ``hydra.searchpath=[file:///path/to/my_conf]``, which both the commands and
:func:`compose_cli` honour; a file there named like one of atp's is shadowed by atp's (Hydra searches the
primary config folder first), so give your configs names of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

#: the package's config tree (``train.yaml``, ``stage/``, ``dataset/``, ``experiment/`` …)
CONF_DIR = Path(__file__).resolve().parent / "conf"
SEARCHPATH_KEY = "hydra.searchpath"


def compose_cli(argv: Sequence[str], config_name: str = "prepare") -> DictConfig:
    """Compose ``<CONF_DIR>/<config_name>.yaml`` with ``key=value`` overrides (no Hydra run dir, no logging
    setup); a ``hydra.searchpath=[…]`` override adds the user's config folders."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="atp"):
        return compose(config_name, overrides=list(argv))


def config_dirs(overrides: Sequence[str] = ()) -> list[Path]:
    """The folders a config group is looked up in: ``CONF_DIR``, then the ``file://`` entries of a
    ``hydra.searchpath=[…]`` override (``pkg://`` entries are not folders and are left out)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folders = [CONF_DIR]
    for override in OverridesParser.create().parse_overrides(
            [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == SEARCHPATH_KEY]):
        value = override.value()
        for entry in value if isinstance(value, list) else [value]:
            if str(entry).startswith("file://"):
                folders.append(Path(str(entry)[len("file://"):]).expanduser())
    return folders
