"""Training throughput: samples/s and peak memory of LoRA and ControlNet training, with and without cached latents.

    python benchmarks/train_throughput.py [--steps 30] [--batch-size 4] [--resolution 64] [--threads N]

Runs the real stage functions (`train_lora`, `train_controlnet`) on a tiny base at --resolution on synthetic
garments; with a CUDA GPU also on a full-size SD 1.5 architecture with random weights (512 px, fp16). Each case
runs in its own process so its peak memory is its own (CPU: peak RSS; GPU: torch.cuda.max_memory_allocated).
samples/s is the steady state of the training loop, from the per-step wall times in the run's TensorBoard log
after --warmup steps; "setup" is everything else (loading, building the latent cache, saving).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [("lora", False), ("lora", True), ("controlnet", False), ("controlnet", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per case")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of samples/s")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step")
    parser.add_argument("--resolution", type=int, default=64, help="tiny-base training side in pixels")
    parser.add_argument("--garments", type=int, default=32, help="synthetic garments in the dataset")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args, rest = parser.parse_known_args()
    if args.case:
        print(json.dumps(run_case(args, *rest)))
        return
    with tempfile.TemporaryDirectory(prefix="fsdx-bench-") as folder:
        folder = Path(folder)
        import torch

        print(f"{os.cpu_count()} CPU cores, torch threads {args.threads or torch.get_num_threads()}, "
              f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
        data, base = prepare(folder, args.resolution, args.garments, tiny=True)
        report(args, folder, data, base, args.resolution, f"tiny base, {args.resolution} px, batch {args.batch_size}",
               "no")
        if torch.cuda.is_available():
            data, base = prepare(folder / "sd15", 512, args.garments, tiny=False)
            report(args, folder / "sd15", data, base, 512, f"SD 1.5 architecture (random weights), 512 px, fp16, batch "
                   f"{args.batch_size}", "fp16")


def prepare(folder: Path, resolution: int, garments: int, tiny: bool) -> tuple[Path, Path]:
    """A built dataset at `resolution` and a base: the tiny one, or SD 1.5's shipped configs with random weights."""
    from fashionsd_x.data.build import build_dataset
    from fashionsd_x.data.synth import synthesize
    from fashionsd_x.models.tiny import TinyConfig, build_tiny_base

    raw = synthesize(folder / "raw", num=garments, seed=0, size=max(64, resolution))
    data = build_dataset("folder", raw, folder / "data", resolution=resolution, test_fraction=0.1).out
    # A 4x VAE wider than the UNet: its encoder costs ~0.6x the LoRA UNet's forward+backward, as SD 1.5's does
    # (VAE encode at 512 px vs UNet at 64x64 latents: 0.60, measured on CPU), so caching weighs what it weighs there.
    tiny_config = TinyConfig(sample_size=resolution, vae_channels=(32, 96, 128))
    base = build_tiny_base(folder / "base", tiny_config) if tiny else random_sd15(folder / "base")
    return data, base


def random_sd15(out: Path) -> Path:
    """SD 1.5's architecture from the shipped configs, random weights in fp16 (no download)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fashionsd_x.models.base import build_schedulers
    from fashionsd_x.models.single_file import CONFIGS
    from fashionsd_x.models.tokenizer import clip_tokenizer

    configs = CONFIGS / "sd15"
    scheduler, sampler = build_schedulers(json.loads((configs / "scheduler" / "scheduler_config.json").read_text()),
                                          None, str(configs))
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder")),
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet")),
        tokenizer=clip_tokenizer(), scheduler=sampler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.to(torch.float16).save_pretrained(out, safe_serialization=True)
    return out


def report(args: argparse.Namespace, folder: Path, data: Path, base: Path, resolution: int, title: str,
           precision: str) -> None:
    print(f"\n{title}")
    print(f"{'trainer':<11} {'latents':<8} {'samples/s':>10} {'peak memory':>12} {'setup s':>8}")
    rates = {}
    for stage, cached in CASES:
        command = [sys.executable, __file__, "--case", stage, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--resolution", str(resolution),
                   str(data), str(base), str(folder / f"{stage}-{cached}"), precision, str(cached)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        figures = json.loads(output.strip().splitlines()[-1])
        rates[stage, cached] = figures["samples_per_s"]
        print(f"{stage:<11} {'cached' if cached else 'encoded':<8} {figures['samples_per_s']:>10.1f} "
              f"{figures['peak_mb']:>9.0f} MB {figures['setup_s']:>8.1f}")
    for stage in ("lora", "controlnet"):
        print(f"{stage}: cached latents give {rates[stage, True] / rates[stage, False]:.2f}x the samples/s")


def run_case(args: argparse.Namespace, data: str, base: str, out: str, precision: str, cached: str) -> dict:
    """Train one case here and measure it (the child-process side of `report`)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from fashionsd_x.train.controlnet import train_controlnet
    from fashionsd_x.train.lora import train_lora

    train = train_lora if args.case == "lora" else train_controlnet
    started = time.perf_counter()
    train(Path(data), base, Path(out), max_steps=args.steps, batch_size=args.batch_size, resolution=args.resolution,
          mixed_precision=precision,
          cache_latents=cached == "True", overrides={"num_validation_images": "0", "checkpoint_every": "null"})
    total = time.perf_counter() - started
    times = step_times(Path(out) / "logs" / f"fsdx-{args.case}")
    loop = times[-1] - times[args.warmup - 1]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"samples_per_s": (len(times) - args.warmup) * args.batch_size / loop, "peak_mb": peak,
            "setup_s": total - (times[-1] - times[0])}


def step_times(logs: Path) -> list[float]:
    """Wall-clock time at which each optimizer step logged its loss, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logs))
    accumulator.Reload()
    return [event.wall_time for event in sorted(accumulator.Scalars("loss"), key=lambda event: event.step)]


if __name__ == "__main__":
    main()
