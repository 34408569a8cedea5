"""VAE pretraining on tiny real AutoencoderKLs: it learns, it loads, resume equals uninterrupted, files are safe."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize
from fashionsd_x.train.checkpoints import MARKER, CheckpointError
from fashionsd_x.train.data import image_tensor, open_dataset
from fashionsd_x.train.vae import VaeTrainConfig, build_vae, pretrain_vae, reconstruction_loss, train_vae

# 32 px, two blocks of 8 and 16 channels (2x downsampling): a few ms per step on one thread.
TINY = VaeTrainConfig(resolution=32, block_out_channels=(8, 16), batch_size=4, lr=2e-3, max_steps=40,
                      checkpoint_every=None)


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def garments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic garments built at 32 px (about 14 train, 2 test)."""
    root = tmp_path_factory.mktemp("vae_data")
    synthesize(root / "raw", num=16, seed=1, size=64)
    build_dataset("folder", root / "raw", root / "built", resolution=32)
    return root / "built"


def fixed_batch(data: Path) -> torch.Tensor:
    split = open_dataset(data, ("image",))["train"]
    return torch.stack([image_tensor(split[i]["image"], 32) for i in range(8)])


def test_loss_drops_and_the_vae_loads(garments, tmp_path):
    vae_dir = train_vae(TINY, garments, tmp_path)
    batch = fixed_batch(garments)
    before = reconstruction_loss(build_vae(TINY), batch)  # the run's initial weights (same config and seed)
    trained = AutoencoderKL.from_pretrained(vae_dir)
    after = reconstruction_loss(trained, batch)
    assert after < 0.6 * before, (before, after)
    assert trained.config.block_out_channels == [8, 16] and trained.config.scaling_factor > 0
    assert (vae_dir / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "vae_train.json").is_file()


def test_resume_equals_an_uninterrupted_run(garments, tmp_path):
    whole = train_vae(replace(TINY, max_steps=10), garments, tmp_path / "whole")
    halfway = replace(TINY, max_steps=5, checkpoint_every=5)  # a run stopped after its step-5 checkpoint
    train_vae(halfway, garments, tmp_path / "split")
    split = train_vae(replace(halfway, max_steps=10), garments, tmp_path / "split", resume="latest")
    first, second = load_file(whole / "diffusion_pytorch_model.safetensors"), \
        load_file(split / "diffusion_pytorch_model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-6, rtol=0)
    fresh = load_file(tmp_path / "split" / "checkpoints" / "checkpoint-5" / "vae.safetensors")
    assert any(not torch.equal(fresh[name], second[name]) for name in fresh)  # the resumed run really trained on


def test_a_run_resumed_at_its_last_step_reports_the_loss_it_finished_with(garments, tmp_path):
    """Resumed with nothing left to train (as the recipe does when it runs again), the report keeps the run's
    final loss; it once wrote NaN there, which is not JSON."""
    config = replace(TINY, max_steps=6, checkpoint_every=6)
    train_vae(config, garments, tmp_path)
    finished = json.loads((tmp_path / "vae_train.json").read_text(encoding="utf-8"))
    train_vae(config, garments, tmp_path, resume="latest")
    again = json.loads((tmp_path / "vae_train.json").read_text(encoding="utf-8"),
                       parse_constant=lambda name: pytest.fail(f"{name} in vae_train.json"))
    assert again["start_step"] == 6 and 0 < again["final_l1"] == finished["final_l1"]


def test_checkpoints_hold_only_safetensors_json_and_the_marker(garments, tmp_path):
    train_vae(replace(TINY, max_steps=6, checkpoint_every=2), garments, tmp_path)
    folders = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert folders == ["checkpoint-4", "checkpoint-6"]  # keep_checkpoints=2, no temporary folder left
    for folder in (tmp_path / "checkpoints").iterdir():
        names = {path.name for path in folder.iterdir()}
        assert MARKER in names
        assert all(name == MARKER or name.endswith((".safetensors", ".json")) for name in names), names
    with pytest.raises(CheckpointError, match="seed differ"):  # another run's checkpoint is refused, not mixed in
        train_vae(replace(TINY, max_steps=8, seed=1), garments, tmp_path, resume="latest")


def test_a_folder_that_is_not_a_dataset_is_a_one_line_value_error(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("not a dataset")
    with pytest.raises(ValueError) as error:
        pretrain_vae(tmp_path / "photos", tmp_path / "out", max_steps=1)
    assert "\n" not in str(error.value) and "fsdx data build" in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a missing folder: open_dataset's own error
        pretrain_vae(tmp_path / "missing", tmp_path / "out", max_steps=1)


def test_pretrain_vae_trains_the_default_architecture(garments, tmp_path):
    vae_dir = pretrain_vae(garments, tmp_path, max_steps=1, batch_size=2, resolution=32, checkpoint_every=1)
    config = AutoencoderKL.from_pretrained(vae_dir).config
    assert config.block_out_channels == [16, 32, 64] and config.sample_size == 32
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-1"]


def test_config_rejects_contradictions():
    with pytest.raises(ValueError, match="resolution=30"):
        VaeTrainConfig(resolution=30, block_out_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="checkpoint_every=0"):
        VaeTrainConfig(checkpoint_every=0)
    with pytest.raises(ValueError, match="channels_per_group=3 must divide"):
        VaeTrainConfig(channels_per_group=3)
    with pytest.raises(ValueError, match="crop=48 must be"):
        VaeTrainConfig(resolution=64, crop=48, block_out_channels=(8, 16, 32, 32, 32, 32))
    # Groups of channels_per_group (4) channels: a one-channel group would erase each channel's mean (the colour).
    assert VaeTrainConfig().norm_groups == 4 and VaeTrainConfig(block_out_channels=(32, 64, 128)).norm_groups == 8
