"""The target shift families: how the toy target domain looks, one module per family.

Every family draws the same scene layouts (so the same label maps for a given ``(seed, domain,
index)``) and changes only the appearance. ``mixed`` is today's toy shift and the default;
``night``, ``fog``, ``palette`` and ``snow`` are the other development families; ``sensor`` (a cheap
camera and heavy JPEG) and ``glare`` (into a low sun) are held out: recipe changes are decided on
the others and only reported on them. ``docs/shifts.md`` describes each family and its measured gap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from atp.data.toy.scene import Scene
from atp.data.toy.shifts import fog, glare, mixed, night, palette, sensor, snow

DEFAULT_SHIFT = "mixed"

#: family name → ``render(rng, scene)`` giving the target's RGB uint8 image.
SHIFTS: dict[str, Callable[[np.random.Generator, Scene], np.ndarray]] = {
    "mixed": mixed.render,
    "night": night.render,
    "fog": fog.render,
    "palette": palette.render,
    "snow": snow.render,
    "sensor": sensor.render,
    "glare": glare.render,
}


def check_shift(name: str) -> str:
    """``name`` when it is a known shift family; otherwise a ValueError naming the valid ones."""
    if name not in SHIFTS:
        raise ValueError(
            f"unknown toy shift family {name!r}: use one of {', '.join(SHIFTS)} "
            "(generator argument shift=, config key dataset.toy.shift)"
        )
    return name


def render_target(rng: np.random.Generator, scene: Scene, shift: str = DEFAULT_SHIFT) -> np.ndarray:
    """RGB uint8 image of ``scene`` as the target domain of family ``shift`` looks."""
    return SHIFTS[check_shift(shift)](rng, scene)
