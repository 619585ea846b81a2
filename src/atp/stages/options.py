"""The nested option groups of ``stage.module`` as typed records: their keys, and the defaults a missing key takes.

A stage constructor annotates each nested group with its record (``scl: ContrastOptions | Mapping | None``);
:func:`atp.stages.registry.check_stage_options` reads those annotations and refuses a misspelt key at any
depth before anything runs, and the constructor turns the config's mapping into a plain dict with
:func:`option_group` (the values the YAML gives, the record's defaults for the others). The defaults are
the paper's (spec §16); ``conf/stage/*.yaml`` writes them out.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atp.errors import UserError


@dataclass(frozen=True)
class OptimOptions:
    """AdamW and its parameter groups (spec §4.1)."""

    lr: float = 6.0e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0  # every parameter whose name contains "head"
    norm_decay_mult: float = 0.0  # every other parameter whose name contains "norm"
    fused: bool | None = None  # None: fused AdamW on CUDA, foreach elsewhere


@dataclass(frozen=True)
class ScheduleOptions:
    """Poly decay with linear warm-up, stepped per iteration (spec §4.1)."""

    max_steps: int = 40000
    poly_power: float = 1.0
    min_lr: float = 0.0
    warmup_steps: int = 1500
    warmup_ratio: float = 1.0e-6


@dataclass(frozen=True)
class EvalOptions:
    """Validation inference (spec §11)."""

    mode: str = "whole"  # whole | slide
    flip: bool = False
    crop_size: Any = None  # [height, width] of slide windows
    stride: Any = None
    acdc_class_prior: bool = False
    class_subsets: Any = ("all19",)


@dataclass(frozen=True)
class StrongAugOptions:
    """The strong augmentation A(x) (spec §4.4): :class:`atp.adaptation.StrongAugment`'s arguments."""

    jitter_strength: float = 0.2
    jitter_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.15, 1.15)
    kernel_frac: float = 0.1
    hue_strength: float | None = None  # [I] None: jitter_strength


@dataclass(frozen=True)
class CropOptions:
    """The class-balanced pseudo-label crop of inputs larger than the crop (spec §2.6)."""

    size: Any = None  # [height, width]; None: never crop
    tries: int = 10
    cat_max_ratio: float = 0.75
    regen_pseudo: bool = True


@dataclass(frozen=True)
class ClassBalanceOptions:
    """[I] class-balanced pseudo-label CE: :class:`atp.adaptation.ClassShare`'s arguments (power 0 = off)."""

    power: float = 0.0
    momentum: float = 0.99
    floor: float = 1.0e-4


@dataclass(frozen=True)
class PriorCorrectionOptions:
    """[I] the teacher's logits corrected toward the source labels' class share (strength 0 = off)."""

    strength: float = 0.0
    prior: Any = None  # None: the share the init checkpoint carries; or a list, or a sample_class_stats.json path


@dataclass(frozen=True)
class ContrastOptions:
    """Propagate's prototype contrastive loss L_scl (spec §8.3–§8.4)."""

    weight: float = 1.0
    start_step: int = 1500
    temperature: float = 100.0
    use_reg: bool = True
    reg_weight: float = 1.0
    min_ratio: float = 0.75
    downscale: int = 4


def option_group(record: type, value: Mapping | None, key: str) -> dict[str, Any]:
    """``value`` (a config mapping, or None for all defaults) as a plain dict with every key of ``record``;
    an unknown key is a :class:`UserError` naming ``stage.module.<key>.<name>`` (see :func:`check_keys`)."""
    given = dict(value or {})
    check_keys(record, given, key)
    return dataclasses.asdict(record(**given))


def check_keys(record: type, value: Any, key: str) -> None:
    """Refuse what ``record`` does not have: a key (with the closest valid one and the valid keys), or a value
    that is no mapping. ``key`` is the group's dotted name under ``stage.module``."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise UserError(f"stage.module.{key} must be a mapping of {', '.join(_fields(record))}, got {value!r}")
    valid = _fields(record)
    for name in (str(k) for k in value):
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean stage.module.{key}.{close[0]}?" if close else ""
            raise UserError(f"stage.module.{key}.{name} is not an option.{hint} Valid keys of stage.module.{key}: "
                            f"{', '.join(valid)}")


def _fields(record: type) -> list[str]:
    return [field.name for field in dataclasses.fields(record)]
