"""Checkpoint reading (every format users have) in ``Segmentor`` key names, and strict loading.

Formats recognised by ``open_checkpoint`` (the ``format`` it reports):

- ``mit-imagenet``: official SegFormer ``mit_b*.pth`` (plain dict, or wrapped in ``state_dict``/``model``);
  ``head.*`` (ImageNet classifier) is dropped, the rest becomes ``encoder.*``.
- ``mmseg-segmentor``: ``{"state_dict": backbone.* / decode_head.* / auxiliary_head.*}``.
- ``atp-uda``: ATP/DAFormer UDA checkpoints, ``model.*`` (student) and ``ema_model.*`` (teacher).
- ``lightning``: this project's Lightning checkpoints, ``student.*`` and ``teacher.[model.]*``.
- ``atp-segmentor``: files written by ``save_converted`` / ``python -m atp.convert``.
- ``segmentor-state-dict``: a bare ``Segmentor.state_dict()``.
- ``hf-segformer``: Hugging Face ``transformers`` SegFormer files (encoder only), and
- ``smp``: segmentation-models-pytorch models with a ``mit_b*`` encoder (encoder only);
  see ``atp.models.weight_formats``.

Besides ``torch.save`` files, ``.safetensors`` files and ``save_pretrained`` folders (``model.safetensors``,
``pytorch_model.bin`` or a sharded ``*.index.json``) are read. A leading ``module.`` (DataParallel) is stripped from every key. Files are unpickled with
``weights_only=True`` and a small allow-list (numpy scalars/arrays, OmegaConf containers); anything
else is refused unless the caller passes ``trust=True``.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import pickle
import re
import typing
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from atp.atomic import atomic_write
from atp.errors import CheckpointError
from atp.models import weight_formats

__all__ = [
    "CONVERTED_FORMAT",
    "SEGMENTOR_PARTS",
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "check_state_dict",
    "infer_segmentor_config",
    "load_into",
    "load_weights",
    "open_checkpoint",
    "read_checkpoint",
    "read_global_step",
    "save_converted",
]

CONVERTED_FORMAT = "atp-segmentor"
SEGMENTOR_PARTS = ("encoder", "decode_head", "proj_head")
_MMSEG_TO_SEGMENTOR = {"backbone": "encoder", "decode_head": "decode_head", "auxiliary_head": "proj_head"}
_ENCODER_BLOCK_KEY = re.compile(r"^encoder\.block([1-4])\.(\d+)\.")
_LISTED_NAMES = 8  # how many key names an error message spells out per category


@dataclass
class Checkpoint:
    """A checkpoint read into ``Segmentor`` key names."""

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    which: str | None = None  # student/teacher for files holding both, else None


@dataclass
class LoadReport:
    """What ``load_into`` did: number of tensors copied and the keys that did not fit."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


# --------------------------------------------------------------------------------------------- reading


def open_checkpoint(path: str | os.PathLike, which: str = "student", trust: bool = False) -> Checkpoint:
    """Read ``path`` (any supported format) into ``Segmentor`` names; ``which`` picks student/teacher."""
    if which not in ("student", "teacher"):
        raise ValueError(f"which must be 'student' or 'teacher', got {which!r}")
    path = Path(path)
    path, obj = _read_file(path, trust)
    if isinstance(obj, Mapping) and obj.get("format") == CONVERTED_FORMAT:
        return _from_converted(path, obj, which)
    raw = _strip_module_prefix(_find_state_dict(path, obj))
    prefixes = weight_formats.top_level(raw)
    if not raw:
        raise CheckpointError(f"{path}: the state dict is empty")
    if prefixes & {"student", "teacher"}:
        fmt, state = "lightning", _pick_lightning_role(path, raw, which)
    elif prefixes <= {"model", "ema_model", "imnet_model"} and prefixes & {"model", "ema_model"}:
        role_prefix = "model" if which == "student" else "ema_model"
        fmt, state = "atp-uda", _rename_mmseg(path, _take_prefix(path, raw, role_prefix, which))
    elif weight_formats.is_hf_segformer(raw):
        fmt, state = weight_formats.HF_SEGFORMER, weight_formats.from_hf_segformer(path, raw)
    elif weight_formats.is_smp(raw):
        fmt, state = weight_formats.SMP, weight_formats.from_smp(path, raw)
    elif prefixes <= set(SEGMENTOR_PARTS):
        fmt, state = "segmentor-state-dict", dict(raw)
    elif prefixes <= set(_MMSEG_TO_SEGMENTOR):
        fmt, state = "mmseg-segmentor", _rename_mmseg(path, raw)
    elif all(weight_formats.MIT_KEY.match(key) for key in raw if not key.startswith("head.")):
        fmt, state = "mit-imagenet", {f"encoder.{k}": v for k, v in raw.items() if not k.startswith("head.")}
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint format (top-level key prefixes: {_listing(sorted(prefixes))}); "
            "expected an official mit_b*.pth, an mmseg segmentor, an ATP UDA checkpoint, an atp Lightning "
            "checkpoint, a transformers SegFormer or segmentation-models-pytorch MiT model, or a file written "
            "by `python -m atp.convert`"
        )
    two_networks = fmt in ("lightning", "atp-uda")
    if not two_networks and which != "student":
        raise CheckpointError(f"{path}: this {fmt} checkpoint holds a single network; there is no {which} to pick")
    _require_tensors(path, state)
    return Checkpoint(path, fmt, state, which if two_networks else None)


def read_checkpoint(path: str | os.PathLike, which: str = "student", trust: bool = False) -> dict[str, torch.Tensor]:
    """State dict of ``path`` in ``Segmentor`` names (``encoder.*``, ``decode_head.*``, ``proj_head.*``).

    ``which`` chooses the student or the EMA teacher in files that hold both (UDA and Lightning
    checkpoints). ``trust=True`` allows full unpickling; use it only for files from a trusted source.
    Raises ``CheckpointError`` (a ``ValueError``) naming the file on any problem.
    """
    return open_checkpoint(path, which=which, trust=trust).state_dict


def read_global_step(path: str | os.PathLike, trust: bool = False) -> int | None:
    """``global_step`` of a Lightning checkpoint (memory-mapped: tensors are not read); None if unreadable."""
    try:
        step = _unpickle(Path(path), trust).get("global_step")
    except (CheckpointError, AttributeError):
        return None
    return step if isinstance(step, int) else None


#: the state-dict entry of an atp checkpoint holding the source labels' class share (issue #23)
SOURCE_CLASS_SHARE = "source_class_share"


def read_source_class_share(path: str | os.PathLike, trust: bool = False) -> list[float] | None:
    """The source labels' class share an atp Lightning checkpoint carries (the source stage counts it and every
    stage started from it keeps it); None for a checkpoint without it (other formats, older atp files) or that
    could not be read (reading the weights reports why)."""
    try:
        obj = _unpickle(Path(path), trust)
    except CheckpointError:
        return None
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    share = state.get(SOURCE_CLASS_SHARE) if isinstance(state, Mapping) else None
    if not torch.is_tensor(share) or float(share.sum()) <= 0:  # all zeros: a source run that never trained
        return None
    return [float(v) for v in share.tolist()]


_PRETRAINED_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json")


def _read_file(path: Path, trust: bool) -> tuple[Path, object]:
    """The object stored at ``path``: a ``torch.save`` file, a ``.safetensors`` file, or a ``save_pretrained``
    folder (its weights file, or the shards its index names, merged). Returns the file actually read too."""
    if path.is_dir():
        found = next((path / name for name in _PRETRAINED_FILES if (path / name).is_file()), None)
        if found is None:
            raise CheckpointError(f"{path}: a folder without weights (looked for {', '.join(_PRETRAINED_FILES)}); "
                                  "pass the checkpoint file itself")
        path = found
    if path.name.endswith(".index.json"):
        return path, _read_shards(path, trust)
    if _is_safetensors(path):
        return path, _read_safetensors(path)
    return path, _unpickle(path, trust)


def _is_safetensors(path: Path) -> bool:
    """safetensors layout: 8-byte little-endian header length, then a JSON header."""
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors files needs the safetensors package "
                              "(pip install safetensors)") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types on damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: "
                              f"{_first_line(err)})") from None


def _read_shards(index: Path, trust: bool) -> dict[str, torch.Tensor]:
    """The tensors of a sharded ``save_pretrained`` checkpoint (``weight_map``: name → shard file)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a readable checkpoint index ({type(err).__name__}: {err})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        _, obj = _read_file(index.parent / shard, trust)
        state.update(_find_state_dict(index.parent / shard, obj))
    missing = [name for name in weight_map if name not in state]
    if missing:
        raise CheckpointError(f"{index}: tensors listed in the index but absent from its shards: {_listing(missing)}")
    return state


def _unpickle(path: Path, trust: bool) -> object:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    mmap = zipfile.is_zipfile(path)  # the (default) zip format can be memory-mapped: no copy in RAM
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(list(_safe_globals())):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        needed = _needed_global(str(err))
        if needed is not None and not trust:
            raise CheckpointError(
                f"{path}: refusing to unpickle {needed}: the file holds Python objects other than tensors "
                "and plain containers, and unpickling them can run arbitrary code. If you trust the file's "
                "source, load it with trust=True (CLI: --trust; config: trust_checkpoints=true)"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    except Exception as err:  # torch raises many types on corrupt/foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
                              f"{_first_line(err)})") from None


def _needed_global(message: str) -> str | None:
    """The global/type a weights-only unpickling refused, or None if it failed for another reason."""
    match = re.search(r"GLOBAL (\S+) was not an allowed global", message) or re.search(
        r"allowlisted via `add_safe_globals`, but got <class '([^']+)'>", message)
    return match.group(1) if match else None


@functools.cache
def _safe_globals() -> tuple:
    """Data-only types that published checkpoints carry outside the tensors (mmcv ``meta`` with numpy
    scalars, Lightning ``hyper_parameters`` with OmegaConf containers)."""
    allowed: list = [dict, list, tuple, set, int, float, str, bool, complex, collections.defaultdict,
                     (typing.Any, "typing.Any")]
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        core = getattr(np, "_core", None) or np.core
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed += [(core.multiarray.scalar, f"{module}.scalar"),
                        (core.multiarray._reconstruct, f"{module}._reconstruct")]
        allowed += [np.ndarray, np.dtype]
        dtypes = getattr(np, "dtypes", None)
        if dtypes is not None:
            allowed += [getattr(dtypes, name) for name in dir(dtypes)
                        if name.endswith("DType") and name not in ("ObjectDType", "VoidDType")]
    try:
        from omegaconf import DictConfig, ListConfig, base, nodes
    except ImportError:
        return tuple(allowed)
    allowed += [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, nodes.AnyNode,
                nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, nodes.BytesNode]
    return tuple(allowed)


def _find_state_dict(path: Path, obj: object) -> Mapping:
    """The name → tensor mapping inside a checkpoint object (bare, or under ``state_dict``/``model``)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                return inner
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
        keys = _listing(sorted(map(str, obj)))
        raise CheckpointError(f"{path}: not a model checkpoint: no state dict found (top-level keys: {keys})")
    raise CheckpointError(f"{path}: not a model checkpoint: it holds a {type(obj).__name__}, not a dict")


def _strip_module_prefix(state: Mapping) -> dict:
    return {key.removeprefix("module."): value for key, value in state.items()}


def _take_prefix(path: Path, state: Mapping, prefix: str, which: str) -> dict:
    """Keys under ``prefix.`` with the prefix removed; an error if there are none."""
    taken = {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}
    if not taken:
        found = _listing(sorted(weight_formats.top_level(state)))
        raise CheckpointError(f"{path}: no {which} weights (no '{prefix}.' keys; top-level prefixes: {found})")
    return taken


def _pick_lightning_role(path: Path, state: Mapping, which: str) -> dict:
    """``student.*`` or ``teacher.*`` (an ``EMATeacher`` adds ``model.``); other entries are ignored."""
    taken = _take_prefix(path, state, which, which)
    if weight_formats.top_level(taken) == {"model"}:
        taken = {key.removeprefix("model."): value for key, value in taken.items()}
    return taken


def _rename_mmseg(path: Path, state: Mapping) -> dict:
    unknown = weight_formats.top_level(state) - set(_MMSEG_TO_SEGMENTOR)
    if unknown:
        raise CheckpointError(f"{path}: unexpected mmseg prefixes {_listing(sorted(unknown))} "
                              f"(expected {', '.join(_MMSEG_TO_SEGMENTOR)})")
    renamed = {}
    for key, value in state.items():
        head, rest = key.split(".", 1)
        renamed[f"{_MMSEG_TO_SEGMENTOR[head]}.{rest}"] = value
    return renamed


def _from_converted(path: Path, obj: Mapping, which: str) -> Checkpoint:
    state = obj.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: {CONVERTED_FORMAT} file without a state_dict")
    recorded = obj.get("which") or "student"
    if which != "student" and which != recorded:
        raise CheckpointError(f"{path}: this converted file holds the {recorded} network, not the {which}")
    state = dict(state)
    _require_tensors(path, state)
    return Checkpoint(path, CONVERTED_FORMAT, state, obj.get("which"))


def _require_tensors(path: Path, state: Mapping) -> None:
    outside = [key for key in state if key.split(".", 1)[0] not in SEGMENTOR_PARTS]
    if outside:
        raise CheckpointError(f"{path}: keys outside encoder/decode_head/proj_head: {_listing(outside)}")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {_listing(not_tensors)}")


# --------------------------------------------------------------------------------------------- writing


def save_converted(path: str | os.PathLike, checkpoint: Checkpoint | Mapping[str, torch.Tensor]) -> Path:
    """Write ``{"format": "atp-segmentor", "state_dict": …}`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    if isinstance(checkpoint, Checkpoint):
        state, info = checkpoint.state_dict, {"source": str(checkpoint.path), "source_format": checkpoint.format,
                                              "which": checkpoint.which}
    else:
        state, info = dict(checkpoint), {}
    _require_tensors(path, state)
    payload = {"format": CONVERTED_FORMAT, "format_version": 1, **info,
               "state_dict": {key: _own_storage(value) for key, value in state.items()}}
    return atomic_write(path, lambda stream: torch.save(payload, stream))


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself, or a compact copy when it is a view into a larger storage (saved whole)."""
    tensor = tensor.detach()
    exact = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if exact and tensor.is_contiguous() else tensor.clone(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------- loading


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
              parts: Iterable[str] | str | None = None) -> LoadReport:
    """Copy ``state_dict`` into ``model``; by default every key must match, name for name and shape for shape.

    ``parts`` (e.g. ``("encoder",)``) restricts both sides to those top-level submodules; checkpoint keys
    outside them are ignored. A mismatch raises one ``CheckpointError`` listing missing, unexpected and
    wrongly shaped keys. With ``strict=False`` the fitting tensors are loaded and a warning lists the rest.
    """
    expected = model.state_dict()
    provided = dict(state_dict)
    if parts is not None:
        parts = (parts,) if isinstance(parts, str) else tuple(parts)
        known = weight_formats.top_level(expected)
        unknown = [part for part in parts if part not in known]
        if unknown:
            raise ValueError(f"the model has no part(s) {unknown}; it has {sorted(known)}")
        prefixes = tuple(f"{part}." for part in parts)
        expected = {key: value for key, value in expected.items() if key.startswith(prefixes)}
        provided = {key: value for key, value in provided.items() if key.startswith(prefixes)}
    report = _compare({key: tuple(value.shape) for key, value in expected.items()}, provided)
    if not report.complete:
        if strict:
            raise CheckpointError(_describe_mismatch(report))
        warnings.warn(f"partial load: {_describe_mismatch(report)}", stacklevel=2)
    fitting = {key: value for key, value in provided.items()
               if key in expected and tuple(value.shape) == tuple(expected[key].shape)}
    model.load_state_dict(fitting, strict=False)  # every key of `fitting` is one of the model's
    report.loaded = len(fitting)
    return report


def load_segmentor(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                   required: tuple[str, ...] = ("encoder", "decode_head")) -> tuple[str, ...]:
    """Strictly load every part of a ``Segmentor`` that ``state_dict`` covers; returns those parts.

    The ``required`` parts must be present (a segmentation model needs encoder and decoder); a part the
    model has but the checkpoint lacks (e.g. the projection head) keeps its initial weights.
    """
    present = weight_formats.top_level(state_dict)
    missing = [part for part in required if part not in present]
    if missing:
        raise CheckpointError(
            f"{source} holds no {'/'.join(missing)} weights (found: {', '.join(sorted(present)) or 'nothing'})"
        )
    parts = tuple(p for p in SEGMENTOR_PARTS if p in present and getattr(model, p, None) is not None)
    load_into(model, state_dict, strict=True, parts=parts)
    return parts


def load_weights(model: nn.Module, path: str | os.PathLike, which: str = "student",
                 parts: Iterable[str] | str | None = None, strict: bool = True, trust: bool = False) -> LoadReport:
    """``read_checkpoint`` + ``load_into``; errors name the file."""
    state = read_checkpoint(path, which=which, trust=trust)
    try:
        return load_into(model, state, strict=strict, parts=parts)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _compare(expected_shapes: Mapping[str, tuple], provided: Mapping[str, torch.Tensor]) -> LoadReport:
    missing = [key for key in expected_shapes if key not in provided]
    unexpected = [key for key in provided if key not in expected_shapes]
    mismatched = [f"{key} (checkpoint {list(provided[key].shape)}, model {list(shape)})"
                  for key, shape in expected_shapes.items()
                  if key in provided and tuple(provided[key].shape) != tuple(shape)]
    return LoadReport(0, missing, unexpected, mismatched)


def _describe_mismatch(report: LoadReport) -> str:
    pieces = []
    for label, names in (("missing", report.missing), ("unexpected", report.unexpected),
                         ("with a different shape", report.mismatched)):
        if names:
            pieces.append(f"{len(names)} {label}: {_listing(names)}")
    return "state dict does not match the model: " + "; ".join(pieces)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_NAMES])
    return shown + (f", … (+{len(names) - _LISTED_NAMES} more)" if len(names) > _LISTED_NAMES else "")


def _first_line(err: BaseException) -> str:
    """The informative first line of an exception message (torch's weights-only preamble skipped)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# ------------------------------------------------------------------------------------- architecture check


def infer_segmentor_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """``build_segmentor`` arguments for the network a ``Segmentor``-named state dict describes.

    The MiT variant comes from the patch-embedding widths and block counts (nearest variant when the
    block counts do not fit exactly, so that the strict comparison can name the odd keys).
    """
    from atp.models.encoder import mit_variant_names, mit_variant_params

    widths = []
    for stage in range(1, 5):
        key = f"encoder.patch_embed{stage}.proj.weight"
        if key not in state_dict:
            raise CheckpointError(f"cannot tell the encoder variant: no {key}")
        widths.append(int(state_dict[key].shape[0]))
    depths = [0, 0, 0, 0]
    for stage, index in {m.groups() for m in map(_ENCODER_BLOCK_KEY.match, state_dict) if m}:
        depths[int(stage) - 1] = max(depths[int(stage) - 1], int(index) + 1)
    candidates = [name for name in mit_variant_names() if list(mit_variant_params(name)["embed_dims"]) == widths]
    if not candidates:
        raise CheckpointError(f"encoder widths {widths} match no MiT variant ({', '.join(mit_variant_names())})")
    encoder = min(candidates, key=lambda name: sum(
        abs(a - b) for a, b in zip(mit_variant_params(name)["depths"], depths, strict=True)))

    def width(key: str, default: int) -> int:
        return int(state_dict[key].shape[0]) if key in state_dict else default

    proj_head = None
    if any(key.startswith("proj_head.") for key in state_dict):
        proj_head = {"mid_channels": width("proj_head.convs.0.conv.weight", 256),
                     "out_channels": width("proj_head.convs.1.conv.weight", 512)}
    return {
        "encoder": encoder,
        "num_classes": width("decode_head.conv_seg.weight", 19),
        "decoder": {"embed_dim": width("decode_head.embed_layers.0.proj.weight", 256)},
        "proj_head": proj_head,
    }


def check_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Raise ``CheckpointError`` unless ``state_dict`` fits, key for key and shape for shape, the
    ``Segmentor`` it describes (only the parts it has: an ImageNet file is checked as an encoder).
    Returns the inferred ``build_segmentor`` arguments."""
    config = infer_segmentor_config(state_dict)
    present = weight_formats.top_level(state_dict)
    parts = tuple(part for part in SEGMENTOR_PARTS if part in present)
    expected = {key: shape for key, shape in _expected_shapes(_freeze(config)).items()
                if key.split(".", 1)[0] in parts}
    report = _compare(expected, state_dict)
    if not report.complete:
        raise CheckpointError(f"{_describe_mismatch(report)} (compared with {config['encoder']} "
                              f"{'+'.join(parts)})")
    return config


def _freeze(config: dict) -> tuple:
    """Hashable form of a config; always with a projection head (its keys are dropped when unused), so an
    encoder-only file and a full one of the same variant share one cached build."""
    proj = config["proj_head"] or {"mid_channels": 256, "out_channels": 512}
    return (config["encoder"], config["num_classes"], config["decoder"]["embed_dim"],
            proj["mid_channels"], proj["out_channels"])


@functools.lru_cache(maxsize=4)
def _expected_shapes(frozen: tuple) -> dict[str, tuple]:
    """Key → shape of the ``Segmentor`` a frozen config builds (built once per config and process)."""
    from atp.models.segmentor import build_segmentor

    encoder, num_classes, embed_dim, proj_mid, proj_out = frozen
    model = build_segmentor(encoder, num_classes=num_classes, drop_path_rate=0.0, decoder={"embed_dim": embed_dim},
                            proj_head={"mid_channels": proj_mid, "out_channels": proj_out})
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}
