"""Wall time of the embedded recipe's LoRA and ControlNet stages, estimated from a short run of each.

    python benchmarks/recipe_stages.py [--recipe outputs/recipe] [--steps 50] [--before DIR] [--threads N]

Each stage is re-run from its own train_config.yaml (the recipe's settings: batch 16, 128 px, cached latents,
validation images at the end, ...) for --steps steps into a temporary folder; the recipe's folders are only
read. Its latent caches are copied to the temporary folder first, so no cache is rebuilt (the build is the same
before and after and happens once per recipe). The full stage is extrapolated as

    measured wall time + (recipe steps - steps) x steady seconds per step

(steady: from the TensorBoard loss times after the first 10 steps; checkpoints, one every 250 steps, are left
out). --before DIR runs each stage a second time with DIR first on PYTHONPATH (a copy of an earlier fashionsd_x
package), interleaved with the current code, and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("lora", "controlnet")
WARMUP = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=Path("outputs/recipe"), help="a finished recipe's folder")
    parser.add_argument("--steps", type=int, default=50, help="steps of each short run")
    parser.add_argument("--before", type=Path, help="folder holding an earlier fashionsd_x package to compare")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the runs (0: torch's default)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.recipe.resolve(), args.stage, args.steps, args.out, args.cache_dir)))
        return
    versions = {"after": None} if args.before is None else {"before": args.before.resolve(), "after": None}
    print(f"recipe {args.recipe}, {args.steps} steps per stage, threads {args.threads or 'default'}")
    print(f"{'stage':<11} {'code':<7} {'s/step':>7} {'run s':>7} {'recipe steps':>12} {'stage s (extrapolated)':>23}")
    with tempfile.TemporaryDirectory(prefix="fsdx-recipe-") as folder:
        cache = Path(folder) / "cache"
        for stage in STAGES:
            copy_cache(args.recipe / stage / "cache", cache)
            steps = json.loads((args.recipe / stage / "train_result.json").read_text())["steps"]
            for code, path in versions.items():
                figures = child(args, stage, Path(folder) / f"{stage}-{code}", cache, path)
                estimate = figures["seconds"] + (steps - args.steps) * figures["step_s"]
                print(f"{stage:<11} {code:<7} {figures['step_s']:>7.2f} {figures['seconds']:>7.0f} {steps:>12} "
                      f"{estimate:>17.0f} s ({estimate / 60:.0f} min)", flush=True)


def copy_cache(source: Path, cache: Path) -> None:
    for folder in source.iterdir() if source.is_dir() else []:
        if not (cache / folder.name).exists():
            shutil.copytree(folder, cache / folder.name)


def child(args: argparse.Namespace, stage: str, out: Path, cache: Path, before: Path | None) -> dict:
    environment = dict(os.environ)
    if before is not None:
        environment["PYTHONPATH"] = os.pathsep.join([str(before), environment.get("PYTHONPATH", "")])
    if args.threads:
        environment["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, __file__, "--stage", stage, "--recipe", str(args.recipe), "--steps", str(args.steps),
               "--out", str(out), "--cache-dir", str(cache)]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode:
        raise RuntimeError(f"{stage} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_stage(recipe: Path, stage: str, steps: int, out: Path, cache: Path) -> dict:
    """One short run of a stage with the recipe's settings; wall seconds and steady seconds per step."""
    import fashionsd_x
    from fashionsd_x.train.controlnet import train_controlnet
    from fashionsd_x.train.lora import train_lora

    config = recipe / stage / "train_config.yaml"
    settings = {"max_steps": str(steps), "cache_dir": str(cache)}
    started = time.perf_counter()
    if stage == "lora":
        train_lora(Path(config_value(config, "data")), config_value(config, "base"), out, config=config, overrides=settings)
    else:
        train_controlnet(Path(config_value(config, "data")), config_value(config, "base"), out, config=config,
                         overrides=settings)
    seconds = time.perf_counter() - started
    times = _step_times(out / "logs")
    steady = [(step, wall) for step, wall in times if step >= WARMUP]
    step_s = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
    return {"seconds": seconds, "step_s": step_s, "package": str(Path(fashionsd_x.__file__).parent)}


def config_value(config: Path, name: str) -> str:
    import yaml

    return yaml.safe_load(config.read_text(encoding="utf-8"))[name]


def _step_times(logs: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(next(logs.rglob("events.out.tfevents.*")).parent))
    accumulator.Reload()
    return sorted((event.step, event.wall_time) for event in accumulator.Scalars("loss"))


if __name__ == "__main__":
    main()
