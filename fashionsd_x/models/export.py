"""Writing a base as one single-file checkpoint in the original LDM layout (what A1111, ComfyUI and diffusers'
from_single_file read); the key renaming is in ldm_keys.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import ControlNetModel
from diffusers.utils import convert_state_dict_to_kohya
from safetensors import SafetensorError, safe_open

from fashionsd_x.files import save_safetensors
from fashionsd_x.models.base import Base, load_base
from fashionsd_x.models.ldm_keys import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    controlnet_to_ldm,
    prefixed,
    text_encoder_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the diffusers-format file in a `fsdx train lora` folder
CONFIG_METADATA_KEY = "fashionsd_x_train_config"  # where `fsdx train` records its config in a weights file
CONTROLNET_CLASS = "ControlNetModel"  # config.json's _class_name in a ControlNet folder
CONTROLNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
CONTROLNET_FILES = "config.json with _class_name ControlNetModel and diffusion_pytorch_model.safetensors"


def export_single_file(folder_or_base: str | Path | Base, path: str | Path) -> Path:
    """Write a base as one original-layout .safetensors checkpoint (what A1111, ComfyUI and from_single_file read).

    The file's metadata records family and prediction_type, which load_base honours when reading it back.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export path {path} must end in .safetensors")
    base = folder_or_base if isinstance(folder_or_base, Base) else load_base(folder_or_base)
    tensors = {
        **prefixed(UNET_PREFIX, unet_to_ldm(base.unet.state_dict(), base.unet.config.layers_per_block)),
        **prefixed(VAE_PREFIX, vae_to_ldm(base.vae.state_dict(), len(base.vae.config.up_block_types))),
        **prefixed(CLIP_PREFIX, text_encoder_to_ldm(base.text_encoder.state_dict())),
    }
    # The VAE's latent scale is in no tensor (SD's 0.18215 is assumed by readers); a base with its own travels here.
    metadata = {"format": "pt", "family": base.family, "prediction_type": base.prediction_type,
                "exported_from": base.source, "vae_scaling_factor": str(base.vae.config.scaling_factor)}
    _save(tensors, path, metadata)
    return path


def export_controlnet(folder: str | Path, path: str | Path) -> Path:
    """Write a diffusers ControlNet folder as one file in the original layout (control_model.* keys), the layout
    A1111's ControlNet extension and ComfyUI load; diffusers reads it back with ControlNetModel.from_single_file."""
    path = _safetensors_path(path)
    check_controlnet_folder(folder)
    controlnet = ControlNetModel.from_pretrained(folder, use_safetensors=True)
    tensors = controlnet_to_ldm(controlnet.state_dict(), controlnet.config.layers_per_block)
    _save(tensors, path, {"format": "pt", "exported_from": str(folder)})
    return path


def export_lora(lora: str | Path, path: str | Path) -> Path:
    """Write a diffusers/PEFT LoRA (a `fsdx train lora` folder or its .safetensors file) in kohya's layout
    (lora_unet_*, lora_te_* with lora_down/lora_up and .alpha): what A1111, ComfyUI and kohya's scripts load."""
    source = lora_file(lora)
    try:
        with safe_open(str(source), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"--lora {source} is no readable safetensors file ({' '.join(str(error).split())})") from None
    unet = {key.removeprefix("unet."): value for key, value in tensors.items() if key.startswith("unet.")}
    # diffusers' save_lora_weights writes the text encoder's tensors in its older layout (lora_linear_layer.down
    # and .up); they are PEFT's lora_A and lora_B, the names the kohya conversion reads.
    text = {key.removeprefix("text_encoder.").replace(".lora_linear_layer.down.", ".lora_A.")
            .replace(".lora_linear_layer.up.", ".lora_B."): value
            for key, value in tensors.items() if key.startswith("text_encoder.")}
    if not unet and not text:
        raise ValueError(f"{source} holds no diffusers LoRA tensors (unet.* or text_encoder.* keys)")
    alpha, rank = _lora_alpha_and_rank(metadata, unet or text)
    path = _safetensors_path(path)
    _save(kohya_state_dict(unet, text, alpha), path, {"format": "pt", "ss_network_module": "networks.lora",
                                                      "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                                                      **_kohya_base(metadata, unet)})
    return path


def _kohya_base(metadata: dict[str, str], unet: dict[str, torch.Tensor]) -> dict[str, str]:
    """kohya's metadata on the base a LoRA is for (ss_base_model_version, ss_v2, ss_v_parameterization), as
    `fsdx train lora` writes it in its own kohya file: SD 2.x by the cross-attention width its attn2.to_k reads
    (1024; 1.x reads 768), v-prediction from the run's recorded config."""
    widths = {tensor.shape[1] for key, tensor in unet.items() if "attn2.to_k.lora_A" in key}
    v2 = 1024 in widths
    try:
        recorded = yaml.safe_load(metadata.get(CONFIG_METADATA_KEY, "")) or {}
    except yaml.YAMLError:
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    prediction = recorded.get("prediction_type") or _scheduler_prediction(recorded.get("base"))
    v_prediction = prediction == "v_prediction"
    return {"ss_base_model_version": "sd_v2" if v2 else "sd_v1", "ss_v2": str(v2),
            "ss_v_parameterization": str(v_prediction)}


def _scheduler_prediction(base: Any) -> str | None:
    """The prediction type a base folder's scheduler config names (None for a hub id, a file, or none given)."""
    config = Path(str(base)) / "scheduler" / "scheduler_config.json" if base else None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("prediction_type") if config else None
    except (OSError, ValueError, AttributeError):
        return None


def check_controlnet_folder(folder: str | Path) -> None:
    """Raise ValueError (FileNotFoundError) unless FOLDER is a diffusers ControlNet folder, saying what it holds
    instead, before diffusers reads anything."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"--controlnet {folder}: no such folder; give a ControlNet folder ({CONTROLNET_FILES})")
    if not folder.is_dir():
        raise ValueError(f"--controlnet {folder} is a file; give the ControlNet's folder ({CONTROLNET_FILES})")
    if _config_class(folder) != CONTROLNET_CLASS:
        raise ValueError(f"--controlnet {folder} is no ControlNet folder ({CONTROLNET_FILES}): {_instead(folder)}")
    if not any((folder / name).is_file() for name in CONTROLNET_WEIGHTS):
        pickled = " (a pickle .bin is never read: save it as safetensors)" if any(folder.glob("*.bin")) else ""
        raise ValueError(f"ControlNet folder {folder} has no {CONTROLNET_WEIGHTS[0]}{pickled}")


def lora_file(lora: str | Path) -> Path:
    """The diffusers LoRA file of a `fsdx train lora` folder or the file itself; ValueError (FileNotFoundError)
    saying what was given instead."""
    source = Path(lora)
    if not source.exists():
        raise FileNotFoundError(f"--lora {source}: no such file or folder")
    if source.is_dir():
        if not (source / LORA_WEIGHTS).is_file():
            raise ValueError(f"--lora {source} has no {LORA_WEIGHTS}: {_instead(source)}")
        return source / LORA_WEIGHTS
    if source.suffix != ".safetensors":
        raise ValueError(f"--lora {source} is no .safetensors file; give a LoRA folder or its {LORA_WEIGHTS}")
    return source


def _instead(folder: Path) -> str:
    """What FOLDER seems to hold and the option that takes it, for a message: 'it holds a LoRA (...): use --lora'."""
    holds, option = _holds(folder)
    return f"{holds}: use {option}" if option else holds


def _holds(folder: Path) -> tuple[str, str]:
    """(what FOLDER seems to hold, the export option that takes it, or "")."""
    names = sorted(path.name for path in folder.iterdir())
    kind = _config_class(folder)
    if not names:
        return "it is empty", ""
    if "model_index.json" in names:
        return "it holds a diffusers base (model_index.json)", "--model"
    if LORA_WEIGHTS in names:
        return f"it holds a LoRA ({LORA_WEIGHTS})", "--lora"
    if kind == CONTROLNET_CLASS:
        return f"it holds a ControlNet (config.json with _class_name {kind})", "--controlnet"
    if kind:
        return f"it holds a {kind} (config.json), which fsdx export does not write alone", ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"it holds {shown}", ""


def _config_class(folder: Path) -> str:
    """_class_name of FOLDER's config.json ("" when there is none or it cannot be read)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(config.get("_class_name", "")) if isinstance(config, dict) else ""


def kohya_state_dict(unet_state: dict[str, torch.Tensor], text_state: dict[str, torch.Tensor],
                     alpha: float) -> dict[str, torch.Tensor]:
    """PEFT LoRA tensors in kohya's naming (lora_unet_*, lora_te_* with lora_down/lora_up and .alpha)."""
    prefixed_state = {**{f"unet.{key}": value for key, value in unet_state.items()},
                      **{f"text_encoder.{key}": value for key, value in text_state.items()}}
    converted = {}
    for key, value in convert_state_dict_to_kohya(prefixed_state).items():
        # diffusers writes lora_te1_ (SDXL's first encoder) after transformers 5's CLIP module path; SD 1.x/2.x
        # tools expect kohya's lora_te_text_model_... names.
        if key.startswith("lora_te1_"):
            rest = key.removeprefix("lora_te1_")
            key = "lora_te_" + (rest if rest.startswith("text_model_") else "text_model_" + rest)
        # diffusers writes alpha = rank (scale 1); the real alpha keeps the scale alpha / rank the LoRA trained at.
        converted[key] = torch.tensor(float(alpha)) if key.endswith(".alpha") else value.contiguous()
    return converted


def _lora_alpha_and_rank(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> tuple[float, int]:
    """The LoRA's alpha (from the adapter config diffusers stores in the file; alpha = rank when absent) and rank."""
    rank = next(value.shape[0] for key, value in tensors.items() if "lora_A" in key or "lora.down" in key)
    config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    alpha = config.get("unet.lora_alpha", config.get("text_encoder.lora_alpha", rank))
    return float(alpha), int(rank)


def export_model(out: Path, model: str | None = None, lora: Path | None = None,
                 controlnet: Path | None = None) -> Path:
    """Write one part of a FashionSD-X model as the single file other tools load.

    Exactly one of --model, --lora or --controlnet:
      --model       a base (diffusers folder, hub id, or tiny for the embedded one) -> original SD checkpoint layout
                    (A1111, ComfyUI, diffusers' from_single_file);
      --lora        a LoRA folder or file -> kohya layout (A1111, ComfyUI, kohya's sd-scripts);
      --controlnet  a ControlNet folder -> original ControlNet layout, control_model.* (A1111's ControlNet
                    extension, ComfyUI).

    Args:
        out: the .safetensors file to write (its folder is created; an existing file is replaced atomically).
        model: base to export.
        lora: LoRA folder or .safetensors file to export.
        controlnet: ControlNet folder to export.
    """
    chosen = [name for name, value in (("model", model), ("lora", lora), ("controlnet", controlnet)) if value]
    if len(chosen) != 1:
        raise ValueError(f"give exactly one of --model, --lora or --controlnet (got {', '.join(chosen) or 'none'})")
    _safetensors_path(out)
    if model:
        _check_base_folder(model)
        return export_single_file(model, out)
    return export_lora(lora, out) if lora else export_controlnet(controlnet, out)


def _check_base_folder(model: str) -> None:
    """A folder given to --model that holds a LoRA or a ControlNet is named as such (load_base only sees that it
    is no diffusers base)."""
    folder = Path(model).expanduser()
    if folder.is_dir() and _holds(folder)[1] in ("--lora", "--controlnet"):
        raise ValueError(f"--model {folder} is no diffusers base: {_instead(folder)}")


def _safetensors_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export path {path} must end in .safetensors")
    if path.is_dir():
        raise ValueError(f"export path {path} is a folder; name the .safetensors file to write")
    return path


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({key: tensor.detach().contiguous() for key, tensor in tensors.items()}, path, metadata)
