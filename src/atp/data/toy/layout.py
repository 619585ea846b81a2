"""The street layout of a toy scene: ground, blocks along both sides, fences, then things far to near.

The layout distribution is the same for every domain and shift family; only the look differs.
"""

from __future__ import annotations

import numpy as np

from atp.data.toy.objects import person, pole, rider, vehicle
from atp.data.toy.scene import (
    BUILDING,
    DYNAMIC,
    FENCE,
    M_FACADE,
    M_FENCE,
    M_GAP,
    M_LANE,
    M_ROAD,
    M_SIDEWALK,
    M_TERRAIN,
    M_VEG,
    M_VOID,
    M_WALL,
    M_WINDOW,
    PERSON,
    ROAD,
    SIDEWALK,
    STATIC,
    TERRAIN,
    VEGETATION,
    WALL,
    Grid,
    Scene,
    ellipse,
    rect,
)


def draw_layout(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Draw one street scene's geometry (shared by every domain and look)."""
    h, w = height, width
    scene = Scene(h, w)
    frame = Grid.frame(h, w)
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
        bush = verge[g.win] & ellipse(g.yy, g.xx, cy, cx, ry, rx)
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
                    crown = ellipse(gc.yy, gc.xx, cy, cx, r, rx)
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
            vehicle(scene, rng, frame, kind, yg, xc, unit, depth)
        elif kind == "person":
            xc = vx + side * tg * (half_road + half_walk * rng.uniform(0.1, 0.9))
            person(scene, rng, frame, yg, xc, h * 0.5 * tg, PERSON, depth)
        elif kind == "rider":
            xc = vx + side * tg * half_road * rng.uniform(0.6, 0.95)
            rider(scene, rng, frame, yg, xc, h * 0.5 * tg, depth)
        elif kind == "pole":
            xc = vx + side * tg * (half_road + half_walk * 0.95)
            pole(scene, rng, frame, yg, xc, h * 1.1 * tg, w * tg, depth)
        else:
            xc = vx + side * tg * (half_road + half_walk * rng.uniform(0.2, 0.8))
            size = unit * rng.uniform(0.04, 0.08)
            g = frame.crop(yg - size * 1.3, yg, xc - size / 2, xc + size / 2)
            box = rect(g.yy, g.xx, yg - size * 1.3, yg, xc - size / 2, xc + size / 2)
            scene.paint(box, STATIC if rng.random() < 0.5 else DYNAMIC, M_VOID, rng.random(), depth, g.win)
    return scene
