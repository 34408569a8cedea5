"""ControlNet training on sketches, the shared sketch preprocessing, and fusing a LoRA into the frozen UNet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from datasets import load_from_disk
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from fashionsd_x.data.conditioning import LEGACY, SketchConditioning, control_image
from fashionsd_x.models.base import load_base
from fashionsd_x.train.config import ConfigError
from fashionsd_x.train.controlnet import CONTROLNET_WEIGHTS, OUTPUT_LAYERS, train_controlnet
from fashionsd_x.train.data import TrainItems
from fashionsd_x.train.lora import LoraMismatchError, fuse_into_base
from tests.train.conftest import FAST, RUN, render


def sketch(kind: str) -> Image.Image:
    """A black line drawing on white, portrait like a catalogue sketch."""
    image = Image.new("L", (24, 32), 255)
    draw = ImageDraw.Draw(image)
    if kind == "dress":
        draw.polygon([(8, 2), (16, 2), (22, 30), (2, 30)], outline=0)
    else:
        draw.rectangle([2, 4, 21, 14], outline=0)
        draw.line([(12, 14), (12, 30)], fill=0)
    return image


@pytest.fixture(scope="module")
def trained_controlnet(garments, tiny_base, trained_lora, tmp_path_factory):
    """4 steps with the LoRA fused in, from cached latents with flip and caption dropout on; lr 1e-2 so the
    zero-initialised output convolutions move far enough for the sketch to show in the image."""
    out = tmp_path_factory.mktemp("controlnet") / "out"
    result = train_controlnet(garments, str(tiny_base), out, lora=trained_lora, max_steps=4, batch_size=4,
                              lr=1e-2, resolution=32, cache_latents=True,
                              overrides={"random_flip": "true", "caption_dropout": "0.25", "validation_steps": "2",
                                         "num_validation_images": "1", "checkpoint_every": "null"})
    return out, result


def test_controlnet_loads_and_the_sketch_steers_the_image(trained_controlnet, tiny_base, garments):
    out, result = trained_controlnet
    assert result.weights == out and np.isfinite(result.final_loss)
    assert (out / CONTROLNET_WEIGHTS).is_file() and (out / "train_config.yaml").is_file()
    assert any((out / "cache").rglob("index.json"))  # latents were cached, both orientations
    assert (out / "validation" / "step_00004" / "00.png").is_file()
    # Generation reads how sketches were made and their polarity from the ControlNet's train_config.yaml.
    settings = yaml.safe_load((out / "train_config.yaml").read_text())
    report = json.loads((garments / "build_report.json").read_text())
    assert settings["sketch"] == report["parameters"]["sketch"] and settings["invert_sketch"] is False
    controlnet = ControlNetModel.from_pretrained(out)
    pipeline = StableDiffusionControlNetPipeline(**load_base(tiny_base).pipeline().components, controlnet=controlnet,
                                                 requires_safety_checker=False)
    dress = render(pipeline, image=control_image(sketch("dress"), 32)[None])
    top = render(pipeline, image=control_image(sketch("top"), 32)[None])
    untrained = StableDiffusionControlNetPipeline(
        **load_base(tiny_base).pipeline().components, requires_safety_checker=False,
        controlnet=ControlNetModel.from_unet(load_base(tiny_base).unet, conditioning_embedding_out_channels=(8, 16)))
    plain = render(untrained, image=control_image(sketch("dress"), 32)[None])  # zero convolutions: no effect
    # Images in [0, 1]. Measured after these 4 steps: the trained ControlNet moves the image by 0.036 on average
    # (9 grey levels) from an untrained one, whose zero convolutions leave the base's image; two sketches differ
    # by 7e-4 on average. A ControlNet that learned nothing gives 0 for the first, one that ignores the sketch
    # 0 for the second; the thresholds are a third of the measured figures.
    assert np.abs(dress - plain).mean() > 0.012
    assert np.abs(dress - top).mean() > 2.5e-4


def test_fused_lora_equals_the_loaded_lora(trained_lora, tiny_base):
    fused = load_base(tiny_base)
    fuse_into_base(fused, trained_lora)
    assert not any("lora" in name for name, _ in fused.unet.named_parameters())  # merged, layers gone
    unfused = load_base(tiny_base).pipeline()
    unfused.load_lora_weights(trained_lora)
    np.testing.assert_allclose(render(fused.pipeline()), render(unfused), atol=1e-5)
    assert np.abs(render(fused.pipeline()) - render(load_base(tiny_base).pipeline())).max() > 1e-3


def test_lora_of_another_architecture_is_refused_before_training(garments, other_base, trained_lora, tmp_path):
    out = tmp_path / "mismatch"
    with pytest.raises(LoraMismatchError, match="does not fit base"):
        train_controlnet(garments, str(other_base), out, lora=trained_lora, max_steps=1, resolution=32)
    assert not (out / CONTROLNET_WEIGHTS).exists() and not (out / "checkpoints").exists()


def test_training_samples_are_conditioned_as_generation_conditions_sketches(garments, tiny_base):
    split = load_from_disk(str(garments))["train"]
    tokenizer = CLIPTokenizer.from_pretrained(tiny_base / "tokenizer")
    item = TrainItems(split, tokenizer, resolution=32, control=True)[0]
    assert torch.equal(item["control"], control_image(split[0]["sketch"], 32))  # the one normalisation
    legacy = TrainItems(split, tokenizer, resolution=32, control=True, conditioning=LEGACY)[0]
    stored = np.asarray(split[0]["sketch"], dtype=np.float32) / 255.0
    assert torch.equal(legacy["control"][0], torch.from_numpy(stored))  # resize only: polarity and values as stored


AUGMENT = {"sketch_augment": "{probability: 1.0, pencil_probability: 0.5}", "random_flip": "true", **FAST}


def test_augmented_training_repeats_exactly_and_is_recorded(garments, tiny_base, tmp_path):
    runs = [train_controlnet(garments, str(tiny_base), tmp_path / name, overrides=AUGMENT, **RUN) for name in "ab"]
    plain = train_controlnet(garments, str(tiny_base), tmp_path / "plain", overrides=FAST, **RUN)
    weights = [load_file(tmp_path / name / CONTROLNET_WEIGHTS) for name in ("a", "b", "plain")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])  # a function of (seed, step)
    assert any(not torch.equal(weights[0][key], weights[2][key]) for key in weights[0])  # the sketches changed
    assert runs[0].final_loss == runs[1].final_loss and plain.final_loss != runs[0].final_loss
    settings = yaml.safe_load((tmp_path / "a" / "train_config.yaml").read_text())
    assert settings["sketch_augment"] == {"probability": 1.0, "pencil_probability": 0.5}
    assert settings["sketch_conditioning"] == SketchConditioning().to_dict()


def test_augmented_training_resumes_exactly(garments, tiny_base, tmp_path):
    overrides = {**AUGMENT, "checkpoint_every": "2"}
    train_controlnet(garments, str(tiny_base), tmp_path / "whole", overrides=overrides, **RUN)
    train_controlnet(garments, str(tiny_base), tmp_path / "split", overrides=overrides, **{**RUN, "max_steps": 2})
    train_controlnet(garments, str(tiny_base), tmp_path / "split", overrides=overrides, resume="latest", **RUN)
    whole, split = (load_file(tmp_path / name / CONTROLNET_WEIGHTS) for name in ("whole", "split"))
    assert all(torch.equal(whole[key], split[key]) for key in whole)


def test_a_run_set_up_in_python_with_a_tuple_resumes(garments, tiny_base, tmp_path):
    # The recipe passes scale_range as a tuple; the checkpoint records it as JSON (a list), and resuming compares
    # the two: they must read as the same setting, or an interrupted recipe stage could never go on.
    moving = {"probability": 1.0, "scale_range": (0.6, 1.0), "shift": 0.1}
    settings, overrides = {**RUN, "sketch_augment": moving}, {**FAST, "checkpoint_every": "1"}
    train_controlnet(garments, str(tiny_base), tmp_path / "run", overrides=overrides, **{**settings, "max_steps": 1})
    resumed = train_controlnet(garments, str(tiny_base), tmp_path / "run", overrides=overrides, resume="latest",
                               **settings)
    assert resumed.steps == RUN["max_steps"] > 1
    assert yaml.safe_load((tmp_path / "run" / "train_config.yaml").read_text())["sketch_augment"]["scale_range"] == [
        0.6, 1.0]


def test_output_gain_is_folded_into_the_saved_residuals_and_taken_out_to_train_on(garments, tiny_base, tmp_path):
    gained = {**FAST, "output_gain": "1.5"}
    train_controlnet(garments, str(tiny_base), tmp_path / "plain", overrides=FAST, **RUN)
    train_controlnet(garments, str(tiny_base), tmp_path / "gain", overrides=gained, **RUN)
    plain, gain = (load_file(tmp_path / name / CONTROLNET_WEIGHTS) for name in ("plain", "gain"))
    outputs = [key for key in plain if key.startswith(OUTPUT_LAYERS)]
    assert outputs and any(plain[key].abs().max() > 0 for key in outputs)  # trained away from their zero init
    for key in plain:
        torch.testing.assert_close(gain[key], plain[key] * (1.5 if key in outputs else 1.0))
    assert yaml.safe_load((tmp_path / "gain" / "train_config.yaml").read_text())["output_gain"] == 1.5
    # At scale 1 the gained ControlNet adds what the plain one adds at scale 1.5: what generation sees.
    models = [ControlNetModel.from_pretrained(tmp_path / name) for name in ("plain", "gain")]
    generator = torch.Generator().manual_seed(0)
    config = models[0].config
    side = 32 // 2 ** (len(config.conditioning_embedding_out_channels) - 1)  # RUN's resolution in latent pixels
    latents = torch.randn(1, config.in_channels, side, side, generator=generator)
    text = torch.randn(1, 77, config.cross_attention_dim, generator=generator)
    control = torch.rand(1, 3, 32, 32, generator=generator)
    residuals = [model(latents, 10, encoder_hidden_states=text, controlnet_cond=control, conditioning_scale=scale,
                       return_dict=False) for model, scale in zip(models, (1.5, 1.0))]
    for one, two in zip([*residuals[0][0], residuals[0][1]], [*residuals[1][0], residuals[1][1]]):
        torch.testing.assert_close(one, two)
    # Training goes on from the trained weights: from either folder, the same continuation.
    for name in ("plain", "gain"):
        train_controlnet(garments, str(tiny_base), tmp_path / f"on_{name}", init=str(tmp_path / name),
                         overrides=gained, **RUN)
    on_plain, on_gain = (load_file(tmp_path / name / CONTROLNET_WEIGHTS) for name in ("on_plain", "on_gain"))
    for key in on_plain:  # dividing the gain out again rounds in the last bit, which 4 Adam steps carry on
        torch.testing.assert_close(on_gain[key], on_plain[key], atol=1e-4, rtol=1e-3)
    with pytest.raises(ConfigError, match="output_gain"):
        train_controlnet(garments, str(tiny_base), tmp_path / "bad", overrides={**FAST, "output_gain": "0"}, **RUN)


def test_moving_garments_need_uncached_latents(garments, tiny_base, tmp_path):
    with pytest.raises(ConfigError, match="cache_latents"):
        train_controlnet(garments, str(tiny_base), tmp_path / "out", cache_latents=True,
                         overrides={"sketch_augment": "{shift: 0.1}", **FAST}, **RUN)
    moved = train_controlnet(garments, str(tiny_base), tmp_path / "moved",
                             overrides={"sketch_augment": "{scale_range: [0.6, 1.0], shift: 0.1}", **FAST}, **RUN)
    assert np.isfinite(moved.final_loss)


def test_generation_conditions_sketches_as_the_controlnet_was_trained(trained_controlnet, tiny_base):
    from fashionsd_x.generate import GarmentGenerator

    out, _ = trained_controlnet
    generator = GarmentGenerator.load(tiny_base, controlnet=out, device="cpu", dtype=torch.float32)
    assert generator.conditioning == SketchConditioning()
    settings = yaml.safe_load((out / "train_config.yaml").read_text())
    old = out.parent / "old"  # a ControlNet trained before normalisation: its config has no sketch_conditioning
    old.mkdir()
    for name in ("config.json", CONTROLNET_WEIGHTS):
        (old / name).write_bytes((out / name).read_bytes())
    settings.pop("sketch_conditioning")
    (old / "train_config.yaml").write_text(yaml.safe_dump(settings))
    assert GarmentGenerator.load(tiny_base, controlnet=old, device="cpu", dtype=torch.float32).conditioning == LEGACY


def test_trained_models_load_in_the_projects_generator(trained_controlnet, trained_lora, tiny_base):
    from fashionsd_x.generate import GarmentGenerator

    out, _ = trained_controlnet
    generator = GarmentGenerator.load(tiny_base, lora=trained_lora, controlnet=out, device="cpu", dtype=torch.float32)
    dress = generator("a red dress", sketch=sketch("dress"), steps=2, resolution=32)[0].image
    top = generator("a red dress", sketch=sketch("top"), steps=2, resolution=32)[0].image
    assert np.abs(np.asarray(dress, dtype=int) - np.asarray(top, dtype=int)).max() > 0
