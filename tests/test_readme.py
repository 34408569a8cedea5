"""Every Python block of the README runs, with the embedded model standing in for hub ids and training runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize
from fashionsd_x.models.embedded import EMBEDDED_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
STAND_INS = {  # what a README example names -> what this machine has (no network, no training runs)
    '"stable-diffusion-v1-5/stable-diffusion-v1-5"': "str(EMBEDDED_DIR)",
    '"runs/lora"': 'str(EMBEDDED_DIR / "lora")',
    '"runs/controlnet"': 'str(EMBEDDED_DIR / "controlnet")',
}


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, one_thread):
    code = python_blocks()[index]
    for name, stand_in in STAND_INS.items():
        code = code.replace(name, stand_in)
    monkeypatch.chdir(tmp_path)
    if "datasets/dresscode" in code:  # a dataset built the README's way, from a few synthetic garments
        build_dataset("folder", synthesize(tmp_path / "raw", num=6, seed=0, size=64), Path("datasets/dresscode"),
                      resolution=64, test_fraction=0.34)
    shutil.copy(EMBEDDED_DIR / "demo" / "t-shirt.png", tmp_path / "tee_sketch.png")
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"EMBEDDED_DIR": EMBEDDED_DIR})
