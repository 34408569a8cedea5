"""The shipped tiny model: standard diffusers calls load it, it is the default, and its quality holds.

The quality check generates the demo's sketches and prompts (fixed seeds) and scores them with the
evaluation's metrics; its thresholds sit a margin under the figures measured when the weights shipped
(fashionsd_x/embedded/metrics.json holds the full evaluation), so retrained weights that lose the sketch,
the colours or the prints fail here.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from PIL import Image

from fashionsd_x.data.conditioning import SketchRegion, control_image
from fashionsd_x.data.synth import PALETTE
from fashionsd_x.data.sketch_styles import STYLES, draw_item, prompt as style_prompt
from fashionsd_x.recipes.demo import DEMO_ITEMS, read_demo_items
from fashionsd_x.evaluate.metrics import color_accuracy, mask_iou, silhouette_iou
from fashionsd_x.evaluate.patterns import pattern_accuracy
from fashionsd_x.generate import GarmentGenerator, read_params
from fashionsd_x.models.base import load_base
from fashionsd_x.models.embedded import EMBEDDED_DIR, embedded_model, size_mb
from fashionsd_x.models.tokenizer import clip_tokenizer
from tests.test_cli import fsdx

ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".md", ".png", ".yaml"}
# Set on the shipped weights (the 12 demo prompts, seed 0, 20 UniPC steps, the model's own guidance 2: silhouette
# IoU 0.902 with the sketch and 0.315 without (two demo sketches are smaller and off centre), colour accuracy 1.0
# with the sketch and 1.0 without, dots 4 of 6 and checks 4 of 6). Earlier releases: a rank-8 text-encoder LoRA
# at guidance 3 measured 0.906, 0.376, 1.0, 1.0, 5 of 6 and 1 of 6; with stage 7 500 steps at guidance 4 0.909,
# 0.374, 1.0, 1.0, 4 of 6 and 3 of 6; a LoRA on the UNet only 0.903, 0.384, 1.0, 0.917, 2 of 6 and 1 of 6.
MIN_SILHOUETTE_IOU = 0.88
MIN_TEXT_ONLY_GAP = 0.4  # sketch-guided IoU minus text-only IoU
MIN_COLOR_ACCURACY = 0.85  # with the sketch: 11 of 12
MIN_TEXT_ONLY_COLOR_ACCURACY = 0.8
# Per print asked for (6 prompts each); measured on the shipped weights: dots 4 of 6, checks 4 of 6. A model that
# prints one pattern on everything scores 0 on the other, and fails; so does one that prints less than 6 in 12.
MIN_EACH_PATTERN_ACCURACY = 0.3
MIN_PRINT_ACCURACY = 0.5  # both prints together (12 prompts; measured 8 of 12)


def _asked(prompt: str, names) -> str:
    """The first of `names` that is a word of the prompt ("red" is not in "checkered")."""
    words = prompt.replace("dotted", "dots").replace("checkered", "check").replace("checked", "check").split()
    return next(name for name in names if name in words)


@pytest.fixture(scope="module")
def generator() -> GarmentGenerator:
    return GarmentGenerator.load(device="cpu")


@pytest.fixture(scope="module")
def demo_results(generator):
    """Every demo prompt on its sketch, and text-only, at seed 0."""
    results = []
    for _, sketch, prompts in read_demo_items()[:len(DEMO_ITEMS)]:  # the catalogue sketches, three prompts each
        for prompt in prompts:
            guided = generator(prompt, sketch=sketch, seed=0)[0].image
            text_only = generator(prompt, seed=0)[0].image
            results.append((prompt, Image.open(sketch), guided, text_only))
    return results


def test_shipped_files_are_safetensors_and_configs_within_50_mb():
    files = [path for path in EMBEDDED_DIR.rglob("*") if path.is_file()]
    assert {path.suffix for path in files} <= ALLOWED_SUFFIXES, sorted({path.suffix for path in files})
    assert size_mb() <= 50.0
    embedded_model()  # every part present


def test_standard_diffusers_calls_load_the_three_parts():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_DIR, safety_checker=None)
    pipe.load_lora_weights(EMBEDDED_DIR / "lora")
    controlnet = ControlNetModel.from_pretrained(EMBEDDED_DIR / "controlnet")
    control = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    sketch = next(iter(read_demo_items()))[1]
    image = control("a red t-shirt with polka dots", image=control_image(Image.open(sketch), 128)[None],
                    num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (128, 128, 3) and np.isfinite(image).all()


def test_tiny_names_the_embedded_base():
    assert Path(load_base("tiny").source) == EMBEDDED_DIR


def test_generate_without_a_model_uses_the_embedded_one(tmp_path):
    sketch = next(iter(read_demo_items()))[1]
    result = fsdx("generate", "--prompt", "a blue dotted t-shirt", "--sketch", sketch, "--n", "1", "--steps", "4",
                  "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    params = read_params(next(tmp_path.glob("*.png")))
    assert Path(params.model) == EMBEDDED_DIR and params.controlnet and params.lora


def test_quality_on_the_demo_sketches(demo_results):
    prompts = [prompt for prompt, *_ in demo_results]
    guided_iou = statistics.fmean(silhouette_iou(guided, sketch) for _, sketch, guided, _ in demo_results)
    text_iou = statistics.fmean(silhouette_iou(text, sketch) for _, sketch, _, text in demo_results)
    colors = [_asked(prompt, PALETTE) for prompt in prompts]
    patterns = [{"dots": "dots", "checks": "checks", "check": "checks"}[_asked(prompt, ("dots", "checks", "check"))]
                for prompt in prompts]
    guided = [image for _, _, image, _ in demo_results]
    assert guided_iou >= MIN_SILHOUETTE_IOU, guided_iou
    assert guided_iou - text_iou >= MIN_TEXT_ONLY_GAP, (guided_iou, text_iou)
    assert color_accuracy(guided, colors) >= MIN_COLOR_ACCURACY
    assert color_accuracy([text for *_, text in demo_results], colors) >= MIN_TEXT_ONLY_COLOR_ACCURACY
    # Each print asked for on its own: a model printing dots on everything scores 0 on the checked prompts (and
    # the plain prompts of the designers' sketches below), so no single pattern carries the test.
    by_pattern = {name: pattern_accuracy([image for image, asked in zip(guided, patterns) if asked == name],
                                         [name] * patterns.count(name)) for name in sorted(set(patterns))}
    assert min(by_pattern.values()) >= MIN_EACH_PATTERN_ACCURACY, by_pattern
    assert pattern_accuracy(guided, patterns) >= MIN_PRINT_ACCURACY, by_pattern


# Designers' sketches and pages (the sketch-style benchmark's code, seed 7: items no evaluation in the README used),
# one plain and one printed garment per style, seed 0, 20 steps, guidance 2, a page's region where it has one.
# Measured on the shipped weights with page cleanup, all eleven styles: mean 0.865, worst style 0.785 (notes;
# detailed 0.813, on_figure 0.819). The six drawing styles alone: mean
# silhouette IoU 0.884, worst style 0.813 (detailed), plain prompts drawn plain 6 of 6, prints asked on these
# outline sketches 3 of 6, colour 11 of 12 (the rank-8 text-encoder LoRA at guidance 3: 0.870, 0.806, 5 of 6,
# 3 of 6, 12 of 12; with stage 7 500 steps at guidance 4: 0.866, 0.803, 6 of 6, 2 of 6, 12 of 12; a LoRA on
# the UNet only: 0.882, 0.824, 5 of 6, 0 of 6, 12 of 12).
STYLE_SEED = 7
MIN_STYLE_IOU = 0.85  # mean silhouette IoU over the 22 sketches (text only scores about 0.3 on such sketches)
MIN_STYLE_IOU_EACH = 0.78  # the worst style's mean
MIN_PLAIN_SOLID = 0.66  # share of "plain" prompts whose garment has no print: a model printing on all scores 0
MIN_STYLE_PRINTS = 0.3  # share of printed prompts drawn with the asked print: a model that never prints scores 0
MIN_STYLE_COLOR = 0.8


@pytest.fixture(scope="module")
def style_results(generator):
    results = []
    for style in STYLES:
        for index in (0, 1):  # item 0 is plain, item 1 printed
            item = draw_item(STYLE_SEED, style, index)
            text = style_prompt(item.category, item.color, item.pattern)
            region = SketchRegion.parse(list(item.region)) if item.region else None  # two garments on a page
            image = generator(text, sketch=Image.fromarray(item.sketch), seed=0, sketch_region=region)[0].image
            silhouette = Image.fromarray(item.silhouette)
            results.append((style, item, image, region.crop(silhouette) if region else silhouette))
    return results


def test_quality_on_designers_sketches(style_results):
    ious = {style: statistics.fmean(mask_iou(image, silhouette)
                                    for name, item, image, silhouette in style_results if name == style)
            for style in STYLES}
    plain = [image for _, item, image, _ in style_results if item.pattern == "solid"]
    printed = [(image, item.pattern) for _, item, image, _ in style_results if item.pattern != "solid"]
    print({style: round(value, 3) for style, value in ious.items()})
    assert statistics.fmean(ious.values()) >= MIN_STYLE_IOU, ious
    assert min(ious.values()) >= MIN_STYLE_IOU_EACH, ious
    # A model printing dots on everything fails the first; one that never prints, the second.
    assert pattern_accuracy(plain, ["solid"] * len(plain)) >= MIN_PLAIN_SOLID
    assert pattern_accuracy([image for image, _ in printed], [asked for _, asked in printed]) >= MIN_STYLE_PRINTS
    assert color_accuracy([image for _, _, image, _ in style_results],
                          [item.color for _, item, _, _ in style_results]) >= MIN_STYLE_COLOR


def test_the_embedded_tokenizer_loads_slow_and_fast_with_the_same_ids():
    """transformers 4.x's slow CLIPTokenizer reads vocab.json and merges.txt, the fast one tokenizer.json."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folder = EMBEDDED_DIR / "tokenizer"
    text = "a red floral midi dress with long sleeves, buttons down the front"
    slow, fast = CLIPTokenizer.from_pretrained(folder), CLIPTokenizerFast.from_pretrained(folder)
    assert slow(text).input_ids == fast(text).input_ids == clip_tokenizer()(text).input_ids
    assert slow.model_max_length == fast.model_max_length == 77
