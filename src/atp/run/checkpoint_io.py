"""Atomic checkpoint files: a kill or a full disk never leaves a half-written ``last.ckpt``."""

from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from atp.atomic import atomic_write
from atp.errors import CheckpointReadError, CheckpointWriteError


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``.<name>.<random>.tmp`` in the destination directory, fsync, ``os.replace``.

    The temp name matches :func:`atp.atomic.clean_stale_temp_files`, which ``run_stage`` calls at
    start, so the leftovers of a killed writer disappear on the next run. A failed write (e.g. a
    full disk) removes the temp file and raises :class:`CheckpointWriteError`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        try:
            atomic_write(path, lambda handle: self.write(checkpoint, handle))
        except OSError as err:
            raise self._error(path, err) from err
        _fsync_directory(path.parent)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None) -> dict[str, Any]:
        """Lightning's loader, with a one-line error for truncated or corrupt files."""
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read (truncated or corrupt: {str(err).splitlines()[0]}); "
                "delete it to start the stage again, or pass ckpt_path=<an intact copy>"
            ) from err

    @staticmethod
    def write(checkpoint: dict[str, Any], handle) -> None:
        """Serialise ``checkpoint`` into an open binary file (a seam for fault-injection tests)."""
        torch.save(checkpoint, handle)

    @staticmethod
    def _error(path: Path, err: OSError) -> CheckpointWriteError:
        reason = err.strerror or str(err)
        hint = " — free some space" if err.errno == errno.ENOSPC else ""
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        return CheckpointWriteError(f"could not write checkpoint {path} ({reason}){hint}; {kept}")
