"""The sketch-consistency loss (train/consistency.py): its parts against the evaluation's own masks, and in
ControlNet training (recorded, repeatable, resumable, and able to move the ControlNet towards the region)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from datasets import load_from_disk
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from fashionsd_x.data.images import pad_to_square
from fashionsd_x.data.regions import garment_mask
from fashionsd_x.data.synth import render_garment, sample_spec
from fashionsd_x.models.base import load_base
from fashionsd_x.train.config import ConfigError
from fashionsd_x.train.consistency import consistency_loss, predicted_clean_latents, soft_garment, soft_iou_loss
from fashionsd_x.train.controlnet import CONTROLNET_WEIGHTS, ControlNetMethod, train_controlnet
from fashionsd_x.train.config import ControlNetTrainConfig
from fashionsd_x.train.data import TrainItems, region_tensor
from tests.train.conftest import FAST, RUN

CONSISTENT = {"consistency_weight": "1.0", "random_flip": "true", **FAST}


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_clean_latents_are_recovered_exactly_from_the_true_target(kind):
    scheduler = DDPMScheduler(prediction_type=kind)
    clean, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([0, 500, 990])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = noise if kind == "epsilon" else scheduler.get_velocity(clean, noise, timesteps)
    recovered = predicted_clean_latents(noisy, target, timesteps, scheduler.alphas_cumprod, kind)
    assert torch.allclose(recovered, clean, atol=1e-3 if kind == "epsilon" else 1e-5)


def test_the_soft_garment_is_the_evaluations_garment_mask_made_smooth():
    rng = np.random.default_rng(0)
    for seed in range(6):
        photo = render_garment(sample_spec(rng), 64, seed)
        soft = soft_garment(pixels(photo))[0, 0].numpy()
        ink = (np.asarray(photo.convert("RGB")) < 245).any(axis=2)  # garment_mask's test before its clean-up
        assert ((soft > 0.5) == ink).mean() > 0.99
        assert soft[~garment_mask(photo)].mean() < 0.05  # paper reads as paper
        assert soft[garment_mask(photo) & ink].mean() > 0.9  # cloth, even white cloth, reads as garment


def test_soft_iou_loss_is_zero_on_the_region_and_one_off_it():
    region = torch.zeros(2, 1, 16, 16)
    region[:, :, 4:12, 4:12] = 1
    assert torch.allclose(soft_iou_loss(region, region), torch.zeros(2))
    assert torch.allclose(soft_iou_loss(1 - region, region), torch.ones(2))
    half = region.clone()
    half[:, :, 4:12, 8:12] = 0
    assert torch.allclose(soft_iou_loss(half, region), torch.full((2,), 0.5))


def test_items_carry_the_photos_region_kept_per_row(garments, tiny_base):
    split = load_from_disk(str(garments))["train"]
    tokenizer = CLIPTokenizer.from_pretrained(tiny_base / "tokenizer")
    items = TrainItems(split, tokenizer, resolution=32, control=True, region=True)
    expected = garment_mask(pad_to_square(split[1]["image"].convert("RGB"), 32))
    assert torch.equal(items[1]["region"][0], torch.from_numpy(expected)) and expected.mean() > 0.05
    items[1]["region"].fill_(False)  # a copy: what the memo keeps is not touched
    assert torch.equal(items[1]["region"][0], torch.from_numpy(expected))
    assert "region" not in TrainItems(split, tokenizer, resolution=32, control=True)[1]


def test_consistency_training_is_recorded_repeatable_and_differs(garments, tiny_base, tmp_path):
    runs = [train_controlnet(garments, str(tiny_base), tmp_path / name, overrides=CONSISTENT, **RUN)
            for name in "ab"]
    plain = train_controlnet(garments, str(tiny_base), tmp_path / "plain",
                             overrides={**CONSISTENT, "consistency_weight": "0"}, **RUN)
    weights = [load_file(tmp_path / name / CONTROLNET_WEIGHTS) for name in ("a", "b", "plain")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert any(not torch.equal(weights[0][key], weights[2][key]) for key in weights[0])
    assert runs[0].final_loss > plain.final_loss  # the consistency term is part of the loss
    assert yaml.safe_load((tmp_path / "a" / "train_config.yaml").read_text())["consistency_weight"] == 1.0


def test_consistency_training_with_moving_augmentation_resumes_exactly(garments, tiny_base, tmp_path):
    overrides = {**CONSISTENT, "checkpoint_every": "2",
                 "sketch_augment": "{probability: 1.0, scale_range: [0.6, 1.0], shift: 0.1}"}
    train_controlnet(garments, str(tiny_base), tmp_path / "whole", overrides=overrides, **RUN)
    train_controlnet(garments, str(tiny_base), tmp_path / "split", overrides=overrides, **{**RUN, "max_steps": 2})
    train_controlnet(garments, str(tiny_base), tmp_path / "split", overrides=overrides, resume="latest", **RUN)
    whole, split = (load_file(tmp_path / name / CONTROLNET_WEIGHTS) for name in ("whole", "split"))
    assert all(torch.equal(whole[key], split[key]) for key in whole)


def test_the_loss_moves_the_controlnet_towards_the_region(garments):
    """Optimising the consistency loss alone on one batch lowers it: its gradient reaches the ControlNet through
    the frozen UNet and VAE. On the embedded model at its 128 px (a random tiny VAE decodes to flat grey, where
    the soft mask is saturated and passes no gradient), from a fresh ControlNet."""
    torch.manual_seed(0)
    config = ControlNetTrainConfig(data=str(garments), base="tiny", resolution=128, consistency_weight=1.0)
    base = load_base("tiny")
    for frozen in (base.unet, base.vae, base.text_encoder):  # as a training session freezes them
        frozen.requires_grad_(False)
    method = ControlNetMethod(base, config)
    method.prepared = [method.controlnet]
    split = load_from_disk(str(garments))["train"]
    items = [TrainItems(split, base.tokenizer, 128, control=True, region=True)[i] for i in range(4)]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("control", "region", "pixels")}
    with torch.no_grad():
        text = base.text_encoder(torch.stack([item["input_ids"] for item in items]))[0]
        latents = base.vae.encode(batch["pixels"]).latent_dist.mean * base.vae.config.scaling_factor
    timesteps = torch.tensor([100, 300, 500, 700])
    noisy = base.noise_scheduler.add_noise(latents, torch.randn(latents.shape), timesteps)
    optimizer = torch.optim.Adam(method.controlnet.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = method.extra_loss(noisy, method.predict(noisy, timesteps, text, batch), timesteps, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_a_negative_weight_is_refused(garments, tiny_base, tmp_path):
    with pytest.raises(ConfigError, match="consistency_weight must be >= 0"):
        train_controlnet(garments, str(tiny_base), tmp_path / "out", overrides={**FAST, "consistency_weight": "-1"},
                         **RUN)
