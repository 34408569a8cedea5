"""Resumable checkpoints written atomically: OUT/checkpoints/checkpoint-<step>/, newest K kept.

A checkpoint is written into a hidden temporary folder (accelerate's save_state: optimizer, LR schedule,
trainable weights; then our state.json: step, stage, config), every file is fsynced, the COMPLETE marker is
written last, and only then is the folder renamed into place. A run killed at any moment therefore leaves
either a complete checkpoint or a temporary/unmarked folder that `resume` ignores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

MARKER = "COMPLETE"  # written last; a checkpoint folder without it is ignored
STATE_NAME = "state.json"  # step, stage and config of the run at this checkpoint
NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, or from another kind of run)."""


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary and unmarked folders are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in root.iterdir()
             if (match := NAME.fullmatch(path.name)) and (path / MARKER).is_file()]
    return [path for _, path in sorted(found)]


def find_checkpoint(root: Path, resume: str) -> Path | None:
    """The checkpoint `resume` names: "latest" (None when there is none yet: a fresh start) or a folder."""
    if resume == "latest":
        checkpoints = complete_checkpoints(root)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder (or pass `latest`)")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"--resume {resume}: checkpoint is incomplete (no {MARKER} marker; the run was killed "
                              "while writing it); pass `latest` or an earlier checkpoint")
    return path


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / STATE_NAME).read_text(encoding="utf-8"))


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, state: dict[str, Any],
                    keep: int | None) -> Path:
    """Write checkpoint-<step> atomically (all processes call this), then prune to the newest `keep`."""
    root = Path(root)
    final, temporary = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)  # left by a run killed mid-save
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(temporary)
        _write_synced(temporary / MARKER, f"{step}\n")
        if final.exists():
            _remove(final)
        os.rename(temporary, final)
        _fsync_dir(root)
        for old in complete_checkpoints(root)[:-keep] if keep else []:
            _remove(old)
    accelerator.wait_for_everyone()
    return final


def _remove(checkpoint: Path) -> None:
    # The marker goes first, so a removal cut short leaves an ignored folder, never a half checkpoint.
    (checkpoint / MARKER).unlink(missing_ok=True)
    shutil.rmtree(checkpoint)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
