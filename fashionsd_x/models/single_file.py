"""Single-file Stable Diffusion checkpoints: the original LDM layout that A1111, ComfyUI and model sites share.

Loading: diffusers' `from_single_file` converts LDM keys to diffusers keys, but normally downloads the model's
configs from the Hub. FashionSD-X ships the configs of the two standard architectures (configs/sd15: SD 1.x,
configs/sd2: SD 2.x 768-v) and picks one from the checkpoint's tensor shapes, so loading works offline; a caller
may name any diffusers folder as the config instead. Only .safetensors files are read, one component at a time.

Export (the inverse, diffusers -> LDM) is in export.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from itertools import chain
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import SingleFileComponentError, create_diffusers_clip_model_from_ldm
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from fashionsd_x.models.components import PREDICTION_TYPES, Base, BaseLoadError, build_schedulers, first_line
from fashionsd_x.models.ldm_keys import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, prefixed, unet_to_ldm, vae_to_ldm
from fashionsd_x.models.tokenizer import write_clip_tokenizer

OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP keys (resblocks, in_proj)
CONFIGS = Path(__file__).parent / "configs"
FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2"}  # UNet cross-attention width = text encoder width -> family
CONFIG_BY_FAMILY = {"sd1": "sd15", "sd2": "sd2"}  # family -> shipped config folder under configs/
CONFIG_FILES = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json")
LATENT_CHANNELS = 4  # a text-to-image UNet's input; inpainting (9) and depth (5) models differ

T = TypeVar("T")


# ---------------------------------------------------------------- reading a checkpoint


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the safetensors header only (no weights are loaded)."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except (OSError, SafetensorError) as error:
        raise BaseLoadError(f"{path} is not a readable .safetensors file ({first_line(error)})") from error


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """The file's string metadata (export_single_file records prediction_type there)."""
    with safe_open(str(path), framework="pt") as file:
        return file.metadata() or {}


def read_tensors(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors whose keys start with one of `prefixes`; EMA copies and other components stay on disk."""
    with safe_open(str(path), framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys() if key.startswith(prefixes)}


def check_components(shapes: Mapping[str, tuple[int, ...]], source: Path | str) -> None:
    """Raise BaseLoadError naming the components a full SD checkpoint should hold but this one lacks."""
    expected = {"UNet": (UNET_PREFIX,), "VAE": (VAE_PREFIX,), "text encoder": (CLIP_PREFIX, OPEN_CLIP_PREFIX)}
    missing = [name for name, prefixes in expected.items() if not any(key.startswith(prefixes) for key in shapes)]
    if missing:
        raise BaseLoadError(f"{source} has no {' or '.join(missing)} weights (keys under {UNET_PREFIX}, {VAE_PREFIX}, "
                            "cond_stage_model.), so it is no full SD 1.x/2.x checkpoint (a LoRA or VAE alone?); pass a "
                            "full checkpoint or a diffusers folder")


def cross_attention_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """In-features of the UNet's cross-attention keys: the width of the text encoder the UNet was trained with."""
    for key, shape in shapes.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return shape[1]
    return None


def detect_family(shapes: Mapping[str, tuple[int, ...]], source: Path | str = "checkpoint") -> str:
    """"sd1" or "sd2" from tensor shapes alone (CLIP ViT-L 768 vs OpenCLIP ViT-H 1024 cross-attention)."""
    if any(key.startswith("conditioner.embedders.") for key in shapes):
        raise BaseLoadError(f"{source} is an SDXL checkpoint; FashionSD-X trains SD 1.x/2.x bases: pass one of those")
    width = cross_attention_width(shapes)
    if width not in FAMILY_BY_WIDTH:
        raise BaseLoadError(f"cannot tell the architecture of {source} (UNet cross-attention width {width}; SD 1.x has "
                            "768, SD 2.x 1024): pass config=FOLDER, a diffusers folder of the same architecture")
    return FAMILY_BY_WIDTH[width]


def shipped_config(shapes: Mapping[str, tuple[int, ...]], source: Path | str) -> Path:
    """The shipped SD 1.x or SD 2.x config folder matching a checkpoint, refusing UNets those configs cannot hold."""
    family = detect_family(shapes, source)
    in_channels = shapes.get(f"{UNET_PREFIX}input_blocks.0.0.weight", (0, LATENT_CHANNELS))[1]
    if in_channels != LATENT_CHANNELS:
        raise BaseLoadError(f"{source} has a UNet with {in_channels} input channels (an inpainting or depth model?); "
                            f"a text-to-image base has {LATENT_CHANNELS}: pass one, or config=FOLDER for this model")
    return CONFIGS / CONFIG_BY_FAMILY[family]


def custom_config(config: str | Path) -> Path:
    """A caller-named config folder, checked for the four component configs a single file needs."""
    folder = Path(config).expanduser().resolve()
    missing = [name for name in CONFIG_FILES if not (folder / name).is_file()]
    if missing:
        raise BaseLoadError(f"config folder {folder} lacks {', '.join(missing)}; pass a diffusers folder of the "
                            "checkpoint's architecture")
    return folder


# ---------------------------------------------------------------- loading


def load_single_file(path: Path, config: str | Path | None, prediction_type: str | None,
                     torch_dtype: torch.dtype) -> Base:
    """A Base from one LDM-layout .safetensors file; `config` overrides the detected architecture.

    The prediction type comes from, in order: the argument, the file's metadata (written by export_single_file),
    the config's scheduler. An SD 2.x 512-base file needs prediction_type="epsilon" (the shipped SD 2 config is 768-v).
    """
    shapes = checkpoint_shapes(path)
    check_components(shapes, path)
    config_folder = custom_config(config) if config is not None else shipped_config(shapes, path)
    recorded = checkpoint_metadata(path).get("prediction_type")
    prediction_type = prediction_type or (recorded if recorded in PREDICTION_TYPES else None)
    folder = str(config_folder)

    def load(component: str, loader: Callable[[], T]) -> T:
        try:
            return loader()
        except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
            # diffusers reports a missing tensor as a meta-device copy failure; name the tensor instead.
            missing = missing_tensors(component, config_folder, shapes)
            reason = f"{len(missing)} tensors missing (first: {missing[0]})" if missing else first_line(error)
            raise BaseLoadError(f"could not load the {component} of {path} with the configs in {folder}: {reason}; "
                                "pass the matching config=FOLDER or a complete checkpoint") from error

    # Models are built in float32 and diffusers casts file tensors to them, so float32 needs no torch_dtype (which
    # would only add a cast and diffusers' warning about it).
    dtype = None if torch_dtype == torch.float32 else torch_dtype
    common = {"config": folder, "torch_dtype": dtype, "local_files_only": True}
    unet = load("unet", lambda: UNet2DConditionModel.from_single_file(
        read_tensors(path, (UNET_PREFIX,)), subfolder="unet", **common))
    vae = load("vae", lambda: AutoencoderKL.from_single_file(
        read_tensors(path, (VAE_PREFIX,)), subfolder="vae", **common))
    text_encoder = load("text_encoder", lambda: create_diffusers_clip_model_from_ldm(
        CLIPTextModel, read_tensors(path, (CLIP_PREFIX, OPEN_CLIP_PREFIX)), subfolder="text_encoder", **common))
    for component, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        check_loaded(model, component, path, folder)
    if scale := _recorded_float(checkpoint_metadata(path).get("vae_scaling_factor")):  # export_single_file's
        vae.register_to_config(scaling_factor=scale)
    scheduler_config = load("scheduler", lambda: DDPMScheduler.load_config(folder, subfolder="scheduler"))
    noise_scheduler, sampler = build_schedulers(scheduler_config, prediction_type, str(path))
    return Base(tokenizer=load_tokenizer(config_folder), text_encoder=text_encoder.eval(), vae=vae.eval(),
                unet=unet.eval(), noise_scheduler=noise_scheduler, source=str(path), kind="single_file",
                sampler=sampler)


def _recorded_float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and 0 < value < float("inf") else None


def missing_tensors(component: str, folder: Path, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The LDM keys of a UNet or VAE that the checkpoint lacks (empty for layouts the exporter cannot name)."""
    try:
        return sorted(expected_ldm_keys(component, folder) - shapes.keys())
    except ValueError:
        return []


def expected_ldm_keys(component: str, folder: Path) -> set[str]:
    """The LDM keys a UNet or VAE of the config in `folder` needs, from a weightless (meta device) model."""
    with torch.device("meta"):
        if component == "unet":
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
            return set(prefixed(UNET_PREFIX, unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)))
        if component == "vae":
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
            return set(prefixed(VAE_PREFIX, vae_to_ldm(vae.state_dict(), len(vae.config.up_block_types))))
    return set()


def check_loaded(model: torch.nn.Module, component: str, path: Path, folder: str) -> None:
    """Raise when the file lacked tensors the config expects: diffusers leaves those on the meta device silently."""
    missing = [name for name, tensor in chain(model.named_parameters(), model.named_buffers()) if tensor.is_meta]
    if missing:
        raise BaseLoadError(f"{path} lacks {len(missing)} {component} tensors of the architecture in {folder} (first: "
                            f"{missing[0]}); pass the matching config=FOLDER or a complete checkpoint")


def load_tokenizer(folder: Path) -> CLIPTokenizer:
    """The config folder's tokenizer, or the CLIP BPE written on the spot with the folder's tokenizer_config.json
    (shipped configs keep only that file: SD 2.x pads with "!", SD 1.x with the end token)."""
    tokenizer_folder = folder / "tokenizer"
    if (tokenizer_folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(tokenizer_folder)
    with tempfile.TemporaryDirectory() as scratch:
        written = write_clip_tokenizer(scratch)
        if (tokenizer_folder / "tokenizer_config.json").is_file():
            (written / "tokenizer_config.json").write_text((tokenizer_folder / "tokenizer_config.json").read_text())
        return CLIPTokenizer.from_pretrained(written)
