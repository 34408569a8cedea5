"""Dataset stage: garment photos with captions -> Hugging Face datasets with a sketch per garment."""
