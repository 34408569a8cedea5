"""Tiny Stable Diffusion bases: the same diffusers/transformers classes as SD 1.x, a few million parameters.

Tests build these from configs (no download) and save them as a diffusers folder, so the code path they
exercise is the one a real local checkpoint takes; the embedded default model uses the same builder with
larger settings. Weights are random unless trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from fashionsd_x.models.components import standardize_text_encoder
from fashionsd_x.models.tokenizer import MAX_LENGTH, clip_tokenizer, write_vocab_and_merges

CLIP_VOCAB_SIZE = 49408


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of a tiny SD-class base; defaults give ~2M parameters for fast tests."""

    sample_size: int = 32  # image side in pixels the UNet is configured for
    unet_channels: tuple[int, ...] = (32, 64)  # UNet block widths; one down/up block per entry
    vae_channels: tuple[int, ...] = (32, 64)  # VAE block widths; latents are 2**(len-1) times smaller
    text_hidden: int = 32  # CLIP text encoder width (also the UNet's cross-attention dim)
    text_layers: int = 2  # CLIP text encoder depth
    attention_head_dim: int = 8  # attention heads per UNet block (diffusers' historical name for the head count)
    attention_levels: tuple[int, ...] | None = None  # UNet levels (0: full latent size) with cross-attention;
    # None: every level but the coarsest, as in SD. Attention at fine levels dominates a small UNet's cost.
    prediction_type: str = "epsilon"  # or "v_prediction" (SD 2.x 768-v style)
    norm_groups: int | None = None  # UNet GroupNorm groups; None: min(32, first width). Keep several channels
    # per group: one channel per group normalises away each channel's mean, the colour of a uniform region.

    def __post_init__(self) -> None:
        if len(self.unet_channels) < 2 or len(self.vae_channels) < 1:
            raise ValueError("unet_channels needs at least 2 entries and vae_channels at least 1")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")
        if self.attention_levels is not None and not set(self.attention_levels) <= set(range(len(self.unet_channels))):
            raise ValueError(f"attention_levels {self.attention_levels} must be UNet levels 0..{len(self.unet_channels) - 1}")
        if self.sample_size % (2 ** (len(self.vae_channels) - 1 + len(self.unet_channels) - 1)):
            raise ValueError(f"sample_size {self.sample_size} must be divisible by the VAE and UNet downsampling")


def tiny_unet(config: TinyConfig) -> UNet2DConditionModel:
    blocks = len(config.unet_channels)
    levels = range(blocks - 1) if config.attention_levels is None else config.attention_levels
    down = tuple("CrossAttnDownBlock2D" if level in levels else "DownBlock2D" for level in range(blocks))
    return UNet2DConditionModel(
        sample_size=config.sample_size // 2 ** (len(config.vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=tuple(kind.replace("Down", "Up") for kind in reversed(down)),
        cross_attention_dim=config.text_hidden,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_groups or min(32, config.unet_channels[0]),
    )


def tiny_vae(config: TinyConfig) -> AutoencoderKL:
    blocks = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        norm_num_groups=min(32, config.vae_channels[0]),
        sample_size=config.sample_size,
    )


def tiny_text_encoder(config: TinyConfig) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=config.text_hidden,
        intermediate_size=config.text_hidden * 4,
        num_hidden_layers=config.text_layers,
        num_attention_heads=max(1, config.text_hidden // 16),
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    ))


def tiny_scheduler(config: TinyConfig) -> DDPMScheduler:
    # SD's training schedule: 1000 steps, scaled-linear betas 0.00085 -> 0.012.
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=config.prediction_type, clip_sample=False, steps_offset=1)


def tiny_pipeline(config: TinyConfig | None = None, seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised tiny StableDiffusionPipeline (seeded, so two calls give the same weights)."""
    config = config or TinyConfig()
    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=tiny_vae(config), text_encoder=tiny_text_encoder(config), tokenizer=clip_tokenizer(),
        unet=tiny_unet(config), scheduler=tiny_scheduler(config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_base(out: Path, config: TinyConfig | None = None, seed: int = 0) -> Path:
    """Save a tiny base as a diffusers folder (safetensors) that StableDiffusionPipeline.from_pretrained loads."""
    tiny_pipeline(config, seed).save_pretrained(out, safe_serialization=True)
    write_vocab_and_merges(Path(out) / "tokenizer")  # the slow tokenizer's files too
    standardize_text_encoder(Path(out))
    return Path(out)
