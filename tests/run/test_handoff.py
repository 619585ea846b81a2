"""Stage hand-off: manifests, chain keys, ``init_from=auto`` resolution, atomic writes."""

import json
import time

import pytest

from atp.atomic import atomic_write_json, clean_stale_temp_files
from atp.errors import HandOffError
from atp.run import pipeline


def _finished_run(root, name, stage, dataset="toy", model="mit_b0", seed=76, key="k", finished=None):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "final.ckpt").write_bytes(b"x")
    manifest = pipeline.new_manifest(stage=stage, dataset=dataset, model=model, seed=seed, chain_key=key)
    manifest.update(status="complete", final_ckpt="checkpoints/final.ckpt", finished_at=finished or time.time())
    pipeline.write_manifest(run, manifest)
    return run


def test_chain_key_ignores_stage_specific_overrides():
    a = pipeline.chain_key(["stage=align", "dataset=toy", "seed=1", "stage.optim.lr=1e-4", "init_from=auto"])
    b = pipeline.chain_key(["seed=1", "dataset=toy", "stage=teach"])
    c = pipeline.chain_key(["seed=2", "dataset=toy", "stage=teach"])
    assert a == b
    assert a != c


def test_sweep_sibling_wins_over_newer_runs_elsewhere(tmp_path):
    sweep = tmp_path / "outputs" / "multirun" / "s"
    sibling = _finished_run(sweep, "0_source", "source", key="seed1", finished=1.0)
    _finished_run(sweep, "1_source", "source", key="seed2", finished=3.0)
    _finished_run(tmp_path / "outputs" / "runs", "newer", "source", key="other", finished=5.0)
    found = pipeline.resolve_predecessor("align", dataset="toy", model="mit_b0", seed=76,
                                         output_dir=tmp_path / "outputs", sweep_dir=sweep, key="seed1")
    assert found["_dir"] == str(sibling)
    assert pipeline.manifest_checkpoint(found) == (sibling / "checkpoints" / "final.ckpt").resolve()


def test_newest_matching_run_outside_a_sweep(tmp_path):
    out = tmp_path / "outputs"
    _finished_run(out, "old", "align", finished=1.0)
    newest = _finished_run(out, "new", "align", finished=2.0)
    _finished_run(out, "other_dataset", "align", dataset="gta2cs", finished=9.0)
    _finished_run(out, "wrong_stage", "source", finished=9.0)
    found = pipeline.resolve_predecessor("teach", dataset="toy", model="mit_b0", seed=76, output_dir=out)
    assert found["_dir"] == str(newest)


def test_missing_predecessor_names_the_command(tmp_path):
    with pytest.raises(HandOffError) as err:
        pipeline.resolve_predecessor("propagate", dataset="toy", model="mit_b0", seed=76, output_dir=tmp_path)
    message = str(err.value)
    assert "python -m atp.train stage=teach dataset=toy" in message
    assert "init_from=" in message


def test_unfinished_run_is_not_a_predecessor(tmp_path):
    run = _finished_run(tmp_path, "crashed", "source")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HandOffError):
        pipeline.resolve_predecessor("align", dataset="toy", model="mit_b0", seed=76, output_dir=tmp_path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"a": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"a": Boom()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_stale_temp_files_are_cleaned(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".last.ckpt.abc.tmp"
    stale.write_bytes(b"half")
    keep = tmp_path / "checkpoints" / "last.ckpt"
    keep.write_bytes(b"whole")
    removed = clean_stale_temp_files(tmp_path)
    assert removed == [stale]
    assert keep.exists() and not stale.exists()


def test_chain_overrides_drop_every_per_stage_key_also_with_plus_or_tilde():
    overrides = ["stage=chain", "dataset=toy", "+ckpt_path=/x.ckpt", "~split_dir", "init_which=teacher",
                 "resume=true", "seed=3", "stage.optim.lr=1e-4"]
    assert pipeline.chain_overrides(overrides) == ["dataset=toy", "seed=3", "stage.optim.lr=1e-4"]
