"""`fsdx studio`: load the generator once and serve the studio page until Ctrl-C.

Imports stay light here (gradio, torch and the page are imported inside the functions): the CLI imports this
module to build `fsdx studio --help`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

LOGGER = logging.getLogger(__name__)
GRADIO_FOLDER = "GRADIO_TEMP_DIR"  # the environment variable naming the folder Gradio keeps its files in
MAX_FILE_SIZE = "10mb"  # largest upload Gradio accepts; load_image also refuses over MAX_UPLOAD_PIXELS
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class StudioError(ValueError):
    """The studio cannot start (port taken, bad address); one line."""


@dataclass(frozen=True)
class StudioRun:
    """How a studio session ended."""

    url: str  # where it was served
    images: int  # garments generated while it ran (their temporary folder is deleted on exit)


def serve_studio(
    model: str | None = None,
    lora: Path | None = None,
    controlnet: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
) -> StudioRun:
    """Serve FashionSD-X Studio, a web page for designers: sketch + text in, garments out. Ctrl-C stops it.

    Draw a sketch (on plain, grid, dot grid or ruled paper, or over a fashion figure), upload one, or upload a
    garment photo and tune its extracted sketch live; see the page as the model reads it (cleanup removes printing,
    a figure and notes; drag a box over the garment when a page holds two); write a prompt; set the number of
    images, steps, guidance, sketch and LoRA strength and the seed; generate. Each garment can be downloaded
    as a PNG carrying every parameter that reproduces it, and a click on a row of the session's history puts
    its settings back. Generated files and uploads live in temporary folders of this studio's own, deleted when
    it stops: download the garments to keep. The page has no login: it listens on this machine only unless --host
    says otherwise.

    Args:
        model: base model: hub id, diffusers folder or .safetensors file; tiny or none: the embedded model,
            with its own LoRA and ControlNet unless --lora/--controlnet are given.
        lora: LoRA folder (pytorch_lora_weights.safetensors) from `fsdx train lora`.
        controlnet: ControlNet folder from `fsdx train controlnet`; without one, garments come from the prompt
            alone.
        host: address to listen on; 0.0.0.0 opens the studio to the whole network.
        port: port to listen on.
    """
    from fashionsd_x.apps.studio.actions import generated_files
    from fashionsd_x.apps.studio.ui import build_app
    from fashionsd_x.generate import GarmentGenerator

    check_port(host, port)  # before loading the model, which can take a while
    if host not in LOCAL_HOSTS:
        LOGGER.warning("the studio listens on %s: anyone who can reach this machine can use it", host)
    generator = GarmentGenerator.load(model, lora=lora, controlnet=controlnet)
    with tempfile.TemporaryDirectory(prefix="fsdx-studio-") as folder, gradio_folder():
        out = Path(folder)
        demo = build_app(generator, out)
        demo.queue().launch(**launch_options(out, host, port))  # blocks until Ctrl-C
        return StudioRun(f"http://{host}:{port}", len(generated_files(out)))


@contextmanager
def gradio_folder() -> Iterator[Path]:
    """A new temporary folder for the files Gradio keeps while a studio is built and served in this block (uploads,
    every image and PNG the page shows), removed with all it holds when the block ends: by a normal stop, Ctrl-C
    or an error. Without it they would stay in Gradio's folder shared by every app (/tmp/gradio), after the studio.

    Gradio 6.31 takes that folder from the GRADIO_TEMP_DIR environment variable alone, read when each component is
    made and again while serving (a file sent back must be in it): the variable names this folder for the whole
    block and is put back after. One studio at a time per process. A GRADIO_TEMP_DIR set by the user is where the
    folder is made.
    """
    previous = os.environ.get(GRADIO_FOLDER)
    parent = Path(previous) if previous else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="fsdx-studio-gradio-", dir=parent))
    os.environ[GRADIO_FOLDER] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(GRADIO_FOLDER, None)
        else:
            os.environ[GRADIO_FOLDER] = previous
        shutil.rmtree(folder, ignore_errors=True)


def launch_options(out: Path, host: str, port: int) -> dict[str, Any]:
    """Keyword arguments of `Blocks.launch` for a studio writing under `out` (the page's CSS and JS included)."""
    from fashionsd_x.apps.studio.ui import PAGE_CSS, PAGE_JS

    return dict(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, allowed_paths=[str(out)],
                ssr_mode=False, show_error=False, css=PAGE_CSS, js=PAGE_JS)


def check_port(host: str, port: int) -> None:
    """Raise StudioError when `port` on `host` cannot be listened on (taken, or not an address of this machine)."""
    if not 1 <= port <= 65535:
        raise StudioError(f"port must be between 1 and 65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no clash
            probe.bind((host, port))
    except OSError as error:
        reason = " ".join(str(error).split())
        raise StudioError(f"cannot listen on {host}:{port} ({reason}): choose another --port or --host") from None


def show(result: StudioRun) -> int:
    """Print how the studio session ended; exit code 0."""
    print(f"studio at {result.url} stopped; {result.images} garment(s) generated "
          "(its temporary folders are deleted: downloads are kept)")
    return 0
