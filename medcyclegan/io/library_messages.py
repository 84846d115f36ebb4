"""Keeps what ITK and nibabel print out of the user's terminal: it goes to our log at debug level.

ITK writes multi-line warnings (``WARNING: In .../itkImageSeriesReader.hxx, line 502 ...``) to
stderr, and nibabel's header checks print lines such as ``pixdim[1,2,3] should be non-zero`` once per
header parse (twice per NIfTI read here). The readers check what matters themselves and say it in one
line of their own; the library's words stay available with ``medcyclegan --verbose``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
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


_native_lock = threading.Lock()
_native_depth = 0
_native_saved: tuple[int, int, Any] | None = None


@contextlib.contextmanager
def native_output_to_debug_log() -> Iterator[None]:
    """Within the block, what C++ code writes straight to the process's stdout and stderr (file
    descriptors 1 and 2) goes to our log at debug level instead of the terminal.

    Some ITK components bypass ITK's output window: MetaIO prints ``MetaImage: M_ReadElementsData:
    data not read completely`` with ``std::cerr``, OpenJPEG prints ``Invalid marker size``. The
    readers report what such a failure means in one line of their own. Only wrap calls into ITK:
    anything printed meanwhile, by any thread, becomes a debug line. Nested and concurrent blocks
    share one redirection (the last to leave restores the terminal).
    """
    global _native_depth, _native_saved
    with _native_lock:
        if _native_depth == 0:
            try:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                sink = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the outermost block ends
                _native_saved = (os.dup(1), os.dup(2), sink)
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
            except (OSError, ValueError, AttributeError):
                _native_saved = None  # no usable descriptors (embedded interpreter): leave them
        _native_depth += 1
    try:
        yield
    finally:
        with _native_lock:
            _native_depth -= 1
            if _native_depth == 0 and _native_saved is not None:
                out, err, sink = _native_saved
                _native_saved = None
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stdout.flush()
                    sys.stderr.flush()
                _flush_c_streams()  # C's own stdout buffer, else OpenJPEG's lines appear at exit
                os.dup2(out, 1)
                os.dup2(err, 2)
                os.close(out)
                os.close(err)
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                sink.close()
                for line in text.splitlines():
                    if line.strip():
                        logger.debug("native output: %s", line.strip())


def _flush_c_streams() -> None:
    """``fflush(NULL)``: writes out what C code left in the C library's stream buffers."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)
