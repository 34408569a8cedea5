"""Generation: a prompt and a sketch (or a photo) in, garment images out (paper step 3).

One `GarmentGenerator` holds a base with its LoRA fused into the UNet and an optional ControlNet; the CLI,
the studio and the evaluation all generate through it. Sketches go through the same preparation as in
ControlNet training (`fashionsd_x.data.conditioning.control_image`), and a photo given instead of a sketch
goes through the dataset stage's own `extract_sketch`, so generation sees what training saw.

Reproducibility: image k of a call uses its own generator seeded with `seed + k`, so a batch of N equals N
single calls with those seeds, and every PNG carries the parameters that reproduce it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image, PngImagePlugin
from safetensors import SafetensorError, safe_open

from fashionsd_x.data.conditioning import BlankSketchError, SketchConditioning, SketchRegion, control_image
from fashionsd_x.data.conditioning import explain_sketch as explain_page
from fashionsd_x.data.images import ImageLoadError, load_image, pad_to_square
from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.files import atomic_path, write_text
from fashionsd_x.limits import MAX_ITEMS, check_at_most, check_fits
from fashionsd_x.models.base import Base, load_base
from fashionsd_x.models.embedded import with_embedded
from fashionsd_x.notices import notify

LOGGER = logging.getLogger(__name__)
BATCH_FIELDS = ("prompt", "negative_prompt", "sketch", "photo", "n", "seed", "control_start", "control_end",
                "sketch_region", "sketch_cleanup")  # what a --batch line may set
DECODE_BYTES_PER_PIXEL = 1024  # the VAE decoder's float32 activations per output pixel, about (an estimate)
ITEM_FILE = re.compile(r"(\d{4,})_.+\.png")  # OUT/<item>_<seed>.png and the item's sketch files
SCHEDULERS = {"unipc": UniPCMultistepScheduler, "ddim": DDIMScheduler, "euler_a": EulerAncestralDiscreteScheduler,
              "dpm++": DPMSolverMultistepScheduler}
A1111_SAMPLERS = {"unipc": "UniPC", "ddim": "DDIM", "euler_a": "Euler a", "dpm++": "DPM++ 2M"}  # its names for them
LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER = "fashionsd_x"  # adapter name of the loaded LoRA
PNG_KEY = "fashionsd_x"  # PNG text chunk holding the JSON parameters; "parameters" holds the A1111-style line
Source = str | Path | Image.Image  # a sketch or photo: a file path or an image in memory
# torch's generator takes seeds up to 2**64 - 1, but the seed also goes to JSON, PNG text and SQLite (the study),
# whose readers hold int64: one range everywhere, and no negative seed aliasing a positive one.
MAX_SEED = 2**63 - 1
MAX_IMAGES = 64  # images of one call; they run as one batch through the UNet
MAX_STEPS = 1000  # the SD schedulers' training timesteps: diffusers refuses more inference steps than that
MAX_RESOLUTION = 2048
# Every number a generation takes: (whole number?, lowest, highest). Beyond these a finite value still ends in
# an overflowing latent and a black or noise image, which is worse than an error.
SETTINGS_RANGES: dict[str, tuple[bool, float, float]] = {
    "num_images": (True, 1, MAX_IMAGES),
    "steps": (True, 1, MAX_STEPS),
    "seed": (True, 0, MAX_SEED),
    "resolution": (True, 8, MAX_RESOLUTION),
    "guidance_scale": (False, 0.0, 100.0),
    "controlnet_scale": (False, 0.0, 10.0),
    "lora_scale": (False, -10.0, 10.0),  # negative: steer away from the LoRA's style
    # The part of the denoising during which the sketch acts, as fractions of the steps (start < end, see below).
    "control_start": (False, 0.0, 1.0),
    "control_end": (False, 0.0, 1.0),
}


class GenerationError(ValueError):
    """Bad input to generation (unreadable sketch, mismatched LoRA or ControlNet, ...); one line."""


def check_int(name: str, value: Any, lowest: int, highest: int) -> int:
    """`value` as an int in [lowest, highest], or a GenerationError naming `name` and the range.

    A float is taken only when it is whole (Gradio and JSON give 5.0 for 5); bools and strings are refused.
    """
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and math.isfinite(value)
                                                     and float(value).is_integer())
    if isinstance(value, bool) or not whole or not lowest <= int(value) <= highest:
        raise GenerationError(f"{name} must be a whole number from {lowest} to {highest}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, lowest: float, highest: float) -> float:
    """`value` as a finite float in [lowest, highest], or a GenerationError naming `name` and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not lowest <= value <= highest:
        raise GenerationError(f"{name} must be a finite number from {lowest:g} to {highest:g}, got {value!r}")
    return float(value)


def check_settings(**settings: Any) -> dict[str, int | float]:
    """The generation numbers given (names of SETTINGS_RANGES; None means "the default" and is left out),
    checked and converted; the CLI, the Python API, batch files and the studio all check with this.

    Image k of a call uses seed + k, so the last seed must be in range too. The sketch's span must not be empty:
    control_start < control_end, the one not given taking its default (0 and 1).
    """
    checked: dict[str, int | float] = {}
    for name, value in settings.items():
        if value is None:
            continue
        whole, lowest, highest = SETTINGS_RANGES[name]
        checked[name] = (check_int if whole else check_float)(name, value, lowest, highest)
    if "seed" in checked and checked["seed"] + checked.get("num_images", 1) - 1 > MAX_SEED:
        raise GenerationError(f"seed + num_images - 1 must be at most {MAX_SEED} (image k uses seed + k), got "
                              f"seed {checked['seed']} with {checked['num_images']} images")
    if "control_start" in checked or "control_end" in checked:
        start, end = checked.get("control_start", 0.0), checked.get("control_end", 1.0)
        if not start < end:
            raise GenerationError(f"control_start must be less than control_end (the sketch acts from that fraction "
                                  f"of the denoising to this one), got {start:g} and {end:g}")
    return checked


@dataclass(frozen=True)
class GenerationParams:
    """Everything that determines one generated image; stored in its PNG and in generations.jsonl."""

    prompt: str  # what the garment should look like
    negative_prompt: str = ""  # what it should not
    seed: int = 0  # the image's own generator seed
    steps: int = 20  # denoising steps
    guidance_scale: float = 7.5  # classifier-free guidance weight
    controlnet_scale: float = 1.0  # ControlNet residual weight (sketch strength)
    control_start: float = 0.0  # fraction of the denoising at which the sketch starts to act
    control_end: float = 1.0  # fraction at which it stops (diffusers' control_guidance_start/end)
    lora_scale: float = 1.0  # LoRA weight fused into the UNet
    scheduler: str = "unipc"  # one of SCHEDULERS
    resolution: int = 512  # square output side in pixels
    sketch: str | None = None  # path of the sketch (or photo) used, if any
    sketch_sha256: str | None = None  # hash of the conditioning image, to check a replay uses the same one
    from_photo: bool = False  # the sketch was extracted from a photo with `sketch_config`
    sketch_config: dict = field(default_factory=lambda: SketchConfig().to_dict())  # extraction settings for photos
    sketch_conditioning: dict | None = None  # how the sketch was normalised (the ControlNet's, with cleanup as run)
    sketch_region: list[float] | None = None  # the page cut to this box (x0, y0, x1, y1 fractions) before all else
    model: str = ""  # base as given
    lora: str | None = None  # LoRA folder or file
    controlnet: str | None = None  # ControlNet folder

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise GenerationError("the prompt is empty: describe the garment, e.g. 'a red striped t-shirt'")
        if self.scheduler not in SCHEDULERS:
            raise GenerationError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        check_settings(seed=self.seed, steps=self.steps, guidance_scale=self.guidance_scale,
                       controlnet_scale=self.controlnet_scale, lora_scale=self.lora_scale, resolution=self.resolution,
                       control_start=self.control_start, control_end=self.control_end)
        _region(self.sketch_region, "")

    @property
    def region(self) -> SketchRegion | None:
        return SketchRegion.parse(self.sketch_region)

    @property
    def sketch_cleanup(self) -> bool | None:
        """Whether the page was cleaned up (None: no sketch, or a PNG written before cleanup existed)."""
        return (self.sketch_conditioning or {}).get("cleanup")


@dataclass
class Generated:
    """One image and the parameters that reproduce it."""

    image: Image.Image
    params: GenerationParams
    sketch: Image.Image | None = None  # the conditioning sketch as the model saw it (after photo extraction)

    def save(self, path: str | Path) -> Path:
        """Write a PNG whose text chunks hold the parameters (JSON and an A1111-style summary)."""
        path = Path(path)
        info = PngImagePlugin.PngInfo()
        info.add_text(PNG_KEY, json.dumps(asdict(self.params), sort_keys=True))
        info.add_text("parameters", _a1111_line(self.params))
        with atomic_path(path) as temporary:  # whole or not at all: a full disk leaves no truncated PNG
            self.image.save(temporary, format="PNG", pnginfo=info)
        return path


def read_params(png: Path) -> GenerationParams:
    """The parameters stored in a PNG written by Generated.save."""
    with Image.open(png) as image:
        text = image.text.get(PNG_KEY) if hasattr(image, "text") else None
    if not text:
        raise GenerationError(f"{png} carries no FashionSD-X parameters")
    return GenerationParams(**json.loads(text))


def process_state():
    """accelerate's view of this process (index, count), also under a multi-process CPU launch.

    PartialState() alone ignores ACCELERATE_USE_CPU and sees one process per CPU worker; asking for cpu=True
    when that variable is set makes `accelerate launch --multi_gpu` with ACCELERATE_USE_CPU=true split work.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def best_device() -> torch.device:
    """CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA (bf16 where supported, it does not overflow), float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class GarmentGenerator:
    """A base + optional LoRA (fused) + optional ControlNet, ready to turn prompts and sketches into garments."""

    def __init__(self, base: Base, lora: str | Path | None = None, controlnet: str | Path | None = None,
                 lora_scale: float = 1.0, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 fuse_lora: bool = True) -> None:
        lora_scale = check_settings(lora_scale=lora_scale)["lora_scale"]
        self.device = torch.device(device) if device is not None else best_device()
        self.dtype = dtype or default_dtype(self.device)
        self.base = base
        self.lora = str(lora) if lora else None
        self.controlnet_path = str(controlnet) if controlnet else None
        self.text_pipe = base.pipeline()
        self.lora_scale = lora_scale  # the scale currently applied to the UNet
        self.default_lora_scale = lora_scale  # what a call without lora_scale gets
        self.default_guidance_scale = base.guidance_scale  # and without guidance_scale: the base's recommendation
        self.fused = False
        if lora:
            _load_lora(self.text_pipe, Path(lora))
            self.text_pipe.set_adapters([ADAPTER], adapter_weights=[lora_scale])
            if fuse_lora:
                self.text_pipe.fuse_lora()  # merged into the UNet's weights: no LoRA cost per step
                self.fused = True
        self.controlnet, self.invert_sketch, self.sketch_config, self.conditioning = _load_controlnet(controlnet, base)
        self.control_pipe = None
        if self.controlnet is not None:
            self.control_pipe = StableDiffusionControlNetPipeline(
                **{k: v for k, v in self.text_pipe.components.items() if k != "image_encoder"},
                controlnet=self.controlnet, requires_safety_checker=False)  # no checker by design, no warning
        for pipe in filter(None, (self.text_pipe, self.control_pipe)):
            _move(pipe, self.device, self.dtype)
            pipe.set_progress_bar_config(disable=True)
        self._embeddings: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def load(cls, model: str | Path | None = None, lora: str | Path | None = None,
             controlnet: str | Path | None = None, **options: Any) -> GarmentGenerator:
        """Load the base (hub id, diffusers folder or .safetensors file) and build the generator.

        No model (or "tiny"): the embedded model with its LoRA and ControlNet, unless others are given. The LoRA
        and ControlNet files are checked before the base is loaded, which can take minutes."""
        model, lora, controlnet = with_embedded(model, lora, controlnet)
        check_settings(lora_scale=options.get("lora_scale"))
        if lora:
            _lora_file(Path(lora))
        if controlnet:
            _controlnet_folder(Path(controlnet))
        device = torch.device(options.pop("device", None) or best_device())
        dtype = options.pop("dtype", None) or default_dtype(device)
        return cls(load_base(model, torch_dtype=dtype), lora=lora, controlnet=controlnet, device=device, dtype=dtype,
                   **options)

    @property
    def resolution(self) -> int:
        return self.base.unet.config.sample_size * self.base.vae_scale_factor

    def __call__(self, prompt: str | Sequence[str], sketch: Source | Sequence[Source] | None = None,
                 photo: Source | Sequence[Source] | None = None, negative_prompt: str = "", num_images: int = 1,
                 steps: int = 20, guidance_scale: float | None = None, controlnet_scale: float = 1.0,
                 lora_scale: float | None = None, seed: int = 0, scheduler: str = "unipc",
                 resolution: int | None = None, control_start: float = 0.0, control_end: float = 1.0,
                 sketch_region: SketchRegion | str | Sequence[float] | None = None,
                 sketch_cleanup: bool | None = None) -> list[Generated]:
        """Generate `num_images` garments; image k uses seed + k. A sketch needs a ControlNet, and acts from the
        fraction `control_start` of the denoising steps to `control_end` (0 and 1: all of them). Without
        `guidance_scale` the base's recommended guidance is used (`default_guidance_scale`: 7.5 for Stable
        Diffusion, the embedded model's own for it).

        PROMPT may be a list: `num_images` garments for each prompt, prompt by prompt, made in one batch (on a CPU
        about twice as fast per garment as one call per prompt); each is the garment a call with that prompt
        alone gives, up to float rounding (a batch's sums may round differently). SKETCH (or PHOTO) may then be a
        list too, one per prompt: prompt k is drawn from sketch k, still in one batch.

        The sketch's page is cleaned up (`data.page`: printing, notes, a figure, a photo's surroundings removed)
        as the ControlNet's conditioning says, unless `sketch_cleanup` says otherwise; `sketch_region`
        ((x0, y0, x1, y1) fractions of the page, or "x0,y0,x1,y1") cuts the page to the garment's box first.
        Both are recorded in each image's parameters.

        Every number is checked (`check_settings`) before anything runs: a NaN or an out-of-range value is a
        GenerationError, never a silently clipped setting or a black image."""
        if sketch is not None and photo is not None:
            raise GenerationError("give a sketch or a photo, not both")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise GenerationError("give at least one prompt")
        checked = check_settings(num_images=num_images, steps=steps, guidance_scale=guidance_scale,
                                 controlnet_scale=controlnet_scale, lora_scale=lora_scale, seed=seed,
                                 resolution=resolution, control_start=control_start, control_end=control_end)
        num_images, steps, seed = checked["num_images"], checked["steps"], checked["seed"]
        guidance_scale = checked.get("guidance_scale", self.default_guidance_scale)
        controlnet_scale, lora_scale = checked["controlnet_scale"], checked.get("lora_scale")
        resolution = checked.get("resolution") or self.resolution
        self.base.check_resolution(resolution)
        given = sketch if sketch is not None else photo
        region, conditioning_settings = self.sketch_settings(sketch_region, sketch_cleanup)
        if region is not None and given is None:
            raise GenerationError("a sketch region needs a sketch (or photo) to cut: pass one, or leave out the region")
        if isinstance(given, (list, tuple)):
            if len(given) != len(prompts):
                raise GenerationError(f"give one sketch per prompt: {len(prompts)} prompt(s), {len(given)} sketch(es)")
            sources = [self._conditioning(one, photo is not None, resolution, conditioning_settings, region)
                       for one in given]
        else:
            sources = [self._conditioning(given, photo is not None, resolution, conditioning_settings, region)
                       ] * len(prompts)
        params = [GenerationParams(
            prompt=text, negative_prompt=negative_prompt, seed=seed, steps=steps, guidance_scale=guidance_scale,
            controlnet_scale=controlnet_scale, control_start=checked["control_start"], control_end=checked["control_end"],
            lora_scale=self.default_lora_scale if lora_scale is None else lora_scale,
            scheduler=scheduler, resolution=resolution, sketch=source, sketch_sha256=digest,
            from_photo=photo is not None, sketch_config=self.sketch_config.to_dict(), model=self.base.source,
            sketch_conditioning=conditioning_settings.to_dict() if conditioning is not None else None,
            sketch_region=region.to_list() if region is not None else None, lora=self.lora, controlnet=self.controlnet_path) for text, (conditioning, source, digest) in zip(prompts, sources)]
        self._set_lora_scale(params[0].lora_scale)
        conditionings = [conditioning for conditioning, _, _ in sources]
        images = self._run(params, conditionings, num_images)
        shown = [_sketch_image(conditioning, self.invert_sketch) for conditioning in conditionings]
        return [Generated(images[n * num_images + k], replace(one, seed=seed + k), shown[n])
                for n, one in enumerate(params) for k in range(num_images)]

    def sketch_settings(self, region: SketchRegion | str | Sequence[float] | None,
                        cleanup: bool | None) -> tuple[SketchRegion | None, SketchConditioning]:
        """The region (checked) and the ControlNet's sketch conditioning with `cleanup` applied when given."""
        region = _region(region, "")
        if cleanup is not None and not isinstance(cleanup, bool):
            raise GenerationError(f"sketch_cleanup must be true or false (on or off), got {cleanup!r}")
        return region, self.conditioning if cleanup is None else replace(self.conditioning, cleanup=cleanup)

    def explain(self, source: Source, sketch_region: SketchRegion | str | Sequence[float] | None = None,
                sketch_cleanup: bool | None = None) -> tuple[Image.Image, dict[str, float]]:
        """The page as this generator's cleanup reads it (`data.conditioning.explain_sketch`): kept line in black,
        what was removed coloured by kind, the region's box; and the share of ink removed per kind."""
        region, conditioning = self.sketch_settings(sketch_region, sketch_cleanup)
        try:
            return explain_page(_open(source), conditioning, region)
        except BlankSketchError as error:
            raise GenerationError(f"cannot use {_name(source)} as a sketch: {error}") from None

    def _conditioning(self, source: str | Path | Image.Image | None, is_photo: bool, resolution: int,
                      conditioning: SketchConditioning, region: SketchRegion | None,
                      ) -> tuple[torch.Tensor | None, str | None, str | None]:
        if source is None:
            return None, None, None
        if self.control_pipe is None:
            raise GenerationError("a sketch or photo needs a ControlNet: pass --controlnet DIR (or none for text only)")
        image = _open(source)
        if is_photo:
            image = extract_sketch(pad_to_square(region.crop(image) if region else image, resolution),
                                   self.sketch_config)
            region = None  # already cut
        try:
            tensor = control_image(image, resolution, self.invert_sketch, conditioning, region)
        except BlankSketchError as error:
            raise GenerationError(f"cannot use {_name(source)} as a sketch: {error}") from None
        digest = hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:16]
        return tensor, (str(source) if not isinstance(source, Image.Image) else None), digest

    def _run(self, batch: list[GenerationParams], conditionings: list[torch.Tensor] | list[None],
             count: int) -> list[Image.Image]:
        """COUNT images for each of BATCH's prompts, each with its own conditioning (all None, or none None) and
        otherwise the same settings, prompt by prompt."""
        params = batch[0]
        pipe = self.control_pipe if conditionings[0] is not None else self.text_pipe
        pipe.scheduler = SCHEDULERS[params.scheduler].from_config(pipe.scheduler.config)
        embeddings = [self._encode(one.prompt, one.negative_prompt) for one in batch]
        positive = torch.cat([embedding[0].expand(count, -1, -1) for embedding in embeddings])
        negative = torch.cat([embedding[1].expand(count, -1, -1) for embedding in embeddings])
        # One generator per image, all on the CPU: the same seed gives the same noise on every device.
        generators = [torch.Generator("cpu").manual_seed(params.seed + k) for _ in batch for k in range(count)]
        latents = torch.stack([torch.randn(self._latent_shape(params.resolution), generator=g) for g in generators])
        kwargs: dict[str, Any] = dict(
            prompt_embeds=positive, negative_prompt_embeds=negative, num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale, height=params.resolution, width=params.resolution, latents=latents.to(self.device, self.dtype), generator=generators,
            output_type="np")
        if conditionings[0] is not None:
            image = torch.stack([conditioning for conditioning in conditionings for _ in range(count)])
            # Start 0 and end 1 are diffusers' own defaults: every step keeps the sketch, as before these options.
            kwargs.update(image=image.to(self.device, self.dtype),
                          controlnet_conditioning_scale=params.controlnet_scale,
                          control_guidance_start=params.control_start, control_guidance_end=params.control_end)
        with torch.inference_mode():
            pixels = pipe(**kwargs).images
        # As "pil" would, but checked first: NaN pixels become 0 in the uint8 cast, a black image that looks valid.
        if not np.isfinite(pixels).all():
            raise GenerationError("the model produced non-finite pixels (NaN or inf): its weights may be damaged, or "
                                  "half precision overflowed; try lower guidance/ControlNet/LoRA scales or float32")
        return pipe.numpy_to_pil(pixels)

    def _latent_shape(self, resolution: int) -> tuple[int, int, int]:
        side = resolution // self.base.vae_scale_factor
        return (self.base.unet.config.in_channels, side, side)

    def _encode(self, prompt: str, negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings, computed once per (prompt, negative prompt) and reused."""
        key = (prompt, negative)
        if key not in self._embeddings:
            _warn_if_truncated(self.base.tokenizer, prompt, "prompt")
            _warn_if_truncated(self.base.tokenizer, negative, "negative prompt")
            with torch.inference_mode():
                positive, negative_embeds = self.text_pipe.encode_prompt(
                    prompt, self.device, 1, True, negative_prompt=negative)
            self._embeddings[key] = (positive, negative_embeds)
        return self._embeddings[key]

    def _set_lora_scale(self, scale: float) -> None:
        if not self.lora or scale == self.lora_scale:
            return
        # Fusing bakes the scale into the weights: unfuse, set the adapter weight, fuse again. (The scale is not
        # passed to fuse_lora itself: in diffusers 0.42 a later fuse_lora(lora_scale=...) keeps the first scale.)
        if self.fused:
            self.text_pipe.unfuse_lora()
        self.text_pipe.set_adapters([ADAPTER], adapter_weights=[scale])
        if self.fused:
            self.text_pipe.fuse_lora()
        self.lora_scale = scale


def _move(pipe: StableDiffusionPipeline, device: torch.device, dtype: torch.dtype) -> None:
    # Only modules not already there are moved: a no-op .to() still makes diffusers warn about fp32 modules.
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            parameter = next(module.parameters(), None)
            if parameter is not None and (parameter.device != device or parameter.dtype != dtype):
                module.to(device, dtype)


def _open(source: str | Path | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        return load_image(source)
    except ImageLoadError as error:
        raise GenerationError(f"cannot use {source} as a sketch or photo: {error}") from None


def _name(source: str | Path | Image.Image) -> str:
    return "the drawn image" if isinstance(source, Image.Image) else str(source)


def _sketch_image(conditioning: torch.Tensor | None, inverted: bool) -> Image.Image | None:
    if conditioning is None:
        return None
    pixels = conditioning if not inverted else 1.0 - conditioning
    return Image.fromarray((pixels[0].numpy() * 255).round().astype("uint8"), mode="L")


def _warn_if_truncated(tokenizer, text: str, what: str) -> None:
    """A notice when `text` (the prompt or the negative prompt) is longer than the text encoder reads."""
    ids = tokenizer(text, truncation=False).input_ids
    if len(ids) > tokenizer.model_max_length:
        kept = tokenizer.decode(ids[1: tokenizer.model_max_length - 1])
        notify(f"{what} is {len(ids)} tokens, longer than the text encoder's {tokenizer.model_max_length}: "
               f"truncated after '...{kept[-40:]}'")


def _lora_file(lora: Path) -> Path:
    """The LoRA's weights file (LORA_FILE in a folder, or the file given), checked to be a safetensors file."""
    file = lora / LORA_FILE if lora.is_dir() else lora
    if not file.is_file():
        raise GenerationError(f"no LoRA at {lora} (expected {LORA_FILE} in the folder, or a .safetensors file)")
    _check_safetensors(file)
    return file


def _check_safetensors(file: Path) -> None:
    """Refuse a file that is not safetensors (a pickle renamed, a truncated download) before a loader reads it.

    safe_open only parses the JSON header and checks that it covers the file; nothing is ever unpickled.
    """
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        reason = " ".join(str(error).split())
        raise GenerationError(f"{file} is not a valid safetensors file ({reason}); FashionSD-X loads weights only "
                              "as safetensors, never pickles: re-export or re-download it") from None


def _load_lora(pipe: StableDiffusionPipeline, lora: Path) -> None:
    """Load a LoRA folder or file, refusing one made for another base architecture (diffusers only warns)."""
    file = _lora_file(lora)
    _check_lora_shapes(file, pipe.unet)
    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER)


def _check_lora_shapes(file: Path, unet: torch.nn.Module) -> None:
    modules = dict(unet.named_modules())
    checked = 0
    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith("unet.") or ".lora_A." not in key and ".lora.down." not in key:
                continue
            name = key[len("unet."):].split(".lora_A.")[0].split(".lora.down.")[0]
            module = modules.get(name)
            rank, features = handle.get_slice(key).get_shape()[:2]
            expected = getattr(module, "in_features", None) or getattr(module, "in_channels", None)
            if module is None or expected != features:
                raise GenerationError(f"LoRA {file} was made for another base architecture: {name} takes "
                                      f"{features} features in the LoRA, {expected} in this base's UNet")
            checked += 1
    if not checked:
        raise GenerationError(f"LoRA {file} has no UNet LoRA weights in diffusers format")


def _load_controlnet(path: str | Path | None,
                     base: Base) -> tuple[ControlNetModel | None, bool, SketchConfig, SketchConditioning]:
    """The ControlNet and how its sketches were made and conditioned in training (its train_config.yaml)."""
    if not path:
        return None, False, SketchConfig(), SketchConditioning()
    folder = _controlnet_folder(Path(path))
    controlnet = ControlNetModel.from_pretrained(folder, use_safetensors=True)
    _check_controlnet(controlnet, base, folder)
    settings = yaml.safe_load((folder / "train_config.yaml").read_text()) if (folder / "train_config.yaml").is_file() else {}
    sketch = SketchConfig.from_dict(settings.get("sketch") or {})
    # A ControlNet trained before normalisation existed has no sketch_conditioning: it gets the old resize only.
    conditioning = SketchConditioning.from_dict(settings.get("sketch_conditioning"))
    return controlnet.eval(), bool(settings.get("invert_sketch", False)), sketch, conditioning


def _controlnet_folder(folder: Path) -> Path:
    """A ControlNet folder with config.json and safetensors weights (every shard checked), or a GenerationError."""
    if not (folder / "config.json").is_file():
        raise GenerationError(f"no ControlNet at {folder} (expected a folder with config.json, as "
                              "`fsdx train controlnet` writes)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise GenerationError(f"no ControlNet weights in {folder} (expected diffusion_pytorch_model.safetensors)")
    for file in weights:
        _check_safetensors(file)
    return folder


def _check_controlnet(controlnet: ControlNetModel, base: Base, folder: Path) -> None:
    unet = base.unet.config
    for name in ("cross_attention_dim", "block_out_channels", "in_channels"):
        theirs, ours = controlnet.config.get(name), unet.get(name)
        if list(theirs if isinstance(theirs, (list, tuple)) else [theirs]) != list(
                ours if isinstance(ours, (list, tuple)) else [ours]):
            raise GenerationError(f"ControlNet {folder} does not match the base's UNet: {name} is {theirs} there "
                                  f"and {ours} in {base.source}")


def _a1111_line(params: GenerationParams) -> str:
    """The infotext A1111 writes and reads: prompt, "Negative prompt: ..." and one line of "Key: value" fields.

    Sampler names are A1111's own; a value holding a comma, colon or line break is JSON-quoted, as A1111 quotes
    and unquotes; the ControlNet is one unit ("ControlNet 0") in the ControlNet extension's "Key: value" form,
    whose values may hold neither commas nor colons.
    """
    fields = {"Steps": params.steps, "Sampler": A1111_SAMPLERS[params.scheduler], "CFG scale": params.guidance_scale,
              "Seed": params.seed, "Size": f"{params.resolution}x{params.resolution}", "Model": params.model}
    if params.lora:
        fields.update({"LoRA": params.lora, "LoRA weight": params.lora_scale})
    if params.controlnet:
        fields["ControlNet 0"] = ", ".join(f"{key}: {value}" for key, value in {
            "Module": "none", "Model": _unit_value(Path(params.controlnet).name), "Weight": params.controlnet_scale,
            "Resize Mode": "Resize and Fill", "Processor Res": params.resolution, "Threshold A": -1,
            "Threshold B": -1, "Guidance Start": params.control_start, "Guidance End": params.control_end,
            "Pixel Perfect": False, "Control Mode": "Balanced"}.items())
    lines = [params.prompt] + ([f"Negative prompt: {params.negative_prompt}"] if params.negative_prompt else [])
    return "\n".join([*lines, ", ".join(f"{key}: {_a1111_quoted(value)}" for key, value in fields.items())])


def _a1111_quoted(value: Any) -> str:
    """A value as A1111 writes it: JSON-quoted when a comma, colon or line break would end it early."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in ",:\n") else text


def _unit_value(text: str) -> str:
    """A ControlNet unit's value: the extension splits the unit on commas and colons, so neither may appear."""
    return "".join("_" if mark in ",:\n" else mark for mark in text) or "none"


@dataclass
class GenerationRun:
    """What `generate` wrote: the PNG files, generations.jsonl and the batch lines it skipped."""

    out: Path
    files: list[Path]
    skipped: list[dict]

    @property
    def log(self) -> Path:
        return self.out / "generations.jsonl"


def generate(
    model: str | None = None,
    prompt: str | None = None,
    sketch: Path | None = None,
    photo: Path | None = None,
    lora: Path | None = None,
    controlnet: Path | None = None,
    negative_prompt: str = "",
    n: int = 4,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float | None = None,
    controlnet_scale: float = 1.0,
    lora_scale: float = 1.0,
    scheduler: Literal["unipc", "ddim", "euler_a", "dpm++"] = "unipc",
    resolution: int | None = None,
    out: Path = Path("outputs/generations"),
    batch: Path | None = None,
    control_start: float = 0.0,
    control_end: float = 1.0,
    sketch_region: str | None = None,
    sketch_cleanup: Literal["on", "off"] | None = None,
    explain_sketch: bool = False,
) -> GenerationRun:
    """Generate garment images from a prompt and an optional sketch (or a photo to extract one from).

    Writes OUT/<item>_<seed>.png (each PNG's text chunks hold every parameter needed to reproduce it) and
    appends one line per image to OUT/generations.jsonl. With --batch, every line of a JSONL file is an item
    ({"prompt": ..., "sketch": ..., and optionally "photo", "negative_prompt", "seed", "n", "control_start",
    "control_end", "sketch_region" (a list of four fractions or "x0,y0,x1,y1"), "sketch_cleanup" ("on" or
    "off")}); bad lines are skipped and listed in OUT/skipped.jsonl.

    A sketch may be a whole designer's page: cleanup removes the paper's printing (ruled lines, grids, dot grids),
    notes with their leader lines, a figure drawn around the garment and the table around a photographed sheet
    (--explain-sketch shows what it removed); --sketch-region says where the garment is when a page holds more
    than one. Several processes (accelerate launch) split the items. Every
    input is checked before the model loads; a refused run writes nothing.

    Args:
        model: base model: hub id, diffusers folder or .safetensors file; tiny or none: the embedded model,
            with its own LoRA and ControlNet unless --lora/--controlnet are given.
        prompt: garment description (not needed with --batch).
        sketch: sketch image (black lines on white); needs --controlnet.
        photo: garment photo whose sketch is extracted as in the dataset stage; needs --controlnet.
        lora: LoRA folder (pytorch_lora_weights.safetensors) from `fsdx train lora`.
        controlnet: ControlNet folder from `fsdx train controlnet`.
        negative_prompt: what the garment should not look like.
        n: images per prompt, 1 to 64; image k uses seed + k.
        seed: seed of the first image, 0 to 2^63-1.
        steps: denoising steps, 1 to 1000.
        guidance_scale: classifier-free guidance weight, 0 to 100 (default: the base's recommendation from
            generation_defaults.json in its folder, as the embedded model has; 7.5 for any other base).
        controlnet_scale: sketch strength (ControlNet conditioning scale), 0 to 10.
        lora_scale: LoRA strength, -10 to 10.
        scheduler: sampler: unipc, ddim, euler_a or dpm++.
        resolution: output side in pixels, up to 2048 (default: the base's native size).
        out: output folder (made when the first image is written; images already in it stay, and this run's are
            numbered after them).
        batch: JSONL file of items to generate in one run: per line an object with prompt and any of
            negative_prompt, sketch, photo, n, seed, control_start, control_end, sketch_region, sketch_cleanup
            (null or missing: the option's value). A line with another field is skipped, with the reason.
        control_start: fraction of the denoising steps after which the sketch starts to act, 0 to 1 (0: from the
            first step).
        control_end: fraction of the denoising steps after which the sketch stops acting, above --control-start,
            up to 1 (1: to the last step; lower: the sketch sets the shape early, the prompt finishes the details).
        sketch_region: where the garment is on the sketch's page, x0,y0,x1,y1 as fractions of its width and
            height (e.g. 0,0,0.5,1: the left half); the page is cut to it before anything else.
        sketch_cleanup: on: find the garment on the page (remove printing, notes, a figure, a photo's
            surroundings); off: every dark mark is a line, for a ControlNet trained on pages as they are
            (default: the ControlNet's own setting, on for FashionSD-X's).
        explain_sketch: also write, per sketch, OUT/<item>_sketch.png (what the model sees) and
            OUT/<item>_sketch_explained.png (the page: kept line black, removed ink coloured by kind, the region).
    """
    # 1. Every input is checked before a model is loaded or a file is written: a rejected run leaves nothing.
    shared = check_settings(num_images=n, seed=seed, steps=steps, guidance_scale=guidance_scale,
                            controlnet_scale=controlnet_scale, lora_scale=lora_scale, resolution=resolution,
                            control_start=control_start, control_end=control_end)
    if scheduler not in SCHEDULERS:
        raise GenerationError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    out = _check_out(Path(out))
    span = {"control_start": shared["control_start"], "control_end": shared["control_end"]}
    page = {"sketch_region": _region(sketch_region), "sketch_cleanup": _cleanup(sketch_cleanup)}
    items, skipped = _items(prompt, sketch, photo, negative_prompt, shared["num_images"], shared["seed"], batch,
                            span, page)
    if shared.get("resolution"):  # the VAE decodes an item's images at once: they must fit in memory
        side = shared["resolution"]
        check_fits("--n", max(item["n"] for item in items), MAX_IMAGES, "images of one item", error=GenerationError,
                   need=lambda count: count * side * side * DECODE_BYTES_PER_PIXEL,
                   work=lambda count: f"decoding {count} images of {side} px at once")
    model, lora, controlnet = with_embedded(model, lora, controlnet)
    if controlnet is None and any(item.get("sketch") or item.get("photo") for item in items):
        raise GenerationError("a sketch or photo needs a ControlNet: pass --controlnet DIR (or none for text only)")
    # 2. Load once; the folder is made when the first image (or the batch's report) is written.
    generator = GarmentGenerator.load(model, lora=lora, controlnet=controlnet, lora_scale=shared["lora_scale"])
    steps, guidance_scale, controlnet_scale = shared["steps"], shared.get("guidance_scale"), shared["controlnet_scale"]
    resolution = shared.get("resolution")
    state = process_state()
    files: list[Path] = []
    failed: list[dict] = []  # this process's items that could not be generated
    first = _next_index(out)  # a folder that holds images already: this run's items are numbered after them
    state.wait_for_everyone()  # every process has read the folder before any writes to it
    with state.split_between_processes([(first + k, item) for k, item in enumerate(items)]) as mine:
        for index, item in mine:
            try:
                results = generator(item["prompt"], sketch=item.get("sketch"), photo=item.get("photo"),
                                    negative_prompt=item.get("negative_prompt", ""), num_images=item["n"],
                                    steps=steps, guidance_scale=guidance_scale, controlnet_scale=controlnet_scale,
                                    seed=item["seed"], scheduler=scheduler, resolution=resolution,
                                    control_start=item["control_start"], control_end=item["control_end"],
                                    sketch_region=item["sketch_region"], sketch_cleanup=item["sketch_cleanup"])
                explained = generator.explain(item["sketch"], item["sketch_region"], item["sketch_cleanup"]) \
                    if explain_sketch and item.get("sketch") else None
            except GenerationError as error:
                if batch is None:
                    raise
                failed.append({"line": item.get("line"), "reason": str(error)})
                continue
            try:
                files.extend(_write(results, out, index))
                if explain_sketch and results[0].sketch is not None:
                    _write_explained(out, index, results[0].sketch, explained)
            except OSError:  # a full disk: the images written so far are logged, then the error goes up
                if state.num_processes == 1:
                    _write_logs(out, files, skipped + failed, state)
                raise
    merged = _write_logs(out, files, (skipped if state.is_main_process else []) + failed, state)
    if state.is_main_process:  # the main process reports what every process wrote
        files, skipped = [out / row["file"] for row in merged["generations"]], merged["skipped"]
    return GenerationRun(out, files, skipped if state.is_main_process else failed)


def _region(value: Any, option: str = "--sketch-region: ") -> SketchRegion | None:
    """A region as given (text, four numbers or None), checked; a GenerationError naming OPTION otherwise."""
    try:
        return SketchRegion.parse(value)
    except ValueError as error:
        raise GenerationError(f"{option}{error}") from None


def _cleanup(value: Any) -> bool | None:
    """--sketch-cleanup (or a batch line's sketch_cleanup): on/off or true/false; None is the ControlNet's own."""
    if value is None or isinstance(value, bool):
        return value
    known = {"on": True, "off": False}
    if not isinstance(value, str) or value.strip().lower() not in known:
        raise GenerationError(f"sketch_cleanup must be on or off, got {value!r}")
    return known[value.strip().lower()]


def _items(prompt: str | None, sketch: Path | None, photo: Path | None, negative_prompt: str, n: int, seed: int,
           batch: Path | None, span: dict[str, float], page: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """The items to generate and the batch lines skipped; --n, --seed, the sketch's span (--control-start,
    --control-end) and its page settings (--sketch-region, --sketch-cleanup) are the defaults of batch lines."""
    if batch is None:
        if not prompt:
            raise GenerationError("give --prompt (or --batch FILE.jsonl)")
        GenerationParams(prompt=prompt)  # validates the prompt before any model is loaded
        if sketch is not None and photo is not None:
            raise GenerationError("give a sketch or a photo, not both")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise GenerationError("give at least one prompt")
        for name, path in (("sketch", sketch), ("photo", photo)):
            if path is not None and not Path(path).is_file():
                raise GenerationError(f"{name} not found: {path}")
        if page["sketch_region"] is not None and sketch is None and photo is None:
            raise GenerationError("--sketch-region needs --sketch (or --photo): it says where the garment is on it")
        return [{"prompt": prompt, "sketch": sketch, "photo": photo, "negative_prompt": negative_prompt,
                 "n": n, "seed": seed, **span, **page}], []
    if not Path(batch).is_file():
        raise GenerationError(f"batch file not found: {batch}")
    lines = Path(batch).read_text(encoding="utf-8").splitlines()
    check_at_most(f"--batch {batch}:", len(lines), MAX_ITEMS, "lines in one run; split the file", GenerationError)
    items, skipped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append({**_batch_item(json.loads(line), negative_prompt, n, seed, span, page), "line": number})
        except (ValueError, TypeError, RecursionError) as error:  # GenerationError and JSONDecodeError included
            skipped.append({"line": number, "reason": f"bad batch line: {' '.join(str(error).split())}"})
    if not items:  # refused before a model loads: nothing to do is not a run
        reasons = "; ".join(f"line {s['line']}: {s['reason']}" for s in skipped[:3])
        raise GenerationError(f"batch file {batch} has no line to generate" + (f" ({reasons})" if reasons else ""))
    return items, skipped


def _batch_item(row: Any, negative_prompt: str, n: int, seed: int, span: dict[str, float],
                page: dict[str, Any]) -> dict:
    """One batch line as an item; its numbers go through the same checks as the command line's. A field set to
    null is one not given (the command line's value is used); a field the line cannot have is refused."""
    if not isinstance(row, dict):
        raise ValueError("must be a JSON object")
    if unknown := sorted(set(row) - set(BATCH_FIELDS)):
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; a line has {', '.join(BATCH_FIELDS)}")
    row = {name: value for name, value in row.items() if value is not None}
    for name in ("prompt", "negative_prompt", "sketch", "photo"):
        if not isinstance(row.get(name, ""), str):
            raise ValueError(f"{name} must be a string, got {row[name]!r}")
    if not row.get("prompt", "").strip():
        raise ValueError("needs a non-empty prompt")
    counts = check_settings(num_images=row.get("n", n), seed=row.get("seed", seed),
                            **{name: row.get(name, default) for name, default in span.items()})
    region = _region(row["sketch_region"]) if "sketch_region" in row else page["sketch_region"]
    if region is not None and not (row.get("sketch") or row.get("photo")):
        raise ValueError("sketch_region needs a sketch (or photo) on the line")
    cleanup = _cleanup(row["sketch_cleanup"]) if "sketch_cleanup" in row else page["sketch_cleanup"]
    return {"prompt": row["prompt"], "sketch": row.get("sketch"), "photo": row.get("photo"),
            "negative_prompt": row.get("negative_prompt", negative_prompt), "n": counts["num_images"],
            "seed": counts["seed"], **{name: counts[name] for name in span}, "sketch_region": region,
            "sketch_cleanup": cleanup}


def _check_out(out: Path) -> Path:
    """OUT, checked to be a folder or creatable as one (nothing is created here), before any model loads."""
    existing = out
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == out else f"is under {existing}, which is not a folder"
        raise GenerationError(f"--out {out} {what}: choose a folder for the images")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GenerationError(f"--out {out}: {existing} is not writable")
    return out


def _next_index(out: Path) -> int:
    """The item number after the highest one of the images in OUT (0 for a new or empty folder)."""
    numbers = [int(match.group(1)) for path in (out.iterdir() if out.is_dir() else ())
               if (match := ITEM_FILE.fullmatch(path.name))]
    return max(numbers, default=-1) + 1


def _write(results: list[Generated], out: Path, index: int) -> list[Path]:
    return [result.save(out / f"{index:04d}_{result.params.seed}.png") for result in results]


def _write_explained(out: Path, index: int, seen: Image.Image,
                     explained: tuple[Image.Image, dict[str, float]] | None) -> None:
    """OUT/<item>_sketch.png (what the model sees) and, for a sketch, <item>_sketch_explained.png (the page as
    cleanup read it) with the share of ink removed per kind in its text chunk."""
    with atomic_path(out / f"{index:04d}_sketch.png") as temporary:
        seen.save(temporary, format="PNG")
    if explained is not None:
        image, removed = explained
        info = PngImagePlugin.PngInfo()
        info.add_text("removed", json.dumps(removed, sort_keys=True))
        with atomic_path(out / f"{index:04d}_sketch_explained.png") as temporary:
            image.save(temporary, format="PNG", pnginfo=info)


def _write_logs(out: Path, files: list[Path], skipped: list[dict], state) -> dict[str, list[dict]]:
    """Each process writes its own parts; the main process joins them (no two writers on one file).

    Returns, on the main process, this run's rows of every process: {"generations": [...], "skipped": [...]}.
    """
    out.mkdir(parents=True, exist_ok=True)  # not before: a run refused early leaves no folder behind
    rows = [json.dumps({"file": file.name, **asdict(read_params(file))}, allow_nan=False) + "\n" for file in files]
    write_text(out / f".generations.{state.process_index}.jsonl", "".join(rows))
    write_text(out / f".skipped.{state.process_index}.jsonl", "".join(json.dumps(s) + "\n" for s in skipped))
    state.wait_for_everyone()
    merged: dict[str, list[dict]] = {"generations": [], "skipped": []}
    if state.is_main_process:
        for name in merged:
            parts = sorted(out.glob(f".{name}.*.jsonl"))
            text = "".join(part.read_text(encoding="utf-8") for part in parts)
            merged[name] = [json.loads(line) for line in text.splitlines()]
            if text:  # the earlier runs' rows and this run's, replaced whole: a full disk never cuts a row
                log = out / f"{name}.jsonl"
                write_text(log, (log.read_text(encoding="utf-8") if log.is_file() else "") + text)
            for part in parts:
                part.unlink()
    return merged
