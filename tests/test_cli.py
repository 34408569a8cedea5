"""`fsdx` as a user types it: help texts, the data stage end to end, and one-line errors with exit code 2."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from fashionsd_x.cli import COMMANDS, _flag, _parse_docstring


def fsdx(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "fsdx"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "fashionsd_x"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_top_level_help_lists_every_stage():
    result = fsdx("--help")
    assert result.returncode == 0
    for word in ("sketch", "data", "demo"):
        assert word in result.stdout


def help_of(capsys: pytest.CaptureFixture, *words: str) -> str:
    """`fsdx WORDS --help` as printed, run in this process (the same parser; `fsdx --help` runs as a user's)."""
    from fashionsd_x.cli import main

    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.name)
def test_every_subcommand_explains_every_option(command, capsys):
    help_text = " ".join(help_of(capsys, *command.name.split()).split())
    _, _, arg_help = _parse_docstring(command.function().__doc__ or "")
    for name, parameter in inspect.signature(command.function()).parameters.items():
        if name == "overrides":  # not a flag: any other `--field value` (said in the help's epilog)
            assert "--field value" in help_text
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:  # **settings: the config's fields, tested below
            continue
        assert arg_help.get(name), f"{command.name}: no help for {name}"
        flag = name.upper().rstrip("S") if name in command.positional else _flag(name)
        assert flag in help_text, f"{command.name}: {flag} missing from --help"
        assert " ".join(arg_help[name].split())[:30] in help_text


def test_data_synth_then_build_as_a_user_would(tmp_path):
    synth = fsdx("data", "synth", "--out", tmp_path / "garments", "--num", "10", "--seed", "1", "--size", "64")
    assert synth.returncode == 0, synth.stderr
    assert (tmp_path / "garments" / "metadata.jsonl").is_file()
    build = fsdx("data", "build", "--source", "folder", "--root", tmp_path / "garments", "--out", tmp_path / "ds",
                 "--resolution", "64", "--num-proc", "2", "--sketch-method", "canny")
    assert build.returncode == 0, build.stderr
    assert str(tmp_path / "ds") in build.stdout
    assert sorted(path.name for path in (tmp_path / "ds").iterdir()) == ["build_report.json", "dataset_dict.json", "test", "train"]
    data = load_from_disk(str(tmp_path / "ds"))
    assert data["train"].num_rows + data["test"].num_rows == 10
    report = json.loads((tmp_path / "ds" / "build_report.json").read_text())
    assert report["parameters"]["sketch"]["method"] == "canny" and report["parameters"]["num_proc"] == 2


def test_sketch_command_on_files_and_folders(tmp_path, synth_root):
    result = fsdx("sketch", synth_root / "images", synth_root / "images" / "synth_000000.png", "--out", tmp_path / "sk",
                  "--method", "xdog", "--invert")
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in (tmp_path / "sk").rglob("*.png"))
    assert len(written) >= 12


def test_missing_root_is_one_line_exit_2(tmp_path):
    result = fsdx("data", "build", "--source", "dresscode", "--root", tmp_path / "nowhere", "--out", tmp_path / "o")
    _assert_one_line_error(result, "root not found", "nowhere")


def test_layout_mismatch_is_one_line_exit_2(vitonhd_root, tmp_path):
    result = fsdx("data", "build", "--source", "dresscode", "--root", vitonhd_root, "--out", tmp_path / "o")
    _assert_one_line_error(result, "fine_captions.json")


def test_strict_exits_non_zero_when_items_were_skipped(dresscode_root, tmp_path):
    result = fsdx("data", "build", "--source", "dresscode", "--root", dresscode_root, "--out", tmp_path / "o",
                  "--resolution", "64", "--strict")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # progress bars come before; the error is the last line
    assert last.startswith("fsdx data build: error:") and "2 item(s) skipped" in last
    assert (tmp_path / "o" / "build_report.json").is_file()


def test_bad_option_value_is_one_line(synth_root, tmp_path):
    result = fsdx("data", "build", "--source", "folder", "--root", synth_root, "--out", tmp_path / "o", "--block-size", "4")
    _assert_one_line_error(result, "block_size")


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """`fsdx ARGS` in this process (no start-up cost): exit code and stderr."""
    from fashionsd_x.cli import main

    try:
        code = main([str(arg) for arg in args])
    except SystemExit as stop:  # argparse's way out
        code = stop.code
    return code, capsys.readouterr().err


def test_nan_guidance_is_one_line_exit_2_and_creates_nothing(tmp_path):
    result = fsdx("generate", "--prompt", "a dress", "--guidance-scale", "nan", "--out", tmp_path / "out")
    _assert_one_line_error(result, "--guidance-scale", "finite", "'nan'")
    assert not (tmp_path / "out").exists()


BAD_NUMBERS = [  # (arguments, what the one line says); {file} is an existing file, {tmp} the test's folder
    (["generate", "--guidance-scale", "inf"], ["--guidance-scale", "finite"]),
    (["generate", "--controlnet-scale", "1e999"], ["--controlnet-scale", "finite"]),
    (["generate", "--lora-scale", "-nan"], ["--lora-scale"]),
    (["generate", "--steps", "abc"], ["--steps", "whole number"]),
    (["generate", "--steps", "0"], ["steps must be a whole number from 1 to 1000"]),
    (["generate", "--seed", str(2**64)], ["seed must be a whole number from 0 to 9223372036854775807"]),
    (["generate", "--seed", "9" * 5000], ["--seed", "5000 characters"]),
    (["generate", "--n", "0"], ["num_images"]),
    (["generate", "--resolution", str(10**9)], ["resolution"]),
    (["generate", "--out", "{file}"], ["--out", "choose a folder"]),
    (["evaluate", "--data", "{tmp}/nowhere", "--limit", "0"], ["--limit must be at least 1"]),
    (["evaluate", "--data", "{tmp}/nowhere", "--guidance-scale", "1000"], ["guidance_scale", "0 to 100"]),
    (["evaluate", "--data", "{tmp}/nowhere", "--seed", "-3"], ["seed must be"]),
    (["generate", "--control-end", "1.5"], ["control_end must be a finite number from 0 to 1"]),
    (["generate", "--control-start", "0.7", "--control-end", "0.3"], ["control_start must be less than control_end"]),
    (["evaluate", "--data", "{tmp}/nowhere", "--control-start", "nan"], ["--control-start", "finite"]),
    (["evaluate", "--data", "{tmp}/nowhere", "--sweep", "strength=1,2"], ["unknown setting 'strength'"]),
    (["evaluate", "--data", "{tmp}/nowhere", "--sweep", "control_end=0.5,2"], ["--sweep control_end", "0 to 1"]),
    (["evaluate", "--data", "{tmp}/nowhere", "--sweep", "lora_scale=1", "--sweep", "lora_scale=2"], ["given twice"]),
    (["demo", "--steps", str(2**63)], ["steps must be"]),
    (["data", "synth", "--out", "{tmp}/s", "--num", str(2**64)], ["--num must be a whole number from -2^63 to 2^63-1"]),
    (["data", "build", "--source", "folder", "--root", "x", "--out", "{tmp}/d", "--resolution", "nan"],
     ["--resolution"]),
]


@pytest.mark.parametrize("args, fragments", BAD_NUMBERS, ids=[" ".join(args)[:50] for args, _ in BAD_NUMBERS])
def test_bad_numbers_are_one_line_before_any_work(capsys, tmp_path, args, fragments):
    (tmp_path / "file").write_text("taken")
    args = [arg.format(file=tmp_path / "file", tmp=tmp_path) for arg in args]
    if args[0] == "generate":  # a base that cannot load: the refusal must come first
        args += ["--prompt", "a dress", "--model", str(tmp_path / "no-base")]
    code, err = run_main(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"fsdx {args[0]}") and all(fragment in lines[0] for fragment in fragments), lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("stage, config_name", [("lora", "LoraTrainConfig"), ("controlnet", "ControlNetTrainConfig"),
                                                ("base", "BaseTrainConfig")])
def test_training_options_are_the_config_fields_described_once(stage, config_name, capsys):
    import dataclasses
    import inspect

    from fashionsd_x.train import config as configs
    from fashionsd_x.train.config import field_help

    config_class = getattr(configs, config_name)
    text = " ".join(help_of(capsys, "train", stage).split())
    helps = field_help(config_class)
    own = {"data", "base", "lora", "init"}  # parameters of the entry point, with their own help
    for item in dataclasses.fields(config_class):
        flag = "--" + item.name.replace("_", "-")
        assert flag in text, flag
        if item.name not in own:  # the field's own comment is its help
            assert " ".join(helps[item.name].split())[:30] in text, item.name
    # The entry point names its paths and run controls; every setting comes from the config class, not a copy.
    function = {"lora": "fashionsd_x.train.lora:train_lora", "controlnet": "fashionsd_x.train.controlnet:train_controlnet",
                "base": "fashionsd_x.train.pretrain:train_base"}[stage]
    module, _, name = function.partition(":")
    parameters = set(inspect.signature(getattr(__import__(module, fromlist=[name]), name)).parameters)
    assert not parameters & {item.name for item in dataclasses.fields(config_class)} - {"data", "base", "lora", "init"}


def test_generate_shows_the_projects_output_and_no_third_party_noise(tmp_path):
    sketch = Path(__file__).resolve().parents[1] / "fashionsd_x" / "embedded" / "demo" / "t-shirt.png"
    common = ["generate", "--prompt", "a plain red t-shirt", "--sketch", str(sketch), "--steps", "1", "--n", "1"]
    quiet = fsdx(*common, "--out", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "" and "wrote 1 image(s)" in quiet.stdout
    loud = fsdx(*common, "--out", str(tmp_path / "loud"), "--verbose")  # the libraries' notices come back
    assert loud.returncode == 0 and ("Loading weights" in loud.stderr or "LoRA keys" in loud.stderr)


def test_sweep_is_repeatable_and_each_one_keeps_its_values():
    from fashionsd_x.cli import build_parser, select_command

    argv = ["evaluate", "--data", "d", "--sweep", "controlnet_scale=0.5,1", "--sweep", "control_end=0.6,1",
            "--control-start", "0.1"]
    args = build_parser(select_command(argv)).parse_args(argv)
    assert args.sweep == ["controlnet_scale=0.5,1", "control_end=0.6,1"] and args.control_start == 0.1
    plain = build_parser(select_command(argv[:3])).parse_args(argv[:3])
    assert plain.sweep is None and (plain.control_start, plain.control_end) == (0.0, 1.0)
