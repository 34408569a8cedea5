"""Resumable checkpoints written atomically: OUT/checkpoints/checkpoint-<step>/, newest K kept.

A checkpoint is written into a hidden temporary folder (the trainable weights and the optimizer's tensors as
safetensors, the optimizer's settings and the LR schedule as JSON, then state.json: step, stage, config),
every file is fsynced, the COMPLETE marker is written last, and only then is the folder renamed into place.
A run killed at any moment therefore leaves either a complete checkpoint or a temporary/unmarked folder that
`resume` ignores. Nothing is pickled: accelerate's save_state would write the optimizer and RNG states with
torch.save, and loading those back is unpickling. RNG states are not needed: every random draw of a step is
a pure function of (seed, step, process), so the step alone restores them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"  # written last; a checkpoint folder without it is ignored
STATE_NAME = "state.json"  # step, stage and config of the run at this checkpoint
OPTIMIZER_TENSORS = "optimizer.safetensors"  # per-parameter optimizer state (Adam moments, step counts)
OPTIMIZER_SETTINGS = "optimizer.json"  # param_groups and the non-tensor per-parameter state
SCHEDULE_NAME = "lr_scheduler.json"  # the LR schedule's state_dict (plain numbers for LambdaLR)
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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (a LoRA checkpoint is MBs, not the whole UNet)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_optimizer(state: dict[str, Any], folder: Path) -> None:
    """An optimizer state_dict as safetensors (its tensors) + JSON (param_groups and other values)."""
    tensors, values = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                values[f"{index}.{name}"] = value
    save_file(tensors, folder / OPTIMIZER_TENSORS)
    settings = {"param_groups": state["param_groups"], "values": values, "indices": list(state["state"])}
    (folder / OPTIMIZER_SETTINGS).write_text(json.dumps(settings), encoding="utf-8")


def load_optimizer(folder: Path, device: torch.device | str) -> dict[str, Any]:
    """The inverse of save_optimizer: a state_dict for optimizer.load_state_dict."""
    settings = json.loads((folder / OPTIMIZER_SETTINGS).read_text(encoding="utf-8"))
    tensors = load_file(folder / OPTIMIZER_TENSORS, device=str(device))
    state: dict[int, dict[str, Any]] = {int(index): {} for index in settings["indices"]}
    for key, value in [*tensors.items(), *settings["values"].items()]:
        index, name = key.split(".", 1)
        state[int(index)][name] = value
    return {"state": state, "param_groups": settings["param_groups"]}


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, models: list[torch.nn.Module], optimizer: Any,
                    lr_scheduler: Any) -> dict[str, Any]:
    """Restore trainable weights, optimizer and LR schedule from a checkpoint; returns its state.json."""
    checkpoint = Path(checkpoint)
    for number, model in enumerate(models):
        model = accelerator.unwrap_model(model)
        state = load_file(checkpoint / f"trainable_{number}.safetensors", device=str(accelerator.device))
        missing = set(trainable_state(model)) - set(state)
        if missing:
            raise CheckpointError(f"checkpoint {checkpoint} lacks {len(missing)} trainable tensors (e.g. {min(missing)})")
        model.load_state_dict(state, strict=False)
    optimizer.load_state_dict(load_optimizer(checkpoint, accelerator.device))
    lr_scheduler.load_state_dict(json.loads((checkpoint / SCHEDULE_NAME).read_text(encoding="utf-8")))
    return read_state(checkpoint)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / STATE_NAME).read_text(encoding="utf-8"))


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, state: dict[str, Any], keep: int | None,
                    models: list[torch.nn.Module], optimizer: Any, lr_scheduler: Any) -> Path:
    """Write checkpoint-<step> atomically (all processes call this), then prune to the newest `keep`."""
    root = Path(root)
    final, temporary = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Data-parallel replicas hold identical weights and optimizer states: the main process writes them.
        shutil.rmtree(temporary, ignore_errors=True)  # left by a run killed mid-save
        temporary.mkdir(parents=True)
        for number, model in enumerate(models):
            save_file(trainable_state(accelerator.unwrap_model(model)), temporary / f"trainable_{number}.safetensors")
        save_optimizer(optimizer.state_dict(), temporary)
        (temporary / SCHEDULE_NAME).write_text(json.dumps(lr_scheduler.state_dict()), encoding="utf-8")
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
