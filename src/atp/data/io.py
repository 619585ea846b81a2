"""Reading images and label files, and writing PNGs atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from atp.atomic import atomic_write_bytes
from atp.data.labels import invalid_label_values, to_train_ids
from atp.errors import BadLabelValuesError, UnreadableFileError

cv2.setNumThreads(0)  # one decode per worker process; avoids oversubscription inside DataLoader workers


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 ``(H, W, 3)``; raises :class:`UnreadableFileError`."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        reason = "file is missing" if not os.path.exists(path) else "cannot be decoded (corrupt or truncated)"
        raise UnreadableFileError(path, f"image {reason}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_raw_label(path: str | Path, encoding: str) -> np.ndarray:
    """Read a label file's raw class values as a 2-D array.

    ``synthia_ids`` files are 16-bit 3-channel PNGs: the class id is the last channel of the BGR
    decode (the red channel). Every other encoding is an 8-bit PNG, grey or palette; it is read
    through Pillow so palette indices (GTA5) are kept instead of expanded to colours.
    """
    path = str(path)
    if encoding == "synthia_ids":
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            reason = (
                "file is missing" if not os.path.exists(path) else "cannot be decoded (corrupt or truncated)"
            )
            raise UnreadableFileError(path, f"label {reason}")
        return raw[..., -1] if raw.ndim == 3 else raw
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I;16", "I"):
                raise UnreadableFileError(
                    path, f"label has image mode {im.mode!r}, expected one channel of ids"
                )
            raw = np.asarray(im)
    except FileNotFoundError as err:
        raise UnreadableFileError(path, "label file is missing") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableFileError(path, f"label cannot be decoded ({err})") from err
    return raw


def read_label(path: str | Path, encoding: str, fix: str = "") -> np.ndarray:
    """Read a label file and return uint8 train ids; raises on unreadable files or unknown values."""
    raw = read_raw_label(path, encoding)
    bad = invalid_label_values(raw, encoding)
    if bad:
        raise BadLabelValuesError(path, bad_values_message(bad, encoding), fix)
    return to_train_ids(raw, encoding)


def bad_values_message(bad: list[int], encoding: str) -> str:
    """``label values outside the <encoding> table: 19, 200`` (at most 8 values shown)."""
    shown = ", ".join(map(str, bad[:8])) + (" …" if len(bad) > 8 else "")
    return f"label values outside the {encoding} table: {shown}"


def write_png_atomic(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write ``array`` as a PNG through :func:`atp.atomic.atomic_write` (temp file, fsync, rename).

    A run killed half-way leaves at most a hidden ``.*.tmp`` file (removed by the next ``prepare``),
    never a truncated file under the final name. 3-channel arrays are RGB (uint8 or uint16);
    ``palette`` (256×3 uint8) writes an indexed PNG like the GTA5 label files.
    """
    atomic_write_bytes(path, encode_png(array, palette))


def encode_png(array: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes of ``array`` (the same bytes ``cv2.imwrite``/``PIL.Image.save`` would write to a file)."""
    if palette is not None:
        im = Image.fromarray(array.astype(np.uint8), mode="P")
        im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")
        return buffer.getvalue()
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # 3-channel arrays are RGB (8 or 16 bit)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"cv2.imencode could not encode a {array.dtype} array of shape {array.shape} as PNG")
    return encoded.tobytes()
