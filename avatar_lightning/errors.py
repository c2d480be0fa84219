"""The project's one error for bad input: every command turns it into one ``error:`` line and exit code 2."""

from __future__ import annotations


class CacheError(RuntimeError):
    """A capture cache, avatar folder, checkpoint or other input is missing, malformed, or lacks what a stage needs.

    The name is historical (the capture cache was the first input); the message names the file and the command
    that makes the right one.
    """
