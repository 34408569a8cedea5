"""A trainer's `Method`: what is trainable, how the model predicts, how it is saved (LoRA, ControlNet and
the full base each subclass it); what the training loop (core.py) calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import PreTrainedModel

from fashionsd_x.files import save_safetensors
from fashionsd_x.models.base import Base
from fashionsd_x.train.config import TrainConfig


class Method(ABC):
    """What differs between trainers: the trainable modules, the prediction, the pipeline and the artifact."""

    stage: ClassVar[str]
    columns: ClassVar[tuple[str, ...]] = ()  # dataset columns needed besides image and text

    def __init__(self, base: Base, config: TrainConfig) -> None:
        self.base, self.config = base, config
        self.accelerator: Accelerator | None = None
        self.prepared: list[torch.nn.Module] = []

    @abstractmethod
    def trainable(self) -> list[torch.nn.Module]:
        """Modules holding the trainable parameters, in a fixed order (prepared, optimised, checkpointed)."""

    @abstractmethod
    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model output for noisy latents (what the loss compares with noise or velocity)."""

    @abstractmethod
    def pipeline(self) -> DiffusionPipeline:
        """An inference pipeline over the models being trained, for validation images."""

    @abstractmethod
    def save(self, out: Path, metadata: dict[str, str]) -> None:
        """Write the final artifact into `out` (main process only), `metadata` in its safetensors header."""

    @abstractmethod
    def weights(self, out: Path) -> Path:
        """Where `save` puts the artifact to load (a file or a folder)."""

    def validation_inputs(self, sketch: Image.Image | None) -> dict[str, Any]:
        return {}

    def item_options(self) -> dict[str, Any]:
        """Extra TrainItems options of this method (ControlNet: how sketches are conditioned)."""
        return {}

    def prepare_batch(self, batch: dict[str, Any], seed: int) -> None:
        """Complete a micro-batch in place before the loss, drawing only from SEED (ControlNet: augmentation)."""

    def extra_loss(self, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor,
                   batch: dict[str, Any]) -> torch.Tensor | None:
        """A loss added to the denoising loss (ControlNet: sketch consistency), or None."""
        return None

    def enable_gradient_checkpointing(self) -> None:
        for module in self.trainable():
            enable_checkpointing(module)

    def cache_identity(self) -> dict[str, Any]:
        """What besides the base's files changes the frozen encoders (a fused LoRA); part of the cache key."""
        return {}

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.base.text_encoder

    @property
    def trains_text_encoder(self) -> bool:
        return False

    def bind(self, accelerator: Accelerator, prepared: list[torch.nn.Module]) -> None:
        self.accelerator, self.prepared = accelerator, prepared

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(module) if self.accelerator else module


class UNetMethod(Method):
    """A trainer whose trainable modules are the UNet and, when `trains_text_encoder`, the text encoder (LoRA,
    full base training): the UNet alone predicts, and the base's own pipeline shows the trained weights."""

    def trainable(self) -> list[torch.nn.Module]:
        return [self.base.unet] + ([self.base.text_encoder] if self.trains_text_encoder else [])

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.prepared[1] if self.trains_text_encoder else self.base.text_encoder

    def predict(self, noisy, timesteps, text, batch):
        return self.prepared[0](noisy, timesteps, encoder_hidden_states=text).sample

    def pipeline(self) -> DiffusionPipeline:
        return self.base.pipeline()  # prepared modules wrap the base's own (DDP, adapters inside), so it sees them


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Rewrite a safetensors file (atomically) with `metadata` added to its header (existing keys kept)."""
    with safe_open(str(path), framework="pt") as handle:
        existing = handle.metadata() or {}
    save_safetensors(load_file(str(path)), path, metadata={**existing, **metadata})


def enable_checkpointing(module: torch.nn.Module) -> None:
    """Gradient (activation) checkpointing on a diffusers model or a transformers text encoder."""
    if isinstance(module, PreTrainedModel):
        # transformers 5 renamed it (the old name warns); 4.x has only the old one.
        getattr(module, "activation_checkpointing_enable", module.gradient_checkpointing_enable)()
    else:
        module.enable_gradient_checkpointing()
