"""Setting up a training run: the accelerator, the base and method placed and cast, the optimizer, data and
resume point, held in one Session for the loop (core.py)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, get_int_from_env, set_seed
from diffusers import ModelMixin
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from PIL import Image

from fashionsd_x.models.base import Base, load_base
from fashionsd_x.train.cache import build_cache, cache_folder
from fashionsd_x.train.checkpoints import CheckpointError, complete_checkpoints, find_checkpoint, read_state
from fashionsd_x.train.config import PREDICTION_TYPES, RUN_FIELDS, ConfigError, TrainConfig
from fashionsd_x.train.data import (EpochSampler, TrainItems, collate, tokenize, validation_samples,
                                    warn_long_captions)
from fashionsd_x.train.method import Method

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Seconds a process waits for the others at a collective before it stops with a one-line error: how long a run
# hangs on a machine that vanished without closing its connections (one killed or crashed closes them, and the
# others stop at once). Longer than any wait of a healthy run (machine 0 alone writes a checkpoint, validates).
PEER_TIMEOUT_VARIABLE = "FSDX_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 600.0


@dataclass
class Session:
    """Everything one training invocation holds (no globals)."""

    config: TrainConfig
    out: Path
    accelerator: Accelerator
    base: Base
    method: Method
    weight_dtype: torch.dtype
    loader: Any
    optimizer: Any
    lr_scheduler: Any
    empty_caption: torch.Tensor  # token ids (uncached) or the cached embedding of ""
    validation: list[tuple[str, Image.Image | None]]
    seconds_before: float = 0.0  # training time of earlier invocations (resume)
    started: float = field(default_factory=time.monotonic)

    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started


@contextlib.contextmanager
def open_session(method_class: type[Method], config: TrainConfig, out: Path, data: Any) -> Iterator[Session]:
    """Steps 2-5 of a run: everything its first step needs, prepared by accelerate (no checkpoint loaded)."""
    with accelerated(config, out) as (accelerator, weight_dtype):
        # 2. The base, checked against the settings.
        base = load_base(config.base, prediction_type=config.prediction_type)
        base.check_resolution(config.resolution)
        if base.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"base {base.source} predicts {base.prediction_type!r}, which FashionSD-X does not "
                              "train; set prediction_type to epsilon or v_prediction")
        # 3. Trainable parameters (seeded, so initialisation repeats), frozen models in the weight dtype.
        for module in (base.vae, base.text_encoder, base.unet):
            module.requires_grad_(False)
        set_seed(config.seed)
        method = method_class(base, config)
        place_models(base, method, accelerator.device, weight_dtype)
        if config.gradient_checkpointing:
            method.enable_gradient_checkpointing()
        if config.compile:
            compile_models(base, method)
        # 4. Samples: read from the latent cache (built once) or decoded each time.
        cache = None
        if config.cache_latents:
            root = Path(config.cache_dir) if config.cache_dir else out / "cache"
            folder = cache_folder(root, data["train"], base, config.resolution, config.random_flip, weight_dtype,
                                  method.cache_identity())
            cache = build_cache(folder, data["train"], base, config.resolution, config.random_flip,
                                config.batch_size, accelerator)
        if accelerator.is_main_process:
            warn_long_captions(data["train"]["text"], base.tokenizer)
        # A text encoder being trained cannot use cached caption embeddings: it gets token ids instead.
        cached_text = cache is not None and not method.trains_text_encoder
        items = TrainItems(data["train"], base.tokenizer, config.resolution, control="sketch" in method.columns,
                           invert_sketch=getattr(config, "invert_sketch", False), cache=cache,
                           cached_text=cached_text, **method.item_options())
        loader = torch.utils.data.DataLoader(items, batch_size=config.batch_size, drop_last=False,
                                             sampler=EpochSampler(len(items), config.seed),
                                             num_workers=config.dataloader_workers, collate_fn=collate,
                                             # page-locked batches copy to a GPU without a staging copy
                                             pin_memory=accelerator.device.type == "cuda")
        # 5. Optimizer and LR schedule over the trainable parameters; accelerate wraps models, optimizer, loader.
        optimizer = make_optimizer(config, method.trainable())
        *models, optimizer, loader = accelerator.prepare(*method.trainable(), optimizer, loader)
        method.bind(accelerator, models)
        total_steps = config.total_steps(len(loader))
        # Not prepared: accelerate would step it once per process; one step per optimizer step is the schedule.
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                     num_training_steps=total_steps)
        empty = cache.empty_text() if cached_text else tokenize(base.tokenizer, [""])[0]
        samples = validation_samples(data, config.validation_prompts, config.num_validation_images,
                                     with_sketch="sketch" in method.columns)
        yield Session(config, out, accelerator, base, method, weight_dtype, loader, optimizer, lr_scheduler,
                      empty.to(accelerator.device), samples)


@contextlib.contextmanager
def accelerated(config: TrainConfig, out: Path) -> Iterator[tuple[Accelerator, torch.dtype]]:
    """The one place device and precision are decided: accelerate's device, and the frozen models' dtype."""
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a CUDA GPU (CPU autocast has no float16); use bf16 or no")
    # Launched processes without CUDA are CPU processes (gloo) whatever the launcher: under torchrun, which does not
    # set ACCELERATE_USE_CPU, accelerate would otherwise run each of them alone, all writing OUT.
    launched = launched_processes()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, cpu=launched > 1 and not torch.cuda.is_available(),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=peer_timeout()))])
    try:
        if accelerator.num_processes != launched:
            raise ConfigError(f"the launcher started {launched} processes but accelerate sees "
                              f"{accelerator.num_processes}: each would train alone and write OUT; launch with "
                              "accelerate launch or torchrun (docs/multi-node.md)")
        yield accelerator, WEIGHT_DTYPES[accelerator.mixed_precision]
    finally:
        accelerator.end_training()
        # accelerate keeps the precision in a process-wide singleton that refuses another value later; clearing
        # it lets one Python process (a notebook, the studio) train again with other settings, after a failure
        # too. The process group (PartialState) stays, so a launched multi-process run is unaffected.
        AcceleratorState._reset_state()


def peer_timeout() -> float:
    """FSDX_PEER_TIMEOUT in seconds (a launcher passes the environment to every process), else the default."""
    text = os.environ.get(PEER_TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_PEER_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{PEER_TIMEOUT_VARIABLE} must be a positive number of seconds, got {text!r}")
    return seconds


def place_models(base: Base, method: Method, device: torch.device, weight_dtype: torch.dtype) -> None:
    """Frozen components on the device in the weight dtype; trainable parameters in float32 (an fp16/bf16
    parameter would lose small updates to rounding)."""
    for module in (base.vae, base.text_encoder, base.unet):
        # Cast only when needed: diffusers warns on every dtype-changing to(), even a no-op one.
        module.to(device) if module.dtype == weight_dtype else module.to(device, weight_dtype)
    for module in method.trainable():
        module.to(device)
        module.train()
        cast_training_params(module, torch.float32)
    for module in {id(module): module for module in (base.unet, *method.trainable())}.values():
        if isinstance(module, ModelMixin):  # convolutional: oneDNN/cuDNN run NHWC convolutions faster
            module.to(memory_format=torch.channels_last)


def compile_models(base: Base, method: Method) -> None:
    """torch.compile the UNet and the trainable diffusers models in place (state-dict keys unchanged, so
    checkpoints and saved weights are those of an uncompiled run)."""
    for module in {id(module): module for module in (base.unet, *method.trainable())}.values():
        if isinstance(module, ModelMixin):
            module.compile()


def make_optimizer(config: TrainConfig, modules: list[torch.nn.Module]) -> torch.optim.Optimizer:
    parameters = [parameter for module in modules for parameter in module.parameters() if parameter.requires_grad]
    if config.use_8bit_adam:
        try:
            import bitsandbytes
        except ImportError:
            raise ConfigError("use_8bit_adam needs bitsandbytes, which is not installed (pip install bitsandbytes; "
                              "CUDA only); or turn use_8bit_adam off") from None
        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(parameters, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                           weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
                           **({} if config.use_8bit_adam else adamw_kernel(parameters)))


def adamw_kernel(parameters: list[torch.nn.Parameter]) -> dict[str, bool]:
    """torch's fused AdamW (one kernel per tensor) where it exists, else the multi-tensor one; torch's default on
    a CPU is a Python loop of ~10 ops per tensor, which costs more than a small model's step."""
    if {parameter.device.type for parameter in parameters} <= {"cpu", "cuda"}:
        return {"fused": True}
    return {"foreach": True}


def hardware(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
    else:
        name = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return f"{accelerator.num_processes} x {name}, mixed precision {accelerator.mixed_precision}"


def planned_steps(config: TrainConfig, rows: int) -> int:
    """The optimizer steps a run over `rows` train samples makes, known before its loader exists: each of the
    launch's processes gets ceil(batches / processes) micro-batches an epoch (accelerate's sharding with even
    batches), the loader's len()."""
    return config.total_steps(math.ceil(math.ceil(rows / config.batch_size) / launched_processes()))


def launched_processes() -> int:
    """The processes of this run, as its launcher tells each of them (torchrun's WORLD_SIZE, or MPI's, which
    accelerate reads as well); 1 when not launched."""
    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def checkpoint_to_resume(out: Path, resume: str | None, config: TrainConfig, total_steps: int) -> Path | None:
    """The verified checkpoint to resume from (None: a new run), refused unless this run can continue it."""
    root = out / "checkpoints"
    if resume is None:
        if complete_checkpoints(root):
            raise CheckpointError(f"{root} holds checkpoints of an earlier run; pass resume latest to continue it "
                                  "or choose another output folder")
        return None
    checkpoint = find_checkpoint(root, resume)
    if checkpoint is None:
        print(f"no intact checkpoint in {root}: starting a new run", file=sys.stderr)
        return None
    check_continues(checkpoint, config, total_steps)
    return checkpoint


def check_continues(checkpoint: Path, config: TrainConfig, total_steps: int) -> None:
    """Refuse a checkpoint this run cannot continue: of another stage, made with other settings, by another number
    of processes (another global batch), or past the `total_steps` this run makes (its weights, trained longer,
    would be saved as a shorter run's)."""
    state = read_state(checkpoint)
    if state["stage"] != config.stage:
        raise CheckpointError(f"checkpoint {checkpoint} is from `fsdx train {state['stage']}`, not {config.stage}")
    old, new = state["config"], config.to_dict()
    changed = [name for name in new if name not in RUN_FIELDS and old.get(name) != new[name]]
    if changed:
        detail = ", ".join(f"{name} {old.get(name)!r} -> {new[name]!r}" for name in changed)
        raise CheckpointError(f"checkpoint {checkpoint} was made with other settings ({detail}); only "
                              f"{', '.join(RUN_FIELDS)} may change when resuming")
    processes = launched_processes()
    if state.get("num_processes", processes) != processes:
        raise CheckpointError(f"checkpoint {checkpoint} was written by a run of {state['num_processes']} processes and "
                              f"this run has {processes}: the global batch and each process's place in the data would "
                              f"change; resume with {state['num_processes']} processes")
    if state["step"] > total_steps:
        raise CheckpointError(f"checkpoint {checkpoint} is at step {state['step']}, past the {total_steps} steps "
                              f"this run asks for (max_steps/epochs): ask for at least {state['step']} steps, or "
                              "start a new run in another output folder")


def run_hparams(config: TrainConfig) -> dict[str, Any]:
    # TensorBoard's hparams take only scalars and strings.
    return {name: value if isinstance(value, (int, float, str, bool)) else str(value)
            for name, value in config.to_dict().items()}
