"""A newcomer's terminal shows our progress and messages, not third-party chatter.

Each notice silenced here is named, matched exactly, and one a user can do nothing about; every other warning
and log line still reaches the terminal. MediaPipe's native graph (TF-Lite, absl) writes straight to file
descriptor 2 from C++ and honours no environment variable in the wheel we use (``GLOG_minloglevel`` and
``TF_CPP_MIN_LOG_LEVEL`` were tried), so :func:`native_stderr_filtered` filters that descriptor while the graph
is built and first runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator

# Python-level notices: (category, message regex, module regex).
_KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # protobuf 4 inside mediapipe 0.10.14; mediapipe pins protobuf < 5.
    (UserWarning, r"SymbolDatabase\.GetPrototype\(\) is deprecated", r"google\.protobuf.*"),
    # Lightning's own use of torch's pytree API.
    (Warning, r".*isinstance\(treespec, LeafSpec\)` is deprecated", r""),
    # Lightning logs every n optimiser steps counted across epochs, so an epoch shorter than n (the demo's 60 s
    # actor: 46 batches) loses no log rows: the advice does not apply to our step-based schedules.
    (Warning, r"The number of training batches \(\d+\) is smaller than the logging interval", r""),
)
# Lightning info lines that advertise a product rather than describe the run.
_KNOWN_LOG_LINES = (re.compile(r"^💡 Tip: "),)
# MediaPipe's native start-up lines on fd 2.
NATIVE_NOISE: tuple[re.Pattern[str], ...] = (
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^[IW]\d{4} [\d:.]+\s+\d+ inference_feedback_manager\.cc:\d+\] Feedback manager requires a model "
               r"with a single signature inference\. Disabling support for feedback tensors\.$"),
    re.compile(r"^I\d{4} [\d:.]+\s+\d+ \w+\.cc:\d+\] "),  # absl INFO lines (never warnings or errors)
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in _KNOWN_LOG_LINES)


_installed = False


def quiet_third_party_logs() -> None:
    """Install the warning and logging filters once per process (before MediaPipe or Lightning load)."""
    global _installed
    if _installed:
        return
    _installed = True
    for category, message, module in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropLines())


# Lightning's run summary, printed by every Trainer and seeding: noise where we run one as a tool on the CPU
# (features of a CPU-only extractor inside `animate` or `features`), or the demo's eighth fit in a row.
_RUN_SUMMARY = re.compile(r"^((GPU|TPU|HPU|IPU) available: |Seed set to )")
_RUN_SUMMARY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed")


class _DropRunSummary(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _RUN_SUMMARY.search(record.getMessage())


@contextlib.contextmanager
def lightning_run_summary_hidden() -> Iterator[None]:
    """Drop Lightning's "GPU available: ... / TPU available: ... / Seed set to ..." lines inside the block."""
    drop = _DropRunSummary()
    loggers = [logging.getLogger(name) for name in _RUN_SUMMARY_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def is_native_noise(line: str) -> bool:
    return any(pattern.search(line.rstrip("\r\n")) for pattern in NATIVE_NOISE)


_depth = 0
_depth_lock = threading.Lock()


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Route file descriptor 2 through a filter dropping :data:`NATIVE_NOISE` lines; everything else passes.

    Python's ``sys.stderr`` keeps its object (rich's terminal detection is unaffected); its bytes take the same
    path. Re-entrant; a no-op where fd 2 cannot be duplicated.
    """
    global _depth
    with _depth_lock:
        _depth += 1
        outer = _depth == 1
    if not outer:
        try:
            yield
        finally:
            with _depth_lock:
                _depth -= 1
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved is None:
        try:
            yield
        finally:
            with _depth_lock:
                _depth -= 1
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb", closefd=True) as pipe:
            for raw in pipe:
                if not is_native_noise(raw.decode("utf-8", "replace")):
                    os.write(saved, raw)

    reader = threading.Thread(target=forward, name="native-stderr-filter", daemon=True)
    reader.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF and drains
        reader.join(timeout=5)
        os.close(saved)
        with _depth_lock:
            _depth -= 1
