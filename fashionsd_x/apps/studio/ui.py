"""The studio page: sketch tabs and settings on top; the gallery, what the model sees and the PNG downloads below;
then the history.

Only layout and wiring live here; what each control does is in actions.py. A user's mistake becomes a warning
toast (for Generate, a line under the button instead), never a traceback; per-session state (the sketch source,
the history) is held in gr.State, so two designers on one studio never see each other's work.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

import gradio as gr
from PIL import Image

from fashionsd_x.apps.studio.actions import (HISTORY_HEADERS, MAX_IMAGES, MAX_SEED, MAX_STEPS, HistoryEntry,
                                             Settings, SketchSettings, blank_canvas, control_values, describe_model,
                                             extract, history_rows, load_upload, model_view, pick_sketch, reuse,
                                             run_generation)
from fashionsd_x.data.images import IMAGE_EXTENSIONS
from fashionsd_x.data.sketch import SKETCH_METHODS
from fashionsd_x.generate import SCHEDULERS, GarmentGenerator, read_params

# The controls that weigh a sketch (its strength and span), by their place in the controls: off in prompt-only mode.
SKETCH_CONTROLS = tuple([field.name for field in fields(Settings)].index(name)
                        for name in ("controlnet_scale", "control_start", "control_end"))
TAB_LABELS = {"draw": "Draw", "upload": "Upload sketch", "photo": "From photo", "prompt": "Prompt only"}
CANVAS = 512  # drawing canvas side in pixels; the sketch is resized to the model's resolution like any other
PREVIEW = 384  # a sketch preview smaller than this is enlarged (nearest: the model's pixels stay visible)
BRUSH_SIZE = 4  # Gradio's brush size is a radius: lines 8 px wide on the 512 px canvas, 2 px at 128
MODEL_VIEW_HINT = "What the model receives from the sketch shows here (a drawing's, once generated)."
READY = "fsdx-ready"  # class of the canvas block once Gradio's editor can take a stroke

# Passed to `launch` (Gradio 6 takes the page's CSS and JavaScript there). Sketches and model views fill their
# panel whatever their size: Gradio shows an image at most at its own size, so a 128 px upload came out tiny.
PAGE_CSS = f"""
#canvas:not(.{READY}) canvas {{ visibility: hidden; }}
#canvas:not(.{READY})::after {{ content: "Preparing the canvas…"; position: absolute; top: 45%; left: 0; right: 0;
    text-align: center; color: var(--body-text-color-subdued); pointer-events: none; }}
#sketch-preview img, #photo-sketch img, #model-view img {{ width: 100%; height: 100%; object-fit: contain; }}
#photo-sketch img, #model-view img {{ image-rendering: pixelated; }}
#model-sources {{ font-size: var(--text-sm); color: var(--body-text-color-subdued); }}
"""

# The canvas shows ("Preparing the canvas…" until then) once Gradio's editor can take a stroke: before its brush is
# set a drag draws nothing, and while its white sheet arrives the zoom resets, so a stroke then lands scaled. A
# cleared canvas waits for its new sheet the same way. The state is read from window.editor (Gradio 6.x's editor);
# an editor without those fields is shown at once.
PAGE_JS = f"""() => {{
  const ready = (box, editor) => {{
    if (!box.querySelector("canvas")) return false;
    if (!editor || !("scale_value" in editor)) return true;
    if (!editor.background_image || !editor.current_tool || !editor.image_container) return false;
    const settled = Math.abs(editor.image_container.scale.x - editor.scale_value) < 1e-3;
    return settled || box.classList.contains("{READY}");  // once shown, a user's zoom never hides it
  }};
  const watch = () => {{
    const box = document.getElementById("canvas");
    if (box) box.classList.toggle("{READY}", ready(box, window.editor));
    requestAnimationFrame(watch);
  }};
  watch();
}}"""

CLEAR_WARNINGS = """() => { document.querySelectorAll(".toast-close").forEach(close => close.click()); return ""; }"""


def build_app(generator: GarmentGenerator, out: Path) -> gr.Blocks:
    """The studio page for `generator`, writing generated PNGs under `out`; not launched."""
    has_controlnet = generator.control_pipe is not None
    with gr.Blocks(title="FashionSD-X Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        _header(generator)
        source = gr.State("draw" if has_controlnet else "prompt")
        history = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                sketch_inputs = _sketch_tabs(source, has_controlnet, generator.resolution)
            with gr.Column(scale=4):
                controls = _settings_controls(has_controlnet, generator.lora is not None,
                                              generator.default_guidance_scale)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                message = gr.Markdown(elem_id="message")
        with gr.Row():
            gallery = gr.Gallery(label="Garments", columns=4, height=250, format="png", elem_id="gallery", scale=3)
            with gr.Column(scale=1, min_width=200):
                # A caption above, not the image's label: Gradio lays a label over the image's top edge.
                gr.Markdown(f"**What the model sees** ({generator.resolution} px)")
                seen = gr.Image(label="What the model sees", show_label=False, interactive=False, format="png",
                                height=250, buttons=["download", "fullscreen"], elem_id="model-view")
                seen_note = gr.Markdown(MODEL_VIEW_HINT, elem_id="model-view-note")
            files = gr.File(label="Download PNGs (parameters embedded)", file_count="multiple",
                            interactive=False, elem_id="downloads", scale=1)
        table = gr.Dataframe(headers=HISTORY_HEADERS, label="History (click a row to reuse its settings)",
                             interactive=False, elem_id="history", max_height=260)
        _wire_generate(generator, out, button, source, sketch_inputs, controls, history,
                       [gallery, files, history, table, message, seen, seen_note])
        _wire_model_view(generator, sketch_inputs, [seen, seen_note])
        _wire_reuse(table, history, controls, sketch_inputs, source, [gallery, files, message])
        for name, tab in sketch_inputs["tab_items"].items():
            tab.select(lambda name=name: (name, *(_sketch_strength(name) for _ in SKETCH_CONTROLS)), None,
                       [source, *(controls[index] for index in SKETCH_CONTROLS)], queue=False)
    return demo


def _header(generator: GarmentGenerator) -> None:
    """The title, what the model is in words, and where its parts were loaded from in small print."""
    what, loaded = describe_model(generator)
    gr.Markdown(f"# FashionSD-X Studio\nSketch + text → garment with **{what}** ({generator.resolution} px). "
                "Draw or upload a sketch (or a garment photo), describe the garment, generate.", elem_id="header")
    gr.Markdown(" · ".join(f"{part}: `{path}`" for part, path in loaded), elem_id="model-sources")


def _sketch_tabs(source: gr.State, has_controlnet: bool, resolution: int) -> dict[str, Any]:
    """The four sketch sources as tabs; build_app makes the one selected the one Generate uses."""
    inputs: dict[str, Any] = {}
    with gr.Tabs(selected=source.value) as tabs:
        with gr.Tab(TAB_LABELS["draw"], id="draw", visible=has_controlnet) as draw:
            inputs["canvas"] = gr.Sketchpad(
                blank_canvas(CANVAS), label="Sketch: draw with the mouse or a pen", type="pil", image_mode="RGBA",
                height=520, canvas_size=(CANVAS, CANVAS), elem_id="canvas",
                brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed",
                               default_size=BRUSH_SIZE))
        with gr.Tab(TAB_LABELS["upload"], id="upload", visible=has_controlnet) as upload:
            inputs["upload"] = _upload("Sketch image", "sketch-upload")
            inputs["upload_preview"] = gr.Image(label="Sketch", interactive=False, format="png", height=300,
                                                elem_id="sketch-preview")
        with gr.Tab(TAB_LABELS["photo"], id="photo", visible=has_controlnet) as photo:
            inputs.update(_photo_controls(resolution))
        with gr.Tab(TAB_LABELS["prompt"], id="prompt") as prompt_only:
            gr.Markdown("No sketch: the garment is generated from the prompt alone.")
    inputs["tabs"] = tabs
    inputs["tab_items"] = {"draw": draw, "upload": upload, "photo": photo, "prompt": prompt_only}
    inputs["upload"].change(_preview_upload, inputs["upload"], [inputs["upload_preview"]])
    # Clearing empties the editor, which then drops the brush (see blank_canvas): a fresh sheet brings it back.
    inputs["canvas"].clear(lambda: blank_canvas(CANVAS), None, inputs["canvas"], queue=False)
    return inputs


def _sketch_strength(source: str, **update: Any) -> gr.Slider:
    """A sketch control (strength, span) for a sketch source: live only when there is a sketch for it to weigh."""
    return gr.Slider(interactive=source != "prompt", **update)


def _upload(label: str, elem_id: str) -> gr.File:
    # gr.File, not gr.Image: gr.Image decodes the upload itself and fails with a traceback on a broken file,
    # while the studio must check it with load_image and answer with a message.
    return gr.File(label=label, file_count="single", file_types=list(IMAGE_EXTENSIONS), type="filepath",
                   height=110, elem_id=elem_id)


def _photo_controls(resolution: int) -> dict[str, Any]:
    controls = {"photo": _upload("Garment photo", "photo-upload")}
    with gr.Row():
        controls["method"] = gr.Radio(list(SKETCH_METHODS), value="adaptive", label="Method", elem_id="method")
        controls["block_size"] = gr.Slider(3, 51, value=11, step=2, label="Block size (adaptive)",
                                           elem_id="block-size")
        controls["offset"] = gr.Slider(0.5, 20, value=2.0, step=0.5, label="Offset (adaptive)", elem_id="offset")
    controls["photo_sketch"] = gr.Image(label=f"Extracted sketch ({resolution} px)",
                                        interactive=False, format="png", height=300, elem_id="photo-sketch")
    gr.on([controls[name].change for name in ("photo", "method", "block_size", "offset")],
          lambda *values: _enlarged(_shown(*extract(*values, resolution=resolution))),
          [controls[name] for name in ("photo", "method", "block_size", "offset")], controls["photo_sketch"])
    return controls


def _settings_controls(has_controlnet: bool, has_lora: bool, guidance: float) -> list[Any]:
    """The generation controls in Settings field order; a strength with nothing to act on is not shown. Guidance
    starts at the model's recommendation (`guidance`)."""
    prompt = gr.Textbox(label="Prompt", placeholder="a red striped t-shirt", lines=2, elem_id="prompt")
    negative = gr.Textbox(label="Negative prompt", placeholder="blurry, low quality", elem_id="negative")
    with gr.Row():
        num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="num-images")
        steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps", elem_id="steps")
    with gr.Row():
        guidance = gr.Slider(1.0, 15.0, value=guidance, step=0.5, label="Guidance", elem_id="guidance")
        sketch_strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Sketch strength",
                                    elem_id="sketch-strength", visible=has_controlnet, interactive=has_controlnet)
        lora_strength = gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="LoRA strength", elem_id="lora-strength",
                                  visible=has_lora)
    with gr.Row(visible=has_controlnet):  # when the sketch acts: from/until these fractions of the steps
        span = [gr.Slider(0.0, 1.0, value=value, step=0.05, label=label, info=info, elem_id=elem_id,
                          visible=has_controlnet, interactive=has_controlnet)
                for value, label, info, elem_id in (
                    (0.0, "Sketch from", "fraction of the steps before the sketch acts", "sketch-start"),
                    (1.0, "Sketch until", "lower: the sketch sets the shape, the prompt the details", "sketch-end"))]
    with gr.Row():
        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")
        scheduler = gr.Dropdown(list(SCHEDULERS), value="unipc", label="Sampler", elem_id="scheduler")
    return [prompt, negative, num_images, steps, guidance, sketch_strength, lora_strength, seed, scheduler, *span]


def _wire_generate(generator: GarmentGenerator, out: Path, button: gr.Button, source: gr.State,
                   sketch_inputs: dict[str, Any], controls: list[Any], history: gr.State, outputs: list[Any]) -> None:
    """Generate on a click: the last run's message goes at once, progress shows once (on the gallery)."""
    sketch_parts = [sketch_inputs[name] for name in ("canvas", "upload", "photo", "method", "block_size", "offset")]

    def generate(source_name, canvas, upload, photo, method, block_size, offset, history_value, *values,
                 progress=gr.Progress()):
        try:
            sketch_settings = SketchSettings.from_page(method, block_size, offset)
        except ValueError as error:  # a GenerationError: an API caller's NaN or text where a number goes
            return _failed(f"sketch settings: {error}", history_value)
        sketch, problem = pick_sketch(source_name, canvas, upload, photo, sketch_settings, generator.resolution)
        if problem:
            return _failed(problem, history_value)
        outcome = run_generation(generator, out, Settings.from_page(*values), sketch, history_value, source_name,
                                 sketch_settings, lambda fraction, text: progress(fraction, desc=text))
        if outcome.message:
            return _failed(outcome.message, outcome.history)
        rows = history_rows(outcome.history)
        seen_note = ("What the model received for these garments." if outcome.seen
                     else "Prompt only: the model got no sketch.")
        return (_captioned(outcome.files), _paths(outcome.files), outcome.history, rows, "  \n".join(outcome.notes),
                _enlarged(outcome.seen), seen_note)

    gallery, message = outputs[0], outputs[4]
    # The last run's warnings go in the page itself (its toasts closed, its line emptied): a round trip to the
    # server would show its own progress over the old warning.
    started = button.click(None, None, message, js=CLEAR_WARNINGS)
    started.then(generate, [source, *sketch_parts, history, *controls], outputs, concurrency_limit=1,
                 concurrency_id="generator", show_progress_on=[gallery])


def _failed(message: str, history: list[HistoryEntry]) -> tuple:
    """Outputs of a Generate that did not run: the gallery, downloads and model view kept, the message shown under
    the button just clicked (no toast besides: one warning, in one place)."""
    return gr.skip(), gr.skip(), history, history_rows(history), f"⚠️ {message}", gr.skip(), gr.skip()


def _wire_model_view(generator: GarmentGenerator, sketch_inputs: dict[str, Any], outputs: list[Any]) -> None:
    """Show what the model will receive as soon as a sketch is uploaded or a photo's sketch is tuned.

    Not for the canvas: Gradio 6.31's editor sends no event for some strokes (seen in headless Chromium), so a live
    view of a drawing could show an older state of it; a drawing's view comes with its garments instead.
    """
    resolution = generator.resolution
    sketch_inputs["upload"].change(lambda path: _viewed(generator, load_upload(path)[0], "the uploaded sketch"),
                                   sketch_inputs["upload"], outputs, show_progress="hidden")
    photo_parts = [sketch_inputs[name] for name in ("photo", "method", "block_size", "offset")]
    gr.on([part.change for part in photo_parts],
          lambda *values: _viewed(generator, extract(*values, resolution=resolution)[0], "the photo's sketch"),
          photo_parts, outputs, trigger_mode="always_last", show_progress="hidden")


def _viewed(generator: GarmentGenerator, sketch: Image.Image | None, what: str) -> tuple:
    """The model view of `sketch` and its caption; nothing changes without a sketch (its tab says why)."""
    if sketch is None:
        return gr.skip(), gr.skip()
    image, problem = model_view(generator, sketch)
    if image is None:
        return None, f"⚠️ {what}: {problem}"
    return _enlarged(image), f"What the model will receive from {what}."


def _wire_reuse(table: gr.Dataframe, history: gr.State, controls: list[Any], sketch_inputs: dict[str, Any],
                source: gr.State, outputs: list[Any]) -> None:
    photo_settings = [sketch_inputs[name] for name in ("method", "block_size", "offset")]
    targets = [*controls, *photo_settings, sketch_inputs["tabs"], source, sketch_inputs["upload"], *outputs]

    def restore(history_value: list[HistoryEntry], event: gr.SelectData):
        entry = reuse(history_value, event.index[0] if event.index else -1)
        if entry is None:
            return tuple(gr.skip() for _ in targets)
        # The sketch used goes back through the upload tab (a photo's sketch too), so a rerun sees the same one.
        tab = "upload" if entry.sketch is not None else "prompt"
        values = list(control_values(entry))
        for index in SKETCH_CONTROLS:
            values[index] = _sketch_strength(tab, value=values[index])
        return (*values, gr.Tabs(selected=tab), tab,
                str(entry.sketch) if entry.sketch else gr.skip(), _captioned(entry.files),
                _paths(entry.files), f"Settings of run {event.index[0] + 1} restored.")

    table.select(restore, history, targets, show_progress="hidden")


def _preview_upload(path: str | None):
    return _shown(*load_upload(path))


def _shown(image: Image.Image | None, message: str) -> Image.Image | None:
    """An image for the page, or a warning and an empty image when the input could not be used."""
    if message:
        gr.Warning(message)
    return image


def _paths(files: Sequence[Path]) -> list[str]:
    return [str(file) for file in files]


def _enlarged(image: Image.Image | None) -> Image.Image | None:
    if image is None or image.width >= PREVIEW:
        return image
    factor = -(-PREVIEW // image.width)
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _captioned(files: Sequence[Path]) -> list[tuple[str, str]]:
    return [(str(file), f"seed {read_params(file).seed}") for file in files]
