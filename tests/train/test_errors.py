"""Bad input is refused with one clear line before any training step, and nothing is written to OUT."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from datasets import load_from_disk

from fashionsd_x.models.base import BaseLoadError
from fashionsd_x.train.config import ConfigError
from fashionsd_x.train.controlnet import train_controlnet
from fashionsd_x.train.data import DatasetError, DatasetNotFoundError
from fashionsd_x.train.lora import LORA_WEIGHTS, train_lora

FAST = {"num_validation_images": "0"}


def refused(error, match, call, out) -> None:
    with pytest.raises(error, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)
    assert not (out / LORA_WEIGHTS).exists() and not (out / "checkpoints").exists()


def test_missing_folder_and_not_a_dataset(tiny_base, tmp_path):
    out = tmp_path / "out"
    refused(DatasetNotFoundError, "does not exist; build one",
            lambda: train_lora(tmp_path / "nowhere", str(tiny_base), out), out)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    refused(DatasetError, "is not a saved dataset", lambda: train_lora(tmp_path / "junk", str(tiny_base), out), out)


def test_missing_columns_are_named(garments, tiny_base, tmp_path):
    data = load_from_disk(str(garments))
    data.remove_columns(["text"]).save_to_disk(str(tmp_path / "no_text"))
    data.remove_columns(["sketch"]).save_to_disk(str(tmp_path / "no_sketch"))
    out = tmp_path / "out"
    refused(DatasetError, r"lacks column\(s\) text", lambda: train_lora(tmp_path / "no_text", str(tiny_base), out), out)
    # LoRA does not need sketches; ControlNet does.
    refused(DatasetError, r"lacks column\(s\) sketch",
            lambda: train_controlnet(tmp_path / "no_sketch", str(tiny_base), out), out)


def test_empty_train_split(garments, tiny_base, tmp_path):
    data = load_from_disk(str(garments))
    data["train"] = data["train"].select([])
    data.save_to_disk(str(tmp_path / "empty"), num_shards={"train": 1, "test": 1})
    out = tmp_path / "out"
    refused(DatasetError, "empty train split", lambda: train_lora(tmp_path / "empty", str(tiny_base), out), out)


def test_bad_bases_and_resolutions(garments, tiny_base, other_base, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "not_a_model").mkdir()
    refused(BaseLoadError, "not a diffusers model",
            lambda: train_lora(garments, str(tmp_path / "not_a_model"), out), out)
    # The other base downsamples 8x (VAE) times 2x (UNet): 40 px cannot pass through it.
    refused(ValueError, "resolution 40 does not fit base .* multiple of 16",
            lambda: train_lora(garments, str(other_base), out, resolution=40, overrides=FAST), out)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed with CUDA")
NO_BITSANDBYTES = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="installed")


@pytest.mark.parametrize(("options", "match"), [
    pytest.param({"mixed_precision": "fp16"}, "fp16 needs a CUDA GPU", marks=NO_CUDA),
    pytest.param({"overrides": {"use_8bit_adam": "true"}}, "use_8bit_adam needs bitsandbytes", marks=NO_BITSANDBYTES),
    ({"rank": 0}, "rank must be at least 1"),
    ({"overrides": {"target_modules": "no_such_layer"}}, r"target_modules \['no_such_layer'\] match no layer"),
])
def test_bad_settings(garments, tiny_base, tmp_path, options, match):
    out = tmp_path / "out"
    refused(ConfigError, match, lambda: train_lora(garments, str(tiny_base), out, max_steps=1, **options), out)
