"""``sensor``: the source's daylight scene through a cheap, old camera and a lossy pipeline.

Defocus and camera shake blur the image; the lens darkens the corners; a low-resolution sensor
adds signal-dependent shot noise and read noise; the camera misjudges the white balance,
upsamples to the output size, sharpens and stores a heavily compressed JPEG (blocking, ringing,
smeared chroma). Colours, textures and light are the source's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from atp.data.toy.render import paint
from atp.data.toy.scene import Scene


@dataclass(frozen=True)
class SensorLook:
    """Strengths of the ``sensor`` family (ranges: uniform draws per image; lengths in px at 256 wide)."""

    exposure: tuple[float, float] = (0.85, 1.1)
    defocus: tuple[float, float] = (0.6, 1.6)  # radius of the disc-shaped point spread
    shake: tuple[float, float] = (0.0, 4.0)  # length of the motion blur, in a uniformly drawn direction
    vignetting: tuple[float, float] = (0.25, 0.45)  # share of the light lost in the corners
    sensor_scale: tuple[float, float] = (0.5, 0.8)  # sensor resolution, share of the output's
    shot: tuple[float, float] = (0.15, 0.4)  # shot-noise variance per grey level of signal
    read: tuple[float, float] = (2.0, 4.0)  # read-noise std (grey levels)
    white_balance: tuple[float, float] = (-0.1, 0.1)  # e: channel gains (1 + e, 1, 1 - e), warm or cool
    green_tint: tuple[float, float] = (-0.04, 0.04)  # g: green gain 1 + g
    sharpen: tuple[float, float] = (0.3, 1.0)  # unsharp-mask amount of the camera's processing
    jpeg_quality: tuple[int, int] | None = (8, 25)  # integers, both ends included; None: no JPEG


SENSOR_LOOK = SensorLook()


def _point_spread(radius: float, length: float, angle: float, supersample: int = 4) -> np.ndarray:
    """A disc of ``radius`` px swept over ``length`` px at ``angle``: defocus plus camera shake (sums to 1)."""
    radius = max(radius, 0.5)  # at least about one pixel
    half = int(np.ceil(radius + length / 2)) + 1
    size = 2 * half + 1
    grid = (np.arange(size * supersample, dtype=np.float32) + 0.5) / supersample - size / 2
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    covered = np.zeros_like(xx)
    steps = max(2, int(np.ceil(length * supersample)) + 1)
    for t in np.linspace(-length / 2, length / 2, steps):
        covered += (yy - t * np.sin(angle)) ** 2 + (xx - t * np.cos(angle)) ** 2 <= radius**2
    kernel = covered.reshape(size, supersample, size, supersample).sum(axis=(1, 3))
    return kernel / kernel.sum()


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """``img`` (RGB uint8) after a round trip through JPEG at ``quality`` (OpenCV: 4:2:0 chroma)."""
    ok, data = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


def render(rng: np.random.Generator, scene: Scene, look: SensorLook = SENSOR_LOOK) -> np.ndarray:
    """RGB uint8 image of ``scene`` in the ``sensor`` family's look."""
    h, w = scene.height, scene.width
    px = w / 256
    img = paint(rng, scene) * rng.uniform(*look.exposure)

    # optics: defocus and shake, then vignetting (falls with the squared distance from the centre)
    defocus, shake = rng.uniform(*look.defocus) * px, rng.uniform(*look.shake) * px
    psf = _point_spread(defocus, shake, rng.uniform(0.0, np.pi))
    img = cv2.filter2D(img, -1, psf, borderType=cv2.BORDER_REFLECT)
    yy = (np.arange(h, dtype=np.float32)[:, None] + 0.5 - h / 2) / (h / 2)
    xx = (np.arange(w, dtype=np.float32)[None, :] + 0.5 - w / 2) / (w / 2)
    img *= (1.0 - rng.uniform(*look.vignetting) * (xx**2 + yy**2) / 2)[..., None]

    # a low-resolution sensor: shot noise (variance proportional to the signal) plus read noise
    scale = rng.uniform(*look.sensor_scale)
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    if small != (w, h):
        img = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
    variance = rng.uniform(*look.read) ** 2 + rng.uniform(*look.shot) * np.clip(img, 0.0, None)
    img = img + np.sqrt(variance) * rng.standard_normal(img.shape).astype(np.float32)

    # the camera's processing: white balance, upsampling, sharpening, JPEG
    temperature, green = rng.uniform(*look.white_balance), rng.uniform(*look.green_tint)
    img = img * np.array([1.0 + temperature, 1.0 + green, 1.0 - temperature], np.float32)
    if small != (w, h):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    amount = rng.uniform(*look.sharpen)
    img = img + amount * (img - cv2.GaussianBlur(img, (0, 0), 1.0 * px))
    out = np.clip(img, 0, 255).astype(np.uint8)
    if look.jpeg_quality is not None:
        out = _jpeg(out, int(rng.integers(look.jpeg_quality[0], look.jpeg_quality[1] + 1)))
    return out
