"""`fsdx export`: each part of a model in the single-file layout other tools load, read back by their loaders."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import ControlNetModel
from safetensors import safe_open
from safetensors.torch import load_file

from fashionsd_x.models.base import load_base
from fashionsd_x.models.embedded import EMBEDDED_DIR
from fashionsd_x.models.export import export_model
from tests.test_cli import fsdx, run_main


@pytest.fixture(scope="module")
def controlnet_folder(tiny_base, tmp_path_factory):
    """A ControlNet of the tiny base with SD's sketch encoder (16/32/96/256, as every SD 1.5 ControlNet has) and
    random zero convolutions, so a lost or swapped tensor shows."""
    controlnet = ControlNetModel.from_unet(load_base(tiny_base).unet,
                                           conditioning_embedding_out_channels=(16, 32, 96, 256))
    torch.manual_seed(0)
    for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        torch.nn.init.normal_(module.weight)
    folder = tmp_path_factory.mktemp("cn") / "controlnet"
    controlnet.save_pretrained(folder)
    return folder


def test_controlnet_export_has_the_original_layout_and_reads_back_identically(controlnet_folder, tmp_path):
    path = export_model(tmp_path / "cn.safetensors", controlnet=controlnet_folder)
    keys = list(safe_open(str(path), "pt").keys())
    assert keys and all(key.startswith("control_model.") for key in keys)
    assert {"control_model.input_hint_block.0.weight", "control_model.input_hint_block.14.weight",
            "control_model.zero_convs.0.0.weight", "control_model.middle_block_out.0.weight",
            "control_model.time_embed.0.weight", "control_model.input_blocks.0.0.weight"} <= set(keys)
    # diffusers' own converter of the original layout gives back every tensor, bit for bit
    original = ControlNetModel.from_pretrained(controlnet_folder).state_dict()
    again = ControlNetModel.from_single_file(str(path), config=str(controlnet_folder)).state_dict()
    assert set(again) == set(original)
    assert all(torch.equal(again[key], original[key]) for key in original)


def test_lora_export_equals_the_kohya_file_training_wrote(tmp_path):
    path = export_model(tmp_path / "lora_kohya.safetensors", lora=EMBEDDED_DIR / "lora")
    exported, shipped = load_file(str(path)), load_file(str(EMBEDDED_DIR / "lora" / "pytorch_lora_weights_kohya.safetensors"))
    assert set(exported) == set(shipped) and any(key.startswith("lora_unet_") for key in exported)
    assert all(torch.equal(exported[key], shipped[key]) for key in shipped)
    rank = json.loads((EMBEDDED_DIR / "recipe.json").read_text(encoding="utf-8"))["config"]["lora"]["rank"]
    assert safe_open(str(path), "pt").metadata()["ss_network_dim"] == str(rank)  # the rank the LoRA trained with


def test_export_command(tiny_base, controlnet_folder, tmp_path, capsys):
    result = fsdx("export", "--model", str(tiny_base), "--out", str(tmp_path / "base.safetensors"))
    assert result.returncode == 0, result.stderr
    assert any(key.startswith("model.diffusion_model.") for key in safe_open(str(tmp_path / "base.safetensors"), "pt").keys())
    code, err = run_main(capsys, "export", "--controlnet", controlnet_folder, "--out", tmp_path / "cn.safetensors")
    assert code == 0, err
    for wrong in (["--controlnet", str(controlnet_folder), "--lora", str(EMBEDDED_DIR / "lora")], []):
        code, err = run_main(capsys, "export", *wrong, "--out", tmp_path / "x.safetensors")
        assert code == 2 and "exactly one of" in err and "Traceback" not in err
    code, err = run_main(capsys, "export", "--controlnet", controlnet_folder, "--out", tmp_path / "x.ckpt")
    assert code == 2 and ".safetensors" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_folder_of_another_kind_is_one_line_naming_what_it_holds(controlnet_folder, tmp_path, capsys):
    empty, lora, config = tmp_path / "empty", EMBEDDED_DIR / "lora", controlnet_folder / "config.json"
    empty.mkdir()
    wanted = "config.json with _class_name ControlNetModel and diffusion_pytorch_model.safetensors"
    lora_file = "pytorch_lora_weights.safetensors"
    cases = [
        (["--controlnet", lora],
         f"--controlnet {lora} is no ControlNet folder ({wanted}): it holds a LoRA ({lora_file}): use --lora"),
        (["--controlnet", empty], f"--controlnet {empty} is no ControlNet folder ({wanted}): it is empty"),
        (["--controlnet", EMBEDDED_DIR], f"--controlnet {EMBEDDED_DIR} is no ControlNet folder ({wanted}): it holds "
                                         "a diffusers base (model_index.json): use --model"),
        (["--controlnet", config], f"--controlnet {config} is a file; give the ControlNet's folder ({wanted})"),
        (["--lora", controlnet_folder], f"--lora {controlnet_folder} has no {lora_file}: it holds a ControlNet "
                                        "(config.json with _class_name ControlNetModel): use --controlnet"),
        (["--lora", empty], f"--lora {empty} has no {lora_file}: it is empty"),
        (["--lora", config], f"--lora {config} is no .safetensors file; give a LoRA folder or its {lora_file}"),
        (["--model", lora], f"--model {lora} is no diffusers base: it holds a LoRA ({lora_file}): use --lora"),
        (["--model", controlnet_folder], f"--model {controlnet_folder} is no diffusers base: it holds a ControlNet "
                                         "(config.json with _class_name ControlNetModel): use --controlnet"),
    ]
    for given, message in cases:
        code, error = run_main(capsys, "export", *given, "--out", tmp_path / "out" / "x.safetensors")
        assert (code, error) == (2, f"fsdx export: error: {message}\n")
    assert not (tmp_path / "out").exists()
    (empty / "config.json").write_text('{"_class_name": "ControlNetModel"}')
    (empty / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    code, error = run_main(capsys, "export", "--controlnet", empty, "--out", tmp_path / "x.safetensors")
    assert (code, error) == (2, f"fsdx export: error: ControlNet folder {empty} has no diffusion_pytorch_model"
                                ".safetensors (a pickle .bin is never read: save it as safetensors)\n")


def test_shipped_model_has_standard_clip_keys_and_a_kohya_lora():
    keys = list(safe_open(str(EMBEDDED_DIR / "text_encoder" / "model.safetensors"), "pt").keys())
    assert keys and all(key.startswith("text_model.") for key in keys)  # what transformers 4 expects too
    assert (EMBEDDED_DIR / "lora" / "pytorch_lora_weights_kohya.safetensors").is_file()


def test_an_exported_lora_carries_the_kohya_metadata_of_the_shipped_file(tmp_path):
    """The base's version, v2 and v-parameterization, as `fsdx train lora` writes them in its own kohya file."""
    from fashionsd_x.models.export import export_lora

    written = export_lora(EMBEDDED_DIR / "lora", tmp_path / "lora.safetensors")
    with safe_open(str(written), "pt") as exported, \
            safe_open(str(EMBEDDED_DIR / "lora" / "pytorch_lora_weights_kohya.safetensors"), "pt") as shipped:
        ours, theirs = exported.metadata(), shipped.metadata()
    kohya = {key: value for key, value in theirs.items() if key.startswith("ss_")}
    assert {"ss_base_model_version", "ss_v2", "ss_v_parameterization"} <= set(kohya)
    assert {key: ours.get(key) for key in kohya} == kohya


def test_an_exported_model_carries_its_vae_scale_and_says_how_diffusers_reads_it(tmp_path, capsys):
    """The tiny VAE's latent scale is no tensor and not SD's 0.18215: it travels in the file's metadata."""
    from diffusers import AutoencoderKL

    from fashionsd_x.cli import main

    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "model.safetensors")]) == 0
    printed = capsys.readouterr().out
    scale = AutoencoderKL.load_config(EMBEDDED_DIR / "vae")["scaling_factor"]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert float(handle.metadata()["vae_scaling_factor"]) == scale != 0.18215
    assert f"from_single_file('{tmp_path / 'model.safetensors'}', config='{EMBEDDED_DIR}')" in printed
    assert load_base(tmp_path / "model.safetensors", config=EMBEDDED_DIR).vae.config.scaling_factor == scale
