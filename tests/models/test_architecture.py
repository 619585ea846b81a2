"""MiT encoder, DAFormer head, projection head and Segmentor (spec §3), built from conf/model/*.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from atp.config import CONF_DIR
from atp.models import DAFormerHead, MiTEncoder, ProjectionHead, Segmentor, build_segmentor

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONF = CONF_DIR / "model"


def _fixtures_dir() -> Path | None:
    candidates = [os.environ.get("ATP_FIXTURES"), ROOT / "tests" / "fixtures", ROOT / "shared" / "fixtures",
                  ROOT.parent / "shared" / "fixtures"]
    return next((Path(c) for c in candidates if c and (Path(c) / "atp_daformer_mitb5_segmentor.json").is_file()),
                None)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads run ~30x slower when the other
    core is busy (measured: B0 forward/backward 11 s vs 0.4 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def b5() -> Segmentor:
    return instantiate(OmegaConf.load(MODEL_CONF / "mitb5.yaml")).eval()


@pytest.fixture(scope="module")
def b0_cfg():
    return OmegaConf.load(MODEL_CONF / "mitb0.yaml")


# Parameter counts worked out from the layer sizes in spec §3.2/§3.3 (B5 widths 64/128/320/512).
EMBED = sum(c * 256 + 256 for c in (64, 128, 320, 512))  # Linear(C_i → 256) per level
ASPP = (1024 * 256 + 2 * 256) + 3 * ((1024 * 9 + 2 * 1024) + (1024 * 256 + 2 * 256))  # 1x1 + 3 separable
BOTTLENECK = 1024 * 256 * 9 + 2 * 256
CLASSIFIER = 256 * 19 + 19
PROJ_B5 = (1024 * 256 + 2 * 256) + (256 * 512 + 2 * 512)


def test_hand_counts_agree_with_spec():
    assert (EMBED, ASPP, BOTTLENECK, CLASSIFIER) == (263_168, 1_084_416, 2_359_808, 4_883)
    assert EMBED + ASPP + BOTTLENECK + CLASSIFIER == 3_712_275
    assert PROJ_B5 == 394_752


def test_b5_parameter_counts(b5):
    assert n_params(b5.encoder) == 81_443_008
    head = b5.decode_head
    assert n_params(head.embed_layers) == EMBED
    assert n_params(head.fuse_layer.aspp_modules) == ASPP
    assert n_params(head.fuse_layer.bottleneck) == BOTTLENECK
    assert n_params(head.conv_seg) == CLASSIFIER
    assert n_params(b5.proj_head) == PROJ_B5
    without_proj = n_params(b5) - n_params(b5.proj_head)
    assert abs(without_proj - 85.16e6) / 85.16e6 < 0.003
    assert n_params(b5) == without_proj + 394_752 == 85_550_035  # fixtures README
    assert all(p.requires_grad for p in b5.parameters())


def test_b5_state_dict_matches_mmseg_manifest(b5):
    fixtures = _fixtures_dir()
    if fixtures is None:
        pytest.skip("checkpoint manifests not found (set ATP_FIXTURES)")
    keys = json.loads((fixtures / "atp_daformer_mitb5_segmentor.json").read_text())["keys"]
    rename = {"backbone": "encoder", "decode_head": "decode_head", "auxiliary_head": "proj_head"}
    expected = {}
    for name, shape in keys.items():
        prefix, rest = name.split(".", 1)
        expected[f"{rename[prefix]}.{rest}"] = tuple(shape)
    assert {k: tuple(v.shape) for k, v in b5.state_dict().items()} == expected


def test_b5_forward_shapes(b5):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = b5.extract(x)
        logits = b5.decode(feats)
        embedding = b5.project(feats)
        upsampled = b5.predict(x)
        resized = b5.predict(x, (40, 50))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 320, 4, 4), (1, 512, 2, 2)]
    assert logits.shape == (1, 19, 16, 16)
    assert torch.allclose(b5(x), logits)
    assert embedding.shape == (1, 512, 16, 16)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(1, 16, 16), atol=1e-5)
    assert upsampled.shape == (1, 19, 64, 64) and resized.shape == (1, 19, 40, 50)
    expected = F.interpolate(logits, size=(40, 50), mode="bilinear", align_corners=False)
    assert torch.allclose(resized, expected, atol=1e-5)


def test_b5_encoder_structure(b5):
    encoder = b5.encoder
    assert isinstance(encoder, MiTEncoder) and encoder.out_channels == (64, 128, 320, 512)
    assert [len(encoder.block1), len(encoder.block2), len(encoder.block3), len(encoder.block4)] == [3, 6, 40, 3]
    rates = encoder.drop_path_rates()
    assert rates == pytest.approx(torch.linspace(0, 0.1, 52).tolist(), abs=1e-7)  # §3.1: 0 → 0.1 linearly
    block = encoder.block3[0]
    assert block.norm1.eps == 1e-6 and encoder.norm4.eps == 1e-6  # block and stage norms
    assert encoder.patch_embed1.norm.eps == 1e-5 and block.attn.norm.eps == 1e-5  # patch-embed, sr norms
    assert block.attn.sr.kernel_size == (2, 2) and block.attn.scale == pytest.approx(64 ** -0.5)
    assert encoder.patch_embed1.proj.kernel_size == (7, 7) and encoder.patch_embed1.proj.stride == (4, 4)


def test_decoder_structure(b5):
    fuse = b5.decode_head.fuse_layer
    first = fuse.aspp_modules[0]
    assert first.conv.kernel_size == (1, 1) and first.conv.bias is None
    for branch, dilation in zip(fuse.aspp_modules[1:], (6, 12, 18), strict=True):
        depthwise = branch.depthwise_conv.conv
        assert depthwise.dilation == (dilation, dilation) and depthwise.padding == (dilation, dilation)
        assert depthwise.groups == 1024 and depthwise.bias is None
        assert branch.pointwise_conv.conv.kernel_size == (1, 1)
    assert fuse.bottleneck.conv.kernel_size == (3, 3) and fuse.bottleneck.conv.padding == (1, 1)
    assert b5.decode_head.dropout.p == 0.1
    assert abs(b5.decode_head.conv_seg.weight.std().item() - 0.01) < 0.001  # Normal(0, 0.01)


def test_optimizer_name_rules(b5):
    """§4.1 groups by substring: 'head' → decoder and projection head only; every MiT LayerNorm has 'norm'."""
    names = [name for name, _ in b5.named_parameters()]
    assert all(name.startswith(("decode_head.", "proj_head.")) for name in names if "head" in name)
    layer_norms = [f"encoder.{name}" for name, module in b5.encoder.named_modules()
                   if isinstance(module, torch.nn.LayerNorm)]
    assert len(layer_norms) == 4 + 4 + 52 * 2 + (3 + 6 + 40)  # patch embeds, stages, blocks, sr norms
    assert all("norm" in name for name in layer_norms)


def test_b0_config_builds_and_trains(b0_cfg):
    model = instantiate(b0_cfg)
    assert model.encoder.out_channels == (32, 64, 160, 256)
    assert n_params(model.proj_head) == (512 * 256 + 2 * 256) + (256 * 512 + 2 * 512)
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 19, 16, 24)
    embedding = model.project(model.extract(x))
    assert embedding.shape == (2, 512, 16, 24)
    (logits.mean() + embedding.mean()).backward()
    assert model.encoder.patch_embed1.proj.weight.grad is not None
    assert model.proj_head.convs[0].conv.weight.grad is not None


def test_build_without_projection_head(b0_cfg):
    cfg = b0_cfg.copy()
    cfg.proj_head = None
    model = instantiate(cfg)
    with_head = build_segmentor("mit_b0", proj_head={"mid_channels": 256, "out_channels": 512})
    assert model.proj_head is None
    assert n_params(model) == n_params(with_head) - n_params(with_head.proj_head)
    assert not any(key.startswith("proj_head.") for key in model.state_dict())
    with pytest.raises(RuntimeError, match="projection head"):
        model.project(model.extract(torch.randn(1, 3, 32, 32)))


def test_encoder_initialisation():
    """The encoder is built once on the meta device and initialised by smp's rule: check the result."""
    encoder = MiTEncoder("mit_b0", drop_path_rate=0.0)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in encoder.parameters())
    linear = torch.cat([m.weight.flatten() for m in encoder.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(linear.std().item() - 0.02) < 0.002 and abs(linear.mean().item()) < 0.001  # trunc_normal(0.02)
    for module in encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    proj = encoder.patch_embed2.proj  # Normal(0, sqrt(2 / fan_out)), fan_out = 3*3*64
    assert abs(proj.weight.std().item() - (2 / (9 * 64)) ** 0.5) < 0.005
    assert encoder.drop_path_rates() == [0.0] * 8


def _conv_bn_relu(x, module, **conv_args):
    x = F.conv2d(x, module.conv.weight, None, **conv_args)
    bn = module.bn
    x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    return torch.relu(x * bn.weight[:, None, None] + bn.bias[:, None, None])


def _randomise_batchnorm(module: torch.nn.Module) -> None:
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.normal_()
            bn.bias.data.normal_()


def test_daformer_head_computes_spec_formula():
    """Re-compute §3.2 with functional ops on a small head (widths 4/8/8/16, embed 8, 3 classes)."""
    torch.manual_seed(0)
    head = DAFormerHead((4, 8, 8, 16), num_classes=3, embed_dim=8, dilations=(1, 2, 3, 4)).eval()
    _randomise_batchnorm(head)
    feats = [torch.randn(2, c, 12 // s, 12 // s) for c, s in zip((4, 8, 8, 16), (1, 2, 3, 4), strict=True)]

    embedded = []
    for feat, layer in zip(feats, head.embed_layers, strict=True):
        tokens = torch.einsum("bchw,ec->behw", feat, layer.proj.weight) + layer.proj.bias[:, None, None]
        embedded.append(F.interpolate(tokens, size=(12, 12), mode="bilinear", align_corners=False))
    x = torch.cat(embedded, dim=1)
    branches = [_conv_bn_relu(x, head.fuse_layer.aspp_modules[0])]
    for dilation, branch in zip((2, 3, 4), head.fuse_layer.aspp_modules[1:], strict=True):
        depthwise = _conv_bn_relu(x, branch.depthwise_conv, padding=dilation, dilation=dilation, groups=32)
        branches.append(_conv_bn_relu(depthwise, branch.pointwise_conv))
    fused = _conv_bn_relu(torch.cat(branches, dim=1), head.fuse_layer.bottleneck, padding=1)
    expected = F.conv2d(fused, head.conv_seg.weight, head.conv_seg.bias)
    assert torch.allclose(head(feats), expected, atol=1e-4)


def test_projection_head_computes_spec_formula():
    torch.manual_seed(0)
    head = ProjectionHead((4, 8, 8, 16), mid_channels=6, out_channels=5).eval()
    _randomise_batchnorm(head)
    feats = [torch.randn(2, c, 8 // s, 8 // s) for c, s in zip((4, 8, 8, 16), (1, 2, 4, 8), strict=True)]
    x = torch.cat([F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False) for f in feats], dim=1)
    y = _conv_bn_relu(_conv_bn_relu(x, head.convs[0]), head.convs[1])
    expected = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = head(feats)
    assert out.shape == (2, 5, 8, 8) and head.out_channels == 5
    assert torch.allclose(out, expected, atol=1e-4)  # tiny norms amplify rounding
    norms = out.norm(dim=1)
    assert torch.allclose(norms[y.norm(dim=1) > 0], torch.tensor(1.0), atol=1e-5)
