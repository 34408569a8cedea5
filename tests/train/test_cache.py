"""The latent cache: training from it equals encoding every batch; it is built once and reused."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from fashionsd_x.train.lora import LORA_WEIGHTS, train_lora
from tests.train.conftest import FAST, RUN


def test_cached_latents_train_like_encoding_every_batch(garments, tiny_base, tmp_path):
    # Flip and caption dropout on: the cache holds both orientations and the empty caption, and the step draws
    # the same flips, dropouts and posterior samples either way.
    augmented = {**FAST, "random_flip": "true", "caption_dropout": "0.5"}
    plain = train_lora(garments, str(tiny_base), tmp_path / "plain", **RUN, overrides=augmented)
    cached = train_lora(garments, str(tiny_base), tmp_path / "cached", **RUN, cache_latents=True, overrides=augmented)
    assert abs(plain.final_loss - cached.final_loss) < 1e-4
    expected, got = load_file(tmp_path / "plain" / LORA_WEIGHTS), load_file(tmp_path / "cached" / LORA_WEIGHTS)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-5)
    # A second run reuses the cache instead of encoding again.
    cache_dir = tmp_path / "shared_cache"
    overrides = {**augmented, "cache_dir": str(cache_dir)}
    train_lora(garments, str(tiny_base), tmp_path / "first", **RUN, cache_latents=True, overrides=overrides)
    [folder] = list(cache_dir.iterdir())
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    again = train_lora(garments, str(tiny_base), tmp_path / "second", **RUN, cache_latents=True, overrides=overrides)
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps
    assert torch.isfinite(torch.tensor(again.final_loss))
    shard = load_file(folder / "shard-00000.safetensors")
    assert shard["latent_mean"].shape == (8, 2, 4, 16, 16)  # both orientations of every image
    assert not torch.equal(shard["latent_mean"][:, 0], shard["latent_mean"][:, 1])
