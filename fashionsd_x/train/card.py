"""The model card OUT/README.md: what was trained, on what, how, how long, on which hardware, how it looks.

Hugging Face's model-card layout (YAML front matter, then prose), so the folder can be pushed to the Hub as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from fashionsd_x import __version__
from fashionsd_x.files import write_text
from fashionsd_x.train.config import TrainConfig
from fashionsd_x.train.result import TrainResult

USAGE = {
    "lora": """```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("{base}")
pipe.load_lora_weights("{out}")  # or pytorch_lora_weights_kohya.safetensors in A1111 / ComfyUI
image = pipe("{prompt}").images[0]
```""",
    "base": """```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("{out}")
image = pipe("{prompt}", height={resolution}, width={resolution}).images[0]
```""",
    "controlnet": """```python
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from fashionsd_x.data.conditioning import control_image  # the exact sketch preprocessing used in training
controlnet = ControlNetModel.from_pretrained("{out}")
pipe = StableDiffusionControlNetPipeline.from_pretrained("{base}", controlnet=controlnet)
image = pipe("{prompt}", image=control_image(sketch, {resolution})[None]).images[0]
```""",
}
TITLES = {"lora": "LoRA", "controlnet": "ControlNet", "base": "base model"}


def card_licence(base: str) -> dict[str, str]:
    """The card's licence and base model, as the Hub's card checks accept them.

    Weights trained from a base follow its licence. The embedded base (tiny) is FashionSD-X's own, Apache-2.0;
    a Hub id is named as base_model, and the licence points to its page; a local folder or file is no Hub id, so
    there is no base_model, and the licence says it is the base's."""
    if base in ("tiny", "embedded"):
        return {"license": "apache-2.0"}
    licence = {"license": "other", "license_name": "base-model-license"}
    if _hub_id(base):
        return {"base_model": base, **licence, "license_link": f"https://huggingface.co/{base}"}
    return {**licence, "license_link": "README.md"}


def _hub_id(name: str) -> bool:
    """Whether `name` is a Hub repository id (owner/name) rather than a path on this machine."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name).exists() or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def write_card(out: Path, config: TrainConfig, result: TrainResult, hardware: str, data: Any, family: str,
               validation: list[tuple[str, Image.Image | None]]) -> Path:
    """Write OUT/README.md for a finished run and return its path."""
    stage = result.stage
    front = {**card_licence(str(config.base)), "library_name": "diffusers",
             "tags": ["stable-diffusion", "text-to-image", "fashion", "fashionsd-x", stage]}
    rows = {split: data[split].num_rows for split in data}
    prompt = validation[0][0] if validation else "a garment"
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# FashionSD-X {TITLES[stage]} for {Path(str(config.base)).name}", "",
        f"{TITLES[stage]} trained with FashionSD-X {__version__} (`fsdx train {stage}`; Singh and Patras, "
        "arXiv 2404.18591) on a garment dataset with sketches. The weights follow the licence of their base, "
        f"`{config.base}`.", "",
        "| | |", "| --- | --- |",
        f"| base | `{config.base}` ({family}) |",
        f"| data | `{config.data}` ({', '.join(f'{split} {count}' for split, count in rows.items())} rows) |",
        f"| steps | {result.steps} ({result.epochs:.2f} epochs, batch {config.batch_size} x {config.grad_accum} "
        "accumulation per process) |",
        f"| final loss | {'n/a' if result.final_loss is None else f'{result.final_loss:.4f}'} |",
        f"| training time | {_duration(result.seconds)} |",
        f"| hardware | {hardware} |", "",
        "## Use", "", USAGE[stage].format(base=config.base, out=out, prompt=prompt, resolution=config.resolution), "",
        "## Validation images", "", *_images(out, result.validation, validation), "",
        "## Settings", "", "Also in `train_config.yaml` (reusable with `--config`) and in the weights' metadata.", "",
        "```yaml", config.to_yaml().strip(), "```", "",
    ]
    return write_text(Path(out) / "README.md", "\n".join(lines))


def _images(out: Path, paths: list[Path], samples: list[tuple[str, Image.Image | None]]) -> list[str]:
    if not paths:
        return ["No validation images (num_validation_images 0 and no validation_prompts)."]
    return [f"![{prompt}]({Path(path).relative_to(out).as_posix()}) {prompt}  "
            for path, (prompt, _) in zip(paths, samples)]


def _duration(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h {minute:02d}m {second:02d}s" if hours else f"{minute}m {second:02d}s"
