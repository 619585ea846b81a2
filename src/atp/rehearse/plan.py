"""What the rehearsal runs: the data tree it writes and every command, with the overrides it gives them.

The commands are the user's own (``atp.data.check``, ``atp.data.prepare``, ``atp.train``, ``atp.evaluate``,
``atp.predict``) on the unchanged paper configs; the training overrides are only the schedule length
(``trainer.max_steps`` and the validation interval), the data folder, the run folder, ``init_from``, the trainer
(``cpu``/``gpu``) with its precision, the loader workers and the recording callback (:mod:`atp.rehearse.probe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from atp.data.toy.official import ACDC_SIZE, CITYSCAPES_SIZE, GTA5_SIZE, OfficialTreeSpec
from atp.errors import UserError

CHAIN = ("source", "align", "teach", "propagate")
#: ``--datasets`` the rehearsal can write data for: GTA5 → Cityscapes and Cityscapes → one ACDC condition.
SUPPORTED = ("gta2cs", "cs2acdc_fog", "cs2acdc_night", "cs2acdc_rain", "cs2acdc_snow")
EVAL_MODES = {"whole": [], "slide": ["eval.mode=slide"], "flip": ["eval.flip=true"]}
#: The benchmark server each dataset's test split is exported for, and the size it wants the files at.
EXPORTS = {"gta2cs": ("cityscapes", CITYSCAPES_SIZE), "cs2acdc": ("acdc", ACDC_SIZE)}
#: The stage run twice with the same seed (its losses must agree): Align, on the last chain.
RERUN_STAGE = "align"
PREDICT_IMAGE = "street_2048x1024.png"
PREDICT_VIDEO = "dashcam_1920x1080.mp4"
PRECISIONS = {"32": "32-true", "bf16-mixed": "bf16-mixed"}


@dataclass(frozen=True)
class Options:
    """The rehearsal's settings (``python -m atp.rehearse --help``)."""

    model: str = "mitb5"
    steps: int = 2
    batch: int = 2
    out: Path = Path("outputs/rehearse")
    device: str = "cpu"
    precision: str = "32"
    datasets: tuple[str, ...] = ("gta2cs", "cs2acdc_fog")
    eval_images: int = 2
    video_frames: int = 3
    workers: int | None = None
    keep_checkpoints: bool = False
    in_process: bool = False

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def num_workers(self) -> int:
        """Loader workers per stream: the given number, else none on a CPU (the cores train) and the paper
        config's 4 on a GPU."""
        if self.workers is not None:
            return self.workers
        return 4 if self.device == "cuda" else 0


@dataclass
class Step:
    """One command of the rehearsal: ``python -m <command> <overrides…>``, its output folder, and the step it
    needs (not run when that one failed)."""

    name: str
    kind: str  # check | prepare | train | evaluate | export | predict
    command: str
    overrides: list[str]
    out_dir: Path
    dataset: str | None = None
    stage: str | None = None
    after: str | None = None
    mode: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def probe_file(self) -> Path:
        return self.out_dir / "rehearsal_probe.json"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_")


def train_images_needed(batch: int, easy_ratio: float = 0.3) -> int:
    """Target-train images for Propagate's two streams to hold a batch each: ⌊easy_ratio·n⌋ easy images
    (spec §7) and the rest hard."""
    n = batch
    while math.floor(easy_ratio * n + 1e-9) < batch or n - math.floor(easy_ratio * n + 1e-9) < batch:
        n += 1
    return n


def acdc_condition(dataset: str) -> str | None:
    return dataset.removeprefix("cs2acdc_") if dataset.startswith("cs2acdc_") else None


def check_datasets(datasets: tuple[str, ...]) -> None:
    unknown = [d for d in datasets if d not in SUPPORTED]
    if unknown or not datasets:
        raise UserError(f"rehearse: --datasets {','.join(unknown) or '(none)'}: choose from {', '.join(SUPPORTED)}")
    if len([d for d in datasets if acdc_condition(d)]) > 1:
        raise UserError("rehearse: one ACDC condition at a time (the tree holds one)")


def tree_spec(options: Options, easy_ratio: float = 0.3) -> OfficialTreeSpec:
    """The data tree: target-train images enough for Propagate's easy and hard batches (they are also the
    Cityscapes source of the ACDC chain), ``eval_images`` val and test images, only the datasets needed."""
    train = train_images_needed(options.batch, easy_ratio)
    evals = options.eval_images
    condition = next((acdc_condition(d) for d in options.datasets if acdc_condition(d)), None)
    return OfficialTreeSpec(
        gta=max(options.batch, 2) if "gta2cs" in options.datasets else 0,
        cityscapes={"train": train, "val": evals, "test": evals if "gta2cs" in options.datasets else 0},
        acdc={"train": train, "val": evals, "test": evals} if condition else {},
        condition=condition or "fog",
    )


def export_server(dataset: str) -> tuple[str, tuple[int, int]]:
    return EXPORTS["cs2acdc" if acdc_condition(dataset) else dataset]


def image_size(dataset: str, role: str) -> tuple[int, int]:
    """(width, height) of the images of a dataset config's entry (``source``, ``target``, ``target_val``)."""
    if role == "source":
        return GTA5_SIZE if dataset == "gta2cs" else CITYSCAPES_SIZE
    return ACDC_SIZE if acdc_condition(dataset) else CITYSCAPES_SIZE


def _trainer(options: Options) -> list[str]:
    return ["trainer=gpu" if options.device == "cuda" else "trainer=cpu",
            f"trainer.precision={PRECISIONS[options.precision]}"]


def train_step(options: Options, dataset: str, stage: str, run_dir: Path, init_from: Path | None,
               after: str | None, name: str | None = None) -> Step:
    overrides = [
        f"stage={stage}", f"model={options.model}", f"dataset={dataset}", f"paths.data_dir={options.data_dir}",
        f"hydra.run.dir={run_dir}", *_trainer(options), f"trainer.max_steps={options.steps}",
        f"trainer.val_check_interval={options.steps}", f"data.num_workers={options.num_workers}",
    ]
    if options.batch != Options.batch:
        overrides.append(f"data.batch_size={options.batch}")
    if init_from is not None:
        overrides.append(f"init_from={init_from}")
    step = Step(name or f"{dataset}/{stage}", "train", "atp.train", overrides, run_dir, dataset, stage, after)
    step.overrides += ["+callbacks.rehearsal._target_=atp.rehearse.probe.RehearsalProbe",
                       f"+callbacks.rehearsal.out={step.probe_file}"]
    return step


def _checkpoint_overrides(options: Options, dataset: str, ckpt: Path) -> list[str]:
    return [f"ckpt={ckpt}", f"model={options.model}", f"dataset={dataset}", f"paths.data_dir={options.data_dir}",
            f"device={options.device}", f"data.num_workers={options.num_workers}"]


def build_plan(options: Options) -> list[Step]:
    """Every command of the rehearsal, in the order it runs them."""
    steps: list[Step] = []
    runs, evals = options.out / "runs", options.out / "eval"
    for dataset in options.datasets:
        for tool in ("check", "prepare"):
            overrides = [f"dataset={dataset}", f"paths.data_dir={options.data_dir}", "num_workers=0", "progress=false"]
            steps.append(Step(f"{dataset}/{tool}", tool, f"atp.data.{tool}", overrides, options.data_dir, dataset))
    finals: dict[str, Path] = {}
    for dataset in options.datasets:
        previous, init = f"{dataset}/prepare", None
        for index, stage in enumerate(CHAIN):
            step = train_step(options, dataset, stage, runs / dataset / f"{index}_{stage}", init, previous)
            steps.append(step)
            previous, init = step.name, step.out_dir / "checkpoints" / "final.ckpt"
        finals[dataset] = init
        server, _ = export_server(dataset)
        for mode, extra in EVAL_MODES.items():
            out_dir = evals / dataset / mode
            overrides = [*_checkpoint_overrides(options, dataset, init), f"hydra.run.dir={out_dir}", *extra]
            steps.append(Step(f"{dataset}/eval-{mode}", "evaluate", "atp.evaluate", overrides, out_dir, dataset,
                              after=previous, mode=mode))
        out_dir = evals / dataset / f"export-{server}"
        overrides = [*_checkpoint_overrides(options, dataset, init), f"hydra.run.dir={out_dir}", f"export={server}"]
        steps.append(Step(f"{dataset}/export-{server}", "export", "atp.evaluate", overrides, out_dir, dataset,
                          after=previous, extra={"server": server}))
    rerun_dataset = options.datasets[-1]
    original = next(s for s in steps if s.dataset == rerun_dataset and s.stage == RERUN_STAGE)
    init = next((Path(o.split("=", 1)[1]) for o in original.overrides if o.startswith("init_from=")), None)
    steps.append(train_step(options, rerun_dataset, RERUN_STAGE, runs / rerun_dataset / f"rerun_{RERUN_STAGE}",
                            init, original.after, name=f"{rerun_dataset}/{RERUN_STAGE}-rerun"))
    steps[-1].extra["rerun_of"] = original.name
    dataset = options.datasets[0]
    out_dir = options.out / "predict"
    overrides = [*_checkpoint_overrides(options, dataset, finals[dataset]), f"input={predict_inputs(options)}",
                 f"out={out_dir}"]
    steps.append(Step("predict", "predict", "atp.predict", overrides, out_dir, dataset,
                      after=f"{dataset}/{CHAIN[-1]}"))
    return steps


def predict_inputs(options: Options) -> Path:
    """The folder ``atp.predict`` reads: one 2048×1024 image and a short 1920×1080 video."""
    return options.out / "predict_inputs"
