"""FashionSD-X: sketch + text to garment images with latent diffusion (Singh and Patras, arXiv 2404.18591)."""

__version__ = "0.1.0"
