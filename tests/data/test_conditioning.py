"""The ControlNet conditioning tensor: one preparation of a sketch for training and generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashionsd_x.data.conditioning import control_image
from tests.train.test_controlnet import sketch


def test_control_image_keeps_polarity_and_pads_any_aspect_ratio():
    drawn = sketch("dress")
    tensor = control_image(drawn, 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() == 0.0 and tensor.max() == 1.0  # black lines stay 0, paper stays 1: no inversion
    assert torch.all(tensor[:, :, :3] == 1.0)  # the portrait sketch is padded with white at the sides
    assert (tensor < 0.5).float().mean() < 0.3  # mostly paper
    assert torch.equal(control_image(np.asarray(drawn), 32), tensor)  # arrays give the same tensor
    assert torch.equal(control_image(drawn, 32, invert=True), 1.0 - tensor)
    with pytest.raises(ValueError, match="uint8"):
        control_image(np.zeros((8, 8), dtype=np.float32), 32)
