"""Model components: loading a Stable Diffusion base, the tiny architecture, the shipped model."""
