"""Graceful interruption of a run: the first Ctrl-C (or SIGTERM) asks the loop to stop after the
current step, so the image, frames and video so far are written completely; a second one stops at
once (only complete files are left, since every file is written atomically).

The handlers exist only while a run is in progress (`with StopSignal() as stop:`) and the previous
handlers are restored afterwards; nothing is installed at import time.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)
SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class StopSignal:
    """Context manager: `requested` turns true on the first SIGINT/SIGTERM; the second raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (press Ctrl-C again to stop at once)")

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
