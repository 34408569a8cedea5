"""Writing artifacts so that no reader ever sees half of one, and no weights file holds NaN or inf.

Every file is written to a temporary name in its own folder, fsynced, then renamed onto its final name with
os.replace, which is atomic within one filesystem: a run that fails or is killed at any moment leaves the old
file or the new one, never a truncated mix. A model folder (diffusers' save_pretrained, save_lora_weights) is
saved into a hidden staging folder inside its destination first; its weights are checked finite, and only
then is each file moved into place, so refused weights leave nothing behind. Temporary names start with a dot
and end in .tmp, so nothing that lists a model's files mistakes one for part of the model.

A full disk, a read-only place or a refused permission is one line naming the path and the free space
(`storage_problem`), and a folder a command writes belongs to one run at a time (`claim`, a filelock lock).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHUNK = 1 << 20  # bytes read at a time when hashing
# Why the machine refused a write, for the one line that says so.
STORAGE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted"}
# An errno inside a message, for errors raised as text by libraries in other languages (safetensors' Rust IoError,
# pyarrow's ArrowIOError): "[Errno 28]", "os error 28", "code: 28", "errno 28".
ERRNO_IN_TEXT = re.compile(r"(?:\[Errno |os error |code: |errno[ =:]?)(\d+)", re.IGNORECASE)
SQLITE_STORAGE = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EROFS}
MIN_FREE = 1 << 20  # bytes a folder's disk must have free before a command starts writing there
LOCK_SUFFIX = ".fsdx-lock"  # beside the folder it guards: `.NAME.fsdx-lock`, so the folder itself is left as it is
LOCKED_ENV = "FSDX_LOCKED_OUTPUTS"  # folders this process's parent holds (a launcher's workers must not claim them)


class StorageError(OSError):
    """A write the machine refused, or would refuse (too little space free); strerror is the whole line to show."""


class FolderInUseError(RuntimeError):
    """Another run holds the folder a command was asked to write."""


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
    except OSError as error:  # named by the file asked for, not the temporary one that is gone
        raise _renamed(error, path) from error
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
        try:
            save_file(dict(tensors), str(temporary), metadata=dict(metadata) if metadata is not None else None)
        except Exception as error:  # safetensors reports a failed write as text (a Rust IoError), not an OSError
            raise as_os_error(error, temporary) from error
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


def _renamed(error: OSError, path: Path) -> OSError:
    if error.errno not in STORAGE_ERRORS:
        return error
    return type(error)(error.errno, os.strerror(error.errno), str(path))


def error_number(error: BaseException) -> int | None:
    """The errno behind `error` or anything in its chain, also when a library gave it only as text."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        number = getattr(error, "errno", None)
        if isinstance(number, int):
            return number
        if match := ERRNO_IN_TEXT.search(str(error)):
            return int(match.group(1))
        for words, number in SQLITE_STORAGE.items():  # sqlite3 says it in words, with no errno
            if words in str(error):
                return number
        error = error.__cause__ or error.__context__
    return None


def as_os_error(error: Exception, path: Path | str) -> Exception:
    """`error` as an OSError for `path` when it is the machine refusing a write; else `error` itself."""
    number = error_number(error)
    if number not in STORAGE_ERRORS:
        return error
    return OSError(number, os.strerror(number), str(path))


def storage_problem(error: BaseException, where: Path | str | None = None) -> str | None:
    """One line for a write the machine refused (full, read-only, not permitted): the path and the space free
    there; None for any other error. `where`: the path to name when the error names none."""
    if isinstance(error, StorageError):
        return error.strerror
    number = error_number(error)
    if number not in STORAGE_ERRORS:
        return None
    names = [getattr(link, "filename", None) for link in (error, error.__cause__, error.__context__)]
    path = next((str(name) for name in names if name), str(where) if where is not None else "the output")
    return f"cannot write {path}: {STORAGE_ERRORS[number]} ({_free_text(Path(path))})"


def _free_text(path: Path) -> str:
    folder = nearest_folder(path)
    if folder is None:
        return "free space unknown"
    return f"{human_bytes(shutil.disk_usage(folder).free)} free on {folder}'s disk"


def nearest_folder(path: Path) -> Path | None:
    """`path` if it is a folder, else the nearest folder above it that exists (None if none does)."""
    return next((candidate for candidate in (path, *path.parents) if candidate.is_dir()), None)


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def check_writable(folder: Path | str, need: int = MIN_FREE) -> None:
    """Refuse, before any work, a folder that cannot be written or whose disk has under `need` bytes free: the
    folder is created if missing and a probe file is written, synced and removed in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fsdx-probe-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"fsdx")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        problem = storage_problem(_renamed(error, folder))  # the folder asked for, not the probe's name
        if problem is None:
            raise
        raise StorageError(error.errno, problem) from None
    free = shutil.disk_usage(folder).free
    if free < need:
        raise StorageError(errno.ENOSPC, f"cannot write {folder}: {human_bytes(free)} free on its disk, and this "
                                         f"needs at least {human_bytes(need)}; free some space or choose another place")


def lock_path(target: Path | str) -> Path:
    """The lock guarding `target` (a folder or a file): a hidden file beside it, named after it."""
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def claim(target: Path | str, holder: str) -> Iterator[None]:
    """Hold `target` (a folder or file a command writes) for this run: a second run is refused with a
    FolderInUseError naming the first. The lock is the operating system's (flock, through filelock), so a run
    that is killed frees it, and the next run takes it over. `holder`: what this run is, e.g. "fsdx generate"."""
    from filelock import FileLock, Timeout

    target = Path(os.path.abspath(target))
    if str(target) in os.environ.get(LOCKED_ENV, "").split(os.pathsep):
        yield  # the launcher that started this worker holds it
        return
    path = lock_path(target)
    made = _make_folders(path.parent)
    lock = FileLock(path, timeout=0, on_acquired=lambda fd: _describe_holder(fd, holder))
    try:
        lock.acquire()
    except Timeout:
        raise FolderInUseError(f"{target} is in use by {_holder_text(path)}; wait for it to finish, or choose another "
                               "output") from None
    held = os.environ.get(LOCKED_ENV)
    os.environ[LOCKED_ENV] = os.pathsep.join(filter(None, [held, str(target)]))
    try:
        yield
    finally:
        if held is None:
            os.environ.pop(LOCKED_ENV, None)
        else:
            os.environ[LOCKED_ENV] = held
        # Unlinked while held: a run that opened it meanwhile sees a lock with no name and tries again (filelock
        # checks), so the name goes with the run and no empty folder is left by a run that wrote nothing.
        path.unlink(missing_ok=True)
        lock.release()
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty


def _make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; the ones made, outermost first."""
    missing = [candidate for candidate in (folder, *folder.parents) if not candidate.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _describe_holder(fd: int, holder: str) -> None:
    """Write who holds the lock into the lock file, for a refused run's message."""
    record = {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)


def _holder_text(path: Path) -> str:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return f"{record['holder']} (pid {record['pid']} on {record['host']}, started {record['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"
