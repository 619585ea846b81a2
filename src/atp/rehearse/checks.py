"""The rehearsal's checks: what the toy sizes cannot show, read from what each command wrote.

* every stage finished its steps, and the tensors crossing its boundaries have the paper's sizes: 640² training
  crops, the whole 1280×720 ACDC images where the loader does not crop and the class-balanced 640² crop the stage
  takes of them (spec §2.6–§2.7), pseudo-labels at the crop, prototypes and their update at 1/4 (spec §8.3), ClassMix
  masks at the crop;
* Propagate's hard-pixel weights are 0 in the top 15 and bottom 120 rows of every 640² crop and the teacher's
  quality everywhere else (spec §8.2 step 5);
* evaluation scores label maps at the original resolution (spec §11): the confusion matrix holds exactly the
  labelled pixels of the val labels at 2048×1024 / 1920×1080, and the sample panels are that size;
* every exported file is at the server's size (2048×1024 Cityscapes label ids, 1920×1080 ACDC train ids);
* predictions are at the input's size (an image and a video's frames);
* the same seed gives the same losses (one stage trained twice).
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from atp.data.config import instantiate_entry
from atp.data.io import read_label
from atp.data.labels import IGNORE_INDEX, NUM_CLASSES
from atp.data.transforms import rescale_size
from atp.evaluation.export import TRAIN_ID_TO_LABEL_ID
from atp.rehearse.plan import PREDICT_IMAGE, PREDICT_VIDEO, Options, Step, export_server, image_size


@dataclass
class Check:
    """One check: what it asserts, whether it held, the evidence, and the log to read when it did not."""

    name: str
    ok: bool
    detail: str
    log: str | None = None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    with Image.open(path) as image:
        return image.size


# ------------------------------------------------------------------------------------------- training
def stream_size(cfg: DictConfig, dataset: str, stream: str) -> tuple[int, int]:
    """(height, width) of the images a training stream's loader delivers: the crop, or where the dataset config
    does not crop in the loader (ACDC's target and hard streams), the whole resized image."""
    if (cfg.dataset.get("loader_crop") or {}).get(stream, True):
        return tuple(cfg.dataset.crop_size)
    role = "source" if stream == "source" else "target"
    width, height = rescale_size(*image_size(dataset, role), cfg.dataset[role].scale)
    return height, width


def expected_shapes(cfg: DictConfig, dataset: str, stage: str, batch: int) -> dict[str, Any]:
    """The shapes a stage's first step must show (see :mod:`atp.rehearse.probe`)."""
    crop = list(cfg.dataset.crop_size)
    quarter = [side // 4 for side in crop]
    if stage == "source":
        return {"batch": {"img": [batch, 3, *stream_size(cfg, dataset, "source")],
                          "label": [batch, *stream_size(cfg, dataset, "source")]}}
    streams = ("easy", "hard") if stage == "propagate" else ("target",)
    loaded = {s: [batch, 3, *stream_size(cfg, dataset, s)] for s in streams}
    expected: dict[str, Any] = {
        "batch": {s: {"img": shape} for s, shape in loaded.items()} if stage == "propagate" else {"img": loaded["target"]},
        "student_encoder_inputs": [batch, 3, *crop],
        "whole_images_cropped": [shape for shape in loaded.values() if shape[2:] != crop],
    }
    if stage in ("teach", "propagate"):
        expected["training_labels"] = [batch, *crop]
    if stage == "propagate":
        dim = int(cfg.model.proj_head.out_channels)
        expected.update(
            prototype_update={"features": [batch, dim, *quarter], "labels": [batch, *quarter]},
            prototypes={"mean": [int(cfg.dataset.num_classes), dim]},
            classmix_masks=[batch, *crop],
        )
    return expected


def _every_shape(shapes: Mapping[str, Any], expected: Mapping[str, Any], key: str, what: str) -> list[str]:
    """A problem when ``expected`` names ``key`` and a recorded shape under it differs (or none was recorded)."""
    if key not in expected:
        return []
    recorded = shapes.get(key) or []
    if recorded and all(shape == expected[key] for shape in recorded):
        return []
    return [f"{what} {shapes.get(key)}, every one should be {expected[key]}"]


def shape_problems(record: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What differs between a probe record's shapes and :func:`expected_shapes`."""
    shapes = record.get("shapes", {})
    problems = []
    if shapes.get("batch") != expected["batch"]:
        problems.append(f"loader batch {shapes.get('batch')} != {expected['batch']}")
    problems += _every_shape(shapes, expected, "student_encoder_inputs", "student inputs")
    pseudo = shapes.get("pseudo_labels", [])
    crop = expected.get("student_encoder_inputs", [None, None, None, None])[2:]
    for whole in expected.get("whole_images_cropped", []):
        # the class-balanced crop of whole images (spec §2.6): taken by the teacher, at the crop size
        if not any(p["input"] == whole and p["crop"][2:] == crop and p["labels"][1:] == crop for p in pseudo):
            problems.append(f"no class-balanced {crop} crop of the whole {whole} images: pseudo-labels {pseudo}")
    problems += _every_shape(shapes, expected, "training_labels", "pseudo-labels trained on")
    for key in ("prototype_update", "prototypes"):
        if key in expected:
            got = {k: v for k, v in (shapes.get(key) or {}).items() if k in expected[key]}
            if got != expected[key]:
                problems.append(f"{key} {shapes.get(key)} != {expected[key]}")
    if "classmix_masks" in expected:
        masks = shapes.get("classmix_masks") or {}
        if masks.get("shape") != expected["classmix_masks"] or masks.get("dtype") != "bool":
            problems.append(f"ClassMix masks {masks} != bool {expected['classmix_masks']}")
    return problems


def check_training(step: Step, cfg: DictConfig, options: Options, log: str) -> list[Check]:
    """The stage finished its steps (manifest and probe agree), and its first step's shapes."""
    manifest = read_json(step.out_dir / "manifest.json") or {}
    record = read_json(step.probe_file)
    finished = manifest.get("status") == "complete" and manifest.get("steps") == options.steps
    checks = [Check(f"{step.name}: {options.steps} steps, manifest complete", finished,
                    f"manifest status {manifest.get('status')!r}, steps {manifest.get('steps')}", log)]
    if record is None or record.get("steps") != options.steps:
        checks.append(Check(f"{step.name}: recorded", False,
                            f"probe {step.probe_file}: {'missing' if record is None else record.get('steps')} steps", log))
        return checks
    problems = shape_problems(record, expected_shapes(cfg, step.dataset, step.stage, options.batch))
    summary = ", ".join(f"{k} {v}" for k, v in record["shapes"].items() if k in ("batch", "classmix_masks"))
    checks.append(Check(f"{step.name}: shapes at the stage's boundaries", not problems,
                        "; ".join(problems) or summary, log))
    if step.stage == "propagate":
        checks.append(check_hood_rows(step, record, cfg, options, log))
    return checks


def check_hood_rows(step: Step, record: Mapping[str, Any], cfg: DictConfig, options: Options, log: str) -> Check:
    """Every step's hard-pixel weights: (B, 640, 640), 0 in exactly the top 15 and bottom 120 rows, the
    teacher's quality elsewhere (spec §8.2 step 5)."""
    height, width = cfg.dataset.crop_size
    top, bottom = int(cfg.stage.module.ignore_top_rows), int(cfg.stage.module.ignore_bottom_rows)
    want_rows = [[0, top], [height - bottom, height]]
    entries = record.get("hard_weights", [])
    problems = []
    if (top, bottom) != (15, 120):
        problems.append(f"the config ignores {top}/{bottom} rows, spec §8.2 says 15/120")
    if len(entries) != options.steps:
        problems.append(f"{len(entries)} hard-weight maps for {options.steps} steps")
    for index, entry in enumerate(entries):
        if entry["shape"] != [options.batch, height, width]:
            problems.append(f"step {index}: weights {entry['shape']}, not [{options.batch}, {height}, {width}]")
        if entry["zeroed_rows"] != want_rows:
            problems.append(f"step {index}: zeroed rows {entry['zeroed_rows']}, not {want_rows}")
        if not entry["weights_are_quality_outside_those_rows"]:
            problems.append(f"step {index}: weights differ from the quality outside the zeroed rows")
    quality = [q for entry in entries for q in entry["quality"]]
    detail = (f"{len(entries)} steps × {options.batch} crops of {height}×{width}: rows [0, {top}) and "
              f"[{height - bottom}, {height}) zero, the rest = quality q {quality}")
    return Check(f"{step.name}: hood rows ignored at {height}×{width}", not problems,
                 "; ".join(problems) or detail, log)


def check_rerun(first: Step, second: Step, log: str) -> Check:
    """The same stage, seed and weights trained twice: every loss of every step equal."""
    losses = [(read_json(s.probe_file) or {}).get("losses") for s in (first, second)]
    flat = [v for step in losses[0] or [] for v in step]
    same = losses[0] is not None and losses[0] == losses[1] and bool(flat) and all(map(math.isfinite, flat))
    detail = f"losses {losses[0]} and {losses[1]}"
    return Check(f"{second.name}: the same seed gives the same losses as {first.name}", same, detail, log)


# ------------------------------------------------------------------------------------------- evaluation
def val_label_pixels(dataset_cfg: DictConfig) -> tuple[int, int, set[tuple[int, int]]]:
    """(images, labelled pixels, label sizes (W, H)) of the target val labels, read at their own size."""
    dataset = instantiate_entry(dataset_cfg, "target_val", labelled=True, pipeline="eval")
    pixels, sizes = 0, set()
    for sample in dataset.samples:
        label = read_label(sample.label, sample.label_encoding)
        pixels += int((label != IGNORE_INDEX).sum())
        sizes.add((label.shape[1], label.shape[0]))
    return len(dataset.samples), pixels, sizes


def check_evaluation(step: Step, dataset_cfg: DictConfig, log: str) -> Check:
    """The confusion matrix counts exactly the val labels' pixels at the original size; panels are that size."""
    width, height = image_size(step.dataset, "target_val")
    images, pixels, sizes = val_label_pixels(dataset_cfg)
    metrics = read_json(step.out_dir / "metrics.json") or {}
    counted = int(np.asarray(metrics.get("confusion_matrix", [[0]]), dtype=np.int64).sum())
    panels = sorted((step.out_dir / "predictions").glob("*_input_pred_gt_error.png"))
    panel_sizes = {png_size(p) for p in panels}
    problems = []
    if sizes != {(width, height)}:
        problems.append(f"val labels of size {sorted(sizes)}, not {width}×{height}")
    if counted != pixels:
        problems.append(f"the confusion matrix counts {counted} pixels, the val labels hold {pixels} at "
                        f"{width}×{height}")
    if not panels or panel_sizes != {(4 * width, height)}:
        problems.append(f"sample panels {sorted(panel_sizes)}, not 4 × {width}×{height}")
    detail = (f"{images} val image(s): {counted} labelled pixels counted = the labels at {width}×{height}; "
              f"mIoU {metrics.get('mIoU', {}).get('all19')}")
    return Check(f"{step.name}: scored at {width}×{height}", not problems, "; ".join(problems) or detail, log)


def check_export(step: Step, test_images: int, log: str) -> Check:
    """Every exported PNG at the server's size and encoding; the zip holds them all."""
    server, (width, height) = export_server(step.dataset)
    files = sorted((step.out_dir / "submission").rglob("*.png"))
    problems = []
    if len(files) != test_images:
        problems.append(f"{len(files)} files for {test_images} test images")
    allowed = set(np.unique(TRAIN_ID_TO_LABEL_ID[:NUM_CLASSES]).tolist()) if server == "cityscapes" else set(range(NUM_CLASSES))
    for path in files:
        if png_size(path) != (width, height):
            problems.append(f"{path.name} is {'×'.join(map(str, png_size(path)))}")
        values = set(np.unique(np.asarray(Image.open(path))).tolist())
        if not values <= allowed:
            problems.append(f"{path.name} holds {sorted(values - allowed)}, not {server} values")
    archives = list(step.out_dir.glob(f"*_test_{server}.zip"))
    if len(archives) != 1 or len(zipfile.ZipFile(archives[0]).namelist()) != len(files):
        problems.append(f"zip {archives} does not hold the {len(files)} files")
    encoding = "label ids" if server == "cityscapes" else "train ids"
    detail = f"{len(files)} file(s) at {width}×{height} ({encoding}) and {archives[0].name if archives else '-'}"
    return Check(f"{step.name}: files at the server's {width}×{height}", not problems,
                 "; ".join(problems) or detail, log)


def check_predict(step: Step, options: Options, log: str) -> Check:
    """The image's three PNGs at 2048×1024 and the video's overlay with every frame at 1920×1080."""
    import cv2

    problems = []
    stem = Path(PREDICT_IMAGE).stem
    sizes = {}
    for suffix in ("trainIds", "color", "overlay"):
        path = step.out_dir / f"{stem}_{suffix}.png"
        sizes[suffix] = png_size(path) if path.is_file() else None
    if set(sizes.values()) != {(2048, 1024)}:
        problems.append(f"image outputs {sizes}, not 2048×1024")
    video = step.out_dir / f"{Path(PREDICT_VIDEO).stem}_overlay.mp4"
    capture = cv2.VideoCapture(str(video))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame.shape[1::-1])
        ok, frame = capture.read()
    capture.release()
    if len(frames) != options.video_frames or set(frames) != {(1920, 1080)}:
        problems.append(f"video overlay {video.name}: {len(frames)} frame(s) of {sorted(set(frames))}, not "
                        f"{options.video_frames} of 1920×1080")
    detail = f"{PREDICT_IMAGE} → 3 PNGs at 2048×1024; {PREDICT_VIDEO} → {len(frames)} overlay frames at 1920×1080"
    return Check(f"{step.name}: outputs at the input's size", not problems, "; ".join(problems) or detail, log)
