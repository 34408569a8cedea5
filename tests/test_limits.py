"""Upper bounds of sizes and counts (issue 29): the shared checks, and the settings of the commands whose tests live
elsewhere (training, ablation) refused through the CLI before any work, in one line with exit code 2."""

from __future__ import annotations

import pytest

from fashionsd_x import limits
from fashionsd_x.limits import LimitError, check_at_most, check_fits, check_workers, format_bytes, largest
from tests.test_cli import run_main

GB = 10**9


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with 16 GB available and 2 CPUs, so every message is the same wherever the tests run."""
    monkeypatch.setattr(limits, "available_memory", lambda: 16 * GB)
    monkeypatch.setattr(limits, "cpu_count", lambda: 2)


def _square(side: int) -> float:
    return side * side * 10_000.0


def _work(side: int) -> str:
    return f"a {side} px square"


def test_largest_is_the_last_value_that_fits():
    assert largest(lambda n: n * n <= 50, 100) == 7
    assert largest(lambda n: True, 100) == 100
    assert largest(lambda n: n == 0, 100) == 0


def test_over_the_memory_the_bound_is_what_fits_and_the_reason_is_the_memory(machine):
    with pytest.raises(LimitError) as caught:
        check_fits("--side", 100_000, 4096, "the documented side", need=_square, work=_work)
    assert str(caught.value) == ("--side 100000: at most 1264 (a 100000 px square needs 100 TB; this machine has "
                                 "16 GB available)")
    with pytest.raises(LimitError) as caught:
        check_fits("--side", 1265, 4096, "the documented side", need=_square, work=_work)
    assert str(caught.value) == ("--side 1265: at most 1264 (a 1265 px square needs 16 GB; this machine has 16 GB "
                                 "available)")
    check_fits("--side", 1264, 4096, "the documented side", need=_square, work=_work)


def test_within_the_memory_the_documented_maximum_and_its_reason(machine):
    with pytest.raises(LimitError) as caught:
        check_fits("--side", 4097, 4096, "the documented side", need=lambda side: side, work=_work)
    assert str(caught.value) == "--side 4097: at most 4096 (the documented side)"


def test_without_a_memory_figure_only_the_documented_maximum_applies(monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: None)
    check_fits("--side", 4096, 4096, "the documented side", need=_square, work=_work)
    with pytest.raises(LimitError, match=r"^--side 4097: at most 4096 \(the documented side\)$"):
        check_fits("--side", 4097, 4096, "the documented side", need=_square, work=_work)


def test_the_caller_chooses_the_error_type_and_workers_follow_the_cpus(machine):
    class StageError(ValueError):
        pass

    with pytest.raises(StageError, match=r"^rank 2000: at most 1280 \(why\)$"):
        check_at_most("rank", 2000, 1280, "why", StageError)
    check_workers("--num-proc", 8)
    with pytest.raises(LimitError, match=r"^--num-proc 9: at most 8 \(4 per CPU and this machine has 2;"):
        check_workers("--num-proc", 9)


def test_bytes_read_as_people_write_them():
    assert [format_bytes(n) for n in (512, 2_500, 640e6, 3.46e9, 21.4e9, 2.8e12)] == [
        "512 bytes", "2.5 kB", "640 MB", "3.5 GB", "21 GB", "2.8 TB"]
    assert limits.available_memory() > 0 and limits.cpu_count() >= 1  # this machine's own figures


@pytest.mark.parametrize(("arguments", "message"), [
    (["train", "lora", "--resolution", "100000"],
     "resolution 100000: at most 2048 (the largest side generation makes; Stable Diffusion 1.x trains at 512 px, 2.x "
     "at 768 px)"),
    (["train", "lora", "--batch-size", "1025"],
     "batch_size 1025: at most 1024 (per process; a larger batch comes from grad_accum)"),
    (["train", "controlnet", "--batch-size", "512", "--resolution", "1024"],
     "batch_size 512: at most 256 (at resolution 1024: a micro-batch of at most 268,435,456 pixels, 3.2 GB of float32 "
     "images; use grad_accum)"),
    (["train", "base", "--max-steps", "10000001"],
     "max_steps 10000001: at most 10000000 (about ten times the steps that trained Stable Diffusion 1.x from scratch)"),
    (["train", "lora", "--rank", "1281"],
     "rank 1281: at most 1280 (the width of Stable Diffusion's widest attention layer; above a layer's width a LoRA "
     "is not low-rank)"),
    (["train", "lora", "--dataloader-workers", "65"],
     "dataloader_workers 65: at most 64 (more worker processes never feed one trainer faster)"),
    (["train", "controlnet", "--sketch", "{block_size: 100001}"],
     "sketch: block_size 100001: at most 1025 (a neighbourhood a quarter of the largest image side; its work grows "
     "with it)"),
])
def test_training_settings_over_their_bounds_are_refused_before_the_data_is_read(arguments, message, tmp_path, capsys):
    # The data folder does not exist: the bound is refused before anything looks for it.
    code, error = run_main(capsys, *arguments, "--data", tmp_path / "no data", "--base", "tiny", "--out",
                           tmp_path / "out")
    assert (code, error) == (2, f"fsdx {' '.join(arguments[:2])}: error: {message}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--lora-steps", "10000001"],
     "--lora-steps 10000001: at most 10000000 (about ten times the steps that trained Stable Diffusion 1.x from "
     "scratch)"),
    (["--fractions", *(str(n / 100) for n in range(1, 66))],
     "runs (--fractions and --categories) 65: at most 64 (each trains a LoRA and a ControlNet and is evaluated)"),
    (["--num-processes", "9"],
     "--num-processes 9: at most 8 (4 per CPU and this machine has 2; more workers only add memory and switching)"),
    (["--max-steps", "10000001"],
     "max_steps 10000001: at most 10000000 (about ten times the steps that trained Stable Diffusion 1.x from scratch)"),
])
def test_ablation_counts_over_their_bounds_are_refused_before_the_data_is_read(arguments, message, machine, tmp_path,
                                                                             capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)  # the CPU rule, on a machine with GPUs too
    code, error = run_main(capsys, "ablate", "--data", tmp_path / "no data", "--out", tmp_path / "out", *arguments)
    assert (code, error) == (2, f"fsdx ablate: error: {message}\n")
    assert not (tmp_path / "out").exists()
