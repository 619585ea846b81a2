"""Domain gap of the toy shift: a small source-only model, source-val vs target-val mIoU.

    python scripts/toy_gap.py [--toy-seed 0] [--steps 1200] [--threads 1] [--shift mixed]
    python scripts/toy_gap.py --shift all              # every family, one training
    python scripts/toy_gap.py --strip docs/shifts.png  # one scene in the source look and each family's

Trains segmentation-models-pytorch's Segformer (MiT-B0, random init) on 300 toy source scenes
(random 128-wide crops, flips, batch 8, AdamW 1e-3 one-cycle) and scores 60 held-out source scenes
and the 100 target-val scenes of each shift family asked for (``--shift``: one family, a comma list
or ``all``; the source, so the model, is the same for every family). docs/shifts.md and docs/results.md
report its output (about 10 min on 1 CPU thread).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image

from atp.data.labels import CITYSCAPES_LUT, IGNORE_INDEX
from atp.data.toy import DEFAULT_SHIFT, SHIFTS, render_scene
from atp.data.toy.generate import scene_rngs
from atp.data.toy.layout import draw_layout
from atp.data.toy.render import render_source
from atp.data.toy.shifts import render_target
from atp.data.transforms import MEAN, STD
from atp.evaluation.metrics import confusion_matrix, iou_per_class, mean_iou

CROP, BATCH = 128, 8


def load(
    seed: int, domain: str, count: int, offset: int = 0, shift: str = DEFAULT_SHIFT
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 3, H, W) and train ids (N, H, W) of toy scenes offset … offset + count − 1."""
    images, labels = [], []
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    for index in range(offset, offset + count):
        rgb, ids = render_scene(seed, domain, index, shift=shift)
        images.append(((rgb - mean) / std).transpose(2, 0, 1))
        labels.append(CITYSCAPES_LUT[ids].astype(np.int64))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


@torch.no_grad()
def score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mIoU × 100, per-class IoU) over the whole set, in eval mode."""
    model.eval()
    confmat = sum(confusion_matrix(model(images[i:i + 20]).argmax(1), labels[i:i + 20], ignore_index=IGNORE_INDEX)
                  for i in range(0, len(images), 20))
    model.train()
    return float(mean_iou(confmat)), iou_per_class(confmat)


def write_strip(path: Path, seed: int = 0, indices: tuple[int, ...] = (0, 1)) -> None:
    """A PNG of target-val scenes ``indices``, one row each: the source look, then every family's."""
    rows = []
    for index in indices:
        looks = []
        scene = draw_layout(scene_rngs(seed, "target_val", index)[0], 128, 256)  # renders leave it unchanged
        for shift in (None, *SHIFTS):
            rng = scene_rngs(seed, "target_val", index)[1]  # each look from the rng render_scene gives it
            looks.append(render_source(rng, scene) if shift is None else render_target(rng, scene, shift))
        rows.append(np.concatenate([np.pad(rgb, ((2, 2), (2, 2), (0, 0)), constant_values=255) for rgb in looks], 1))
    strip = np.concatenate(rows, 0)
    captions = np.full((16, strip.shape[1], 3), 255, np.uint8)
    for k, name in enumerate(("source", *SHIFTS)):
        cv2.putText(captions, name, (k * 260 + 6, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    # 256 colours: the sensor noise makes a true-colour PNG of these ~1 MB
    Image.fromarray(np.concatenate([captions, strip], 0)).quantize(256).save(path, optimize=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shift", default=DEFAULT_SHIFT,
                        help=f"target family, a comma list or 'all' ({', '.join(SHIFTS)})")
    parser.add_argument("--strip", type=Path, help="write the picture of the looks to this PNG and exit")
    args = parser.parse_args()
    if args.strip:
        write_strip(args.strip, args.toy_seed)
        return
    shifts = list(SHIFTS) if args.shift == "all" else args.shift.split(",")
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        parser.error(f"--shift: unknown family {', '.join(unknown)}; use one of {', '.join(SHIFTS)} or all")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    started = time.time()
    train_x, train_y = load(args.toy_seed, "source", 300)
    source_val = load(args.toy_seed, "source", 60, offset=300)
    target_vals = {shift: load(args.toy_seed, "target_val", 100, shift=shift) for shift in shifts}
    print(f"data {time.time() - started:.0f}s", flush=True)

    model = smp.Segformer(encoder_name="mit_b0", encoder_weights=None, classes=19)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=args.steps, pct_start=0.05)
    started = time.time()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_x), (BATCH,))
        left = int(torch.randint(0, train_x.shape[-1] - CROP + 1, (1,)))
        x, y = train_x[index][..., left:left + CROP].clone(), train_y[index][..., left:left + CROP].clone()
        flip = torch.rand(BATCH) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 400 == 0 or step == args.steps:
            src = score(model, *source_val)[0]
            tgt = " ".join(f"tgt-val{tag(shift, shifts)} {score(model, *data)[0]:.1f}"
                           for shift, data in target_vals.items())
            print(f"step {step} loss {loss.item():.3f} src-val {src:.1f} {tgt} "
                  f"({time.time() - started:.0f}s)", flush=True)

    src, src_iou = score(model, *source_val)
    print("per-class src", np.round(src_iou.numpy() * 100).tolist())
    finals = {}
    for shift, data in target_vals.items():
        finals[shift], tgt_iou = score(model, *data)
        print(f"per-class tgt{tag(shift, shifts)}", np.round(tgt_iou.numpy() * 100).tolist())
    for shift, tgt in finals.items():
        family = "" if shifts == [DEFAULT_SHIFT] else f" shift {shift}"
        print(f"FINAL toy seed {args.toy_seed}{family} steps {args.steps}: source-val {src:.1f} "
              f"target-val {tgt:.1f} gap {src - tgt:.1f}")


def tag(shift: str, shifts: list[str]) -> str:
    """``[night]`` after a figure's name, or nothing when only the default family is scored (the old output)."""
    return "" if shifts == [DEFAULT_SHIFT] else f"[{shift}]"


if __name__ == "__main__":
    main()
