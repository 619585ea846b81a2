"""The toy generator's shift families (``atp.data.toy``, ``conf/dataset/toy_<family>.yaml``)."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace

import numpy as np
import pytest

from atp.data import toy
from atp.data.check import check_dataset
from atp.data.datamodule import build_datamodule
from atp.data.labels import CITYSCAPES_LUT
from atp.data.toy.layout import draw_layout
from atp.data.toy.render import render_source
from atp.data.toy.scene import M_SKY
from atp.data.toy.shifts import glare, render_target, sensor

FAMILIES = ("mixed", "night", "fog", "palette", "snow", "sensor", "glare")
NEW_FAMILIES = tuple(f for f in FAMILIES if f != "mixed")
HELDOUT = ("sensor", "glare")  # only reported; recipe changes are decided on the others (docs/shifts.md)

# sha256 of rgb.tobytes() and ids.tobytes() from render_scene(seed, domain, index, size), computed
# with the original single-module atp/data/toy.py (commit 2c34180, before the package split and the
# shift families existed). Pixel arrays rather than PNG files, so a PNG encoder update cannot break it.
ORIGINAL_SHA256 = {
    (0, "source", 0, (64, 32)): (
        "cd5ac37dd8f962b39cf9da157c28141e34e36bac61547b452c1c83360bd1753a",
        "9c2aa76536469aa295a8722d88d55903171673fa8fd1345d17af121851a65994",
    ),
    (0, "target", 1, (64, 32)): (
        "fadd3b7f7138291ac3fe3609607bdbca6000e8eeaa3ea24bddf0c52cf709a336",
        "7e15be79435124be1c0f75fd3ca272798881980a81a024fb2a247a2becba759b",
    ),
    (3, "target_val", 2, (48, 24)): (
        "01c7ec0bdd41cb3003d5fe4280fb90f2413c536c7e9d09633a87d951d71190bc",
        "5d939baf75e9d7dc84b99ed17c684e39adc6130019d98fcf6e2013b1328c04aa",
    ),
}


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def test_the_families_are_the_documented_ones():
    assert tuple(toy.SHIFTS) == FAMILIES and toy.DEFAULT_SHIFT == "mixed"


@pytest.mark.parametrize("args", list(ORIGINAL_SHA256))
def test_the_default_family_renders_what_it_always_did(args):
    for rgb, ids in (toy.render_scene(*args), toy.render_scene(*args, shift="mixed")):
        assert (_sha256(rgb), _sha256(ids)) == ORIGINAL_SHA256[args]


def test_families_change_the_look_but_never_the_labels():
    for index in range(3):
        target = {f: toy.render_scene(5, "target_val", index, (64, 32), shift=f) for f in FAMILIES}
        for rgb, ids in target.values():
            assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
            assert np.array_equal(ids, target["mixed"][1])
        # the same scene in the source look (as render_scene draws it) against every family's
        scene = draw_layout(np.random.default_rng([5, 3, index, 0]), 32, 64)
        source = render_source(np.random.default_rng([5, 3, index, 1]), scene).astype(np.float32)
        looks = {"source": source} | {f: rgb.astype(np.float32) for f, (rgb, _) in target.items()}
        for a, b in itertools.combinations(looks, 2):
            assert np.abs(looks[a] - looks[b]).mean() > 10, (a, b)  # grey levels, out of 255
    # the source does not depend on the family
    assert all(
        np.array_equal(
            toy.render_scene(1, "source", 0, (32, 16), shift=f)[0],
            toy.render_scene(1, "source", 0, (32, 16))[0],
        )
        for f in NEW_FAMILIES
    )


def test_the_target_look_is_the_familys_render():
    scene = draw_layout(np.random.default_rng([2, 2, 4, 0]), 16, 32)
    for family in FAMILIES:
        rgb = render_target(np.random.default_rng([2, 2, 4, 1]), scene, family)
        assert np.array_equal(rgb, toy.render_scene(2, "target", 4, (32, 16), shift=family)[0])


def test_sensor_noise_has_the_variance_of_shot_plus_read_noise():
    # Without resampling, white-balance error, sharpening or JPEG, the image minus a noise-free render
    # of the same draws is the sensor noise: variance read² + shot · signal (+ 1/6 from the two roundings).
    bare = sensor.SensorLook(sensor_scale=(1.0, 1.0), white_balance=(0.0, 0.0), green_tint=(0.0, 0.0))
    bare = replace(bare, sharpen=(0.0, 0.0), jpeg_quality=None)
    noisy_look, clean_look = (
        replace(bare, shot=(0.3, 0.3), read=(2.0, 2.0)),
        replace(bare, shot=(0.0, 0.0), read=(0.0, 0.0)),
    )
    scene = draw_layout(np.random.default_rng([4, 3, 0, 0]), 128, 256)
    noisy, clean = (
        sensor.render(np.random.default_rng([4, 3, 0, 1]), scene, look).astype(np.float64)
        for look in (noisy_look, clean_look)
    )
    variances = []
    for low, high in ((20, 60), (160, 220)):  # far enough from 0 and 255 that the noise is not clipped
        signal = (clean >= low) & (clean < high)
        expected = 2.0**2 + 0.3 * (clean[signal] + 0.5).mean() + 1 / 6
        variances.append((noisy - clean)[signal].var())
        assert signal.sum() > 5000 and variances[-1] == pytest.approx(expected, rel=0.05)
    assert variances[1] > 2 * variances[0]


def _block_edge_ratio(rgb: np.ndarray) -> float:
    """Mean grey step across the 8×8 JPEG block edges over the largest mean step at another phase of 8."""
    grey = rgb.astype(np.float64).mean(axis=-1)
    across, down = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    steps = [across[:, p::8].mean() + down[p::8].mean() for p in range(8)]
    return steps[7] / max(steps[:7])  # phase 7: the steps between pixels 8k − 1 and 8k


def test_sensor_images_show_the_jpeg_blocks():
    for index in range(3):
        assert _block_edge_ratio(toy.render_scene(0, "target_val", index, shift="sensor")[0]) > 1.25
        assert _block_edge_ratio(toy.render_scene(0, "source", index)[0]) < 1.2  # no grid in the source


def test_glare_clips_the_sky_round_the_sun_and_lowers_the_scenes_contrast():
    look = replace(glare.GLARE_LOOK, sun_x=(0.5, 0.5), sun_y=(0.2, 0.2))  # the sun at pixel (128, 25.6)
    yy, xx = np.mgrid[0:128, 0:256] + 0.5
    near_sun = np.hypot(xx - 128, yy - 25.6) < 12
    for index in range(3):
        scene = draw_layout(np.random.default_rng([0, 3, index, 0]), 128, 256)
        source = render_source(np.random.default_rng([0, 3, index, 1]), scene).mean(axis=-1)
        target = glare.render(np.random.default_rng([0, 3, index, 1]), scene, look).mean(axis=-1)
        sky = scene.material == M_SKY
        assert (sky & near_sun).sum() > 100
        assert target[sky & near_sun].mean() > 250 and source[sky & near_sun].mean() < 210  # over-exposed
        assert target[~sky].std() < 0.8 * source[~sky].std()  # the veil and the shade flatten the scene


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_each_family_config_generates_a_tree_the_dataset_classes_read(family, tmp_path, data_compose):
    cfg = data_compose(
        f"toy_{family}",
        tmp_path,
        "dataset.toy.n_source=3",
        "dataset.toy.n_target=2",
        "dataset.toy.n_val=2",
        "dataset.toy.size=[64,32]",
        "dataset.crop_size=[32,32]",
    )
    out = tmp_path / f"toy_{family}"
    assert cfg.name == f"toy_{family}" and cfg.toy.shift == family and cfg.toy.out == str(out)
    assert cfg.suite == ("heldout" if family in HELDOUT else "development")
    assert cfg.source.root == str(out / "gta") and cfg.target_val.root == str(out / "cityscapes")
    assert f"shift={family}" in cfg.missing_data_fix and str(out) in cfg.missing_data_fix
    assert [
        p for p in check_dataset(cfg, deep=True) if p.severity == "error"
    ] == []  # generates, then decodes all
    assert toy.read_toy_info(out)["shift"] == family
    dm = build_datamodule(cfg, "source", batch_size=2, num_workers=0)
    dm.setup("fit")
    assert len(dm.dataset("source")) == 3 and len(dm.dataset("target")) == 2 and len(dm.dataset("val")) == 2
    sample = dm.dataset("val")[0]
    assert tuple(sample["img"].shape[-2:]) == (32, 64) and sample["label"].max() <= 255
    ids = toy.render_scene(0, "target_val", 0, (64, 32), shift=family)[1]
    assert np.array_equal(
        np.asarray(sample["label"]), CITYSCAPES_LUT[ids]
    )  # the scene drawn for every family


def test_an_unknown_family_fails_with_the_valid_ones(tmp_path, capsys):
    names = ", ".join(FAMILIES)
    with pytest.raises(ValueError, match=f"unknown toy shift family 'dusk': use one of {names}"):
        toy.generate_toy(tmp_path / "toy", n_source=1, n_target=1, n_val=1, size=(32, 16), shift="dusk")
    with pytest.raises(ValueError, match="dataset.toy.shift"):
        toy.ensure_toy_data(
            {"generate_if_missing": True, "toy": {"out": str(tmp_path / "toy"), "shift": "dusk"}}
        )
    with pytest.raises(ValueError, match=names):
        toy.render_scene(0, "target", 0, (32, 16), shift="dusk")
    assert toy.main([f"out={tmp_path / 'toy'}", "shift=dusk"]) == 2
    assert f"error: unknown toy shift family 'dusk': use one of {names}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_tree_of_another_family_is_regenerated_not_reused(tmp_path, capsys):
    out = tmp_path / "toy"
    image = "cityscapes/leftImg8bit/val/midtown/midtown_000000_000019_leftImg8bit.png"
    label = "cityscapes/gtFine/val/midtown/midtown_000000_000019_gtFine_labelIds.png"
    assert toy.main([f"out={out}", "n_source=1", "n_target=1", "n_val=1", "size=32x16"]) == 0
    assert "shift" not in toy.read_toy_info(out)  # the default family: toy_info.json as before the families
    before = {name: (out / name).read_bytes() for name in (image, label, "gta/images/00001.png")}
    cfg = {
        "generate_if_missing": True,
        "toy": {"out": str(out), "n_source": 1, "n_target": 1, "n_val": 1, "size": [32, 16]},
    }
    assert toy.ensure_toy_data(cfg) is False  # mixed, up to date
    cfg["toy"]["shift"] = "fog"
    assert toy.ensure_toy_data(cfg) is True
    assert toy.read_toy_info(out)["shift"] == "fog"
    assert (out / image).read_bytes() != before[image]  # another look …
    assert (out / label).read_bytes() == before[label]  # … of the same scene
    assert (out / "gta/images/00001.png").read_bytes() == before["gta/images/00001.png"]
    assert toy.ensure_toy_data(cfg) is False
    cfg["toy"]["shift"] = "mixed"
    assert toy.ensure_toy_data(cfg) is True and "shift" not in toy.read_toy_info(out)
    assert (out / image).read_bytes() == before[image]
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no temporary or old folders left
