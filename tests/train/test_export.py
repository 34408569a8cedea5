"""What training writes at the end: refused whole when a weight is NaN or inf, and written atomically, so a
failure mid-export leaves the earlier files as they were and no partial or temporary file behind."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fashionsd_x.files import NonFiniteWeightsError, atomic_path, export_folder, write_text
from fashionsd_x.train.checkpoints import write_manifest
from fashionsd_x.train.lora import KOHYA_WEIGHTS, LORA_WEIGHTS, train_lora

FAST = {"num_validation_images": "0"}

RUN = dict(max_steps=2, batch_size=2, lr=1e-3, resolution=32, seed=4, checkpoint_every=2)


@pytest.fixture(scope="module")
def finished(garments, tiny_base, tmp_path_factory):
    """A 2-step LoRA run with its checkpoint-2: resuming it at max_steps 2 trains nothing and only exports."""
    out = tmp_path_factory.mktemp("export") / "run"
    train_lora(garments, str(tiny_base), out, **RUN, overrides=FAST)
    return out


def everything_in(folder) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and "checkpoints" not in path.parts and "logs" not in path.parts}


def test_non_finite_weights_are_refused_and_nothing_is_exported(garments, tiny_base, finished, tmp_path):
    out = tmp_path / "run"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    shutil.copytree(finished / "checkpoints" / "checkpoint-2", checkpoint)
    # Weights gone bad without damage to the files: the manifest is written again, so the checkpoint verifies.
    weights = load_file(checkpoint / "trainable_0.safetensors")
    name = next(key for key in sorted(weights) if "lora_B" in key)
    weights[name][0, 0] = float("nan")
    save_file(weights, checkpoint / "trainable_0.safetensors")
    write_manifest(checkpoint)

    with pytest.raises(NonFiniteWeightsError) as caught:
        train_lora(garments, str(tiny_base), out, **RUN, overrides=FAST, resume="latest")
    message = str(caught.value)
    assert "\n" not in message
    assert f"{LORA_WEIGHTS}: tensor unet.{name.replace('.default', '')} holds 1 NaN or inf values" in message
    # Nothing exported: no weights, no config or card that would describe them, no staging folder left.
    assert sorted(path.name for path in out.iterdir()) == ["checkpoints", "logs"]


def test_a_failing_export_leaves_the_earlier_files_whole(garments, tiny_base, finished, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = everything_in(out)

    def disk_full(tensors, filename, metadata=None):  # the kohya file's serializer dies half-way through
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fashionsd_x.train.lora.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train_lora(garments, str(tiny_base), out, **RUN, overrides=FAST, resume="latest")
    # The LoRA file written before the failure was not moved in either: every file is the earlier run's.
    assert everything_in(out) == before
    assert not [path for path in out.rglob(".*")]  # no temporary file or staging folder left behind
    assert {LORA_WEIGHTS, KOHYA_WEIGHTS} <= set(before)


def test_export_folder_moves_files_in_only_when_all_are_written_and_finite(tmp_path):
    folder = tmp_path / "model"
    write_text(folder / "config.json", "{}")
    with export_folder(folder) as staging:
        (staging / "sub").mkdir()
        save_file({"w": torch.ones(3)}, staging / "sub" / "a.safetensors")
        write_text(staging / "config.json", '{"new": 1}')
    assert load_file(folder / "sub" / "a.safetensors")["w"].tolist() == [1.0, 1.0, 1.0]
    assert (folder / "config.json").read_text() == '{"new": 1}'

    with pytest.raises(NonFiniteWeightsError, match=r"b\.safetensors: tensor w holds 1 NaN or inf"), \
            export_folder(folder) as staging:
        save_file({"w": torch.tensor([1.0, float("inf")])}, staging / "b.safetensors")
        write_text(staging / "config.json", '{"newer": 2}')
    assert not (folder / "b.safetensors").exists() and (folder / "config.json").read_text() == '{"new": 1}'
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "sub"]


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "train_result.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError, match="serializer failed"), atomic_path(path) as temporary:
        temporary.write_text("half of the new")
        raise RuntimeError("serializer failed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["train_result.json"]
