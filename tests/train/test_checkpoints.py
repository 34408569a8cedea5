"""Runs that last: atomic, verified checkpoints; exact resume after SIGKILL or from the newest intact checkpoint;
damaged checkpoints skipped or refused; a non-finite loss keeping the last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from fashionsd_x.cli import main
from fashionsd_x.train.checkpoints import (
    LEGACY_MARKER,
    MANIFEST,
    MARKER,
    CheckpointError,
    complete_checkpoints,
    find_checkpoint,
)
from fashionsd_x.train.core import NonFiniteLossError
from fashionsd_x.train.lora import LORA_WEIGHTS, train_lora

# Flip, caption dropout, accumulation across epoch ends and a warmup schedule: every kind of state resume restores.
RESUMABLE = dict(max_steps=8, batch_size=2, grad_accum=2, lr=1e-3, resolution=32, seed=5, checkpoint_every=2,
                 keep_checkpoints=2)
OVERRIDES = {"num_validation_images": "0", "random_flip": "true", "caption_dropout": "0.3", "lr_scheduler": "cosine",
             "lr_warmup_steps": "2", "noise_offset": "0.05", "snr_gamma": "5"}


def test_resume_after_sigkill_equals_an_uninterrupted_run(garments, tiny_base, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    train_lora(garments, str(tiny_base), uninterrupted, **RESUMABLE, overrides=OVERRIDES)

    killed = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from fashionsd_x.train.lora import train_lora
        train_lora({str(garments)!r}, {str(tiny_base)!r}, {str(killed)!r}, **{RESUMABLE!r}, overrides={OVERRIDES!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not complete_checkpoints(killed / "checkpoints") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / LORA_WEIGHTS).exists()
    reached = complete_checkpoints(killed / "checkpoints")[-1]
    # safetensors and JSON only (the manifest last): resuming never unpickles anything
    assert sorted(path.name for path in reached.iterdir()) == [
        "lr_scheduler.json", MANIFEST, "optimizer.json", "optimizer.safetensors", "state.json",
        "trainable_0.safetensors"]
    # A checkpoint cut short at a later step must be ignored: no marker, and a leftover temporary folder.
    (killed / "checkpoints" / "checkpoint-6").mkdir(exist_ok=True)
    (killed / "checkpoints" / ".checkpoint-8.tmp").mkdir(exist_ok=True)
    assert find_checkpoint(killed / "checkpoints", "latest") == reached

    result = train_lora(garments, str(tiny_base), killed, **RESUMABLE, overrides=OVERRIDES, resume="latest")
    assert result.steps == 8
    expected, resumed = load_file(uninterrupted / LORA_WEIGHTS), load_file(killed / LORA_WEIGHTS)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6)
    assert [path.name for path in complete_checkpoints(killed / "checkpoints")] == ["checkpoint-6", "checkpoint-8"]


def test_resume_with_other_settings_is_refused(garments, tiny_base, tmp_path):
    out = tmp_path / "run"
    train_lora(garments, str(tiny_base), out, max_steps=1, batch_size=2, resolution=32, checkpoint_every=1,
               overrides={"num_validation_images": "0"})
    with pytest.raises(CheckpointError, match=r"rank 4 -> 8"):
        train_lora(garments, str(tiny_base), out, max_steps=2, batch_size=2, resolution=32, rank=8, resume="latest",
                   overrides={"num_validation_images": "0"})
    with pytest.raises(CheckpointError, match="resume latest"):  # a fresh run must not mix with old checkpoints
        train_lora(garments, str(tiny_base), out, max_steps=2, batch_size=2, resolution=32,
                   overrides={"num_validation_images": "0"})
    with pytest.raises(CheckpointError, match="incomplete"):
        (out / "checkpoints" / "checkpoint-1" / MARKER).unlink()
        train_lora(garments, str(tiny_base), out, max_steps=2, batch_size=2, resolution=32,
                   resume=str(out / "checkpoints" / "checkpoint-1"), overrides={"num_validation_images": "0"})


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(garments, tiny_base, tmp_path):
    out = tmp_path / "diverged"
    # lr 1e30: Adam's first update moves every LoRA weight by ~1e30, so the next forward pass overflows.
    with pytest.raises(NonFiniteLossError, match=r"at step 2.*last good checkpoint is .*checkpoint-1"):
        train_lora(garments, str(tiny_base), out, max_steps=5, batch_size=2, resolution=32, lr=1e30,
                   checkpoint_every=1, overrides={"num_validation_images": "0"})
    assert [path.name for path in complete_checkpoints(out / "checkpoints")] == ["checkpoint-1"]
    assert json.loads((out / "checkpoints" / "checkpoint-1" / "state.json").read_text())["step"] == 1
    assert not (out / LORA_WEIGHTS).exists() and not (out / "train_config.yaml").exists()


# The same run as RESUMABLE, every checkpoint kept: checkpoint-2, -4, -6 and -8.
KEEP_ALL = {name: value for name, value in RESUMABLE.items() if name != "keep_checkpoints"}
KEEP_ALL_OVERRIDES = {**OVERRIDES, "keep_checkpoints": "null"}
WEIGHTS = "trainable_0.safetensors"  # the LoRA's tensors inside a checkpoint


@pytest.fixture(scope="module")
def finished(garments, tiny_base, tmp_path_factory) -> object:
    """An uninterrupted run of KEEP_ALL (its LoRA is what any resume of it must reproduce)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train_lora(garments, str(tiny_base), out, **KEEP_ALL, overrides=KEEP_ALL_OVERRIDES)
    return out


def checkpoints_up_to(finished, out, last: int):
    """OUT with the finished run's checkpoints up to step `last`: a run stopped after writing checkpoint-`last`."""
    for step in range(2, last + 1, 2):
        shutil.copytree(finished / "checkpoints" / f"checkpoint-{step}", out / "checkpoints" / f"checkpoint-{step}")
    return out / "checkpoints"


def flip_middle_bytes(path) -> None:
    """Same-size corruption: invert 8 bytes in the middle of the file (inside the tensor data)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(255 - byte for byte in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(garments, tiny_base, finished, tmp_path,
                                                                    capsys):
    out = tmp_path / "run"
    root = checkpoints_up_to(finished, out, 6)
    weights = root / "checkpoint-6" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    result = train_lora(garments, str(tiny_base), out, **KEEP_ALL, overrides=KEEP_ALL_OVERRIDES, resume="latest")
    printed = capsys.readouterr()
    assert f"warning: skipping damaged checkpoint {root / 'checkpoint-6'}: {WEIGHTS} is " in printed.err
    assert "(truncated or damaged)" in printed.err
    assert f"resumed from {root / 'checkpoint-4'} at step 4" in printed.out
    assert result.steps == 8
    expected, resumed = load_file(finished / LORA_WEIGHTS), load_file(out / LORA_WEIGHTS)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6)
    assert find_checkpoint(root, "latest") == root / "checkpoint-8"  # the damaged one was written again
    assert find_checkpoint(root, str(root / "checkpoint-6")) == root / "checkpoint-6"


@pytest.mark.parametrize(("damage", "named"), [
    (lambda folder: flip_middle_bytes(folder / WEIGHTS), f"{WEIGHTS} does not match its sha256"),
    (lambda folder: flip_middle_bytes(folder / "optimizer.safetensors"), "optimizer.safetensors does not match"),
    (lambda folder: (folder / "state.json").unlink(), "state.json is missing"),
    (lambda folder: (folder / MANIFEST).unlink(), f"{MANIFEST} is missing: the checkpoint is incomplete"),
    (lambda folder: (folder / MANIFEST).write_text('{"files": '), f"{MANIFEST} is unreadable"),
])
def test_latest_skips_a_damaged_checkpoint_naming_the_file(finished, tmp_path, capsys, damage, named):
    root = checkpoints_up_to(finished, tmp_path, 8)
    size = (root / "checkpoint-8" / WEIGHTS).stat().st_size
    damage(root / "checkpoint-8")
    damage(root / "checkpoint-6")

    assert find_checkpoint(root, "latest") == root / "checkpoint-4"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    for line, step in zip(lines, (8, 6)):
        assert line.startswith(f"warning: skipping damaged checkpoint {root / f'checkpoint-{step}'}: ")
        assert named in line
    if "sha256" in named:  # the corruption kept the size: only the bytes' digest can tell
        assert (root / "checkpoint-8" / WEIGHTS).stat().st_size == size


def test_no_intact_checkpoint_starts_a_new_run_with_a_warning(finished, tmp_path, capsys):
    root = checkpoints_up_to(finished, tmp_path, 4)
    for step in (2, 4):
        flip_middle_bytes(root / f"checkpoint-{step}" / WEIGHTS)
    assert find_checkpoint(root, "latest") is None
    assert capsys.readouterr().err.count("warning: skipping damaged checkpoint") == 2


def test_a_damaged_checkpoint_named_explicitly_is_a_one_line_error_exit_2(garments, tiny_base, finished,
                                                                          tmp_path, capsys):
    out = tmp_path / "run"
    root = checkpoints_up_to(finished, out, 6)
    flip_middle_bytes(root / "checkpoint-6" / WEIGHTS)
    with pytest.raises(CheckpointError, match=f"{WEIGHTS} does not match its sha256"):
        find_checkpoint(root, str(root / "checkpoint-6"))

    code = main(["train", "lora", "--data", str(garments), "--base", str(tiny_base), "--out", str(out),
                 "--max-steps", "8", "--batch-size", "2", "--grad-accum", "2", "--resolution", "32", "--seed", "5",
                 "--resume", str(root / "checkpoint-6"), "--num-validation-images", "0"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("fsdx train lora: error: --resume ") and error.count("\n") == 1
    assert f"{WEIGHTS} does not match its sha256" in error and "pass `latest`" in error
    assert not (out / LORA_WEIGHTS).exists() and not (out / "logs").exists()  # refused before any model loaded


def test_a_checkpoint_from_before_manifests_resumes_with_a_warning(finished, tmp_path, capsys):
    root = checkpoints_up_to(finished, tmp_path, 6)
    for step in (4, 6):  # what earlier versions wrote: the files and a COMPLETE marker
        (root / f"checkpoint-{step}" / MANIFEST).unlink()
        (root / f"checkpoint-{step}" / LEGACY_MARKER).write_text(f"{step}\n")
    assert [path.name for path in complete_checkpoints(root)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    assert find_checkpoint(root, str(root / "checkpoint-6")) == root / "checkpoint-6"
    assert find_checkpoint(root, "latest") == root / "checkpoint-6"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("checkpoint-6 cannot be verified" in line for line in lines)
    # Unverifiable, but a truncated file still shows: it no longer parses.
    weights = root / "checkpoint-6" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-100])
    assert find_checkpoint(root, "latest") == root / "checkpoint-4"
    assert f"{WEIGHTS} does not parse" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=f"{WEIGHTS} does not parse"):
        find_checkpoint(root, str(root / "checkpoint-6"))
