"""Sketch-consistency loss for ControlNet training, after ControlNet++ (Li et al. 2024).

The denoising loss only asks the ControlNet to predict the noise; nothing checks that the garment it steers
towards has the sketch's shape, and a small ControlNet learns the shape loosely (legs merged, a sleeve lost, a
white garment fading into the paper). ControlNet++ closes that loop: from the step's own prediction it recovers
the clean latents, decodes them to an image with the frozen VAE, re-extracts the condition from that image with a
differentiable extractor and penalises the difference from the input condition. Here the condition that matters
is the garment's region, so the extractor is a soft version of the garment mask evaluation scores silhouettes
with (data.regions.garment_mask: any channel darker than the paper) and the difference is one minus the soft IoU.

Unlike ControlNet++, which applies its reward only at timesteps up to 200, every timestep counts, weighted by
its signal fraction alpha_bar_t: a silhouette is decided early in sampling, when the recovered image is a blur
whose outline is still readable, while at t near 1000 the recovered image is mostly noise and weighs nothing.
"""

from __future__ import annotations

import torch

from fashionsd_x.data.regions import BACKGROUND_THRESHOLD
from fashionsd_x.models.base import Base

# The soft mask's temperature in the VAE's [-1, 1] pixel range: 0.02 is about 2.5 grey levels, so pixels a few
# levels either side of the threshold pass gradient (a hard threshold passes none) while white paper, 10 levels
# above it, reads as 0.02 garment (at 0.05 it read as 0.17, and the paper would weigh in every union).
SOFT_MASK_TEMPERATURE = 0.02
PAPER = BACKGROUND_THRESHOLD / 127.5 - 1.0  # the background threshold in [-1, 1]


def predicted_clean_latents(noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor,
                            alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x0 recovered in one step from x_t and the model's epsilon or v prediction (DDPM's forward process)."""
    alpha = alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
    signal, noise = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        return signal * noisy - noise * prediction.float()
    return (noisy - noise * prediction.float()) / signal


def soft_garment(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images in [-1, 1] -> (N, 1, H, W) in (0, 1): how surely each pixel is garment, not paper.

    The smooth counterpart of garment_mask's test (any channel below the paper threshold): the darkest channel,
    below PAPER, through a sigmoid.
    """
    darkest = images.float().amin(dim=1, keepdim=True)
    return torch.sigmoid((PAPER - darkest) / SOFT_MASK_TEMPERATURE)


def soft_iou_loss(soft: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,): one minus the soft IoU (Jaccard) of each soft mask with its binary target region."""
    target = target.float()
    intersection = (soft * target).sum(dim=(1, 2, 3))
    union = (soft + target - soft * target).sum(dim=(1, 2, 3))
    return 1.0 - intersection / union.clamp_min(1.0)


def consistency_loss(base: Base, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor,
                     regions: torch.Tensor) -> torch.Tensor:
    """The batch's mean of alpha_bar_t * (1 - soft IoU) between the decoded prediction's garment and REGIONS.

    REGIONS: (N, 1, H, W) bool or 0/1, the garment's region at the training resolution (the sketch's interior).
    The VAE is frozen; the gradient flows through its decoder into the prediction, so into the ControlNet.
    """
    scheduler = base.noise_scheduler
    clean = predicted_clean_latents(noisy, prediction, timesteps, scheduler.alphas_cumprod,
                                    scheduler.config.prediction_type)
    vae = base.vae
    images = vae.decode((clean / vae.config.scaling_factor).to(vae.dtype)).sample
    weight = scheduler.alphas_cumprod.to(noisy.device)[timesteps].float()
    return (weight * soft_iou_loss(soft_garment(images), regions.to(images.device))).mean()
