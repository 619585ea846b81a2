"""The toy domain shift: procedurally generated street scenes in the real on-disk layouts.

``python -m atp.data.toy out=data/toy n_source=300 n_target=200 n_val=100 seed=0 size=256x128``

* source, GTA5 layout: ``out/gta/images/00001.png`` + ``out/gta/labels/00001.png`` (Cityscapes label
  ids in an indexed PNG, as GTA5 ships them);
* target, Cityscapes layout: ``out/cityscapes/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png``
  + ``out/cityscapes/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png``.

Both domains draw their scene *layout* (horizon, road, sidewalks, buildings, trees, poles with
lights and signs, cars, trucks, buses, trams, people, riders on bicycles and motorcycles, small
void objects) from the same distribution; only the *appearance* differs. The source looks like a
clean game render; the target is a mix of dusk/night, fog and rain looks, with a shifted class
palette (overcast sky, autumn vegetation, wet road, other facades), coarser textures, lit windows
at night, camera noise, blur and a colour cast; :class:`TargetLook` holds the strengths. Every image
is a function of ``(seed, domain, index)`` only.

Measured gap (throwaway script, smp Segformer MiT-B0 from scratch, source-only, CPU): see the
numbers in ``conf/dataset/toy.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from atp.data.io import write_png_atomic
from atp.data.labels import LABEL_ID_PALETTE

log = logging.getLogger(__name__)

INFO_FILE = "toy_info.json"
#: Bump when the layout or the look changes, so existing toy trees are regenerated.
TOY_VERSION = 2
TRAIN_CITIES = ("northville", "southport")
VAL_CITIES = ("midtown",)

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


# ============================================================================ layout
@dataclass
class _Scene:
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
class _Grid:
    """Pixel-centre coordinates of the frame, or of a window of it (``win``)."""

    yy: np.ndarray
    xx: np.ndarray
    win: tuple[slice, slice] = (slice(None), slice(None))

    @classmethod
    def frame(cls, height: int, width: int) -> _Grid:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        return cls(yy + 0.5, xx + 0.5)

    def crop(self, y0: float, y1: float, x0: float, x1: float) -> _Grid:
        """The window covering ``[y0, y1) × [x0, x1)`` plus a 2-pixel margin (call on the frame)."""
        height, width = self.yy.shape
        ys = slice(min(max(math.floor(y0) - 2, 0), height), min(max(math.ceil(y1) + 2, 0), height))
        xs = slice(min(max(math.floor(x0) - 2, 0), width), min(max(math.ceil(x1) + 2, 0), width))
        return _Grid(self.yy[ys, xs], self.xx[ys, xs], (ys, xs))


def _rect(yy, xx, y0, y1, x0, x1):
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _layout(rng: np.random.Generator, height: int, width: int) -> _Scene:
    """Draw one street scene's geometry (shared by both domains)."""
    h, w = height, width
    scene = _Scene(h, w)
    frame = _Grid.frame(h, w)
    yy, xx = frame.yy, frame.xx
    hy = h * rng.uniform(0.36, 0.48)
    vx = w * rng.uniform(0.38, 0.62)
    road_l, road_r = w * rng.uniform(0.30, 0.48, 2)
    walk_l, walk_r = w * rng.uniform(0.12, 0.24, 2)
    t = np.clip((yy - hy) / (h - hy), 0.0, None)  # 0 at the horizon, 1 at the bottom row
    below = yy >= hy
    ground_depth = 1.0 - np.clip(t, 0.0, 1.0) * 0.95
    left = xx < vx
    road_half = np.where(left, road_l, road_r)
    outer_half = np.where(left, road_l + walk_l, road_r + walk_r)
    dx = np.abs(xx - vx)

    # verge beyond the sidewalks: grass, soil or low bushes
    verge = below & (dx >= t * outer_half)
    scene.paint(verge, TERRAIN, M_TERRAIN, rng.random(), ground_depth)
    for _ in range(rng.integers(0, 3)):
        cy, cx = rng.uniform(hy, h), rng.uniform(0, w)
        ry, rx = h * rng.uniform(0.03, 0.1), w * rng.uniform(0.05, 0.15)
        g = frame.crop(cy - ry, cy + ry, cx - rx, cx + rx)
        bush = verge[g.win] & _ellipse(g.yy, g.xx, cy, cx, ry, rx)
        scene.paint(bush, VEGETATION, M_VEG, rng.random(), ground_depth, g.win)

    # blocks along both sides: buildings, walls, tree rows, gaps
    col = xx[0]
    col_outer = np.where(col < vx, road_l + walk_l, road_r + walk_r)
    edge_y = hy + np.abs(col - vx) / col_outer * (h - hy)  # where the outer sidewalk edge meets each column
    for side in (-1, 1):
        x = 0.0 if side < 0 else float(w)
        limit = vx - w * 0.03 if side < 0 else vx + w * 0.03
        while (x < limit) if side < 0 else (x > limit):
            bw = w * rng.uniform(0.06, 0.2)
            x0, x1 = (x, min(x + bw, limit)) if side < 0 else (max(x - bw, limit), x)
            x = x1 if side < 0 else x0
            dist = abs((x0 + x1) / 2 - vx) / w
            kind = rng.choice(4, p=[0.68, 0.12, 0.12, 0.08])  # building, wall, trees, gap
            if kind == 3:
                continue
            bottom_frac = rng.uniform(0.75, 1.0)
            g = frame.crop(0, h, x0, x1)
            by, bx = g.yy, g.xx
            bottom = (hy + (edge_y - hy) * bottom_frac)[None, g.win[1]]
            cols = (bx >= x0) & (bx < x1)
            depth = float(np.clip(1.0 - 1.8 * dist, 0.15, 1.0))
            if kind == 0:
                top = hy - h * rng.uniform(0.10, 0.38) * (0.5 + 1.5 * dist)
                block = cols & (by >= top) & (by < bottom)
                scene.paint(block, BUILDING, M_FACADE, rng.random(), depth, g.win)
                px, py = w * rng.uniform(0.02, 0.04), h * rng.uniform(0.05, 0.09)
                windows = (
                    block
                    & (((bx - x0) % px) > px * 0.45)
                    & (((by - top) % py) > py * 0.45)
                    & (by < bottom - h * 0.05)
                )
                scene.repaint(windows, M_WINDOW, rng.random(), g.win)
            elif kind == 1:
                top = bottom - h * rng.uniform(0.05, 0.12) * (0.5 + 1.5 * dist)
                scene.paint(cols & (by >= top) & (by < bottom), WALL, M_WALL, rng.random(), depth, g.win)
            else:
                for _ in range(rng.integers(2, 5)):
                    cx, r = rng.uniform(x0, x1), h * rng.uniform(0.06, 0.16) * (0.5 + 1.5 * dist)
                    cy = hy - rng.uniform(0.0, 1.5) * r
                    rx = r * rng.uniform(0.8, 1.3)
                    gc = frame.crop(cy - r, cy + r, cx - rx, cx + rx)
                    crown = _ellipse(gc.yy, gc.xx, cy, cx, r, rx)
                    scene.paint(crown, VEGETATION, M_VEG, rng.random(), depth, gc.win)
                rows = cols & (by >= hy - h * 0.02) & (by < bottom)
                scene.paint(rows, VEGETATION, M_VEG, rng.random(), depth, g.win)

    # road, lane marks and sidewalks
    road = below & (dx < t * road_half)
    scene.paint(road, ROAD, M_ROAD, rng.random(), ground_depth)
    offset = rng.uniform(-0.2, 0.2)
    lane_x = vx + offset * t * road_half
    dashes = np.mod(3.0 / (t + 0.08), 1.0) < 0.5
    lane = road & (np.abs(xx - lane_x) < 0.35 + t * w * 0.006) & dashes
    scene.repaint(lane, M_LANE, rng.random())
    walk = below & (dx >= t * road_half) & (dx < t * outer_half)
    scene.paint(walk, SIDEWALK, M_SIDEWALK, rng.random(), ground_depth)

    # fences along stretches of the outer sidewalk edge
    for _ in range(rng.integers(0, 3)):
        x0 = rng.uniform(0, w)
        x1 = x0 + w * rng.uniform(0.08, 0.25)
        g = frame.crop(0, h, x0, x1)
        fy, fx, xs = g.yy, g.xx, g.win[1]
        fence_top = (edge_y - (edge_y - hy) * 0.35 - 1.5)[None, xs]
        fence = (fx >= x0) & (fx < x1) & (fy >= fence_top) & (fy < edge_y[None, xs]) & (dx[g.win] > w * 0.04)
        scene.paint(
            fence, FENCE, M_FENCE, rng.random(), ground_depth, g.win
        )  # labelled as a whole, as in Cityscapes
        slats = np.mod(fx, max(3.0, w * 0.016)) < max(1.5, w * 0.008)
        scene.repaint(fence & ~slats & (np.mod(fy, 5.0) >= 1.0), M_GAP, rng.random(), g.win)

    # things, far to near
    things: list[tuple[float, str]] = []
    things += [(rng.uniform(0.08, 1.0), "car") for _ in range(rng.integers(1, 6))]
    things += [(rng.uniform(0.1, 0.9), "truck") for _ in range(rng.poisson(0.4))]
    things += [(rng.uniform(0.1, 0.9), "bus") for _ in range(rng.poisson(0.3))]
    things += [(rng.uniform(0.1, 0.6), "train") for _ in range(int(rng.random() < 0.12))]
    things += [(rng.uniform(0.15, 1.0), "person") for _ in range(rng.integers(0, 7))]
    things += [(rng.uniform(0.15, 1.0), "rider") for _ in range(rng.integers(0, 3))]
    things += [(rng.uniform(0.15, 1.0), "pole") for _ in range(rng.integers(2, 6))]
    things += [(rng.uniform(0.1, 1.0), "void") for _ in range(rng.integers(0, 3))]
    things.sort(key=lambda item: item[0])
    for tg, kind in things:
        side = -1 if rng.random() < 0.5 else 1
        yg = hy + tg * (h - hy)
        half_road = road_l if side < 0 else road_r
        half_walk = walk_l if side < 0 else walk_r
        depth = float(1.0 - 0.95 * tg)
        unit = w * tg
        if kind in ("car", "truck", "bus", "train"):
            xc = vx + side * tg * half_road * rng.uniform(0.0, 0.9)
            _vehicle(scene, rng, frame, kind, yg, xc, unit, depth)
        elif kind == "person":
            xc = vx + side * tg * (half_road + half_walk * rng.uniform(0.1, 0.9))
            _person(scene, rng, frame, yg, xc, h * 0.5 * tg, PERSON, depth)
        elif kind == "rider":
            xc = vx + side * tg * half_road * rng.uniform(0.6, 0.95)
            _rider(scene, rng, frame, yg, xc, h * 0.5 * tg, depth)
        elif kind == "pole":
            xc = vx + side * tg * (half_road + half_walk * 0.95)
            _pole(scene, rng, frame, yg, xc, h * 1.1 * tg, w * tg, depth)
        else:
            xc = vx + side * tg * (half_road + half_walk * rng.uniform(0.2, 0.8))
            size = unit * rng.uniform(0.04, 0.08)
            g = frame.crop(yg - size * 1.3, yg, xc - size / 2, xc + size / 2)
            box = _rect(g.yy, g.xx, yg - size * 1.3, yg, xc - size / 2, xc + size / 2)
            scene.paint(box, STATIC if rng.random() < 0.5 else DYNAMIC, M_VOID, rng.random(), depth, g.win)
    return scene


_VEHICLE_WIDTH = {"car": (0.22, 0.3), "truck": (0.28, 0.36), "bus": (0.45, 0.6), "train": (0.9, 1.3)}
_VEHICLE_ASPECT = {"car": 0.5, "truck": 0.85, "bus": 0.45, "train": 0.28}


def _vehicle(scene, rng, frame, kind, yg, xc, unit, depth) -> None:
    vw = unit * rng.uniform(*_VEHICLE_WIDTH[kind])
    vh = vw * _VEHICLE_ASPECT[kind]
    g = frame.crop(yg - 1.15 * vh, yg, xc - vw / 2, xc + vw / 2)
    yy, xx = g.yy, g.xx
    if kind == "car":
        label = CAR
        body = _rect(yy, xx, yg - 0.62 * vh, yg - 0.1 * vh, xc - vw / 2, xc + vw / 2)
        cabin = _rect(yy, xx, yg - vh, yg - 0.6 * vh, xc - 0.33 * vw, xc + 0.3 * vw)
        glass = _rect(yy, xx, yg - 0.92 * vh, yg - 0.64 * vh, xc - 0.28 * vw, xc + 0.25 * vw)
    elif kind == "truck":
        label = TRUCK
        body = _rect(yy, xx, yg - vh, yg - 0.1 * vh, xc - vw / 2, xc + 0.22 * vw)
        cabin = _rect(yy, xx, yg - 0.65 * vh, yg - 0.1 * vh, xc + 0.24 * vw, xc + vw / 2)
        glass = _rect(yy, xx, yg - 0.6 * vh, yg - 0.4 * vh, xc + 0.28 * vw, xc + 0.47 * vw)
    elif kind == "bus":
        label = BUS
        body = _rect(yy, xx, yg - vh, yg - 0.08 * vh, xc - vw / 2, xc + vw / 2)
        cabin = np.zeros_like(body)
        glass = _rect(yy, xx, yg - 0.85 * vh, yg - 0.55 * vh, xc - 0.46 * vw, xc + 0.46 * vw)
    else:
        label = TRAIN
        body = _rect(yy, xx, yg - vh, yg - 0.05 * vh, xc - vw / 2, xc + vw / 2)
        cabin = _rect(yy, xx, yg - 1.12 * vh, yg - vh, xc - 0.05 * vw, xc + 0.05 * vw)
        glass = _rect(yy, xx, yg - 0.8 * vh, yg - 0.5 * vh, xc - 0.47 * vw, xc + 0.47 * vw)
        glass &= np.mod(xx - xc, max(vw * 0.08, 2.0)) > vw * 0.015
    style = rng.random()
    scene.paint(body | cabin, label, M_BODY, style, depth, g.win)
    scene.repaint(glass & (body | cabin), M_GLASS, rng.random(), g.win)
    r = max(vh * 0.14, 0.8)
    for wx in (xc - 0.32 * vw, xc + 0.32 * vw):
        scene.paint(_ellipse(yy, xx, yg - r, wx, r, r * 0.8), label, M_TYRE, rng.random(), depth, g.win)


def _person(scene, rng, frame, yg, xc, ph, label, depth) -> None:
    pw = ph * rng.uniform(0.25, 0.35)
    half = max(pw / 2, 0.09 * ph, 0.5)
    g = frame.crop(yg - ph - 0.5, yg, xc - half, xc + half)
    yy, xx = g.yy, g.xx
    legs = _rect(yy, xx, yg - 0.45 * ph, yg, xc - pw * 0.35, xc + pw * 0.35)
    legs &= np.abs(xx - xc) > pw * 0.06  # a gap between the legs
    scene.paint(legs, label, M_CLOTHES, rng.random(), depth, g.win)
    torso = _ellipse(yy, xx, yg - 0.62 * ph, xc, 0.22 * ph, pw / 2)
    scene.paint(torso, label, M_CLOTHES, rng.random(), depth, g.win)
    head = _ellipse(yy, xx, yg - 0.9 * ph, xc, 0.09 * ph, 0.09 * ph)
    scene.paint(head, label, M_SKIN, rng.random(), depth, g.win)


def _rider(scene, rng, frame, yg, xc, ph, depth) -> None:
    motor = rng.random() < 0.4
    label = MOTORCYCLE if motor else BICYCLE
    r = ph * 0.2
    span = ph * 0.32
    g = frame.crop(yg - 2 * r - 0.5, yg, xc - span - r - 0.5, xc + span + r + 0.5)
    yy, xx = g.yy, g.xx
    bike = np.zeros_like(yy, dtype=bool)
    for wx in (xc - span, xc + span):
        dist = np.sqrt((yy - (yg - r)) ** 2 + (xx - wx) ** 2)
        bike |= (dist <= r) & (dist >= (0.0 if motor else r * 0.7))
    if motor:
        bike |= _rect(yy, xx, yg - 1.9 * r, yg - 0.9 * r, xc - span, xc + span)
    else:
        bike |= _rect(yy, xx, yg - 1.5 * r, yg - 1.2 * r, xc - span, xc + span)
    # the rider first, the bike in front of the legs
    _person(scene, rng, frame, yg - 1.2 * r, xc, ph * 0.75, RIDER, depth)
    scene.paint(bike, label, M_BIKE, rng.random(), depth, g.win)


def _pole(scene, rng, frame, yg, xc, length, unit, depth) -> None:
    half = max(1.0, unit * 0.012)
    top = yg - length
    g = frame.crop(top, yg, xc - half, xc + half)
    scene.paint(_rect(g.yy, g.xx, top, yg, xc - half, xc + half), POLE, M_POLE, rng.random(), depth, g.win)
    fixture = rng.random()
    if fixture < 0.45:
        bw, bh = half * 5, length * 0.12
        g = frame.crop(top, top + bh, xc - bw / 2, xc + bw / 2)
        box = _rect(g.yy, g.xx, top, top + bh, xc - bw / 2, xc + bw / 2)
        scene.paint(box, LIGHT, M_LIGHTBOX, rng.random(), depth, g.win)
        lamp_y = top + bh * (0.2 + 0.3 * rng.integers(0, 3))
        lamp = box & _ellipse(g.yy, g.xx, lamp_y, xc, bh * 0.15, bw * 0.3)
        scene.repaint(lamp, M_LAMP, rng.random(), g.win)
    elif fixture < 0.85:
        size = max(2.0, unit * 0.045)
        cy = top + length * rng.uniform(0.05, 0.3)
        g = frame.crop(cy - size, cy + size, xc - size, xc + size)
        shape = (
            _ellipse(g.yy, g.xx, cy, xc, size, size)
            if rng.random() < 0.5
            else _rect(g.yy, g.xx, cy - size, cy + size, xc - size, xc + size)
        )
        scene.paint(shape, SIGN, M_SIGN, rng.random(), depth, g.win)


# ============================================================================ appearance
# Base colours per material, (n_choices, 3) RGB; an instance's style draw picks one and jitters it.
_SOURCE_COLOURS: dict[int, list[tuple[int, int, int]]] = {
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
_TARGET_COLOURS: dict[int, list[tuple[int, int, int]]] = {
    **_SOURCE_COLOURS,
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
_TEXTURE: dict[int, tuple[float, float, float]] = {
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


def _noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth Gaussian noise with correlation length ``cell`` pixels (unit variance, roughly)."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _instance_colours(
    rng, scene: _Scene, palette: Mapping[int, list[tuple[int, int, int]]], jitter: bool = True
):
    """One colour per instance: the palette entry its style draw picks, plus a random jitter."""
    colours = np.empty((len(scene.instance_material), 3), np.float32)
    for k, (material, style) in enumerate(zip(scene.instance_material, scene.instance_style, strict=True)):
        choices = palette[material]
        colours[k] = choices[min(int(style * len(choices)), len(choices) - 1)]
        if jitter:
            colours[k] += rng.normal(0.0, _TEXTURE[material][0], 3) * np.array([1.0, 0.9, 1.1])
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


def _render(
    rng: np.random.Generator, scene: _Scene, domain: str, look: TargetLook = TARGET_LOOK
) -> np.ndarray:
    """RGB uint8 image of ``scene`` as the ``source`` or the ``target`` domain looks."""
    h, w = scene.height, scene.width
    target = domain == "target"
    colours = _instance_colours(rng, scene, _SOURCE_COLOURS)
    if target:
        shifted = _instance_colours(np.random.default_rng(0), scene, _TARGET_COLOURS, jitter=False)
        plain = _instance_colours(np.random.default_rng(0), scene, _SOURCE_COLOURS, jitter=False)
        colours += look.palette_shift * (shifted - plain)  # same jitter, base colour moved
    img = colours[scene.instance]
    fine_amp = np.array([_TEXTURE[m][1] for m in range(N_MATERIALS)], np.float32)[scene.material]
    coarse_amp = np.array([_TEXTURE[m][2] for m in range(N_MATERIALS)], np.float32)[scene.material]
    fine = _noise(rng, h, w, look.texture_cell if target else 1.0)
    coarse = _noise(rng, h, w, max(h, w) / 10)
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
        lit = (scene.material == M_WINDOW) & (_noise(rng, h, w, 4.0) > 0.0)
        img *= rng.uniform(*look.night_gain)
        img *= np.array([0.85, 0.9, 1.15], np.float32)
        img[lit] = np.array([235, 205, 120], np.float32) + rng.normal(0, 10, 3)
        lamps = scene.material == M_LAMP
        img[lamps] = np.clip(img[lamps] * 3.0, 0, 255)
        img[sky] = np.array([25, 30, 50], np.float32) + img[sky] * 0.3
        glow = np.clip(_noise(rng, h, w, max(h, w) / 6), 0, None)[..., None] * np.array(
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
        streaks = (_noise(rng, h, w, 1.0) > 2.0).astype(np.float32)
        img += look.rain_streaks * cv2.blur(streaks, (1, 9))[..., None]
        noise_sigma = rng.uniform(*look.rain_noise)
    img *= 1.0 + rng.normal(0.0, look.colour_cast, 3).astype(np.float32)  # colour cast
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*look.blur_sigma))
    img += rng.normal(0.0, noise_sigma, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(
    seed: int, domain: str, index: int, size: Sequence[int] = (256, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """One toy sample: ``(rgb uint8 (H, W, 3), Cityscapes label ids uint8 (H, W))``.

    ``domain`` is ``source``, ``target`` or ``target_val``; the layout distribution is the same for
    all three; the target domains share the target look. ``size`` is ``(width, height)``.
    """
    code = {"source": 1, "target": 2, "target_val": 3}[domain]
    width, height = int(size[0]), int(size[1])
    layout_rng = np.random.default_rng([seed, code, index, 0])
    look_rng = np.random.default_rng([seed, code, index, 1])
    scene = _layout(layout_rng, height, width)
    look = "source" if domain == "source" else "target"
    return _render(look_rng, scene, look), scene.ids.copy()


# ============================================================================ writing
def _parse_size(size: str | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, str):
        width, height = size.lower().split("x")
        return int(width), int(height)
    return int(size[0]), int(size[1])


def _write_one(job: tuple[Path, int, str, int, tuple[int, int], str, str]) -> None:
    out, seed, domain, index, size, image_rel, label_rel = job
    rgb, ids = render_scene(seed, domain, index, size)
    write_png_atomic(out / image_rel, rgb)
    palette = LABEL_ID_PALETTE if domain == "source" else None
    write_png_atomic(out / label_rel, ids, palette=palette)


def _jobs(out: Path, seed: int, n_source: int, n_target: int, n_val: int, size: tuple[int, int]):
    jobs = []
    for i in range(n_source):
        jobs.append(
            (out, seed, "source", i, size, f"gta/images/{i + 1:05d}.png", f"gta/labels/{i + 1:05d}.png")
        )
    for domain, split, count, cities in (
        ("target", "train", n_target, TRAIN_CITIES),
        ("target_val", "val", n_val, VAL_CITIES),
    ):
        for i in range(count):
            city = cities[i % len(cities)]
            base = f"{city}_{i // len(cities):06d}_000019"
            jobs.append(
                (
                    out,
                    seed,
                    domain,
                    i,
                    size,
                    f"cityscapes/leftImg8bit/{split}/{city}/{base}_leftImg8bit.png",
                    f"cityscapes/gtFine/{split}/{city}/{base}_gtFine_labelIds.png",
                )
            )
    return jobs


def _toy_info(n_source: int, n_target: int, n_val: int, seed: int, size: tuple[int, int]) -> dict[str, Any]:
    return {
        "n_source": int(n_source),
        "n_target": int(n_target),
        "n_val": int(n_val),
        "seed": int(seed),
        "size": [int(size[0]), int(size[1])],
        "version": TOY_VERSION,
    }


def read_toy_info(out: str | os.PathLike) -> dict[str, Any] | None:
    """The parameters a toy tree was generated with (``None`` when ``out`` is not a complete toy tree)."""
    try:
        return json.loads((Path(out) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def generate_toy(
    out: str | os.PathLike,
    n_source: int = 300,
    n_target: int = 200,
    n_val: int = 100,
    seed: int = 0,
    size: str | Sequence[int] = (256, 128),
    num_workers: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the toy domain shift under ``out`` (see the module docstring) and return ``out``.

    The tree is written into a temporary sibling folder and renamed into place, so ``out`` is
    either complete (it holds ``toy_info.json``) or absent. ``size`` is ``(width, height)`` or
    ``"WxH"``. ``overwrite`` replaces an existing toy tree (never a folder without ``toy_info.json``).
    """
    out = Path(out)
    size = _parse_size(size)
    info = _toy_info(n_source, n_target, n_val, seed, size)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=true or choose another out=")
        if read_toy_info(out) is None:
            raise FileExistsError(
                f"{out} exists and is not a toy dataset (no {INFO_FILE}); refusing to delete it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the toy tree is ordinary data
    try:
        jobs = _jobs(tmp, seed, n_source, n_target, n_val, size)
        started = time.perf_counter()
        if num_workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(num_workers) as pool:
                for _ in pool.imap_unordered(_write_one, jobs, chunksize=16):
                    pass
        else:
            for job in jobs:
                _write_one(job)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        _swap_into_place(tmp, out)
        log.info("toy data: %d images in %.1f s → %s", len(jobs), time.perf_counter() - started, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if read_toy_info(out) is None:  # not a concurrent generator that won the race
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def ensure_toy_data(dataset_cfg: Mapping[str, Any]) -> bool:
    """Generate the toy data of a config with ``generate_if_missing: true`` when absent or stale.

    Stale means generated with other parameters or by an older generator (``TOY_VERSION``).
    Returns True when data were generated.
    """
    if not dataset_cfg.get("generate_if_missing", False):
        return False
    params = dict(dataset_cfg["toy"])
    out = Path(params.pop("out"))
    wanted = _toy_info(
        params.get("n_source", 300),
        params.get("n_target", 200),
        params.get("n_val", 100),
        params.get("seed", 0),
        _parse_size(params.get("size", (256, 128))),
    )
    found = read_toy_info(out)
    if found == wanted:
        return False
    if found is None:
        log.warning("toy data missing under %s: generating it (generate_if_missing: true)", out)
    else:
        log.warning("toy data under %s were generated with %s; regenerating with %s", out, found, wanted)
    generate_toy(out, **params, overwrite=found is not None)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atp.data.toy out=data/toy n_source=300 n_target=200 n_val=100 seed=0 size=256x128``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(main.__doc__)
        return 0
    options: dict[str, Any] = {"out": "data/toy"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in (
            "out",
            "n_source",
            "n_target",
            "n_val",
            "seed",
            "size",
            "num_workers",
            "overwrite",
        ):
            print(f"unknown argument {arg!r}; usage: {main.__doc__}", file=sys.stderr)
            return 2
        options[key] = value
    for key in ("n_source", "n_target", "n_val", "seed", "num_workers"):
        if key in options:
            options[key] = int(options[key])
    options["overwrite"] = str(options.get("overwrite", "false")).lower() in ("1", "true", "yes")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        out = generate_toy(options.pop("out"), **options)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote the toy domain shift to {out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
