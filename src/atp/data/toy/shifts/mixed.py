"""``mixed`` (the default family): each target image is dusk/night, fog or rain, with a moved palette.

Half-way (``palette_shift`` 0.5) towards an overcast palette (grey sky, other facades, wet bluish
road, autumn vegetation, brown terrain, muted vehicles and clothing), coarser fine texture, a
flatter sky; then one of three conditions drawn per image, and the camera. This is the toy shift
the demo and the figures of docs/results.md use: changing anything here changes their data.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from atp.data.toy.render import SOURCE_COLOURS, Palette, camera, paint, smooth_noise
from atp.data.toy.scene import (
    M_BODY,
    M_CLOTHES,
    M_FACADE,
    M_FENCE,
    M_LAMP,
    M_LANE,
    M_ROAD,
    M_SIDEWALK,
    M_SKY,
    M_TERRAIN,
    M_VEG,
    M_WALL,
    M_WINDOW,
    Scene,
)

TARGET_CONDITIONS = ("night", "fog", "rain")

MIXED_COLOURS: Palette = {
    **SOURCE_COLOURS,
    M_SKY: [(150, 152, 160)],
    M_FACADE: [(125, 115, 105), (95, 100, 110), (140, 95, 75), (165, 160, 150)],
    M_WINDOW: [(80, 85, 95)],
    M_ROAD: [(105, 108, 122)],
    M_SIDEWALK: [(135, 135, 145)],
    M_VEG: [(115, 110, 45), (95, 90, 50)],
    M_TERRAIN: [(135, 115, 80)],
    M_WALL: [(120, 125, 130)],
    M_FENCE: [(95, 95, 100)],
    M_BODY: [(130, 40, 40), (50, 60, 110), (185, 185, 190), (40, 40, 45), (120, 120, 125), (150, 120, 50)],
    M_CLOTHES: [(50, 50, 70), (100, 40, 45), (45, 45, 45), (150, 150, 150), (70, 85, 70)],
}


@dataclass(frozen=True)
class TargetLook:
    """How far the ``mixed`` target's appearance is from the source's (ranges: uniform draws per image)."""

    palette_shift: float = 0.5  # 0 = source class colours, 1 = the target palette
    texture_cell: float = 2.5  # correlation length (px) of fine texture; the source's is 1
    sky_gradient: float = 25.0  # the source's is 60
    night_gain: tuple[float, float] = (0.45, 0.65)
    night_noise: tuple[float, float] = (5.0, 9.0)
    fog_beta: tuple[float, float] = (0.7, 1.5)  # transmission exp(-beta * depth)
    fog_noise: tuple[float, float] = (3.0, 6.0)
    rain_gain: tuple[float, float] = (0.7, 0.85)
    rain_noise: tuple[float, float] = (4.0, 7.0)
    rain_streaks: float = 120.0
    colour_cast: float = 0.06  # std of a per-channel gain
    blur_sigma: tuple[float, float] = (0.4, 0.9)


TARGET_LOOK = TargetLook()


def render(rng: np.random.Generator, scene: Scene, look: TargetLook = TARGET_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` in the ``mixed`` family's look."""
    h, w = scene.height, scene.width
    img = paint(
        rng,
        scene,
        MIXED_COLOURS,
        look.palette_shift,
        texture_cell=look.texture_cell,
        sky_gradient=look.sky_gradient,
    )
    sky = scene.material == M_SKY
    condition = TARGET_CONDITIONS[rng.integers(len(TARGET_CONDITIONS))]
    depth = scene.depth[..., None]
    if condition == "night":  # dark and bluish, lit windows and lamps, light glow
        lit = (scene.material == M_WINDOW) & (smooth_noise(rng, h, w, 4.0) > 0.0)
        img *= rng.uniform(*look.night_gain)
        img *= np.array([0.85, 0.9, 1.15], np.float32)
        img[lit] = np.array([235, 205, 120], np.float32) + rng.normal(0, 10, 3)
        lamps = scene.material == M_LAMP
        img[lamps] = np.clip(img[lamps] * 3.0, 0, 255)
        img[sky] = np.array([25, 30, 50], np.float32) + img[sky] * 0.3
        glow = np.clip(smooth_noise(rng, h, w, max(h, w) / 6), 0, None)[..., None] * np.array(
            [60, 50, 25], np.float32
        )
        img += glow * (scene.depth[..., None] < 0.8)
        noise_sigma = rng.uniform(*look.night_noise)
    elif condition == "fog":  # airlight over distance, lower contrast
        transmission = np.exp(-rng.uniform(*look.fog_beta) * depth)
        airlight = rng.uniform(175, 215) * np.array([0.97, 0.99, 1.02], np.float32)
        img = img * transmission + airlight * (1.0 - transmission)
        img = (img - img.mean()) * 0.85 + img.mean()
        noise_sigma = rng.uniform(*look.fog_noise)
    else:  # rain: darker, wet reflections on the ground, streaks
        img *= rng.uniform(*look.rain_gain)
        ground = np.isin(scene.material, (M_ROAD, M_SIDEWALK, M_LANE))
        reflection = np.flipud(img)  # a crude mirror of what is above
        img[ground] = 0.6 * img[ground] + 0.4 * reflection[ground]
        streaks = (smooth_noise(rng, h, w, 1.0) > 2.0).astype(np.float32)
        img += look.rain_streaks * cv2.blur(streaks, (1, 9))[..., None]
        noise_sigma = rng.uniform(*look.rain_noise)
    return camera(rng, img, look.colour_cast, look.blur_sigma, noise_sigma)
