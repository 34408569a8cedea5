"""The README is the front door: its Python blocks run (with the embedded model standing in for hub ids and
training runs), its figures are the shipped model's, its links resolve and its quick start is the one CI runs.

The block runner here serves tests/test_docs.py too, for every page under docs/.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize
from fashionsd_x.models.embedded import EMBEDDED_DIR

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250  # purpose, quick start, one example per stage, one table of figures; the rest is in docs/
QUICK_START = ("```bash\n"
               "make demo   # sets up .venv, then runs the main job on the embedded default\n"
               "make test   # sets up .venv, then runs the test suite\n"
               "```\n")
FENCE = re.compile(r"(`{3,}|~{3,})\s*([\w+-]*)")
# An HTML comment on the line before a fence keeps that block from running: `<!-- not-run: why -->`. Only for a
# block that cannot run offline (a hub download, a GPU); the reason is required and shown as the skip reason.
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(\S.*?)\s*-->")
STAND_INS = {  # what an example names -> what this machine has (no network, no training runs)
    '"stable-diffusion-v1-5/stable-diffusion-v1-5"': "str(EMBEDDED_DIR)",
    '"runs/lora"': 'str(EMBEDDED_DIR / "lora")',
    '"runs/controlnet"': 'str(EMBEDDED_DIR / "controlnet")',
}
DATASETS = ("my_data", "datasets/dresscode")  # dataset folders examples load: built from a few synthetic garments
SKETCH = "tee_sketch.png"  # the sketch file examples name: the demo's t-shirt


@dataclass(frozen=True)
class Block:
    """A ```python block of a Markdown page."""

    page: Path
    line: int  # 1-based line of its opening fence
    code: str
    not_run: str | None  # the reason of a not-run marker on the line before the fence, if any

    @property
    def name(self) -> str:
        return f"{self.page.name}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    """The page's top-level python blocks (a python fence shown inside a longer fence is not one)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = FENCE.fullmatch(lines[index].strip())
        if not match:
            index += 1
            continue
        fence, info = match.groups()
        end = next((j for j in range(index + 1, len(lines))
                    if set(lines[j].strip()) == {fence[0]} and len(lines[j].strip()) >= len(fence)), len(lines))
        if info == "python":
            indent = len(lines[index]) - len(lines[index].lstrip())
            code = "\n".join(line[indent:] for line in lines[index + 1:end]) + "\n"
            before = next((line for line in reversed(lines[:index]) if line.strip()), "")
            marker = NOT_RUN.search(before)
            blocks.append(Block(page, index + 1, code, marker.group(1) if marker else None))
        index = end + 1
    return blocks


def run_block(block: Block, folder: Path) -> None:
    """Run a block in FOLDER (the working directory), with stand-ins for what it names that this machine lacks."""
    if block.not_run:
        pytest.skip(f"{block.name} is marked not-run: {block.not_run}")
    code = block.code
    for name, stand_in in STAND_INS.items():
        code = code.replace(name, stand_in)
    for dataset in DATASETS:  # a dataset built the way the examples build theirs, from a few synthetic garments
        if f'"{dataset}"' in code:
            build_dataset("folder", synthesize(folder / "raw", num=6, seed=0, size=64), folder / dataset,
                          resolution=64, test_fraction=0.34)
    shutil.copy(EMBEDDED_DIR / "demo" / "t-shirt.png", folder / SKETCH)
    exec(compile(code, f"{block.page.name} python block at line {block.line}", "exec"), {"EMBEDDED_DIR": EMBEDDED_DIR})


def test_the_readme_has_python_examples():
    assert len(python_blocks(README)) >= 3


@pytest.mark.parametrize("block", python_blocks(README), ids=lambda block: block.name)
def test_readme_python_block_runs(block, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    run_block(block, tmp_path)


def test_the_readme_is_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_README_LINES


def test_the_quick_start_is_what_ci_runs():
    assert QUICK_START in README.read_text(encoding="utf-8")
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.MULTILINE)


def test_readme_links_resolve():
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [target for target in targets if "://" not in target]
    assert local and [target for target in local if not (ROOT / target).exists()] == []


def test_readme_figures_are_the_shipped_models():
    """The README's one table of figures is what the shipped metrics.json and recipe.json hold, to 3 places, and
    its sentence about them names the settings and sizes those files record."""
    text = README.read_text(encoding="utf-8")
    metrics = json.loads((EMBEDDED_DIR / "metrics.json").read_text(encoding="utf-8"))
    styles = json.loads((EMBEDDED_DIR / "recipe.json").read_text(encoding="utf-8"))["stages"]["evaluate"]["styles"]
    guidance = json.loads((EMBEDDED_DIR / "generation_defaults.json").read_text(encoding="utf-8"))["guidance_scale"]
    rows = {line.split("|")[1].split()[0]: [cell.strip() for cell in line.strip().strip("|").split("|")[1:]]
            for line in text.splitlines() if re.match(r"\| (vanilla|lora|fashionsd-x) ", line)}
    assert set(rows) == {"vanilla", "lora", "fashionsd-x"}
    for variant, cells in rows.items():
        held_out = metrics["variants"][variant]
        expected = [f"{held_out[name]:.3f}" for name in
                    ("silhouette_iou", "color_accuracy", "pattern_accuracy", "sketch_mse", "ssim")]
        assert cells == expected + [f"{styles['variants'][variant]['silhouette_iou']:.3f}"], variant
    settings, flat = metrics["settings"], " ".join(text.split())
    assert settings["guidance_scale"] == guidance
    assert f"own guidance ({guidance:g}), {settings['steps']} steps, seed {settings['seed']}" in flat
    assert f"{metrics['num_items']} garments" in flat and f"{styles['items']} drawings" in flat
