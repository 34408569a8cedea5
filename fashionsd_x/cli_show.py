"""How the CLI reports each stage's result: a few lines for a person, and the exit code."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def sketch(report: Any) -> int:
    print(f"wrote {len(report.written)} sketch(es) to {report.out}")
    _print_skips(report.skipped)
    return 0 if report.written else _nothing_done("sketch", "no sketch written: every input was skipped")


def data_build(result: Any) -> int:
    rows = ", ".join(f"{split}: {count}" for split, count in result.report["num_rows"].items())
    print(f"dataset written to {result.out} ({rows}); load it with datasets.load_from_disk({str(result.out)!r})")
    print(f"report: {result.out / 'build_report.json'} ({result.num_skipped} item(s) skipped)")
    _print_skips([(skip["path"], skip["reason"]) for skip in result.report["skipped"]])
    return 0


def data_synth(out: Any) -> int:
    print(f"synthetic garments written to {out} (images/ and metadata.jsonl; build with --source folder)")
    return 0


def data_sketch_styles(out: Any) -> int:
    counts = json.loads((out / "sketch_styles.json").read_text(encoding="utf-8"))["counts"]
    print(f"sketch-style benchmark written to {out} ({', '.join(f'{s}: {n}' for s, n in counts.items())}); "
          f"score a model on it with fsdx evaluate --data {out}")
    return 0


def export(path: Any) -> int:
    from safetensors import safe_open

    print(f"wrote {path}")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    if "vae_scaling_factor" in metadata:  # a whole model: how diffusers reads it offline, with its own configs
        print(f"diffusers: StableDiffusionPipeline.from_single_file({str(path)!r}, "
              f"config={metadata['exported_from']!r})  (VAE scaling factor {metadata['vae_scaling_factor']}; "
              "without config= diffusers fetches SD's configs from the Hub)")
    return 0


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under accelerate launch only the main process reports


def train(result: Any) -> int:
    if not _main_process():
        return 0
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    print(f"{result.stage}: {result.steps} steps ({result.epochs:.2f} epochs) in {result.seconds:.0f} s, "
          f"last loss {loss}")
    print(f"weights: {result.weights}  (model card: {result.out / 'README.md'})")
    return 0


def train_tiny(out: Any) -> int:
    print(f"recipe folder: {out} (stage figures in {out / 'recipe.json'})")
    return 0


def generate(run: Any) -> int:
    if not _main_process():
        return 0
    print(f"wrote {len(run.files)} image(s) to {run.out} (parameters in each PNG and in {run.log.name})")
    _print_skips([(f"batch line {s.get('line')}", s["reason"]) for s in run.skipped])
    if not run.files:
        return _nothing_done("generate", "no image written: " + ("every batch line was skipped" if run.skipped
                                                     else "the batch file has no lines"))
    return 0


def evaluate(result: Any) -> int:
    if not result.metrics:  # a non-main process of a multi-process run: the main process reports
        return 0
    print((result.out / "metrics.md").read_text(encoding="utf-8"))
    print(f"wrote {result.out / 'metrics.json'}, {result.out / 'metrics.md'} and {result.out / 'report.html'}")
    if (result.out / "sweep.png").is_file() and "sweep" in result.metrics:
        print(f"sweep: the sketch-vs-text trade-off in {result.out / 'sweep.png'}, images under {result.out / 'sweep'}")
    return 0


def demo(result: Any) -> int:
    for line in result.lines():
        print(line)
    return 0


def _nothing_done(command: str, reason: str) -> int:
    """A run that produced nothing is not a success: say why, exit 1."""
    print(f"fsdx {command}: error: {reason}", file=sys.stderr)
    return 1


def _print_skips(skipped: list, shown: int = 5) -> None:
    for path, reason in skipped[:shown]:
        print(f"  skipped {path}: {reason}")
    if len(skipped) > shown:
        print(f"  ... and {len(skipped) - shown} more")
