"""Validation images during and after training, made with the pipeline of the model being trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fashionsd_x.files import atomic_path, write_text
from fashionsd_x.train.session import Session


def validate(s: Session, step: int) -> list[Path]:
    """Images for the validation prompts (and sketches) with a fixed seed, to OUT/validation/step_XXXXX/."""
    paths: list[Path] = []
    if s.validation and s.accelerator.is_main_process:
        folder = s.out / "validation" / f"step_{step:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pipeline = s.method.pipeline()
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(s.config.seed)
        images = []
        with s.accelerator.autocast():
            for prompt, sketch in s.validation:
                images.append(pipeline(prompt, num_inference_steps=s.config.validation_steps, generator=generator,
                                       height=s.config.resolution, width=s.config.resolution,
                                       **s.method.validation_inputs(sketch)).images[0])
        for number, image in enumerate(images):
            paths.append(folder / f"{number:02d}.png")
            with atomic_path(paths[-1]) as temporary:
                image.save(temporary, format="PNG")
        write_text(folder / "prompts.txt", "".join(f"{prompt}\n" for prompt, _ in s.validation))
        writer = s.accelerator.get_tracker("tensorboard", unwrap=True)
        writer.add_images("validation", np.stack([np.asarray(image) for image in images]), step, dataformats="NHWC")
    s.accelerator.wait_for_everyone()
    return paths
