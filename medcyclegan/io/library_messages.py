"""Keeps what ITK and nibabel print out of the user's terminal: it goes to our log at debug level.

ITK writes multi-line warnings (``WARNING: In .../itkImageSeriesReader.hxx, line 502 ...``) to
stderr, and nibabel's header checks print lines such as ``pixdim[1,2,3] should be non-zero`` once per
header parse (twice per NIfTI read here). The readers check what matters themselves and say it in one
line of their own; the library's words stay available with ``medcyclegan --verbose``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("medcyclegan")

_lock = threading.Lock()
_itk_logger: Any = None  # kept referenced: ITK calls it for as long as the process runs
_nibabel_filter: logging.Filter | None = None
_local = threading.local()


def route_itk_messages(sitk: Any) -> None:
    """Makes ITK's warnings and errors debug lines of the ``medcyclegan`` logger (once per process).

    SimpleITK >= 2.2 lets a Python :class:`SimpleITK.LoggerBase` replace ITK's output window. Without
    it (older versions), ITK's warning display is switched off instead.
    """
    global _itk_logger
    with _lock:
        if _itk_logger is not None:
            return
        base = getattr(sitk, "LoggerBase", None)
        if base is None:
            sitk.ProcessObject_SetGlobalWarningDisplay(False)
            _itk_logger = False
            return

        class _ToDebugLog(base):  # type: ignore[misc, valid-type]
            def DisplayText(self, text: str) -> None:
                logger.debug("ITK: %s", " ".join(str(text).split()))

            DisplayErrorText = DisplayText
            DisplayWarningText = DisplayText
            DisplayGenericOutputText = DisplayText
            DisplayDebugText = DisplayText

        _itk_logger = _ToDebugLog()
        _itk_logger.SetAsGlobalITKLogger()


class _NibabelToDebugLog(logging.Filter):
    """Drops nibabel's records inside :func:`nibabel_messages` (this thread only), logging them at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        captured = getattr(_local, "messages", None)
        if captured is None:
            return True  # outside our reads nibabel prints as it always does
        message = record.getMessage()
        captured.append(message)
        logger.debug("nibabel: %s", message)
        return False


@contextlib.contextmanager
def nibabel_messages() -> Iterator[list[str]]:
    """Within the block, nibabel's log lines (``nibabel.global``) are collected, not printed.

    Yields:
        The messages logged so far in this thread, for the caller to report in its own words.
    """
    global _nibabel_filter
    with _lock:
        if _nibabel_filter is None:
            _nibabel_filter = _NibabelToDebugLog()
            logging.getLogger("nibabel.global").addFilter(_nibabel_filter)
    previous = getattr(_local, "messages", None)
    _local.messages = messages = []
    try:
        yield messages
    finally:
        _local.messages = previous
