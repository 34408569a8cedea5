"""The studio's image inputs: Gradio's Sketchpad and File, with every image they take read by the project's loader.

Gradio's own input processing decodes a canvas's images itself and checks an upload's file name against its
types, and for anything else it raises: the server logs a traceback and the caller gets "error", never the
reason. An API caller can send any file as the canvas, an upload or a photo, bypassing the page. Here the canvas's
images go through `read_canvas_image` (the project's `load_image`, then its alpha) and an upload is handed on as
its path, for `load_upload` to check; what cannot be used becomes the studio's one-line message for the page.

The page draws them with Gradio's own components (`get_block_name`), checked against Gradio 6.31. Gradio writes
inputs.pyi beside this file when the classes are made (its event stubs for every component class), unless the
one there is current: it is kept in the repository, so importing the studio writes nothing.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData

from fashionsd_x.apps.studio.actions import read_canvas_image, unreadable_canvas
from fashionsd_x.data.images import ImageLoadError


class Canvas(gr.Sketchpad):
    """Gradio's Sketchpad, whose value's images (paper, strokes, flattened drawing) are RGBA images read by
    `read_canvas_image`; a canvas with an image that is not one has the value `unreadable_canvas(why)`."""

    def get_block_name(self) -> str:
        return "imageeditor"  # Sketchpad's own page component (a subclass of a template would name its parent)

    def convert_and_format_image(self, file: FileData | bytes | None, flatten_on_white: bool = False) -> Any:
        """Gradio's hook for each image of the value: a file an API caller sent, or the page's bytes. Flattening
        does not apply: the canvas is RGBA (Gradio flattens only for modes without alpha)."""
        if file is None:
            return None
        return read_canvas_image(file.path if isinstance(file, FileData) else file)

    def preprocess(self, payload: EditorData | None) -> dict | None:
        try:
            return super().preprocess(payload)
        except ImageLoadError as error:
            if payload is not None and payload.id is not None:
                self.blob_storage.pop(payload.id, None)  # the page's bytes for this value are not needed again
            return unreadable_canvas(str(error))


class ImageUpload(gr.File):
    """Gradio's File for one image: its file types pick what the browser offers, and the file is handed on as its
    path whatever its name; `load_upload` then says why a file that is not an image cannot be used."""

    def get_block_name(self) -> str:
        return "file"

    def get_block_class(self) -> str:
        return "file"  # what the API describes it as, and what gr.load would rebuild it as

    def preprocess(self, payload: FileData | None) -> str | None:
        return None if payload is None else str(payload.path)
