"""LoRA training end to end on a tiny base: it learns, and what it writes loads in diffusers and kohya format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import load_from_disk
from safetensors import safe_open
from safetensors.torch import load_file

from fashionsd_x.models.base import load_base
from fashionsd_x.models.export import export_lora
from fashionsd_x.train.config import LoraTrainConfig, read_yaml
from fashionsd_x.train.core import CONFIG_METADATA_KEY, diffusion_loss
from fashionsd_x.train.data import image_tensor, tokenize
from fashionsd_x.train.lora import KOHYA_WEIGHTS, LORA_WEIGHTS, train_lora
from tests.train.conftest import FAST, render


def fixed_batch_loss(base_dir: Path, dataset: Path, lora: Path | None = None) -> float:
    """Denoising loss of all train images at fixed noise and timesteps, for the base or base + LoRA."""
    base = load_base(base_dir)
    pipeline = base.pipeline()
    if lora is not None:
        pipeline.load_lora_weights(lora)
    split = load_from_disk(str(dataset))["train"]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pixels = torch.stack([image_tensor(image, 32) for image in split["image"]])
        latents = base.vae.encode(pixels).latent_dist.mean * base.vae.config.scaling_factor
        text = base.text_encoder(tokenize(base.tokenizer, list(split["text"])))[0]
        losses = []
        for _ in range(4):
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, 1000, (latents.shape[0],), generator=generator)
            prediction = base.unet(base.noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample
            losses.append(diffusion_loss(prediction, latents, noise, timesteps, base.noise_scheduler, None).item())
    return float(np.mean(losses))


def test_loss_falls_when_overfitting_eight_garments(trained_lora, tiny_base, garments):
    before = fixed_batch_loss(tiny_base, garments)
    after = fixed_batch_loss(tiny_base, garments, trained_lora)
    assert after < 0.9 * before, (before, after)


def test_lora_loads_in_diffusers_and_kohya_format_with_the_same_output(trained_lora, tiny_base):
    plain = render(load_base(tiny_base).pipeline())
    with_lora = load_base(tiny_base).pipeline()
    with_lora.load_lora_weights(trained_lora)
    diffusers_image = render(with_lora)
    kohya = load_base(tiny_base).pipeline()
    kohya.load_lora_weights(trained_lora / KOHYA_WEIGHTS)  # diffusers' own kohya converter
    assert np.abs(diffusers_image - plain).max() > 1e-3
    np.testing.assert_allclose(render(kohya), diffusers_image, atol=1e-5)


def test_outputs_describe_themselves(trained_lora, tiny_base, garments):
    assert {path.name for path in trained_lora.iterdir()} >= {
        LORA_WEIGHTS, KOHYA_WEIGHTS, "train_config.yaml", "train_result.json", "README.md", "validation", "logs",
        "checkpoints"}
    config = LoraTrainConfig(**read_yaml(LoraTrainConfig, trained_lora / "train_config.yaml"))
    assert (config.max_steps, config.lr, config.rank, config.data) == (20, 1e-2, 4, str(garments.resolve()))
    with safe_open(str(trained_lora / LORA_WEIGHTS), framework="pt") as handle:
        assert yaml.safe_load(handle.metadata()[CONFIG_METADATA_KEY]) == config.to_dict()
    # Only the newest checkpoint is kept, complete, and it holds the trainable (LoRA) tensors only.
    assert [path.name for path in (trained_lora / "checkpoints").iterdir()] == ["checkpoint-20"]
    trainable = load_file(trained_lora / "checkpoints" / "checkpoint-20" / "trainable_0.safetensors")
    assert trainable and all("lora_" in name for name in trainable)
    for step in ("step_00010", "step_00020"):  # every validate_every steps and at the end
        assert sorted(p.name for p in (trained_lora / "validation" / step).iterdir()) == ["00.png", "prompts.txt"]
    result = json.loads((trained_lora / "train_result.json").read_text())
    assert result["steps"] == 20 and result["epochs"] == 10.0 and np.isfinite(result["final_loss"])
    card = (trained_lora / "README.md").read_text()
    assert str(tiny_base.resolve()) in card and "| steps | 20 " in card and "validation/step_00020/00.png" in card
    assert any((trained_lora / "logs").rglob("events.out.tfevents.*"))


def test_text_encoder_lora_with_alpha_in_both_formats(garments, tiny_base, tmp_path):
    out = tmp_path / "te"
    train_lora(garments, str(tiny_base), out, max_steps=2, batch_size=2, resolution=32, rank=4,
               overrides={**FAST, "train_text_encoder": "true", "lora_init": "random", "alpha": "2",
                          "gradient_checkpointing": "true"})
    kohya = load_file(out / KOHYA_WEIGHTS)
    text_keys = [key for key in kohya if key.startswith("lora_te_text_model_encoder_layers_")]
    assert text_keys and all(float(kohya[key]) == 2.0 for key in kohya if key.endswith(".alpha"))
    with_lora = load_base(tiny_base).pipeline()
    with_lora.load_lora_weights(out)
    assert any(".lora_A." in name for name, _ in with_lora.text_encoder.named_parameters())
    from_kohya = load_base(tiny_base).pipeline()
    from_kohya.load_lora_weights(out / KOHYA_WEIGHTS)
    np.testing.assert_allclose(render(from_kohya), render(with_lora), atol=1e-5)
    assert np.abs(render(with_lora) - render(load_base(tiny_base).pipeline())).max() > 1e-3
    # `fsdx export --lora` reads the diffusers file (text encoder in diffusers' older layout) to the same tensors.
    exported = load_file(export_lora(out, tmp_path / "exported.safetensors"))
    assert set(exported) == set(kohya) and all(torch.equal(exported[key], kohya[key]) for key in kohya)


def test_v_prediction_base_trains_on_velocity(garments, tiny_v_base, tmp_path):
    result = train_lora(garments, str(tiny_v_base), tmp_path / "v", max_steps=2, batch_size=2, resolution=32,
                        overrides=FAST)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    assert load_base(tiny_v_base).prediction_type == "v_prediction"


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_loss_target_is_the_schedulers_prediction_type(kind, tiny_base):
    scheduler = load_base(tiny_base, prediction_type=kind).noise_scheduler
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10, 500, 990])
    velocity = scheduler.get_velocity(latents, noise, timesteps)
    exact, other = (noise, velocity) if kind == "epsilon" else (velocity, noise)
    assert diffusion_loss(exact, latents, noise, timesteps, scheduler, None).item() == 0.0
    assert diffusion_loss(other, latents, noise, timesteps, scheduler, None).item() > 0.01
    # Min-SNR: a timestep whose SNR exceeds gamma counts less than in the plain loss.
    plain = diffusion_loss(other[:1], latents[:1], noise[:1], timesteps[:1], scheduler, None)
    weighted = diffusion_loss(other[:1], latents[:1], noise[:1], timesteps[:1], scheduler, 5.0)
    assert weighted.item() < plain.item()


def test_adapters_beyond_attention_all_load_back(garments, tiny_base, tmp_path):
    """Convolutions and feed-forward layers too: every adapter in the file must reach the UNet on loading."""
    out = tmp_path / "out"
    targets = "to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,conv1,conv2"
    train_lora(garments, str(tiny_base), out, max_steps=1, batch_size=2, resolution=32,
               overrides={"target_modules": targets, "num_validation_images": "0", "checkpoint_every": "null"})
    with safe_open(str(out / LORA_WEIGHTS), framework="pt") as handle:
        in_file = {key.removeprefix("unet.").split(".lora_A")[0] for key in handle.keys() if ".lora_A" in key}
    pipeline = load_base(tiny_base).pipeline()
    pipeline.load_lora_weights(out)
    loaded = {name.split(".lora_A")[0] for name, _ in pipeline.unet.named_parameters() if ".lora_A" in name}
    assert any("conv1" in name for name in in_file) and any("to_q" in name for name in in_file)
    assert in_file == loaded
