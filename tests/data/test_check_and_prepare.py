"""``atp.data.check``, ``atp.data.prepare`` and ``atp.data.toy``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from atp.data import check, prepare, toy
from atp.data.check import check_dataset
from atp.data.datamodule import build_datamodule
from atp.data.io import write_png_atomic
from atp.data.prepare import prepare_dataset
from atp.errors import DatasetCheckError
from tests.helpers.data_trees import fixture_train_ids

QUIET = ["num_workers=0", "progress=false"]


@pytest.mark.parametrize("name", ["gta2cs", "syn2cs", "cs2acdc_night", "cs2acdc_fog", "cs2darkzurich"])
def test_check_passes_on_fixtures(data_fixture_root, name, capsys):
    assert check.main([f"dataset={name}", f"paths.data_dir={data_fixture_root}", *QUIET]) == 0
    out = capsys.readouterr().out
    assert "OK: 0 error(s)" in out and f"dataset={name}" in out
    assert "the published size is" in out  # tiny trees: a count warning, not an error


def test_check_reports_each_fault(data_fixture_copy, capsys):
    root = data_fixture_copy
    (root / "gta/labels/00003.png").unlink()  # missing label
    corrupt = root / "gta/images/00004.png"
    corrupt.write_bytes(corrupt.read_bytes()[:50])  # truncated image
    bad = next((root / "cityscapes/gtFine/val").glob("*/*_gtFine_labelIds.png"))
    write_png_atomic(bad, np.full((32, 64), 250, np.uint8))  # value outside the label table
    assert check.main(["dataset=gta2cs", f"paths.data_dir={root}", *QUIET]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(str(root / "gta/labels/00003.png") in line and "label missing" in line for line in err)
    assert any(str(corrupt) in line and "cannot be decoded" in line and "re-extract" in line for line in err)
    assert any(str(bad) in line and "outside the cityscapes_ids table: 250" in line for line in err)

    shutil.rmtree(root / "acdc/rgb_anon/night/val")  # missing folder
    assert check.main(["dataset=cs2acdc_night", f"paths.data_dir={root}", *QUIET]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'acdc/rgb_anon/night/val'}: ACDC folder is missing (fix: download" in err


def test_check_reports_the_test_split_as_a_warning_only(data_fixture_copy, data_compose, capsys):
    from tests.helpers.data_trees import write_test_splits

    root = data_fixture_copy
    test_dir = root / "cityscapes/leftImg8bit/test"
    assert not test_dir.exists()  # the fixture has no test split: the export needs it, training does not
    assert check.main(["dataset=gta2cs", f"paths.data_dir={root}", *QUIET]) == 0
    out = capsys.readouterr().out
    assert "target_test" in out and "OK: 0 error(s)" in out
    assert any(f"warning: {test_dir}" in line and "only the benchmark-server export" in line
               for line in out.splitlines())
    cfg = data_compose("gta2cs", root)
    assert not any("target_test" in p.message for p in check_dataset(cfg))  # training never looks at it

    write_test_splits(root)
    broken = next(test_dir.glob("*/*.png"))
    broken.write_bytes(b"broken")
    assert check.main(["dataset=gta2cs", f"paths.data_dir={root}", *QUIET]) == 0
    out = capsys.readouterr().out
    assert any(f"warning: {broken}" in line and "cannot be decoded" in line for line in out.splitlines())
    assert not any(f"warning: {test_dir}:" in line for line in out.splitlines())  # the folder is there now


def test_check_function_shallow_and_deep(data_fixture_copy, data_compose):
    root = data_fixture_copy
    cfg = data_compose("gta2cs", root)
    assert [p for p in check_dataset(cfg) if p.severity == "error"] == []
    image = root / "gta/images/00001.png"
    image.write_bytes(b"broken")
    assert [p for p in check_dataset(cfg) if p.severity == "error"] == []  # shallow: layout only
    deep = [p for p in check_dataset(cfg, deep=True) if p.severity == "error"]
    assert [p.path for p in deep] == [str(image)]
    (root / "gta/labels/00002.png").unlink()
    assert any(p.path.endswith("labels/00002.png") for p in check_dataset(cfg))


def test_training_can_fail_early_with_the_same_message(data_fixture_copy, data_compose):
    cfg = data_compose("cs2acdc_snow", data_fixture_copy)  # the fixture has no snow condition
    with pytest.raises(DatasetCheckError) as err:
        check.raise_on_problems(check_dataset(cfg), "cs2acdc_snow")
    message = str(err.value)
    assert (
        str(data_fixture_copy / "acdc/rgb_anon/snow/train") in message and "acdc.vision.ee.ethz.ch" in message
    )
    assert "python -m atp.data.check dataset=cs2acdc_snow" in message


def test_prepare_converts_and_is_idempotent(data_fixture_copy, capsys):
    root = data_fixture_copy
    assert prepare.main(["dataset=gta2cs", f"paths.data_dir={root}", "num_workers=2", "progress=false"]) == 0
    assert "12 label files converted" in capsys.readouterr().out  # 4 GTA + 6 Cityscapes train + 2 val
    converted = root / "gta/labels/00001_labelTrainIds.png"
    assert Image.open(converted).mode == "L"
    assert (np.asarray(Image.open(converted)) == fixture_train_ids(1)).all()
    cs = next((root / "cityscapes/gtFine/val/frankfurt").glob("*_gtFine_labelTrainIds.png"))
    assert (np.asarray(Image.open(cs)) == fixture_train_ids(100)).all()
    stats = json.loads((root / "gta" / prepare.STATS_FILE).read_text())
    assert len(stats["samples"]) == 4 and stats["samples"][0]["counts"]["10"] > 0
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*_labelTrainIds.png")}
    assert prepare.main(["dataset=gta2cs", f"paths.data_dir={root}", *QUIET]) == 0
    assert "0 label files converted, 12 already converted" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in root.rglob("*_labelTrainIds.png")}


def test_prepare_synthia_16bit(data_fixture_copy):
    report = prepare_dataset(data_compose_free("syn2cs", data_fixture_copy), num_workers=0, progress=False)
    assert report.issues == []
    label = data_fixture_copy / "synthia/GT/LABELS/0000001_labelTrainIds.png"
    assert (np.asarray(Image.open(label)) == fixture_train_ids(1)).all()


def data_compose_free(name, data_dir):
    from atp.config import compose_cli

    return compose_cli([f"dataset={name}", f"paths.data_dir={data_dir}"]).dataset


def test_prepare_killed_midway_leaves_no_partial_file(data_fixture_copy, monkeypatch):
    import atp.data.io as io
    from atp.atomic import atomic_write

    real_write, calls = io.atomic_write_bytes, []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == 3:
            def half(handle):
                handle.write(data[: len(data) // 2])
                raise KeyboardInterrupt  # as if the run were stopped while writing

            return atomic_write(path, half)
        return real_write(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", dying_write)
    cfg = data_compose_free("gta2cs", data_fixture_copy)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(cfg, num_workers=0, progress=False)
    written = sorted(data_fixture_copy.glob("gta/labels/*_labelTrainIds.png"))
    written += sorted(data_fixture_copy.glob("cityscapes/gtFine/*/*/*_labelTrainIds.png"))
    assert len(written) == 2 and all(np.asarray(Image.open(p)).ndim == 2 for p in written)  # complete files
    assert list(data_fixture_copy.rglob("*.tmp")) == []
    # a hard kill (no cleanup) leaves only a hidden temp file, which the next run removes
    (data_fixture_copy / "gta/labels/.00003.png.x.tmp").write_bytes(b"partial")
    monkeypatch.setattr(io, "atomic_write_bytes", real_write)
    report = prepare_dataset(cfg, num_workers=0, progress=False)
    assert report.removed_temp_files == 1 and report.converted == 12 - 2 and not report.issues
    assert list(data_fixture_copy.rglob("*.tmp")) == []


def test_prepare_reports_bad_label_values(data_fixture_copy, capsys):
    write_png_atomic(data_fixture_copy / "gta/labels/00001.png", np.full((32, 64), 200, np.uint8))
    assert prepare.main(["dataset=gta2cs", f"paths.data_dir={data_fixture_copy}", *QUIET]) == 1
    err = capsys.readouterr().err
    assert str(data_fixture_copy / "gta/labels/00001.png") in err and "table: 200" in err
    assert not (data_fixture_copy / "gta/labels/00001_labelTrainIds.png").exists()


def test_toy_is_deterministic_and_in_the_real_layouts(tmp_path):
    a = toy.generate_toy(tmp_path / "a", n_source=3, n_target=4, n_val=2, seed=7, size="64x32")
    b = toy.generate_toy(tmp_path / "b", n_source=3, n_target=4, n_val=2, seed=7, size=(64, 32))
    c = toy.generate_toy(tmp_path / "c", n_source=3, n_target=4, n_val=2, seed=8, size=(64, 32))
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*.png"))
    assert "gta/images/00001.png" in files and "gta/labels/00003.png" in files
    assert "cityscapes/leftImg8bit/train/northville/northville_000000_000019_leftImg8bit.png" in files
    assert "cityscapes/gtFine/val/midtown/midtown_000001_000019_gtFine_labelIds.png" in files
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    assert Image.open(a / "gta/labels/00001.png").mode == "P"  # label ids in an indexed PNG, as GTA5
    assert Image.open(
        a / "cityscapes/leftImg8bit/train/southport/southport_000000_000019_leftImg8bit.png"
    ).size == (64, 32)
    with pytest.raises(FileExistsError):
        toy.generate_toy(a, n_source=1, n_target=1, n_val=1)


def test_toy_data_are_generated_on_first_use_and_pass_check(tmp_path, data_compose):
    cfg = data_compose(
        "toy",
        tmp_path,
        "dataset.toy.n_source=6",
        "dataset.toy.n_target=4",
        "dataset.toy.n_val=2",
        "dataset.toy.size=[64,32]",
        "dataset.scale=[64,32]",
        "dataset.crop_size=[32,32]",
    )
    dm = build_datamodule(cfg, "source", batch_size=2, num_workers=0)
    dm.prepare_data()
    assert (tmp_path / "toy" / toy.INFO_FILE).is_file()
    batch = next(iter(dm.train_dataloader()))
    assert batch["img"].shape == (2, 3, 32, 32) and batch["label"].max() <= 255
    assert [p for p in check_dataset(cfg, deep=True) if p.severity == "error"] == []
    # labels use the 19 classes and void
    label = np.asarray(Image.open(tmp_path / "toy/gta/labels/00001.png"))
    assert {7, 8, 11, 23} <= set(np.unique(label).tolist())


def test_stale_toy_data_are_regenerated(tmp_path):
    out = tmp_path / "toy"
    toy.generate_toy(out, n_source=2, n_target=1, n_val=1, size=(32, 16))
    assert out.stat().st_mode & 0o077  # not left private by mkdtemp
    cfg = {
        "generate_if_missing": True,
        "toy": {"out": str(out), "n_source": 2, "n_target": 1, "n_val": 1, "size": [32, 16]},
    }
    assert toy.ensure_toy_data(cfg) is False  # up to date
    cfg["toy"]["n_source"] = 3
    assert toy.ensure_toy_data(cfg) is True
    assert len(list((out / "gta/images").glob("*.png"))) == 3 and toy.read_toy_info(out)["n_source"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no temporary or old folders left


def test_toy_cli(tmp_path, capsys):
    assert toy.main([f"out={tmp_path / 'toy'}", "n_source=2", "n_target=2", "n_val=1", "size=32x16"]) == 0
    assert "wrote the toy domain shift" in capsys.readouterr().out
    assert len(list((tmp_path / "toy/gta/images").glob("*.png"))) == 2
    assert toy.main(["bogus=1"]) == 2


def test_prepare_check_and_index_report_a_missing_folder_alike(data_fixture_copy, data_compose, capsys):
    from atp.data.config import instantiate_entry
    from atp.errors import DatasetLayoutError

    root = data_fixture_copy
    shutil.rmtree(root / "gta/images")
    missing = root / "gta/images"
    line = f"{missing}: GTA5 folder is missing (fix: download the GTA5 images"
    assert prepare.main(["dataset=gta2cs", f"paths.data_dir={root}", *QUIET]) == 2
    assert capsys.readouterr().err.startswith(f"error: {line}")
    with pytest.raises(DatasetLayoutError, match="GTA5 folder is missing"):
        prepare_dataset(data_compose_free("gta2cs", root), num_workers=0, progress=False)
    assert check.main(["dataset=gta2cs", f"paths.data_dir={root}", *QUIET]) == 1
    assert f"error: {line}" in capsys.readouterr().err
    with pytest.raises(DatasetLayoutError) as err:
        len(instantiate_entry(data_compose("gta2cs", root), "source", labelled=True))
    assert str(err.value).startswith(line)
