"""Stage hand-off: manifests, atomic writes and the resolution of ``init_from`` (docs/ARCHITECTURE.md, "run layer")."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from atp.atomic import atomic_write_json
from atp.errors import HandOffError, UserError
from atp.stages import default_chain, get_stage

MANIFEST = "manifest.json"
# Overrides that differ between the stages of one chain and so do not identify the chain.
_NOT_CHAIN_KEYS = ("stage", "init_from", "init_which", "ckpt_path", "resume", "split_dir")


def chain_key(overrides: Iterable[str]) -> str:
    """Identify a chain by the task overrides that are not stage-specific (dataset, seed, model…)."""
    kept = [o for o in chain_overrides(overrides) if not _override_key(o).startswith("stage.")]
    return hashlib.sha1("\n".join(sorted(kept)).encode()).hexdigest()[:12]


def chain_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides every stage of a chain shares: without the per-stage ones (stage, init_from, resume…)."""
    return [o for o in overrides if _override_key(o) not in _NOT_CHAIN_KEYS]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def config_hash(config: Mapping) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def read_manifest(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    data["_dir"] = str(path.parent)
    return data


def write_manifest(run_dir: str | os.PathLike, manifest: Mapping) -> Path:
    path = Path(run_dir) / MANIFEST
    atomic_write_json(path, {k: v for k, v in manifest.items() if not k.startswith("_")})
    return path


def manifest_checkpoint(manifest: Mapping) -> Path:
    """Absolute path of a manifest's final checkpoint (stored relative to its run dir)."""
    return (Path(manifest["_dir"]) / manifest["final_ckpt"]).resolve()


def find_manifests(root: str | os.PathLike) -> list[dict]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob(MANIFEST):
        manifest = read_manifest(path.parent)
        if manifest is not None:
            found.append(manifest)
    return found


def is_finished(manifest: Mapping) -> bool:
    """A stage run that can be handed on: status complete and its final checkpoint on disk."""
    return manifest.get("status") == "complete" and manifest_checkpoint(manifest).is_file()


def _complete(manifests: Iterable[dict], stages: Sequence[str]) -> list[dict]:
    ready = [m for m in manifests if m.get("stage") in stages and is_finished(m)]
    return sorted(ready, key=lambda m: m.get("finished_at", 0), reverse=True)


def resolve_predecessor(
    stage: str,
    *,
    dataset: str,
    model: str,
    seed: int,
    output_dir: str | os.PathLike,
    sweep_dir: str | os.PathLike | None = None,
    key: str | None = None,
    command_hint: str = "",
) -> dict:
    """The manifest of the run this stage starts from (``init_from=auto``): a finished run of one of the
    stage's registry ``predecessors``.

    In a multirun sweep: the finished sibling job of a previous stage with the same chain key.
    Otherwise: the newest finished matching run (same dataset and model; same seed preferred)
    under ``output_dir``. Raises :class:`HandOffError` naming the command that makes it.
    """
    try:
        previous = get_stage(stage).predecessors
    except UserError as err:
        raise HandOffError(str(err)) from None
    if not previous:
        raise HandOffError(f"stage={stage} has no previous stage; init_from=auto does not apply")
    if sweep_dir is not None:
        siblings = [m for m in find_manifests(sweep_dir) if m.get("chain_key") == key]
        found = _complete(siblings, previous)
        if found:
            return found[0]
    candidates = [
        m for m in find_manifests(output_dir) if m.get("dataset") == dataset and m.get("model") == model
    ]
    found = _complete(candidates, previous)
    same_seed = [m for m in found if m.get("seed") == seed]
    if same_seed or found:
        return (same_seed or found)[0]
    hint = command_hint or f"python -m atp.train stage={previous[0]} dataset={dataset}"
    raise HandOffError(
        f"stage={stage} starts from a finished {' or '.join(previous)} run for dataset={dataset} "
        f"model={model}, and none was found under {output_dir}"
        + (f" or in the sweep {sweep_dir}" if sweep_dir else "")
        + f". Make it first with `{hint}` (or list the stages in order in one sweep: "
        f"`python -m atp.train -m stage={','.join(default_chain())} dataset={dataset}`), "
        "or pass init_from=/path/to/checkpoint."
    )


def new_manifest(**fields: Any) -> dict:
    manifest = {"status": "running", "started_at": time.time(), "git_revision": git_revision()}
    manifest.update(fields)
    return manifest
