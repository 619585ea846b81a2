"""Pseudo-label audit — a diagnostic that reads target-train labels, never used for training or selection.

    python scripts/pseudo_label_audit.py --ckpt <run>/3_teach/checkpoints/final.ckpt --dataset toy_fog \
        --split-dir <run>/4_propagate/splits [--weights teacher] [--model mitb0_lite] [--json out.json]

Scores a checkpoint's predictions on every target-*train* image against the labels the toy (or any
labelled target) has: mIoU and pixel accuracy of the easy and the hard images of a Propagate split, the
share of pixels whose confidence reaches the quality threshold (q) and how often those are right, pixel
accuracy along the entropy ranking (does "easy" mean "well labelled"?), and per class the precision,
recall and predicted/true pixel ratio. Issue #12 used it to find why Propagate loses on some shifts.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from atp.config import compose_cli
from atp.data import build_datamodule
from atp.data.labels import CLASS_NAMES
from atp.evaluate import load_model, segment_options
from atp.evaluation.inference import segment_probs
from atp.evaluation.metrics import SegMetric

RANK_BUCKETS = ((0.0, 0.1), (0.1, 0.3), (0.3, 0.5), (0.5, 0.75), (0.75, 1.0))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint (any format atp.evaluate reads)")
    parser.add_argument("--dataset", required=True, help="dataset config whose target train split has labels")
    parser.add_argument("--split-dir", required=True, help="a Propagate split: easy.txt, hard.txt, ranking.csv")
    parser.add_argument("--weights", default="teacher", help="student | teacher (default teacher: it labels)")
    parser.add_argument("--model", default="mitb0_lite", help="model config (default mitb0_lite)")
    parser.add_argument("--conf-threshold", type=float, default=0.968, help="q's confidence threshold")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def audit(args: argparse.Namespace) -> dict:
    cfg = compose_cli([f"ckpt={args.ckpt}", f"dataset={args.dataset}", f"model={args.model}",
                       f"weights={args.weights}", "dataset.target_val.split=train", "data.num_workers=0"], "evaluate")
    split_dir = Path(args.split_dir)
    easy = {Path(line).name for line in (split_dir / "easy.txt").read_text().split()}
    ranking = [Path(row["name"]).name for row in csv.DictReader(open(split_dir / "ranking.csv"))]
    model = load_model(cfg, torch.device("cpu"))
    data = build_datamodule(cfg.dataset, mode="target", **OmegaConf.to_container(cfg.data, resolve=True))
    data.setup("validate")
    classes = int(cfg.dataset.num_classes)
    metrics = {part: SegMetric(classes, validate_args=False) for part in ("easy", "hard")}
    confident = {part: [0, 0, 0] for part in ("easy", "hard")}  # confident pixels, of them right, all pixels
    image_acc = {}
    with torch.no_grad():
        for batch in data.val_dataloader():
            label = batch["label"].long()
            probs = segment_probs(model, batch["img"], label.shape[-2:], **segment_options(cfg))
            confidence, pred = probs.max(dim=1)
            for b in range(label.shape[0]):
                name = Path(str(batch["name"][b])).name
                part = "easy" if name in easy else "hard"
                valid = label[b] < classes
                truth, guess = label[b][valid], pred[b][valid]
                metrics[part].update(pred[b:b + 1], label[b:b + 1])
                sure = confidence[b][valid] >= args.conf_threshold
                counts = confident[part]
                counts[0] += int(sure.sum())
                counts[1] += int((guess[sure] == truth[sure]).sum())
                counts[2] += int(valid.sum())
                image_acc[name] = float((guess == truth).double().mean() * 100)
    result = {"ckpt": args.ckpt, "weights": args.weights, "dataset": args.dataset, "split_dir": str(split_dir)}
    for part, metric in metrics.items():
        sure, right, total = confident[part]
        scores = metric.compute()
        result[part] = {"images": sum(1 for n in image_acc if (n in easy) == (part == "easy")),
                        "mIoU": round(float(scores["mIoU/all19"]), 2),
                        "pixel_acc": round(float(scores["pixel_acc"]), 1),
                        "q": round(100 * sure / max(total, 1), 1),
                        "confident_acc": round(100 * right / max(sure, 1), 1)}
    ranked = [image_acc[name] for name in ranking if name in image_acc]
    result["rank_buckets"] = []
    for low, high in RANK_BUCKETS:
        part = ranked[int(low * len(ranked)):int(high * len(ranked))]
        result["rank_buckets"].append({"from": low, "to": high, "images": len(part),
                                       "pixel_acc": round(sum(part) / max(len(part), 1), 1)})
    total = metrics["easy"].confmat + metrics["hard"].confmat  # rows: true class, columns: predicted
    predicted, true = total.sum(0), total.sum(1)
    result["per_class"] = {
        CLASS_NAMES[c]: {"precision": round(float(total[c, c] / max(int(predicted[c]), 1) * 100), 1),
                         "recall": round(float(total[c, c] / max(int(true[c]), 1) * 100), 1),
                         "predicted_over_true": round(float(predicted[c] / max(int(true[c]), 1)), 2)}
        for c in range(classes)
    }
    return result


def markdown(result: dict) -> str:
    lines = [f"pseudo-label audit: {result['ckpt']} ({result['weights']}) on {result['dataset']} target train",
             "", "| part | images | mIoU | pixel acc | q (conf ≥ thr) | accuracy of confident pixels |",
             "|---|---|---|---|---|---|"]
    for part in ("easy", "hard"):
        r = result[part]
        lines.append(f"| {part} | {r['images']} | {r['mIoU']} | {r['pixel_acc']} | {r['q']} % | {r['confident_acc']} |")
    lines += ["", "| entropy rank (0 = lowest) | images | pixel acc |", "|---|---|---|"]
    lines += [f"| {b['from']:.2f}–{b['to']:.2f} | {b['images']} | {b['pixel_acc']} |" for b in result["rank_buckets"]]
    lines += ["", "| class | precision | recall | predicted / true pixels |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['precision']} | {v['recall']} | {v['predicted_over_true']} |"
              for name, v in result["per_class"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = audit(args)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
