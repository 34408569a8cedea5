"""The numeric options of `fsdx` under random values (hypothesis): a valid result or one line and exit 2.

`fsdx generate` runs in this process with the tiny base and a LoRA; every value is checked before the model
loads, so most examples end in milliseconds, and the valid ones that would be slow (many steps, images or
pixels) are left to the range tests. Other commands get a path that does not exist, so whatever numbers they
are given, the answer is one line and exit 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from fashionsd_x.cli import main
from tests.test_generate import _save_lora

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SPECIAL = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "0", "-0", "1", "2", "1.5", "16", "32",
           "", " ", "abc", "0x10", "1_0", "\u0663", " 2 ", "2**64", str(2**63 - 1), str(2**63), str(2**64),
           str(-2**63 - 1), "9" * 5000]
values = (st.sampled_from(SPECIAL) | st.integers().map(str) | st.integers(-3, 40).map(str)
          | st.floats().map(repr) | st.text(max_size=8))
GENERATE_OPTIONS = ("n", "seed", "steps", "guidance-scale", "controlnet-scale", "lora-scale", "resolution")
CHEAP_DEFAULTS = {"steps": "1", "n": "1", "resolution": "32"}  # fuzzed values override these
SLOW = {"steps": 3, "n": 2, "resolution": 32}  # valid values above these would make an example slow


def fsdx(*args: str) -> tuple[int, list[str]]:
    """`fsdx ARGS` in this process: the exit code and stderr's non-empty lines; an exception propagates."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse's way out
            code = stop.code
    return code, [line for line in stderr.getvalue().splitlines() if line.strip()]


def number(text: str) -> float | None:
    """What the CLI would read from `text`, if a number."""
    for kind in (int, float):
        try:
            return kind(text)
        except (ValueError, OverflowError):
            continue
    return None


def assert_one_line_error(code: int, lines: list[str], command: str) -> None:
    errors = [line for line in lines if line.startswith(f"fsdx {command}: error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], lines  # loading bars may come before it
    assert not any("Traceback" in line for line in lines)


@pytest.fixture(scope="module")
def lora(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_lora(tiny_base, tmp_path_factory.mktemp("fuzz_lora") / "lora", 0)


@FUZZ
@given(options=st.dictionaries(st.sampled_from(GENERATE_OPTIONS), values, min_size=1, max_size=3))
@example(options={"guidance-scale": "nan"})
@example(options={"guidance-scale": "inf"})
@example(options={"seed": str(2**64)})
@example(options={"seed": str(2**63 - 1)})
@example(options={"lora-scale": "-0.5", "guidance-scale": "1e2"})
def test_generate_numbers(tiny_base, lora, tmp_path_factory, one_thread, options):
    chosen = {**CHEAP_DEFAULTS, **options}
    for name, highest in SLOW.items():
        value = number(chosen[name])
        # Valid but slow: the range tests cover these values.
        assume(not (value is not None and highest < value <= 2048))  # False for NaN too
    out = tmp_path_factory.mktemp("fuzz_generate") / "out"
    code, lines = fsdx("generate", "--model", str(tiny_base), "--lora", str(lora), "--prompt", "a red dress",
                       "--out", str(out), *(f"--{name}={value}" for name, value in chosen.items()))
    if code != 0:
        assert_one_line_error(code, lines, "generate")
        assert not out.exists()  # nothing is created for a refused input
        return
    rows = [json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} in generations.jsonl"))
            for line in (out / "generations.jsonl").read_text().splitlines()]
    first = int(number(chosen["seed"]) if "seed" in chosen else 0)
    assert [row["seed"] for row in rows] == [first + k for k in range(int(number(chosen["n"])))]
    for row in rows:
        assert row["steps"] == int(number(chosen["steps"]))
        pixels = np.asarray(Image.open(out / row["file"]))
        assert pixels.shape == (32, 32, 3)


OTHER_COMMANDS = {  # command -> (arguments naming something that is not there, its numeric options)
    "evaluate": (["--data", "{nowhere}"], ("limit", "steps", "seed", "guidance-scale", "resolution")),
    "demo": (["--model", "{nowhere}", "--out", "{out}"], ("steps", "seed", "guidance-scale")),
    "data build": (["--source", "folder", "--root", "{nowhere}", "--out", "{out}"],
                   ("resolution", "block-size", "offset", "num-proc", "limit", "test-fraction")),
    "study create": (["--from", "{nowhere}", "--out", "{out}"], ("per-rater", "seed")),
    "study serve": (["{nowhere}"], ("port", "max-body")),
}


@FUZZ
@given(command=st.sampled_from(sorted(OTHER_COMMANDS)), data=st.data())
def test_other_commands_numbers(tmp_path_factory, command, data):
    fixed, numeric = OTHER_COMMANDS[command]
    options = data.draw(st.dictionaries(st.sampled_from(numeric), values, min_size=1, max_size=3))
    folder = tmp_path_factory.mktemp("fuzz_other")
    args = [arg.format(nowhere=folder / "nowhere", out=folder / "out") for arg in fixed]
    code, lines = fsdx(*command.split(), *args, *(f"--{name}={value}" for name, value in options.items()))
    assert_one_line_error(code, lines, command)
