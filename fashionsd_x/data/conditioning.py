"""Sketch -> the ControlNet conditioning tensor, the same in training and in generation.

ControlNet learns whatever polarity and scaling it is trained on, so a sketch fed at generation time must go
through exactly the preprocessing it saw in training: `fashionsd_x.train.controlnet` builds every training
batch with `control_image`, and the generation stage must call it too (never its own resize/normalise).

Polarity: sketches are stored as `extract_sketch` makes them, black lines (0) on white (255), and are given
to the model that way: values in [0, 1] with lines near 0. `invert=True` (white lines on black) exists only
for ControlNets trained with that polarity, e.g. community scribble models; a FashionSD-X ControlNet records
the choice as `invert_sketch` in its train_config.yaml.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fashionsd_x.data.images import pad_to_square


def control_image(sketch: Image.Image | np.ndarray, resolution: int, invert: bool = False) -> torch.Tensor:
    """A sketch of any size and aspect ratio as a 3 x resolution x resolution float tensor in [0, 1].

    The sketch is padded with white to a centred square (never cropped, like the dataset's images), so a
    portrait sketch lines up with the garment the model draws. `np.ndarray` input is uint8, H x W or H x W x C.
    StableDiffusionControlNetPipeline takes the result as `image=` unchanged (its processor does not
    re-normalise [0, 1] tensors).
    """
    if isinstance(sketch, np.ndarray):
        sketch = Image.fromarray(_as_uint8(sketch))
    square = pad_to_square(sketch.convert("RGB"), resolution)
    pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    # Inverting after padding keeps the padding the background colour of the chosen polarity.
    return 1.0 - pixels if invert else pixels


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ValueError(f"a sketch array must be uint8 (0 = line, 255 = paper), got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        return array[:, :, 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"a sketch array must be H x W or H x W x C, got shape {array.shape}")
    return array
