"""`fsdx train tiny`'s recipe end to end in miniature (32 px, a few steps a stage): every stage runs, a second
run skips what is finished, and the shipped folder is a model the standard diffusers calls load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from diffusers import StableDiffusionPipeline

from fashionsd_x.models.base import recommended_guidance
from fashionsd_x.models.embedded import embedded_model, size_mb
from fashionsd_x.models.tiny import TinyConfig
from fashionsd_x.recipes.ship import finished_controlnet
from fashionsd_x.recipes.tiny import STAGES, DataSpec, RecipeConfig, final_controlnet, run_recipe
from fashionsd_x.train.config import BaseTrainConfig, ControlNetTrainConfig, LoraTrainConfig
from fashionsd_x.train.vae import VaeTrainConfig

FEW = {"max_steps": 2, "batch_size": 4, "cache_latents": True, "num_validation_images": 0, "checkpoint_every": 1,
       "keep_checkpoints": 1}
MINIATURE = RecipeConfig(
    resolution=32, catalogue=DataSpec(16, 1, ("solid", "stripes")), collection=DataSpec(16, 2, ("solid", "dots", "checks"), "varied"),
    vae=VaeTrainConfig(resolution=32, block_out_channels=(8, 16), crop=16, batch_size=4, max_steps=2,
                       checkpoint_every=1),
    model=TinyConfig(sample_size=32, unet_channels=(16, 32), vae_channels=(8, 16), text_hidden=32, norm_groups=4),
    base=BaseTrainConfig(**FEW), refine=BaseTrainConfig(**FEW, noise_offset=0.1), eval_items=2, style_items=1,
    controlnet=ControlNetTrainConfig(**FEW, sketch_augment={"probability": 0.7}),
    consistency=ControlNetTrainConfig(**FEW, sketch_augment={"probability": 0.7}, consistency_weight=0.25, seed=1),
    framing=ControlNetTrainConfig(**{**FEW, "cache_latents": False}, consistency_weight=0.25, seed=2,
                                  sketch_augment={"probability": 0.7, "scale_range": [0.55, 1.0], "shift": 0.15}),
    lora=LoraTrainConfig(**FEW, rank=2, target_modules=RecipeConfig().lora.target_modules,
                         train_text_encoder=RecipeConfig().lora.train_text_encoder))


@pytest.fixture(autouse=True)
def single_thread(one_thread) -> None:
    """Torch on one thread (see tests/conftest.py)."""


def _written(stage: Path) -> int:
    """When the stage last finished training (core.train writes train_result.json last)."""
    return (stage / "train_result.json").stat().st_mtime_ns


def test_stops_after_a_stage_then_resumes_skipping_finished_ones_and_ships(tmp_path):
    out, shipped = tmp_path / "recipe", tmp_path / "embedded"
    run_recipe(MINIATURE, out, stop_after="base")
    record = json.loads((out / "recipe.json").read_text())
    assert list(record["stages"]) == ["data", "vae", "base"] and not (out / "refine").exists()
    base_written = _written(out / "base")

    run_recipe(MINIATURE, out, ship_to=shipped)
    record = json.loads((out / "recipe.json").read_text())
    assert list(record["stages"]) == list(STAGES)
    assert _written(out / "base") == base_written  # finished stages are not trained again
    assert record["stages"]["base"]["steps"] == 2 and record["stages"]["controlnet"]["steps"] == 2
    assert yaml.safe_load((out / "refine" / "train_config.yaml").read_text())["noise_offset"] == 0.1
    assert record["stages"]["data"]["collection"]["framing"] == "varied"
    assert set(record["stages"]["evaluate"]["variants"]) == {"vanilla", "lora", "fashionsd-x"}

    parts = embedded_model(shipped)
    pipe = StableDiffusionPipeline.from_pretrained(parts.base, safety_checker=None)
    pipe.load_lora_weights(parts.lora)
    # The shipped LoRA adapts the text encoder too (the prints' words), and loads into it.
    assert any(".lora_A." in name for name, _ in pipe.text_encoder.named_parameters())
    assert 0 < size_mb(shipped) < 20  # a 32 px model: mostly the 49408-token embedding and the tokenizer
    card = (shipped / "README.md").read_text()
    assert "## Recipe" in card and "## Evaluation" in card
    assert json.loads((shipped / "demo" / "prompts.json").read_text())
    styles = record["stages"]["evaluate"]["styles"]
    assert len(styles["by_style"]) >= 6 and set(styles["variants"]) == {"vanilla", "lora", "fashionsd-x"}
    assert yaml.safe_load((shipped / "controlnet" / "train_config.yaml").read_text())["sketch_augment"]
    # What ships and what was evaluated is the last ControlNet stage's: stage 5's, continued with the consistency
    # loss (6), then with garments scaled and moved (7).
    assert record["stages"]["consistency"]["steps"] == 2 and record["stages"]["framing"]["steps"] == 2
    assert record["stages"]["consistency"]["continued_from"] == str(out / "controlnet")
    assert record["stages"]["framing"]["continued_from"] == str(out / "consistency")
    weights = "diffusion_pytorch_model.safetensors"
    assert (shipped / "controlnet" / weights).read_bytes() == (out / "framing" / weights).read_bytes()
    assert len({(out / stage / weights).read_bytes() for stage in ("controlnet", "consistency", "framing")}) == 3
    shipped_config = yaml.safe_load((shipped / "controlnet" / "train_config.yaml").read_text())
    assert shipped_config["consistency_weight"] == 0.25 and shipped_config["sketch_augment"]["shift"] == 0.15
    assert json.loads((out / "eval" / "metrics.json").read_text())["controlnet"] == str(out / "framing")
    assert "sketch consistency" in card and "scaled and moved" in card
    # The guidance the evaluation used is the one the shipped base recommends, and a new one evaluates again.
    assert json.loads((out / "eval" / "metrics.json").read_text())["settings"]["guidance_scale"] == 2.0
    assert recommended_guidance(shipped) == 2.0 == MINIATURE.guidance_scale and "guidance 2" in card
    run_recipe(dataclasses.replace(MINIATURE, guidance_scale=5.0), out, stop_after="evaluate")
    for name in ("eval", "eval_styles"):
        assert json.loads((out / name / "metrics.json").read_text())["settings"]["guidance_scale"] == 5.0

    # A second recipe takes the shipped base instead of training stages 1 to 3, and trains LoRA and ControlNet.
    again = tmp_path / "again"
    run_recipe(dataclasses.replace(MINIATURE, controlnet_continue_steps=1), again, stop_after="controlnet",
               base_from=shipped)
    record = json.loads((again / "recipe.json").read_text())
    assert not (again / "vae").exists() and not (again / "base").exists()
    assert record["stages"]["refine"]["imported_from"] == str(shipped)
    assert (again / "refine" / "unet").is_dir() and record["stages"]["lora"]["steps"] == 2
    assert record["stages"]["controlnet"]["continued_from"] == str(shipped / "controlnet")
    assert record["stages"]["controlnet"]["steps"] == 1


def test_a_stage_trained_on_retrains_the_stages_after_it(tmp_path):
    out = tmp_path / "recipe"
    run_recipe(MINIATURE, out, stop_after="lora")
    base_written, lora_written = _written(out / "base"), _written(out / "lora")

    longer = dataclasses.replace(MINIATURE, refine=dataclasses.replace(MINIATURE.refine, max_steps=3))
    run_recipe(longer, out, stop_after="lora")
    record = json.loads((out / "recipe.json").read_text())
    assert record["stages"]["refine"]["steps"] == 3  # continued from its checkpoint
    assert _written(out / "base") == base_written  # the stage before it is untouched
    assert (out / "lora.stale").is_dir()  # the stage after it is set aside and trained again
    assert _written(out / "lora") != lora_written
    assert record["stages"]["lora"]["steps"] == 2


def test_a_rebuilt_dataset_retrains_the_stages_that_learn_from_it(tmp_path):
    out = tmp_path / "recipe"
    run_recipe(MINIATURE, out, stop_after="lora")
    base_written = _written(out / "base")

    reseeded = dataclasses.replace(MINIATURE, collection=dataclasses.replace(MINIATURE.collection, seed=3))
    run_recipe(reseeded, out, stop_after="lora")
    assert _written(out / "base") == base_written  # the catalogue did not change
    assert (out / "lora.stale").is_dir() and (out / "lora" / "train_result.json").is_file()


def test_a_vae_trained_on_remakes_the_base_init_and_retrains_the_base(tmp_path):
    out = tmp_path / "recipe"
    run_recipe(MINIATURE, out, stop_after="base")
    vae_weights = (out / "base_init" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()

    longer = dataclasses.replace(MINIATURE, vae=dataclasses.replace(MINIATURE.vae, max_steps=3))
    run_recipe(longer, out, stop_after="base")
    assert json.loads((out / "vae" / "vae_train.json").read_text())["steps"] == 3  # continued, not restarted
    assert (out / "base_init.stale").is_dir() and (out / "base.stale").is_dir()
    assert (out / "base_init" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() != vae_weights
    base_written = _written(out / "base")

    run_recipe(longer, out, stop_after="base")  # nothing changed: nothing is made again
    assert _written(out / "base") == base_written


def test_the_last_controlnet_stage_that_is_on_is_what_ships(tmp_path):
    assert final_controlnet(tmp_path, MINIATURE) == tmp_path / "framing"
    assert final_controlnet(tmp_path, dataclasses.replace(MINIATURE, framing=None)) == tmp_path / "consistency"
    assert final_controlnet(tmp_path, dataclasses.replace(MINIATURE, consistency=None, framing=None)) == (
        tmp_path / "controlnet")
    off = {"skipped": "off"}
    assert finished_controlnet(tmp_path, {"stages": {"consistency": off, "framing": off}}) == tmp_path / "controlnet"
    assert finished_controlnet(tmp_path, {"stages": {"consistency": {"steps": 2}}}) == tmp_path / "consistency"
    assert finished_controlnet(tmp_path, {"stages": {"consistency": {"steps": 2}, "framing": {"steps": 2}}}) == (
        tmp_path / "framing")


def test_without_the_consistency_stage_framing_continues_stage_5(tmp_path):
    run_recipe(dataclasses.replace(MINIATURE, consistency=None), tmp_path, stop_after="framing")
    record = json.loads((tmp_path / "recipe.json").read_text())
    assert "skipped" in record["stages"]["consistency"] and not (tmp_path / "consistency").exists()
    assert record["stages"]["framing"]["continued_from"] == str(tmp_path / "controlnet")


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="stop_after must be one of"):
        run_recipe(MINIATURE, tmp_path, stop_after="everything")
