"""Writing safely: one run per output, a refused write in one line, space checked before work."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fashionsd_x.files import (FolderInUseError, StorageError, check_writable, claim, lock_path, save_safetensors,
                               storage_problem)

HOLD = """import sys, time
from fashionsd_x.files import claim
with claim(sys.argv[1], "fsdx test"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(target: Path) -> subprocess.Popen:
    """Another process holding `target` until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_is_refused_naming_the_first_and_a_killed_run_frees_the_folder(tmp_path):
    target = tmp_path / "out"
    process = _holder(target)
    try:
        with pytest.raises(FolderInUseError, match=rf"in use by fsdx test \(pid {process.pid} on "):
            with claim(target, "fsdx generate"):
                pass
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with claim(target, "fsdx generate"):  # the kernel let go of a killed run's lock: taken over
        assert json.loads(lock_path(target).read_text())["holder"] == "fsdx generate"
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no lock file, no folder left behind


def test_folders_made_for_the_lock_go_when_the_run_wrote_nothing(tmp_path):
    with claim(tmp_path / "a" / "b" / "out", "fsdx test"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()
    with claim(tmp_path / "a" / "out", "fsdx test"):
        (tmp_path / "a" / "out").mkdir()
    assert (tmp_path / "a" / "out").is_dir()  # what the run wrote stays


def test_two_commands_started_together_on_one_out_one_is_refused(tmp_path):
    """Two `fsdx data synth` at the same moment on one --out: exactly one writes, the other is one line."""
    command = [sys.executable, "-m", "fashionsd_x", "data", "synth", "--num", "300", "--size", "128", "--out",
               str(tmp_path / "out")]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    [refused] = [err for code, err in results if code == 2]
    assert refused.strip().count("\n") == 0 and "is in use by fsdx data synth (pid" in refused, refused


def test_storage_errors_are_one_line_with_the_path_and_free_space(tmp_path):
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.png"))
    line = storage_problem(error)
    assert line.startswith(f"cannot write {tmp_path / 'x.png'}: no space left on the device (") and "free on" in line
    rust = RuntimeError('Error while serializing: IoError(Os { code: 30, kind: ReadOnlyFilesystem })')
    assert "read-only" in storage_problem(rust, tmp_path / "w.safetensors")
    assert storage_problem(ValueError("bad value")) is None


def test_a_failed_safetensors_write_is_an_os_error_for_the_final_name(tmp_path, monkeypatch):
    """safetensors reports a refused write as text; it comes out as an OSError naming the file asked for."""
    import fashionsd_x.files as files

    def full(*_, **__):
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(files, "save_file", full)
    with pytest.raises(OSError) as caught:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []
    save_file({"w": torch.zeros(2)}, str(tmp_path / "real.safetensors"))  # the real writer is untouched


def test_too_little_space_is_refused_before_work(tmp_path):
    check_writable(tmp_path)
    with pytest.raises(StorageError, match="free on its disk, and this needs at least"):
        check_writable(tmp_path, need=1 << 62)
    assert list(tmp_path.iterdir()) == []  # the probe is gone


def test_a_command_on_a_held_output_is_one_line_naming_the_holder(tmp_path, capsys):
    from tests.test_cli import run_main

    process = _holder(tmp_path / "out")
    try:
        code, err = run_main(capsys, "data", "synth", "--num", "2", "--size", "64", "--out", tmp_path / "out")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert code == 2 and err.count("\n") == 1 and f"is in use by fsdx test (pid {process.pid} on " in err, err
    assert not (tmp_path / "out").exists()
