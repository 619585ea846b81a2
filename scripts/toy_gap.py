"""Domain gap of the toy shift: a small source-only model, source-val vs target-val mIoU.

    NT=1 python scripts/toy_gap.py [toy_seed=0] [steps=1200]

Trains segmentation-models-pytorch's Segformer (MiT-B0, random init) on 300 toy source scenes
(random 128-wide crops, flips, batch 8, AdamW 1e-3 one-cycle) and scores 60 held-out source
scenes and the 100 target-val scenes. README reports its output (about 10 min on 1 CPU thread).
"""
import sys
import time

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from atp.data.labels import CITYSCAPES_LUT
from atp.data.toy import render_scene

torch.set_num_threads(int(__import__("os").environ.get("NT", "2"))); torch.manual_seed(0); torch.set_flush_denormal(True)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 600
MEAN = np.array((123.675, 116.28, 103.53), np.float32); STD = np.array((58.395, 57.12, 57.375), np.float32)
def load(domain, n, offset=0):
    X, Y = [], []
    for i in range(offset, offset + n):
        rgb, ids = render_scene(seed, domain, i)
        X.append(((rgb - MEAN) / STD).transpose(2, 0, 1)); Y.append(CITYSCAPES_LUT[ids].astype(np.int64))
    return torch.tensor(np.stack(X)), torch.tensor(np.stack(Y))
t0 = time.time()
Xs, Ys = load('source', 300); Xsv, Ysv = load('source', 60, 300); Xtv, Ytv = load('target_val', 100)
print('data', time.time() - t0, flush=True)
model = smp.Segformer(encoder_name="mit_b0", encoder_weights=None, classes=19)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
def miou(X, Y):
    model.eval(); cm = torch.zeros(19, 19, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(X), 20):
            p = model(X[i:i+20]).argmax(1); y = Y[i:i+20]; m = y != 255
            cm += torch.bincount(y[m] * 19 + p[m], minlength=361).view(19, 19)
    model.train()
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag()).float()
    return float(np.nanmean(iou.numpy()) * 100), iou
bs = 8; t0 = time.time()
for step in range(1, steps + 1):
    idx = torch.randint(0, len(Xs), (bs,))
    off = int(torch.randint(0, 129, (1,)))
    x, y = Xs[idx][..., off:off + 128].clone(), Ys[idx][..., off:off + 128].clone()
    if True:
        flip = torch.rand(bs) < 0.5
        x[flip] = x[flip].flip(-1); y[flip] = y[flip].flip(-1)
    loss = F.cross_entropy(model(x), y, ignore_index=255)
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if step % 50 == 0:
        print(f'step {step} loss {loss.item():.3f} ({time.time()-t0:.0f}s)', flush=True)
    if step % 400 == 0 or step == steps:
        s, _ = miou(Xsv, Ysv); t, it = miou(Xtv, Ytv)
        print(f'step {step} loss {loss.item():.3f} src-val {s:.1f} tgt-val {t:.1f} ({time.time()-t0:.0f}s)', flush=True)
s, si = miou(Xsv, Ysv); t, ti = miou(Xtv, Ytv)
print('per-class src', np.round(si.numpy() * 100).tolist()); print('per-class tgt', np.round(ti.numpy() * 100).tolist())
print(f'FINAL seed {seed} steps {steps}: source-val {s:.1f} target-val {t:.1f} gap {s - t:.1f}')
