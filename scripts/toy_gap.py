"""Domain gap of the toy shift: a small source-only model, source-val vs target-val mIoU.

    python scripts/toy_gap.py [--toy-seed 0] [--steps 1200] [--threads 1]

Trains segmentation-models-pytorch's Segformer (MiT-B0, random init) on 300 toy source scenes
(random 128-wide crops, flips, batch 8, AdamW 1e-3 one-cycle) and scores 60 held-out source scenes
and the 100 target-val scenes. The README reports its output (about 10 min on 1 CPU thread).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from atp.data.labels import CITYSCAPES_LUT, IGNORE_INDEX
from atp.data.toy import render_scene
from atp.data.transforms import MEAN, STD
from atp.metrics import confusion_matrix, iou_per_class, mean_iou

CROP, BATCH = 128, 8


def load(seed: int, domain: str, count: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 3, H, W) and train ids (N, H, W) of toy scenes offset … offset + count − 1."""
    images, labels = [], []
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    for index in range(offset, offset + count):
        rgb, ids = render_scene(seed, domain, index)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    started = time.time()
    train_x, train_y = load(args.toy_seed, "source", 300)
    source_val = load(args.toy_seed, "source", 60, offset=300)
    target_val = load(args.toy_seed, "target_val", 100)
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
            src, tgt = score(model, *source_val)[0], score(model, *target_val)[0]
            print(f"step {step} loss {loss.item():.3f} src-val {src:.1f} tgt-val {tgt:.1f} "
                  f"({time.time() - started:.0f}s)", flush=True)

    src, src_iou = score(model, *source_val)
    tgt, tgt_iou = score(model, *target_val)
    print("per-class src", np.round(src_iou.numpy() * 100).tolist())
    print("per-class tgt", np.round(tgt_iou.numpy() * 100).tolist())
    print(f"FINAL toy seed {args.toy_seed} steps {args.steps}: source-val {src:.1f} target-val {tgt:.1f} "
          f"gap {src - tgt:.1f}")


if __name__ == "__main__":
    main()
