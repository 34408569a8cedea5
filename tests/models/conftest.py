"""Tiny bases shared by the model tests (built once per session) and an offline Hub for every test here."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest

from fashionsd_x.models.tiny import TinyConfig, build_tiny_base


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the Hub: HF_HUB_OFFLINE=1 for subprocesses, and the flag huggingface_hub already read
    at import time for this process (so an accidental Hub call fails at once instead of retrying for 20 s)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-px epsilon tiny base as a diffusers folder; tests copy it before changing it."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_v_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture trained for v-prediction (SD 2.x 768-v style), other random weights."""
    config = TinyConfig(prediction_type="v_prediction")
    return build_tiny_base(tmp_path_factory.mktemp("tiny_v") / "base", config, seed=1)
