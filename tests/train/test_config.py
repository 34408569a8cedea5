"""Typed settings: the paper presets, the defaults < YAML < command line order, and refusals naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashionsd_x.train.config import (
    ConfigError,
    ControlNetTrainConfig,
    LoraTrainConfig,
    TrainConfig,
    read_yaml,
    resolve_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Singh and Patras (arXiv 2404.18591): LoRA lr 1e-4, rank 4 on the UNet attention projections, 512 px;
# Dress Code batch 4 for 15 epochs, VITON-HD batch 2 for 10; ControlNet lr 1e-5, batch 4, 5 epochs.
PAPER = {
    "lora_dresscode.yaml": (LoraTrainConfig, {"lr": 1e-4, "batch_size": 4, "epochs": 15, "resolution": 512, "rank": 4}),
    "lora_vitonhd.yaml": (LoraTrainConfig, {"lr": 1e-4, "batch_size": 2, "epochs": 10, "resolution": 512, "rank": 4}),
    "controlnet_dresscode.yaml": (ControlNetTrainConfig, {"lr": 1e-5, "batch_size": 4, "epochs": 5, "resolution": 512}),
    "controlnet_vitonhd.yaml": (ControlNetTrainConfig, {"lr": 1e-5, "batch_size": 4, "epochs": 5, "resolution": 512}),
}


def test_every_preset_is_tested():
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_reproduces_the_paper(name):
    config_class, expected = PAPER[name]
    config = resolve_config(config_class, CONFIGS / name)
    assert {field: getattr(config, field) for field in expected} == expected
    assert isinstance(config.lr, float)
    if config_class is LoraTrainConfig:
        assert config.target_modules == ["to_q", "to_k", "to_v", "to_out.0"] and config.lora_alpha() == 4.0
        assert not config.train_text_encoder
    else:
        assert not config.invert_sketch  # black lines on white, as the dataset stores them


def test_command_line_beats_yaml_beats_defaults(tmp_path):
    preset = CONFIGS / "lora_vitonhd.yaml"
    config = resolve_config(LoraTrainConfig, preset, {"--snr-gamma": "5", "target-modules": "to_q, to_v",
                                                       "validation_prompts": "[red dress, blue skirt]",
                                                       "lr": "3e-4"}, epochs=2, rank=None)
    assert (config.epochs, config.batch_size, config.rank, config.snr_gamma, config.lr) == (2, 2, 4, 5.0, 3e-4)
    assert config.target_modules == ["to_q", "to_v"] and config.validation_prompts == ["red dress", "blue skirt"]
    assert config.max_grad_norm == TrainConfig.max_grad_norm  # untouched fields keep the default
    saved = tmp_path / "train_config.yaml"
    saved.write_text(config.to_yaml())
    assert resolve_config(LoraTrainConfig, saved) == config  # an output's config reloads as the same config


@pytest.mark.parametrize(("overrides", "explicit", "match"), [
    ({"snr_gama": "5"}, {}, "unknown lora setting 'snr_gama'; did you mean snr_gamma"),
    ({"batch_size": "2"}, {"batch_size": 4}, "batch_size is given twice"),
    ({"rank": "four"}, {}, "rank must be int, got 'four'"),
    ({"caption_dropout": "1.5"}, {}, r"caption_dropout must be in \[0, 1\)"),
    ({"mixed_precision": "fp8"}, {}, "mixed_precision must be one of no, fp16, bf16"),
    ({"resolution": "500"}, {}, "resolution must be a positive multiple of 8"),
    ({"lr": "0"}, {}, "lr must be a positive number"),
    ({"random_flip": "1"}, {}, "random_flip must be bool"),
])
def test_bad_values_name_the_field(overrides, explicit, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(LoraTrainConfig, None, overrides, **explicit)


def test_yaml_for_the_other_trainer_or_with_typos_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is for `fsdx train controlnet`, not `fsdx train lora`"):
        read_yaml(LoraTrainConfig, CONFIGS / "controlnet_dresscode.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("stage: controlnet\nlearning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match="unknown controlnet setting 'learning_rate'"):
        read_yaml(ControlNetTrainConfig, typo)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_config(LoraTrainConfig, tmp_path / "missing.yaml")
