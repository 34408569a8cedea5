"""What LoRA and ControlNet training share: the loop, the denoising loss, checkpoints, resume, logging (the
run's set-up is in session.py, validation images in validation.py, the trainers' Method in method.py).

A trainer is a `Method` (what is trainable, how the model predicts, how it is saved); everything else is
here. Every random draw of a micro-batch (flip, caption dropout, VAE posterior sample, noise, timesteps) is made
for the whole global micro-batch (every process's samples, in process order) from a generator seeded by (seed,
micro-batch index), and each process keeps its own rows; each epoch's order comes from (seed, epoch). So a run is
a pure function of its config and data, whatever the number of processes or machines sharing its global batch:
N processes of batch B train the weights one process of batch N*B does (exactly when the train split is a
multiple of N*B: otherwise accelerate fills each process's last batch of an epoch from the epoch's start, where
one process takes a short batch), and a run resumed from a checkpoint (which skips the batches already consumed)
ends with the same weights as one that was never interrupted.

Several machines: `train` re-launches itself through `accelerate launch` with the multi-node settings
(`Machines`), or runs under a launcher started on each machine (accelerate launch, torchrun, srun). A process
that loses contact with the others (a node killed, the network gone) stops with a one-line PeerLostError, after
at most FSDX_PEER_TIMEOUT seconds (session.py) when the peer vanished without closing its connections.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from torch.profiler import record_function
from tqdm.auto import tqdm

from fashionsd_x.files import write_text
from fashionsd_x.train.card import write_card
from fashionsd_x.train.checkpoints import complete_checkpoints, load_checkpoint, save_checkpoint
from fashionsd_x.train.config import ConfigError, TrainConfig
from fashionsd_x.train.data import REQUIRED_COLUMNS, derive_seed, open_dataset
from fashionsd_x.train.method import Method
from fashionsd_x.train.result import RESULT_NAME, TrainResult
from fashionsd_x.train.session import (
    PEER_TIMEOUT_VARIABLE,
    Session,
    checkpoint_to_resume,
    hardware,
    launched_processes,
    open_session,
    planned_steps,
    run_hparams,
)
from fashionsd_x.train.validation import validate

CONFIG_NAME = "train_config.yaml"
CONFIG_METADATA_KEY = "fashionsd_x_train_config"  # the resolved config (YAML) inside every weights file
FLIPPED = ("control", "region")  # per-sample image-shaped inputs mirrored with the image
AUGMENT_STREAM = 0xA06  # seeds the per-sample augmentation apart from the step's other draws


class NonFiniteLossError(ValueError):
    """The loss or gradient became NaN/inf; the run stopped before the update, keeping the last checkpoint."""


class LaunchError(ValueError):
    """The re-launched training processes failed; their own messages were printed above."""


class PeerLostError(ValueError):
    """This process lost contact with another process of the run (its node stopped, or the network failed)."""


@dataclass(frozen=True)
class Machines:
    """The machines (nodes) one run spans, and which of them this one is; accelerate launch's multi-node flags."""

    count: int = 1  # machines taking part, each running the same command
    rank: int = 0  # this machine's number; machine 0 hosts the rendezvous and writes every file
    address: str | None = None  # IP or host name of machine 0, as every machine reaches it
    port: int = 29500  # rendezvous port on machine 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"num_machines must be at least 1, got {self.count}")
        if not 0 <= self.rank < self.count:
            raise ConfigError(f"machine_rank must be in 0..{self.count - 1} (num_machines {self.count}), "
                              f"got {self.rank}")
        if self.count > 1 and not self.address:
            raise ConfigError("num_machines > 1 needs main_process_ip: the address of machine 0")
        if not 0 < self.port < 65536:
            raise ConfigError(f"main_process_port must be a TCP port (1-65535), got {self.port}")

    def launch_flags(self) -> list[str]:
        """accelerate launch's options for these machines (a free local port when all is on one machine)."""
        if self.count == 1:
            return ["--num_machines", "1", "--main_process_port", str(_free_port())]
        return ["--num_machines", str(self.count), "--machine_rank", str(self.rank),
                "--main_process_ip", str(self.address), "--main_process_port", str(self.port)]


def train(method_class: type[Method], config: TrainConfig, out: Path, resume: str | None,
          num_processes: int, machines: Machines = Machines()) -> TrainResult:
    """Run a training stage here, or re-launch it through accelerate on `num_processes` processes in all,
    spread over `machines` (this machine's share: num_processes / machines.count)."""
    if num_processes < 1:
        raise ConfigError(f"num_processes must be at least 1, got {num_processes}")
    launched = launched_processes()
    if launched > 1:  # under accelerate launch, torchrun or srun: this is one of the run's processes
        if num_processes not in (1, launched) or machines.count > 1:
            raise ConfigError(f"this process is one of {launched} started by a launcher, so "
                              "num_processes and num_machines are the launcher's: leave them out")
        return run_training(method_class, config, Path(out), resume)
    if num_processes % machines.count:
        raise ConfigError(f"num_processes ({num_processes}, over all machines) must be a multiple of num_machines "
                          f"({machines.count})")
    if num_processes > 1:
        open_dataset(Path(config.data), REQUIRED_COLUMNS + method_class.columns)  # fail here, not N times
        return relaunch(config, Path(out), resume, num_processes, machines)
    return run_training(method_class, config, Path(out), resume)


def run_training(method_class: type[Method], config: TrainConfig, out: Path, resume: str | None) -> TrainResult:
    """Train, checkpoint, validate and save; every check that can fail runs before the first step."""
    # 1. Data, settings and the checkpoint to resume from (verified, and not past this run's end): checked before
    # any model loads.
    data = open_dataset(Path(config.data), REQUIRED_COLUMNS + method_class.columns)
    checkpoint = checkpoint_to_resume(out, resume, config, planned_steps(config, data["train"].num_rows))
    # 2-5. Base, trainable parameters, samples, optimizer and schedule (open_session); from here on a lost peer
    # process is one line.
    with peer_loss_reported(out), open_session(method_class, config, out, data) as session:
        accelerator, method = session.accelerator, session.method
        total_steps = config.total_steps(len(session.loader))
        # 6. Resume: weights, optimizer and schedule from the checkpoint; the step decides the data position.
        start_step = 0
        if checkpoint is not None:
            state = load_checkpoint(accelerator, checkpoint, method.prepared, session.optimizer, session.lr_scheduler)
            start_step, session.seconds_before = state["step"], state.get("seconds", 0.0)
            accelerator.print(f"resumed from {checkpoint} at step {start_step}")
        # 7. Train.
        if accelerator.is_main_process:
            accelerator.init_trackers(f"fsdx-{method.stage}", config=run_hparams(config))
        final_loss = train_loop(session, start_step, total_steps)
        # 8. Final validation, then the artifact and its description, written by the main process (the
        # artifact atomically, refused if any weight is not finite; see fashionsd_x.files.export_folder).
        images = validate(session, total_steps)
        result = TrainResult(out, method.stage, method.weights(out), total_steps,
                             total_steps * config.grad_accum / len(session.loader), round(session.seconds(), 1),
                             final_loss, images, hardware(accelerator))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            method.save(out, {CONFIG_METADATA_KEY: config.to_yaml()})
            write_outputs(session, result, data)
    return result


def train_loop(s: Session, start_step: int, total_steps: int) -> float | None:
    """Optimizer steps start_step..total_steps-1, each over grad_accum micro-batches of the data stream.

    Each part of a step runs under a `fsdx/<part>` profiler label (benchmarks/train_throughput.py --profile reads
    them; without a profiler a label costs a few microseconds).
    """
    config, accelerator = s.config, s.accelerator
    stream = micro_batches(accelerator, s.loader, start_step * config.grad_accum)
    parameters = [p for module in s.method.prepared for p in module.parameters() if p.requires_grad]
    loss = None
    # Closed however the loop ends: an error's one line then starts on a line of its own, after the bar's.
    with tqdm(total=total_steps, initial=start_step, desc=f"train {s.method.stage}", unit="step",
              disable=not accelerator.is_local_main_process) as bar:
        for step in range(start_step, total_steps):
            with record_function("fsdx/step"):
                step_loss = accumulate(s, step_batches(s, stream, step), config.grad_accum)
                # Checked every step (one host sync): a NaN must stop the run before its update is applied.
                loss = _finite_mean(accelerator, step_loss, step + 1, s.out)
                optimizer_step(s, parameters, step + 1)
                done = step + 1
                with record_function("fsdx/log"):
                    log_step(s, bar, done, loss, total_steps)
                    if config.checkpoint_every and done % config.checkpoint_every == 0:
                        checkpoint(s, done)
            if config.validate_every and done % config.validate_every == 0 and done < total_steps:
                validate(s, done)
    return loss


def optimizer_step(s: Session, parameters: list[torch.nn.Parameter], step: int) -> None:
    """Clip, update, advance the schedule, drop the gradients (set to None: no memset of every gradient)."""
    with record_function("fsdx/optimizer"):
        if s.config.max_grad_norm is not None:
            norm = s.accelerator.clip_grad_norm_(parameters, s.config.max_grad_norm)
            if s.config.mixed_precision != "fp16" and norm is not None and not torch.isfinite(norm):
                raise NonFiniteLossError(_stop_message("the gradient norm", float(norm), step, s.out))
        s.optimizer.step()
        s.lr_scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)


def log_step(s: Session, bar: Any, done: int, loss: float, total_steps: int) -> None:
    """Loss and lr to TensorBoard and the progress bar every log_every steps and at the last one.

    A TensorBoard write and a forced bar redraw cost about as much as a tiny model's step; every step would
    make the run slower to watch it (the bar still advances, at tqdm's own refresh rate).
    """
    bar.update(1)
    if done % s.config.log_every and done != total_steps:
        return
    lr = s.lr_scheduler.get_last_lr()[0]
    s.accelerator.log({"loss": loss, "lr": lr}, step=done)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)


def micro_batches(accelerator: Accelerator, loader: Any, start: int) -> Iterator[dict[str, torch.Tensor]]:
    """The data as an endless stream of micro-batches, starting `start` micro-batches in (epochs chained).

    Resuming skips the consumed batches of the current epoch by index (accelerate's skip_first_batches), so
    no skipped sample is decoded; the epoch's order is rebuilt from (seed, epoch) by EpochSampler.
    """
    epoch, skip = divmod(start, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0


def step_batches(s: Session, stream: Iterator[dict[str, Any]], step: int) -> Iterator[tuple[dict[str, Any], Draws]]:
    """Optimizer step `step`'s micro-batches, taken from the stream one at a time, each with its draws."""
    for index in range(step * s.config.grad_accum, (step + 1) * s.config.grad_accum):
        with record_function("fsdx/data"):
            batch = next(stream)
            draws = draw(s, batch, index)
        yield batch, draws


@dataclass
class Draws:
    """Every random draw of a micro-batch's loss, one row per sample (rows(...) gives those of some samples)."""

    flips: torch.Tensor  # (N,) bool: mirror the image (and its sketch)
    drops: torch.Tensor  # (N,) bool: train on the empty caption (caption dropout, for classifier-free guidance)
    posterior: torch.Tensor  # (N, C, h, w) standard normal: the VAE posterior sample's noise
    noise: torch.Tensor  # (N, C, h, w): the diffusion noise, offset noise included
    timesteps: torch.Tensor  # (N,) diffusion timesteps

    def rows(self, rows: slice) -> Draws:
        return Draws(self.flips[rows], self.drops[rows], self.posterior[rows], self.noise[rows], self.timesteps[rows])


def draw(s: Session, batch: dict[str, Any], index: int) -> Draws:
    """The random draws of micro-batch `index` (after the sketch augmentation, applied to `batch` in place)."""
    config = s.config
    # One generator per (seed, micro-batch), drawn from in a fixed order: the draws do not depend on anything a
    # resumed run could restore differently. The trailing 0 keeps the stream one-process runs have always drawn.
    generator = torch.Generator().manual_seed(derive_seed(config.seed, index, 0))
    # Per-sample augmentation (ControlNet sketches) draws from its own stream of the same (seed, micro-batch),
    # so enabling it leaves every draw below as it was.
    s.method.prepare_batch(batch, derive_seed(config.seed, index, 0, AUGMENT_STREAM))
    # Drawn for the global micro-batch, of which this process keeps its rows: the run's result does not depend
    # on how many processes share it.
    local = batch["index"].shape[0]
    size = local * s.accelerator.num_processes
    latent = (size, s.base.vae.config.latent_channels, *[config.resolution // s.base.vae_scale_factor] * 2)
    # The order of the draws below is part of every run's result (a seed gives the runs it always gave).
    flips = torch.rand(size, generator=generator) < 0.5 if config.random_flip else torch.zeros(size, dtype=torch.bool)
    drops = torch.rand(size, generator=generator) < config.caption_dropout
    posterior = torch.randn(latent, generator=generator)
    noise = torch.randn(latent, generator=generator)
    if config.noise_offset:
        noise += config.noise_offset * torch.randn(latent[:2] + (1, 1), generator=generator)
    timesteps = torch.randint(0, s.base.noise_scheduler.config.num_train_timesteps, (size,), generator=generator)
    return Draws(flips, drops, posterior, noise, timesteps).rows(process_rows(s.accelerator, local))


def process_rows(accelerator: Accelerator, size: int) -> slice:
    """This process's rows of a global micro-batch whose every process holds `size` samples (accelerate deals a
    sampler's batches out to the processes in turn, so process p holds the global batch's p-th share)."""
    first = accelerator.process_index * size
    return slice(first, first + size)


def accumulate(s: Session, micro_batches: Iterable[tuple[dict[str, Any], Draws]], count: int) -> torch.Tensor:
    """Forward and backward over one optimizer step's `count` micro-batches; returns the step's mean loss.

    Each loss is divided by `count`, so the summed gradient is that of the mean over the step's samples: for
    equal micro-batches, the gradient of one batch of all of them (tests/train/test_core.py checks it).
    """
    step_loss = torch.zeros((), device=s.accelerator.device)
    for number, (batch, draws) in enumerate(micro_batches):
        # Gradients are all-reduced on the last micro-batch only (accumulation without wasted syncs).
        with _no_sync(s.accelerator, s.method.prepared, skip=number < count - 1):
            loss = micro_batch_loss(s, batch, draws)
            with record_function("fsdx/backward"):
                s.accelerator.backward(loss / count)
        step_loss += loss.detach() / count
    return step_loss


def micro_batch_loss(s: Session, batch: dict[str, Any], draws: Draws) -> torch.Tensor:
    """The denoising loss of one micro-batch (Rombach et al. 2022, eq. 2; min-SNR weighting optional)."""
    device = s.accelerator.device
    with record_function("fsdx/encode"):  # reads of the latent cache when it is on
        latents = encode_images(s, batch, draws.flips, draws.posterior)
        text = encode_text(s, batch, draws.drops)
    with record_function("fsdx/forward"):
        noise, timesteps = draws.noise.to(device), draws.timesteps.to(device)
        noisy = s.base.noise_scheduler.add_noise(latents, noise, timesteps)
        # The sketch and the garment's region flip with their image.
        batch = {**batch, **{key: _flip_where(batch[key], draws.flips) for key in FLIPPED if key in batch}}
        with s.accelerator.autocast():
            prediction = s.method.predict(noisy, timesteps, text, batch)
        loss = diffusion_loss(prediction, latents, noise, timesteps, s.base.noise_scheduler, s.config.snr_gamma)
    with record_function("fsdx/extra_loss"):
        extra = s.method.extra_loss(noisy, prediction, timesteps, batch)
    return loss if extra is None else loss + extra


def encode_images(s: Session, batch: dict[str, torch.Tensor], flips: torch.Tensor,
                  epsilon: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents of the (maybe flipped) images: the posterior sample mean + std * epsilon."""
    if "latent_mean" in batch:
        rows = torch.arange(flips.shape[0])
        view = flips.long() if batch["latent_mean"].shape[1] == 2 else torch.zeros_like(flips, dtype=torch.long)
        mean, std = batch["latent_mean"][rows, view.to(rows.device)], batch["latent_std"][rows, view.to(rows.device)]
    else:
        pixels = _flip_where(batch["pixels"], flips).to(s.weight_dtype)
        with torch.no_grad():
            posterior = s.base.vae.encode(pixels).latent_dist
        mean, std = posterior.mean, posterior.std
    # The loss is computed in float32 whatever the VAE's dtype.
    return (mean.float() + std.float() * epsilon.to(mean.device)) * s.base.vae.config.scaling_factor


def encode_text(s: Session, batch: dict[str, torch.Tensor], drops: torch.Tensor) -> torch.Tensor:
    """Caption embeddings, the empty caption's where `drops` (caption dropout: classifier-free guidance)."""
    drops = drops.to(s.accelerator.device)
    if "text" in batch:
        return torch.where(drops[:, None, None], s.empty_caption.to(batch["text"].dtype), batch["text"])
    ids = torch.where(drops[:, None], s.empty_caption, batch["input_ids"])
    with torch.set_grad_enabled(s.method.trains_text_encoder):
        return s.method.text_encoder(ids)[0]


def diffusion_loss(prediction: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   scheduler: DDPMScheduler, snr_gamma: float | None) -> torch.Tensor:
    """MSE to the base's target, epsilon (noise) or v (velocity, Salimans and Ho 2022), optionally min-SNR weighted.

    Min-SNR-gamma (Hang et al. 2023): weight min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v-prediction.
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ConfigError(f"prediction_type {kind!r} cannot be trained; use epsilon or v_prediction")
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if kind == "v_prediction" else snr)
    return (per_sample * weight).mean()


def checkpoint(s: Session, step: int) -> Path:
    state = {"stage": s.method.stage, "step": step, "micro_batches": step * s.config.grad_accum,
             "num_processes": s.accelerator.num_processes, "seconds": round(s.seconds(), 1),
             "config": s.config.to_dict()}
    return save_checkpoint(s.accelerator, s.out / "checkpoints", step, state, s.config.keep_checkpoints,
                           s.method.prepared, s.optimizer, s.lr_scheduler)


def write_outputs(s: Session, result: TrainResult, data: Any) -> None:
    """train_config.yaml, train_result.json and the model card README.md beside the weights."""
    write_text(s.out / CONFIG_NAME, s.config.to_yaml())
    write_text(s.out / RESULT_NAME, json.dumps(result.to_dict(), indent=2) + "\n")
    write_card(s.out, s.config, result, result.hardware, data, s.base.family, s.validation)


def relaunch(config: TrainConfig, out: Path, resume: str | None, num_processes: int,
             machines: Machines = Machines()) -> TrainResult:
    """Run this training on `num_processes` processes through `accelerate launch` and wait for it: this machine's
    share of them when the run spans several `machines` (each runs the same call with its own machine rank).

    The children get the resolved config as a YAML file, so they train exactly what this call resolved. On a
    machine without CUDA, accelerate runs CPU processes (gloo) when ACCELERATE_USE_CPU is set with its
    multi-process launcher (its --cpu flag alone starts a single process). The children's stderr is passed on as
    it comes; when they fail, the first one-line error one of them printed is this call's error, so the last line
    says why the run stopped, not the launcher's traceback above it.
    """
    with tempfile.TemporaryDirectory(prefix="fsdx-launch-") as folder:
        config_file = Path(folder) / CONFIG_NAME
        config_file.write_text(config.to_yaml(), encoding="utf-8")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(num_processes), *machines.launch_flags(), "--mixed_precision", config.mixed_precision,
                   "--dynamo_backend", "no", "-m", "fashionsd_x.train.launch", str(config_file), str(out), resume or ""]
        environment = dict(os.environ)
        if not torch.cuda.is_available():
            environment["ACCELERATE_USE_CPU"] = "true"
        returncode, error = _run_relaying_errors(command, environment)
    if returncode != 0:
        if error:
            raise LaunchError(f"a training process stopped: {error}")
        raise LaunchError(f"the {num_processes} training processes failed (exit code {returncode}); "
                          "their messages are above")
    if not (out / RESULT_NAME).is_file():  # written by machine 0's first process
        raise LaunchError(f"training finished, but {out / RESULT_NAME} is not visible from machine {machines.rank}: "
                          "--out must be a folder every machine shares (resuming reads its checkpoints everywhere)")
    return TrainResult.read(out)


ERROR_LINE = re.compile(r"fsdx train [\w-]+: error: (.*\S)")  # what launch.py prints for an expected failure


def _run_relaying_errors(command: list[str], environment: dict[str, str]) -> tuple[int, str | None]:
    """Run `command`, passing its stderr on as it comes; its exit code and the first ERROR_LINE message in it."""
    decoder, pending, first = codecs.getincrementaldecoder("utf-8")(errors="replace"), "", None
    with subprocess.Popen(command, env=environment, stderr=subprocess.PIPE) as process:
        for chunk in iter(lambda: process.stderr.read1(1 << 16), b""):
            text = decoder.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            *lines, pending = (pending + text).split("\n")
            first = first or next((found.group(1) for line in lines if (found := ERROR_LINE.search(line))), None)
    if first is None and (found := ERROR_LINE.search(pending)):
        first = found.group(1)
    return process.returncode, first


def _no_sync(accelerator: Accelerator, models: list[torch.nn.Module], skip: bool) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if skip:
        for model in models:
            stack.enter_context(accelerator.no_sync(model))
    return stack


def _finite_mean(accelerator: Accelerator, loss: torch.Tensor, step: int, out: Path) -> float:
    """The step's loss averaged over processes; NaN/inf on any process stops every process before the update."""
    value = accelerator.gather(loss.reshape(1)).float().mean().item()
    if not math.isfinite(value):
        raise NonFiniteLossError(_stop_message("the loss", value, step, out))
    return value


@contextlib.contextmanager
def peer_loss_reported(out: Path) -> Iterator[None]:
    """A collective that failed because another process of the run is gone becomes a one-line PeerLostError."""
    try:
        yield
    except RuntimeError as error:
        if not _peer_lost(error):
            raise
        raise PeerLostError(_lost_message(error, out)) from None


PEER_GONE = re.compile(r"closed by peer|reset by peer|broken pipe|connection refused|timed? ?out", re.IGNORECASE)


def _peer_lost(error: RuntimeError) -> bool:
    # torch's own distributed errors (the rendezvous store gone, an NCCL failure) and gloo's, which reach Python
    # as plain RuntimeErrors naming gloo's source file: "Connection closed by peer", "Timed out waiting ...".
    text = str(error)
    return isinstance(error, torch.distributed.DistError) or ("gloo" in text and PEER_GONE.search(text) is not None)


def _lost_message(error: RuntimeError, out: Path) -> str:
    # gloo's text: "[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.2]:4100. This is
    # typically caused by ..." -> "Connection closed by peer [10.0.0.2]:4100"
    reason = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(error).split())).split(". ")[0].rstrip(".")[:200]
    if re.search(r"timed? ?out", reason, re.IGNORECASE):
        reason += f"; {PEER_TIMEOUT_VARIABLE} sets how many seconds a process waits for the others"
    kept = complete_checkpoints(out / "checkpoints")
    last = f"the last checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
    return (f"lost contact with another process of the run ({reason}): a machine or process stopped, or the "
            f"network failed; {last}: restart every machine with --resume latest")


def _stop_message(what: str, value: float, step: int, out: Path) -> str:
    kept = complete_checkpoints(out / "checkpoints")
    last = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written"
    return (f"{what} became {value} at step {step}; training stopped before that update and saved nothing new "
            f"({last}); lower lr, or use mixed_precision no/bf16")


def _flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips.to(images.device)[:, None, None, None], images.flip(-1), images)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
