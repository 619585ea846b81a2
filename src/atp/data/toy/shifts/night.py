"""``night``: the same streets after dark, lit by street lights, the camera car's headlights and windows.

Daylight is replaced by a dim bluish ambient light; uneven warm pools of street lighting and the
camera car's low beams light the near scene; windows, traffic lights and the lights of other
vehicles glow (with bloom); the sky is dark with a faint light-pollution band over the horizon;
a high-gain sensor adds strong noise. Colours and textures are the source's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from atp.data.toy.render import camera, paint, smooth_noise
from atp.data.toy.scene import M_BODY, M_LAMP, M_SKY, M_WINDOW, Grid, Scene


@dataclass(frozen=True)
class NightLook:
    """Strengths of the ``night`` family (ranges: uniform draws per image)."""

    ambient: tuple[float, float] = (0.12, 0.22)  # share of the daylight left
    ambient_tint: tuple[float, float, float] = (0.8, 0.9, 1.2)  # bluish
    street_light: float = 0.45  # peak gain of the street-light pools
    street_tint: tuple[float, float, float] = (1.2, 1.0, 0.7)  # sodium-orange
    low_beam: tuple[float, float] = (0.4, 0.7)  # peak gain of the camera car's headlights
    window_threshold: float = 0.4  # windows are lit where a smooth noise exceeds this: about a third
    vehicle_lights: float = 0.8  # probability that another vehicle shows head- or tail-lights
    bloom: float = 0.6  # how much of the light sources' glow spreads around them
    sky: tuple[float, float, float] = (8.0, 10.0, 22.0)
    colour_cast: float = 0.04
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    noise: tuple[float, float] = (6.0, 10.0)  # sensor noise std (grey levels)


NIGHT_LOOK = NightLook()


def _vehicle_lights(rng: np.random.Generator, scene: Scene, chance: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks of head- and tail-lights: a pair of round lamps low on each lit vehicle's body."""
    h, w = scene.height, scene.width
    frame = Grid.frame(h, w)
    yy, xx = frame.yy, frame.xx
    head = np.zeros((h, w), bool)
    tail = np.zeros((h, w), bool)
    for k, material in enumerate(scene.instance_material):
        if material != M_BODY:
            continue
        body = scene.instance == k
        ys, xs = np.nonzero(body)
        lit, is_head = rng.random() < chance, rng.random() < 0.5
        if not lit or len(ys) < 4:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        radius = max(0.7, 0.06 * (x1 - x0))
        cy = y0 + 0.7 * (y1 - y0)
        lamps = np.zeros((h, w), bool)
        for cx in (x0 + 0.12 * (x1 - x0), x1 - 0.12 * (x1 - x0)):
            lamps |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        lamps &= body
        (head if is_head else tail)[lamps] = True
    return head, tail


def render(rng: np.random.Generator, scene: Scene, look: NightLook = NIGHT_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` in the ``night`` family's look."""
    h, w = scene.height, scene.width
    img = paint(rng, scene)
    sky = scene.material == M_SKY
    near = 1.0 - scene.depth  # 1 at the camera, 0 far away

    # illumination: dim ambient + street-light pools + the camera car's low beams
    pools = np.clip(smooth_noise(rng, h, w, max(h, w) / 5), 0.0, None) * near**0.5
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w
    beam = np.exp(-(((xx - 0.5) / 0.3) ** 2))[None, :] * near**2
    light = (
        rng.uniform(*look.ambient) * np.asarray(look.ambient_tint, np.float32)
        + look.street_light * pools[..., None] * np.asarray(look.street_tint, np.float32)
        + rng.uniform(*look.low_beam) * beam[..., None] * np.array([1.0, 0.97, 0.9], np.float32)
    )
    day = img.copy()
    img *= light
    yy = np.arange(h, dtype=np.float32)[:, None] / h
    band = np.broadcast_to(yy, (h, w))[sky][:, None]  # brighter towards the horizon
    img[sky] = np.asarray(look.sky, np.float32) + band * np.array([45, 35, 30], np.float32)

    # light sources: lit windows, traffic lights, other vehicles' lights
    glow = np.zeros_like(img)
    lit = (scene.material == M_WINDOW) & (smooth_noise(rng, h, w, 4.0) > look.window_threshold)
    glow[lit] = np.array([235, 200, 120], np.float32) * rng.uniform(0.7, 1.0)
    lamps = scene.material == M_LAMP
    glow[lamps] = day[lamps]
    head, tail = _vehicle_lights(rng, scene, look.vehicle_lights)
    glow[head] = (255, 250, 225)
    glow[tail] = (230, 30, 25)
    sources = lit | lamps | head | tail
    img[sources] = glow[sources]
    img += look.bloom * cv2.GaussianBlur(glow, (0, 0), max(1.0, 0.012 * w))
    return camera(rng, img, look.colour_cast, look.blur_sigma, rng.uniform(*look.noise))
