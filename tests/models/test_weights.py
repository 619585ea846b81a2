"""Checkpoint formats (manifests in the shared fixtures), conversion CLI and strict loading."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from atp import convert
from atp.errors import CheckpointError
from atp.models import build_segmentor
from atp.models.weights import (
    check_state_dict,
    infer_segmentor_config,
    load_into,
    load_weights,
    open_checkpoint,
    read_checkpoint,
    save_converted,
)
from tests.helpers.hostile import HostilePayload

ROOT = Path(__file__).resolve().parents[2]
MMSEG_NAMES = {"encoder": "backbone", "decode_head": "decode_head", "proj_head": "auxiliary_head"}
SMALL = 4096  # tensors up to this size get random values; larger ones a per-tensor constant (cheap, distinct)


def _fixtures_dir() -> Path | None:
    candidates = [os.environ.get("ATP_FIXTURES"), ROOT / "tests" / "fixtures", ROOT / "shared" / "fixtures",
                  ROOT.parent / "shared" / "fixtures"]
    return next((Path(c) for c in candidates if c and (Path(c) / "atp_uda_checkpoint.json").is_file()), None)


FIXTURES = _fixtures_dir()
needs_manifests = pytest.mark.skipif(FIXTURES is None, reason="checkpoint manifests not found (set ATP_FIXTURES)")


pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------ helpers


def manifest_keys(name: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / name).read_text())["keys"]


def synthetic_state_dict(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Tensors of the manifest's shapes and dtypes; every large tensor is filled with its own index, so a
    tensor that lands under the wrong name is caught by value as well as by shape."""
    state = {}
    for index, (name, shape) in enumerate(keys.items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(index, dtype=torch.int64)
        elif math.prod(shape) <= SMALL:
            state[name] = torch.randn(shape)
        else:
            state[name] = torch.full(shape, float(index))
    return state


def load_source(path: Path) -> dict:
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def to_mmseg(name: str) -> str:
    part, rest = name.split(".", 1)
    return f"{MMSEG_NAMES[part]}.{rest}"


def assert_same_tensor(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    assert torch.equal(actual, expected), name


def run_convert(capsys, *args: str) -> tuple[int, str, str]:
    code = convert.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def b0_mmseg_state() -> dict[str, torch.Tensor]:
    """A small (MiT-B0) segmentor state dict in mmseg names."""
    model = build_segmentor("mit_b0", proj_head={"mid_channels": 256, "out_channels": 512})
    return {to_mmseg(k): v for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpt_dir(module_tmp):
    """Full-size synthetic checkpoints (≈1.4 GB together): written once, deleted at the end of the module."""
    yield module_tmp
    for path in module_tmp.iterdir():
        path.unlink()


@pytest.fixture(scope="module")
def mit_b5_file(ckpt_dir) -> Path:
    path = ckpt_dir / "mit_b5.pth"
    torch.save(synthetic_state_dict(manifest_keys("segformer_mit_b5_imagenet.json")), path)  # plain dict
    return path


@pytest.fixture(scope="module")
def segmentor_file(ckpt_dir) -> Path:
    path = ckpt_dir / "daformer_segmentor.pth"
    state = synthetic_state_dict(manifest_keys("atp_daformer_mitb5_segmentor.json"))
    torch.save({"state_dict": state, "meta": {"mmseg_version": "0.16.0", "iter": 40000}}, path)
    return path


@pytest.fixture(scope="module")
def uda_file(ckpt_dir) -> Path:
    path = ckpt_dir / "atp_uda.pth"
    state = synthetic_state_dict(manifest_keys("atp_uda_checkpoint.json"))
    meta = {"seed": 76, "iter": 40000, "exp_name": "atp", "config": "model = dict(...)",
            "CLASSES": ("road", "sidewalk"), "PALETTE": [[128, 64, 128], [244, 35, 232]],
            "hook_msgs": {"best_score": np.float64(0.612), "best_ckpt": "best_mIoU_iter_40000.pth"}}
    torch.save({"state_dict": state, "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def b5_model():
    return build_segmentor("mit_b5", proj_head={"mid_channels": 256, "out_channels": 512})


@pytest.fixture
def scratch(tmp_path):
    """A per-test directory whose full-size checkpoint files are removed afterwards, even when the test failed."""
    yield tmp_path
    for path in tmp_path.rglob("*"):
        if path.is_file():
            path.unlink()


# -------------------------------------------------------------------------------- full-size manifest files


@needs_manifests
def test_official_mit_b5_converts_to_encoder_weights(mit_b5_file, b5_model, scratch, capsys):
    dst = scratch / "mit_b5_converted.pth"
    code, out, err = run_convert(capsys, mit_b5_file, dst)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and "mit-imagenet" in out and "1052 tensors" in out

    source = load_source(mit_b5_file)
    written = torch.load(dst, map_location="cpu", mmap=True, weights_only=True)
    assert written["format"] == "atp-segmentor"
    converted = written["state_dict"]
    assert list(converted) == [f"encoder.{k}" for k in source if not k.startswith("head.")]
    for key, value in source.items():
        if not key.startswith("head."):
            assert_same_tensor(converted[f"encoder.{key}"], value, key)

    state = read_checkpoint(dst)
    report = load_into(b5_model, state, parts=("encoder",))
    assert report.loaded == 1052 and report.complete
    assert torch.equal(b5_model.encoder.block3[39].mlp.fc2.weight, source["block3.39.mlp.fc2.weight"])
    # the whole model: decoder (58 entries incl. BN buffers) and projection head (12) are not in the file
    with pytest.raises(CheckpointError, match=r"70 missing: decode_head\."):
        load_into(b5_model, state)


@needs_manifests
def test_mmseg_segmentor_converts_and_loads_strictly(segmentor_file, b5_model, scratch, capsys):
    dst = scratch / "segmentor_converted.pth"
    code, out, _ = run_convert(capsys, segmentor_file, dst)
    assert code == 0 and "mmseg-segmentor" in out and "1122 tensors" in out and "mit_b5" in out

    source = load_source(segmentor_file)["state_dict"]
    converted = torch.load(dst, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
    assert len(converted) == len(source) == 1122
    for key, value in converted.items():
        assert_same_tensor(value, source[to_mmseg(key)], key)

    load_into(b5_model, read_checkpoint(dst))  # strict, every part
    for key, value in b5_model.state_dict().items():
        assert_same_tensor(value, source[to_mmseg(key)], key)


@needs_manifests
@pytest.mark.parametrize(("which", "prefix", "other"), [("student", "model.", "ema_model."),
                                                        ("teacher", "ema_model.", "model.")])
def test_uda_checkpoint_picks_student_or_teacher(uda_file, b5_model, scratch, capsys, which, prefix, other):
    dst = scratch / f"uda_{which}.pth"
    code, out, _ = run_convert(capsys, uda_file, dst, "--which", which)  # numpy in meta: no --trust needed
    assert code == 0 and f"atp-uda ({which})" in out

    source = load_source(uda_file)["state_dict"]
    converted = torch.load(dst, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
    assert len(converted) == 1122
    for key, value in converted.items():
        assert_same_tensor(value, source[prefix + to_mmseg(key)], key)
    big = "decode_head.fuse_layer.bottleneck.conv.weight"
    assert not torch.equal(converted[big], source[other + to_mmseg(big)])

    load_into(b5_model, read_checkpoint(dst))
    assert torch.equal(b5_model.decode_head.fuse_layer.bottleneck.conv.weight, source[prefix + to_mmseg(big)])


@needs_manifests
def test_one_key_missing_extra_or_misshapen_is_refused(segmentor_file, b5_model):
    state = read_checkpoint(segmentor_file)
    before = b5_model.decode_head.conv_seg.weight.clone()

    dropped = "decode_head.fuse_layer.aspp_modules.2.depthwise_conv.bn.running_var"
    missing = {k: v for k, v in state.items() if k != dropped}
    with pytest.raises(CheckpointError, match=r"1 missing: " + re.escape(dropped)):
        load_into(b5_model, missing)
    with pytest.raises(CheckpointError, match=re.escape(dropped)):
        check_state_dict(missing)  # what `atp.convert` runs before writing

    added = "encoder.block3.40.attn.q.weight"
    extra = {**state, added: torch.zeros(320, 320)}
    with pytest.raises(CheckpointError, match=r"1 unexpected: " + re.escape(added)):
        load_into(b5_model, extra)
    with pytest.raises(CheckpointError, match=re.escape(added)):
        check_state_dict(extra)

    misshapen = {**state, "decode_head.conv_seg.weight": torch.zeros(20, 256, 1, 1)}
    with pytest.raises(CheckpointError, match=r"different shape: decode_head\.conv_seg\.weight"):
        load_into(b5_model, misshapen)
    assert torch.equal(b5_model.decode_head.conv_seg.weight, before)  # nothing was loaded


# ----------------------------------------------------------------------------------- small (B0) formats


def test_mit_wrappers_and_module_prefix_read_the_same(scratch):
    encoder_state = build_segmentor("mit_b0").encoder.state_dict()
    official = {**encoder_state, "head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}
    variants = {"plain": official, "state_dict": {"state_dict": official}, "model": {"model": official},
                "module": {"state_dict": {f"module.{k}": v for k, v in official.items()}}}
    for name, obj in variants.items():
        torch.save(obj, scratch / f"{name}.pth")
        checkpoint = open_checkpoint(scratch / f"{name}.pth")
        assert checkpoint.format == "mit-imagenet", name
        assert list(checkpoint.state_dict) == [f"encoder.{k}" for k in encoder_state], name
        for key, value in encoder_state.items():
            assert torch.equal(checkpoint.state_dict[f"encoder.{key}"], value)
        assert infer_segmentor_config(checkpoint.state_dict)["encoder"] == "mit_b0"


def _lightning_checkpoint(student, teacher, teacher_prefix="teacher.model."):
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    if teacher is not None:
        state |= {f"{teacher_prefix}{k}": v for k, v in teacher.state_dict().items()}
    state |= {"prototypes.mean": torch.zeros(19, 512), "prototypes.count": torch.zeros(19)}
    return {
        "epoch": 0, "global_step": 120, "pytorch-lightning_version": "2.6.6", "state_dict": state,
        "hyper_parameters": {"cfg": OmegaConf.create({"lr": 6e-5, "dims": [1, 2], "name": "${stage}",
                                                      "stage": "teach", "flags": {"x": None, "y": True}})},
        "hparams_name": "kwargs", "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": 1}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/mIoU'}": {"best_model_score": torch.tensor(41.5),
                                                                 "dirpath": "/runs/x/checkpoints"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 6e-5, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 120, "_last_lr": [6e-5]}],
    }


@pytest.mark.parametrize("teacher_prefix", ["teacher.model.", "teacher."])
def test_lightning_checkpoint_student_teacher_and_round_trip(scratch, capsys, teacher_prefix):
    student = build_segmentor("mit_b0", proj_head={"mid_channels": 256, "out_channels": 512})
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(1.0)
    path = scratch / "last.ckpt"
    torch.save(_lightning_checkpoint(student, teacher, teacher_prefix), path)  # OmegaConf inside: no trust

    for which, network in (("student", student), ("teacher", teacher)):
        checkpoint = open_checkpoint(path, which=which)
        assert (checkpoint.format, checkpoint.which) == ("lightning", which)
        expected = network.state_dict()
        assert list(checkpoint.state_dict) == list(expected)
        for key, value in expected.items():
            assert torch.equal(checkpoint.state_dict[key], value), key

    dst = scratch / "teacher.pth"
    code, out, _ = run_convert(capsys, path, dst, "--which", "teacher")
    assert code == 0 and "lightning (teacher)" in out and "mit_b0" in out
    again = open_checkpoint(dst, which="teacher")  # a converted teacher may be asked for as the teacher
    assert again.format == "atp-segmentor" and again.which == "teacher"
    fresh = build_segmentor("mit_b0", proj_head={"mid_channels": 256, "out_channels": 512})
    report = load_weights(fresh, dst)
    assert report.complete and report.loaded == len(teacher.state_dict())
    assert torch.equal(fresh.decode_head.conv_seg.bias, teacher.decode_head.conv_seg.bias)


def test_lightning_checkpoint_without_teacher(scratch):
    student = build_segmentor("mit_b0", proj_head=None)
    path = scratch / "source.ckpt"
    torch.save(_lightning_checkpoint(student, None), path)
    assert open_checkpoint(path).format == "lightning"
    with pytest.raises(CheckpointError, match=r"no teacher weights"):
        read_checkpoint(path, which="teacher")


def test_single_network_formats_have_no_teacher(scratch):
    path = scratch / "segmentor.pth"
    torch.save({"state_dict": b0_mmseg_state()}, path)
    with pytest.raises(CheckpointError, match=r"single network; there is no teacher"):
        read_checkpoint(path, which="teacher")
    converted = save_converted(scratch / "converted.pth", open_checkpoint(path))
    with pytest.raises(CheckpointError, match=r"holds the student network, not the teacher"):
        read_checkpoint(converted, which="teacher")
    with pytest.raises(ValueError, match="student' or 'teacher"):
        read_checkpoint(path, which="ema")


def test_bare_segmentor_state_dict(scratch):
    model = build_segmentor("mit_b0", proj_head=None)
    torch.save(model.state_dict(), scratch / "bare.pth")
    checkpoint = open_checkpoint(scratch / "bare.pth")
    assert checkpoint.format == "segmentor-state-dict"
    assert check_state_dict(checkpoint.state_dict)["proj_head"] is None


def test_convert_refuses_incomplete_files(scratch, capsys):
    state = b0_mmseg_state()
    dropped = "backbone.block2.1.attn.kv.bias"
    torch.save({"state_dict": {k: v for k, v in state.items() if k != dropped}}, scratch / "missing.pth")
    torch.save({"state_dict": {**state, "decode_head.extra.weight": torch.zeros(3)}}, scratch / "extra.pth")
    for name, key in (("missing", "encoder.block2.1.attn.kv.bias"), ("extra", "decode_head.extra.weight")):
        dst = scratch / f"{name}_out.pth"
        code, out, err = run_convert(capsys, scratch / f"{name}.pth", dst)
        assert code == 2 and out == "" and not dst.exists()
        assert err.count("\n") == 1 and err.startswith("atp.convert: error:") and key in err
    code, _, _ = run_convert(capsys, scratch / "missing.pth", scratch / "unchecked.pth", "--no-check")
    assert code == 0  # the check can be skipped on purpose


def test_untrusted_pickle_is_refused_without_running_code(scratch, capsys):
    marker = scratch / "marker.txt"
    path = scratch / "sneaky.pth"
    torch.save({"state_dict": b0_mmseg_state(), "meta": {"note": HostilePayload(marker)}}, path)

    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    message = str(refused.value)
    assert str(path) in message and "_leave_marker" in message and "trust=True" in message and "--trust" in message
    assert not marker.exists()
    code, _, err = run_convert(capsys, path, scratch / "out.pth")
    assert code == 2 and "--trust" in err and not marker.exists()

    assert read_checkpoint(path, trust=True)  # the caller vouches for the file
    assert marker.exists()
    code, _, _ = run_convert(capsys, path, scratch / "out.pth", "--trust")
    assert code == 0


@pytest.mark.parametrize("kind", ["missing", "directory", "garbage", "list", "no_state_dict", "unknown_keys"])
def test_unreadable_or_unknown_files_raise_checkpoint_error(scratch, kind):
    path = scratch / f"{kind}.pth"
    if kind == "directory":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "no_state_dict":
        torch.save({"epoch": 3, "note": "hello"}, path)
    elif kind == "unknown_keys":
        torch.save({"state_dict": {"features.0.weight": torch.zeros(2), "classifier.bias": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    assert isinstance(caught.value, ValueError) and str(path) in str(caught.value)
    if kind == "unknown_keys":
        assert "classifier, features" in str(caught.value)


def test_failed_write_leaves_destination_untouched(scratch, capsys, monkeypatch):
    source = scratch / "segmentor.pth"
    torch.save({"state_dict": b0_mmseg_state()}, source)
    dst = scratch / "out.pth"
    dst.write_bytes(b"previous content")

    def broken_save(obj, stream, *args, **kwargs):
        stream.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    code, _, err = run_convert(capsys, source, dst)
    assert code == 2 and "No space left on device" in err
    assert dst.read_bytes() == b"previous content"
    assert sorted(p.name for p in scratch.iterdir()) == ["out.pth", "segmentor.pth"]  # no temp file left


def test_load_into_options():
    model = build_segmentor("mit_b0", proj_head=None)
    state = {k: v.clone() for k, v in build_segmentor("mit_b0", proj_head=None).state_dict().items()}
    dropped = "decode_head.conv_seg.bias"
    partial = {k: v for k, v in state.items() if k != dropped}
    with pytest.warns(UserWarning, match=re.escape(dropped)):
        report = load_into(model, partial, strict=False)
    assert report.missing == [dropped] and report.loaded == len(state) - 1
    report = load_into(model, partial, parts="encoder")  # strict within the part; decoder keys ignored
    assert report.complete and report.loaded == len([k for k in state if k.startswith("encoder.")])
    with pytest.raises(ValueError, match="no part"):
        load_into(model, state, parts=("proj_head",))


def test_module_entry_point(scratch):
    source = scratch / "segmentor.pth"
    torch.save({"state_dict": b0_mmseg_state()}, source)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "atp.convert", str(source), str(scratch / "out.pth")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "mmseg-segmentor" in done.stdout
    assert open_checkpoint(scratch / "out.pth").format == "atp-segmentor"
