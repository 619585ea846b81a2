"""The things a toy street holds: vehicles, people, riders on bikes, poles with lights or signs."""

from __future__ import annotations

import numpy as np

from atp.data.toy.scene import (
    BICYCLE,
    BUS,
    CAR,
    LIGHT,
    M_BIKE,
    M_BODY,
    M_CLOTHES,
    M_GLASS,
    M_LAMP,
    M_LIGHTBOX,
    M_POLE,
    M_SIGN,
    M_SKIN,
    M_TYRE,
    MOTORCYCLE,
    POLE,
    RIDER,
    SIGN,
    TRAIN,
    TRUCK,
    ellipse,
    rect,
)

_VEHICLE_WIDTH = {"car": (0.22, 0.3), "truck": (0.28, 0.36), "bus": (0.45, 0.6), "train": (0.9, 1.3)}
_VEHICLE_ASPECT = {"car": 0.5, "truck": 0.85, "bus": 0.45, "train": 0.28}


def vehicle(scene, rng, frame, kind, yg, xc, unit, depth) -> None:
    """A car, truck, bus or train standing on ground row ``yg``: body, cabin, glass, tyres."""
    vw = unit * rng.uniform(*_VEHICLE_WIDTH[kind])
    vh = vw * _VEHICLE_ASPECT[kind]
    g = frame.crop(yg - 1.15 * vh, yg, xc - vw / 2, xc + vw / 2)
    yy, xx = g.yy, g.xx
    if kind == "car":
        label = CAR
        body = rect(yy, xx, yg - 0.62 * vh, yg - 0.1 * vh, xc - vw / 2, xc + vw / 2)
        cabin = rect(yy, xx, yg - vh, yg - 0.6 * vh, xc - 0.33 * vw, xc + 0.3 * vw)
        glass = rect(yy, xx, yg - 0.92 * vh, yg - 0.64 * vh, xc - 0.28 * vw, xc + 0.25 * vw)
    elif kind == "truck":
        label = TRUCK
        body = rect(yy, xx, yg - vh, yg - 0.1 * vh, xc - vw / 2, xc + 0.22 * vw)
        cabin = rect(yy, xx, yg - 0.65 * vh, yg - 0.1 * vh, xc + 0.24 * vw, xc + vw / 2)
        glass = rect(yy, xx, yg - 0.6 * vh, yg - 0.4 * vh, xc + 0.28 * vw, xc + 0.47 * vw)
    elif kind == "bus":
        label = BUS
        body = rect(yy, xx, yg - vh, yg - 0.08 * vh, xc - vw / 2, xc + vw / 2)
        cabin = np.zeros_like(body)
        glass = rect(yy, xx, yg - 0.85 * vh, yg - 0.55 * vh, xc - 0.46 * vw, xc + 0.46 * vw)
    else:
        label = TRAIN
        body = rect(yy, xx, yg - vh, yg - 0.05 * vh, xc - vw / 2, xc + vw / 2)
        cabin = rect(yy, xx, yg - 1.12 * vh, yg - vh, xc - 0.05 * vw, xc + 0.05 * vw)
        glass = rect(yy, xx, yg - 0.8 * vh, yg - 0.5 * vh, xc - 0.47 * vw, xc + 0.47 * vw)
        glass &= np.mod(xx - xc, max(vw * 0.08, 2.0)) > vw * 0.015
    style = rng.random()
    scene.paint(body | cabin, label, M_BODY, style, depth, g.win)
    scene.repaint(glass & (body | cabin), M_GLASS, rng.random(), g.win)
    r = max(vh * 0.14, 0.8)
    for wx in (xc - 0.32 * vw, xc + 0.32 * vw):
        scene.paint(ellipse(yy, xx, yg - r, wx, r, r * 0.8), label, M_TYRE, rng.random(), depth, g.win)


def person(scene, rng, frame, yg, xc, ph, label, depth) -> None:
    """A pedestrian (or a rider's body, ``label``) standing on row ``yg``: legs, torso, head."""
    pw = ph * rng.uniform(0.25, 0.35)
    half = max(pw / 2, 0.09 * ph, 0.5)
    g = frame.crop(yg - ph - 0.5, yg, xc - half, xc + half)
    yy, xx = g.yy, g.xx
    legs = rect(yy, xx, yg - 0.45 * ph, yg, xc - pw * 0.35, xc + pw * 0.35)
    legs &= np.abs(xx - xc) > pw * 0.06  # a gap between the legs
    scene.paint(legs, label, M_CLOTHES, rng.random(), depth, g.win)
    torso = ellipse(yy, xx, yg - 0.62 * ph, xc, 0.22 * ph, pw / 2)
    scene.paint(torso, label, M_CLOTHES, rng.random(), depth, g.win)
    head = ellipse(yy, xx, yg - 0.9 * ph, xc, 0.09 * ph, 0.09 * ph)
    scene.paint(head, label, M_SKIN, rng.random(), depth, g.win)


def rider(scene, rng, frame, yg, xc, ph, depth) -> None:
    """A rider on a bicycle or motorcycle; the bike is painted over the rider's legs."""
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
        bike |= rect(yy, xx, yg - 1.9 * r, yg - 0.9 * r, xc - span, xc + span)
    else:
        bike |= rect(yy, xx, yg - 1.5 * r, yg - 1.2 * r, xc - span, xc + span)
    # the rider first, the bike in front of the legs
    person(scene, rng, frame, yg - 1.2 * r, xc, ph * 0.75, RIDER, depth)
    scene.paint(bike, label, M_BIKE, rng.random(), depth, g.win)


def pole(scene, rng, frame, yg, xc, length, unit, depth) -> None:
    """A pole from row ``yg`` up by ``length``, often topped by a traffic light or a sign."""
    half = max(1.0, unit * 0.012)
    top = yg - length
    g = frame.crop(top, yg, xc - half, xc + half)
    scene.paint(rect(g.yy, g.xx, top, yg, xc - half, xc + half), POLE, M_POLE, rng.random(), depth, g.win)
    fixture = rng.random()
    if fixture < 0.45:
        bw, bh = half * 5, length * 0.12
        g = frame.crop(top, top + bh, xc - bw / 2, xc + bw / 2)
        box = rect(g.yy, g.xx, top, top + bh, xc - bw / 2, xc + bw / 2)
        scene.paint(box, LIGHT, M_LIGHTBOX, rng.random(), depth, g.win)
        lamp_y = top + bh * (0.2 + 0.3 * rng.integers(0, 3))
        lamp = box & ellipse(g.yy, g.xx, lamp_y, xc, bh * 0.15, bw * 0.3)
        scene.repaint(lamp, M_LAMP, rng.random(), g.win)
    elif fixture < 0.85:
        size = max(2.0, unit * 0.045)
        cy = top + length * rng.uniform(0.05, 0.3)
        g = frame.crop(cy - size, cy + size, xc - size, xc + size)
        shape = (
            ellipse(g.yy, g.xx, cy, xc, size, size)
            if rng.random() < 0.5
            else rect(g.yy, g.xx, cy - size, cy + size, xc - size, xc + size)
        )
        scene.paint(shape, SIGN, M_SIGN, rng.random(), depth, g.win)
