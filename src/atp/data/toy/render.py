"""The looks of a toy scene: class colours, textures, shading, and the source and target finishes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from atp.data.toy.scene import (
    M_BIKE,
    M_BODY,
    M_CLOTHES,
    M_FACADE,
    M_FENCE,
    M_GAP,
    M_GLASS,
    M_LAMP,
    M_LANE,
    M_LIGHTBOX,
    M_POLE,
    M_ROAD,
    M_SIDEWALK,
    M_SIGN,
    M_SKIN,
    M_SKY,
    M_TERRAIN,
    M_TYRE,
    M_VEG,
    M_VOID,
    M_WALL,
    M_WINDOW,
    N_MATERIALS,
    Scene,
)

# Base colours per material, (n_choices, 3) RGB; an instance's style draw picks one and jitters it.
SOURCE_COLOURS: dict[int, list[tuple[int, int, int]]] = {
    M_SKY: [(110, 165, 230)],
    M_FACADE: [(190, 170, 135), (150, 150, 155), (175, 100, 80), (210, 200, 180), (120, 120, 130)],
    M_WINDOW: [(55, 65, 85)],
    M_ROAD: [(85, 85, 90)],
    M_LANE: [(235, 235, 225)],
    M_SIDEWALK: [(180, 165, 160)],
    M_VEG: [(55, 125, 40), (70, 140, 50)],
    M_GAP: [(70, 75, 65)],  # what shows through a fence
    M_TERRAIN: [(145, 180, 90)],
    M_WALL: [(170, 160, 145)],
    M_FENCE: [(150, 135, 110)],
    M_POLE: [(125, 125, 130)],
    M_LIGHTBOX: [(35, 35, 35)],
    M_LAMP: [(255, 50, 30), (60, 255, 90), (255, 200, 40)],
    M_SIGN: [(235, 205, 0), (30, 80, 210), (215, 30, 30), (245, 245, 245)],
    M_BODY: [(185, 20, 20), (25, 45, 170), (235, 235, 235), (30, 30, 30), (165, 165, 175), (205, 150, 20)],
    M_GLASS: [(40, 50, 70)],
    M_TYRE: [(25, 25, 25)],
    M_SKIN: [(225, 175, 135), (160, 110, 80)],
    M_CLOTHES: [(30, 30, 90), (150, 20, 30), (40, 40, 40), (200, 200, 200), (60, 110, 60)],
    M_BIKE: [(35, 35, 35), (20, 40, 140)],
    M_VOID: [(110, 85, 60)],
}
# The target's palette shift: overcast sky, other facades, wet bluish road, autumn vegetation,
# brown terrain, muted vehicles and clothing.
TARGET_COLOURS: dict[int, list[tuple[int, int, int]]] = {
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
# (jitter of the instance colour, amplitude of fine texture, amplitude of coarse texture)
TEXTURE: dict[int, tuple[float, float, float]] = {
    M_SKY: (8, 2, 18),
    M_FACADE: (18, 6, 10),
    M_WINDOW: (10, 4, 0),
    M_ROAD: (8, 9, 8),
    M_LANE: (8, 5, 0),
    M_SIDEWALK: (10, 7, 6),
    M_VEG: (15, 28, 10),
    M_GAP: (10, 8, 0),
    M_TERRAIN: (12, 14, 16),
    M_WALL: (15, 6, 6),
    M_FENCE: (12, 6, 0),
    M_POLE: (10, 3, 0),
    M_LIGHTBOX: (5, 3, 0),
    M_LAMP: (10, 0, 0),
    M_SIGN: (10, 3, 0),
    M_BODY: (20, 3, 0),
    M_GLASS: (10, 4, 0),
    M_TYRE: (5, 3, 0),
    M_SKIN: (12, 3, 0),
    M_CLOTHES: (20, 5, 0),
    M_BIKE: (10, 3, 0),
    M_VOID: (15, 6, 0),
}
TARGET_CONDITIONS = ("night", "fog", "rain")


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth Gaussian noise with correlation length ``cell`` pixels (unit variance, roughly)."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def instance_colours(
    rng, scene: Scene, palette: Mapping[int, list[tuple[int, int, int]]], jitter: bool = True
):
    """One colour per instance: the palette entry its style draw picks, plus a random jitter."""
    colours = np.empty((len(scene.instance_material), 3), np.float32)
    for k, (material, style) in enumerate(zip(scene.instance_material, scene.instance_style, strict=True)):
        choices = palette[material]
        colours[k] = choices[min(int(style * len(choices)), len(choices) - 1)]
        if jitter:
            colours[k] += rng.normal(0.0, TEXTURE[material][0], 3) * np.array([1.0, 0.9, 1.1])
    return colours


@dataclass(frozen=True)
class TargetLook:
    """How far the target's appearance is from the source's (ranges are uniform draws per image)."""

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


def render(rng: np.random.Generator, scene: Scene, domain: str, look: TargetLook = TARGET_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` as the ``source`` or the ``target`` domain looks."""
    h, w = scene.height, scene.width
    target = domain == "target"
    colours = instance_colours(rng, scene, SOURCE_COLOURS)
    if target:
        shifted = instance_colours(np.random.default_rng(0), scene, TARGET_COLOURS, jitter=False)
        plain = instance_colours(np.random.default_rng(0), scene, SOURCE_COLOURS, jitter=False)
        colours += look.palette_shift * (shifted - plain)  # same jitter, base colour moved
    img = colours[scene.instance]
    fine_amp = np.array([TEXTURE[m][1] for m in range(N_MATERIALS)], np.float32)[scene.material]
    coarse_amp = np.array([TEXTURE[m][2] for m in range(N_MATERIALS)], np.float32)[scene.material]
    fine = smooth_noise(rng, h, w, look.texture_cell if target else 1.0)
    coarse = smooth_noise(rng, h, w, max(h, w) / 10)
    img += (fine * fine_amp + coarse * coarse_amp)[..., None]
    sky = scene.material == M_SKY
    yy = np.arange(h, dtype=np.float32)[:, None] / h
    img[sky] += (yy * np.ones((1, w), np.float32))[sky][:, None] * (look.sky_gradient if target else 60.0)
    # soft shading: things darker at the bottom, like light from above
    img *= (1.05 - 0.15 * yy)[..., None]
    if not target:
        img = img * rng.uniform(0.9, 1.1) + rng.normal(0.0, 2.0, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

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
    img *= 1.0 + rng.normal(0.0, look.colour_cast, 3).astype(np.float32)  # colour cast
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*look.blur_sigma))
    img += rng.normal(0.0, noise_sigma, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
