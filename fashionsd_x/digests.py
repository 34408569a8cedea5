"""Content digests of weights and datasets: what evaluation reuse and recipe staleness are decided by.

A file's sha256 is read once and remembered by (resolved path, size, mtime_ns) in a small JSON cache
(FSDX_DIGEST_CACHE, default ~/.cache/fashionsd_x/digests.json), so a rerun over gigabytes of weights stays
fast. The cache only saves time: a file whose size or mtime changed is hashed again, and a damaged cache is
ignored. A folder's digest is the digest of its determining files (weights, configs, tokenizer files) by
relative name, so moving or copying a model keeps its digest and retraining it in place changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from fashionsd_x.files import sha256_of

# Files in a model folder that describe a run rather than determine the weights or how they are used.
IGNORED_FILES = {"train_result.json", "recipe_inputs.json", "README.md", "build_report.json", "train_config.yaml"}
# Sub-folders of an output folder that hold training by-products, not the model.
IGNORED_DIRS = {"checkpoints", "logs", "validation", "cache"}
DETERMINING_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".yaml", ".arrow"}


def _cache_path() -> Path:
    return Path(os.environ.get("FSDX_DIGEST_CACHE", Path.home() / ".cache" / "fashionsd_x" / "digests.json"))


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, cache: dict[str, dict]) -> None:
    # Best effort and atomic: a read-only home or a concurrent writer must never fail a run or leave half a file.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass


def file_sha256(path: Path | str) -> str:
    """The sha256 (hex) of a file's bytes, cached by resolved path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    key, cache_file = str(path), _cache_path()
    cache = _read_cache(cache_file)
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    value = sha256_of(path)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
    _write_cache(cache_file, cache)
    return value


def determining_files(folder: Path) -> list[Path]:
    """The files of a model or dataset folder that determine what it produces, sorted by relative name."""
    chosen = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(part in IGNORED_DIRS or part.endswith(".stale") or part.startswith(".") for part in parts[:-1]):
            continue
        if path.is_file() and path.name not in IGNORED_FILES and path.suffix in DETERMINING_SUFFIXES:
            chosen.append(path)
    return chosen


def path_sha256(path: Path | str) -> str:
    """sha256 of a file, or of a folder's determining files (relative name and digest of each)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    return combine((str(file.relative_to(path)), file_sha256(file)) for file in determining_files(path))


def combine(parts: Iterable[tuple[str, str]]) -> str:
    """One sha256 of named digests (or any named strings), independent of nothing but their content and order."""
    digest = hashlib.sha256()
    for name, value in parts:
        digest.update(f"{name}\0{value}\n".encode("utf-8"))
    return digest.hexdigest()


def model_sha256(model: str) -> str:
    """Digest of a base model as a user names it: a local file or folder by content; a hub id by the content of
    its locally cached snapshot, or by the id itself when none is cached (it is then downloaded by name)."""
    if Path(model).exists():
        return path_sha256(model)
    try:
        from huggingface_hub import snapshot_download

        return path_sha256(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached, or not a hub id: the name is all that identifies it here
        return combine([("hub", model)])
