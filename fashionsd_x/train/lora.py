"""LoRA fine-tuning of a Stable Diffusion 1.x/2.x base on garment images and captions (paper step 2).

Low-rank adapters (Hu et al. 2021) on the UNet's attention projections, and optionally on the CLIP text
encoder, are the only trainable weights. The result is written in the two formats people load LoRAs in:
diffusers' (`pipe.load_lora_weights(OUT)`) and kohya's (A1111, ComfyUI, kohya's scripts).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from fashionsd_x.files import export_folder
from fashionsd_x.models.base import Base, first_line
from fashionsd_x.models.export import kohya_state_dict
from fashionsd_x.train.config import LORA_INITS, ConfigError, LoraTrainConfig, local_source, resolve_config
from fashionsd_x.train.core import Machines, train
from fashionsd_x.train.method import UNetMethod, add_metadata
from fashionsd_x.train.result import TrainResult

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default weight_name for load_lora_weights
KOHYA_WEIGHTS = "pytorch_lora_weights_kohya.safetensors"


class LoraMismatchError(ValueError):
    """A LoRA file that does not fit the base it is applied to (another architecture)."""


def train_lora(data: Path, base: str = "tiny", out: Path = Path("outputs/lora"), config: Path | None = None,
               resume: str | None = None, num_processes: int = 1, num_machines: int = 1,
               machine_rank: int = 0, main_process_ip: str | None = None, main_process_port: int = 29500,
               overrides: dict[str, str] | None = None, **settings: Any) -> TrainResult:
    """Fine-tune a Stable Diffusion base with LoRA on a garment dataset (image + caption).

    OUT gets pytorch_lora_weights.safetensors (diffusers: pipe.load_lora_weights(OUT)), the same LoRA in
    kohya/A1111/ComfyUI format (pytorch_lora_weights_kohya.safetensors), train_config.yaml, a model card
    README.md, validation/ images, logs/ (TensorBoard) and checkpoints/. Options left out come from --config
    (e.g. configs/lora_dresscode.yaml, the paper's run), else the defaults; any other setting can be given as
    --name value (e.g. --snr-gamma 5 --random-flip true --target-modules to_q,to_v).

    Args:
        data: dataset folder written by `fsdx data build` (columns image and text).
        base: Stable Diffusion 1.x/2.x base: hub id, diffusers folder or .safetensors file; tiny is the
            embedded model's base.
        out: output folder.
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
        settings: any field of LoraTrainConfig by name (max_steps=100, lr=1e-4, ...); every one is also an
            option of the command, with its meaning and default in --help.
    """
    run_config = resolve_config(
        LoraTrainConfig, config, overrides, data=local_source(data), base=local_source(base), **settings)
    return train(LoraMethod, run_config, Path(out), resume, num_processes,
                 Machines(num_machines, machine_rank, main_process_ip, main_process_port))


class LoraMethod(UNetMethod):
    """Adapters in the UNet (and text encoder); the base weights stay frozen."""

    stage = "lora"

    def __init__(self, base: Base, config: LoraTrainConfig) -> None:
        super().__init__(base, config)
        self.unet_lora = _peft_config(config, config.target_modules)
        with _explained("target_modules", self.unet_lora):
            base.unet.add_adapter(self.unet_lora)
        self.text_lora = _peft_config(config, config.text_encoder_target_modules) if config.train_text_encoder else None
        if self.text_lora is not None:
            with _explained("text_encoder_target_modules", self.text_lora):
                # peft's injection, which add_adapter calls underneath: transformers 5's add_adapter insists on
                # peft >= 0.22 for the same operation.
                inject_adapter_in_model(self.text_lora, base.text_encoder, adapter_name="default")
            base.text_encoder.peft_config = {"default": self.text_lora}  # what get_peft_model_state_dict reads

    @property
    def trains_text_encoder(self) -> bool:
        return self.text_lora is not None

    def weights(self, out: Path) -> Path:
        return out / LORA_WEIGHTS

    def save(self, out: Path, metadata: dict[str, str]) -> None:
        # Conv adapters (conv1, conv2) are channels_last in training (session.place_models); safetensors stores
        # only contiguous tensors.
        unet_state = {name: tensor.contiguous() for name, tensor in get_peft_model_state_dict(self.base.unet).items()}
        text_state = get_peft_model_state_dict(self.base.text_encoder) if self.text_lora else {}
        kohya_metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(self.config.rank),
                          "ss_network_alpha": str(self.config.lora_alpha()),
                          "ss_base_model_version": "sd_v2" if self.base.family == "sd2" else "sd_v1",
                          "ss_v2": str(self.base.family == "sd2"),
                          "ss_v_parameterization": str(self.base.prediction_type == "v_prediction"), **metadata}
        with export_folder(out) as staging:  # both files checked finite, then moved into OUT atomically
            StableDiffusionPipeline.save_lora_weights(
                # The UNet's adapters stay in PEFT naming (lora_A/lora_B), which diffusers loads natively:
                # convert_state_dict_to_diffusers renames only attention projections (to_q.lora.down, ...), so with
                # --target-modules beyond attention (conv1, ff.net.2, ...) the file would mix two namings and
                # load_lora_weights would silently skip the attention half.
                staging, unet_lora_layers=unet_state,
                text_encoder_lora_layers=convert_state_dict_to_diffusers(text_state) if text_state else None,
                # The adapter configs travel in the file so loaders use this run's alpha, not alpha = rank.
                unet_lora_adapter_metadata=self.unet_lora.to_dict(),
                text_encoder_lora_adapter_metadata=self.text_lora.to_dict() if self.text_lora else None,
                safe_serialization=True)
            add_metadata(staging / LORA_WEIGHTS, metadata)
            save_file(kohya_state_dict(unet_state, text_state, self.config.lora_alpha()), str(staging / KOHYA_WEIGHTS),
                      metadata={"format": "pt", **kohya_metadata})


def fuse_into_base(base: Base, lora: str | Path) -> None:
    """Merge a LoRA (a FashionSD-X output folder or a .safetensors file) into the base's weights for good."""
    path = Path(lora)
    weights = path / LORA_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"lora {lora}: no {LORA_WEIGHTS} there; pass the output folder of `fsdx train lora`")
    with safe_open(str(weights), framework="pt") as handle:
        expected = sum(1 for key in handle.keys() if "lora" in key and not key.endswith(".alpha"))
    pipeline = base.pipeline()
    try:
        pipeline.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name="fused")
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise LoraMismatchError(f"lora {lora} does not fit base {base.source} (another architecture?): "
                                f"{first_line(error)[:300]}") from None
    loaded = sum(1 for module in (base.unet, base.text_encoder) for name, _ in module.named_parameters()
                 if ".lora_A." in name or ".lora_B." in name)
    if loaded != expected:
        pipeline.unload_lora_weights()
        raise LoraMismatchError(f"lora {lora} does not fit base {base.source}: only {loaded} of its {expected} "
                                "tensors match the base's layers (another architecture?)")
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()  # the layers go, the fused weights stay


def _peft_config(config: LoraTrainConfig, targets: list[str]) -> LoraConfig:
    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha(), target_modules=list(targets),
                      lora_dropout=config.lora_dropout, init_lora_weights=LORA_INITS[config.lora_init])


@contextlib.contextmanager
def _explained(field_name: str, lora: LoraConfig) -> Iterator[None]:
    try:
        yield
    except ValueError as error:
        raise ConfigError(f"{field_name} {sorted(lora.target_modules)} match no layer of the model: "
                          f"{' '.join(str(error).split())[:200]}") from None
