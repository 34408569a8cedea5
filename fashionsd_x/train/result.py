"""What a training run wrote: TrainResult, also stored as OUT/train_result.json (read by the recipe, the model
card and anyone resuming work on the run)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_NAME = "train_result.json"


@dataclass
class TrainResult:
    """What a training run wrote (also OUT/train_result.json)."""

    out: Path  # the output folder
    stage: str  # lora or controlnet
    weights: Path  # the artifact to load: the LoRA file, or OUT itself for a ControlNet
    steps: int  # optimizer steps done (in total, across resumes)
    epochs: float  # passes over the train split those steps made
    seconds: float  # training time in total, across resumes
    final_loss: float | None  # mean loss of the last step (None if no step ran in this invocation)
    validation: list[Path] = field(default_factory=list)  # the final validation images
    hardware: str = ""  # processes x device and precision of the run (the last invocation's, after a resume)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.update(out=str(self.out), weights=str(self.weights), validation=[str(p) for p in self.validation])
        return values

    @classmethod
    def read(cls, out: Path) -> TrainResult:
        values = json.loads((Path(out) / RESULT_NAME).read_text(encoding="utf-8"))
        values.update(out=Path(values["out"]), weights=Path(values["weights"]),
                      validation=[Path(p) for p in values["validation"]])
        return cls(**values)
