"""Dataset build throughput: images per second for 1 and 2 worker processes on generated garments.

    python benchmarks/data_build.py [--num 240] [--size 768] [--resolution 512]

Garments are rendered once at --size (a catalogue photo's scale), then `build_dataset` runs on them with
num_proc 1 and 2; the figure includes decoding, resizing, sketch extraction, PNG encoding and Arrow writes.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from datasets.utils.logging import disable_progress_bar

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize


def measure(root: Path, out: Path, resolution: int, num_proc: int) -> tuple[float, int]:
    started = time.perf_counter()
    result = build_dataset("folder", root, out, resolution=resolution, num_proc=num_proc)
    seconds = time.perf_counter() - started
    return seconds, sum(result.report["num_rows"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=240, help="garments to build")
    parser.add_argument("--size", type=int, default=768, help="side of the generated source photos")
    parser.add_argument("--resolution", type=int, default=512, help="dataset resolution")
    args = parser.parse_args()
    disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        root = synthesize(Path(folder) / "raw", num=args.num, seed=0, size=args.size)
        print(f"{args.num} garments, {args.size}px sources -> {args.resolution}px dataset, {os.cpu_count()} CPU cores")
        for num_proc in (1, 2):
            seconds, rows = measure(root, Path(folder) / f"out{num_proc}", args.resolution, num_proc)
            print(f"num_proc={num_proc}: {rows / seconds:6.1f} images/s ({rows} images in {seconds:.1f} s)")
        # ru_maxrss is in KiB on Linux; workers are children of this process.
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak memory: {own:.0f} MiB main process, {workers:.0f} MiB largest worker")


if __name__ == "__main__":
    main()
