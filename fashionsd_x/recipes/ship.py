"""Shipping a finished tiny-model recipe as the package's embedded default: its base, LoRA and ControlNet (weights
and configs only), the demo sketches, the recipe's record and evaluation, and a model card written from them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fashionsd_x.models.base import recommended_guidance
from fashionsd_x.models.components import DEFAULT_GUIDANCE, GENERATION_DEFAULTS, standardize_text_encoder
from fashionsd_x.models.embedded import (
    COMPONENTS,
    CONTROLNET_FILES,
    EMBEDDED_DIR,
    LORA_FILES,
    embedded_model,
    read_metrics,
)
from fashionsd_x.recipes.demo import write_demo_items

FINAL_BASE = "refine"  # the stage folder holding the finished base: LoRA, ControlNet and shipping start from it


def ship_model(recipe: Path, root: Path = EMBEDDED_DIR) -> Path:
    """Copy a finished recipe's base, LoRA and ControlNet (weights and configs only) into `root`."""
    recipe = Path(recipe)
    staging = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(recipe / FINAL_BASE / "model_index.json", staging)
    for name in COMPONENTS:
        shutil.copytree(recipe / FINAL_BASE / name, staging / name)
    standardize_text_encoder(staging)  # a base trained before the standard layout was written is brought to it
    record = json.loads((recipe / "recipe.json").read_text(encoding="utf-8"))
    controlnet = finished_controlnet(recipe, record)
    # The ControlNet's train_config.yaml goes with it: its sketch settings, which generation applies.
    for folder, source, files in (("lora", recipe / "lora", LORA_FILES),
                                  ("controlnet", controlnet, (*CONTROLNET_FILES, "train_config.yaml"))):
        (staging / folder).mkdir()
        for name in files:
            shutil.copy2(source / name, staging / folder / name)
    shutil.copy2(recipe / "recipe.json", staging)
    shutil.copy2(recipe / "eval" / "metrics.json", staging)
    write_generation_defaults(staging, record["config"].get("guidance_scale", DEFAULT_GUIDANCE))
    write_demo_items(staging / "demo", record["config"]["resolution"])
    write_card(staging)
    embedded_model(staging)
    old = root.with_name(f".{root.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        root.rename(old)
    staging.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return root


def write_generation_defaults(root: Path, guidance_scale: float) -> Path:
    """root/generation_defaults.json: the guidance the model was evaluated at, which every entry point defaults to
    (`recommended_guidance`). A recipe from before the setting was evaluated at Stable Diffusion's 7.5."""
    path = root / GENERATION_DEFAULTS
    path.write_text(json.dumps({"guidance_scale": guidance_scale}, indent=2) + "\n", encoding="utf-8")
    return path


def finished_controlnet(recipe: Path, record: dict) -> Path:
    """The ControlNet a recipe finished with: that of the last ControlNet stage that trained (7, 6, else 5)."""
    stages = record.get("stages", {})
    return recipe / next((name for name in ("framing", "consistency") if "steps" in stages.get(name, {})), "controlnet")


def write_card(root: Path) -> Path:
    """root/README.md: what the model is, how each stage was trained (from recipe.json), how good it is."""
    record = json.loads((root / "recipe.json").read_text(encoding="utf-8"))
    metrics = read_metrics(root)
    stages = record["stages"]
    lines = ["---", "library_name: diffusers", "license: apache-2.0",
             "tags: [stable-diffusion, controlnet, lora, fashion, fashionsd-x]", "---", "",
             "# FashionSD-X tiny (embedded default)", "",
             "A Stable Diffusion-class model (AutoencoderKL, UNet2DConditionModel, CLIPTextModel with the real CLIP "
             "tokenizer, UniPC scheduler) with a LoRA and a sketch ControlNet, trained from nothing by FashionSD-X's "
             "own recipe (`fsdx train tiny`) on synthetic flat-lay garments, 128 x 128 px. It exists so that "
             "everything runs offline on a laptop CPU; it knows 7 garment types, 13 colours and 4 prints, nothing else.",
             "", "## Recipe", "", "| stage | data | steps | time | hardware |", "| --- | --- | --- | --- | --- |"]
    text_encoder = record["config"]["lora"].get("train_text_encoder", False)
    lines += _stage_rows(stages, lora_title="LoRA (UNet and text encoder)" if text_encoder else "LoRA")
    lines += ["", "Stages 1 to 3 are not in the paper, which starts from Stable Diffusion's pretrained weights; "
              "none can be downloaded here. Stage 3 goes on with offset noise: at 32 x 32 latents the noisiest "
              "training step still shows the garment's mean colour, and a base trained without it takes the colour "
              "from the starting noise rather than the prompt. Stages 4 and 5 are the paper's, with higher "
              "learning rates for a model this small (settings in recipe.json). The new collection varies each "
              "garment's size and place in the frame, which no caption says, so only the sketch tells the "
              "silhouette.", ""]
    if stages["controlnet"].get("continued_from"):
        lines += ["This release retrained stages 4 and 5 on the shipped base (`fsdx train tiny --base-from`): a new "
                  "LoRA, and the ControlNet continued from the previous one with it fused, normalised sketches and "
                  "sketch-style augmentation (settings in controlnet/train_config.yaml).", ""]
    if "steps" in stages.get("consistency", {}):
        lines += ["Stage 6 (not in the paper) continued the ControlNet with a sketch-consistency loss, as ControlNet++ "
                  "does: the garment decoded from each step's prediction is compared with the region inside its "
                  "sketch (`consistency_weight` in controlnet/train_config.yaml).", ""]
    if "steps" in stages.get("framing", {}):
        lines += ["Stage 7 (not in the paper) continued it with each garment and its sketch scaled and moved together "
                  "(`sketch_augment` in controlnet/train_config.yaml), so that small and off-centre garments on a "
                  "designer's page are followed.", ""]
    gain = record["config"]["controlnet"].get("output_gain", 1.0)
    if gain != 1:
        lines += [f"The ControlNet is saved with a gain of {gain:g} folded into its output convolutions "
                  f"(`output_gain`): at conditioning scale 1 it acts as the trained weights at {gain:g}, the scale "
                  "that followed sketches best when the evaluation swept it (FashionSD-X README, Stage 4).", ""]
    guidance = recommended_guidance(root)
    lines += [f"Generation defaults to classifier-free guidance {guidance:g} ({GENERATION_DEFAULTS}; Stable "
              "Diffusion's is 7.5), the setting every evaluation below used.", ""]
    if metrics:
        lines += [f"## Evaluation ({metrics['num_items']} held-out new-collection garments, `fsdx evaluate`)", "",
                  *_metric_rows(metrics["variants"]), ""]
    styles = stages.get("evaluate", {}).get("styles", {}).get("by_style")
    if styles:
        lines += ["## Designers' sketches (`fsdx data sketch-styles`, LoRA + ControlNet)", "",
                  *_metric_rows({style: variants["fashionsd-x"] for style, variants in styles.items()}, "style"), ""]
    lines += ["## Use", "", "```python", "from diffusers import StableDiffusionPipeline, ControlNetModel",
              "pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_DIR)",
              'pipe.load_lora_weights(EMBEDDED_DIR / "lora")',
              'controlnet = ControlNetModel.from_pretrained(EMBEDDED_DIR / "controlnet")',
              f'image = pipe("a red t-shirt", guidance_scale={guidance:g}).images[0]  # its recommended guidance',
              "```", "",
              "or `fsdx generate --prompt ... [--sketch ...]` with no `--model`.", ""]
    path = root / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _stage_rows(stages: dict, lora_title: str = "LoRA") -> list[str]:
    data = stages["data"]
    rows = [f"| 0. synthetic data | {_data_cell('catalogue', data['catalogue'])}; "
            f"{_data_cell('new collection', data['collection'])} | | | |"]
    vae = stages["vae"]
    rows.append(f"| 1. VAE from scratch | catalogue train | {vae['steps']} x {vae['config']['batch_size']} | "
                f"{_minutes(vae['seconds'])} | {vae['hardware']['name']} ({vae['hardware']['torch_threads']} threads) |")
    for number, (name, title) in enumerate((("base", "UNet + text encoder from scratch"),
                                            ("refine", "base continued with offset noise"), ("lora", lora_title),
                                            ("controlnet", "ControlNet (LoRA fused)"),
                                            ("consistency", "ControlNet + sketch consistency"),
                                            ("framing", "ControlNet + garments scaled and moved")), start=2):
        stage = stages.get(name, {})
        if "steps" not in stage:  # a recipe without the consistency or framing stage
            continue
        data_name = "catalogue" if name in ("base", "refine") else "new collection"
        rows.append(f"| {number}. {title} | {data_name} train | {stage['steps']} ({stage['epochs']:.1f} epochs) | "
                    f"{_minutes(stage['seconds'])} | {stage['hardware']} |")
    return rows


def _data_cell(name: str, figures: dict) -> str:
    counts = ", ".join(f"{split} {count}" for split, count in figures["rows"].items())
    return f"{name}: {counts} ({', '.join(figures['patterns'])}; {figures['framing']} framing)"


def _metric_rows(variants: dict, first: str = "variant") -> list[str]:
    names = {"silhouette_iou": "silhouette IoU", "color_accuracy": "colour accuracy",
             "pattern_accuracy": "pattern accuracy", "sketch_mse": "sketch MSE", "ssim": "SSIM"}
    lines = [f"| {first} | " + " | ".join(names.values()) + " |", "|" + " --- |" * (len(names) + 1)]
    for variant, scores in variants.items():
        lines.append(f"| {variant} | " + " | ".join(f"{scores[key]:.3f}" if key in scores else "n/a"
                                                      for key in names) + " |")
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
