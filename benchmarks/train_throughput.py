"""Training throughput: samples/s of LoRA and ControlNet training, against the diffusers example trainers.

    python benchmarks/train_throughput.py [--steps 30] [--batch-size 4] [--resolution 64] [--threads N]
    python benchmarks/train_throughput.py --diffusers-src DIR [--rounds 2] [--steps 200] [--garments 24]
    python benchmarks/train_throughput.py --profile [--profile-resolutions 64 128]

Default: the real stage functions (`train_lora`, `train_controlnet`) on a tiny base at --resolution on synthetic
garments, with and without cached latents; with a CUDA GPU also on SD 1.5's architecture with random weights
(512 px, fp16). Each case runs in its own process so its peak memory is its own (CPU: peak RSS; GPU:
torch.cuda.max_memory_allocated).

--diffusers-src DIR: side by side with diffusers' examples/text_to_image/train_text_to_image_lora.py and
examples/controlnet/train_controlnet.py, run as scripts from the user's diffusers checkout DIR (never copied).
Both sides get one base saved as a diffusers folder (SD 1.5's block layout from its shipped configs, narrow
widths: SMALL_SD15), the same garments at the same resolution, batch and steps; the examples read them as an
imagefolder (metadata.jsonl), fsdx as its built dataset, with --cache-latents. Cases alternate fsdx/example per
trainer, --rounds times, so the machine's load drifts over both alike.

samples/s is always the steady state: from the wall times of the loss scalars each trainer writes to its
TensorBoard log (fsdx every log_every steps, the examples every step), after --warmup steps.

--profile: torch.profiler over the training loop on the tiny base (cached latents), one step split into data and
collation, text/VAE encoding, forward, backward, optimizer, and logging/checkpointing (the labels core.py
records), per resolution and trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [("lora", False), ("lora", True), ("controlnet", False), ("controlnet", True)]
EXAMPLES = {"lora": "examples/text_to_image/train_text_to_image_lora.py",
            "controlnet": "examples/controlnet/train_controlnet.py"}
LOSS_TAGS = ("loss", "train_loss")  # fsdx and the ControlNet example log "loss", the LoRA example "train_loss"
# SD 1.5's UNet/VAE/CLIP configs (4 levels, 2 layers per block, cross-attention at 3 levels) with narrow widths.
# The VAE is wider than the UNet so that, at 64 px, encoding a batch weighs against the UNet about what it weighs
# in SD 1.5 at 512 px (~0.6x the LoRA UNet's forward+backward; the run prints the measured ratio): otherwise a
# small base would understate what caching saves.
SMALL_SD15 = {"unet": [32, 64, 64, 64], "vae": [40, 80, 80, 80], "norm_groups": 8, "text_hidden": 64,
              "text_layers": 4}
PROFILE_LABELS = ("data", "encode", "forward", "backward", "optimizer", "log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per case (30; 200 side by side)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps left out of samples/s (5; 20 side by side)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step")
    parser.add_argument("--resolution", type=int, default=64, help="training side in pixels")
    parser.add_argument("--garments", type=int, default=None, help="synthetic garments (32; 24 side by side)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--diffusers-src", type=Path, help="diffusers source checkout: compare with its example trainers")
    parser.add_argument("--rounds", type=int, default=2, help="side by side: interleaved repetitions of each case")
    parser.add_argument("--compile", action="store_true", help="fsdx with --compile true (torch.compile)")
    parser.add_argument("--profile", action="store_true", help="profile one training step (torch.profiler)")
    parser.add_argument("--profile-resolutions", type=int, nargs="+", default=[64, 128], help="--profile sides")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="any other fsdx setting for every fsdx case (e.g. gradient_checkpointing=true)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one fsdx case in this process
    args, rest = parser.parse_known_args()
    side = args.diffusers_src is not None
    args.steps = args.steps or (200 if side else 30)
    args.warmup = args.warmup if args.warmup is not None else (20 if side else 5)
    args.garments = args.garments or (24 if side else 32)
    if args.case:
        print(json.dumps(run_case(args, *rest)))
        return
    if args.threads:  # children inherit it: both sides of a comparison get the same threads
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="fsdx-bench-") as folder:
        if args.profile:
            profile_all(args, Path(folder))
        elif side:
            side_by_side(args, Path(folder))
        else:
            fsdx_alone(args, Path(folder))


# 1. fsdx alone: cached against encoded latents ------------------------------------------------------------------

def fsdx_alone(args: argparse.Namespace, folder: Path) -> None:
    import torch

    print(f"{os.cpu_count()} CPU cores, torch threads {args.threads or torch.get_num_threads()}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    data, base = prepare(folder, args.resolution, args.garments, tiny=True)
    report(args, folder, data, base, args.resolution, f"tiny base, {args.resolution} px, batch {args.batch_size}", "no")
    if torch.cuda.is_available():
        data, base = prepare(folder / "sd15", 512, args.garments, tiny=False)
        report(args, folder / "sd15", data, base, 512, f"SD 1.5 architecture (random weights), 512 px, fp16, batch "
               f"{args.batch_size}", "fp16")


def prepare(folder: Path, resolution: int, garments: int, tiny: bool) -> tuple[Path, Path]:
    """A built dataset at `resolution` and a base: the tiny one, or SD 1.5's shipped configs with random weights."""
    from fashionsd_x.models.tiny import TinyConfig, build_tiny_base

    data = garment_dataset(folder, resolution, garments)
    # A 4x VAE wider than the UNet: its encoder costs ~0.6x the LoRA UNet's forward+backward, as SD 1.5's does
    # (VAE encode at 512 px vs UNet at 64x64 latents: 0.60, measured on CPU), so caching weighs what it weighs there.
    tiny_config = TinyConfig(sample_size=resolution, vae_channels=(32, 96, 128))
    base = build_tiny_base(folder / "base", tiny_config) if tiny else random_sd15(folder / "base")
    return data, base


def garment_dataset(folder: Path, resolution: int, garments: int, test_fraction: float = 0.1) -> Path:
    from fashionsd_x.data.build import build_dataset
    from fashionsd_x.data.synth import synthesize

    raw = synthesize(folder / "raw", num=garments, seed=0, size=max(64, resolution))
    return build_dataset("folder", raw, folder / "data", resolution=resolution, test_fraction=test_fraction).out


def random_sd15(out: Path, widths: dict | None = None) -> Path:
    """SD 1.5's architecture from the shipped configs, random weights (no download): full size in fp16, or with
    `widths` (like SMALL_SD15) the same block layout, narrow, in fp32."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fashionsd_x.models.base import build_schedulers
    from fashionsd_x.models.single_file import CONFIGS
    from fashionsd_x.models.tokenizer import clip_tokenizer

    configs = CONFIGS / "sd15"
    unet, vae = UNet2DConditionModel.load_config(configs / "unet"), AutoencoderKL.load_config(configs / "vae")
    text = CLIPTextConfig.from_pretrained(configs / "text_encoder")
    if widths:
        groups = widths["norm_groups"]
        unet.update(block_out_channels=widths["unet"], norm_num_groups=groups, cross_attention_dim=widths["text_hidden"])
        vae.update(block_out_channels=widths["vae"], norm_num_groups=groups)
        text.hidden_size = text.projection_dim = widths["text_hidden"]
        text.intermediate_size, text.num_hidden_layers = 4 * widths["text_hidden"], widths["text_layers"]
        text.num_attention_heads = max(1, widths["text_hidden"] // 16)
    torch.manual_seed(0)
    scheduler, sampler = build_schedulers(json.loads((configs / "scheduler" / "scheduler_config.json").read_text()),
                                          None, str(configs))
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(vae), text_encoder=CLIPTextModel(text),
        unet=UNet2DConditionModel.from_config(unet), tokenizer=clip_tokenizer(), scheduler=sampler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.to(torch.float32 if widths else torch.float16).save_pretrained(out, safe_serialization=True)
    return out


def report(args: argparse.Namespace, folder: Path, data: Path, base: Path, resolution: int, title: str,
           precision: str) -> None:
    print(f"\n{title}")
    print(f"{'trainer':<11} {'latents':<8} {'samples/s':>10} {'peak memory':>12} {'setup s':>8}")
    rates = {}
    for stage, cached in CASES:
        figures = fsdx_case(args, stage, cached, data, base, folder / f"{stage}-{cached}", resolution, precision)
        rates[stage, cached] = figures["samples_per_s"]
        print(f"{stage:<11} {'cached' if cached else 'encoded':<8} {figures['samples_per_s']:>10.1f} "
              f"{figures['peak_mb']:>9.0f} MB {figures['setup_s']:>8.1f}")
    for stage in ("lora", "controlnet"):
        print(f"{stage}: cached latents give {rates[stage, True] / rates[stage, False]:.2f}x the samples/s")


def fsdx_case(args: argparse.Namespace, stage: str, cached: bool, data: Path, base: Path, out: Path,
              resolution: int, precision: str) -> dict:
    """One fsdx training case in a child process (so its peak memory is its own); its figures."""
    command = [sys.executable, __file__, "--case", stage, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--resolution", str(resolution),
               *(["--compile"] if args.compile else []), *(["--profile"] if args.profile else []),
               *[f"--set={setting}" for setting in args.set],
               str(data), str(base), str(out), precision, str(cached)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"fsdx {stage} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_case(args: argparse.Namespace, data: str, base: str, out: str, precision: str, cached: str) -> dict:
    """Train one case here and measure it (the child-process side of `fsdx_case`)."""
    import contextlib

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from fashionsd_x.train.controlnet import train_controlnet
    from fashionsd_x.train.lora import train_lora

    train = train_lora if args.case == "lora" else train_controlnet
    overrides = {"num_validation_images": "0", "checkpoint_every": "null", "compile": str(args.compile).lower(),
                 **dict(setting.split("=", 1) for setting in args.set)}
    profiler = torch.profiler.profile() if args.profile else contextlib.nullcontext()
    started = time.perf_counter()
    with profiler:
        train(Path(data), base, Path(out), max_steps=args.steps, batch_size=args.batch_size,
              resolution=args.resolution, mixed_precision=precision, cache_latents=cached == "True",
              overrides=overrides)
    total = time.perf_counter() - started
    times = step_times(Path(out) / "logs")
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    figures = {"samples_per_s": steady_rate(times, args.warmup, args.batch_size), "peak_mb": peak,
               "setup_s": total - (times[-1][1] - times[0][1])}
    if args.profile:
        figures["profile_ms"] = step_profile(profiler, args.warmup)
    return figures


def step_times(logs: Path) -> list[tuple[int, float]]:
    """(step, wall-clock time) of every loss scalar in the TensorBoard logs under `logs`, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times = []
    for run in {path.parent for path in logs.rglob("events.out.tfevents.*")}:
        accumulator = EventAccumulator(str(run))
        accumulator.Reload()
        for tag in set(LOSS_TAGS) & set(accumulator.Tags()["scalars"]):
            times += [(event.step, event.wall_time) for event in accumulator.Scalars(tag)]
    if not times:
        raise RuntimeError(f"no loss scalars under {logs}")
    return sorted(times)


def steady_rate(times: list[tuple[int, float]], warmup: int, batch_size: int) -> float:
    """Samples/s between the first logged step at or after `warmup` and the last one."""
    steady = [(step, wall) for step, wall in times if step >= warmup]
    if len(steady) < 2:
        raise RuntimeError(f"fewer than two loss times after step {warmup} ({times}); run more steps or log more often")
    (first_step, first_wall), (last_step, last_wall) = steady[0], steady[-1]
    return (last_step - first_step) * batch_size / (last_wall - first_wall)


# 2. Side by side with the diffusers example trainers --------------------------------------------------------------

def side_by_side(args: argparse.Namespace, folder: Path) -> None:
    """fsdx (cached latents) and the diffusers examples, interleaved per trainer, --rounds times; one table."""
    import torch

    scripts = {stage: args.diffusers_src / path for stage, path in EXAMPLES.items()}
    missing = [str(path) for path in scripts.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"--diffusers-src {args.diffusers_src} lacks {', '.join(missing)}; give a diffusers checkout")
    base = random_sd15(folder / "base", SMALL_SD15)
    data = garment_dataset(folder, args.resolution, args.garments, test_fraction=0.0)
    images = imagefolder(data, folder / "imagefolder")
    print(f"{os.cpu_count()} CPU cores, torch threads {args.threads or torch.get_num_threads()}; base: SD 1.5 layout, "
          f"widths {SMALL_SD15}; {args.garments} garments at {args.resolution} px, batch {args.batch_size}, "
          f"{args.steps} steps, steady rate after step {args.warmup}; fsdx --cache-latents"
          f"{' --compile' if args.compile else ''}")
    print(component_costs(base, args.resolution, args.batch_size))
    print(f"\n{'trainer':<11} {'round':>5} {'fsdx samples/s':>15} {'diffusers samples/s':>20} {'ratio':>6}")
    ratios: dict[str, list[float]] = {"lora": [], "controlnet": []}
    for round_ in range(args.rounds):
        for stage in ("lora", "controlnet"):
            ours = fsdx_case(args, stage, True, data, base, folder / f"{stage}-fsdx-{round_}", args.resolution, "no")
            theirs = example_case(args, scripts[stage], stage, base, images, folder / f"{stage}-diffusers-{round_}")
            ratios[stage].append(ours["samples_per_s"] / theirs)
            print(f"{stage:<11} {round_ + 1:>5} {ours['samples_per_s']:>15.1f} {theirs:>20.1f} "
                  f"{ratios[stage][-1]:>5.2f}x", flush=True)
    for stage, values in ratios.items():
        print(f"{stage}: fsdx / diffusers example = {statistics.median(values):.2f}x (median of {len(values)}; "
              f"min {min(values):.2f}x)")


def imagefolder(data: Path, out: Path) -> Path:
    """The built dataset's train split as an imagefolder (images/, sketches/, metadata.jsonl): the examples' input.

    The examples get exactly fsdx's training pixels (the dataset's squared, resized images and its sketches)."""
    from datasets import load_from_disk

    split = load_from_disk(str(data))["train"]
    (out / "images").mkdir(parents=True)
    (out / "sketches").mkdir()
    rows = []
    for index, row in enumerate(split):
        name = f"{index:05d}.png"
        row["image"].convert("RGB").save(out / "images" / name)
        row["sketch"].convert("RGB").save(out / "sketches" / name)
        rows.append({"file_name": f"images/{name}", "conditioning_image_file_name": f"sketches/{name}",
                     "text": row["text"]})
    (out / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return out


def example_case(args: argparse.Namespace, script: Path, stage: str, base: Path, images: Path, out: Path) -> float:
    """Run a diffusers example trainer as its user would (plain `python script`); its steady samples/s."""
    command = [sys.executable, str(script), "--pretrained_model_name_or_path", str(base),
               "--train_data_dir", str(images), "--caption_column", "text", "--resolution", str(args.resolution),
               "--train_batch_size", str(args.batch_size), "--max_train_steps", str(args.steps),
               "--output_dir", str(out), "--seed", "0", "--report_to", "tensorboard", "--mixed_precision", "no",
               "--checkpointing_steps", str(args.steps + 1), "--dataloader_num_workers", "0"]
    if stage == "lora":
        command += ["--learning_rate", "1e-4", "--rank", "4"]  # fsdx's LoRA defaults (same target layers)
    else:
        command += ["--image_column", "image", "--conditioning_image_column", "conditioning_image",
                    "--learning_rate", "1e-5"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(out.parent / "hf-datasets"),
                   "TQDM_DISABLE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=str(out.parent))
    if completed.returncode:
        raise RuntimeError(f"{script.name} failed:\n{completed.stderr[-3000:]}")
    return steady_rate(step_times(out / "logs"), args.warmup, args.batch_size)


def component_costs(base: Path, resolution: int, batch_size: int) -> str:
    """Forward(+backward) milliseconds of the base's parts at one batch: what caching can and cannot save."""
    import torch
    from diffusers import ControlNetModel

    from fashionsd_x.models.base import load_base

    loaded = load_base(str(base))
    latent = resolution // loaded.vae_scale_factor
    pixels, latents = torch.randn(batch_size, 3, resolution, resolution), torch.randn(batch_size, 4, latent, latent)
    ids, steps = torch.randint(0, 49408, (batch_size, 77)), torch.randint(0, 1000, (batch_size,))
    text = loaded.text_encoder(ids)[0].detach()
    controlnet = ControlNetModel.from_unet(loaded.unet)
    loaded.unet.requires_grad_(False)

    def unet() -> None:
        loaded.unet(latents, steps, encoder_hidden_states=text).sample.mean().backward()

    def control() -> None:
        down, middle = controlnet(latents, steps, encoder_hidden_states=text, controlnet_cond=pixels, return_dict=False)
        loaded.unet(latents, steps, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=middle).sample.mean().backward()

    with torch.no_grad():
        vae = _milliseconds(lambda: loaded.vae.encode(pixels).latent_dist.mean)
        encoder = _milliseconds(lambda: loaded.text_encoder(ids)[0])
    for name, parameter in loaded.unet.named_parameters():  # LoRA-like: a few attention weights train
        parameter.requires_grad_(name.endswith("to_q.weight"))
    lora = _milliseconds(unet)
    loaded.unet.requires_grad_(False)
    return (f"per batch: VAE encode {vae:.0f} ms, text encode {encoder:.0f} ms, UNet forward+backward (LoRA-like) "
            f"{lora:.0f} ms, ControlNet+UNet forward+backward {_milliseconds(control):.0f} ms; "
            f"VAE / UNet = {vae / lora:.2f}")


def _milliseconds(work, repeats: int = 5) -> float:
    work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - started) / repeats * 1000


# 3. Profile of one step -----------------------------------------------------------------------------------------

def profile_all(args: argparse.Namespace, folder: Path) -> None:
    """The per-step breakdown of LoRA and ControlNet training (cached latents) on the tiny base, per resolution."""
    print(f"per-step milliseconds (torch.profiler, tiny base, cached latents, batch {args.batch_size}, "
          f"steps {args.warmup + 1}-{args.steps}); 'other' = step - labelled parts")
    print(f"{'trainer':<11} {'px':>4} " + " ".join(f"{label:>9}" for label in PROFILE_LABELS) + f" {'other':>7} "
          f"{'step':>7}")
    for resolution in args.profile_resolutions:
        data, base = prepare(folder / str(resolution), resolution, args.garments, tiny=True)
        for stage in ("lora", "controlnet"):
            figures = fsdx_case(args, stage, True, data, base, folder / f"{resolution}-{stage}", resolution, "no")
            parts = figures["profile_ms"]
            other = parts["step"] - sum(parts[label] for label in PROFILE_LABELS)
            print(f"{stage:<11} {resolution:>4} " + " ".join(f"{parts[label]:>9.2f}" for label in PROFILE_LABELS)
                  + f" {other:>7.2f} {parts['step']:>7.2f}", flush=True)


def step_profile(profiler, warmup: int) -> dict[str, float]:
    """Mean milliseconds per step of each `fsdx/<label>` range core.py records, steps after `warmup` only."""
    events = [event for event in profiler.events() if event.name.startswith("fsdx/")]
    steps = sorted(event.time_range.start for event in events if event.name == "fsdx/step")
    begin = steps[min(warmup, len(steps) - 1)]
    counted = len(steps) - min(warmup, len(steps) - 1)
    totals = {label: 0.0 for label in ("step", *PROFILE_LABELS)}
    for event in events:
        label = event.name.removeprefix("fsdx/")
        if label in totals and event.time_range.start >= begin:
            totals[label] += event.time_range.elapsed_us() / 1000
    return {label: total / counted for label, total in totals.items()}


if __name__ == "__main__":
    main()
