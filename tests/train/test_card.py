"""Model cards a training run writes pass huggingface_hub's own reading of them."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.utils import validate_repo_id

from fashionsd_x.train.card import card_licence


def test_a_training_runs_card_loads_with_a_licence_the_hub_accepts(trained_lora):
    card = ModelCard.load(trained_lora / "README.md")
    metadata = metadata_load(trained_lora / "README.md")
    assert card.data.to_dict() == metadata
    assert metadata["license"] == "other" and metadata["license_name"] == "base-model-license"
    assert metadata["license_link"] and "base_model" not in metadata  # a local base is no Hub id
    assert metadata["library_name"] == "diffusers" and "lora" in metadata["tags"]


@pytest.mark.parametrize(("base", "expected"), [
    ("tiny", {"license": "apache-2.0"}),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5",
     {"base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "license": "other",
      "license_name": "base-model-license",
      "license_link": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"}),
    ("/models/sd15.safetensors", {"license": "other", "license_name": "base-model-license",
                                  "license_link": "README.md"}),
])
def test_the_licence_and_base_model_follow_the_base(base, expected):
    licence = card_licence(base)
    assert licence == expected
    if "base_model" in licence:
        validate_repo_id(licence["base_model"])
    if licence["license"] == "other":  # the Hub asks for both with "other"
        assert licence["license_name"] == licence["license_name"].lower() and licence["license_link"]

