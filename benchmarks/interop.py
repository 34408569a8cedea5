"""Do the other tools read FashionSD-X's files with their own code? Not in `make test`: it needs their sources.

    python benchmarks/interop.py --a1111 PATH/stable-diffusion-webui --controlnet-ext PATH/sd-webui-controlnet

A1111: a PNG is generated with the tiny model, a LoRA whose path holds a comma and a ControlNet; its infotext
goes through A1111's own `parse_generation_parameters` (read from the checkout's modules/infotext_utils.py and
run as written, with only the webui's global settings stood in for) and the ControlNet unit through the
extension's own `ControlNetUnit.parse` (internal_controlnet/args.py). The extension uses pydantic 1, as A1111
does: run this with pydantic 1 first on the path (pip install --target DIR 'pydantic<2'; PYTHONPATH=DIR).
Prints each field: what was written, what the parser read, and whether they agree.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tempfile
import types
from pathlib import Path

from PIL import Image

# What A1111's parser must give back, by its own key, from the generation's parameters.
A1111_FIELDS = {"Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "CFG scale":
                "guidance_scale", "Seed": "seed", "Size-1": "resolution", "Size-2": "resolution", "LoRA": "lora",
                "LoRA weight": "lora_scale"}
A1111_NAMES = ("re_param_code", "re_param", "re_imagesize", "unquote", "restore_old_hires_fix_params",
               "parse_generation_parameters")  # what is taken from infotext_utils.py, as written there


def a1111_parser(checkout: Path):
    """A1111's parse_generation_parameters from a checkout, run in a namespace whose `shared`, `processing` and
    `infotext_versions` stand in for the running webui (no styles, nothing skipped, no old hires-fix sizes)."""
    source = (checkout / "modules" / "infotext_utils.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    kept = [node for node in tree.body if _defines(node) & set(A1111_NAMES)]
    opts = types.SimpleNamespace(infotext_styles="Ignore", infotext_skip_pasting=[],
                                 use_old_hires_fix_width_height=False)
    namespace = {"re": re, "json": __import__("json"), "shared": types.SimpleNamespace(opts=opts),
                 "infotext_versions": types.SimpleNamespace(backcompat=lambda res: None),
                 "processing": types.SimpleNamespace()}
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(checkout / "modules/infotext_utils.py"), "exec"),
         namespace)
    return namespace["parse_generation_parameters"]


def _defines(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {target.id for target in node.targets if isinstance(target, ast.Name)}
    return set()


def controlnet_unit_parser(checkout: Path):
    """The extension's ControlNetUnit.parse, with the model and preprocessor lists it fills at start-up standing
    in for a webui that has the unit's model installed."""
    sys.path.insert(0, str(checkout))
    from internal_controlnet.args import ControlNetUnit

    slider = types.SimpleNamespace(minimum=-1, maximum=4096, value=-1)
    ControlNetUnit.cls_match_module = staticmethod(lambda name: True)
    ControlNetUnit.cls_match_model = staticmethod(lambda name: True)
    ControlNetUnit.cls_get_preprocessor = staticmethod(
        lambda name: types.SimpleNamespace(slider_resolution=slider, slider_1=slider, slider_2=slider))
    return ControlNetUnit.parse


def generated_png(folder: Path) -> tuple[Path, dict]:
    """A PNG from the tiny model with a LoRA whose folder name holds a comma, and a ControlNet; its params."""
    import shutil
    from dataclasses import asdict

    from fashionsd_x.generate import GarmentGenerator
    from fashionsd_x.models.embedded import embedded_model

    parts = embedded_model()
    lora = folder / "my lora, v2"
    shutil.copytree(parts.lora, lora)
    generator = GarmentGenerator.load(str(parts.base), lora=lora, controlnet=parts.controlnet, lora_scale=0.8)
    sketch = sorted((parts.base / "demo").glob("*.png"))[0] if (parts.base / "demo").is_dir() else None
    result = generator("a red dress, long sleeves: belted", sketch=sketch, negative_prompt="blurry, low quality",
                       steps=2, seed=11, scheduler="euler_a", guidance_scale=5.5)[0]
    return result.save(folder / "garment.png"), asdict(result.params)


def check_a1111(a1111: Path, extension: Path | None) -> int:
    with tempfile.TemporaryDirectory() as folder:
        png, params = generated_png(Path(folder))
        with Image.open(png) as image:
            infotext = image.text["parameters"]
    print(f"infotext:\n{infotext}\n")
    parsed = a1111_parser(a1111)(infotext)
    failures = 0
    for key, name in A1111_FIELDS.items():
        wrote, read = params[name], parsed.get(key)
        same = str(wrote) == str(read) or (isinstance(wrote, float) and read is not None and float(read) == wrote)
        failures += not same
        print(f"{'ok ' if same else 'BAD'} {key:<16} wrote {wrote!r:<40} A1111 read {read!r}")
    sampler = parsed.get("Sampler")
    print(f"{'ok ' if sampler == 'Euler a' else 'BAD'} {'Sampler':<16} wrote {params['scheduler']!r:<40} "
          f"A1111 read {sampler!r}")
    failures += sampler != "Euler a"
    if extension is not None:
        unit = controlnet_unit_parser(extension)(parsed["ControlNet 0"])
        expected = {"weight": params["controlnet_scale"], "guidance_start": params["control_start"],
                    "guidance_end": params["control_end"], "module": "none", "model": Path(params["controlnet"]).name}
        for field, wrote in expected.items():
            read = getattr(unit, field)
            same = read == wrote
            failures += not same
            print(f"{'ok ' if same else 'BAD'} ControlNet 0 {field:<14} wrote {wrote!r:<28} extension read {read!r}")
        print(f"    ControlNet 0 resize_mode, control_mode: {unit.resize_mode.value}, {unit.control_mode.value}")
    print(f"\n{'all fields read back' if not failures else f'{failures} field(s) differ'}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a1111", type=Path, required=True, help="checkout of stable-diffusion-webui")
    parser.add_argument("--controlnet-ext", type=Path, help="checkout of sd-webui-controlnet")
    args = parser.parse_args()
    return check_a1111(args.a1111, args.controlnet_ext)


if __name__ == "__main__":
    raise SystemExit(main())
