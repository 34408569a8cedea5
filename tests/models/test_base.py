"""load_base on tiny diffusers folders: components, derived sizes, prediction types, and one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTokenizer

from fashionsd_x.models.base import Base, BaseLoadError, load_base, recommended_guidance, resolve_base
from fashionsd_x.models.components import DEFAULT_GUIDANCE, GENERATION_DEFAULTS


def render(pipeline: StableDiffusionPipeline) -> np.ndarray:
    """Two denoising steps at 32 px from a fixed generator: enough to compare bases bit for bit."""
    generator = torch.Generator().manual_seed(0)
    return pipeline("a red floral dress", num_inference_steps=2, height=32, width=32, generator=generator,
                    output_type="np").images


def load_error(base, **kwargs) -> str:
    """The message of the BaseLoadError that loading `base` raises; it must be exactly one line."""
    with pytest.raises(BaseLoadError) as caught:
        load_base(base, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def copy_base(tiny_base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_base, tmp_path / "copy"))


def test_folder_base_loads_each_component(tiny_base):
    base = load_base(tiny_base)
    assert isinstance(base, Base)
    assert isinstance(base.tokenizer, CLIPTokenizer)
    assert isinstance(base.text_encoder, CLIPTextModel)
    assert isinstance(base.vae, AutoencoderKL)
    assert isinstance(base.unet, UNet2DConditionModel)
    assert type(base.noise_scheduler) is DDPMScheduler
    assert (base.kind, base.source) == ("folder", str(tiny_base.resolve()))
    for model in (base.text_encoder, base.vae, base.unet):
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert base.noise_scheduler.config.num_train_timesteps == 1000
    assert base.noise_scheduler.config.beta_schedule == "scaled_linear"


def test_derived_sizes_of_the_tiny_base(tiny_base):
    base = load_base(tiny_base)
    assert base.prediction_type == "epsilon"
    assert base.vae_scale_factor == 2  # two VAE blocks: one downsampling
    # VAE x2 times one UNet downsampling is 4, but SD pipelines take only multiples of 8
    assert base.resolution_multiple() == 8
    assert base.family == "sd1"


def test_check_resolution_names_resolution_and_multiple(tiny_base):
    base = load_base(tiny_base)
    with pytest.raises(ValueError, match=r"resolution 36 .*multiple of 8") as caught:
        base.check_resolution(36)
    assert base.source in str(caught.value)
    with pytest.raises(ValueError, match="resolution 0"):
        base.check_resolution(0)
    base.check_resolution(32)
    base.check_resolution(64)


def test_v_prediction_base_reports_v_prediction(tiny_v_base):
    base = load_base(tiny_v_base)
    assert base.prediction_type == "v_prediction"
    assert base.sampler.config.prediction_type == "v_prediction"


def test_prediction_type_override_replaces_both_schedulers(tiny_base, tiny_v_base):
    overridden = load_base(tiny_base, prediction_type="v_prediction")
    assert overridden.prediction_type == "v_prediction"
    assert overridden.sampler.config.prediction_type == "v_prediction"
    assert load_base(tiny_v_base, prediction_type="epsilon").prediction_type == "epsilon"
    with pytest.raises(ValueError, match="prediction_type"):
        load_base(tiny_base, prediction_type="sample")


def test_torch_dtype_applies_to_every_model(tiny_base):
    base = load_base(tiny_base, torch_dtype=torch.float16)
    for model in (base.text_encoder, base.vae, base.unet):
        assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_pipeline_shares_components_and_matches_diffusers_own_loading(tiny_base):
    base = load_base(tiny_base)
    pipeline = base.pipeline()
    assert pipeline.unet is base.unet and pipeline.vae is base.vae and pipeline.text_encoder is base.text_encoder
    assert pipeline.safety_checker is None
    assert pipeline.scheduler is not base.sampler  # a fresh copy: set_timesteps must not leak between pipelines
    reference = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    np.testing.assert_array_equal(render(pipeline), render(reference))


def test_pipeline_takes_another_scheduler(tiny_base):
    base = load_base(tiny_base)
    euler = EulerDiscreteScheduler.from_config(base.noise_scheduler.config)
    assert base.pipeline(scheduler=euler).scheduler is euler


def test_pipeline_without_sampler_falls_back_to_ddim(tiny_base):
    base = load_base(tiny_base)
    base.sampler = None
    assert isinstance(base.pipeline().scheduler, DDIMScheduler)


def test_resolve_base_kinds(tiny_base, tmp_path):
    assert resolve_base(tiny_base) == ("folder", str(tiny_base.resolve()))
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    assert resolve_base(checkpoint) == ("single_file", str(checkpoint.resolve()))
    assert resolve_base("stable-diffusion-v1-5/stable-diffusion-v1-5") == (
        "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_nonexistent_path_lists_the_accepted_forms(tmp_path):
    for missing in (tmp_path / "nowhere", tmp_path / "model.safetensors", "checkpoints/model.safetensors"):
        message = load_error(missing)
        assert str(missing) in message
        assert "hub id" in message and "diffusers folder" in message and ".safetensors" in message


def test_folder_missing_unet_names_it(tiny_base, tmp_path):
    folder = copy_base(tiny_base, tmp_path)
    shutil.rmtree(folder / "unet")
    message = load_error(folder)
    assert "unet/" in message and str(folder) in message


def test_folder_that_is_not_a_diffusers_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    message = load_error(tmp_path)
    assert "not a diffusers model" in message and "model_index.json" in message
    (tmp_path / "weights.safetensors").write_bytes(b"")
    assert "pass that file" in load_error(tmp_path)


def test_folder_with_pickle_weights_only_is_refused(tiny_base, tmp_path):
    folder = copy_base(tiny_base, tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.bin")
    message = load_error(folder)
    assert "unet" in message and str(folder) in message


class _Payload:
    """Unpickling this creates `marker`: proof that a loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_checkpoint_is_refused_unopened(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(pickle.dumps(_Payload(marker)))
    message = load_error(checkpoint)
    assert "pickle" in message and ".safetensors" in message and str(checkpoint) in message
    assert not marker.exists()


def test_unreadable_safetensors_file(tmp_path):
    checkpoint = tmp_path / "broken.safetensors"
    checkpoint.write_bytes(b"\x00" * 64)
    assert "not a readable .safetensors" in load_error(checkpoint)


def test_config_is_refused_for_a_folder(tiny_base):
    assert "single .safetensors" in load_error(tiny_base, config=tiny_base)


def test_unknown_scheduler_class_is_named(tiny_base, tmp_path):
    folder = copy_base(tiny_base, tmp_path)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "_class_name": "NoSuchScheduler"}))
    assert "NoSuchScheduler" in load_error(folder)


def test_hub_id_offline_fails_fast_with_one_line():
    # A fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    script = textwrap.dedent("""
        import time
        from fashionsd_x.models.base import BaseLoadError, load_base
        start = time.monotonic()
        try:
            load_base("fashionsd-x-tests/no-such-model")
        except BaseLoadError as error:
            print(f"{time.monotonic() - start:.3f}")
            print(error)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    seconds, message = float(lines[0]), lines[1]
    assert seconds < 5, "an offline hub lookup must not wait on the network"
    assert "fashionsd-x-tests/no-such-model" in message and "hub id" in message and "offline" in message
    assert "local diffusers folder" in message and ".safetensors" in message


def test_a_base_folder_recommends_its_guidance(tiny_base, tmp_path):
    assert recommended_guidance(tiny_base) == DEFAULT_GUIDANCE == load_base(tiny_base).guidance_scale
    assert recommended_guidance("stable-diffusion-v1-5/stable-diffusion-v1-5") == DEFAULT_GUIDANCE  # read offline
    folder = shutil.copytree(tiny_base, tmp_path / "base")
    (folder / GENERATION_DEFAULTS).write_text('{"guidance_scale": 4}')
    assert recommended_guidance(folder) == 4.0 == load_base(folder).guidance_scale


@pytest.mark.parametrize("text, message", [("{not json", "not a JSON object with a guidance_scale"),
                                           ('{"steps": 20}', "not a JSON object with a guidance_scale"),
                                           ('{"guidance_scale": "high"}', "must be a number from 0 to 100"),
                                           ('{"guidance_scale": NaN}', "must be a number from 0 to 100"),
                                           ('{"guidance_scale": 250}', "must be a number from 0 to 100")])
def test_a_bad_generation_defaults_file_is_one_line(tiny_base, tmp_path, text, message):
    folder = shutil.copytree(tiny_base, tmp_path / "base")
    (folder / GENERATION_DEFAULTS).write_text(text)
    with pytest.raises(BaseLoadError, match=message) as error:
        load_base(folder)
    assert "\n" not in str(error.value) and GENERATION_DEFAULTS in str(error.value)
