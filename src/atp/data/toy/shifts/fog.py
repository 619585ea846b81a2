"""``fog``: dense, patchy fog; contrast falls with distance until the far scene is gone.

Koschmieder's model on the scene's depth proxy (0 at the camera, 1 at the horizon): transmission
``t = exp(-beta · depth)``, image ``= t · clear + (1 − t) · airlight``, with an extinction
``beta`` that varies over the image (patches of thicker fog). Forward scattering blurs what is
behind more fog, and the light colours lose saturation. Colours and textures are the source's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from atp.data.toy.render import camera, paint, smooth_noise
from atp.data.toy.scene import Scene


@dataclass(frozen=True)
class FogLook:
    """Strengths of the ``fog`` family (ranges: uniform draws per image)."""

    beta: tuple[float, float] = (1.8, 3.2)  # extinction: transmission exp(-beta * depth)
    patchiness: float = 0.3  # relative spatial variation of beta
    airlight: tuple[float, float] = (180.0, 225.0)  # grey level of the fog
    airlight_tint: tuple[float, float, float] = (0.97, 0.99, 1.03)
    scatter_blur: float = 1.5  # sigma (px at 256 wide) of the blur where the fog is thick
    desaturation: float = 0.3
    colour_cast: float = 0.03
    blur_sigma: tuple[float, float] = (0.3, 0.6)
    noise: tuple[float, float] = (2.0, 4.0)


FOG_LOOK = FogLook()


def render(rng: np.random.Generator, scene: Scene, look: FogLook = FOG_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` in the ``fog`` family's look."""
    h, w = scene.height, scene.width
    img = paint(rng, scene)
    beta = rng.uniform(*look.beta) * (1.0 + look.patchiness * smooth_noise(rng, h, w, max(h, w) / 3))
    transmission = np.exp(-np.clip(beta, 0.0, None) * scene.depth)[..., None]
    scattered = cv2.GaussianBlur(img, (0, 0), look.scatter_blur * w / 256)
    img = transmission * img + (1.0 - transmission) * scattered
    grey = img.mean(axis=-1, keepdims=True)
    img = grey + (1.0 - look.desaturation) * (img - grey)
    airlight = rng.uniform(*look.airlight) * np.asarray(look.airlight_tint, np.float32)
    img = transmission * img + (1.0 - transmission) * airlight
    return camera(rng, img.astype(np.float32), look.colour_cast, look.blur_sigma, rng.uniform(*look.noise))
