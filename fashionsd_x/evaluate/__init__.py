"""Evaluation stage: the paper's metrics (FID, KID, CLIP score, SSIM, sketch MSE) and attribute checks."""
