"""The shared loop: seeded order, data-parallel processes, gradient checkpointing, mixed precision."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from fashionsd_x.train.data import EpochSampler
from fashionsd_x.train.lora import LORA_WEIGHTS, train_lora
from tests.train.conftest import FAST, RUN


def test_epoch_order_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(10, seed=7)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(10))
    assert list(EpochSampler(10, seed=8)) != orders[0]


def test_two_cpu_processes_train_data_parallel(garments, tiny_base, tmp_path):
    out = tmp_path / "ddp"
    result = train_lora(garments, str(tiny_base), out, max_steps=2, batch_size=2, resolution=32, num_processes=2,
                        overrides=FAST)
    assert result.steps == 2 and (out / LORA_WEIGHTS).is_file()
    # Each step saw 2 processes x 2 samples: two steps are one epoch of the 8 garments.
    assert result.epochs == 1.0 and "2 x " in (out / "README.md").read_text()


def test_gradient_checkpointing_and_accumulation_keep_the_result(garments, tiny_base, tmp_path):
    plain = train_lora(garments, str(tiny_base), tmp_path / "plain", **RUN, overrides=FAST)
    checkpointed = train_lora(garments, str(tiny_base), tmp_path / "checkpointed", **RUN,
                              overrides={**FAST, "gradient_checkpointing": "true"})
    assert abs(plain.final_loss - checkpointed.final_loss) < 1e-5
    expected = load_file(tmp_path / "plain" / LORA_WEIGHTS)
    for name, tensor in load_file(tmp_path / "checkpointed" / LORA_WEIGHTS).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-6)
    # Two micro-batches of 2 per step see the same samples, noise and timesteps as one batch of 4 only up to the
    # per-micro-batch generator, so accumulation is checked to train (finite, same number of steps), not to match.
    accumulated = train_lora(garments, str(tiny_base), tmp_path / "accumulated", **{**RUN, "batch_size": 2},
                             grad_accum=2, overrides=FAST)
    assert accumulated.steps == 4 and accumulated.epochs == 2.0


def test_bf16_mixed_precision_trains_on_cpu(garments, tiny_base, tmp_path):
    result = train_lora(garments, str(tiny_base), tmp_path / "bf16", **RUN, mixed_precision="bf16", overrides=FAST)
    assert torch.isfinite(torch.tensor(result.final_loss))
    weights = load_file(tmp_path / "bf16" / LORA_WEIGHTS)
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())  # trainable parameters stay fp32
