"""Fault injection for the suite: the machine refusing writes (a full disk, a read-only mount) in any command.

`failwrite.c`, loaded with LD_PRELOAD, makes writes under one folder fail after a given number; `driver.py` runs
commands through `fsdx`'s own entry point under it; `partial_files` finds what a failed command left half done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NOT_WHOLE = (".tmp", ".building", ".partial")  # names a write in progress carries


def build_shim(folder: Path) -> Path:
    """Compile failwrite.c into `folder` with the system's C compiler."""
    library = folder / "failwrite.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(HERE / "failwrite.c"), "-ldl"],
                   check=True, capture_output=True, text=True)
    return library


def run_cases(shim: Path, cases: list[dict], work: Path) -> list[dict]:
    """Run `cases` (see driver.py) in one process under the shim; their results, in order."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    env = {**os.environ, "LD_PRELOAD": str(shim), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, "-m", "tests.faults.driver", str(work / "cases.json"),
                                str(work / "results.json")], env=env, cwd=work, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads((work / "results.json").read_text(encoding="utf-8"))


def partial_files(folder: Path) -> list[str]:
    """What under `folder` is not whole: temporary names, empty files, and PNG, JSON, JSONL, safetensors or
    Markdown files that do not read back; each with the reason."""
    found = []
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        if any(part.endswith(NOT_WHOLE) for part in path.relative_to(folder).parts):
            found.append(f"{path}: a write in progress")
        elif path.is_file() and (problem := _unreadable(path)):
            found.append(f"{path}: {problem}")
    return found


def _unreadable(path: Path) -> str:
    if path.stat().st_size == 0 and not path.name.startswith("."):
        return "empty"
    try:
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                [handle.get_tensor(key) for key in handle.keys()]
        elif path.suffix in (".md", ".yaml", ".txt", ".html"):
            path.read_text(encoding="utf-8")
    except Exception as error:  # noqa: BLE001 - any failure to read back is the finding
        return f"does not read back ({type(error).__name__}: {error})"
    return ""


def gcc_available() -> bool:
    return shutil.which("gcc") is not None
