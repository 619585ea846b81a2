"""The main-process rule outside ``fit``: Lightning's ``rank_zero_only.rank`` (set from the launcher's
environment before any process group exists) decides, so a rank > 0 writes nothing shared."""

from __future__ import annotations

from pytorch_lightning.utilities.rank_zero import rank_zero_only

from atp.run.distributed import distributed_world, is_main_process, on_main_process


def test_only_rank_zero_writes(monkeypatch, tmp_path):
    target = tmp_path / "shared.txt"
    assert distributed_world() == (1, 0)  # no process group in this test
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    assert not is_main_process()
    assert on_main_process(target.write_text, "rank 1") is None and not target.exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    assert is_main_process()
    assert on_main_process(target.write_text, "rank 0") == len("rank 0") and target.read_text() == "rank 0"
