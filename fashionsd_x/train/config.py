"""Typed training settings: the fields both trainers share, LoRA's and ControlNet's own, YAML presets.

Values come from, lowest to highest: the dataclass defaults, a YAML file (`--config`, e.g. a paper preset in
configs/), then the command line (named options and `overrides` of any other field by name). The resolved
config is written beside every output as train_config.yaml (loadable again with `--config`) and inside the
weights' safetensors metadata, so an artifact always says how it was made.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fashionsd_x.data.augment import SketchAugment
from fashionsd_x.data.conditioning import SketchConditioning
from fashionsd_x.data.sketch import SketchConfig
from fashionsd_x.limits import MAX_DENOISING_STEPS, MAX_MODEL_SIDE, MAX_TRAIN_STEPS, check_at_most

MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PREDICTION_TYPES = ("epsilon", "v_prediction")
LORA_INITS = {"default": True, "gaussian": "gaussian", "random": False}  # name -> peft init_lora_weights
# Fields a resumed run may change: they steer how long and how observably it runs, not what each step computes.
RUN_FIELDS = ("epochs", "max_steps", "checkpoint_every", "keep_checkpoints", "validate_every", "validation_prompts",
              "num_validation_images", "validation_steps", "dataloader_workers", "cache_latents", "cache_dir",
              "log_every", "compile")

# Upper bounds of the sizes and counts (issue 29), documented maxima rather than this machine's memory: a config is
# read again on other machines (resume, ablation, the recipe), and training runs on a device this file cannot see.
MAX_BATCH_SIZE = 1024  # samples per process per micro-batch; larger effective batches come from grad_accum
MAX_MICRO_BATCH_PIXELS = 2**28  # 1024 images of 512 px or 64 of 2048 px: 3.2 GB of float32 RGB before any activation
MAX_GRAD_ACCUM = 1024  # micro-batches per optimizer step
MAX_DATALOADER_WORKERS = 64  # each a process with its own dataset reader; more never feeds one trainer faster
MAX_VALIDATION_IMAGES = 64  # validation images per round, as `fsdx generate --n`
MAX_LORA_RANK = 1280  # SD's widest attention layer; above a layer's width a LoRA is no longer low-rank
MAX_SEED = 2**63 - 1  # a 64-bit generator seed
STEPS_WHY = "about ten times the steps that trained Stable Diffusion 1.x from scratch"

C = TypeVar("C", bound="TrainConfig")


class ConfigError(ValueError):
    """Settings that cannot work together or a value out of range; the message names the fields."""


@dataclass
class TrainConfig:
    """What LoRA and ControlNet training share; defaults follow diffusers' training examples."""

    stage: typing.ClassVar[str] = ""
    data: str | None = None  # dataset folder from `fsdx data build` (given on the command line)
    base: str | None = None  # Stable Diffusion 1.x/2.x base: hub id, diffusers folder or .safetensors (command line)
    prediction_type: str | None = None  # replace the base scheduler's target: epsilon or v_prediction (None = base's)
    resolution: int = 512  # square training side in pixels (<= 2048), a multiple of the base's resolution_multiple()
    batch_size: int = 1  # samples per process per micro-batch (<= 1024, and <= 2^28 pixels in all)
    epochs: int = 1  # passes over the train split (ignored when max_steps is set)
    max_steps: int | None = None  # optimizer steps to train for; overrides epochs
    grad_accum: int = 1  # micro-batches whose gradients are summed per optimizer step
    lr: float = 1e-4  # peak learning rate (AdamW)
    lr_scheduler: str = "constant"  # diffusers.optimization.get_scheduler name, e.g. constant, cosine, linear
    lr_warmup_steps: int = 0  # optimizer steps of linear warmup before the schedule
    adam_beta1: float = 0.9  # AdamW first-moment decay
    adam_beta2: float = 0.999  # AdamW second-moment decay
    adam_weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_epsilon: float = 1e-8  # AdamW denominator epsilon
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit (CUDA, bitsandbytes installed) to save optimizer memory
    max_grad_norm: float | None = 1.0  # clip the gradient norm to this; None disables clipping
    mixed_precision: str = "no"  # no, fp16 (CUDA only) or bf16: autocast dtype and the frozen models' dtype
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    snr_gamma: float | None = None  # min-SNR loss weighting (Hang et al. 2023), 5.0 recommended; None = plain MSE
    noise_offset: float = 0.0  # add this times per-channel noise (helps very dark/bright images); 0 disables
    random_flip: bool = False  # flip image and sketch horizontally together, with probability 0.5
    caption_dropout: float = 0.0  # probability of training a sample with the empty caption
    seed: int = 0  # every random draw is a function of (seed, micro-batch), so runs repeat exactly
    cache_latents: bool = False  # encode images and captions once, to disk, instead of every epoch
    cache_dir: str | None = None  # folder for latent caches (keyed by dataset, base, resolution); None = OUT/cache
    dataloader_workers: int = 0  # DataLoader worker processes decoding images
    log_every: int = 10  # write loss and lr to TensorBoard (and the progress bar) every this many steps
    # torch.compile the UNet (and ControlNet): faster steps after a slow first one (minutes on a CPU); opt-in
    compile: bool = False
    checkpoint_every: int | None = 500  # save a resumable checkpoint every this many optimizer steps; None = never
    keep_checkpoints: int | None = 3  # keep only the newest this many checkpoints; None = keep all
    validate_every: int | None = None  # make validation images every this many steps (always at the end)
    validation_prompts: list[str] | None = None  # prompts for validation images; None = texts of the test split
    num_validation_images: int = 4  # test-split rows used when validation_prompts is None; 0 = no validation
    validation_steps: int = 25  # denoising steps per validation image

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("batch_size", "epochs", "grad_accum", "validation_steps", "log_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("max_steps", "checkpoint_every", "keep_checkpoints", "validate_every"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        for name in ("lr_warmup_steps", "dataloader_workers", "num_validation_images", "seed"):
            _at_least(name, getattr(self, name), 0)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if self.prediction_type is not None:
            _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        self._check_numbers()
        self._check_upper_bounds()
        if self.validation_prompts is not None and not self.validation_prompts:
            raise ConfigError("validation_prompts is an empty list; give prompts or leave it unset (test-split texts)")

    def _check_numbers(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        for name in ("snr_gamma", "max_grad_norm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive (or unset to disable), got {getattr(self, name)}")
        if self.noise_offset < 0:
            raise ConfigError(f"noise_offset must be >= 0, got {self.noise_offset}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError(f"adam_beta1 and adam_beta2 must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}")

    def _check_upper_bounds(self) -> None:
        _at_most("resolution", self.resolution, MAX_MODEL_SIDE,
                 "the largest side generation makes; Stable Diffusion 1.x trains at 512 px, 2.x at 768 px")
        _at_most("batch_size", self.batch_size, MAX_BATCH_SIZE, "per process; a larger batch comes from grad_accum")
        pixels_why = f"a micro-batch of at most {MAX_MICRO_BATCH_PIXELS:,} pixels, 3.2 GB of float32 images"
        _at_most("batch_size", self.batch_size, max(1, MAX_MICRO_BATCH_PIXELS // self.resolution**2),
                 f"at resolution {self.resolution}: {pixels_why}; use grad_accum")
        _at_most("grad_accum", self.grad_accum, MAX_GRAD_ACCUM, "micro-batches summed per optimizer step")
        for name in ("epochs", "max_steps", "lr_warmup_steps"):
            if getattr(self, name) is not None:
                _at_most(name, getattr(self, name), MAX_TRAIN_STEPS, STEPS_WHY)
        _at_most("dataloader_workers", self.dataloader_workers, MAX_DATALOADER_WORKERS,
                 "more worker processes never feed one trainer faster")
        _at_most("num_validation_images", self.num_validation_images, MAX_VALIDATION_IMAGES, "as fsdx generate --n")
        _at_most("validation_steps", self.validation_steps, MAX_DENOISING_STEPS,
                 "a scheduler's whole schedule; more steps only revisit the same timesteps")
        _at_most("seed", self.seed, MAX_SEED, "a 64-bit generator seed")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values with the stage first (what train_config.yaml holds).

        Tuples become lists, as they come back from YAML or JSON: a checkpoint's recorded config is compared
        with this when resuming, and a setting given as a tuple in Python must not read as changed.
        """
        return _plain({"stage": self.stage, **asdict(self)})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def total_micro_batches(self, batches_per_epoch: int) -> int:
        """Micro-batches this run consumes: max_steps' worth, else every epoch's."""
        if self.max_steps is not None:
            return self.max_steps * self.grad_accum
        return self.epochs * batches_per_epoch

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps this run makes (a final partial accumulation still counts as a step)."""
        return self.max_steps or math.ceil(self.epochs * batches_per_epoch / self.grad_accum)


@dataclass
class LoraTrainConfig(TrainConfig):
    """LoRA fine-tuning of the UNet's attention (and optionally the text encoder); paper: rank 4, lr 1e-4."""

    stage: typing.ClassVar[str] = "lora"
    rank: int = 4  # LoRA rank r of every adapted layer
    alpha: float | None = None  # LoRA alpha; the update is scaled by alpha / rank (None = rank, scale 1)
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # UNet layers
    lora_dropout: float = 0.0  # dropout on the LoRA branch input
    lora_init: str = "default"  # default (B = 0: starts as the base), gaussian, or random (B != 0; tests only)
    train_text_encoder: bool = False  # also adapt the CLIP text encoder's attention
    # text encoder layers adapted when train_text_encoder is on
    text_encoder_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("rank", self.rank, 1)
        _at_most("rank", self.rank, MAX_LORA_RANK,
                 "the width of Stable Diffusion's widest attention layer; above a layer's width a LoRA is not low-rank")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"alpha must be positive (or unset for alpha = rank), got {self.alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _choice("lora_init", self.lora_init, tuple(LORA_INITS))
        if not self.target_modules:
            raise ConfigError("target_modules is empty; name at least one UNet layer, e.g. to_q")

    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)


@dataclass
class BaseTrainConfig(TrainConfig):
    """Full training of the UNet and CLIP text encoder (a base from scratch or a full fine-tune); the VAE stays
    frozen. Defaults suit a small model trained from random weights, not the paper's LoRA/ControlNet runs."""

    stage: typing.ClassVar[str] = "base"
    lr: float = 5e-4  # peak learning rate; from-scratch training of a small UNet tolerates far more than LoRA's
    lr_warmup_steps: int = 250  # linear warmup: random weights with a high rate diverge without it
    lr_scheduler: str = "constant_with_warmup"  # get_scheduler name
    snr_gamma: float | None = 5.0  # min-SNR weighting (Hang et al. 2023): about 3x faster convergence from scratch
    caption_dropout: float = 0.1  # empty captions teach the unconditional prediction classifier-free guidance needs
    train_text_encoder: bool = True  # train the text encoder with the UNet (from scratch it must learn words)


@dataclass
class ControlNetTrainConfig(TrainConfig):
    """ControlNet training on the dataset's sketches with the base (optionally + a fused LoRA) frozen."""

    stage: typing.ClassVar[str] = "controlnet"
    lr: float = 1e-5  # peak learning rate (the paper's ControlNet rate)
    lora: str | None = None  # LoRA folder fused into the frozen UNet first (the model the ControlNet will steer)
    init: str | None = None  # ControlNet (hub id or folder) to start from; None = copy of the UNet's encoder
    invert_sketch: bool = False  # feed white-on-black sketches (only for ControlNets trained that way)
    conditioning_scale: float = 1.0  # ControlNet residual scale for validation images
    sketch: dict[str, Any] | None = None  # the dataset's SketchConfig: generation sketches photos the same way
    # How any sketch becomes conditioning (data.conditioning.SketchConditioning), in training and generation
    # alike; null = resize only, as ControlNets trained before normalisation existed.
    sketch_conditioning: dict[str, Any] | None = field(default_factory=lambda: SketchConditioning().to_dict())
    # Sketch-style augmentation (data.augment.SketchAugment fields; {} = its defaults); null = off, the paper's.
    sketch_augment: dict[str, Any] | None = None
    # Weight of the sketch-consistency loss (train/consistency.py, after ControlNet++): the garment decoded from
    # each step's predicted clean latents must fill the sketch's region; 0 = off, the paper's plain loss.
    consistency_weight: float = 0.0
    # Conditioning scale folded into the saved ControlNet's output convolutions (train/controlnet.py): at scale 1
    # it acts as the trained weights at this scale, in every tool, diffusers' own pipeline included. Training
    # always works on the weights without it (an init's recorded gain is taken out first).
    output_gain: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.output_gain) and 0 < self.output_gain <= 10):
            raise ConfigError(f"output_gain must be in (0, 10], got {self.output_gain}")
        if not self.conditioning_scale >= 0:
            raise ConfigError(f"conditioning_scale must be >= 0, got {self.conditioning_scale}")
        if not self.consistency_weight >= 0:
            raise ConfigError(f"consistency_weight must be >= 0, got {self.consistency_weight}")
        if self.sketch is not None:
            _parsed("sketch", SketchConfig.from_dict, self.sketch)
        _parsed("sketch_conditioning", SketchConditioning.from_dict, self.sketch_conditioning)
        augment = self.augmentation()
        if augment is not None and augment.moves_garment() and self.cache_latents:
            raise ConfigError("sketch_augment moves the garment (scale_range, shift), which cached latents cannot "
                              "follow; set cache_latents false, or scale_range [1, 1] and shift 0")

    def conditioning(self) -> SketchConditioning:
        """The sketch normalisation this ControlNet is trained and used with."""
        return SketchConditioning.from_dict(self.sketch_conditioning)

    def augmentation(self) -> SketchAugment | None:
        """The sketch-style augmentation, or None when off."""
        if self.sketch_augment is None:
            return None
        return _parsed("sketch_augment", SketchAugment.from_dict, self.sketch_augment)


def field_help(cls: type) -> dict[str, str]:
    """field -> its comment in the config class (or a base class), on its line or on the lines just above it: the
    help of the CLI's options, so a setting is described once, where it is defined."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            if comment := re.match(r"\s{4}#\s?(.*)$", line):
                above.append(comment.group(1).strip())
                continue
            if match := re.match(r"\s{4}(\w+): [^#]+?(?:#\s*(.+))?$", line):
                text = match.group(2) or " ".join(above)
                if text:
                    helps[match.group(1)] = text.strip()
            above = []
    return helps


def _parsed(name: str, parse: Any, values: Any) -> Any:
    try:
        return parse(values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{name}: {' '.join(str(error).split())}") from None


def resolve_config(cls: type[C], path: Path | None, overrides: dict[str, str] | None = None, **explicit: Any) -> C:
    """Defaults < YAML file < command line. `explicit` holds named options (None = not given); `overrides` any
    other field by name with YAML-scalar values. Unknown names, wrong types and contradictions raise ConfigError."""
    values = read_yaml(cls, path) if path is not None else {}
    for name in explicit:
        _known(cls, name, "argument")
    given = {name: value for name, value in explicit.items() if value is not None}
    for name, text in (overrides or {}).items():
        name = name.lstrip("-").replace("-", "_")
        _known(cls, name, "override")
        if name in given:
            raise ConfigError(f"{name} is given twice on the command line (as an option and as an override)")
        given[name] = _parse_override(cls, name, text)
    return build_config(cls, {**values, **given})


def local_source(value: str | Path) -> str:
    """An existing local path made absolute (so train_config.yaml means the same from any folder); hub ids as is."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else str(value)


def read_yaml(cls: type[C], path: Path) -> dict[str, Any]:
    """The field values of a YAML config file (a paper preset or an earlier run's train_config.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must be a mapping of field: value, got {type(values).__name__}")
    stage = values.pop("stage", cls.stage)
    if stage != cls.stage:
        raise ConfigError(f"config file {path} is for `fsdx train {stage}`, not `fsdx train {cls.stage}`")
    for name in values:
        _known(cls, name, f"config file {path}")
    return values


def build_config(cls: type[C], values: dict[str, Any]) -> C:
    """The config from field values, numbers written as text (YAML 1.1 reads `1e-4` as a string) made numbers."""
    values = {name: _number(cls, name, value) for name, value in values.items()}
    try:
        return cls(**values)
    except TypeError as error:  # a field name typo that slipped past _known, e.g. from Python callers
        raise ConfigError(f"{cls.__name__}: {error}") from None


def _known(cls: type, name: str, where: str) -> None:
    names = [item.name for item in dataclasses.fields(cls)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; known fields: {', '.join(names)}"
        raise ConfigError(f"{where}: unknown {cls.stage} setting {name!r}{hint}")


def _parse_override(cls: type, name: str, text: str) -> Any:
    value = yaml.safe_load(text) if isinstance(text, str) else text
    if _is_list_field(cls, name) and isinstance(value, str):
        # --target-modules to_q,to_k reads naturally on a command line; YAML would need [to_q, to_k].
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _number(cls: type, name: str, value: Any) -> Any:
    allowed = _allowed_types(_field_types(cls).get(name, object))
    if not isinstance(value, str) or not {int, float} & set(allowed):
        return value
    try:
        return int(value) if int in allowed else float(value)
    except ValueError:
        return value  # _check_types names the field


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_list_field(cls: type, name: str) -> bool:
    return list in _allowed_types(_field_types(cls)[name])


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(kind for arg in typing.get_args(hint) for kind in _allowed_types(arg))
    if hint is type(None):
        return (type(None),)
    return (typing.get_origin(hint) or hint,)


def _check_types(config: TrainConfig) -> None:
    """Reject values of the wrong type (a YAML typo such as `rank: four`) naming the field; ints pass as floats."""
    hints = _field_types(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        allowed = _allowed_types(hints[item.name])
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, item.name, float(value))
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if ok and isinstance(value, list):
            ok = all(isinstance(entry, str) for entry in value)
        if not ok:
            wanted = " or ".join("null" if kind is type(None) else f"{kind.__name__}" for kind in allowed)
            raise ConfigError(f"{item.name} must be {wanted}, got {value!r}")


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


def _at_most(name: str, value: int, highest: int, why: str) -> None:
    check_at_most(name, value, highest, why, ConfigError)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _plain(value: Any) -> Any:
    """VALUE with every tuple, at any depth, made a list."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value

