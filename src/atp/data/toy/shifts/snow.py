"""``snow``: the same streets in winter — snow on the ground and on every upward surface, falling snow.

Terrain is under snow; the road is snow with dark slush ruts and the pavements mostly white (lane
marks disappear under it); tops of buildings, walls, fences, vehicles and bushes carry a snow cap
and trees are bare with snow in their crowns; the sky is a bright overcast white. Flat, bright,
low-contrast light with a blue cast, falling flakes, the camera. Other colours are the source's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from atp.data.toy.render import SOURCE_COLOURS, Palette, camera, paint, smooth_noise
from atp.data.toy.scene import (
    M_BODY,
    M_FACADE,
    M_FENCE,
    M_GAP,
    M_LANE,
    M_LIGHTBOX,
    M_ROAD,
    M_SIDEWALK,
    M_SIGN,
    M_SKY,
    M_TERRAIN,
    M_VEG,
    M_VOID,
    M_WALL,
    Grid,
    Scene,
)

SNOW = (232.0, 236.0, 245.0)
WINTER_COLOURS: Palette = {
    **SOURCE_COLOURS,
    M_SKY: [(208, 212, 222)],
    M_VEG: [(92, 82, 72), (70, 84, 66)],  # bare deciduous trees, dark evergreens
    M_TERRAIN: [SNOW],
    M_GAP: [(205, 208, 218)],  # snow behind the fences
}
#: Materials whose upper edge carries a snow cap.
CAPPED = (M_FACADE, M_WALL, M_FENCE, M_BODY, M_VEG, M_LIGHTBOX, M_SIGN, M_VOID)


@dataclass(frozen=True)
class SnowLook:
    """Strengths of the ``snow`` family (ranges: uniform draws per image)."""

    road_cover: tuple[float, float] = (0.4, 0.8)  # mean share of the road under snow
    walk_cover: tuple[float, float] = (0.75, 1.0)  # … of the pavements
    crown_cover: float = 0.4  # share of tree crowns under snow, roughly
    cap: float = 1 / 50  # snow-cap thickness, share of the image height
    slush: float = 0.6  # what the ruts keep of the road's colour (wet, darker)
    sky_gradient: float = 15.0  # the source's is 60: an even overcast sky
    contrast: float = 0.8  # flat overcast light
    exposure: tuple[float, float] = (1.05, 1.2)
    tint: tuple[float, float, float] = (0.93, 0.97, 1.07)  # blue cast
    flakes: tuple[float, float] = (0.002, 0.008)  # share of pixels starting a flake
    colour_cast: float = 0.03
    blur_sigma: tuple[float, float] = (0.4, 0.8)
    noise: tuple[float, float] = (3.0, 5.0)


SNOW_LOOK = SnowLook()


def _cover(noise: np.ndarray, share: float) -> np.ndarray:
    """A soft 0…1 snow cover from unit-variance noise, ``share`` of the area white on average."""
    logit = np.log(share / (1.0 - share + 1e-6))
    return 1.0 / (1.0 + np.exp(-(2.5 * noise + logit)))


def _caps(scene: Scene, thickness: int) -> np.ndarray:
    """Pixels within ``thickness`` rows below the upper edge of an instance of a capped material."""
    inst = scene.instance
    capped = np.isin(scene.material, CAPPED)
    above = np.vstack([np.full((1, scene.width), -1, inst.dtype), inst[:-1]])
    cap = capped & (inst != above)
    grown = cap.copy()
    for _ in range(thickness - 1):
        grown[1:] |= grown[:-1] & (inst[1:] == inst[:-1])
    return grown & capped


def _ruts(rng: np.random.Generator, road: np.ndarray) -> np.ndarray:
    """Unit-variance noise that runs along the road, towards its vanishing point (tyre tracks).

    The vanishing point is taken from the road mask: its top row and that row's centre.
    """
    h, w = road.shape
    rows = np.nonzero(road.any(axis=1))[0]
    top = rows[0] if len(rows) else h // 2
    vx = np.nonzero(road[top])[0].mean() if len(rows) else w / 2
    frame = Grid.frame(h, w)
    yy, xx = frame.yy, frame.xx
    across = (xx - vx) / np.maximum(yy - top, 1.0) * (h - top) / w  # constant along a road line
    knots = rng.standard_normal(64).astype(np.float32)
    along = np.interp(across, np.linspace(-1.6, 1.6, len(knots)), knots)
    return along * 0.9 + 0.45 * smooth_noise(rng, h, w, 8.0)


def render(rng: np.random.Generator, scene: Scene, look: SnowLook = SNOW_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` in the ``snow`` family's look."""
    h, w = scene.height, scene.width
    img = paint(rng, scene, WINTER_COLOURS, sky_gradient=look.sky_gradient)
    snow = np.asarray(SNOW, np.float32)
    material = scene.material

    road = np.isin(material, (M_ROAD, M_LANE))
    cover = _cover(_ruts(rng, road), rng.uniform(*look.road_cover))[..., None]
    img[road] = (cover * snow + (1.0 - cover) * look.slush * img)[road]
    walk = material == M_SIDEWALK
    cover = _cover(smooth_noise(rng, h, w, 6.0), rng.uniform(*look.walk_cover))[..., None]
    img[walk] = (cover * snow + (1.0 - cover) * img)[walk]
    crowns = (material == M_VEG) & (smooth_noise(rng, h, w, 3.0) > 1.0 - 2.0 * look.crown_cover)
    img[crowns] = snow * rng.uniform(0.85, 1.0)
    img[_caps(scene, max(1, round(look.cap * h)))] = snow

    mean = img.mean(axis=(0, 1), keepdims=True)
    img = (img - mean) * look.contrast + mean
    img *= np.asarray(look.tint, np.float32) * rng.uniform(*look.exposure)
    flakes = (rng.random((h, w)) < rng.uniform(*look.flakes)).astype(np.float32)
    flakes = np.clip(cv2.GaussianBlur(flakes, (0, 0), 0.7) * 4.0, 0.0, 1.0)[..., None]
    img = img * (1.0 - flakes) + 245.0 * flakes
    return camera(rng, img.astype(np.float32), look.colour_cast, look.blur_sigma, rng.uniform(*look.noise))
