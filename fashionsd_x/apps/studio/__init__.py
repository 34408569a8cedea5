"""FashionSD-X Studio: a designer's web page for sketch + text -> garment generation.

serve.py loads the model and serves the page (what `fsdx studio` runs), ui.py lays the page out, inputs.py holds
its image inputs (Gradio's, reading images with the project's loader), and actions.py holds what each control does
as plain functions. Importing this package stays light (no torch, no gradio): the CLI imports it to show
`fsdx studio --help`.
"""

from fashionsd_x.apps.studio.serve import StudioError, StudioRun, serve_studio, show

__all__ = ["StudioError", "StudioRun", "serve_studio", "show"]
