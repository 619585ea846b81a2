"""A pickle payload that runs code when unpickled: what a hostile checkpoint could do."""

from __future__ import annotations

from pathlib import Path


def _leave_marker(path: str) -> str:
    Path(path).write_text("unpickling ran code")
    return "payload"


class HostilePayload:
    """Unpickles by calling ``_leave_marker``, which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_leave_marker, (str(self.marker),))
