"""Where the garment is in a flat-lay photo: the region evaluation scores silhouettes with and the ControlNet's
consistency loss (train/consistency.py) is trained towards."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from fashionsd_x.data.images import to_rgb

BACKGROUND_THRESHOLD = 245  # a pixel with every channel at or above this is background (white paper)


def garment_mask(image: Image.Image, threshold: int = BACKGROUND_THRESHOLD) -> np.ndarray:
    """Bool (H, W): the garment on a white background, as one filled region.

    A pixel is garment when any channel is below THRESHOLD (white cloth is still off-white); a closing bridges
    specular highlights that reach the threshold, the largest 8-connected region is the garment (specks and
    stray marks are dropped) and its holes are filled. Meant for flat-lays on white (the synthetic catalogue,
    in-shop photos), not for scenes.
    """
    rgb = np.asarray(to_rgb(image))
    ink = (rgb < threshold).any(axis=2)
    radius = max(1, round(min(ink.shape) / 128))  # 1 px up to 191 px, 4 px at 512
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    ink = cv2.morphologyEx(ink.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    return ndimage.binary_fill_holes(largest_component(ink))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Bool: the largest 8-connected region of MASK (all False when MASK is empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # label 0 is the background
