"""``make demo`` / ``python -m atp.demo``: the whole method on the built-in toy domain shift, on CPU.

Generates the toy data (if missing), runs source → adabn (baseline) → align → teach → propagate as one Hydra sweep
with the ``toy_cpu`` recipe, evaluates every stage's checkpoint on the toy target val and prints
the table. Extra arguments are passed to ``atp.train`` as overrides (e.g. ``seed=1``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from atp.config import CONF_DIR
from atp.evaluate import evaluate_checkpoint
from atp.evaluation.summary import collect, write_summary
from atp.run import pipeline
from atp.stages import get_stage

# adabn is a side branch (align still starts from source): a baseline row in the table
STAGES = ("source", "adabn", "align", "teach", "propagate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="sweep directory (default outputs/demo/<time>)")
    parser.add_argument("--experiment", default="toy_cpu", help="recipe under conf/experiment/")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the stages already in --out")
    parser.add_argument("overrides", nargs="*", help="extra atp.train overrides")
    args = parser.parse_args(argv)
    out = Path(args.out or f"outputs/demo/{time.strftime('%Y-%m-%d_%H-%M-%S')}").resolve()
    started = time.time()
    command = [sys.executable, "-m", "atp.train", "-m", f"experiment={args.experiment}",
               f"stage={','.join(STAGES)}", f"hydra.sweep.dir={out}", *args.overrides]
    if not args.eval_only:
        print("$", " ".join(command[1:]), flush=True)
        result = subprocess.run(command)
        if result.returncode != 0:
            print(f"demo: the training sweep failed (exit {result.returncode}); see the log above", file=sys.stderr)
            return result.returncode

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        train_cfg = compose("train", overrides=[f"experiment={args.experiment}", *args.overrides])
    rows = []
    for manifest in collect(out):
        ckpt = pipeline.manifest_checkpoint(manifest)
        stage_dir = Path(manifest["_dir"])
        result = evaluate_checkpoint(ckpt, stage_dir / "eval", train_cfg)
        teacher = None
        if get_stage(manifest["stage"]).teaches_with_pseudo_labels:  # an EMA teacher worth reporting
            teacher = evaluate_checkpoint(ckpt, stage_dir / "eval_teacher", train_cfg, weights="teacher")["mIoU"]["all19"]
        rows.append((manifest["stage"], result["mIoU"]["all19"], result["pixel_acc"], teacher))
    write_summary(out)
    minutes = (time.time() - started) / 60
    family = OmegaConf.select(train_cfg, "dataset.toy.shift", default=None)
    print(f"\nATP on the toy domain shift, dataset={train_cfg.dataset.name}"
          f"{f' (shift family {family})' if family else ''} (target val; mIoU of the student weights, and of "
          "the EMA teacher)")
    print(f"{'stage':<10} {'mIoU':>6} {'pixel acc':>10} {'teacher mIoU':>13}")
    for stage, miou, acc, teacher in rows:
        teacher_text = "-" if teacher is None else f"{teacher:.2f}"
        print(f"{stage:<10} {miou:6.2f} {acc:10.1f} {teacher_text:>13}")
    print(f"\nfinished in {minutes:.1f} min")
    print(f"results: {out / 'results.md'}")
    print(f"mIoU over steps: {out / 'miou_over_steps.png'}")
    print(f"per-stage plots (per-class IoU, confusion matrix, predictions): {out}/*/eval/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
