"""Atomic file writes: a temp file in the same directory, flush + fsync, then ``os.replace``.

A reader (or a run killed mid-write) sees either the old file or the new one, never half of one.
Temp files are named ``.<name>.<random>.tmp`` so :func:`clean_stale_temp_files` finds what a killed
writer left. This is the one writer of the package: checkpoints, manifests, JSON reports and PNGs. The result has the mode a plain ``open()`` gives (``0o666`` less the
umask), or that of the file it replaces. No dependencies: every layer (data, models, adaptation,
stages) uses it.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def create_temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, Path]:
    """Open a new ``.<name>.<random><suffix>`` beside ``path`` for writing: ``(fd, temp path)``.

    Unlike ``tempfile.mkstemp`` (always 0600) the file is created with 0o666 and the umask (and any
    default ACL) applies, as for ``open()``; when ``path`` exists its permission bits are copied.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_beside(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    text = json.dumps(data, indent=indent, default=str) + "\n"  # serialise first: a failure writes nothing
    return atomic_write_text(path, text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def clean_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp files killed writers left under ``directory`` (recursive); returns them, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.rglob(".*.tmp") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
