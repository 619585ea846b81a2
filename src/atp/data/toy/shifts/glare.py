"""``glare``: driving into a low sun; the exposure is pushed, the sky clips, everything else is backlit.

A low, warm sun stands just above the horizon in the frame. The sky brightens towards it; the
surfaces the camera sees are in their own shadow (silhouetted against the bright sky) and the road
shines below the sun; scattered light in the lens lays a bright warm veil over the image, thickest
around the sun, and a flare streak and ghosts on the line through the image centre; the exposure
is pushed so that the sky and the sun's surroundings clip. Colours and textures are the source's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp.data.toy.render import camera, paint
from atp.data.toy.scene import M_LANE, M_ROAD, M_SKY, Grid, Scene


@dataclass(frozen=True)
class GlareLook:
    """Strengths of the ``glare`` family (ranges: uniform draws per image; lengths as shares of the width)."""

    sun_x: tuple[float, float] = (0.2, 0.8)  # share of the width
    sun_y: tuple[float, float] = (0.12, 0.32)  # share of the height; the horizon is at 0.36–0.48
    sun_radius: float = 0.02  # the over-exposed disc
    aureole: tuple[float, float] = (80.0, 140.0)  # grey levels the sky gains at the sun …
    aureole_width: float = 0.3  # … falling off as exp(-distance / width)
    backlight: tuple[float, float] = (0.45, 0.65)  # share of the light the camera-facing sides lose …
    backlight_spread: float = 0.3  # … in full towards the sun, 60 % of it far to the side (Gaussian width)
    sheen: tuple[float, float] = (30.0, 70.0)  # grey levels of the sun's reflection on the road
    veil: tuple[float, float] = (0.08, 0.16)  # share of veiling glare over the whole image …
    veil_near_sun: tuple[float, float] = (0.5, 0.75)  # … and the extra around a fully visible sun …
    veil_width: float = 0.2  # … falling off as exp(-distance / width)
    veil_colour: tuple[float, float, float] = (255.0, 238.0, 205.0)
    tint: tuple[float, float, float] = (1.08, 1.0, 0.85)  # warm low-sun light
    exposure: tuple[float, float] = (1.15, 1.4)
    flare: tuple[float, float] = (0.5, 1.0)  # strength of the streak and the ghosts
    colour_cast: float = 0.03
    blur_sigma: tuple[float, float] = (0.3, 0.6)
    noise: tuple[float, float] = (2.0, 4.0)


GLARE_LOOK = GlareLook()

#: Lens ghosts: (position on the line sun → centre → beyond, where 1 is the centre; radius as a share
#: of the width; colour in grey levels at flare strength 1).
GHOSTS = (
    (0.55, 0.025, (20.0, 28.0, 14.0)),
    (1.35, 0.05, (14.0, 9.0, 22.0)),
    (1.8, 0.035, (24.0, 16.0, 8.0)),
)


def render(rng: np.random.Generator, scene: Scene, look: GlareLook = GLARE_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` in the ``glare`` family's look."""
    h, w = scene.height, scene.width
    img = paint(rng, scene)
    frame = Grid.frame(h, w)
    sx, sy = rng.uniform(*look.sun_x) * w, rng.uniform(*look.sun_y) * h
    dist = np.hypot(frame.xx - sx, frame.yy - sy) / w  # from the sun, in widths
    sky = scene.material == M_SKY
    disc = dist <= look.sun_radius
    visible = float(sky[disc].mean()) if disc.any() else 0.0  # share of the sun not hidden by the scene
    warm = np.asarray(look.tint, np.float32)

    # light: the sky brightens towards the sun; what faces the camera is in its own shadow
    img[sky] += (rng.uniform(*look.aureole) * np.exp(-dist / look.aureole_width))[sky][:, None] * warm
    towards_sun = np.exp(-(((frame.xx - sx) / (look.backlight_spread * w)) ** 2))
    shade = 1.0 - rng.uniform(*look.backlight) * (0.6 + 0.4 * towards_sun)
    img[~sky] *= shade[~sky][:, None]
    road = np.isin(scene.material, (M_ROAD, M_LANE))
    below = np.clip((frame.yy - sy) / h, 0.0, None)  # the reflection widens towards the camera
    sheen = np.exp(-(((frame.xx - sx) / (0.04 * w + 0.3 * below * w)) ** 2))
    img[road] += (rng.uniform(*look.sheen) * sheen)[road][:, None]
    img *= warm
    img[sky & disc] = 2.0 * np.asarray(look.veil_colour, np.float32)

    # the lens: veiling glare (lower contrast, thickest around the sun), a streak and ghosts
    veil = rng.uniform(*look.veil) + rng.uniform(*look.veil_near_sun) * (0.3 + 0.7 * visible) * np.exp(
        -dist / look.veil_width
    )
    img = (1.0 - veil[..., None]) * img + veil[..., None] * np.asarray(look.veil_colour, np.float32)
    flare = rng.uniform(*look.flare) * visible
    streak = np.exp(-(((frame.yy - sy) / (0.006 * w)) ** 2) - np.abs(frame.xx - sx) / (0.35 * w))
    img += (80.0 * flare * streak)[..., None] * warm
    cx, cy = w / 2, h / 2
    for position, radius, colour in GHOSTS:
        gx, gy = sx + position * (cx - sx), sy + position * (cy - sy)
        r = np.hypot(frame.xx - gx, frame.yy - gy) / (radius * w)
        ghost = np.clip((1.0 - r) * 4.0, 0.0, 1.0) * (0.6 + 0.4 * r)  # soft edge, brighter rim
        img += flare * ghost[..., None] * np.asarray(colour, np.float32)

    img *= rng.uniform(*look.exposure)
    return camera(rng, img.astype(np.float32), look.colour_cast, look.blur_sigma, rng.uniform(*look.noise))
