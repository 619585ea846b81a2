"""Writing toy trees: one sample per ``(seed, domain, index)``, the on-disk layouts, ``toy_info.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atp.data.io import encode_png
from atp.data.labels import LABEL_ID_PALETTE
from atp.data.toy.layout import draw_layout
from atp.data.toy.render import render_source
from atp.data.toy.shifts import DEFAULT_SHIFT, check_shift, render_target

log = logging.getLogger(__name__)

INFO_FILE = "toy_info.json"
#: Bump when the layout or the look changes, so existing toy trees are regenerated.
TOY_VERSION = 2
TRAIN_CITIES = ("northville", "southport")
VAL_CITIES = ("midtown",)


def scene_rngs(seed: int, domain: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """``(layout rng, look rng)`` of sample ``(seed, domain, index)``: what :func:`render_scene` draws
    the scene's layout and its look from (``domain``: ``source``, ``target`` or ``target_val``)."""
    code = {"source": 1, "target": 2, "target_val": 3}[domain]
    return np.random.default_rng([seed, code, index, 0]), np.random.default_rng([seed, code, index, 1])


def render_scene(
    seed: int, domain: str, index: int, size: Sequence[int] = (256, 128), shift: str = DEFAULT_SHIFT
) -> tuple[np.ndarray, np.ndarray]:
    """One toy sample: ``(rgb uint8 (H, W, 3), Cityscapes label ids uint8 (H, W))``.

    ``domain`` is ``source``, ``target`` or ``target_val``; the layout distribution is the same for
    all three; the target domains share the look of the shift family ``shift`` (the source ignores
    it). The label map depends on ``(seed, domain, index, size)`` only, never on ``shift``.
    ``size`` is ``(width, height)``.
    """
    layout_rng, look_rng = scene_rngs(seed, domain, index)
    check_shift(shift)
    width, height = int(size[0]), int(size[1])
    scene = draw_layout(layout_rng, height, width)
    rgb = render_source(look_rng, scene) if domain == "source" else render_target(look_rng, scene, shift)
    return rgb, scene.ids.copy()


def _parse_size(size: str | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, str):
        width, height = size.lower().split("x")
        return int(width), int(height)
    return int(size[0]), int(size[1])


def _write_one(job: tuple[Path, int, str, int, tuple[int, int], str, str, str]) -> None:
    """Render one sample and write its two PNGs. ``out`` is the private temporary tree that
    :func:`generate_toy` renames into place whole, so plain writes suffice: no per-file temp file,
    fsync and rename (:func:`atp.data.io.write_png_atomic`)."""
    out, seed, domain, index, size, shift, image_rel, label_rel = job
    rgb, ids = render_scene(seed, domain, index, size, shift)
    palette = LABEL_ID_PALETTE if domain == "source" else None
    for rel, array, pal in ((image_rel, rgb, None), (label_rel, ids, palette)):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(array, pal))


def _jobs(out: Path, seed: int, n_source: int, n_target: int, n_val: int, size: tuple[int, int], shift: str):
    jobs = []
    for i in range(n_source):
        jobs.append(
            (
                out,
                seed,
                "source",
                i,
                size,
                shift,
                f"gta/images/{i + 1:05d}.png",
                f"gta/labels/{i + 1:05d}.png",
            )
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
                    shift,
                    f"cityscapes/leftImg8bit/{split}/{city}/{base}_leftImg8bit.png",
                    f"cityscapes/gtFine/{split}/{city}/{base}_gtFine_labelIds.png",
                )
            )
    return jobs


def _toy_info(
    n_source: int, n_target: int, n_val: int, seed: int, size: tuple[int, int], shift: str
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "n_source": int(n_source),
        "n_target": int(n_target),
        "n_val": int(n_val),
        "seed": int(seed),
        "size": [int(size[0]), int(size[1])],
    }
    # The default family is not named, so trees written before the families existed (identical
    # bytes) still count as up to date.
    if shift != DEFAULT_SHIFT:
        info["shift"] = shift
    info["version"] = TOY_VERSION
    return info


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
    shift: str = DEFAULT_SHIFT,
) -> Path:
    """Write the toy domain shift under ``out`` (see the module docstring) and return ``out``.

    The tree is written into a temporary sibling folder and renamed into place, so ``out`` is
    either complete (it holds ``toy_info.json``) or absent. ``size`` is ``(width, height)`` or
    ``"WxH"``. ``overwrite`` replaces an existing toy tree (never a folder without ``toy_info.json``).
    ``shift`` names the target's look (:data:`atp.data.toy.SHIFTS`, default ``mixed``).
    """
    out = Path(out)
    size = _parse_size(size)
    info = _toy_info(n_source, n_target, n_val, seed, size, check_shift(shift))
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
        jobs = _jobs(tmp, seed, n_source, n_target, n_val, size, shift)
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

    Stale means generated with other parameters (a tree of another shift family included) or by
    an older generator (``TOY_VERSION``).
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
        check_shift(params.get("shift", DEFAULT_SHIFT)),
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
