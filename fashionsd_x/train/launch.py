"""What each process started by `core.relaunch` runs: python -m fashionsd_x.train.launch CONFIG OUT [RESUME].

CONFIG is the resolved config the launching call wrote (its `stage` picks the trainer), so every process
trains exactly what that call resolved. Expected failures print one line and exit with code 2, as the CLI does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import yaml

from fashionsd_x.train.config import ControlNetTrainConfig, LoraTrainConfig, resolve_config
from fashionsd_x.train.controlnet import ControlNetMethod
from fashionsd_x.train.core import run_training
from fashionsd_x.train.lora import LoraMethod

TRAINERS = {"lora": (LoraTrainConfig, LoraMethod), "controlnet": (ControlNetTrainConfig, ControlNetMethod)}


def main(argv: Sequence[str] | None = None) -> int:
    config_file, out, *rest = sys.argv[1:] if argv is None else argv
    stage = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))["stage"]
    config_class, method_class = TRAINERS[stage]
    try:
        resume = rest[0] if rest and rest[0] else None
        run_training(method_class, resolve_config(config_class, Path(config_file)), Path(out), resume)
    except (ValueError, FileNotFoundError) as error:
        print(f"fsdx train {stage}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
