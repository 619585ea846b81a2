"""MiT weights as users download them, checked against the independent implementations that wrote them:
Hugging Face ``transformers`` SegFormer (``save_pretrained`` files) and segmentation-models-pytorch.

Every model is built from a local config with random weights: nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest
import torch

from atp import convert
from atp.errors import CheckpointError
from atp.models import MiTEncoder, build_segmentor
from atp.models.weights import load_into, open_checkpoint, read_checkpoint

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

#: transformers' SegformerConfig of each MiT variant (B0 is the config's default).
HF_CONFIGS = {
    "mit_b0": {},
    "mit_b5": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "decoder_hidden_size": 768},
}
TOLERANCE = 1e-4  # max abs difference of the four feature maps, fp32
pytestmark = [pytest.mark.filterwarnings("ignore:.*not transferable:UserWarning"),
              pytest.mark.usefixtures("single_thread")]


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter and buffer (LayerNorm ones and zero biases included), so a tensor
    that lands under the wrong name changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def hf_segformer(variant: str, head: str):
    """A transformers SegFormer (``encoder``/``classification``/``segmentation``) with random weights."""
    config = transformers.SegformerConfig(**HF_CONFIGS[variant], num_labels=19)
    cls = {"encoder": transformers.SegformerModel, "classification": transformers.SegformerForImageClassification,
           "segmentation": transformers.SegformerForSemanticSegmentation}[head]
    torch.manual_seed(0)
    return _perturbed(cls(config))


def hf_features(model, image: torch.Tensor) -> list[torch.Tensor]:
    body = model if isinstance(model, transformers.SegformerModel) else model.segformer
    with torch.no_grad():
        return list(body(pixel_values=image, output_hidden_states=True).hidden_states)


def atp_features(state: dict[str, torch.Tensor], variant: str, image: torch.Tensor) -> list[torch.Tensor]:
    encoder = MiTEncoder(variant, drop_path_rate=0.0)
    load_into(encoder, {key.removeprefix("encoder."): value for key, value in state.items()})
    with torch.no_grad():
        return encoder.eval()(image)


def max_feature_difference(variant: str, head: str, folder, **save_options) -> float:
    model = hf_segformer(variant, head)
    model.save_pretrained(folder, **save_options)
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    state = read_checkpoint(folder)
    expected, actual = hf_features(model, image), atp_features(state, variant, image)
    assert [tuple(f.shape) for f in actual] == [tuple(f.shape) for f in expected]
    return max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize("head", ["encoder", "classification", "segmentation"])
def test_transformers_mit_b0_gives_the_same_features(head, tmp_path):
    assert max_feature_difference("mit_b0", head, tmp_path) <= TOLERANCE


def test_transformers_pytorch_model_bin_reads_like_safetensors(tmp_path):
    model = hf_segformer("mit_b0", "encoder")
    model.save_pretrained(tmp_path / "st")
    state = safetensors_torch.load_file(str(tmp_path / "st" / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")  # the older save_pretrained format: same names
    from_bin = open_checkpoint(tmp_path / "pytorch_model.bin")
    from_st = open_checkpoint(tmp_path / "st")
    assert from_bin.format == from_st.format == "hf-segformer"
    assert from_st.path.name == "model.safetensors"
    assert from_bin.state_dict.keys() == from_st.state_dict.keys()
    assert all(torch.equal(from_bin.state_dict[k], from_st.state_dict[k]) for k in from_st.state_dict)
    kv = from_st.state_dict["encoder.block2.1.attn.kv.weight"]
    assert torch.equal(kv, torch.cat([state["encoder.block.1.1.attention.self.key.weight"],
                                      state["encoder.block.1.1.attention.self.value.weight"]]))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ATP_RUN_B5"), reason="MiT-B5 cross-check (~1 min): set ATP_RUN_B5=1")
def test_transformers_mit_b5_gives_the_same_features(tmp_path):
    difference = max_feature_difference("mit_b5", "segmentation", tmp_path)
    print(f"MiT-B5 max abs feature difference: {difference:.2e}")
    assert difference <= TOLERANCE


def test_segmentation_decode_head_is_dropped_with_a_warning(tmp_path, capsys):
    hf_segformer("mit_b0", "segmentation").save_pretrained(tmp_path / "hf")
    capsys.readouterr()  # transformers' own progress output
    code = convert.main([str(tmp_path / "hf"), str(tmp_path / "mit_b0.pth")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "hf-segformer -> " in out and "encoder, mit_b0" in out
    assert err.splitlines() == [f"atp.convert: warning: {tmp_path / 'hf' / 'model.safetensors'}: the transformers "
                                "SegFormer decode head (all-MLP) is not atp's DAFormer head and is not "
                                "transferable: only the encoder is taken"]
    with pytest.warns(UserWarning, match="decode head .* not transferable"):
        read_checkpoint(tmp_path / "hf")
    state = read_checkpoint(tmp_path / "mit_b0.pth")
    assert {key.split(".", 1)[0] for key in state} == {"encoder"}
    assert len(state) == len(MiTEncoder("mit_b0").state_dict())


@pytest.mark.parametrize("dropped", [
    "segformer.encoder.block.1.0.attention.self.value.weight",
    "segformer.encoder.block.3.1.mlp.dense2.bias",
    "segformer.encoder.patch_embeddings.2.layer_norm.weight",
    "segformer.encoder.layer_norm.3.bias",
    "segformer.encoder.block.0.1.attention.self.sr.weight",
])
def test_transformers_file_missing_a_key_is_refused_naming_it(dropped, tmp_path, capsys):
    hf_segformer("mit_b0", "segmentation").save_pretrained(tmp_path)
    state = safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    del state[dropped]
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"misses: {dropped}$"):
        read_checkpoint(tmp_path)
    assert convert.main([str(tmp_path), str(tmp_path / "out.pth")]) == 2
    assert dropped in capsys.readouterr().err and not (tmp_path / "out.pth").exists()


def test_transformers_file_with_an_unknown_encoder_key_is_refused(tmp_path):
    hf_segformer("mit_b0", "encoder").save_pretrained(tmp_path)
    state = safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    state["encoder.block.0.0.attention.self.rotary.weight"] = torch.zeros(2)
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected key: encoder.block.0.0.attention.self.rotary.weight"):
        read_checkpoint(tmp_path / "model.safetensors")


# --------------------------------------------------------------------------------- segmentation-models-pytorch


def smp_model(arch: str = "Segformer"):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    return _perturbed(getattr(smp, arch)("mit_b0", encoder_weights=None, classes=19))


@pytest.mark.parametrize(("arch", "saver"), [("Segformer", "torch.save"), ("Unet", "save_pretrained")])
def test_smp_model_encoder_converts_exactly(arch, saver, tmp_path):
    model = smp_model(arch)
    if saver == "torch.save":
        path = tmp_path / "smp.pth"
        torch.save(model.state_dict(), path)
    else:
        model.save_pretrained(tmp_path / "smp")
        path = tmp_path / "smp"
    with pytest.warns(UserWarning, match="decoder is not atp's DAFormer head"):
        checkpoint = open_checkpoint(path)
    assert checkpoint.format == "smp"
    expected = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    assert checkpoint.state_dict.keys() == expected.keys()
    assert all(torch.equal(checkpoint.state_dict[k], expected[k]) for k in expected)
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = [f for f in model.encoder(image) if f.shape[1] > 3 and f.shape[-1] < 64]  # the four MiT maps
    actual = atp_features(checkpoint.state_dict, "mit_b0", image)
    assert len(reference) == 4
    assert all(torch.equal(a, r) for a, r in zip(actual, reference, strict=True))


def test_smp_file_missing_a_key_is_refused_naming_it(tmp_path, capsys):
    state = smp_model().state_dict()
    del state["encoder.block2.0.attn.kv.weight"]
    torch.save(state, tmp_path / "smp.pth")
    assert convert.main([str(tmp_path / "smp.pth"), str(tmp_path / "out.pth")]) == 2
    assert "encoder.block2.0.attn.kv.weight" in capsys.readouterr().err
    model = build_segmentor("mit_b0", proj_head=None)
    with pytest.raises(CheckpointError, match=r"missing: encoder\.block2\.0\.attn\.kv\.weight"):
        load_into(model, read_checkpoint(tmp_path / "smp.pth"), parts=("encoder",))  # as model.imagenet_init


def test_smp_model_with_another_encoder_is_refused(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.save(smp.Unet("resnet18", encoder_weights=None).state_dict(), tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="encoder is not a MiT .*unexpected key encoder.conv1.weight"):
        read_checkpoint(tmp_path / "unet.pth")
