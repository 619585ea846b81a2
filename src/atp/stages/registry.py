"""The one list of stages: every ``SegStage`` subclass in ``atp/stages/`` that sets ``stage_name``.

Adding a stage is one module in this package (a class with ``stage_name``, ``predecessors``,
``data_mode``, ``default_init`` and ``chain_position``) plus ``conf/stage/<name>.yaml``; nothing else
lists stages. The run layer asks this module which stages exist (:data:`STAGES`, :func:`get_stage`),
the default chain (:func:`default_chain`), and builds a stage's LightningModule from its config
(:func:`build_stage_module`), after checking its options (:func:`check_stage_options`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from atp.errors import UserError
from atp.stages.base import SegStage
from atp.stages.options import check_keys

__all__ = ["DATA_MODES", "PROVIDED_OPTIONS", "STAGES", "build_stage_module", "check_stage_options",
           "default_chain", "get_stage", "stage_options"]

DATA_MODES = ("source", "target", "easy_hard")
#: constructor arguments the run layer passes to every stage (never set in ``stage.module``)
PROVIDED_OPTIONS = {"model": "the model= config group", "num_classes": "dataset.num_classes", "seed": "seed",
                    "source_class_share": "the init_from checkpoint (the source labels' class share it carries)"}
CHAIN = "chain"  # stage=chain: the default chain in one job (conf/stage/chain.yaml), not a module


def _check_declaration(cls: type[SegStage]) -> None:
    """Fail at import when a stage class misses what orchestration needs (a programming error)."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if cls.data_mode not in DATA_MODES:
        raise TypeError(f"{where}.data_mode must be one of {DATA_MODES}, got {cls.data_mode!r}")
    if cls.default_init not in ("auto", None):
        raise TypeError(f"{where}.default_init must be 'auto' or None, got {cls.default_init!r}")
    if cls.default_init == "auto" and not cls.predecessors:
        raise TypeError(f"{where}: default_init='auto' needs predecessors to start from")
    if not isinstance(cls.predecessors, tuple):
        raise TypeError(f"{where}.predecessors must be a tuple of stage names")


def _discover() -> dict[str, type[SegStage]]:
    """Import every module of this package and collect the stage classes defined there."""
    package = importlib.import_module(__name__.rpartition(".")[0])
    found: dict[str, type[SegStage]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in vars(module).values():
            if not (isinstance(value, type) and issubclass(value, SegStage) and value.__module__ == module.__name__):
                continue
            name = value.__dict__.get("stage_name")
            if name is None:  # a base class (SegStage, MeanTeacherStage)
                continue
            if name in found or name == CHAIN:
                raise TypeError(f"stage name {name!r} is taken twice: {found.get(name)} and {value}")
            _check_declaration(value)
            found[name] = value
    for name, cls in found.items():
        unknown = [p for p in cls.predecessors if p not in found]
        if unknown:
            raise TypeError(f"stage {name!r} names unknown predecessors {unknown}")
    # chain stages in chain order, then the others by name
    return dict(sorted(found.items(), key=lambda item: (item[1].chain_position is None,
                                                        item[1].chain_position or 0, item[0])))


#: stage name → LightningModule class, found in ``atp/stages/`` (chain stages first, in chain order)
STAGES: dict[str, type[SegStage]] = _discover()


def get_stage(name: str) -> type[SegStage]:
    """The stage class called ``name``; a ``UserError`` naming the valid stages otherwise."""
    try:
        return STAGES[name]
    except (KeyError, TypeError):
        raise UserError(f"stage={name} is not a training stage; choose one of {', '.join(STAGES)} or {CHAIN}"
                        ) from None


def default_chain() -> list[str]:
    """The stages ``stage=chain`` runs by default, in order (those with a ``chain_position``)."""
    return [name for name, cls in STAGES.items() if cls.chain_position is not None]


def stage_options(cls: type[SegStage]) -> dict[str, inspect.Parameter]:
    """The constructor arguments of ``cls``: its own and those its ``**kwargs`` pass up the class chain."""
    options: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        forwards = False
        for param in list(inspect.signature(init).parameters.values())[1:]:  # without self
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
                options.setdefault(param.name, param)
        if not forwards:
            break
    return options


def _stage_name(stage_cfg: Mapping[str, Any]) -> str:
    name = stage_cfg.get("name") if isinstance(stage_cfg, Mapping | DictConfig) else None
    if name is None:
        raise UserError("the stage config has no name; select one with stage=<name>")
    return str(name)


def check_stage_options(stage_cfg: DictConfig | Mapping[str, Any]) -> type[SegStage]:
    """Check ``stage_cfg.module`` against the stage's constructor, before anything is built.

    Raises ``UserError`` naming the key as the user writes it (``stage.module.<key>``), the stage and
    its valid options, for an unknown or run-layer option, a missing required one, or a ``_target_``
    that is not the registered class. Returns the stage class. Values are not resolved.
    """
    name = _stage_name(stage_cfg)
    cls = get_stage(name)
    module_cfg = stage_cfg.get("module")
    if module_cfg is None:
        raise UserError(f"stage={name}: conf/stage/{name}.yaml has no module: section (the constructor's "
                        "_target_ and arguments)")
    target = module_cfg.get("_target_")
    target_cls = _target_class(target) if target else None
    if target_cls is not cls:
        raise UserError(f"stage.module._target_={target} for stage={name}; it must be "
                        f"{cls.__module__}.{cls.__qualname__}")
    options = stage_options(cls)
    valid = sorted(k for k in options if k not in PROVIDED_OPTIONS)
    for key in (str(k) for k in module_cfg.keys()):
        if key.startswith("_") and key.endswith("_"):  # Hydra's own keys (_target_, _recursive_…)
            continue
        if key in PROVIDED_OPTIONS:
            raise UserError(f"stage.module.{key} is set by the run layer from {PROVIDED_OPTIONS[key]}; "
                            f"remove it from stage.module")
        if key not in options:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean stage.module.{close[0]}?" if close else ""
            raise UserError(f"stage.module.{key} is not an option of stage={name}.{hint} "
                            f"Valid options: {', '.join(valid)}")
    missing = [k for k in valid if options[k].default is inspect.Parameter.empty and k not in module_cfg]
    if missing:
        raise UserError(f"stage={name} needs stage.module.{missing[0]} (conf/stage/{name}.yaml sets it)")
    plain = OmegaConf.to_container(module_cfg, resolve=False) if isinstance(module_cfg, DictConfig) else module_cfg
    for key, record in option_records(cls).items():
        value = plain.get(key)
        if isinstance(value, str) and value.startswith("${"):  # a whole group by interpolation (eval: ${eval})
            value = _resolved_group(module_cfg, key)
        check_keys(record, value, key)
    return cls


def _resolved_group(module_cfg: Any, key: str) -> dict | None:
    """The keys of an interpolated group, or None when it cannot be resolved here (no root config)."""
    try:
        node = module_cfg[key]
    except Exception:  # omegaconf's resolution errors have no common base besides Exception
        return None
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else None


def option_records(cls: type[SegStage]) -> dict[str, type]:
    """The constructor arguments of ``cls`` that are nested option groups, and the record (dataclass) of each,
    read from the constructors' annotations (``scl: ContrastOptions | Mapping | None``)."""
    records: dict[str, type] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for name, hint in typing.get_type_hints(init).items():
            found = [t for t in typing.get_args(hint) or (hint,) if dataclasses.is_dataclass(t)]
            if found and name in stage_options(cls):
                records.setdefault(name, found[0])
    return records


def _target_class(target: Any) -> type | None:
    try:
        return get_class(str(target))
    except (ImportError, ValueError, AttributeError):
        return None


def build_stage_module(stage_cfg: DictConfig | Mapping[str, Any], *, model: torch.nn.Module, num_classes: int,
                       seed: int, source_class_share: list[float] | None = None) -> SegStage:
    """The stage's LightningModule: options checked (:func:`check_stage_options`), then Hydra-instantiated.

    ``model`` becomes the student; ``num_classes`` and ``seed`` are the run's; ``source_class_share`` the
    share of each class among the source labels, as the checkpoint the stage starts from carries it (None:
    unknown). Every option reaches the
    constructor as a plain container (``_convert_="all"``), so the checkpoint's hyper-parameters load
    with ``torch.load(weights_only=True)``.
    """
    check_stage_options(stage_cfg)
    module_cfg = stage_cfg["module"]
    if not isinstance(module_cfg, DictConfig):
        module_cfg = OmegaConf.create(dict(module_cfg))
    try:
        # _partial_: the network is passed by reference (a kwarg of instantiate would go through omegaconf)
        make = instantiate(module_cfg, _partial_=True, _convert_="all")
    except InstantiationException as err:
        raise UserError(f"stage={_stage_name(stage_cfg)}: stage.module cannot be built: {err}") from err
    return make(model=model, num_classes=num_classes, seed=seed, source_class_share=source_class_share)
