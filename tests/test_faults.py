"""The machine refusing writes, in every command that writes: a full disk part way through, a read-only place.

Each command runs through `fsdx`'s own entry point with writes under its output failing (tests/faults: an
LD_PRELOAD library, so Python, safetensors' Rust and pyarrow's C++ writes all fail alike). It must print one
line that names the path, exit non-zero and leave nothing half written; a training run cut off mid-way keeps
its last good checkpoint, and a resume from it gives the uninterrupted run's weights.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize
from tests.apps.test_study_analyze import answered_study
from tests.faults import build_shim, gcc_available, partial_files, run_cases
from tests.test_generate import _save_controlnet, _save_lora

TRAIN = ["--max-steps", "6", "--batch-size", "2", "--resolution", "32", "--checkpoint-every", "2",
         "--num-validation-images", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not gcc_available():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must run the fault-injection tests: no gcc to build tests/faults/failwrite.c")
        pytest.skip("no gcc to build tests/faults/failwrite.c")
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture(scope="module")
def inputs(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Photos, a sketch, a built dataset, a LoRA and a ControlNet for the tiny base."""
    root = tmp_path_factory.mktemp("fault_inputs")
    raw = synthesize(root / "raw", num=6, seed=1, size=64)
    sketch = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(sketch).rectangle((12, 8, 52, 58), outline=0, width=3)
    sketch.save(root / "sketch.png")
    dataset = build_dataset("folder", raw, root / "dataset", resolution=32, test_fraction=0.34).out
    return {"raw": raw, "photos": raw / "images", "sketch": root / "sketch.png", "dataset": dataset,
            "study": answered_study(root / "study"),
            "base": tiny_base, "lora": _save_lora(tiny_base, root / "lora", 0),
            "controlnet": _save_controlnet(tiny_base, root / "controlnet")}


def _cases(inputs: dict[str, Path], work: Path) -> dict[str, dict]:
    """Each command that writes, with its output at work/<case>/out and writes under work/<case> failing (a
    staging folder beside the output included), half way through the writes a clean run makes."""
    base, generation = str(inputs["base"]), ["--steps", "2", "--resolution", "32"]
    batch = work / "batch.jsonl"
    batch.write_text('{"prompt": "a red dress", "n": 2}\n{"prompt": "a blue top", "n": 2}\n', encoding="utf-8")
    train = ["--data", str(inputs["dataset"]), "--base", base, *TRAIN]
    commands = {
        "sketch": ["sketch", str(inputs["photos"])],
        "data synth": ["data", "synth", "--num", "4", "--size", "64"],
        "data build": ["data", "build", "--source", "folder", "--root", str(inputs["raw"]), "--resolution", "32"],
        "data sketch-styles": ["data", "sketch-styles", "--per-style", "1"],
        "generate": ["generate", "--model", base, "--prompt", "a red dress", "--n", "4", *generation],
        "generate --batch": ["generate", "--model", base, "--batch", str(batch), *generation],
        "export": ["export", "--model", base],
        "train lora": ["train", "lora", *train],
        "train controlnet": ["train", "controlnet", *train],
        "evaluate": ["evaluate", "--data", str(inputs["dataset"]), "--model", base, "--lora", str(inputs["lora"]),
                     "--controlnet", str(inputs["controlnet"]), "--limit", "2", *generation],
        "demo": ["demo"],
        "train base": ["train", "base", *train],
    }
    cases = {name: {"args": args, "after": "half", "errno": errno.ENOSPC} for name, args in commands.items()}
    # Commands that read what an earlier case's clean run wrote (case<k>-count/out).
    made = {name: work / f"case{number}-count" / "out" for number, name in enumerate(cases)}
    cases.update({
        "study create": {"args": ["study", "create", "--from", str(made["evaluate"])], "after": "half",
                         "errno": errno.ENOSPC},
        "study analyze": {"args": ["study", "analyze", str(inputs["study"])], "after": "half", "errno": errno.ENOSPC},
        "export --lora": {"args": ["export", "--lora", str(made["train lora"])], "after": "half", "errno": errno.ENOSPC},
        "export --controlnet": {"args": ["export", "--controlnet", str(made["train controlnet"])], "after": "half",
                                "errno": errno.ENOSPC},
    })
    cases["demo"]["after"] = 5  # the demo's 16 garments take a while: fail early
    cases["demo read-only"] = {"args": ["demo"], "after": 0, "errno": errno.EROFS}
    cases["generate read-only"] = {"args": commands["generate"], "after": 0, "errno": errno.EROFS}
    for number, (name, case) in enumerate(cases.items()):
        folder = work / f"case{number}"
        out = folder / ("out/model.safetensors" if name.startswith("export") else
                        "out/study.db" if name == "study create" else "out")
        case.update(args=[*case["args"], "--out", str(out)], dir=str(folder))
    return cases


@pytest.fixture(scope="module")
def faulted(shim: Path, inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every case's result (one driver process runs them all: torch is imported once)."""
    work = tmp_path_factory.mktemp("faults")
    cases = _cases(inputs, work)
    results = run_cases(shim, list(cases.values()), work / "driver")
    return {name: {**result, "case": case} for (name, case), result in zip(cases.items(), results)}


@pytest.mark.parametrize("name", ["sketch", "data synth", "data build", "data sketch-styles", "generate",
                                  "generate --batch", "export", "train lora", "train controlnet", "train base",
                                  "evaluate", "demo", "demo read-only", "generate read-only", "study create",
                                  "study analyze", "export --lora", "export --controlnet"])
def test_a_refused_write_is_one_line_nonzero_and_nothing_partial(faulted, name):
    result = faulted[name]
    command = name.split(" --")[0].replace(" read-only", "")
    assert not result["crash"], result["crash"]
    if "clean" in result:  # the same command with nothing refused succeeded, so the failure is the disk's
        assert result["clean"]["code"] == 0 and not result["clean"]["crash"], result["clean"]
    read_only = result["case"]["errno"] == errno.EROFS  # refused when the folder is checked, before any write
    assert read_only or result["refused"] >= 1, f"no write was refused: {result}"
    lines = [line for line in result["stderr"].splitlines()
             if line.strip() and ": warning:" not in line and "%|" not in line]  # not a notice or a progress bar
    assert result["code"] not in (0, None) and len(lines) == 1, result["stderr"]
    reason = "read-only" if read_only else "no space left"
    assert lines[0].startswith(f"fsdx {command}: error: cannot write ") and reason in lines[0], lines[0]
    assert partial_files(Path(result["case"]["dir"])) == []


def test_a_read_only_output_is_refused_before_any_work(faulted):
    for name in ("demo read-only", "generate read-only"):
        assert faulted[name]["done"] == 0 and faulted[name]["stdout"] == "", faulted[name]


def test_generation_logs_only_images_that_exist(faulted):
    import json

    for name in ("generate", "generate --batch"):
        folder = Path(faulted[name]["case"]["dir"]) / "out"
        log = folder / "generations.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        assert all((folder / row["file"]).is_file() for row in rows)


def test_training_cut_off_keeps_its_checkpoint_and_resumes_to_the_uninterrupted_weights(shim, inputs, tmp_path):
    """The disk fills while the run saves after its first checkpoint; freed, a resume ends where a run that was
    never cut off ends, bit for bit."""
    base = str(inputs["base"])
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    args = ["train", "lora", "--data", str(inputs["dataset"]), "--base", base, *TRAIN]
    first = run_cases(shim, [{"args": [*args, "--out", str(clean)], "dir": str(clean), "after": -1}],
                      tmp_path / "count")[0]
    assert first["code"] == 0, first
    # The writes of the first checkpoint, then fail: find how many by one more counted run cut at step 2.
    short = run_cases(shim, [{"args": [*args, "--out", str(tmp_path / "short"), "--max-steps", "2"],
                              "dir": str(tmp_path / "short"), "after": -1}], tmp_path / "count_short")[0]
    after_first_checkpoint = short["done"] // 2 + 1  # half of a 2-step run: its checkpoint is written, not all else
    cut_off, resumed = run_cases(shim, [
        {"args": [*args, "--out", str(cut)], "dir": str(cut), "after": max(after_first_checkpoint, 1)},
        {"args": [*args, "--out", str(cut), "--resume", "latest"], "dir": str(tmp_path / "elsewhere"), "after": -1},
    ], tmp_path / "cut_driver")
    assert cut_off["code"] not in (0, None) and not cut_off["crash"], cut_off
    assert resumed["code"] == 0 and not resumed["crash"], resumed
    weights = "pytorch_lora_weights.safetensors"
    expected, got = load_file(clean / weights), load_file(cut / weights)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
