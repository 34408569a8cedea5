"""GPU figures: LoRA/ControlNet training samples/s and peak memory, and generation against stock diffusers.

    python benchmarks/gpu_train_generate.py [--steps 30] [--warmup 10] [--all]

On a CUDA GPU, with SD 1.5's architecture and random weights (shipped configs, no download), 512 px, batch 4:
- LoRA and ControlNet training (cached latents) in bf16 and fp16, plain and with the memory options (gradient
  checkpointing, 8-bit Adam; --all: every combination), and LoRA encoding every batch (the approach caching
  replaces): samples/s (steady, after --warmup steps) and peak memory (torch.cuda.max_memory_allocated);
- generation at 512 px, 25 steps, batch 1, LoRA fused + ControlNet, against the stock diffusers pipeline in the
  same run (benchmarks/generate_latency.py --size sd15), with the images' difference.
Targets (issue 16): LoRA >= 1.5x the encoded approach; ControlNet at batch 4 within 16 GB with <= 25% speed lost to
the memory options; generation >= 1.2x stock with the same image.

Without CUDA every GPU case is skipped with its reason, and the same code paths run once on the tiny base at
64 px (3 steps, generation 2 steps), so the script is known to work before a GPU is spent on it (~1 minute).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OPTIONS = {"plain": {}, "checkpointing": {"gradient_checkpointing": "true"}, "8-bit Adam": {"use_8bit_adam": "true"},
           "checkpointing + 8-bit Adam": {"gradient_checkpointing": "true", "use_8bit_adam": "true"}}
GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training case")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of samples/s")
    parser.add_argument("--all", action="store_true", help="every precision x memory-option combination")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU (no CUDA: GPU cases skipped, smoke run only)'}")
    with tempfile.TemporaryDirectory(prefix="fsdx-gpu-") as folder:
        training(args, Path(folder), cuda)
        generation(cuda)


def training(args: argparse.Namespace, folder: Path, cuda: bool) -> None:
    """The training table (GPU), or one tiny smoke case per trainer (CPU)."""
    bench = _train_throughput()
    resolution = 512 if cuda else 64
    data = bench.garment_dataset(folder, resolution, 24 if cuda else 8)
    base = bench.random_sd15(folder / "base") if cuda else bench.prepare(folder / "tiny", 64, 8, tiny=True)[1]
    steps, warmup = (args.steps, args.warmup) if cuda else (3, 1)
    print(f"\ntraining, batch 4, {resolution} px, {steps} steps (steady after {warmup})")
    print(f"{'trainer':<11} {'precision':<9} {'latents':<8} {'options':<27} {'samples/s':>9} {'peak GiB':>9}")
    for stage, precision, cached, option in cases(cuda, args.all):
        reason = skip_reason(cuda, precision, option)
        if reason:
            print(f"{stage:<11} {precision:<9} {'cached' if cached else 'encoded':<8} {option:<27} skipped: {reason}")
            continue
        # log_every 1 on the CPU: its 3 steps give the steady rate two points
        settings = [f"{name}={value}" for name, value in OPTIONS[option].items()] + ([] if cuda else ["log_every=1"])
        run = argparse.Namespace(steps=steps, warmup=warmup, batch_size=4, threads=0, compile=False, profile=False,
                                 set=settings)
        figures = bench.fsdx_case(run, stage, cached, data, base, folder / f"{stage}-{precision}-{cached}-{option}",
                                  resolution, precision)
        print(f"{stage:<11} {precision:<9} {'cached' if cached else 'encoded':<8} {option:<27} "
              f"{figures['samples_per_s']:>9.2f} {figures['peak_mb'] * 2**20 / GIB:>9.2f}", flush=True)


def cases(cuda: bool, every: bool) -> list[tuple[str, str, bool, str]]:
    """(trainer, precision, cached latents, memory option) of each row; on a CPU the tiny smoke rows first."""
    smoke = [("lora", "no", True, "plain"), ("controlnet", "no", True, "plain")] if not cuda else []
    options = list(OPTIONS) if every else ["plain", "checkpointing + 8-bit Adam"]
    rows = [("lora", "bf16", False, "plain")]  # the encode-every-batch approach LoRA's target compares with
    for stage in ("lora", "controlnet"):
        rows += [(stage, precision, True, option) for precision in ("bf16", "fp16") for option in options]
        if not every:
            rows += [(stage, "bf16", True, "checkpointing"), (stage, "bf16", True, "8-bit Adam")]
    return smoke + rows


def skip_reason(cuda: bool, precision: str, option: str) -> str | None:
    if precision != "no" and not cuda:
        return "needs a CUDA GPU (SD 1.5 at 512 px; fp16 autocast)"
    if "8-bit" in option and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    return None


def generation(cuda: bool) -> None:
    """benchmarks/generate_latency.py: SD 1.5 at 512 px, 25 steps on a GPU; the tiny model, 2 steps, on a CPU."""
    size, steps, repeats = ("sd15", 25, 3) if cuda else ("tiny", 2, 1)
    print(f"\ngeneration ({'SD 1.5 architecture, 512 px' if cuda else 'smoke: tiny model'}, {steps} steps, batch 1, "
          "LoRA fused + ControlNet, against the stock diffusers pipeline)")
    if not cuda:
        print("SD 1.5 at 512 px skipped: needs a CUDA GPU")
    command = [sys.executable, str(HERE / "generate_latency.py"), "--size", size, "--steps", str(steps),
               "--repeats", str(repeats)]
    completed = subprocess.run(command, capture_output=True, text=True)
    print(completed.stdout.strip() or completed.stderr[-2000:])


def _train_throughput():
    """benchmarks/train_throughput.py as a module (its base, data and per-case runner are shared, not copied)."""
    spec = importlib.util.spec_from_file_location("train_throughput", HERE / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
