"""Runs that last: atomic checkpoints, exact resume after SIGKILL, a non-finite loss keeping the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from fashionsd_x.train.checkpoints import MARKER, CheckpointError, complete_checkpoints, find_checkpoint
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
    # safetensors and JSON only: resuming never unpickles anything
    assert sorted(path.suffix for path in reached.iterdir()) == ["", ".json", ".json", ".json", ".safetensors",
                                                                 ".safetensors"]
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
