"""Convert any supported checkpoint into this project's format (``{"format": "atp-segmentor", ...}``).

    python -m atp.convert SRC DST [--which student|teacher] [--trust] [--no-check]

Reads an official ``mit_b*.pth``, an mmseg segmentor, an ATP UDA checkpoint, an atp Lightning
checkpoint, a Hugging Face ``transformers`` SegFormer or a segmentation-models-pytorch MiT model (their
encoder; ``.safetensors``, ``pytorch_model.bin`` or a ``save_pretrained`` folder) or an already converted
file; checks that the weights form a complete network (encoder,
plus decoder / projection head when present); writes DST atomically. Errors: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from atp.models.weights import CheckpointError, check_state_dict, open_checkpoint, save_converted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m atp.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint file or save_pretrained folder to read (any supported format)")
    parser.add_argument("dst", help="file to write (replaced atomically)")
    parser.add_argument("--which", choices=("student", "teacher"), default="student",
                        help="network to take from UDA/Lightning checkpoints holding both (default: student)")
    parser.add_argument("--trust", action="store_true",
                        help="allow full unpickling (arbitrary code!); only for files from a trusted source")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the check that the weights form a complete MiT/DAFormer network")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 error)."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:  # e.g. "decode head not transferable": one line
            warnings.simplefilter("always", UserWarning)
            checkpoint = open_checkpoint(args.src, which=args.which, trust=args.trust)
        for warning in caught:
            print(f"atp.convert: warning: {warning.message}", file=sys.stderr)
        config = None if args.no_check else check_state_dict(checkpoint.state_dict)
        save_converted(args.dst, checkpoint)
    except (CheckpointError, OSError) as err:
        print(f"atp.convert: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    state = checkpoint.state_dict
    parts = sorted({key.split(".", 1)[0] for key in state}, key=("encoder", "decode_head", "proj_head").index)
    numel = sum(tensor.numel() for tensor in state.values())
    role = f" ({checkpoint.which})" if checkpoint.which else ""
    network = f", {config['encoder']}" if config else ""
    print(f"{args.src}: {checkpoint.format}{role} -> {args.dst}: {len(state)} tensors, "
          f"{numel / 1e6:.2f} M values ({'+'.join(parts)}{network})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
