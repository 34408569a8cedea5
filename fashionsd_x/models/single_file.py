"""Single-file Stable Diffusion checkpoints: the original LDM layout that A1111, ComfyUI and model sites share.

Loading: diffusers' `from_single_file` converts LDM keys to diffusers keys, but normally downloads the model's
configs from the Hub. FashionSD-X ships the configs of the two standard architectures (configs/sd15: SD 1.x,
configs/sd2: SD 2.x 768-v) and picks one from the checkpoint's tensor shapes, so loading works offline; a caller
may name any diffusers folder as the config instead. Only .safetensors files are read, one component at a time.

Export: the inverse renaming (diffusers -> LDM), written for any block layout so that diffusers' own converter
reads the file back to identical weights:
  UNet  `model.diffusion_model.`: conv_in -> input_blocks.0.0; down block b, layer j -> input_blocks.(1 + b(L+1) + j)
        (resnet .0, attention .1), its downsampler -> input_blocks.(1 + b(L+1) + L).0.op; mid_block -> middle_block
        .0/.1/.2; up block b, layer j -> output_blocks.(b(L+1) + j), its upsampler after the last layer (.1 without
        attention, .2 with); L = layers_per_block, up blocks have L+1 layers.
  VAE   `first_stage_model.`: down_blocks.i -> down.i, up_blocks.i -> up.(n-1-i) (LDM numbers the decoder from the
        latent side), resnets -> block, mid -> block_1/attn_1/block_2, attention linears -> 1x1 convs.
  Text  `cond_stage_model.transformer.text_model.`: the transformers CLIP layout, as SD 1.x files store it. SD 2.x
        bases are written this way too: diffusers and FashionSD-X read it back, but A1111/ComfyUI expect SD 2.x text
        encoders in OpenCLIP layout (with a 24th layer diffusers' SD 2 text encoder does not keep).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping
from itertools import chain
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import SingleFileComponentError, create_diffusers_clip_model_from_ldm
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from fashionsd_x.models.base import PREDICTION_TYPES, Base, BaseLoadError, build_schedulers, first_line, load_base
from fashionsd_x.models.tokenizer import write_clip_tokenizer

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers' CLIPTextModel keys
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP keys (resblocks, in_proj)
CONFIGS = Path(__file__).parent / "configs"
FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2"}  # UNet cross-attention width = text encoder width -> family
CONFIG_BY_FAMILY = {"sd1": "sd15", "sd2": "sd2"}  # family -> shipped config folder under configs/
CONFIG_FILES = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json")
LATENT_CHANNELS = 4  # a text-to-image UNet's input; inpainting (9) and depth (5) models differ

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

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
    scheduler_config = load("scheduler", lambda: DDPMScheduler.load_config(folder, subfolder="scheduler"))
    noise_scheduler, sampler = build_schedulers(scheduler_config, prediction_type, str(path))
    return Base(tokenizer=load_tokenizer(config_folder), text_encoder=text_encoder.eval(), vae=vae.eval(),
                unet=unet.eval(), noise_scheduler=noise_scheduler, source=str(path), kind="single_file",
                sampler=sampler)


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


# ---------------------------------------------------------------- export


def export_single_file(folder_or_base: str | Path | Base, path: str | Path) -> Path:
    """Write a base as one original-layout .safetensors checkpoint (what A1111, ComfyUI and from_single_file read).

    The file's metadata records family and prediction_type, which load_base honours when reading it back.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export path {path} must end in .safetensors")
    base = folder_or_base if isinstance(folder_or_base, Base) else load_base(folder_or_base)
    tensors = {
        **prefixed(UNET_PREFIX, unet_to_ldm(base.unet.state_dict(), base.unet.config.layers_per_block)),
        **prefixed(VAE_PREFIX, vae_to_ldm(base.vae.state_dict(), len(base.vae.config.up_block_types))),
        **prefixed(CLIP_PREFIX, text_encoder_to_ldm(base.text_encoder.state_dict())),
    }
    metadata = {"format": "pt", "family": base.family, "prediction_type": base.prediction_type,
                "exported_from": base.source}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.detach().contiguous() for key, tensor in tensors.items()}, str(path), metadata=metadata)
    return path


def prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in tensors.items()}


def rename_param(rest: str, names: Mapping[str, str], key: str) -> str:
    """Rename the submodule at the head of `rest` ("norm1.weight" -> "in_layers.0.weight")."""
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    raise ValueError(f"parameter {key} has no place in the single-file layout")


def unet_key_to_ldm(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """One diffusers UNet key in LDM naming (see the module docstring for the numbering)."""
    step = layers_per_block + 1  # LDM numbers a block's layers and its down/upsampler consecutively

    def layer(kind: str, rest: str) -> str:  # a layer's resnet sits at .0, its attention at .1
        return f"0.{rename_param(rest, UNET_RESNET, key)}" if kind == "resnets" else f"1.{rest}"

    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, index, rest = match.groups()
        return f"input_blocks.{1 + int(block) * step + int(index)}.{layer(kind, rest)}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        block, param = match.groups()
        return f"input_blocks.{1 + int(block) * step + layers_per_block}.0.op.{param}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, index, rest = match.groups()  # resnet 0, attention 0, resnet 1 -> middle_block.0, .1, .2
        if kind == "resnets":
            return f"middle_block.{2 * int(index)}.{rename_param(rest, UNET_RESNET, key)}"
        return f"middle_block.{2 * int(index) + 1}.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, index, rest = match.groups()
        return f"output_blocks.{int(block) * step + int(index)}.{layer(kind, rest)}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        block, param = match.groups()
        slot = 2 if int(block) in up_blocks_with_attention else 1  # the upsampler follows the attention if any
        return f"output_blocks.{int(block) * step + layers_per_block}.{slot}.conv.{param}"
    return rename_param(key, UNET_FIXED, key)


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in LDM naming (UNet weights keep their shapes)."""
    if not isinstance(layers_per_block, int):
        raise ValueError(f"per-block layers_per_block {layers_per_block} has no single-file layout; need one integer")
    with_attention = {int(key.split(".")[1]) for key in state_dict if re.match(r"up_blocks\.\d+\.attentions\.", key)}
    return {unet_key_to_ldm(key, layers_per_block, with_attention): tensor for key, tensor in state_dict.items()}


def vae_key_to_ldm(key: str, num_blocks: int) -> str:
    """One diffusers AutoencoderKL key in LDM naming; the decoder's up blocks are numbered from the latent side."""
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block, layer, rest = match.groups()
        return f"encoder.down.{block}.block.{layer}.{rename_param(rest, VAE_RESNET, key)}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block, layer, rest = match.groups()
        return f"decoder.up.{num_blocks - 1 - int(block)}.block.{layer}.{rename_param(rest, VAE_RESNET, key)}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        return f"decoder.up.{num_blocks - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        coder, layer, rest = match.groups()
        return f"{coder}.mid.block_{int(layer) + 1}.{rename_param(rest, VAE_RESNET, key)}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{match[1]}.mid.attn_1.{rename_param(match[2], VAE_ATTENTION, key)}"
    if match := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key):
        return f"{match[1]}.norm_out.{match[2]}"
    if re.fullmatch(r"((encoder|decoder)\.conv_(in|out)|quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key
    raise ValueError(f"VAE parameter {key} has no place in the single-file layout")


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in LDM naming; the mid attention's linears become 1x1 convolutions."""
    converted = {}
    for key, tensor in state_dict.items():
        ldm_key = vae_key_to_ldm(key, num_blocks)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's AttnBlock uses Conv2d(kernel 1) for q, k, v and proj_out
        converted[ldm_key] = tensor
    return converted


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel keys as SD 1.x files store them: under text_model. (transformers >= 5.6 dropped
    that level from CLIPTextModel, older versions keep it)."""
    return {key if key.startswith("text_model.") else f"text_model.{key}": tensor for key, tensor in state_dict.items()}
