"""Writing artifacts so that no reader ever sees half of one, and no weights file holds NaN or inf.

Every file is written to a temporary name in its own folder, fsynced, then renamed onto its final name with
os.replace, which is atomic within one filesystem: a run that fails or is killed at any moment leaves the old
file or the new one, never a truncated mix. A model folder (diffusers' save_pretrained, save_lora_weights) is
saved into a hidden staging folder inside its destination first; its weights are checked finite, and only
then is each file moved into place, so refused weights leave nothing behind. Temporary names start with a dot
and end in .tmp, so nothing that lists a model's files mistakes one for part of the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHUNK = 1 << 20  # bytes read at a time when hashing


class NonFiniteWeightsError(ValueError):
    """Weights about to be exported hold NaN or inf; nothing was written."""


def sha256_of(path: Path | str) -> str:
    """The sha256 (hex) of a file's bytes as they are on disk now, never cached.

    For verifying integrity: digests.file_sha256 remembers digests by size and mtime, which a flipped byte keeps.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without an error,
    removed when it raises (the old `path`, if any, is then untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        sync_file(temporary)
        os.replace(temporary, path)
        sync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path | str,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """safetensors.torch.save_file, atomically."""
    with atomic_path(path) as temporary:
        save_file(dict(tensors), str(temporary), metadata=dict(metadata) if metadata is not None else None)
    return Path(path)


@contextlib.contextmanager
def export_folder(folder: Path | str) -> Iterator[Path]:
    """A staging folder to save a model into (save_pretrained, save_lora_weights, save_safetensors, ...).

    When the block ends without an error, every staged .safetensors file is checked finite (NonFiniteWeightsError
    names the file and tensor, and nothing is moved), then each staged file replaces its namesake in `folder`
    (sub-folders kept, other files of `folder` left alone). The staging folder is removed either way.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".export-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        yield staging
        files = sorted(path for path in staging.rglob("*") if path.is_file())
        for path in files:
            if path.suffix == ".safetensors":
                check_finite_file(path, folder / path.relative_to(staging))
        for path in files:
            sync_file(path)
        # Weights first: a move cut short leaves new weights beside an old config rather than the reverse,
        # and each file on its own is always whole.
        for path in sorted(files, key=lambda p: p.suffix != ".safetensors"):
            target = folder / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        for parent in sorted({(folder / path.relative_to(staging)).parent for path in files}):
            sync_folder(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_finite_file(path: Path, name: Path | str | None = None) -> None:
    """Raise NonFiniteWeightsError naming the first tensor of a safetensors file that holds NaN or inf (one
    tensor in memory at a time; `name`: how to call the file in the message)."""
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            _check_tensor(key, handle.get_tensor(key), str(name or path))


def _check_tensor(name: str, tensor: torch.Tensor, source: str) -> None:
    if not tensor.is_floating_point():
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise NonFiniteWeightsError(f"{source}: tensor {name} holds {bad} NaN or inf values (of {tensor.numel()}); "
                                    "refusing to export non-finite weights, nothing was written")


def sync_file(path: Path) -> None:
    """Flush a file's bytes to disk (before the rename that publishes it)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
