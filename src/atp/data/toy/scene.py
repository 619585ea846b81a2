"""What a toy scene is made of: Cityscapes label ids, materials, the scene canvas and pixel grids."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Cityscapes label ids used by the scenes.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN = 7, 8, 11, 12, 13, 17, 19, 20
VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = (
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    31,
    32,
    33,
)
STATIC, DYNAMIC = 4, 5  # void classes (→ 255)

# Materials: what a pixel looks like, independent of its label.
(
    M_SKY,
    M_FACADE,
    M_WINDOW,
    M_ROAD,
    M_LANE,
    M_SIDEWALK,
    M_VEG,
    M_GAP,
    M_TERRAIN,
    M_WALL,
    M_FENCE,
    M_POLE,
    M_LIGHTBOX,
    M_LAMP,
    M_SIGN,
    M_BODY,
    M_GLASS,
    M_TYRE,
    M_SKIN,
    M_CLOTHES,
    M_BIKE,
    M_VOID,
) = range(22)
N_MATERIALS = 22


@dataclass
class Scene:
    """Label ids, materials, instances and a depth proxy (0 near … 1 far) of one scene."""

    height: int
    width: int
    ids: np.ndarray = field(init=False)
    material: np.ndarray = field(init=False)
    instance: np.ndarray = field(init=False)
    depth: np.ndarray = field(init=False)
    instance_material: list[int] = field(default_factory=list)
    instance_style: list[float] = field(default_factory=list)  # a uniform draw that picks the colour

    def __post_init__(self) -> None:
        shape = (self.height, self.width)
        self.ids = np.full(shape, SKY, np.uint8)
        self.material = np.full(shape, M_SKY, np.uint8)
        self.instance = np.zeros(shape, np.int32)
        self.depth = np.ones(shape, np.float32)
        self.instance_material.append(M_SKY)
        self.instance_style.append(0.5)

    def paint(
        self,
        mask: np.ndarray,
        label_id: int,
        material: int,
        style: float,
        depth: float | np.ndarray,
        window: tuple[slice, slice] = (slice(None), slice(None)),
    ) -> None:
        """Paint ``mask`` (given over ``window``) as a new instance; later calls cover earlier ones.

        ``depth`` is a number or a full-frame array."""
        self.instance_material.append(material)
        self.instance_style.append(float(style))
        self.ids[window][mask] = label_id
        self.material[window][mask] = material
        self.instance[window][mask] = len(self.instance_material) - 1
        self.depth[window][mask] = depth if np.isscalar(depth) else depth[window][mask]

    def repaint(
        self,
        mask: np.ndarray,
        material: int,
        style: float,
        window: tuple[slice, slice] = (slice(None), slice(None)),
    ) -> None:
        """Change the look of ``mask`` (e.g. windows on a facade) without touching labels or depth."""
        self.instance_material.append(material)
        self.instance_style.append(float(style))
        self.material[window][mask] = material
        self.instance[window][mask] = len(self.instance_material) - 1


@dataclass
class Grid:
    """Pixel-centre coordinates of the frame, or of a window of it (``win``)."""

    yy: np.ndarray
    xx: np.ndarray
    win: tuple[slice, slice] = (slice(None), slice(None))

    @classmethod
    def frame(cls, height: int, width: int) -> Grid:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        return cls(yy + 0.5, xx + 0.5)

    def crop(self, y0: float, y1: float, x0: float, x1: float) -> Grid:
        """The window covering ``[y0, y1) × [x0, x1)`` plus a 2-pixel margin (call on the frame)."""
        height, width = self.yy.shape
        ys = slice(min(max(math.floor(y0) - 2, 0), height), min(max(math.ceil(y1) + 2, 0), height))
        xs = slice(min(max(math.floor(x0) - 2, 0), width), min(max(math.ceil(x1) + 2, 0), width))
        return Grid(self.yy[ys, xs], self.xx[ys, xs], (ys, xs))


def rect(yy, xx, y0, y1, x0, x1):
    """Mask of the pixel centres inside ``[y0, y1) × [x0, x1)``."""
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def ellipse(yy, xx, cy, cx, ry, rx):
    """Mask of the pixel centres inside the axis-aligned ellipse (radii of at least half a pixel)."""
    return ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0
