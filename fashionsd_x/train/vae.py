"""Pretrain the tiny model's VAE (diffusers AutoencoderKL) from scratch on a built garment dataset.

Step 1 of the embedded model's recipe, before the UNet and text encoder. The loss is the Stable Diffusion
first-stage objective without its perceptual and adversarial terms (Rombach et al. 2022, sec. 3 and app. G):
L1 reconstruction on [-1, 1] pixels plus a tiny KL weight that keeps the latents near a unit Gaussian without
blurring them. Plain torch on purpose: one process, no accelerate, so this stays a small independent piece.

Determinism: every random draw of a step (flip, posterior sample) comes from a generator seeded by
(seed, step), and the batch order from a permutation seeded by (seed, epoch), so `resume="latest"` reproduces
an uninterrupted run's weights exactly without saving any RNG state.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from fashionsd_x.files import export_folder, write_text
from fashionsd_x.train.checkpoints import (
    STATE_NAME,
    CheckpointError,
    find_checkpoint,
    load_optimizer,
    save_optimizer,
    write_checkpoint,
)
from fashionsd_x.train.data import derive_seed, image_tensor, open_dataset

__all__ = ["VaeTrainConfig", "build_vae", "pretrain_vae", "reconstruction_loss", "train_vae"]

WEIGHTS_NAME = "vae.safetensors"  # the whole VAE's state_dict inside a checkpoint folder
REPORT_NAME = "vae_train.json"  # config, steps, seconds, final loss, hardware
SCALE_SAMPLES = 64  # training images encoded to measure the latent std behind scaling_factor


@dataclass(frozen=True)
class VaeTrainConfig:
    resolution: int = 128  # side in pixels of the square training images
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # one block per entry; len-1 halvings (4x at 3 blocks)
    layers_per_block: int = 1  # resnet layers per encoder block (the decoder gets one more, as in diffusers)
    latent_channels: int = 4  # SD-compatible latent depth: a 128 px image becomes 4 x 32 x 32
    channels_per_group: int = 4  # GroupNorm group width (see norm_groups)
    crop: int | None = None  # train on random crops of this side (the VAE is convolutional: 4x cheaper at half)
    batch_size: int = 16  # images per step
    lr: float = 2e-4  # AdamW learning rate, constant
    max_steps: int = 2000  # optimizer steps in the whole run
    kl_weight: float = 1e-6  # weight of the KL term; SD's first stage uses 1e-6
    random_flip: bool = True  # mirror half the images of a batch (garments are left/right symmetric)
    seed: int = 0  # initial weights, batch order and per-step noise
    checkpoint_every: int | None = 500  # write a resumable checkpoint every N steps (None: never)
    keep_checkpoints: int | None = 2  # newest checkpoints kept (None: all)

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            raise ValueError(f"block_out_channels={self.block_out_channels} must be a non-empty tuple of positive ints")
        if self.resolution % self.downsampling:
            raise ValueError(f"resolution={self.resolution} must be a multiple of the VAE's downsampling "
                             f"{self.downsampling} (2 ** (len(block_out_channels) - 1))")
        if self.crop is not None and not (0 < self.crop <= self.resolution and self.crop % self.downsampling == 0):
            raise ValueError(f"crop={self.crop} must be at most resolution={self.resolution} and a multiple of "
                             f"the VAE's downsampling {self.downsampling}")
        for name in ("resolution", "layers_per_block", "latent_channels", "channels_per_group", "batch_size",
                     "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if min(self.block_out_channels) % self.channels_per_group:
            raise ValueError(f"channels_per_group={self.channels_per_group} must divide every block width "
                             f"{self.block_out_channels}")
        if not self.lr > 0 or self.kl_weight < 0:
            raise ValueError(f"lr={self.lr} must be positive and kl_weight={self.kl_weight} non-negative")
        for name in ("checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1 (or None)")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def norm_groups(self) -> int:
        # A group of one channel is an instance norm: it erases each channel's mean over the image, which is the
        # garment's colour in a crop that shows only cloth (colours came out grey after 1,750 steps). SD's VAE
        # has 4-16 channels per group; every block's width must be divisible by the group count.
        return math.gcd(32, *self.block_out_channels, min(self.block_out_channels) // self.channels_per_group)


def build_vae(config: VaeTrainConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL for `config`; the same seed gives the same weights."""
    blocks = len(config.block_out_channels)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's global RNG
        torch.manual_seed(config.seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
            norm_num_groups=config.norm_groups, sample_size=config.resolution)


@torch.no_grad()
def reconstruction_loss(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean L1 between [-1, 1] images and their reconstruction through the posterior mode (no noise)."""
    vae.eval()
    recon = vae.decode(vae.encode(images).latent_dist.mode()).sample
    return (recon - images).abs().mean().item()


def _load_images(data: Path, resolution: int) -> torch.Tensor:
    """The train split's images as one uint8 N x 3 x R x R tensor (2,000 at 128 px: 98 MB), decoded once."""
    split = open_dataset(data, ("image",))["train"].select_columns(["image"])
    pixels = [image_tensor(row["image"], resolution) for row in split]
    return ((torch.stack(pixels) + 1.0) * 127.5).round().to(torch.uint8)


def _batch_indices(size: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Step `step`'s batch: a slice of its epoch's permutation seeded by (seed, epoch); a short tail is dropped."""
    per_epoch = size // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed(seed, 0x5EED, epoch)))
    return order[position * batch_size:(position + 1) * batch_size]


def _step_loss(vae: AutoencoderKL, pixels: torch.Tensor, config: VaeTrainConfig,
               step: int) -> tuple[torch.Tensor, float]:
    """Total loss of one batch and its L1 part; flip and posterior noise from this step's own generator."""
    generator = torch.Generator().manual_seed(derive_seed(config.seed, step))
    images = pixels.float() / 127.5 - 1.0
    if config.random_flip:
        flip = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if config.crop is not None and config.crop < config.resolution:
        # One window per batch, on the latent grid, so a crop's latents are a crop of the image's latents.
        top, left = (torch.randint(0, (config.resolution - config.crop) // config.downsampling + 1, (2,),
                                   generator=generator) * config.downsampling).tolist()
        images = images[..., top:top + config.crop, left:left + config.crop]
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=generator)  # CPU generator: the same draws on any device
    l1 = (vae.decode(latents).sample - images).abs().mean()
    kl = posterior.kl().mean()  # summed over latent elements, averaged over the batch, as in SD's first stage
    return l1 + config.kl_weight * kl, l1.item()


def _save_checkpoint(root: Path, step: int, config: VaeTrainConfig, vae: AutoencoderKL,
                     optimizer: torch.optim.Optimizer, seconds: float = 0.0, loss: float | None = None) -> Path:
    """checkpoint-<step> written atomically with its manifest (train.checkpoints.write_checkpoint), then pruned."""
    def fill(folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, folder / WEIGHTS_NAME)
        save_optimizer(optimizer.state_dict(), folder)
        # The step's L1 too: a run resumed at its last step reports it instead of a loss it never computed.
        state = {"step": step, "stage": "vae", "config": asdict(config), "seconds": round(seconds, 1), "loss": loss}
        (folder / STATE_NAME).write_text(json.dumps(state), encoding="utf-8")

    return write_checkpoint(root, step, fill, config.keep_checkpoints)


def _resume(checkpoint: Path, config: VaeTrainConfig, vae: AutoencoderKL, optimizer: torch.optim.Optimizer,
            device: torch.device) -> tuple[int, float, float | None]:
    """Load weights and optimizer from `checkpoint`; returns its step, the training seconds before it and the
    L1 of its last step (None in a checkpoint that did not record it).
    Refuses another architecture or seed."""
    state = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
    if state.get("stage") != "vae":
        raise CheckpointError(f"{checkpoint} is a {state.get('stage')} checkpoint, not a VAE pretraining one")
    saved = VaeTrainConfig(**{**state["config"], "block_out_channels": tuple(state["config"]["block_out_channels"])})
    changed = [name for name in ("resolution", "block_out_channels", "layers_per_block", "latent_channels",
                                 "batch_size", "seed", "random_flip", "crop", "channels_per_group") if getattr(saved, name) != getattr(config, name)]
    if changed:
        raise CheckpointError(f"cannot resume from {checkpoint}: {', '.join(changed)} differ from this run's; "
                              "use the same settings or start in a new OUT")
    vae.load_state_dict(load_file(checkpoint / WEIGHTS_NAME, device=str(device)))
    optimizer.load_state_dict(load_optimizer(checkpoint, device))
    return int(state["step"]), float(state.get("seconds", 0.0)), state.get("loss")


@torch.no_grad()
def _scaling_factor(vae: AutoencoderKL, pixels: torch.Tensor, device: torch.device) -> float:
    """1 / std of the latents: the factor the UNet stage multiplies latents by (SD's 0.18215 was found this way)."""
    vae.eval()
    images = pixels[:SCALE_SAMPLES].to(device).float() / 127.5 - 1.0
    return 1.0 / vae.encode(images).latent_dist.mode().std().item()


def _hardware(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": str(device), "name": name, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "torch": torch.__version__}


def pretrain_vae(data: Path, out: Path, max_steps: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, resolution: int | None = None, crop: int | None = None,
                 seed: int | None = None, checkpoint_every: int | None = None, resume: str | None = None) -> Path:
    """Pretrain a small AutoencoderKL from scratch on a built dataset's train images.

    Loss: L1 reconstruction on [-1, 1] pixels plus kl_weight times the KL to a unit Gaussian, AdamW, optional
    random flip. Checkpoints go to OUT/checkpoints/checkpoint-<step>/ (safetensors + JSON, written atomically);
    the final VAE is saved to OUT/vae (diffusers folder, its scaling_factor measured on the training images)
    with OUT/vae_train.json (config, steps, seconds, final loss, hardware).

    Args:
        data: dataset folder built by `fsdx data build` (a train split with an `image` column).
        out: output folder for the VAE, checkpoints and the training report.
        max_steps: optimizer steps in the whole run (default 2000).
        batch_size: images per step (default 16).
        lr: AdamW learning rate (default 2e-4).
        resolution: side in pixels the images are padded and resized to (default 128).
        crop: train on random square crops of this side (default: whole images).
        seed: seed of the initial weights, batch order and per-step noise (default 0).
        checkpoint_every: write a resumable checkpoint every N steps (default 500).
        resume: `latest` to continue from OUT's newest complete checkpoint (a fresh start if there is none),
            or a checkpoint folder.

    Returns:
        OUT/vae, loadable with AutoencoderKL.from_pretrained.
    """
    given = dict(max_steps=max_steps, batch_size=batch_size, lr=lr, resolution=resolution, crop=crop, seed=seed,
                 checkpoint_every=checkpoint_every)
    config = replace(VaeTrainConfig(), **{k: v for k, v in given.items() if v is not None})
    return train_vae(config, Path(data), Path(out), resume)


def train_vae(config: VaeTrainConfig, data: Path, out: Path, resume: str | None = None) -> Path:
    """pretrain_vae with a whole config (architecture included); returns OUT/vae."""
    # 1. The data before any model work, so a bad folder fails at once.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pixels = _load_images(data, config.resolution)
    if len(pixels) < config.batch_size:
        raise ValueError(f"dataset {data} has {len(pixels)} train images, fewer than batch_size={config.batch_size}")
    # 2. Model and optimizer, then the checkpoint to continue from.
    vae = build_vae(config).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr)
    checkpoint = find_checkpoint(out / "checkpoints", resume) if resume else None
    start, seconds_before, loss = _resume(checkpoint, config, vae, optimizer, device) if checkpoint else (0, 0.0, None)
    # 3. The loop: one batch, one step, a checkpoint every N steps.
    started = time.monotonic()
    vae.train()
    for step in range(start, config.max_steps):
        batch = pixels[_batch_indices(len(pixels), config.batch_size, config.seed, step)].to(device)
        total, loss = _step_loss(vae, batch, config, step)
        if not math.isfinite(total.item()):
            raise FloatingPointError(f"loss is {total.item()} at step {step}; lower --lr or resume from a checkpoint")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save_checkpoint(out / "checkpoints", step + 1, config, vae, optimizer,
                             seconds_before + time.monotonic() - started, loss)
    # 4. The VAE as a diffusers folder, with the report beside it.
    vae.register_to_config(scaling_factor=_scaling_factor(vae, pixels, device))
    with export_folder(out / "vae") as staging:  # checked finite, then moved into place atomically
        vae.save_pretrained(staging, safe_serialization=True)
    report = {"config": asdict(config), "start_step": start, "steps": config.max_steps,
              "seconds": round(seconds_before + time.monotonic() - started, 2), "final_l1": loss,
              "scaling_factor": vae.config.scaling_factor, "hardware": _hardware(device)}
    write_text(out / REPORT_NAME, json.dumps(report, indent=2))
    return out / "vae"
