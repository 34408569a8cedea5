"""`fsdx ablate` on a tiny base and a 10-garment dataset (32 px, two steps a stage): nested seeded subsets, the
command end to end, a rerun that trains nothing, an interrupted run that resumes, a category subset, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from pathlib import Path

import pytest
from datasets import DatasetDict, load_from_disk
from safetensors.torch import load_file

from fashionsd_x.cli import main
from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize
from fashionsd_x.recipes.ablate import (AblationError, Subset, _stage_defaults, ablate, plan_subsets, route_overrides,
                                        stage_configs)
from fashionsd_x.train import core
from fashionsd_x.train.config import ConfigError
from fashionsd_x.train.lora import LORA_WEIGHTS
from tests.test_cli import run_main

# Two steps a stage at 32 px, a checkpoint every step, no validation images; evaluation of one item, one step.
TRAIN = {"batch_size": "2", "resolution": "32", "lr": "1e-3", "checkpoint_every": "1", "keep_checkpoints": "1",
         "num_validation_images": "0"}
EVAL = {"limit": 1, "steps": 1}
GROUP = "dress,skirt"  # the diversity subset: two of the data's three categories


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory):
    """Content digests cached in a file of this module's own (the user's cache may be large to read), and torch
    on one thread in the commands too: tiny tensors run faster so, and a command's weights can then be compared
    bit for bit with this process's (see tests/conftest.py, one_thread)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FSDX_DIGEST_CACHE", str(tmp_path_factory.mktemp("digests") / "digests.json"))
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def garments(tmp_path_factory: pytest.TempPathFactory, environment) -> Path:
    """10 train and a few test garments of three categories at 32 px, as `fsdx data build` writes them; without the
    pattern column, whose reference classifier would take longer to fit than the rest of an evaluation."""
    folder = tmp_path_factory.mktemp("garments")
    raw = synthesize(folder / "raw", num=16, seed=3, size=64, categories=("dress", "skirt", "t-shirt"))
    built = build_dataset("folder", raw, folder / "built", resolution=32, test_fraction=0.25, limit=10).out
    data = load_from_disk(str(built))
    DatasetDict({name: part.remove_columns("pattern") for name, part in data.items()}).save_to_disk(
        str(folder / "dataset"))
    (folder / "dataset" / "build_report.json").write_text((built / "build_report.json").read_text())
    return folder / "dataset"


@pytest.fixture(scope="module")
def ablation(garments: Path, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """`fsdx ablate` as a user types it: two fractions and one category group, the training settings passed
    through as --field=value; returns the output folder and the command's arguments."""
    out = tmp_path_factory.mktemp("ablation") / "out"
    arguments = ["ablate", "--data", garments, "--fractions", "0.5", "1", "--categories", GROUP, "--out", out,
                 "--model", tiny_base, "--lora-steps", "2", "--controlnet-steps", "1", "--limit", "1", "--steps", "1",
                 *(f"--{name.replace('_', '-')}={value}" for name, value in TRAIN.items())]
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert main([str(argument) for argument in arguments]) == 0  # in this process: no start-up cost
    assert "ablation.md" in shown.getvalue() and "| fraction-0.5 | 5 |" in shown.getvalue()
    return out, arguments


def _python_call(garments: Path, tiny_base: Path, out: Path, **changes) -> dict:
    """The ablation fixture's run through the Python API (the same settings as its command line)."""
    options = dict(fractions=(0.5, 1.0), categories=[GROUP], model=str(tiny_base), lora_steps=2, controlnet_steps=1,
                   overrides=dict(TRAIN), **EVAL)
    return ablate(garments, out=out, **{**options, **changes}).record


@pytest.fixture(autouse=True)
def single_thread(one_thread) -> None:
    """Torch on one thread (see tests/conftest.py)."""


def test_subsets_are_nested_seeded_and_category_subsets_match_a_size():
    categories = ["dress", "skirt", "top"] * 10
    subsets = plan_subsets(categories, 30, (1.0, 0.25, 0.5), [("dress",), ("dress", "skirt")], seed=7)
    by_name = {subset.name: subset for subset in subsets}
    small, middle, full = (set(by_name[f"fraction-{f}"].indices) for f in ("0.25", "0.5", "1"))
    assert len(small) == 8 and len(middle) == 15 and full == set(range(30))  # rounded half up: 7.5 -> 8
    assert small < middle < full
    assert plan_subsets(categories, 30, (0.25,), [], seed=7)[0] == by_name["fraction-0.25"]  # seeded
    assert set(plan_subsets(categories, 30, (0.25,), [], seed=8)[0].indices) != small
    one, two = by_name["categories-dress"], by_name["categories-dress+skirt"]
    assert {categories[i] for i in one.indices} == {"dress"} and len(one.indices) == 8  # 10 dresses fill 8, not 15
    assert {categories[i] for i in two.indices} == {"dress", "skirt"} and len(two.indices) == 15
    assert one == Subset("categories-dress", None, ("dress",), one.indices)


@pytest.mark.parametrize("fractions, groups, message", [
    ((0.5, 1.5), [], "must each be in (0, 1], got 1.5"),
    ((0.0,), [], "must each be in (0, 1], got 0"),
    ((0.5, 0.5), [], "repeats a value"),
    ((0.01,), [], "is an empty subset"),
    ((0.5,), [("coat",)], "unknown category 'coat'"),
    ((1.0,), [("dress",)], "have 10 train rows, fewer than the smallest fraction subset (30)"),
])
def test_bad_subsets_are_refused(fractions, groups, message):
    with pytest.raises(AblationError, match=re.escape(message)):
        plan_subsets(["dress", "skirt", "top"] * 10, 30, fractions, groups, seed=0)


def test_settings_pass_to_every_stage_that_has_them_or_to_one_by_prefix():
    routed = route_overrides({"max_steps": "5", "rank": "2", "controlnet-lr": "2e-4", "lora_init": "gaussian"})
    assert routed == {"lora": {"max_steps": "5", "rank": "2", "lora_init": "gaussian"},
                      "controlnet": {"max_steps": "5", "lr": "2e-4"}}
    with pytest.raises(ConfigError, match="no setting of"):
        route_overrides({"ranks": "2"})
    with pytest.raises(ConfigError, match="set by the ablation"):
        route_overrides({"data": "elsewhere"})


def test_the_embedded_base_trains_with_the_embedded_recipes_settings(tmp_path):
    subset = Subset("fraction-1", 1.0, None, (0, 1))
    configs = stage_configs("base", tmp_path, [subset], _stage_defaults(None), None, None, 7, 0, None,
                            {"lr": "1e-4"})["fraction-1"]
    lora = configs["lora"]
    assert lora.resolution == 128 and "conv1" in lora.target_modules and lora.max_steps == 7 and lora.lr == 1e-4
    assert configs["controlnet"] is None  # --controlnet-steps 0
    assert lora.data == str((tmp_path / "subsets" / "fraction-1").resolve())


def test_the_command_writes_one_entry_per_run_with_digests_a_table_and_a_chart(ablation):
    out, _ = ablation
    record = json.loads((out / "ablation.json").read_text())
    assert [run["name"] for run in record["runs"]] == ["fraction-0.5", "fraction-1", "categories-dress+skirt"]
    assert [run["size"] for run in record["runs"]][:2] == [5, 10]
    for run in record["runs"]:
        assert run["steps"] == {"lora": 2, "controlnet": 1}
        assert set(run["weights_sha256"]) == {"lora", "controlnet"} and len(run["data_sha256"]) == 64
        assert set(run["metrics"]) == {"lora", "fashionsd-x"} and "edge_f1" in run["metrics"]["lora"]
    assert "edge_f1" in record["vanilla"]
    assert len({run["weights_sha256"]["lora"] for run in record["runs"]}) == 3  # each run its own LoRA
    # The subsets are datasets the trainers read, the test split the full data's, the smaller inside the larger.
    half, full = (load_from_disk(str(out / "subsets" / name)) for name in ("fraction-0.5", "fraction-1"))
    assert set(half["train"]["id"]) < set(full["train"]["id"]) and half["test"]["id"] == full["test"]["id"]
    table = (out / "ablation.md").read_text()
    assert all(f"| {run['name']} | {run['size']} |" in table for run in record["runs"]) and "Edge F1 ↑" in table
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_category_subset_holds_only_its_categories_at_a_matched_size(ablation, garments):
    out, _ = ablation
    record = json.loads((out / "ablation.json").read_text())
    run = record["runs"][2]
    subset = load_from_disk(str(out / "subsets" / run["name"]))["train"]
    assert set(subset["category"]) == {"dress", "skirt"} == set(run["category_counts"]) == set(run["categories"])
    sizes = [entry["size"] for entry in record["runs"][:2]]
    available = sum(category in ("dress", "skirt") for category in load_from_disk(str(garments))["train"]["category"])
    assert run["size"] == max(size for size in sizes if size <= available) == subset.num_rows


def test_a_rerun_trains_nothing_and_gives_the_same_results(ablation, garments, tiny_base):
    out, _ = ablation
    written = {path: path.stat().st_mtime_ns for path in out.rglob("train_result.json")}
    before = (out / "ablation.json").read_text()
    started = time.monotonic()
    _python_call(garments, tiny_base, out)
    assert time.monotonic() - started < 15  # digests, the table and the chart; no training, no generation
    assert {path: path.stat().st_mtime_ns for path in out.rglob("train_result.json")} == written
    assert (out / "ablation.json").read_text() == before


def test_an_interrupted_run_resumes_to_the_same_weights_and_changed_settings_train_again(
        ablation, garments, tiny_base, tmp_path, monkeypatch, capsys):
    reference, _ = ablation
    out = tmp_path / "out"
    real = core.checkpoint

    def stop_after_the_first(session, step):  # the process dies right after step 1's checkpoint
        real(session, step)
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "checkpoint", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        _python_call(garments, tiny_base, out, fractions=(0.5,), categories=None, controlnet_steps=0,
                     variants="lora")
    lora = out / "runs" / "fraction-0.5" / "lora"
    assert (lora / "checkpoints" / "checkpoint-1").is_dir() and not (lora / LORA_WEIGHTS).exists()
    monkeypatch.setattr(core, "checkpoint", real)
    capsys.readouterr()
    record = _python_call(garments, tiny_base, out, fractions=(0.5,), categories=None, controlnet_steps=0,
                          variants="lora")
    assert "resumed from" in capsys.readouterr().out
    assert record["runs"][0]["steps"] == {"lora": 2}
    uninterrupted = load_file(reference / "runs" / "fraction-0.5" / "lora" / LORA_WEIGHTS)
    resumed = load_file(lora / LORA_WEIGHTS)
    assert resumed.keys() == uninterrupted.keys()
    assert all((resumed[name] == uninterrupted[name]).all() for name in resumed)
    # Changed settings train again (the old run set aside), never reuse the run made with the old ones.
    changed = _python_call(garments, tiny_base, out, fractions=(0.5,), categories=None, controlnet_steps=0,
                           variants="lora", overrides={**TRAIN, "lr": "5e-3"})
    assert changed["runs"][0]["weights_sha256"] != record["runs"][0]["weights_sha256"]
    assert changed["runs"][0]["metrics"] and (lora.parent / "lora.stale" / LORA_WEIGHTS).is_file()


def test_bad_input_is_one_line_before_any_training(garments, tmp_path, capsys):
    only_train = tmp_path / "only_train"
    DatasetDict({"train": load_from_disk(str(garments))["train"]}).save_to_disk(str(only_train))
    cases = [
        (dict(data=only_train), "no 'test' split"),
        (dict(data=garments, categories=["coat"]), "unknown category 'coat'"),
        (dict(data=garments, categories=["dress"], category_column="fabric"), "needs a 'fabric' column"),
        (dict(data=garments, controlnet_steps=0, variants="fashionsd-x"), "needs a ControlNet"),
        (dict(data=garments, overrides={"rank": "zero"}), "rank must be int"),
        (dict(data=garments, limit=0), "--limit must be at least 1"),
        (dict(data=garments, steps=0), "steps"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            ablate(out=tmp_path / "out", model=str(tmp_path / "no base needed yet"), **arguments)
    assert not (tmp_path / "out").exists()
    code, error = run_main(capsys, "ablate", "--data", garments, "--fractions", "0.5", "1.5", "--out", tmp_path / "o")
    assert code == 2 and error.strip() == "fsdx ablate: error: --fractions must each be in (0, 1], got 1.5"


def test_help_shows_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["ablate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for flag in ("--data", "--fractions FRACTIONS [FRACTIONS ...]", "--categories", "--lora-steps",
                 "--controlnet-steps", "--controlnet-init", "--lora-config", "--limit", "--steps", "--field value"):
        assert flag in shown, flag
