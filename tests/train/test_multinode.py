"""Training across machines, as two "machines" on this one: accelerate's multi-node rendezvous over localhost, one
CPU process (gloo) each. They train what one process with the same global batch trains; a machine killed mid-run
stops the other within a minute with one line, and both restarted with --resume latest end where an uninterrupted
run ends; a resumed run never records a longer run as a shorter one."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from fashionsd_x.cli import main
from fashionsd_x.train.checkpoints import complete_checkpoints
from fashionsd_x.train.lora import LORA_WEIGHTS, train_lora

# Flips and caption dropout make every process's share of the draws matter; 8 garments are 2 global batches of 4.
SETTINGS = dict(max_steps=4, batch_size=2, lr=1e-3, resolution=32, seed=3, checkpoint_every=2)
OVERRIDES = {"num_validation_images": "0", "random_flip": "true", "caption_dropout": "0.3"}
# CPU processes for accelerate's multi-process launcher; a short peer timeout, so even a machine that vanished
# without closing its connections would stop the other well within the minute.
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "FSDX_PEER_TIMEOUT": "30"}
LAUNCH_SECONDS = 300  # a generous bound for one launch on a busy 2-core runner (about 40 s idle)


def options(garments: Path, base: Path, out: Path, **changes: object) -> list[str]:
    """`fsdx train lora` options of SETTINGS (with `changes`; None leaves a setting out)."""
    settings = {**SETTINGS, **OVERRIDES, **changes}
    flags = [[f"--{name.replace('_', '-')}", str(value)] for name, value in settings.items() if value is not None]
    return ["--data", str(garments), "--base", str(base), "--out", str(out), *sum(flags, [])]


def under_accelerate(rank: int, port: int, fsdx_options: list[str]) -> list[str]:
    """Machine `rank` of 2 started by accelerate launch, which runs `python -m fashionsd_x train lora` there."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
            "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "fashionsd_x", "train", "lora", *fsdx_options]


def by_fsdx(rank: int, port: int, fsdx_options: list[str]) -> list[str]:
    """Machine `rank` of 2 started by fsdx itself (it runs accelerate launch with these multi-node settings)."""
    return [sys.executable, "-m", "fashionsd_x", "train", "lora", *fsdx_options, "--num-processes", "2",
            "--num-machines", "2", "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1",
            "--main-process-port", str(port)]


def start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as output:  # the launcher keeps its own copy of the file
        return subprocess.Popen(command, env=ENVIRONMENT, stdout=output, stderr=subprocess.STDOUT)


def finish(machines: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait for every machine; each must succeed (else its log's end is the failure message)."""
    try:
        for machine, log in zip(machines, logs):
            code = machine.wait(timeout=LAUNCH_SECONDS)
            assert code == 0, f"{log.name} exited {code}: {log.read_text(errors='replace')[-3000:]}"
    finally:
        for machine in machines:
            kill_tree(machine)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (accelerate's workers run in sessions of their own, so a
    process group kill would miss them)."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(garments, tiny_base, one_thread, tmp_path_factory) -> Path:
    """One process with the two machines' global batch (2 x 2): checkpoints at steps 2 and 4, the LoRA at 4."""
    out = tmp_path_factory.mktemp("one") / "run"
    train_lora(garments, str(tiny_base), out, **{**SETTINGS, "batch_size": 4}, overrides=OVERRIDES)
    return out


@pytest.fixture(scope="module")
def two_machines(garments, tiny_base, tmp_path_factory) -> Path:
    """The same run on two machines of one process each, both started by accelerate launch."""
    folder = tmp_path_factory.mktemp("two")
    port, logs = free_port(), [folder / "machine0.log", folder / "machine1.log"]
    fsdx_options = options(garments, tiny_base, folder / "run")
    finish([start(under_accelerate(rank, port, fsdx_options), log) for rank, log in enumerate(logs)], logs)
    return folder / "run"


def assert_same_lora(out: Path, expected_out: Path, atol: float) -> float:
    """Every tensor of OUT's LoRA within `atol` of EXPECTED_OUT's; returns the largest difference."""
    expected, actual = load_file(expected_out / LORA_WEIGHTS), load_file(out / LORA_WEIGHTS)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=atol)
    return max(float((actual[name] - expected[name]).abs().max()) for name in expected)


def test_two_machines_train_what_one_process_of_their_global_batch_trains(two_machines, one_process):
    trained = load_file(two_machines / LORA_WEIGHTS)
    assert max(float(tensor.abs().max()) for tensor in trained.values()) > 1e-2  # far from its start (B = 0)
    difference = assert_same_lora(two_machines, one_process, atol=1e-5)
    print(f"two machines vs one process: largest weight difference {difference:.2e}")
    # Only machine 0's first process writes: one set of checkpoints, the artifact and its description.
    assert [path.name for path in complete_checkpoints(two_machines / "checkpoints")] == [
        "checkpoint-2", "checkpoint-4"]
    assert "2 x CPU" in (two_machines / "README.md").read_text()


def test_a_killed_machine_stops_the_other_with_one_line_and_both_resume_exactly(garments, tiny_base, two_machines,
                                                                               tmp_path):
    out, logs = tmp_path / "run", [tmp_path / "machine0.log", tmp_path / "machine1.log"]
    # Machine 0 is started by fsdx, whose last word is its own; machine 1 by accelerate launch (either launcher
    # meets the same rendezvous). The run asks for more steps than it will get: it is still training when machine 1
    # is killed.
    port, fsdx_options = free_port(), options(garments, tiny_base, out, max_steps=40)
    machines = [start(by_fsdx(0, port, fsdx_options), logs[0]), start(under_accelerate(1, port, fsdx_options), logs[1])]
    try:
        deadline = time.monotonic() + LAUNCH_SECONDS
        while not complete_checkpoints(out / "checkpoints") and time.monotonic() < deadline:
            assert machines[0].poll() is None, logs[0].read_text(errors="replace")[-3000:]
            time.sleep(0.01)
        kill_tree(machines[1])
        killed = time.monotonic()
        code = machines[0].wait(timeout=60)
        seconds = time.monotonic() - killed
    finally:
        for machine in machines:
            kill_tree(machine)
    last = logs[0].read_text(errors="replace").strip().splitlines()[-1]
    assert code == 2 and seconds < 60
    assert last.startswith("fsdx train lora: error: a training process stopped: lost contact with another "
                           "process of the run (") and "restart every machine with --resume latest" in last
    assert "checkpoints/checkpoint-" in last and not (out / LORA_WEIGHTS).exists()
    print(f"machine 0 exited {seconds:.1f} s after machine 1 was killed")

    # Both machines restarted (by fsdx on machine 0 again), now asking for the uninterrupted run's 4 steps.
    port, fsdx_options = free_port(), [*options(garments, tiny_base, out), "--resume", "latest"]
    finish([start(by_fsdx(0, port, fsdx_options), logs[0]), start(under_accelerate(1, port, fsdx_options), logs[1])],
           logs)
    assert "resumed from" in logs[0].read_text(errors="replace")
    difference = assert_same_lora(out, two_machines, atol=1e-6)
    print(f"resumed vs uninterrupted: largest weight difference {difference:.2e}")


@pytest.mark.parametrize(("shorter", "steps"), [({"max_steps": 3}, 3), ({"max_steps": None, "epochs": 1}, 2)])
def test_resuming_a_longer_run_as_a_shorter_one_is_refused_before_any_work(garments, tiny_base, one_process,
                                                                           capsys, shorter, steps):
    before = {path: path.stat().st_mtime_ns for path in one_process.rglob("*")}
    command = [*options(garments, tiny_base, one_process, batch_size=4, **shorter), "--resume", "latest"]
    assert main(["train", "lora", *command]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fsdx train lora: error: checkpoint ") and error.count("\n") == 1
    assert f"checkpoint-4 is at step 4, past the {steps} steps this run asks for" in error
    assert {path: path.stat().st_mtime_ns for path in one_process.rglob("*")} == before  # nothing written


def test_resuming_with_another_number_of_processes_is_refused(garments, tiny_base, two_machines, capsys):
    # The two machines' checkpoint, resumed by one process: each process's batch and data position would change.
    assert main(["train", "lora", *options(garments, tiny_base, two_machines), "--resume", "latest"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fsdx train lora: error: checkpoint ") and error.count("\n") == 1
    assert "was written by a run of 2 processes and this run has 1" in error


@pytest.mark.parametrize(("flags", "message"), [
    (["--num-processes", "2", "--num-machines", "2"], "num_machines > 1 needs main_process_ip"),
    (["--num-machines", "2", "--main-process-ip", "127.0.0.1"], r"num_processes \(1, over all machines\) must be"),
    (["--num-processes", "2", "--num-machines", "2", "--machine-rank", "2", "--main-process-ip", "127.0.0.1"],
     r"machine_rank must be in 0\.\.1"),
])
def test_contradictory_machine_settings_are_one_line(garments, tiny_base, tmp_path, capsys, flags, message):
    assert main(["train", "lora", *options(garments, tiny_base, tmp_path / "run"), *flags]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.search(message, error)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_peer_timeout_is_one_line(garments, tiny_base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FSDX_PEER_TIMEOUT", "soon")
    assert main(["train", "lora", *options(garments, tiny_base, tmp_path / "run")]) == 2
    assert "FSDX_PEER_TIMEOUT must be a positive number of seconds, got 'soon'" in capsys.readouterr().err
