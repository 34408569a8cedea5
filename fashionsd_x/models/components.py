"""What a loaded Stable Diffusion base is (Base) and the pieces every loader shares: the one-line load error, the
prediction types and the schedulers built from a base's scheduler config.

Kept apart from the loaders (base.py: hub ids and folders; single_file.py: one .safetensors file) so that both
import it and neither imports the other's module back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import diffusers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from fashionsd_x.files import save_safetensors

PREDICTION_TYPES = ("epsilon", "v_prediction")
# Classifier-free guidance of a base that recommends none (Stable Diffusion's own default). A base folder may ship
# GENERATION_DEFAULTS with the guidance it was measured best at, which generation and evaluation then default to.
DEFAULT_GUIDANCE = 7.5
GENERATION_DEFAULTS = "generation_defaults.json"
SD2_CROSS_ATTENTION_DIM = 1024  # OpenCLIP ViT-H text width; SD 1.x uses CLIP ViT-L's 768


class BaseLoadError(ValueError):
    """A base that cannot be found or loaded; the message is one line: what was tried, what to pass instead."""


@dataclass
class Base:
    """The components of a Stable Diffusion base, loaded once and shared by training and generation."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # training noise schedule from the base's scheduler config, maybe overridden
    source: str  # what the user passed: hub id, or the resolved folder/file path
    kind: str  # "hub", "folder" or "single_file"
    sampler: SchedulerMixin | None = None  # the base's own inference scheduler (PNDM for SD 1.5, DDIM for SD 2.1)
    guidance_scale: float = DEFAULT_GUIDANCE  # what a generation that names none uses (recommended_guidance)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: "epsilon" (SD 1.x, SD 2.x 512-base) or "v_prediction" (SD 2.x 768-v)."""
        return self.noise_scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        """How many pixels one latent cell covers along each side (8 for every SD 1.x/2.x VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def family(self) -> str:
        """"sd2" for an OpenCLIP ViT-H conditioned UNet (cross-attention 1024), else "sd1" (tiny bases included)."""
        return "sd2" if self.unet.config.cross_attention_dim == SD2_CROSS_ATTENTION_DIM else "sd1"

    def resolution_multiple(self) -> int:
        """Image sides must be a multiple of this: the VAE's downsampling times the UNet's, and of 8, which
        diffusers' Stable Diffusion pipelines require of every side whatever the VAE."""
        downsamplings = sum(1 for block in self.unet.down_blocks if block.downsamplers)
        return math.lcm(self.vae_scale_factor * 2**downsamplings, 8)

    def check_resolution(self, resolution: int) -> None:
        """Raise ValueError when `resolution` pixels cannot pass through this base's VAE and UNet unchanged."""
        multiple = self.resolution_multiple()
        if resolution <= 0 or resolution % multiple:
            nearest = max(multiple, round(resolution / multiple) * multiple)
            raise ValueError(f"resolution {resolution} does not fit base {self.source}: it must be a positive "
                             f"multiple of {multiple} (VAE x{self.vae_scale_factor} times the UNet's downsampling, and of 8); "
                             f"try {nearest}")

    def pipeline(self, **extra) -> StableDiffusionPipeline:
        """A StableDiffusionPipeline sharing these components, without a safety checker; `extra` overrides any
        constructor argument (e.g. scheduler=...)."""
        sampler = self.sampler or DDIMScheduler.from_config(self.noise_scheduler.config)
        components = {
            "vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet,
            # A fresh scheduler per pipeline: set_timesteps mutates it, so pipelines must not share one.
            "scheduler": type(sampler).from_config(sampler.config),
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
        }
        return StableDiffusionPipeline(**{**components, **extra})


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors often span a paragraph)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def build_schedulers(config: dict, prediction_type: str | None, source: str) -> tuple[DDPMScheduler, SchedulerMixin]:
    """The training noise schedule (DDPM) and the base's own sampler, both from one scheduler config.

    An explicit `prediction_type` wins over the config in both, or a v-prediction UNet would be sampled as epsilon.
    """
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    name = config.get("_class_name", "")
    sampler_class = getattr(diffusers, name, None)
    if not (isinstance(sampler_class, type) and issubclass(sampler_class, SchedulerMixin)):
        raise BaseLoadError(f"scheduler class {name!r} in base {source} is not a diffusers scheduler")
    return DDPMScheduler.from_config(config, **overrides), sampler_class.from_config(config, **overrides)


TEXT_MODEL_PREFIX = "text_model."  # CLIPTextModel's standard key layout, as every SD checkpoint on the Hub stores it


def standardize_text_encoder(folder: Path) -> Path | None:
    """Rewrite FOLDER/text_encoder/model.safetensors in CLIP's standard key layout (text_model.*), in place.

    transformers 5 saves CLIPTextModel without the text_model. prefix; transformers 4 (and tools built on it) then
    find none of the keys they expect and silently start from random weights. transformers 5 reads the standard
    layout too, so writing it keeps a base loadable by both. Returns the file, or None when there is none.
    """
    path = Path(folder) / "text_encoder" / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {"format": "pt"}
        if all(key.startswith(TEXT_MODEL_PREFIX) for key in handle.keys()):
            return path
    tensors = load_file(str(path))
    renamed = {key if key.startswith(TEXT_MODEL_PREFIX) else TEXT_MODEL_PREFIX + key: value
               for key, value in tensors.items()}
    return save_safetensors(renamed, path, metadata)
