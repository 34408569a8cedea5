"""Single-file checkpoints: export + diffusers' import round trip, family detection, the shipped SD configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from fashionsd_x.models.base import BaseLoadError, load_base
from fashionsd_x.models.export import export_single_file, unet_to_ldm, vae_to_ldm
from fashionsd_x.models.single_file import (CONFIGS, UNET_PREFIX, VAE_PREFIX, detect_family, load_tokenizer,
                                            shipped_config)
from tests.models.test_base import render

SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
SD21_PARAMETERS = {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}


@pytest.fixture(scope="module")
def tiny_file(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_single_file(tiny_base, tmp_path_factory.mktemp("export") / "tiny.safetensors")


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    expected, actual = first.state_dict(), second.state_dict()
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, different[:5]


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a checkpoint with its tensor dict passed through `change`."""
    save_file(change(load_file(source)), target)
    return target


def test_round_trip_keeps_every_tensor_and_the_image(tiny_base, tiny_file):
    folder, single = load_base(tiny_base), load_base(tiny_file, config=tiny_base)
    assert (single.kind, single.source) == ("single_file", str(tiny_file.resolve()))
    for component in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(folder, component), getattr(single, component))
    assert single.tokenizer("a dress").input_ids == folder.tokenizer("a dress").input_ids
    assert single.noise_scheduler.config == folder.noise_scheduler.config
    image = render(single.pipeline())
    assert image.std() > 0  # random weights still draw something, so equality below is not vacuous
    np.testing.assert_array_equal(image, render(folder.pipeline()))


def test_export_of_a_loaded_single_file_is_the_same_file(tiny_base, tiny_file, tmp_path):
    again = export_single_file(load_base(tiny_file, config=tiny_base), tmp_path / "again.safetensors")
    first, second = load_file(tiny_file), load_file(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_export_writes_the_ldm_layout(tiny_file):
    tensors = load_file(tiny_file)
    # Tiny UNet, one layer per block: down block 0 = input_blocks.1 (+ downsampler .2), down block 1 = .3;
    # up block 0 has no attention, so its upsampler sits at .1 of output_blocks.1.
    for key in ("input_blocks.0.0.weight", "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.1.proj_in.weight",
                "input_blocks.2.0.op.weight", "input_blocks.3.0.skip_connection.weight", "time_embed.2.bias",
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "middle_block.2.emb_layers.1.weight",
                "output_blocks.1.1.conv.weight", "output_blocks.3.1.transformer_blocks.0.ff.net.2.weight",
                "out.0.weight", "out.2.bias"):
        assert UNET_PREFIX + key in tensors, key
    for key in ("encoder.down.0.downsample.conv.weight", "encoder.down.1.block.0.nin_shortcut.weight",
                "decoder.up.1.upsample.conv.weight", "decoder.up.0.block.1.conv2.weight", "encoder.norm_out.bias",
                "decoder.mid.block_2.norm1.weight", "quant_conv.weight", "post_quant_conv.bias"):
        assert VAE_PREFIX + key in tensors, key
    assert tensors[VAE_PREFIX + "decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)  # linear -> 1x1 conv
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in tensors
    with safe_open(str(tiny_file), framework="pt") as file:
        assert file.metadata()["prediction_type"] == "epsilon"
        assert file.metadata()["family"] == "sd1"


def test_recorded_prediction_type_wins_over_the_config(tiny_v_base, tiny_base, tmp_path):
    exported = export_single_file(str(tiny_v_base), tmp_path / "v.safetensors")
    assert load_base(exported, config=tiny_base).prediction_type == "v_prediction"  # metadata over epsilon config
    assert load_base(exported, config=tiny_base, prediction_type="epsilon").prediction_type == "epsilon"


def test_export_needs_a_safetensors_name(tiny_base, tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        export_single_file(tiny_base, tmp_path / "model.ckpt")


def test_real_world_file_quirks_load(tiny_base, tiny_file, tmp_path):
    """fp16 tensors, the CLIP position_ids buffer and EMA bookkeeping, as in SD 1.5's released files."""

    def quirks(tensors):
        tensors = {key: tensor.half() for key, tensor in tensors.items()}
        tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
        tensors["model_ema.decay"] = torch.tensor(0.9999)
        return tensors

    single = load_base(rewrite(tiny_file, tmp_path / "quirks.safetensors", quirks), config=tiny_base)
    folder = load_base(tiny_base)
    assert single.unet.dtype == torch.float32
    expected = folder.unet.state_dict()["conv_in.weight"].half().float()
    assert torch.equal(single.unet.state_dict()["conv_in.weight"], expected)


def to_open_clip(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-store the text encoder the way SD 2.x files do (OpenCLIP: resblocks, fused in_proj)."""
    source, target = "cond_stage_model.transformer.text_model.", "cond_stage_model.model."
    text = {key[len(source):]: tensors.pop(key) for key in list(tensors) if key.startswith(source)}
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    tensors[target + "token_embedding.weight"] = text.pop("embeddings.token_embedding.weight")
    tensors[target + "positional_embedding"] = text.pop("embeddings.position_embedding.weight")
    for param in ("weight", "bias"):
        tensors[f"{target}ln_final.{param}"] = text.pop(f"final_layer_norm.{param}")
    layers = {int(key.split(".")[2]) for key in text}
    for layer in layers:
        prefix, block = f"encoder.layers.{layer}.", f"{target}transformer.resblocks.{layer}."
        for param in ("weight", "bias"):
            tensors[f"{block}attn.in_proj_{param}"] = torch.cat(
                [text.pop(f"{prefix}self_attn.{name}_proj.{param}") for name in "qkv"])
        for key in [key for key in text if key.startswith(prefix)]:
            name = key[len(prefix):]
            for old, new in renames.items():
                name = name.replace(old, new)
            tensors[block + name] = text.pop(key)
    assert not text
    return tensors


def test_open_clip_text_encoder_layout_loads(tiny_base, tiny_file, tmp_path):
    converted = rewrite(tiny_file, tmp_path / "openclip.safetensors", to_open_clip)
    assert_same_weights(load_base(tiny_base).text_encoder, load_base(converted, config=tiny_base).text_encoder)


def test_missing_tensor_is_named(tiny_base, tiny_file, tmp_path):
    def drop(tensors):
        del tensors[VAE_PREFIX + "decoder.conv_out.bias"]
        return tensors

    with pytest.raises(BaseLoadError, match="decoder.conv_out.bias") as caught:
        load_base(rewrite(tiny_file, tmp_path / "broken.safetensors", drop), config=tiny_base)
    assert "\n" not in str(caught.value)


def test_missing_text_encoder_tensor_is_named(tiny_base, tiny_file, tmp_path):
    def drop(tensors):
        del tensors["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.bias"]
        return tensors

    with pytest.raises(BaseLoadError, match="layers.0.mlp.fc1.bias"):
        load_base(rewrite(tiny_file, tmp_path / "broken.safetensors", drop), config=tiny_base)


def test_file_without_a_vae_says_so(tiny_base, tiny_file, tmp_path):
    def unet_and_text_only(tensors):
        return {key: tensor for key, tensor in tensors.items() if not key.startswith(VAE_PREFIX)}

    with pytest.raises(BaseLoadError, match="no VAE weights"):
        load_base(rewrite(tiny_file, tmp_path / "novae.safetensors", unet_and_text_only), config=tiny_base)


def test_unknown_architecture_asks_for_a_config(tiny_file):
    with pytest.raises(BaseLoadError, match="cross-attention width 32.*config=FOLDER"):
        load_base(tiny_file)


def test_config_folder_without_configs_is_refused(tiny_file, tmp_path):
    with pytest.raises(BaseLoadError, match="unet/config.json"):
        load_base(tiny_file, config=tmp_path)


def shapes_with(width: int, in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {f"{UNET_PREFIX}input_blocks.0.0.weight": (320, in_channels, 3, 3),
            f"{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, width)}


def test_detect_family_from_cross_attention_width():
    assert detect_family(shapes_with(768)) == "sd1"
    assert detect_family(shapes_with(1024)) == "sd2"
    with pytest.raises(BaseLoadError, match="config=FOLDER"):
        detect_family(shapes_with(2048))
    with pytest.raises(BaseLoadError, match="SDXL"):
        detect_family({**shapes_with(2048), "conditioner.embedders.1.model.positional_embedding": (77, 1280)})
    assert shipped_config(shapes_with(768), "x").name == "sd15"
    assert shipped_config(shapes_with(1024), "x").name == "sd2"
    with pytest.raises(BaseLoadError, match="9 input channels"):
        shipped_config(shapes_with(768, in_channels=9), "inpainting.safetensors")


def meta_models(family: str) -> dict[str, torch.nn.Module]:
    """The shipped architecture's models without weights (meta device): full size, no memory."""
    folder = CONFIGS / family
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")),
        }


@pytest.mark.parametrize(("family", "parameters"), [("sd15", SD15_PARAMETERS), ("sd2", SD21_PARAMETERS)])
def test_shipped_configs_have_the_released_sizes(family, parameters):
    models = meta_models(family)
    assert {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()} == parameters
    assert StableDiffusionPipeline.load_config(CONFIGS / family)["_class_name"] == "StableDiffusionPipeline"


def test_shipped_schedulers_and_tokenizers():
    sd15 = json.loads((CONFIGS / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    sd2 = json.loads((CONFIGS / "sd2" / "scheduler" / "scheduler_config.json").read_text())
    assert (sd15["_class_name"], sd15["prediction_type"], sd15["steps_offset"]) == ("PNDMScheduler", "epsilon", 1)
    assert sd2["prediction_type"] == "v_prediction"
    for config in (sd15, sd2):
        assert (config["beta_start"], config["beta_end"], config["num_train_timesteps"]) == (0.00085, 0.012, 1000)
    sd15_tokenizer, sd2_tokenizer = load_tokenizer(CONFIGS / "sd15"), load_tokenizer(CONFIGS / "sd2")
    assert (sd15_tokenizer.pad_token, sd15_tokenizer.pad_token_id) == ("<|endoftext|>", 49407)
    assert (sd2_tokenizer.pad_token, sd2_tokenizer.pad_token_id) == ("!", 0)
    assert sd2_tokenizer("a dress").input_ids == sd15_tokenizer("a dress").input_ids  # same BPE


@pytest.mark.parametrize(("family", "detected"), [("sd15", "sd1"), ("sd2", "sd2")])
def test_full_size_layout_inverts_diffusers_conversion(family, detected):
    """The export mapping on real SD 1.5 / 2.1 layouts, checked against diffusers' LDM importer on meta tensors."""
    models = meta_models(family)
    unet, vae = models["unet"].state_dict(), models["vae"].state_dict()
    ldm_unet = {UNET_PREFIX + key: tensor for key, tensor in unet_to_ldm(unet, 2).items()}
    ldm_vae = {VAE_PREFIX + key: tensor for key, tensor in vae_to_ldm(vae, 4).items()}
    # Names as they appear in the released SD 1.5 / 2.1 checkpoints.
    for key in ("input_blocks.3.0.op.weight", "input_blocks.11.0.out_layers.3.weight", "output_blocks.2.1.conv.weight",
                "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight", "output_blocks.11.1.proj_out.weight",
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "output_blocks.0.0.skip_connection.weight"):
        assert UNET_PREFIX + key in ldm_unet, key
    for key in ("encoder.down.3.block.1.conv2.weight", "decoder.up.0.block.2.conv2.weight",
                "decoder.up.3.upsample.conv.weight", "encoder.mid.attn_1.proj_out.weight"):
        assert VAE_PREFIX + key in ldm_vae, key
    assert (len(ldm_unet), len(ldm_vae)) == (686, 248)
    shapes = {key: tuple(tensor.shape) for key, tensor in {**ldm_unet, **ldm_vae}.items()}
    assert detect_family(shapes) == detected
    back_unet = convert_ldm_unet_checkpoint(ldm_unet, dict(models["unet"].config))
    back_vae = convert_ldm_vae_checkpoint(ldm_vae, dict(models["vae"].config))
    assert {key: tuple(t.shape) for key, t in back_unet.items()} == {key: tuple(t.shape) for key, t in unet.items()}
    assert {key: tuple(t.shape) for key, t in back_vae.items()} == {key: tuple(t.shape) for key, t in vae.items()}
