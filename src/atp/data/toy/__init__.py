"""The toy domain shift: procedurally generated street scenes in the real on-disk layouts.

``python -m atp.data.toy out=data/toy n_source=300 n_target=200 n_val=100 seed=0 size=256x128 shift=mixed``

* source, GTA5 layout: ``out/gta/images/00001.png`` + ``out/gta/labels/00001.png`` (Cityscapes label
  ids in an indexed PNG, as GTA5 ships them);
* target, Cityscapes layout: ``out/cityscapes/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png``
  + ``out/cityscapes/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png``.

Both domains draw their scene *layout* (horizon, road, sidewalks, buildings, trees, poles with
lights and signs, cars, trucks, buses, trams, people, riders on bicycles and motorcycles, small
void objects) from the same distribution; only the *appearance* differs. The source looks like a
clean game render. The target's look is a shift family (``shift=``, :data:`SHIFTS`): ``mixed``
(the default: dusk/night, fog or rain per image with a shifted palette; :class:`TargetLook`),
``night``, ``fog``, ``palette`` (another city's colours and textures), ``snow``, or the held-out
``sensor`` (a cheap camera, heavy JPEG) and ``glare`` (into a low sun). Every image is a function
of ``(seed, domain, index, shift)`` only; its label map does not depend on ``shift``.

Modules: :mod:`~atp.data.toy.scene` (label ids, materials, the scene canvas),
:mod:`~atp.data.toy.layout` and :mod:`~atp.data.toy.objects` (the scene layout),
:mod:`~atp.data.toy.render` (what every look shares), :mod:`~atp.data.toy.shifts` (one module per
target family), :mod:`~atp.data.toy.generate` (samples, trees, ``toy_info.json``),
:mod:`~atp.data.toy.cli` (``python -m atp.data.toy``).

How each family is made and its measured gap (a small source-only model, source val vs target
val): ``docs/shifts.md``.
"""

from atp.data.toy.cli import main
from atp.data.toy.generate import (
    INFO_FILE,
    TOY_VERSION,
    TRAIN_CITIES,
    VAL_CITIES,
    ensure_toy_data,
    generate_toy,
    read_toy_info,
    render_scene,
)
from atp.data.toy.scene import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    DYNAMIC,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    N_MATERIALS,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    STATIC,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
)
from atp.data.toy.shifts import DEFAULT_SHIFT, SHIFTS
from atp.data.toy.shifts.mixed import TARGET_CONDITIONS, TARGET_LOOK, TargetLook

__all__ = [
    "DEFAULT_SHIFT",
    "INFO_FILE",
    "SHIFTS",
    "TOY_VERSION",
    "TRAIN_CITIES",
    "VAL_CITIES",
    "TARGET_CONDITIONS",
    "TARGET_LOOK",
    "TargetLook",
    "ensure_toy_data",
    "generate_toy",
    "main",
    "read_toy_info",
    "render_scene",
    # Cityscapes label ids the scenes use
    "BICYCLE",
    "BUILDING",
    "BUS",
    "CAR",
    "DYNAMIC",
    "FENCE",
    "LIGHT",
    "MOTORCYCLE",
    "N_MATERIALS",
    "PERSON",
    "POLE",
    "RIDER",
    "ROAD",
    "SIDEWALK",
    "SIGN",
    "SKY",
    "STATIC",
    "TERRAIN",
    "TRAIN",
    "TRUCK",
    "VEGETATION",
    "WALL",
]
