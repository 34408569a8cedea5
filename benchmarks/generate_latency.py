"""Seconds per image: FashionSD-X's GarmentGenerator against the stock diffusers pipelines.

    python benchmarks/generate_latency.py [--steps 20] [--repeats 5] [--size tiny|small|sd15]

Both sides get the same base, LoRA, ControlNet, scheduler (UniPC), steps, guidance, seeds and initial
latents. The stock side is what a diffusers user writes: StableDiffusion(ControlNet)Pipeline with the LoRA
loaded but not fused, prompts encoded on every call. FashionSD-X fuses the LoRA into the UNet, encodes each
prompt once, and uses SDPA attention (diffusers' default on torch 2). The images are compared too: fusing
is exact up to float rounding, so they must agree within a small tolerance. `sd15` (the full SD 1.5
architecture with random weights) needs a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image, ImageDraw

from fashionsd_x.data.conditioning import control_image
from fashionsd_x.generate import GarmentGenerator, best_device, default_dtype
from fashionsd_x.models.base import load_base
from fashionsd_x.models.tiny import TinyConfig, build_tiny_base
from fashionsd_x.train.controlnet import embedding_channels

SIZES = {
    "tiny": TinyConfig(),
    "small": TinyConfig(sample_size=128, unet_channels=(64, 128, 256), vae_channels=(32, 64, 128), text_hidden=128),
}
PROMPT = "a navy polka-dot midi dress with long sleeves"


def make_models(root: Path, size: str) -> tuple[Path, Path, Path]:
    """A base, a LoRA with non-zero weights, and a ControlNet whose zero convolutions are not zero."""
    base_dir = sd15_random(root / "base") if size == "sd15" else build_tiny_base(root / "base", SIZES[size])
    unet = load_base(base_dir).unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, parameter in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    from diffusers import StableDiffusionPipeline
    StableDiffusionPipeline.save_lora_weights(root / "lora", unet_lora_layers=convert_state_dict_to_diffusers(
        get_peft_model_state_dict(unet)), safe_serialization=True)
    base = load_base(base_dir)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=embedding_channels(
        base.vae_scale_factor))
    for module in (controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks):
        torch.nn.init.normal_(module.weight, std=0.05)
    controlnet.save_pretrained(root / "cn")
    return base_dir, root / "lora", root / "cn"


def sd15_random(out: Path) -> Path:
    """The full SD 1.5 architecture (shipped configs) with random weights, saved as a diffusers folder."""
    if not torch.cuda.is_available():
        raise SystemExit("--size sd15 needs a CUDA GPU (860M-parameter UNet)")
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fashionsd_x.models.single_file import CONFIGS
    from fashionsd_x.models.tokenizer import clip_tokenizer
    folder = CONFIGS / "sd15"
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        tokenizer=clip_tokenizer(), unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
        scheduler=PNDMScheduler.from_config(PNDMScheduler.load_config(folder / "scheduler")), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def stock_pipeline(base_dir: Path, lora: Path, controlnet: Path, device, dtype) -> StableDiffusionControlNetPipeline:
    base = load_base(base_dir, torch_dtype=dtype)
    pipe = StableDiffusionControlNetPipeline(**{k: v for k, v in base.pipeline().components.items()
                                                if k != "image_encoder"},
                                             controlnet=ControlNetModel.from_pretrained(controlnet, torch_dtype=dtype))
    pipe.load_lora_weights(str(lora))
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def time_calls(call, repeats: int) -> tuple[float, Image.Image]:
    image = call()  # warm-up (also the image that is compared)
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    parser.add_argument("--size", choices=[*SIZES, "sd15"], default="tiny", help="model size")
    args = parser.parse_args()
    device = best_device()
    dtype = default_dtype(device)
    with tempfile.TemporaryDirectory() as folder:
        base_dir, lora, controlnet = make_models(Path(folder), args.size)
        ours = GarmentGenerator.load(base_dir, lora=lora, controlnet=controlnet, device=device, dtype=dtype)
        stock = stock_pipeline(base_dir, lora, controlnet, device, dtype)
        side = ours.resolution
        sketch = Image.new("L", (side, side), 255)
        ImageDraw.Draw(sketch).rectangle((side // 6, side // 8, side * 5 // 6, side * 7 // 8), outline=0, width=3)
        print(f"{args.size} model, {side}px, {args.steps} steps, device {device}, {dtype}")
        for case, with_sketch in (("text only", False), ("text + sketch", True)):
            ours_call = lambda: ours(PROMPT, sketch=sketch if with_sketch else None, steps=args.steps, seed=0)[0].image
            stock_call = lambda: _stock(stock, ours, sketch if with_sketch else None, args.steps, side)
            ours_seconds, ours_image = time_calls(ours_call, args.repeats)
            stock_seconds, stock_image = time_calls(stock_call, args.repeats)
            difference = np.abs(np.asarray(ours_image, dtype=int) - np.asarray(stock_image, dtype=int))
            print(f"{case:14s} fashionsd-x {ours_seconds:.3f} s/image | stock diffusers {stock_seconds:.3f} s/image "
                  f"| speed-up {stock_seconds / ours_seconds:.2f}x | max pixel difference {difference.max()} "
                  f"(mean {difference.mean():.3f})")


def _stock(pipe, ours: GarmentGenerator, sketch, steps: int, side: int) -> Image.Image:
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(ours._latent_shape(side), generator=generator)[None].to(pipe.device, pipe.unet.dtype)
    common = dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=side, width=side,
                  latents=latents, generator=[torch.Generator("cpu").manual_seed(0)])
    if sketch is None:
        # The stock text-only path: a StableDiffusionPipeline sharing the same (unfused) components.
        from diffusers import StableDiffusionPipeline
        text = StableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "controlnet"},
                                       requires_safety_checker=False)
        text.set_progress_bar_config(disable=True)
        return text(**common).images[0]
    image = control_image(sketch, side)[None].to(pipe.device, pipe.unet.dtype)
    return pipe(image=image, controlnet_conditioning_scale=1.0, **common).images[0]


if __name__ == "__main__":
    main()
