"""Diffusers <-> original LDM (single-file) key names of a Stable Diffusion UNet, VAE and text encoder.

Written for any block layout, so that diffusers' own converter reads an exported file back to identical weights,
and used by the single-file loader to list the keys a config expects. The renaming, diffusers -> LDM:
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
from collections.abc import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers' CLIPTextModel keys

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


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
    _check_layers_per_block(layers_per_block)
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


CONTROLNET_PREFIX = "control_model."  # the original ControlNet layout, read by A1111's extension and ComfyUI


def controlnet_key_to_ldm(key: str, layers_per_block: int, hint_blocks: int) -> str:
    """One diffusers ControlNetModel key in the original ControlNet naming (without the control_model. prefix).

    The encoder copy is named as the UNet's (input_blocks, middle_block, time_embed); the sketch encoder is one
    Sequential with a SiLU after each convolution (input_hint_block.0, .2, .4, ...); the zero convolutions are
    zero_convs.i.0 and middle_block_out.0.
    """
    if match := re.fullmatch(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)", key):
        name, block, param = match.groups()
        index = 0 if name == "conv_in" else 2 * (hint_blocks + 1) if name == "conv_out" else 2 * (int(block) + 1)
        return f"input_hint_block.{index}.{param}"
    if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
        return f"zero_convs.{match.group(1)}.0.{match.group(2)}"
    if match := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", key):
        return f"middle_block_out.0.{match.group(1)}"
    return unet_key_to_ldm(key, layers_per_block, set())


def controlnet_to_ldm(state_dict: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel state dict in the original layout, control_model.* keys."""
    _check_layers_per_block(layers_per_block)
    hint_blocks = len({key.split(".")[2] for key in state_dict if key.startswith("controlnet_cond_embedding.blocks.")})
    return {CONTROLNET_PREFIX + controlnet_key_to_ldm(key, layers_per_block, hint_blocks): tensor
            for key, tensor in state_dict.items()}


def _check_layers_per_block(layers_per_block: object) -> None:
    if not isinstance(layers_per_block, int):
        raise ValueError(f"per-block layers_per_block {layers_per_block} has no single-file layout; need one integer")
