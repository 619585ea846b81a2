"""What every look of a toy scene shares: class colours, textures, sky and shading, and the camera.

:func:`paint` gives the clean image a look starts from; :func:`render_source` finishes it as the
source domain (a game-like render); the target shift families (:mod:`atp.data.toy.shifts`) change
it and finish it with :func:`camera`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

Palette = Mapping[int, Sequence[tuple[int, int, int]]]
#: Texture table: material → (jitter of the instance colour, amplitude of fine texture, amplitude of
#: coarse texture).
Texture = Mapping[int, tuple[float, float, float]]

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
TEXTURE: Texture = {
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


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth Gaussian noise with correlation length ``cell`` pixels (unit variance, roughly)."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def instance_colours(
    rng: np.random.Generator, scene: Scene, palette: Palette, jitter: bool = True, texture: Texture = TEXTURE
) -> np.ndarray:
    """One colour per instance: the palette entry its style draw picks, plus a random jitter."""
    colours = np.empty((len(scene.instance_material), 3), np.float32)
    for k, (material, style) in enumerate(zip(scene.instance_material, scene.instance_style, strict=True)):
        choices = palette[material]
        colours[k] = choices[min(int(style * len(choices)), len(choices) - 1)]
        if jitter:
            colours[k] += rng.normal(0.0, texture[material][0], 3) * np.array([1.0, 0.9, 1.1])
    return colours


def paint(
    rng: np.random.Generator,
    scene: Scene,
    palette: Palette | None = None,
    palette_strength: float = 1.0,
    texture: Texture = TEXTURE,
    texture_cell: float = 1.0,
    sky_gradient: float = 60.0,
) -> np.ndarray:
    """The clean float32 RGB image of ``scene``: instance colours, texture, sky gradient, shading.

    The defaults give the source's look. ``palette`` moves every instance's base colour by
    ``palette_strength`` × (its ``palette`` colour − its source colour), keeping the instance's
    jitter; ``texture`` sets the jitter and texture amplitudes; ``texture_cell`` is the correlation
    length (px) of the fine texture; ``sky_gradient`` how much brighter the sky gets downwards.
    """
    h, w = scene.height, scene.width
    colours = instance_colours(rng, scene, SOURCE_COLOURS, texture=texture)
    if palette is not None:
        moved = instance_colours(np.random.default_rng(0), scene, palette, jitter=False)
        plain = instance_colours(np.random.default_rng(0), scene, SOURCE_COLOURS, jitter=False)
        colours += palette_strength * (moved - plain)
    img = colours[scene.instance]
    fine_amp = np.array([texture[m][1] for m in range(N_MATERIALS)], np.float32)[scene.material]
    coarse_amp = np.array([texture[m][2] for m in range(N_MATERIALS)], np.float32)[scene.material]
    fine = smooth_noise(rng, h, w, texture_cell)
    coarse = smooth_noise(rng, h, w, max(h, w) / 10)
    img += (fine * fine_amp + coarse * coarse_amp)[..., None]
    sky = scene.material == M_SKY
    yy = np.arange(h, dtype=np.float32)[:, None] / h
    img[sky] += (yy * np.ones((1, w), np.float32))[sky][:, None] * sky_gradient
    # soft shading: things darker at the bottom, like light from above
    img *= (1.05 - 0.15 * yy)[..., None]
    return img


def render_source(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """RGB uint8 image of ``scene`` as the source domain looks: clean, a random exposure, faint noise."""
    img = paint(rng, scene)
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0.0, 2.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def camera(
    rng: np.random.Generator,
    img: np.ndarray,
    colour_cast: float,
    blur_sigma: tuple[float, float],
    noise_sigma: float,
) -> np.ndarray:
    """Finish a target image as a camera would: a colour cast, lens blur, sensor noise → uint8.

    ``colour_cast`` is the std of a per-channel gain, ``blur_sigma`` the range of the Gaussian
    blur's sigma (px), ``noise_sigma`` the std of the additive noise (grey levels).
    """
    img = img * (1.0 + rng.normal(0.0, colour_cast, 3).astype(np.float32))
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*blur_sigma))
    img += rng.normal(0.0, noise_sigma, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
