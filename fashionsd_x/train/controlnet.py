"""ControlNet training on the dataset's sketches, the base (optionally with a LoRA fused in) frozen (paper step 3).

ControlNet (Zhang et al. 2023) is a trainable copy of the UNet's encoder fed the sketch through a small
convolutional embedding; its zero-initialised outputs are added to the frozen UNet's skip connections. With
`--lora` the LoRA is merged into the frozen UNet first, so the ControlNet learns to steer the fine-tuned model
it will be used with. Sketches reach the model through `fashionsd_x.data.conditioning.control_image`, the
function generation uses too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image

from fashionsd_x.data.augment import augment_sample
from fashionsd_x.data.conditioning import control_image
from fashionsd_x.files import export_folder
from fashionsd_x.models.base import Base, first_line
from fashionsd_x.train.config import ConfigError, ControlNetTrainConfig, local_source, resolve_config
from fashionsd_x.train.consistency import consistency_loss
from fashionsd_x.train.core import Machines, process_rows, train
from fashionsd_x.train.data import dataset_sketch, derive_seed, image_tensor, region_tensor
from fashionsd_x.train.lora import fuse_into_base
from fashionsd_x.train.method import Method, add_metadata
from fashionsd_x.train.result import TrainResult

CONTROLNET_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what ControlNetModel.save_pretrained writes
EMBEDDING_CHANNELS = (16, 32, 96, 256)  # diffusers' default sketch-embedding widths (3 stride-2 convs: 8x down)
# The 1 x 1 convolutions whose outputs are the residuals added to the UNet; scaling their weights and biases
# scales every residual, which is exactly what controlnet_conditioning_scale does at generation time.
OUTPUT_LAYERS = ("controlnet_down_blocks", "controlnet_mid_block")


def train_controlnet(data: Path, base: str = "tiny", out: Path = Path("outputs/controlnet"),
                     lora: Path | None = None, init: str | None = None, config: Path | None = None,
                     resume: str | None = None, num_processes: int = 1, num_machines: int = 1,
                     machine_rank: int = 0, main_process_ip: str | None = None, main_process_port: int = 29500,
                     overrides: dict[str, str] | None = None, **settings: Any) -> TrainResult:
    """Train a ControlNet that steers a Stable Diffusion base with garment sketches (sketch + caption -> image).

    OUT is loadable with ControlNetModel.from_pretrained(OUT) (config.json + diffusion_pytorch_model.safetensors)
    and also holds train_config.yaml, a model card README.md, validation/ images (with their sketches from the
    test split), logs/ (TensorBoard) and checkpoints/. Options left out come from --config (e.g.
    configs/controlnet_dresscode.yaml, the paper's run), else the defaults; any other setting can be given as
    --name value (e.g. --random-flip true --invert-sketch false).

    Args:
        data: dataset folder written by `fsdx data build` (columns image, sketch and text).
        base: Stable Diffusion 1.x/2.x base: hub id, diffusers folder or .safetensors file; tiny is the
            embedded model's base.
        out: output folder.
        lora: a LoRA output folder (of `fsdx train lora` on this base) fused into the frozen UNet first.
        init: ControlNet (hub id or folder) to start from instead of a copy of the base UNet's encoder.
        config: YAML file of settings (a preset in configs/ or an earlier run's train_config.yaml).
        resume: continue from `latest` (the newest complete checkpoint in OUT/checkpoints) or a checkpoint folder.
        num_processes: data-parallel processes (GPUs, or CPU processes without CUDA), launched via accelerate; over
            several machines, all of theirs together (docs/multi-node.md).
        num_machines: machines (nodes) the run spans, each running this same command with its own --machine-rank.
        machine_rank: this machine's number, 0 to num_machines - 1; machine 0's first process writes OUT, a folder
            every machine shares.
        main_process_ip: address of machine 0 as the other machines reach it (needed when num_machines > 1).
        main_process_port: port on machine 0 where the machines meet.
        overrides: any other setting by name, values as YAML scalars.
        settings: any field of ControlNetTrainConfig by name (max_steps=100, lr=1e-4, ...); every one is also an
            option of the command, with its meaning and default in --help.
    """
    run_config = resolve_config(
        ControlNetTrainConfig, config, overrides, data=local_source(data), base=local_source(base),
        lora=None if lora is None else local_source(lora), init=None if init is None else local_source(init),
        **settings)
    if run_config.sketch is None:  # recorded so generation extracts a photo's sketch as the dataset did
        run_config.sketch = dataset_sketch(Path(data))
    return train(ControlNetMethod, run_config, Path(out), resume, num_processes,
                 Machines(num_machines, machine_rank, main_process_ip, main_process_port))


class ControlNetMethod(Method):
    """A ControlNet trained to steer the frozen (maybe LoRA-fused) UNet with sketches."""

    stage = "controlnet"
    columns = ("sketch",)

    def __init__(self, base: Base, config: ControlNetTrainConfig) -> None:
        super().__init__(base, config)
        if config.lora:
            fuse_into_base(base, config.lora)
        self.controlnet = load_controlnet(config.init, base) if config.init else ControlNetModel.from_unet(
            base.unet, conditioning_embedding_out_channels=embedding_channels(base.vae_scale_factor))
        self.controlnet.requires_grad_(True)
        # Parsed once: prepare_batch runs per micro-batch.
        self.conditioning, self.augment = config.conditioning(), config.augmentation()

    def trainable(self) -> list[torch.nn.Module]:
        return [self.controlnet]

    def predict(self, noisy, timesteps, text, batch):
        down, middle = self.prepared[0](noisy, timesteps, encoder_hidden_states=text, controlnet_cond=batch["control"],
                                        return_dict=False)
        return self.base.unet(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                              mid_block_additional_residual=middle).sample

    def pipeline(self) -> StableDiffusionControlNetPipeline:
        return StableDiffusionControlNetPipeline(**self.base.pipeline().components, requires_safety_checker=False,
                                                 controlnet=self.unwrap(self.prepared[0]))

    def validation_inputs(self, sketch: Image.Image | None) -> dict:
        image = control_image(sketch, self.config.resolution, self.config.invert_sketch, self.conditioning)[None]
        return {"image": image, "controlnet_conditioning_scale": self.config.conditioning_scale}

    def item_options(self) -> dict[str, Any]:
        return {"conditioning": self.conditioning, "raw_sketch": self.augment is not None,
                "region": self.config.consistency_weight > 0}

    def prepare_batch(self, batch: dict[str, Any], seed: int) -> None:
        """Sketch-style augmentation, then conditioning, per sample (row k of the global micro-batch draws from
        (SEED, k), whichever process holds it); the garment's region (for the consistency loss) is taken from the
        photo after it moved with its sketch."""
        augment, config = self.augment, self.config
        if augment is None:
            return
        device = batch["index"].device
        first = process_rows(self.accelerator, batch["index"].shape[0]).start if self.accelerator else 0
        controls, pixels, regions = [], [], []
        for k, (sketch, image) in enumerate(zip(batch.pop("sketch_raw"), batch.pop("image_raw")), start=first):
            sketch, image = augment_sample(sketch, image, augment, np.random.default_rng(derive_seed(seed, k)))
            controls.append(control_image(sketch, config.resolution, config.invert_sketch, self.conditioning))
            if augment.moves_garment():
                pixels.append(image_tensor(Image.fromarray(image), config.resolution))
            if config.consistency_weight > 0:
                regions.append(region_tensor(Image.fromarray(image), config.resolution))
        batch["control"] = torch.stack(controls).to(device)
        if augment.moves_garment():  # the photo moved with its sketch
            batch["pixels"] = torch.stack(pixels).to(device)
        if regions:
            batch["region"] = torch.stack(regions).to(device)

    def extra_loss(self, noisy, prediction, timesteps, batch):
        weight = self.config.consistency_weight
        if not weight:
            return None
        return weight * consistency_loss(self.base, noisy, prediction, timesteps, batch["region"])

    def enable_gradient_checkpointing(self) -> None:
        # The frozen UNet's activations are kept for the backward pass into the residuals too.
        self.controlnet.enable_gradient_checkpointing()
        self.base.unet.enable_gradient_checkpointing()

    def cache_identity(self) -> dict:
        return {"lora": self.config.lora}  # a fused LoRA may change the text encoder

    def weights(self, out: Path) -> Path:
        return out  # ControlNetModel.from_pretrained(OUT)

    def save(self, out: Path, metadata: dict[str, str]) -> None:
        controlnet, gain = self.unwrap(self.prepared[0]), self.config.output_gain
        with export_folder(out) as staging:
            scale_outputs(controlnet, gain)  # the final save: nothing trains on the scaled weights
            controlnet.save_pretrained(staging, safe_serialization=True)
            add_metadata(staging / CONTROLNET_WEIGHTS, metadata)


def embedding_channels(vae_scale_factor: int) -> tuple[int, ...]:
    """Sketch-embedding widths whose stride-2 convs bring the sketch to the latent size (8x for SD 1.x/2.x)."""
    return EMBEDDING_CHANNELS[: int(math.log2(vae_scale_factor)) + 1]


def load_controlnet(init: str, base: Base) -> ControlNetModel:
    """A ControlNet to continue training, checked to fit the base's UNet and latent size."""
    try:
        controlnet = ControlNetModel.from_pretrained(init, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"init {init}: cannot load a ControlNet there: {first_line(error)}") from None
    fits = (controlnet.config.cross_attention_dim == base.unet.config.cross_attention_dim
            and list(controlnet.config.block_out_channels) == list(base.unet.config.block_out_channels)
            and 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1) == base.vae_scale_factor)
    if not fits:
        raise ConfigError(f"init {init} is a ControlNet for another architecture than base {base.source} "
                          "(cross-attention width, block widths or latent scale differ)")
    scale_outputs(controlnet, 1 / recorded_gain(init))  # training goes on from the trained weights themselves
    return controlnet


def scale_outputs(controlnet: ControlNetModel, factor: float) -> None:
    """Multiply every residual CONTROLNET adds to the UNet by FACTOR, in place (its output convolutions)."""
    if factor == 1:
        return
    with torch.no_grad():
        for name in OUTPUT_LAYERS:
            for parameter in getattr(controlnet, name).parameters():
                parameter.mul_(factor)


def recorded_gain(controlnet: str | Path) -> float:
    """The output_gain a FashionSD-X ControlNet folder records in its train_config.yaml; 1 for any other."""
    config = Path(controlnet) / "train_config.yaml"
    if not config.is_file():
        return 1.0
    try:
        settings = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config}: not valid YAML: {first_line(error)}") from None
    return float(settings.get("output_gain", 1.0)) if isinstance(settings, dict) else 1.0
