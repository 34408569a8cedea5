"""Tiny real models for the metric tests, built offline: a random CLIP folder and random Inception weights."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torchvision
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from fashionsd_x.models.tokenizer import clip_tokenizer

CLIP_IMAGE_SIZE = 32


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the Hub: an accidental download fails at once instead of retrying for 20 s."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so Inception weights a developer downloaded never leak into a test."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP with hidden size 32 and random weights, saved with the real CLIP tokenizer and a 32 px processor."""
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                max_position_embeddings=77)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  image_size=CLIP_IMAGE_SIZE, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    images = CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE_SIZE},
                                crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE})
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=clip_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights-only state dict with the FID Inception's keys and shapes (torchvision's Inception3 names, 1008
    classes, as pytorch-fid's and torch-fidelity's files have) and random values.

    Random convolutions shrink (or blow up) activations layer after layer, so the batch-norm statistics are
    measured on two noise images: features then are of order 1, as with the real weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        for layer in network.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.momentum = None  # running statistics = this batch's
        with torch.no_grad():
            network.train()(torch.rand(2, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path
