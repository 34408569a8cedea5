"""Resumable checkpoints that prove their integrity: OUT/checkpoints/checkpoint-<step>/, newest K kept.

A checkpoint is written into a hidden temporary folder (the trainable weights and the optimizer's tensors as
safetensors, the optimizer's settings and the LR schedule as JSON, then state.json: step, stage, config), every
file is fsynced, and the manifest (manifest.json: the size and sha256 of every other file) is written last; only
then is the folder renamed into place. A run killed at any moment leaves a complete checkpoint or a temporary
folder that `resume` ignores, and a checkpoint folder without its manifest is incomplete.

Resuming checks every file against the manifest, hashing the bytes on disk (digests' cache, keyed by size and
mtime, would miss a flipped byte). `latest` skips a damaged checkpoint (a missing, truncated or corrupted file,
or no manifest) with a one-line warning naming the bad file and resumes from the newest intact one, or starts
a new run when none is intact; a damaged checkpoint named explicitly is a CheckpointError (exit 2 in the CLI).

Checkpoints written before manifests existed end with a COMPLETE marker instead. They cannot be verified, but
they are still resumed, named or as `latest` (so a run upgraded mid-way keeps its progress), with a warning,
after a structural check: every safetensors header and JSON file must parse, which catches a truncated file.

Nothing is pickled: accelerate's save_state would write the optimizer and RNG states with torch.save, and
loading those back is unpickling. RNG states are not needed: every random draw of a step is a pure function of
(seed, step), so the step alone restores them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fashionsd_x.files import sha256_of, sync_file, sync_folder, write_text

MANIFEST = "manifest.json"  # {"files": {name: {"bytes", "sha256"}}} of every other file; written last
MARKER = MANIFEST  # the file whose presence makes a checkpoint folder complete
LEGACY_MARKER = "COMPLETE"  # what checkpoints written before manifests ended with (resumed unverified)
STATE_NAME = "state.json"  # step, stage and config of the run at this checkpoint
OPTIMIZER_TENSORS = "optimizer.safetensors"  # per-parameter optimizer state (Adam moments, step counts)
OPTIMIZER_SETTINGS = "optimizer.json"  # param_groups and the non-tensor per-parameter state
SCHEDULE_NAME = "lr_scheduler.json"  # the LR schedule's state_dict (plain numbers for LambdaLR)
NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, damaged, or from another kind of run)."""


def checkpoint_folders(root: Path) -> list[Path]:
    """Every checkpoint-<step> folder under `root`, complete or not, oldest first (temporary folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in root.iterdir()
             if (match := NAME.fullmatch(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found)]


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoints under `root` that were finished (a manifest, or an older run's COMPLETE marker), oldest
    first; their files are not verified here (see `damage`)."""
    return [path for path in checkpoint_folders(root)
            if (path / MANIFEST).is_file() or (path / LEGACY_MARKER).is_file()]


def find_checkpoint(root: Path, resume: str) -> Path | None:
    """The checkpoint `resume` names, verified: "latest" is the newest intact one under `root` (damaged ones
    skipped with a warning; None when none is intact: a fresh start), anything else a folder that must be
    intact."""
    if resume == "latest":
        for path in reversed(checkpoint_folders(root)):
            problem = damage(path)
            if problem is None:
                _warn_if_unverified(path)
                return path
            _warn(f"skipping damaged checkpoint {path}: {problem}")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder (or pass `latest`)")
    problem = damage(path)
    if problem is not None:
        raise CheckpointError(f"--resume {resume}: {problem}; pass `latest` to resume from the newest intact "
                              "checkpoint, or name an earlier one")
    _warn_if_unverified(path)
    return path


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files, naming the file; None when every file matches the manifest
    (or, for a checkpoint from before manifests, when its files parse)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / MANIFEST).is_file():
        if (checkpoint / LEGACY_MARKER).is_file():
            return _structural_damage(checkpoint)
        return (f"{MANIFEST} is missing: the checkpoint is incomplete (the run was killed while writing it) "
                "or damaged")
    try:
        files = json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))["files"]
        expected = {str(name): (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable (damaged)"
    for name, (size, sha256) in sorted(expected.items()):
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} is {actual} bytes, not the {size} its manifest records (truncated or damaged)"
        if sha256_of(path) != sha256:
            return f"{name} does not match its sha256 in {MANIFEST} (corrupted)"
    return None


def write_manifest(folder: Path) -> Path:
    """Record the size and sha256 of every file in `folder` (but the manifest) in its manifest, fsynced."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    return write_text(folder / MANIFEST, json.dumps({"files": files}, indent=2) + "\n")


def _structural_damage(checkpoint: Path) -> str | None:
    for path in sorted(checkpoint.rglob("*")):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, SafetensorError):
            return f"{path.relative_to(checkpoint)} does not parse (truncated or damaged)"
    return None


def _warn_if_unverified(checkpoint: Path) -> None:
    if not (checkpoint / MANIFEST).is_file():
        _warn(f"checkpoint {checkpoint} cannot be verified (written before checkpoints carried a {MANIFEST}); "
              "resuming from it unchecked")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


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
    checkpoint, device = Path(checkpoint), _loadable(accelerator.device)
    for number, model in enumerate(models):
        model = accelerator.unwrap_model(model)
        state = load_file(checkpoint / f"trainable_{number}.safetensors", device=device)
        missing = set(trainable_state(model)) - set(state)
        if missing:
            raise CheckpointError(f"checkpoint {checkpoint} lacks {len(missing)} trainable tensors (e.g. {min(missing)})")
        model.load_state_dict(state, strict=False)
    optimizer.load_state_dict(load_optimizer(checkpoint, device))
    match_layouts(optimizer)
    lr_scheduler.load_state_dict(json.loads((checkpoint / SCHEDULE_NAME).read_text(encoding="utf-8")))
    return read_state(checkpoint)


def _loadable(device: torch.device) -> str:
    # Several CPU processes each get device cpu:<process index>, a name safetensors refuses; all are the one CPU.
    return "cpu" if device.type == "cpu" else str(device)


def match_layouts(optimizer: Any) -> None:
    """Give each loaded optimizer moment its parameter's memory layout (a channels_last weight's moments are
    channels_last in a run that never stopped; safetensors gives them back contiguous, and a fused AdamW walks the
    raw memory of both, so a mismatch would pair the wrong elements and break resume-equals-uninterrupted)."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / STATE_NAME).read_text(encoding="utf-8"))


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, state: dict[str, Any], keep: int | None,
                    models: list[torch.nn.Module], optimizer: Any, lr_scheduler: Any) -> Path:
    """Write checkpoint-<step> (all processes call this; the main process writes), then prune to the newest `keep`."""
    def fill(folder: Path) -> None:
        for number, model in enumerate(models):
            save_file(trainable_state(accelerator.unwrap_model(model)), folder / f"trainable_{number}.safetensors")
        save_optimizer(optimizer.state_dict(), folder)
        (folder / SCHEDULE_NAME).write_text(json.dumps(lr_scheduler.state_dict()), encoding="utf-8")
        (folder / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Data-parallel replicas hold identical weights and optimizer states: the main process writes them.
        write_checkpoint(root, step, fill, keep)
    accelerator.wait_for_everyone()
    return Path(root) / f"checkpoint-{step}"


def write_checkpoint(root: Path, step: int, fill: Callable[[Path], None], keep: int | None) -> Path:
    """checkpoint-<step> under `root`, written atomically: `fill` writes the files into a temporary folder, which
    gets its manifest last and is then renamed into place; afterwards only the newest `keep` are kept."""
    root = Path(root)
    final, temporary = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)  # left by a run killed mid-save
    try:
        temporary.mkdir(parents=True)
        fill(temporary)
        for path in sorted(temporary.rglob("*")):
            if path.is_file():
                sync_file(path)
        write_manifest(temporary)
    except BaseException:  # a full disk included: the half-written checkpoint goes, the last good one stays
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if final.exists():
        _remove(final)
    os.rename(temporary, final)
    sync_folder(root)
    for old in complete_checkpoints(root)[:-keep] if keep else []:
        _remove(old)
    return final


def _remove(checkpoint: Path) -> None:
    # Renamed out of sight first, so a removal cut short leaves a hidden folder, never a half checkpoint.
    doomed = checkpoint.with_name(f".{checkpoint.name}.removed")
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed)
