"""The studio page: sketch tabs and settings on top; the page as the model reads it (cleanup explained, the region
box dragged on it) beside what the model sees; the gallery and the PNG downloads; then the history.

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

from fashionsd_x.apps.studio.actions import (HISTORY_HEADERS, MAX_IMAGES, MAX_SEED, MAX_STEPS, REMOVED_WORDS,
                                             HistoryEntry, PageSettings, Settings, SketchSettings, blank_canvas,
                                             canvas_problem, control_values, describe_model, explained_page, extract,
                                             history_rows, load_upload, page_values, page_view, pick_sketch,
                                             repapered, reuse, run_generation)
from fashionsd_x.apps.studio.inputs import Canvas, ImageUpload
from fashionsd_x.apps.studio.paper import PAPERS
from fashionsd_x.data.conditioning import REMOVED_COLOURS
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
MODEL_VIEW_HINT = ("What the model receives from the sketch shows here (a drawing's once generated, or with "
                   "Show what the model sees).")
PAGE_HINT = "The sketch's page as cleanup reads it shows here: drag a box on it to say where the garment is."
REGION_BOX = (40, 90, 230)  # the colour explain_sketch draws the region in
READY = "fsdx-ready"  # class of the canvas block once Gradio's editor can take a stroke
MIN_REGION = 0.02  # a drag shorter than this share of the page either way is a click, not a box

# Passed to `launch` (Gradio 6 takes the page's CSS and JavaScript there). Sketches and model views fill their
# panel whatever their size: Gradio shows an image at most at its own size, so a 128 px upload came out tiny.
PAGE_CSS = f"""
#canvas:not(.{READY}) canvas {{ visibility: hidden; }}
#canvas:not(.{READY})::after {{ content: "Preparing the canvas…"; position: absolute; top: 45%; left: 0; right: 0;
    text-align: center; color: var(--body-text-color-subdued); pointer-events: none; }}
#sketch-preview img, #photo-sketch img, #model-view img, #sketch-page img {{ width: 100%; height: 100%;
    object-fit: contain; }}
#photo-sketch img, #model-view img {{ image-rendering: pixelated; }}
#sketch-page img {{ cursor: crosshair; touch-action: none; user-select: none; -webkit-user-drag: none; }}
.fsdx-region-drag {{ position: fixed; z-index: 1000; pointer-events: none; border: 2px dashed
    rgb{REGION_BOX}; background: rgba{(*REGION_BOX, 0.08)}; }}
#model-sources, #page-key {{ font-size: var(--text-sm); color: var(--body-text-color-subdued); }}
"""

# A box dragged on the explained page (#sketch-page) says where the garment is: its corners, as fractions of the page
# (the image is letterboxed in its panel: object-fit contain), go into the region box (#sketch-region) as
# "x0,y0,x1,y1", as if typed there, and the server answers its change with the page cut to it. Listeners sit on the
# document, so an image Gradio replaces keeps working; a click (a drag shorter than MIN_REGION) changes nothing.
REGION_JS = f"""const regionBox = () => {{
    let drag = null;
    const clamp = value => Math.min(1, Math.max(0, value));
    const shown = img => {{
      const box = img.getBoundingClientRect();
      const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
      const width = img.naturalWidth * scale, height = img.naturalHeight * scale;
      return {{left: box.left + (box.width - width) / 2, top: box.top + (box.height - height) / 2, width, height}};
    }};
    const at = (event, area) => [clamp((event.clientX - area.left) / area.width),
                                 clamp((event.clientY - area.top) / area.height)];
    const corners = () => [Math.min(drag.start[0], drag.end[0]), Math.min(drag.start[1], drag.end[1]),
                           Math.max(drag.start[0], drag.end[0]), Math.max(drag.start[1], drag.end[1])];
    const place = () => {{
      const [x0, y0, x1, y1] = corners(), area = drag.area;
      Object.assign(drag.box.style, {{left: area.left + x0 * area.width + "px", top: area.top + y0 * area.height + "px",
                                      width: (x1 - x0) * area.width + "px", height: (y1 - y0) * area.height + "px"}});
    }};
    document.addEventListener("pointerdown", event => {{
      const img = event.target.closest && event.target.closest("#sketch-page img");
      if (!img || event.button !== 0 || !img.naturalWidth) return;
      event.preventDefault();
      const area = shown(img), start = at(event, area);
      drag = {{area, start, end: start, box: document.body.appendChild(document.createElement("div"))}};
      drag.box.className = "fsdx-region-drag";
      place();
    }});
    document.addEventListener("pointermove", event => {{
      if (!drag) return;
      drag.end = at(event, drag.area);
      place();
    }});
    document.addEventListener("pointerup", event => {{
      if (!drag) return;
      drag.end = at(event, drag.area);
      const box = corners();
      drag.box.remove();
      drag = null;
      if (box[2] - box[0] < {MIN_REGION} || box[3] - box[1] < {MIN_REGION}) return;
      const field = document.querySelector("#sketch-region textarea, #sketch-region input");
      field.value = box.map(value => +value.toFixed(3)).join(",");
      field.dispatchEvent(new Event("input", {{bubbles: true}}));
    }});
    document.addEventListener("dragstart", event => {{
      if (event.target.closest && event.target.closest("#sketch-page")) event.preventDefault();
    }});
  }};"""

# The canvas shows ("Preparing the canvas…" until then) once Gradio's editor can take a stroke: before its brush is
# set a drag draws nothing, and while its white sheet arrives the zoom resets, so a stroke then lands scaled. A
# cleared canvas waits for its new sheet the same way, and so does another paper, from the click (NEW_SHEET marks the
# canvas) until the new sheet is in and its zoom settled: a stroke drawn meanwhile would be lost, as the server lays
# the paper under the strokes it was sent. The state is read from window.editor (Gradio 6.x's editor); an editor
# without those fields is shown at once.
PAGE_JS = f"""() => {{
  {REGION_JS}
  let waiting = null;  // another paper's sheet being waited for: the sheet it replaces, since when
  const ready = (box, editor) => {{
    if (!box.querySelector("canvas")) return false;
    if (!editor || !("scale_value" in editor)) return true;
    if (!editor.background_image || !editor.current_tool || !editor.image_container) return false;
    const settled = Math.abs(editor.image_container.scale.x - editor.scale_value) < 1e-3;
    if (box.dataset.newSheet) {{
      delete box.dataset.newSheet;
      waiting = {{old: editor.background_image, since: performance.now()}};
    }}
    if (waiting) {{
      const arrived = editor.background_image !== waiting.old && settled;
      if (!arrived && performance.now() - waiting.since < 10000) return false;  // never hidden for good
      waiting = null;
    }}
    return settled || box.classList.contains("{READY}");  // once shown, a user's zoom never hides it
  }};
  const watch = () => {{
    const box = document.getElementById("canvas");
    if (box) box.classList.toggle("{READY}", ready(box, window.editor));
    requestAnimationFrame(watch);
  }};
  watch();
  regionBox();
}}"""
NEW_SHEET = """() => { document.getElementById("canvas").dataset.newSheet = "1"; }"""

CLEAR_WARNINGS = """() => { document.querySelectorAll(".toast-close").forEach(close => close.click()); return ""; }"""
# Generate uses the tab the designer sees: the browser names it. The tab's select event also sets the session's
# source, but a click on a tab and then Generate straight away can reach the server in the other order.
SHOWN_TAB = """(shown, ...rest) => {
  const tab = document.querySelector("#sketch-tabs [role=tab][aria-selected=true]");
  return [tab ? tab.dataset.tabId : "", ...rest]; }"""


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
        page = _page_panel(generator, has_controlnet)
        with gr.Row():
            gallery = gr.Gallery(label="Garments", columns=4, height=250, format="png", elem_id="gallery", scale=3)
            files = gr.File(label="Download PNGs (parameters embedded)", file_count="multiple",
                            interactive=False, elem_id="downloads", scale=1)
        table = gr.Dataframe(headers=HISTORY_HEADERS, label="History (click a row to reuse its settings)",
                             interactive=False, elem_id="history", max_height=260)
        views = [page[name] for name in ("explained", "legend", "seen", "seen_note")]
        _wire_generate(generator, out, button, source, sketch_inputs, page, controls, history,
                       [gallery, files, history, table, message, *views])
        _wire_page(generator, source, sketch_inputs, page)
        _wire_reuse(table, history, controls, sketch_inputs, page, source, [gallery, files, message])
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
    with gr.Tabs(selected=source.value, elem_id="sketch-tabs") as tabs:
        with gr.Tab(TAB_LABELS["draw"], id="draw", visible=has_controlnet) as draw:
            inputs["canvas"] = Canvas(
                blank_canvas(CANVAS), label="Sketch: draw with the mouse or a pen", type="pil", image_mode="RGBA",
                height=520, canvas_size=(CANVAS, CANVAS), elem_id="canvas",
                brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed",
                               default_size=BRUSH_SIZE))
            inputs["paper"] = gr.Radio([(label, name) for name, label in PAPERS.items()], value="plain",
                                       label="Paper (cleanup takes it off: see what the model sees)",
                                       elem_id="paper")
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
    inputs["canvas"].clear(lambda paper: blank_canvas(CANVAS, paper), inputs["paper"], inputs["canvas"], queue=False)
    # Another paper goes under the strokes already drawn: they stay. The canvas waits for it (see PAGE_JS).
    inputs["paper"].change(None, None, None, js=NEW_SHEET, queue=False)
    inputs["paper"].change(lambda paper, value: repapered(value, CANVAS, paper), [inputs["paper"], inputs["canvas"]],
                           inputs["canvas"], queue=False)
    return inputs


def _sketch_strength(source: str, **update: Any) -> gr.Slider:
    """A sketch control (strength, span) for a sketch source: live only when there is a sketch for it to weigh."""
    return gr.Slider(interactive=source != "prompt", **update)


def _upload(label: str, elem_id: str) -> ImageUpload:
    # A File, not gr.Image: gr.Image decodes the upload itself and fails with a traceback on a broken file,
    # while the studio must check it with load_image and answer with a message (see inputs.py).
    return ImageUpload(label=label, file_count="single", file_types=list(IMAGE_EXTENSIONS), type="filepath",
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


def _page_panel(generator: GarmentGenerator, has_controlnet: bool) -> dict[str, Any]:
    """The sketch's page as the model reads it (drag a box on it: the garment's region), what the model sees, the
    region box, the cleanup switch; not shown for a model without a ControlNet (no sketch ever reaches it)."""
    panel: dict[str, Any] = {}
    cleans = generator.conditioning.normalize  # a ControlNet trained on sketches as drawn has no cleanup
    with gr.Row(equal_height=False, visible=has_controlnet, elem_id="page-panel"):
        with gr.Column(scale=3):
            # Captions above, not the images' labels: Gradio lays a label over the image's top edge.
            gr.Markdown("**The page as the model reads it**: drag a box over the garment to say where it is")
            panel["explained"] = gr.Image(show_label=False, interactive=False, format="png", height=300,
                                          buttons=["fullscreen"], elem_id="sketch-page")
            gr.Markdown(_page_key(), elem_id="page-key")
            panel["legend"] = gr.Markdown(PAGE_HINT, elem_id="sketch-page-note")
        with gr.Column(scale=2, min_width=200):
            gr.Markdown(f"**What the model sees** ({generator.resolution} px)")
            panel["seen"] = gr.Image(label="What the model sees", show_label=False, interactive=False, format="png",
                                     height=300, buttons=["download", "fullscreen"], elem_id="model-view")
            panel["seen_note"] = gr.Markdown(MODEL_VIEW_HINT, elem_id="model-view-note")
        with gr.Column(scale=2, min_width=200):
            panel["cleanup"] = gr.Checkbox(True, label="Clean up the page", interactive=cleans,
                                           info="drop the paper's printing, a figure drawn around the garment, notes"
                                           if cleans else "this ControlNet takes sketches as drawn: no cleanup",
                                           elem_id="sketch-cleanup")
            panel["region"] = gr.Textbox(label="Sketch region", placeholder="the whole page",
                                         info="x0,y0,x1,y1 as fractions of the sketch; drag a box on the page, or type",
                                         max_lines=1, elem_id="sketch-region")
            panel["clear_region"] = gr.Button("Clear region", size="sm", elem_id="clear-region")
            panel["show"] = gr.Button("Show what the model sees", size="sm", elem_id="show-page")
    return panel


def _page_key() -> str:
    """One line: what each colour on the explained page means."""
    swatch = '<span style="color: rgb{}">{}</span> {}'.format
    removed = " ".join(swatch(REMOVED_COLOURS[kind], "■", words) for kind, words in REMOVED_WORDS.items())
    return f"{swatch((0, 0, 0), '■', 'kept')} · removed: {removed} · {swatch(REGION_BOX, '□', 'region')}"


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
                   sketch_inputs: dict[str, Any], page: dict[str, Any], controls: list[Any], history: gr.State,
                   outputs: list[Any]) -> None:
    """Generate on a click: the last run's message goes at once, progress shows once (on the gallery)."""
    sketch_parts = [sketch_inputs[name] for name in ("canvas", "upload", "photo", "method", "block_size", "offset")]

    def generate(shown_tab, source_name, canvas, upload, photo, method, block_size, offset, region, cleanup,
                 history_value, *values, progress=gr.Progress()):
        if shown_tab in sketch_inputs["tab_items"]:  # what the page shows wins over the session's last select
            source_name = shown_tab
        try:
            sketch_settings = SketchSettings.from_page(method, block_size, offset)
        except ValueError as error:  # a GenerationError: an API caller's NaN or text where a number goes
            return _failed(f"sketch settings: {error}", history_value)
        sketch, problem = pick_sketch(source_name, canvas, upload, photo, sketch_settings, generator.resolution)
        if problem:
            return _failed(problem, history_value)
        try:
            page_settings = PageSettings.from_page(region, cleanup) if sketch is not None else PageSettings()
        except ValueError as error:  # the region box's text: SketchRegion says what a region is, in one line
            return _failed(str(error), history_value)
        outcome = run_generation(generator, out, Settings.from_page(*values), sketch, history_value, source_name,
                                 sketch_settings, page_settings, lambda fraction, text: progress(fraction, desc=text))
        if outcome.message:
            return _failed(outcome.message, outcome.history)
        rows = history_rows(outcome.history)
        explained, legend = explained_page(generator, sketch, page_settings) if outcome.seen else (None, "")
        seen_note = ("What the model received for these garments." if outcome.seen
                     else "Prompt only: the model got no sketch.")
        return (_captioned(outcome.files), _paths(outcome.files), outcome.history, rows, "  \n".join(outcome.notes),
                explained, legend, _enlarged(outcome.seen), seen_note)

    gallery, message = outputs[0], outputs[4]
    # The last run's warnings go in the page itself (its toasts closed, its line emptied): a round trip to the
    # server would show its own progress over the old warning.
    started = button.click(None, None, message, js=CLEAR_WARNINGS)
    shown_tab = gr.Textbox(visible=False)
    started.then(generate, [shown_tab, source, *sketch_parts, page["region"], page["cleanup"], history, *controls],
                 outputs, js=SHOWN_TAB, concurrency_limit=1, concurrency_id="generator", show_progress_on=[gallery])


def _failed(message: str, history: list[HistoryEntry]) -> tuple:
    """Outputs of a Generate that did not run: the gallery, downloads and model view kept, the message shown under
    the button just clicked (no toast besides: one warning, in one place)."""
    return gr.skip(), gr.skip(), history, history_rows(history), f"⚠️ {message}", *(gr.skip() for _ in range(4))


def _wire_page(generator: GarmentGenerator, source: gr.State, sketch_inputs: dict[str, Any],
               page: dict[str, Any]) -> None:
    """Show the selected tab's sketch as the model reads it when a tab is selected, a sketch is uploaded, a photo's
    sketch is tuned, the region or cleanup changes, or Show what the model sees is clicked.

    Not on a stroke: Gradio 6.31's editor sends no event for some strokes (seen in headless Chromium), so a live
    view of a drawing could show an older state of it; a drawing's view comes with its garments, or on the button
    (which reads the canvas as it is then). Only what may need the drawing reads the canvas: the browser exports
    the editor's layers for every event that does, which takes a while on a slow machine.
    """
    canvas, upload, photo = (sketch_inputs[name] for name in ("canvas", "upload", "photo"))
    settings = [*(sketch_inputs[name] for name in ("method", "block_size", "offset")), page["region"],
                page["cleanup"]]
    outputs = [page[name] for name in ("explained", "legend", "seen", "seen_note")]
    quiet = dict(show_progress="hidden", trigger_mode="always_last")

    def changed(name: str):
        # Only the tab in use, and only with something in it: a restored run sets the photo settings and the upload
        # together, and the upload tab is then the one in use.
        def view(source_name: str, value: Any, *rest: Any) -> tuple:
            if source_name != name or not value:
                return tuple(gr.skip() for _ in outputs)
            return _page_outputs(generator, name, value, *rest)
        return view

    def selected(name, canvas_value, upload_value, photo_value, *rest):
        value = {"draw": canvas_value, "upload": upload_value, "photo": photo_value}.get(name)
        return _page_outputs(generator, name, value, *rest)

    upload.change(changed("upload"), [source, upload, *settings], outputs, **quiet)
    gr.on([photo.change, *(part.change for part in settings[:3])], changed("photo"), [source, photo, *settings],
          outputs, **quiet)
    gr.on([page["region"].change, page["cleanup"].change, page["show"].click], selected,
          [source, canvas, upload, photo, *settings], outputs, **quiet)
    # A selected tab names itself: the source State it sets may not have arrived yet. (An event chained on that
    # select with .then, queue=False before it, showed its progress on these panels during a later Generate.)
    for name, tab in sketch_inputs["tab_items"].items():
        given = {"draw": canvas, "upload": upload, "photo": photo}.get(name)
        if given is None:  # prompt only: no sketch to read
            tab.select(lambda *rest: _page_outputs(generator, "prompt", None, *rest), settings, outputs, **quiet)
        else:
            tab.select(lambda *values, name=name: _page_outputs(generator, name, *values), [given, *settings],
                       outputs, **quiet)
    page["clear_region"].click(lambda: "", None, page["region"], queue=False)


def _page_outputs(generator: GarmentGenerator, source_name: str, sketch_value: Any, method: str, block_size: float,
                  offset: float, region: str, cleanup: bool) -> tuple:
    """The explained page, its line, what the model sees and its caption, for a tab's sketch: `sketch_value` is
    the tab's own input (the canvas's value, the uploaded file, the photo; None for prompt only)."""
    try:
        sketch_settings = SketchSettings.from_page(method, block_size, offset)
        page = PageSettings.from_page(region, cleanup)
    except ValueError as error:  # a region that is not one: its own line, the last good view kept
        return gr.skip(), f"⚠️ {error}", gr.skip(), gr.skip()
    if source_name == "prompt":
        return None, "", None, "Prompt only: the model gets no sketch."
    canvas, upload, photo = (sketch_value if source_name == name else None for name in ("draw", "upload", "photo"))
    sketch, problem = pick_sketch(source_name, canvas, upload, photo, sketch_settings, generator.resolution)
    if sketch is None:  # nothing drawn or uploaded yet is no mistake; an unusable upload or canvas image is
        unusable = canvas_problem(canvas) if source_name == "draw" else sketch_value
        return None, PAGE_HINT, None, f"⚠️ {problem}" if unusable else MODEL_VIEW_HINT
    view = page_view(generator, sketch, page)
    if view.seen is None:
        return None, "", None, f"⚠️ {TAB_LABELS[source_name].lower()}: {view.legend}"
    return view.explained, view.legend, _enlarged(view.seen), "What the model will receive from this sketch."


def _wire_reuse(table: gr.Dataframe, history: gr.State, controls: list[Any], sketch_inputs: dict[str, Any],
                page: dict[str, Any], source: gr.State, outputs: list[Any]) -> None:
    photo_settings = [sketch_inputs[name] for name in ("method", "block_size", "offset")]
    targets = [*controls, *photo_settings, page["region"], page["cleanup"], sketch_inputs["tabs"], source,
               sketch_inputs["upload"], *outputs]

    def restore(history_value: list[HistoryEntry], event: gr.SelectData):
        entry = reuse(history_value, event.index[0] if event.index else -1)
        if entry is None:
            return tuple(gr.skip() for _ in targets)
        # The sketch used goes back through the upload tab (a photo's sketch too), so a rerun sees the same one,
        # read with the same region and cleanup.
        tab = "upload" if entry.sketch is not None else "prompt"
        values = list(control_values(entry))
        for index in SKETCH_CONTROLS:
            values[index] = _sketch_strength(tab, value=values[index])
        return (*values, *page_values(entry), gr.Tabs(selected=tab), tab,
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
