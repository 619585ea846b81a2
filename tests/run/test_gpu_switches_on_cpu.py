"""GPU-oriented switches exercised on the CPU: bf16 autocast, channels-last, torch.compile, fused AdamW,
and the benchmark entry point (schema of its JSON records)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from atp.models import build_segmentor


def tiny_segmentor() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmentor("mit_b0", decoder={"embed_dim": 32}, proj_head=None).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_bf16_autocast_forward_close_to_fp32(images):
    model = tiny_segmentor()
    with torch.no_grad():
        reference = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images)
    assert low.dtype == torch.bfloat16
    low = low.float()
    assert torch.isfinite(low).all()
    scale = reference.abs().max()
    assert (low - reference).abs().max() <= 0.1 * scale + 0.05
    agreement = (low.argmax(dim=1) == reference.argmax(dim=1)).float().mean()
    assert agreement >= 0.9


def test_channels_last_matches_default_layout(images):
    model = tiny_segmentor()
    with torch.no_grad():
        reference = model(images)
        model = model.to(memory_format=torch.channels_last)
        out = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.contiguous(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torch_compile_matches_eager(images, tmp_path, monkeypatch):
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile's CPU backend needs a C compiler (no gcc/cc on PATH)")
    # nothing left in /tmp/torchinductor_<user>: the kernels go to the test's folder, and the ~160 MB
    # precompiled header (a new one per clone, in a folder the cache variable does not move) is not built
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = tiny_segmentor()
    with torch.no_grad(), inductor_config.patch(cpp_cache_precompile_headers=False):
        reference = model(images)
        compiled = torch.compile(model)
        out = compiled(images)
    torch.testing.assert_close(out, reference, rtol=1e-3, atol=1e-3)


def test_fused_adamw_step_matches_foreach():
    params = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    grads = [torch.randn_like(p) for p in params]
    try:
        fused_params = [p.clone().requires_grad_() for p in params]
        fused = torch.optim.AdamW(fused_params, lr=1e-2, weight_decay=0.01, fused=True)
        for p, g in zip(fused_params, grads, strict=True):
            p.grad = g.clone()
        fused.step()
    except (RuntimeError, ValueError) as err:
        pytest.skip(f"fused AdamW is not supported on CPU by this torch ({err})")
    plain_params = [p.clone().requires_grad_() for p in params]
    plain = torch.optim.AdamW(plain_params, lr=1e-2, weight_decay=0.01, foreach=True)
    for p, g in zip(plain_params, grads, strict=True):
        p.grad = g.clone()
    plain.step()
    for a, b in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(120)
def test_bench_quick_writes_json_records(tmp_path):
    from atp.bench.cli import main as bench_main

    out = tmp_path / "bench.json"
    bench_main(["--quick", "--crop", "32", "--steps", "2", "--warmup", "1", "--stages", "source,teach",
                "--data-images", "1", "--data-samples", "2", "--threads", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert rows and all(set(row) == {"metric", "value", "low", "high", "target", "meets"} for row in rows)
    by_name = {row["metric"]: row for row in rows}
    for name in ("source/ratio", "teach/ratio", "eval/ratio_vs_prediction"):
        ratio = by_name[name]
        assert isinstance(ratio["value"], float) and ratio["value"] > 0
        assert ratio["target"] == "<= 1.1" and ratio["meets"] is None  # --quick judges nothing
        assert ratio["low"] <= ratio["value"] <= ratio["high"]  # the median of the blocks, and their spread
    assert by_name["data/img_per_s_per_worker"]["value"] > 0
    assert by_name["data/per_worker_over_teach_consumption"]["value"] > 0
    assert all(row["meets"] is None for row in rows if row["target"] is None)
