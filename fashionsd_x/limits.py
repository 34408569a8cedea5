"""Upper bounds of the sizes and counts the commands take, checked before any work starts (issue 29).

Without them a typo runs until the machine gives out: `fsdx data build --resolution 100000` decoded for three
minutes and was killed at 22 GB. A bound is the smaller of two things: a documented maximum, what no sensible
run goes beyond (each named with its reason), and, where memory is what the work needs, the largest value whose
work fits in the memory this machine has available now. A value above the bound is one line that names the
option, the value, the bound and why, e.g.

    --resolution 100000: at most 4096 (a 100000 px square needs 2.8 TB; this machine has 21 GB available)

The memory a piece of work needs is its stage's own measured estimate (bytes per pixel, per item), kept beside
the code that does the work; this module only compares it with the machine. Nothing here imports the package,
so every layer can use it.
"""

from __future__ import annotations

import os
from typing import Callable

MAX_IMAGE_SIDE = 4096  # px: the images the data stages write; 8x Stable Diffusion 1.5's 512, 4x SDXL's 1024
MAX_MODEL_SIDE = 2048  # px: what a model trains on or a preview shows; the largest side generation makes too
MAX_TRAIN_STEPS = 10_000_000  # optimizer steps (or epochs) of one run: ~10x the steps that trained SD 1.x from scratch
MAX_DENOISING_STEPS = 1000  # a scheduler's whole training schedule; more steps only revisit the same timesteps
MAX_ITEMS = 10_000_000  # garments one command handles: ~200x Dress Code's 53,792
WORKERS_PER_CPU = 4  # worker processes beyond this many per CPU only add memory and switching


class LimitError(ValueError):
    """A size or count above its bound; str() is the one line the CLI prints."""


def available_memory() -> int | None:
    """Bytes this machine can allocate now without swapping (psutil's `available`); None where unknown."""
    try:
        import psutil  # installed with accelerate
    except ImportError:
        try:  # the kernel's free pages: less than available (no page cache), so it errs on the safe side
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return int(psutil.virtual_memory().available)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on macOS and Windows
        return os.cpu_count() or 1


def format_bytes(count: float) -> str:
    """Bytes for a message: 2.8 TB, 21 GB, 3.5 GB, 640 MB (decimal units, as memory is sold and shown by `free -h`)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{count:.0f} bytes"


def check_at_most(option: str, value: float, highest: float, why: str,
                  error: type[ValueError] = LimitError) -> None:
    """Refuse VALUE above HIGHEST, a documented maximum, saying WHY; ERROR is the caller's user-error type."""
    if value > highest:
        raise error(f"{option} {value}: at most {highest} ({why})")


def check_fits(option: str, value: int, highest: int, why: str, need: Callable[[int], float],
               work: Callable[[int], str], error: type[ValueError] = LimitError) -> None:
    """check_at_most, and refuse VALUE when its work, NEED(value) bytes, does not fit in the memory available.

    NEED must grow with the value; WORK(value) names the work in the message ("a 100000 px square"). The bound
    a refusal gives is the largest value within both HIGHEST and the memory.
    """
    available = available_memory()
    if available is not None and need(value) > available:
        fitting = largest(lambda candidate: need(candidate) <= available, min(value, highest))
        raise error(f"{option} {value}: at most {fitting} ({work(value)} needs {format_bytes(need(value))}; "
                    f"this machine has {format_bytes(available)} available)")
    check_at_most(option, value, highest, why, error)


def check_workers(option: str, value: int, error: type[ValueError] = LimitError) -> None:
    """Refuse more worker processes than WORKERS_PER_CPU per CPU of this machine."""
    cpus = cpu_count()
    check_at_most(option, value, WORKERS_PER_CPU * cpus,
                  f"{WORKERS_PER_CPU} per CPU and this machine has {cpus}; more workers only add memory and switching",
                  error)


def check_processes(option: str, value: int, error: type[ValueError] = LimitError) -> None:
    """Refuse more data-parallel training processes than this machine's GPUs (one each), or, without a GPU,
    than WORKERS_PER_CPU per CPU."""
    if value <= 1:
        return
    import torch  # only asked when there is more than one process to place

    gpus = torch.cuda.device_count()
    if gpus:
        check_at_most(option, value, gpus, f"one process per GPU and this machine has {gpus}", error)
    else:
        check_workers(option, value, error)


def largest(fits: Callable[[int], bool], highest: int) -> int:
    """The largest n in [0, highest] with fits(n), for a FITS that holds up to some n and fails above (0 if none)."""
    low, high = 0, highest
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
