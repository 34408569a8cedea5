"""Full training of a base's UNet and text encoder: how the embedded tiny model learns garments from scratch.

Not a step of the paper, which starts from Stable Diffusion's pretrained weights: it stands in for the
pretraining no one can download here. The VAE stays frozen (pretrain it first with
`fashionsd_x.train.vae`); the UNet and the CLIP text encoder learn together from the denoising loss,
so caption words get their meaning from the images. The loop, checkpoints and resume are the LoRA and
ControlNet trainers' (train/core.py); the result is a whole diffusers folder, a base for `fsdx train lora`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fashionsd_x.files import export_folder
from fashionsd_x.models.base import Base
from fashionsd_x.models.components import standardize_text_encoder
from fashionsd_x.train.config import BaseTrainConfig, local_source, resolve_config
from fashionsd_x.train.core import Machines, train
from fashionsd_x.train.method import UNetMethod, add_metadata
from fashionsd_x.train.result import TrainResult


def train_base(data: Path, base: str = "tiny", out: Path = Path("outputs/base"), config: Path | None = None,
               resume: str | None = None, num_processes: int = 1, num_machines: int = 1,
               machine_rank: int = 0, main_process_ip: str | None = None, main_process_port: int = 29500,
               overrides: dict[str, str] | None = None, **settings: Any) -> TrainResult:
    """Train every weight of a base's UNet (and its text encoder) on a garment dataset; the VAE stays frozen.

    For a base built from random weights (the embedded tiny model's recipe) or a full fine-tune. OUT becomes a
    diffusers folder (StableDiffusionPipeline.from_pretrained(OUT)) with train_config.yaml, a model card,
    validation/ images and checkpoints/. Any other setting can be given as --name value (e.g. --snr-gamma 5,
    --train-text-encoder false).

    Args:
        data: dataset folder written by `fsdx data build` (columns image and text).
        base: the starting base (diffusers folder, .safetensors file or hub id), e.g. random weights with a
            pretrained VAE; tiny is the embedded model's base.
        out: output folder.
        config: YAML file of settings (an earlier run's train_config.yaml).
        resume: continue from `latest` (the newest complete checkpoint in OUT/checkpoints) or a checkpoint folder.
        num_processes: data-parallel processes (GPUs, or CPU processes without CUDA), launched via accelerate; over
            several machines, all of theirs together (docs/multi-node.md).
        num_machines: machines (nodes) the run spans, each running this same command with its own --machine-rank.
        machine_rank: this machine's number, 0 to num_machines - 1; machine 0's first process writes OUT, a folder
            every machine shares.
        main_process_ip: address of machine 0 as the other machines reach it (needed when num_machines > 1).
        main_process_port: port on machine 0 where the machines meet.
        overrides: any other setting by name, values as YAML scalars.
        settings: any field of BaseTrainConfig by name (max_steps=100, lr=1e-4, ...); every one is also an
            option of the command, with its meaning and default in --help.
    """
    run_config = resolve_config(
        BaseTrainConfig, config, overrides, data=local_source(data), base=local_source(base), **settings)
    return train(BaseMethod, run_config, Path(out), resume, num_processes,
                 Machines(num_machines, machine_rank, main_process_ip, main_process_port))


class BaseMethod(UNetMethod):
    """Every UNet weight trainable, and the text encoder's unless train_text_encoder is off."""

    stage = "base"

    def __init__(self, base: Base, config: BaseTrainConfig) -> None:
        super().__init__(base, config)
        base.unet.requires_grad_(True)
        base.text_encoder.requires_grad_(config.train_text_encoder)

    @property
    def trains_text_encoder(self) -> bool:
        return self.config.train_text_encoder

    def weights(self, out: Path) -> Path:
        return out  # StableDiffusionPipeline.from_pretrained(OUT)

    def save(self, out: Path, metadata: dict[str, str]) -> None:
        with export_folder(out) as staging:
            # The base's own inference scheduler config is kept, so the folder samples as the starting base did.
            self.base.pipeline().save_pretrained(staging, safe_serialization=True)
            standardize_text_encoder(staging)  # text_model.* keys, which transformers 4 needs as well
            for component in ("unet", "text_encoder"):
                add_metadata(staging / component / _weights_name(staging / component), metadata)


def _weights_name(folder: Path) -> str:
    return next(path.name for path in sorted(folder.glob("*.safetensors")))

