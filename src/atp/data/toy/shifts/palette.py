"""``palette``: another city in daylight — other class colours and other surface textures.

A sunny southern old town instead of the source's game city: pale hazy sky, whitewashed, ochre
and terracotta plaster, shuttered windows, cobbled reddish road with yellow markings, limestone
pavements, olive-green vegetation on dry yellow grass, another car fleet and summer clothing.
Textures change with the materials: blotchy weathered plaster, rough cobbles and flagstones,
coarser grain overall (fine texture correlation 2 px instead of 1). A warm white balance. No
weather and no change of light level: the shift is the look of the world itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp.data.toy.render import SOURCE_COLOURS, TEXTURE, Palette, Texture, camera, paint
from atp.data.toy.scene import (
    M_BIKE,
    M_BODY,
    M_CLOTHES,
    M_FACADE,
    M_FENCE,
    M_GAP,
    M_GLASS,
    M_LANE,
    M_LIGHTBOX,
    M_POLE,
    M_ROAD,
    M_SIDEWALK,
    M_SKY,
    M_TERRAIN,
    M_VEG,
    M_VOID,
    M_WALL,
    M_WINDOW,
    Scene,
)

PALETTE_COLOURS: Palette = {
    **SOURCE_COLOURS,
    M_SKY: [(180, 195, 235)],
    M_FACADE: [(235, 228, 212), (215, 172, 112), (196, 118, 86), (232, 200, 185), (178, 192, 196)],
    M_WINDOW: [(48, 82, 62), (92, 64, 44)],  # green or wooden shutters
    M_ROAD: [(138, 118, 106)],
    M_LANE: [(232, 198, 64)],
    M_SIDEWALK: [(208, 198, 172)],
    M_VEG: [(98, 110, 62), (64, 86, 48)],
    M_GAP: [(120, 105, 80)],
    M_TERRAIN: [(192, 172, 112)],
    M_WALL: [(188, 168, 136)],
    M_FENCE: [(42, 82, 52)],
    M_POLE: [(48, 58, 48)],
    M_LIGHTBOX: [(150, 130, 40)],
    M_BODY: [(240, 240, 236), (205, 205, 210), (150, 32, 30), (40, 92, 140), (232, 200, 82), (92, 102, 82)],
    M_GLASS: [(96, 114, 126)],
    M_CLOTHES: [(222, 222, 212), (62, 122, 172), (202, 92, 62), (232, 202, 152), (52, 52, 52)],
    M_BIKE: [(182, 32, 32), (202, 202, 202)],
    M_VOID: [(152, 122, 92)],
}
PALETTE_TEXTURE: Texture = {
    **TEXTURE,
    M_SKY: (6, 1, 8),
    M_FACADE: (18, 10, 22),  # weathered plaster
    M_ROAD: (10, 22, 6),  # cobbles
    M_SIDEWALK: (10, 14, 6),  # flagstones
    M_VEG: (15, 20, 14),
    M_TERRAIN: (12, 18, 20),
    M_WALL: (15, 14, 10),  # stone
}


@dataclass(frozen=True)
class PaletteLook:
    """Strengths of the ``palette`` family (ranges: uniform draws per image)."""

    palette_strength: float = 1.0  # 1 = the instance colours are entirely the family's palette
    texture_cell: float = 2.0  # correlation length (px) of fine texture; the source's is 1
    sky_gradient: float = 30.0  # the source's is 60
    white_balance: tuple[float, float, float] = (1.06, 1.0, 0.92)  # warm sunlight
    exposure: tuple[float, float] = (0.95, 1.1)
    colour_cast: float = 0.03
    blur_sigma: tuple[float, float] = (0.3, 0.6)
    noise: tuple[float, float] = (2.0, 4.0)


PALETTE_LOOK = PaletteLook()


def render(rng: np.random.Generator, scene: Scene, look: PaletteLook = PALETTE_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` in the ``palette`` family's look."""
    img = paint(
        rng,
        scene,
        PALETTE_COLOURS,
        look.palette_strength,
        texture=PALETTE_TEXTURE,
        texture_cell=look.texture_cell,
        sky_gradient=look.sky_gradient,
    )
    img *= np.asarray(look.white_balance, np.float32) * rng.uniform(*look.exposure)
    return camera(rng, img, look.colour_cast, look.blur_sigma, rng.uniform(*look.noise))
