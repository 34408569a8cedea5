"""Loading a Stable Diffusion 1.x/2.x base: a Hugging Face hub id, a local diffusers folder or one .safetensors file.

Every training and generation command starts here (`--base`). Components load one by one with their own classes
(not through StableDiffusionPipeline), so no safety checker or feature extractor is needed; they load on CPU in
float32 unless asked, and callers move and cast them. Anything that cannot be found or loaded raises
BaseLoadError with one line saying what was tried and what to pass instead (the CLI exits with code 2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import huggingface_hub.constants
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

# Base and its error are defined with the pieces both loaders share; importing them from here keeps working.
from fashionsd_x.models.components import (DEFAULT_GUIDANCE, GENERATION_DEFAULTS, PREDICTION_TYPES, Base, BaseLoadError,
                                          build_schedulers, first_line)
from fashionsd_x.models.embedded import embedded_model, is_embedded
from fashionsd_x.models.single_file import load_single_file

COMPONENT_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
ACCEPTED_FORMS = ("a Hugging Face hub id (owner/name), a local diffusers folder (model_index.json with unet/, vae/, "
                  "text_encoder/, tokenizer/, scheduler/) or a .safetensors checkpoint file")
# owner/name as the Hub spells repository ids; a path that merely looks like one is tried as a path first.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

T = TypeVar("T")


def looks_like_hub_id(text: str) -> bool:
    """True for owner/name strings; names of weight files (x/model.safetensors) are paths, never hub ids."""
    return bool(HUB_ID.fullmatch(text)) and not text.lower().endswith((".safetensors", *PICKLE_SUFFIXES))


def check_diffusers_folder(folder: Path) -> None:
    """Raise BaseLoadError unless `folder` has model_index.json and the five component subfolders."""
    if not (folder / "model_index.json").is_file():
        files = sorted(path.name for path in folder.glob("*.safetensors"))
        hint = f"; it holds {files[0]}: pass that file instead" if files else f"; pass {ACCEPTED_FORMS}"
        raise BaseLoadError(f"folder {folder} is not a diffusers model (no model_index.json){hint}")
    missing = [f"{name}/" for name in COMPONENT_FOLDERS if not (folder / name).is_dir()]
    if missing:
        raise BaseLoadError(f"diffusers folder {folder} has no {', '.join(missing)}; a Stable Diffusion base needs "
                            "unet/, vae/, text_encoder/, tokenizer/ and scheduler/")


def check_checkpoint_file(path: Path) -> None:
    """Raise BaseLoadError unless `path` is a .safetensors file; pickle checkpoints are refused by name."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise BaseLoadError(f"{path} is a pickle checkpoint ({suffix}); FashionSD-X does not load pickle files because "
                            "unpickling can run arbitrary code: convert it to .safetensors and pass that file")
    if suffix != ".safetensors":
        raise BaseLoadError(f"{path} is not a .safetensors checkpoint; pass {ACCEPTED_FORMS}")


def resolve_base(base: str | Path) -> tuple[str, str]:
    """("hub" | "folder" | "single_file", normalised source) for `base`, checked without reading any weights."""
    text = str(base)
    path = Path(text).expanduser()
    if is_embedded(text):
        return "folder", str(embedded_model().base)
    if path.is_dir():
        check_diffusers_folder(path)
        return "folder", str(path.resolve())
    if path.is_file():
        check_checkpoint_file(path)
        return "single_file", str(path.resolve())
    if looks_like_hub_id(text):
        return "hub", text
    raise BaseLoadError(f"base {text!r} is no existing file or folder and no hub id; pass {ACCEPTED_FORMS}")


def recommended_guidance(base: str | Path) -> float:
    """The classifier-free guidance `base` recommends: its folder's GENERATION_DEFAULTS ({"guidance_scale": 4.0}),
    else DEFAULT_GUIDANCE (hub ids and single files carry none). Read without loading any weights.

    A small base trained from scratch can want much less guidance than Stable Diffusion's 7.5 (the embedded one
    follows sketches and prompts best at 3), so its folder says so and every entry point defaults to it."""
    return _guidance_of(*resolve_base(base))


def _guidance_of(kind: str, source: str) -> float:
    """recommended_guidance of a base resolve_base has already checked."""
    path = Path(source) / GENERATION_DEFAULTS
    if kind != "folder" or not path.is_file():
        return DEFAULT_GUIDANCE
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["guidance_scale"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BaseLoadError(f"{path} is not a JSON object with a guidance_scale: {first_line(error)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise BaseLoadError(f"{path}: guidance_scale must be a number from 0 to 100, got {value!r}")
    return float(value)


def load_base(base: str | Path, config: str | Path | None = None, prediction_type: str | None = None,
              torch_dtype: torch.dtype = torch.float32) -> Base:
    """Load a Stable Diffusion 1.x/2.x base from a hub id, a diffusers folder or a .safetensors file.

    `config` names a diffusers folder whose configs describe a single file's architecture (otherwise it is
    detected); `prediction_type` replaces the scheduler config's value (SD 2.x 768-v needs "v_prediction").
    """
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    kind, source = resolve_base(base)
    if kind == "single_file":
        return load_single_file(Path(source), config, prediction_type, torch_dtype)
    if config is not None:
        raise BaseLoadError(f"config={config} only applies to a single .safetensors file; the {kind} base {source} "
                            "carries its own configs")
    loaded = load_pretrained(source, kind, prediction_type, torch_dtype)
    loaded.guidance_scale = _guidance_of(kind, source)
    return loaded


def load_pretrained(source: str, kind: str, prediction_type: str | None, torch_dtype: torch.dtype) -> Base:
    """Load each component of a hub repository or diffusers folder from its subfolder (safetensors weights only)."""

    def load(component: str, loader: Callable[[], T]) -> T:
        return load_or_explain(loader, component, source, kind)

    weights = {"torch_dtype": torch_dtype, "use_safetensors": True}
    scheduler_config = load("scheduler", lambda: DDPMScheduler.load_config(source, subfolder="scheduler"))
    tokenizer = load("tokenizer", lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"))
    # transformers names the argument `dtype` (since 4.56; `torch_dtype` is deprecated there), diffusers `torch_dtype`.
    text_encoder = load("text_encoder", lambda: CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", dtype=torch_dtype, use_safetensors=True))
    vae = load("vae", lambda: AutoencoderKL.from_pretrained(source, subfolder="vae", **weights))
    unet = load("unet", lambda: UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights))
    noise_scheduler, sampler = build_schedulers(scheduler_config, prediction_type, source)
    return Base(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), unet=unet.eval(),
                noise_scheduler=noise_scheduler, source=source, kind=kind, sampler=sampler)


def load_or_explain(loader: Callable[[], T], component: str, source: str, kind: str) -> T:
    """Run `loader`; turn the libraries' multi-line loading errors into one BaseLoadError line."""
    try:
        return loader()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = first_line(error)
        if kind == "hub" and huggingface_hub.constants.HF_HUB_OFFLINE:  # read at call time, as huggingface_hub does
            message = (f"could not load hub id {source}: the Hub is offline (HF_HUB_OFFLINE=1) and its {component} is "
                       f"not in the local cache ({reason}); no local path of that name exists either: pass a local "
                       "diffusers folder or a .safetensors file")
        elif kind == "hub":
            message = (f"could not load hub id {source} ({component}: {reason}): offline, or no such model? No local "
                       "path of that name exists either: pass a local diffusers folder or a .safetensors file "
                       "(HF_HUB_OFFLINE=1 skips the network retries)")
        else:
            message = f"could not load the {component} of {kind} base {source}: {reason}"
        raise BaseLoadError(message) from error
