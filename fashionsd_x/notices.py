"""Notices: something a user asked for was done differently, and they should know (a prompt cut to the text
encoder's length, say).

A notice is a Python warning of its own category, so an API caller filters or records it like any warning;
`fsdx` prints each one once, as `fsdx COMMAND: warning: ...`, never as a raw warnings line.
"""

from __future__ import annotations

import warnings


class Notice(UserWarning):
    """What was asked and what was done differ; the message says both."""


def notify(message: str) -> None:
    """Tell the user `message` (once per run in the CLI)."""
    warnings.warn(message, Notice, stacklevel=3)
