"""The embedded default model: a tiny FashionSD-X (base, LoRA, ControlNet) shipped inside the package.

fashionsd_x/embedded/ is a diffusers folder (`StableDiffusionPipeline.from_pretrained` loads it as it is) with
lora/ (`pipe.load_lora_weights`) and controlnet/ (`ControlNetModel.from_pretrained`) beside the components,
the model card README.md, recipe.json (how it was trained) and metrics.json (how good it is), and demo/ (the
sketches and prompts of `fsdx demo`). It is made by `fsdx train tiny --ship` (recipes/tiny.py, recipes/ship.py). Wherever a
model can be named, "tiny" or nothing means this one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "embedded"
NAME = "tiny"  # what --model / --base accept for the embedded model
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors")  # diffusers, kohya/A1111/ComfyUI
CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


class EmbeddedModelMissing(FileNotFoundError):
    """The package was installed without its embedded model (or it was never trained)."""


@dataclass(frozen=True)
class EmbeddedModel:
    """Paths of the shipped model's three parts."""

    base: Path  # diffusers folder
    lora: Path  # folder with pytorch_lora_weights.safetensors
    controlnet: Path  # ControlNetModel folder


def embedded_model(root: Path = EMBEDDED_DIR) -> EmbeddedModel:
    """The shipped model's parts, checked to be there."""
    model = EmbeddedModel(root, root / "lora", root / "controlnet")
    missing = [str(path) for path in [root / "model_index.json", *(root / name for name in COMPONENTS),
                                      *(model.lora / name for name in LORA_FILES),
                                      *(model.controlnet / name for name in CONTROLNET_FILES)] if not path.exists()]
    if missing:
        raise EmbeddedModelMissing(f"the embedded model is incomplete in {root} (missing {missing[0]}); reinstall "
                                   "FashionSD-X, or train it with `fsdx train tiny --ship`")
    return model


def is_embedded(model: str | Path | None) -> bool:
    """True when `model` names the embedded model: nothing, or "tiny" (and no local path of that name)."""
    return model is None or (str(model) == NAME and not Path(NAME).exists())


def with_embedded(model: str | Path | None, lora: str | Path | None,
                  controlnet: str | Path | None) -> tuple[str, str | Path | None, str | Path | None]:
    """(base, lora, controlnet) with the embedded model's parts filled in when no other base is named.

    The embedded base comes with its own LoRA and ControlNet unless others are given; another base gets
    exactly what was given.
    """
    if not is_embedded(model):
        return str(model), lora, controlnet
    parts = embedded_model()
    return str(parts.base), lora or parts.lora, controlnet or parts.controlnet


def size_mb(root: Path = EMBEDDED_DIR) -> float:
    """Total size of the shipped files in MB (the issue's budget is 50)."""
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) / 1e6


def read_metrics(root: Path = EMBEDDED_DIR) -> dict:
    path = root / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
