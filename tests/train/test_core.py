"""The shared loop: seeded order, data-parallel processes, gradient checkpointing, accumulation equal to a large
batch, mixed precision in effect."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from safetensors.torch import load_file

from fashionsd_x.train.config import LoraTrainConfig, resolve_config
from fashionsd_x.train.core import accumulate, draw, micro_batch_loss, micro_batches
from fashionsd_x.train.data import REQUIRED_COLUMNS, EpochSampler, open_dataset
from fashionsd_x.train.lora import LORA_WEIGHTS, LoraMethod, train_lora
from fashionsd_x.train.session import Session, open_session
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


def test_gradient_checkpointing_keeps_the_result(garments, tiny_base, tmp_path):
    plain = train_lora(garments, str(tiny_base), tmp_path / "plain", **RUN, overrides=FAST)
    checkpointed = train_lora(garments, str(tiny_base), tmp_path / "checkpointed", **RUN,
                              overrides={**FAST, "gradient_checkpointing": "true"})
    assert abs(plain.final_loss - checkpointed.final_loss) < 1e-5
    expected = load_file(tmp_path / "plain" / LORA_WEIGHTS)
    for name, tensor in load_file(tmp_path / "checkpointed" / LORA_WEIGHTS).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-6)


@contextlib.contextmanager
def lora_session(garments, tiny_base, out, **settings) -> Iterator[Session]:
    """A LoRA run set up up to its first step (nothing trained), by the loop's own open_session."""
    # Flips, caption dropout and offset noise: every draw the accumulated micro-batches must share with the batch.
    # lora_dropout 0: dropout masks would differ between the two computations. B != 0, so every adapter learns.
    overrides = {**FAST, "random_flip": "true", "caption_dropout": "0.5", "noise_offset": "0.1", "snr_gamma": "5",
                 "lora_dropout": "0.0", "lora_init": "random"}
    config = resolve_config(LoraTrainConfig, None, overrides, data=str(garments), base=str(tiny_base), max_steps=1,
                            batch_size=4, resolution=32, seed=3, **settings)
    with open_session(LoraMethod, config, out, open_dataset(garments, REQUIRED_COLUMNS)) as session:
        yield session


def gradients(s: Session, micro: list, count: int) -> dict[str, torch.Tensor]:
    """The trainable parameters' gradients after the loop's accumulate() over `micro` (from zero)."""
    s.optimizer.zero_grad(set_to_none=True)
    accumulate(s, micro, count)
    return {name: p.grad.clone() for name, p in s.method.prepared[0].named_parameters() if p.requires_grad}


def test_accumulated_micro_batches_give_the_gradient_of_one_large_batch(garments, tiny_base, tmp_path):
    with lora_session(garments, tiny_base, tmp_path) as s:
        batch = next(micro_batches(s.accelerator, s.loader, 0))
        draws = draw(s, batch, 0)  # the large batch's draws, shared row for row by its two halves
        halves = [({key: value[rows] for key, value in batch.items()}, draws.rows(rows))
                  for rows in (slice(0, 2), slice(2, 4))]
        large = gradients(s, [(batch, draws)], 1)  # batch 4, accumulation 1
        accumulated = gradients(s, halves, 2)  # batch 2, accumulation 2
        summed = gradients(s, halves, 1)  # what forgetting to divide by the micro-batch count would give
    assert large.keys() == accumulated.keys() and len(large) > 0
    assert all(gradient.abs().max() > 0 for gradient in large.values())
    for name, gradient in large.items():
        torch.testing.assert_close(accumulated[name], gradient, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(summed[name], 2 * gradient, rtol=1e-4, atol=1e-8)


def test_bf16_is_in_effect_inside_the_training_step(garments, tiny_base, tmp_path):
    seen = {}
    for precision in ("bf16", "no"):
        with lora_session(garments, tiny_base, tmp_path / precision, mixed_precision=precision) as s:
            unet = s.method.prepared[0]
            projection = next(module for name, module in unet.named_modules() if name.endswith("attn1.to_q"))
            hook = projection.register_forward_hook(lambda module, inputs, output, precision=precision: seen.update(
                {precision: (output.dtype, torch.is_autocast_enabled("cpu"))}))
            batch = next(micro_batches(s.accelerator, s.loader, 0))
            loss = micro_batch_loss(s, batch, draw(s, batch, 0))
            hook.remove()
            frozen = {s.base.vae.dtype, s.base.text_encoder.dtype,
                      *(p.dtype for name, p in unet.named_parameters() if not p.requires_grad)}
            trainable = {p.dtype for p in unet.parameters() if p.requires_grad}
        assert loss.dtype == torch.float32 and torch.isfinite(loss)  # the loss is computed in float32 either way
        assert trainable == {torch.float32}  # trainable parameters stay float32 (updates would round away)
        assert frozen == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
    # Activations of the adapted attention run in bfloat16 under autocast, and in float32 without it.
    assert seen == {"bf16": (torch.bfloat16, True), "no": (torch.float32, False)}


def test_loss_is_logged_every_log_every_steps_and_at_the_last(garments, tiny_base, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_lora(garments, str(tiny_base), tmp_path, **{**RUN, "max_steps": 5}, overrides={**FAST, "log_every": "2"})
    accumulator = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("loss")] == [2, 4, 5]


def test_compile_and_memory_layout_leave_the_state_dicts_as_they_were(garments, tiny_base, tmp_path):
    # Compiled in place (nn.Module.compile): no "_orig_mod." prefix, so checkpoints and artifacts keep their names.
    with lora_session(garments, tiny_base, tmp_path, compile=True) as s:
        unet = s.method.prepared[0]
        assert unet._compiled_call_impl is not None
        assert not any("_orig_mod" in name for name in unet.state_dict())
        convolution = next(module for module in unet.modules() if isinstance(module, torch.nn.Conv2d))
        assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
        assert s.optimizer.optimizer.defaults["fused"] is True  # one kernel per tensor, not a Python loop
